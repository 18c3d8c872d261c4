"""metrics.py without a server: bucket edges, histogram semantics, and the exposition of a snapshot."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from surge.server.config import parse_model_config
from surge.server.errors import ConfigError
from surge.server.observability.metrics import (
    DEFAULT_LATENCY_BUCKETS_S,
    STAGES,
    ServerMetrics,
    VersionMetrics,
    VersionSample,
    batch_size_buckets,
    geometric_buckets,
    render,
)
from surge.server.execution.stats import Stamps, VersionStats


def test_default_buckets_are_about_1_25x_from_10us_to_60s_with_every_power_of_ten() -> None:
    b = DEFAULT_LATENCY_BUCKETS_S
    assert b[0] == 1e-5 and b[-1] == 60.0 and len(b) == 69
    ratios = [y / x for x, y in zip(b, b[1:-1])]
    assert all(1.24 < r < 1.28 for r in ratios), ratios
    assert list(b) == sorted(set(b))
    assert {1e-4, 1e-3, 0.01, 0.1, 0.2, 1.0, 10.0} <= set(b)  # SLO-friendly bounds exist exactly


def test_geometric_buckets_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        geometric_buckets(1.0, 0.5)
    with pytest.raises(ValueError):
        geometric_buckets(1e-3, 1.0, 0)
    assert geometric_buckets(1e-3, 1.0, 1) == (1e-3, 0.01, 0.1, 1.0)


@pytest.mark.parametrize(("max_batch_size", "expected"), [(0, (1,)), (1, (1,)), (8, (1, 2, 4, 8)), (48, (1, 2, 4, 8, 16, 32, 48))])
def test_batch_size_buckets_end_at_max_batch_size(max_batch_size: int, expected: tuple[int, ...]) -> None:
    assert batch_size_buckets(max_batch_size) == expected


def _stamps(start: int, *steps: int, rows: int = 1) -> Stamps:
    s = Stamps(start)
    t = start
    for name, step in zip(("decoded", "exec_start", "infer_start", "infer_end", "encode_start", "end"), steps):
        t += step
        setattr(s, name, t)
    s.rows = rows
    return s


def _sample(m: VersionMetrics, **kw: object) -> VersionSample:
    fields = {"model": "m", "version": "1", "state": "READY", "load_duration_s": 0.5, "queue_depth": 2, "inflight": 3,
              "dropped_expired": 4, "dropped_cancelled": 5, **kw}  # fmt: skip
    return VersionSample(metrics=m.snapshot(), **fields)  # type: ignore[arg-type]


def _parse(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def test_stats_and_histograms_read_the_same_stamps() -> None:
    metrics = VersionMetrics("m", "1", latency_buckets_s=(1e-6, 2e-6, 1e-3), max_batch_size=8)
    stats = VersionStats(metrics=metrics)
    # stages: decode 1 us, queue 2 us, assemble 1 us, infer 500 us, output 1 us (infer_end->encode_start), encode 2 us
    stats.record_success(_stamps(1000, 1000, 2000, 1000, 500_000, 1000, 2000, rows=3))
    stats.record_execution(3, 1000, 500_000, 0)
    stats.record_failure(_stamps(0, 1000, 7000), 20_000, "INTERNAL")
    body, headers = render(ServerMetrics(lambda: [_sample(metrics)], server_version="9").snapshot())
    found = _parse(body)
    key = {"model": "m", "version": "1"}

    def get(name: str, **labels: str) -> float:
        return found[(name, frozenset({**key, **labels}.items()))]

    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert get("surge_request_duration_seconds_sum") == pytest.approx(stats.success.ns / 1e9) == pytest.approx(507e-6)
    assert get("surge_decode_duration_seconds_sum") + get("surge_compute_input_duration_seconds_sum") == pytest.approx(stats.compute_input.ns / 1e9)
    assert get("surge_compute_output_duration_seconds_sum") + get("surge_encode_duration_seconds_sum") == pytest.approx(stats.compute_output.ns / 1e9)
    # a value equal to a bound is in that bucket (le); 2 us of encode is in le=2e-06, the 1 us stages in le=1e-06
    assert get("surge_encode_duration_seconds_bucket", le="1e-06") == 0 and get("surge_encode_duration_seconds_bucket", le="2e-06") == 1
    assert get("surge_decode_duration_seconds_bucket", le="1e-06") == 1
    assert get("surge_compute_infer_duration_seconds_bucket", le="0.001") == 1
    # the failure waited 7 us in the queue: counted there, as ModelStatistics counts it
    assert get("surge_queue_duration_seconds_count") == stats.queue.count == 2
    assert get("surge_failed_request_duration_seconds_sum") == pytest.approx(20e-6)
    assert get("surge_requests_total", code="INTERNAL") == 1 and get("surge_rows_total", code="INTERNAL") == 1
    assert get("surge_requests_total", code="OK") == 1 and get("surge_rows_total", code="OK") == 3
    batch = {"model": "m", "version": "1"}
    assert found[("surge_batch_size_bucket", frozenset({**batch, "le": "2.0"}.items()))] == 0
    assert found[("surge_batch_size_bucket", frozenset({**batch, "le": "4.0"}.items()))] == 1
    assert found[("surge_queue_depth", frozenset(batch.items()))] == 2
    assert found[("surge_inflight_requests", frozenset(batch.items()))] == 3
    assert found[("surge_queue_dropped_total", frozenset({**batch, "reason": "cancelled"}.items()))] == 5
    assert found[("surge_model_state", frozenset({**batch, "state": "READY"}.items()))] == 1
    assert found[("surge_server_info", frozenset({("version", "9")}))] == 1


def test_slo_gauges_only_for_versions_in_slo_mode() -> None:
    base = dict(state="READY", load_duration_s=0.1, queue_depth=0, inflight=0, dropped_expired=0, dropped_cancelled=0, metrics=None)
    samples = [VersionSample(model="slo", version="1", slo=(0.0015, 0.02), **base), VersionSample(model="fixed", version="1", **base)]
    found = _parse(render(ServerMetrics(lambda: samples).snapshot())[0])
    assert found[("surge_batcher_slo_margin_seconds", frozenset({("model", "slo"), ("version", "1")}))] == 0.0015
    assert found[("surge_batcher_late_share", frozenset({("model", "slo"), ("version", "1")}))] == 0.02
    assert ("surge_batcher_slo_margin_seconds", frozenset({("model", "fixed"), ("version", "1")})) not in found


def test_versions_without_metrics_still_report_state() -> None:
    sample = VersionSample(model="broken", version="1", state="UNAVAILABLE", load_duration_s=0.1, queue_depth=0, inflight=0,
                           dropped_expired=0, dropped_cancelled=0, metrics=None)  # fmt: skip
    server = ServerMetrics(lambda: [sample])
    server.record_unrouted("NOT_FOUND")
    found = _parse(render(server.snapshot())[0])
    assert found[("surge_model_state", frozenset({("model", "broken"), ("version", "1"), ("state", "UNAVAILABLE")}))] == 1
    assert found[("surge_unrouted_requests_total", frozenset({("code", "NOT_FOUND")}))] == 1
    assert not any(name.startswith("surge_request_duration") and labels for name, labels in found)


def test_every_stage_is_a_seconds_histogram() -> None:
    assert len(STAGES) == 8 and all(name.startswith("surge_") and name.endswith("_seconds") for name, _ in STAGES)
    found = _parse(render(ServerMetrics(lambda: [_sample(VersionMetrics("m", "1"))]).snapshot())[0])
    inf = [v for (n, labels), v in found.items() if n == "surge_request_duration_seconds_bucket" and ("le", "+Inf") in labels]
    assert inf == [0.0]
    assert math.isinf(max(float(dict(labels)["le"]) for n, labels in found if n == "surge_request_duration_seconds_bucket"))


def test_config_latency_buckets() -> None:
    config = parse_model_config("m", {"metrics": {"latency_buckets_s": [0.001, 0.01, 1]}})
    assert config.metrics.latency_buckets_s == (0.001, 0.01, 1.0)
    assert parse_model_config("m", {}).metrics.latency_buckets_s == ()
    for bad, words in (
        ([], "a list of 1 to 200 positive numbers, got \\[\\]"),
        ([0.01, 0.001], "strictly increasing"),
        ([0.0, 1.0], "positive numbers"),
        (["1"], "a list of 1 to 200 positive numbers"),
        ([1e-3 * i for i in range(1, 300)], "1 to 200"),
    ):
        with pytest.raises(ConfigError, match=words) as info:
            parse_model_config("m", {"metrics": {"latency_buckets_s": bad}})
        assert str(info.value).startswith("metrics.latency_buckets_s")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_model_config("m", {"metrics": {"buckets": [1.0]}})


def test_both_formats_carry_the_same_samples_and_escape_labels() -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    metrics = VersionMetrics('we"ird\\name\n', "1", max_batch_size=4)
    stats = VersionStats(metrics=metrics)
    stats.record_success(_stamps(0, 10, 20, 30, 40, 50, 60, rows=2))
    stats.record_execution(2, 1, 2, 3)
    server = ServerMetrics(lambda: [_sample(metrics, model='we"ird\\name\n')], server_version="1.0")
    text, _ = render(server.snapshot())
    om, headers = render(server.snapshot(), accept="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text") and om.endswith(b"# EOF\n")

    def samples(families) -> set:
        return {(s.name, tuple(sorted(s.labels.items())), float(s.value)) for f in families if f.name.startswith("surge") for s in f.samples}

    from_text = samples(text_string_to_metric_families(text.decode()))
    assert from_text == samples(parse_openmetrics(om.decode()))  # the strict OpenMetrics parser accepts it too
    assert ("surge_requests_total", (("code", "OK"), ("model", 'we"ird\\name\n'), ("version", "1")), 1.0) in from_text
    assert {f.name: f.type for f in parse_openmetrics(om.decode())}["surge_requests"] == "counter"
