"""HDR histograms (the ``hdrhistogram`` package) of latencies in microseconds, and their summaries in milliseconds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    from hdrh.histogram import HdrHistogram
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("surge bench needs the hdrhistogram package: pip install 'surge[bench]'") from exc

__all__ = ["PERCENTILES", "decode", "merged", "new_histogram", "summary_ms"]

#: 1 us to 1 hour, 3 significant digits (0.1% resolution).
LOWEST_US, HIGHEST_US, DIGITS = 1, 3_600_000_000, 3
#: The percentiles every report shows, by their name in the JSON and the SLO syntax.
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


def new_histogram() -> Any:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def decode(encoded: bytes) -> Any:
    return HdrHistogram.decode(encoded)


def merged(encoded: Iterable[bytes]) -> Any:
    """One histogram adding up hdr-encoded ones."""
    total = new_histogram()
    for item in encoded:
        total.add(decode(item))
    return total


def summary_ms(hist: Any) -> dict[str, float | None]:
    """min, mean, p50, p90, p99, p99.9, max in milliseconds (None each when the histogram is empty)."""
    if hist.get_total_count() == 0:
        return {name: None for name in ("min", "mean", *PERCENTILES, "max")}
    out: dict[str, float | None] = {"min": hist.get_min_value() / 1e3, "mean": hist.get_mean_value() / 1e3}
    for name, pct in PERCENTILES.items():
        out[name] = hist.get_value_at_percentile(pct) / 1e3
    out["max"] = hist.get_max_value() / 1e3
    return out
