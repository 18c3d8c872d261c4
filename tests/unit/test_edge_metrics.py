"""``observability.edge``: the event-loop lag probe on a real loop, and what counts as a gRPC handler failure."""

from __future__ import annotations

import asyncio
import time

from surge.server.observability.edge import LAG_BUCKETS_S, EdgeMetrics, grpc_server_ids


async def test_lag_probe_sees_a_stalled_loop() -> None:
    edge = EdgeMetrics()
    edge.start_probe(interval_s=0.02)
    await asyncio.sleep(0.2)
    time.sleep(0.4)  # something blocks the loop: every call arriving now waits for it
    await asyncio.sleep(0.1)
    await edge.stop_probe()
    sample = edge.sample()
    assert sum(sample.lag_counts) >= 5
    late = sum(count for bound, count in zip((*LAG_BUCKETS_S, float("inf")), sample.lag_counts) if bound > 0.25)
    assert late == 1, sample.lag_counts  # the one stall, in a bucket above 0.25 s; the other samples below it
    assert 0.3 <= sample.lag_sum_s < 0.4 + 0.05 * sum(sample.lag_counts)


def test_lag_buckets_are_sorted_and_observations_land_in_their_bucket() -> None:
    assert list(LAG_BUCKETS_S) == sorted(set(LAG_BUCKETS_S))
    edge = EdgeMetrics()
    for lag_s in (-0.001, 0.001, 0.0011, 60.0, 61.0):
        edge.observe_lag(lag_s)
    counts = edge.sample().lag_counts
    assert counts[0] == 2 and counts[1] == 1 and counts[-2] == 1 and counts[-1] == 1  # le 0.001 (negative as 0), le 0.0016, le 60, +Inf


def test_only_grpc_contexts_count_as_grpc_handler_failures() -> None:
    edge = EdgeMetrics()
    edge.handler_failed(object())  # the REST edge's context: its requests are not gRPC calls
    assert edge.sample().handler_failures == 0


def test_without_a_watched_server_no_grpc_call_counters_are_reported() -> None:
    edge = EdgeMetrics()
    assert edge.sample().grpc_server_id is None
    edge.watch_grpc_server(grpc_server_ids())  # nothing was created since: still none
    assert edge.sample().grpc_server_id is None
