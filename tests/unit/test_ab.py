"""ab.py: the statistics against direct computations, percentiles from buckets, and a report from exposition text."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from surge.server.traffic.ab import analyse, difference, format_report, mann_whitney_binned, parse_samples, two_proportion_z, welch_z


def test_two_proportion_z_known_value() -> None:
    # 10/1000 vs 25/1000: pooled 0.0175, se = sqrt(0.0175*0.9825*0.002) = 0.005864; z = 0.015/0.005864 = 2.558
    z, p = two_proportion_z(10, 1000, 25, 1000)
    assert z == pytest.approx(2.558, abs=1e-3)
    assert p == pytest.approx(0.01053, abs=2e-4)
    assert two_proportion_z(0, 0, 1, 10) == (0.0, 1.0)
    assert two_proportion_z(0, 10, 0, 10) == (0.0, 1.0)


def test_mann_whitney_binned_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 80)
    b = rng.integers(1, 7, 60)
    counts_a = [int((a == k).sum()) for k in range(7)]
    counts_b = [int((b == k).sum()) for k in range(7)]
    effect, z, p = mann_whitney_binned(counts_a, counts_b)
    # U counted pair by pair: b > a counts 1, ties 1/2
    u = sum(1.0 if y > x else 0.5 if y == x else 0.0 for x, y in itertools.product(a, b))
    assert effect == pytest.approx(u / (len(a) * len(b)))
    assert z > 2 and p < 0.05  # b is shifted up by one bin
    assert mann_whitney_binned(counts_a, counts_a)[1:] == pytest.approx((0.0, 1.0))
    assert mann_whitney_binned([0, 0], [1, 2]) == (0.5, 0.0, 1.0)


def test_welch_z() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.0, 3.0, 4.0, 5.0])
    z, p = welch_z(x.sum(), (x * x).sum(), 4, y.sum(), (y * y).sum(), 4)
    assert z == pytest.approx(1.0 / math.sqrt(x.var(ddof=1) / 4 + y.var(ddof=1) / 4))
    assert 0 < p < 1


def _exposition(v2_errors: int, v2_slow: bool) -> str:
    lines = ["# TYPE surge_requests_total counter"]
    lines += [f'surge_requests_total{{model="m",version="1",code="OK"}} 1000',
              f'surge_requests_total{{model="m",version="2",code="OK"}} {1000 - v2_errors}',
              f'surge_requests_total{{model="m",version="2",code="INTERNAL"}} {v2_errors}',
              'surge_requests_total{model="m",version="2",code="CANCELLED"} 7']
    lines.append("# TYPE surge_request_duration_seconds histogram")
    les = ["0.001", "0.002", "0.005", "+Inf"]
    for version, counts in (("1", [500, 900, 1000, 1000]), ("2", [100, 300, 1000, 1000] if v2_slow else [500, 900, 1000, 1000])):
        for le, c in zip(les, counts):
            lines.append(f'surge_request_duration_seconds_bucket{{model="m",version="{version}",le="{le}"}} {c}')
        lines.append(f'surge_request_duration_seconds_count{{model="m",version="{version}"}} 1000')
        lines.append(f'surge_request_duration_seconds_sum{{model="m",version="{version}"}} 1.5')
    lines += ["# TYPE surge_route_weight gauge", 'surge_route_weight{model="m",version="1"} 0.9', 'surge_route_weight{model="m",version="2"} 0.1']
    return "\n".join(lines) + "\n"


def test_report_finds_a_slower_and_failing_variant_and_not_an_equal_one() -> None:
    bad = analyse(parse_samples(_exposition(v2_errors=40, v2_slow=True)), "m")
    assert [v.version for v in bad.variants] == ["1", "2"] and bad.baseline == "1"
    v2 = bad.variants[1]
    assert (v2.requests, v2.errors) == (1007, 40)  # CANCELLED is not an error
    assert v2.share == pytest.approx(0.1)
    assert v2.percentile_s(0.5) == pytest.approx(0.002 + 0.003 * (500 - 300) / 700)
    tests = {t.metric: t for t in bad.tests}
    assert tests["error rate"].significant(0.05) and tests["latency"].significant(0.05)
    good = analyse(parse_samples(_exposition(v2_errors=0, v2_slow=False)), "m")
    assert not any(t.significant(0.05) for t in good.tests)
    text = format_report(bad)
    assert "two-proportion z-test" in text and "Mann-Whitney U on histogram buckets" in text and "SIGNIFICANT" in text


def test_interval_difference_subtracts_counters_and_keeps_gauges() -> None:
    before = parse_samples(_exposition(v2_errors=10, v2_slow=False))
    after = parse_samples(_exposition(v2_errors=40, v2_slow=False).replace("} 1000\n", "} 1500\n"))
    window = difference(after, before)
    report = analyse(window, "m", window="over the last 5 s")
    v1, v2 = report.variants
    assert v1.requests == 500 and v2.errors == 30 and v2.share == pytest.approx(0.1)
