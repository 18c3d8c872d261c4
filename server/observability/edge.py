"""What the server can see of calls that fail before, or around, Surge's own handlers.

Surge's request metrics (``metrics.py``) start when a handler runs. Calls can fail earlier, and a client
then sees errors or long latencies that ``surge_requests_total`` never counts. This module exports what the
process can observe of that, at scrape time (nothing on the request path but one integer addition on the
error path):

- **gRPC's own call counters** (``surge_grpc_calls_{started,succeeded,failed}_total``): grpc core counts
  every call of Surge's gRPC server, of every method, in its channelz node (read with
  ``cygrpc.channelz_get_server``; grpcio creates the node with the server). ``started`` includes calls that
  never reached Python: cancelled by gRPC while too many calls waited for the event loop
  (``--max-pending-calls``: the client sees CANCELLED, and core counts such a call neither succeeded nor
  failed), a request message over ``--max-request-bytes``, a deadline that passed or a client that cancelled
  before the handler ran, an unknown method, a call the auth interceptor refused (an oversize message and an
  unknown method count as failed: tested).
- **Failures Surge's handlers answered** (``surge_grpc_handler_failures_total``): gRPC calls of the
  inference service whose handler ended with an error status or was cancelled (deadline or client).
  ``started - succeeded - handler_failures`` is what failed or was dropped outside Surge's handlers (calls
  still open, such as long streams, count there until they end).
- **Event-loop lag** (``surge_event_loop_lag_seconds``, a histogram): how late a timer fires on the
  server's event loop, sampled every ``LAG_INTERVAL_S``. A new gRPC or REST call waits for the loop the same
  way before its handler runs, so a long lag means calls wait (and deadlines pass) before Surge sees them.

What stays invisible from inside the process: the time a call spent in the kernel's accept queue or in grpc
core before the event loop took it up (grpc exposes no per-call arrival time, and the ``grpc-timeout`` a client
sent is not in the call's metadata: only the remaining time, counted from when core received the call, is);
streams refused because a connection exceeded ``--max-concurrent-streams`` (the client sees UNAVAILABLE; grpc
core refuses the HTTP/2 stream before it is a call, and neither its call nor its socket counters count it),
and streams a client queues on its own side at that limit; connections the kernel dropped from a full
accept queue; requests a REST client abandoned before aiohttp read them. Measure those at the client
(``surge bench`` reports per-status counts and client-side latency) or at a proxy in front.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from dataclasses import dataclass

from ..edge.grpc_core import cygrpc, grpc_calls, grpc_server_ids

__all__ = ["EdgeMetrics", "EdgeSample", "LAG_BUCKETS_S", "LAG_INTERVAL_S", "grpc_calls", "grpc_server_ids"]

log = logging.getLogger("surge.metrics")

#: How often the lag probe wakes (seconds): 10 wakeups a second, a few microseconds each.
LAG_INTERVAL_S = 0.1
#: Upper bounds of the loop-lag histogram (seconds): 1 ms to 60 s, 5 per decade.
LAG_BUCKETS_S = (0.001, 0.0016, 0.0025, 0.004, 0.0063, 0.01, 0.016, 0.025, 0.04, 0.063, 0.1, 0.16, 0.25, 0.4, 0.63, 1.0, 1.6, 2.5, 4.0, 6.3, 10.0, 16.0, 25.0, 40.0, 60.0)


@dataclass(frozen=True, slots=True)
class EdgeSample:
    """What a scrape reports of the edge (taken on the loop; ``grpc_calls(grpc_server_id)`` is read when formatting)."""

    grpc_server_id: int | None
    """The channelz id of the server's gRPC server, or None when none is watched."""
    handler_failures: int
    lag_counts: tuple[int, ...]
    """Per-bucket counts of ``LAG_BUCKETS_S`` (not cumulative), then +Inf."""
    lag_sum_s: float


class EdgeMetrics:
    """The edge's counters for one server: handler failures (event loop), gRPC core's counters (read at
    scrape time), and the event-loop lag probe (``start_probe``/``stop_probe`` on the loop)."""

    def __init__(self) -> None:
        self._grpc_context = getattr(cygrpc(), "_ServicerContext", None)
        self._server_id: int | None = None
        self.handler_failures = 0
        self._lag_counts = [0] * (len(LAG_BUCKETS_S) + 1)
        self._lag_sum_s = 0.0
        self._probe: asyncio.Task[None] | None = None

    def watch_grpc_server(self, ids_before: set[int]) -> None:
        """Watch the gRPC server created since ``grpc_server_ids()`` returned ``ids_before`` (the newest one)."""
        new = grpc_server_ids() - ids_before
        self._server_id = max(new) if new else None
        if self._server_id is None:
            log.warning("metrics: gRPC's channelz counters cannot be read; surge_grpc_calls_* are left out")

    def handler_failed(self, context: object) -> None:
        """A handler of the inference service ended a gRPC call with an error or was cancelled (error path only).

        Only a grpc.aio servicer context counts (not a stand-in context of a test or benchmark)."""
        if context.__class__ is self._grpc_context:
            self.handler_failures += 1

    def sample(self) -> EdgeSample:
        """Copy the counters (event loop)."""
        return EdgeSample(self._server_id, self.handler_failures, tuple(self._lag_counts), self._lag_sum_s)

    # -- the event-loop lag probe ----------------------------------------------------------------

    def observe_lag(self, lag_s: float) -> None:
        """One lag sample (seconds; negative values count as 0)."""
        lag_s = max(lag_s, 0.0)
        self._lag_counts[bisect.bisect_left(LAG_BUCKETS_S, lag_s)] += 1  # bisect_left: a value equal to a bound is in it (le)
        self._lag_sum_s += lag_s

    def start_probe(self, interval_s: float = LAG_INTERVAL_S) -> None:
        """Start sampling the running loop's lag (idempotent)."""
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._run_probe(interval_s), name="surge-loop-lag")

    async def stop_probe(self) -> None:
        """Stop the probe (event loop)."""
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)

    async def _run_probe(self, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            self.observe_lag(loop.time() - due)
