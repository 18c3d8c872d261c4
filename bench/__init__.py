"""Surge benchmarks: ``python -m bench.compare`` (see bench/README.md)."""
