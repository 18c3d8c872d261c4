"""HDR histograms (the ``hdrhistogram`` package) of latencies in microseconds, and their summaries in milliseconds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

try:
    from hdrh.histogram import HdrHistogram
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("surge bench needs the hdrhistogram package: pip install 'surge[bench]'") from exc

__all__ = ["PERCENTILES", "decode", "merged", "new_histogram", "record_many", "summary_ms"]

#: 1 us to 1 hour, 3 significant digits (0.1% resolution).
LOWEST_US, HIGHEST_US, DIGITS = 1, 3_600_000_000, 3
#: The percentiles every report shows, by their name in the JSON and the SLO syntax.
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


def new_histogram() -> Any:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def record_many(hist: Any, values: np.ndarray) -> None:
    """``hist.record_value(v)`` for every int64 ``v`` in ``values``, vectorised (the generator's hot path records
    each answer into a list; this empties the lists a few times a second at a fraction of the per-value cost).

    The bucket arithmetic is HdrHistogram's (``_counts_index_for``); tests/unit/test_loadgen.py checks that the
    result equals ``record_value``'s, count for count. Values outside the trackable range are dropped, as there.
    """
    values = values[values >= 0]
    if values.size == 0:
        return
    # bit length of (v | mask) == 64 - clz(v | mask); frexp's exponent is the bit length (exact below 2**53)
    pow2ceiling = np.frexp((values | hist.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
    bucket = pow2ceiling - hist.unit_magnitude - (hist.sub_bucket_half_count_magnitude + 1)
    sub_bucket = values >> (bucket + hist.unit_magnitude)
    index = ((bucket + 1) << hist.sub_bucket_half_count_magnitude) + sub_bucket - hist.sub_bucket_half_count
    keep = (index >= 0) & (index < hist.counts_len)
    if not keep.all():
        values, index = values[keep], index[keep]
        if values.size == 0:
            return
    counts = np.ctypeslib.as_array(hist.counts)
    np.add.at(counts, index, 1)
    hist.total_count += int(values.size)
    hist.min_value = min(hist.min_value, int(values.min()))
    hist.max_value = max(hist.max_value, int(values.max()))


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
