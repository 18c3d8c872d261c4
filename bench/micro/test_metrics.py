"""Micro-benchmarks of the metrics (pytest-benchmark; not part of the test suite).

    .venv/bin/python -m pytest bench/micro/test_metrics.py --benchmark-only

Covers: one histogram observation (``exposition.Histogram.observe``, the hot-path unit), a whole answered request's
observations (``VersionMetrics.observe_success``: seven histograms and the outcome counters), and formatting a
scrape of 20 versions in each exposition format (``metrics.render``, off the event loop).
"""

from __future__ import annotations

import pytest
from surge.server.observability.exposition import Histogram
from surge.server.observability.metrics import (
    DEFAULT_LATENCY_BUCKETS_S,
    ServerMetrics,
    VersionMetrics,
    VersionSample,
    render,
)

BOUNDS_NS = [round(b * 1e9) for b in DEFAULT_LATENCY_BUCKETS_S]


def test_histogram_observe(benchmark) -> None:
    histogram = Histogram(BOUNDS_NS)
    benchmark(histogram.observe, 1_234_567)


def test_observe_success(benchmark) -> None:
    metrics = VersionMetrics("m", "1", max_batch_size=8)
    benchmark(metrics.observe_success, 1, 900_000, 20_000, 300_000, 30_000, 500_000, 20_000, 30_000)


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"], ids=["text", "openmetrics"])
def test_render_20_versions(benchmark, accept: str) -> None:
    versions = []
    for i in range(20):
        m = VersionMetrics(f"model{i}", "1", max_batch_size=8)
        for n in range(1000):
            m.observe_success(1, 10_000 * n, 1_000, 5_000 * n, 1_000, 2_000 * n, 1_000, 1_000)
        versions.append(VersionSample(f"model{i}", "1", "READY", 0.5, 0, 0, 0, 0, m.snapshot()))
    server = ServerMetrics(lambda: versions, server_version="bench")
    snapshot = server.snapshot()
    benchmark(render, snapshot, server.collectors, accept=accept)
