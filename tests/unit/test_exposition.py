"""``observability.exposition``: Surge's one writer reads back, through prometheus_client's own parsers, as what
prometheus_client's encoders would have written, in both formats; whole numbers stay plain digits."""

from __future__ import annotations

import math

import prometheus_client
import pytest
from prometheus_client.openmetrics.exposition import (
    generate_latest as generate_openmetrics,
)
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from surge.server.observability.exposition import Histogram, Writer, number


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (True, "1"), (12.0, "12"), (85_899_345_920.0, "85899345920"), (0.37, "0.37"), (-4.0, "-4"),
    (2.5e-7, "2.5e-07"), (1e300, "1e+300"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"),
])  # fmt: skip
def test_number(value: float, text: str) -> None:
    assert number(value) == text


def _registry() -> prometheus_client.CollectorRegistry:
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("jobs", "Jobs done.", ["kind"], registry=registry).labels('we"ird\\one\n').inc(3)
    prometheus_client.Gauge("memory_bytes", "Memory.", registry=registry).set(85_899_345_920)
    histogram = prometheus_client.Histogram("wait_seconds", "Waits.", buckets=(0.1, 1.0), registry=registry)
    histogram.observe(0.05)
    histogram.observe(2.0)
    prometheus_client.Info("build", "Build facts.", registry=registry).info({"version": "1.2"})
    return registry


def _samples(families: object) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value) for f in families for s in f.samples}  # type: ignore[attr-defined]


def test_collector_families_read_back_as_prometheus_clients_own_pages() -> None:
    registry = _registry()
    text = Writer(openmetrics=False)
    text.families(registry.collect())
    assert _samples(parse_text(text.text())) == _samples(parse_text(prometheus_client.generate_latest(registry).decode()))
    assert "memory_bytes 85899345920\n" in text.text()
    om = Writer(openmetrics=True)
    om.families(registry.collect())
    assert om.text().endswith("# EOF\n")
    assert _samples(parse_openmetrics(om.text())) == _samples(parse_openmetrics(generate_openmetrics(registry).decode()))


def test_histogram_counts_a_value_equal_to_a_bound_in_that_bucket() -> None:
    h = Histogram([10, 20])
    for value in (5, 10, 11, 20, 21):
        h.observe(value)
    assert h.counts == [2, 2, 1] and h.sum == 67
    writer = Writer(openmetrics=False)
    writer.header("x", "histogram", "X.")
    writer.histogram("x", 'm="a"', ("10.0", "20.0", "+Inf"), h.counts, h.sum)
    (family,) = parse_text(writer.text())
    assert [(s.name, s.labels.get("le"), s.value) for s in family.samples] == [
        ("x_bucket", "10.0", 2), ("x_bucket", "20.0", 4), ("x_bucket", "+Inf", 5), ("x_count", None, 5), ("x_sum", None, 67),
    ]  # fmt: skip
