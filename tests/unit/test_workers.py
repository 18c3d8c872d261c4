"""The pure parts of ``--workers``: merging metric pages and ModelStatistics across workers, port reservation."""

from __future__ import annotations

import socket

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from surge.protos import grpc_service_pb2 as pb
from surge.server.observability.metrics import ServerSnapshot, VersionSample, render
from surge.server.observability.page_merge import format_page, merge_families, parse_page
from surge.server.workers import reserve_port


def _page(requests: int, queue: int, state_ready: int, start: float, le_counts: tuple[int, int, int], psi: float) -> str:
    a, b, c = le_counts
    return f"""# HELP surge_requests_total Requests.
# TYPE surge_requests_total counter
surge_requests_total{{model="m",version="1",code="OK"}} {requests}
# HELP surge_request_duration_seconds Server time.
# TYPE surge_request_duration_seconds histogram
surge_request_duration_seconds_bucket{{model="m",le="0.001"}} {a}
surge_request_duration_seconds_bucket{{model="m",le="0.01"}} {a + b}
surge_request_duration_seconds_bucket{{model="m",le="+Inf"}} {a + b + c}
surge_request_duration_seconds_count{{model="m"}} {a + b + c}
surge_request_duration_seconds_sum{{model="m"}} {0.0005 * a + 0.005 * b + 1.0 * c}
# HELP surge_queue_depth Waiting.
# TYPE surge_queue_depth gauge
surge_queue_depth{{model="m",version="1"}} {queue}
# HELP surge_model_state State.
# TYPE surge_model_state gauge
surge_model_state{{model="m",version="1",state="READY"}} {state_ready}
surge_model_state{{model="m",version="1",state="LOADING"}} {1 - state_ready}
# HELP surge_drift_psi PSI.
# TYPE surge_drift_psi gauge
surge_drift_psi{{model="m",version="1",feature="f0"}} {psi}
# HELP process_start_time_seconds Start time.
# TYPE process_start_time_seconds gauge
process_start_time_seconds {start}
"""


def _values(merged, openmetrics: bool = False) -> dict[tuple[str, frozenset], float]:
    """Merged families as prometheus_client parses their text: the real parser checks the format too."""
    text = format_page(merged.values(), openmetrics=openmetrics)
    parse = parse_openmetrics if openmetrics else text_string_to_metric_families
    return {(s.name, frozenset(s.labels.items())): s.value for f in parse(text) for s in f.samples}


M1 = frozenset({("model", "m"), ("version", "1")})


def test_merge_sums_counters_histograms_and_amounts_and_takes_the_max_or_min_of_other_gauges() -> None:
    pages = [parse_page(_page(10, 2, 1, 100.0, (5, 4, 1), 0.1)), parse_page(_page(7, 3, 0, 90.0, (1, 2, 4), 0.4))]
    merged = merge_families(pages)
    v = _values(merged)
    assert v[("surge_requests_total", M1 | {("code", "OK")})] == 17
    buckets = [v[("surge_request_duration_seconds_bucket", frozenset({("model", "m"), ("le", le)}))] for le in ("0.001", "0.01", "+Inf")]
    assert buckets == [6, 12, 17]  # cumulative buckets summed bucket by bucket stay cumulative
    assert v[("surge_request_duration_seconds_count", frozenset({("model", "m")}))] == 17
    assert v[("surge_request_duration_seconds_sum", frozenset({("model", "m")}))] == pytest.approx(0.003 + 0.03 + 5.0)
    assert v[("surge_queue_depth", M1)] == 5
    assert v[("surge_model_state", M1 | {("state", "READY")})] == 1
    assert v[("surge_model_state", M1 | {("state", "LOADING")})] == 1  # one worker still loading shows
    assert v[("surge_drift_psi", M1 | {("feature", "f0")})] == 0.4  # the worst worker
    assert v[("process_start_time_seconds", frozenset())] == 90.0


def test_retired_counters_are_added_but_not_their_gauges() -> None:
    live = parse_page(_page(10, 2, 1, 100.0, (5, 4, 1), 0.1))
    retired = merge_families([], parse_page(_page(7, 9, 1, 90.0, (1, 2, 4), 0.9)))
    assert {f.type for f in retired.values()} == {"counter", "histogram"}
    v = _values(merge_families([live], retired))
    assert v[("surge_requests_total", M1 | {("code", "OK")})] == 17
    assert v[("surge_request_duration_seconds_count", frozenset({("model", "m")}))] == 17
    assert v[("surge_queue_depth", M1)] == 2
    assert v[("surge_drift_psi", M1 | {("feature", "f0")})] == 0.1


@pytest.mark.parametrize("openmetrics", [False, True])
def test_surge_pages_merge_and_parse_back_in_both_formats(openmetrics: bool) -> None:
    accept = "application/openmetrics-text; version=1.0.0" if openmetrics else ""

    def page(queue: int, inflight: int) -> dict:
        sample = VersionSample(model="m", version="1", state="READY", load_duration_s=0.5, queue_depth=queue, inflight=inflight,
                               dropped_expired=1, dropped_cancelled=0, metrics=None)  # fmt: skip
        body, _ = render(ServerSnapshot("1.0", (sample,), {"NOT_FOUND": 2}), accept=accept)
        return parse_page(body.decode())

    merged = merge_families([page(3, 4), page(5, 6)])
    v = _values(merged, openmetrics)
    assert v[("surge_queue_depth", M1)] == 8 and v[("surge_inflight_requests", M1)] == 10
    assert v[("surge_unrouted_requests_total", frozenset({("code", "NOT_FOUND")}))] == 4
    assert v[("surge_queue_dropped_total", M1 | {("reason", "expired")})] == 2
    assert v[("surge_model_load_duration_seconds", M1)] == 0.5 and v[("surge_server_info", frozenset({("version", "1.0")}))] == 1


def _stats(name: str, version: str, count: int, ns: int, last: int, batches: dict[int, int]) -> pb.ModelStatistics:
    s = pb.ModelStatistics(name=name, version=version, inference_count=count, execution_count=count, last_inference=last)
    s.inference_stats.success.count, s.inference_stats.success.ns = count, ns
    s.inference_stats.queue.count, s.inference_stats.queue.ns = count, ns // 2
    for size, n in batches.items():
        entry = s.batch_stats.add(batch_size=size)
        entry.compute_infer.count, entry.compute_infer.ns = n, n * 10
    return s


def test_reserve_port_shares_with_reuseport_sockets_only() -> None:
    held = reserve_port("127.0.0.1", 0)
    port = held.getsockname()[1]
    try:
        sharer = socket.socket()
        sharer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sharer.bind(("127.0.0.1", port))  # a worker binds the same port
        sharer.listen()
        sharer.close()
        plain = socket.socket()
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # anything else cannot
        plain.close()
    finally:
        held.close()
    with socket.socket() as other:  # a port another program listens on: the supervisor cannot take it
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(OSError):
            reserve_port("127.0.0.1", other.getsockname()[1])
