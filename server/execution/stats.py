"""Per-request stage stamps and the cumulative per-version statistics built from them.

Every request carries one ``Stamps`` object; each stage boundary writes ``time.perf_counter_ns()`` into
it once. ``VersionStats`` folds a finished request into Triton's cumulative counters (what the
ModelStatistics RPC reports) and, when metrics are on, hands the same durations to the version's
Prometheus histograms (``metrics.VersionMetrics``): both views are computed here, once, from one set of
stamps, so they agree to the nanosecond.

Stage boundaries (all on the event loop except ``infer_start``/``infer_end``, stamped in the instance's
thread)::

    start ── decode ──> decoded ── queue ──> exec_start ── compute_input ──> infer_start
          ── compute_infer ──> infer_end ── compute_output ──> encode_start ── encode ──> end

    decode         = decoded - start             (proto -> numpy, validation)
    queue          = exec_start - decoded        (in the batcher: waiting for rows and a free instance)
    compute_input  = infer_start - exec_start    (batch assembly in the instance thread)
    compute_infer  = infer_end - infer_start     (the runtime's own call)
    compute_output = encode_start - infer_end    (results back on the loop, split into rows, request resumed)
    encode         = end - encode_start          (numpy -> proto)
    total          = end - start                 (the six stages add up to it exactly)

Triton's ModelStatistics has coarser fields; they are sums of the stages above:
``success = total``, ``queue = queue``, ``compute_input = decode + compute_input``,
``compute_infer = compute_infer``, ``compute_output = compute_output + encode``; ``fail`` is the server
time of failed requests (their queue wait, when they reached the queue, is counted in ``queue`` too, as
Triton does). Per executed batch (not per request): ``execution_count`` and ``batch_stats`` by batch size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..observability.metrics import VersionMetrics
    from ..observability.tracing import RequestTrace

__all__ = ["Duration", "Stamps", "VersionStats", "now_ns"]

now_ns = time.perf_counter_ns
#: perf_counter_ns -> nanoseconds since the epoch (computed once; perf_counter has no defined epoch).
_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


class Stamps:
    """perf_counter_ns stamps of one request's stage boundaries (0 = not reached), and its rows."""

    __slots__ = ("decoded", "encode_start", "end", "exec_start", "infer_end", "infer_start", "planned", "rows", "start", "trace")

    def __init__(self, start: int) -> None:
        self.start = start
        self.decoded = self.exec_start = self.infer_start = self.infer_end = self.encode_start = self.end = 0
        self.rows = 1
        self.planned = False  # the batcher's SLO mode dispatched its batch when its planned wait ended
        self.trace: RequestTrace | None = None  # a sampled request's spans (observability/tracing.py); None: not traced


@dataclass(slots=True)
class Duration:
    """A cumulative count and total time in nanoseconds (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass(slots=True)
class BatchStats:
    """Executions of one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStats:
    """Cumulative statistics of one model version; updated on the event loop only (no locks needed).

    ``metrics``: the version's Prometheus histograms and counters, fed the same durations (None: metrics off).
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)
    metrics: VersionMetrics | None = None
    latency_listener: Callable[[int, bool], None] | None = None
    """Told every answered request's server latency in ns and ``Stamps.planned`` (the batcher's SLO margin controller)."""

    def record_success(self, s: Stamps) -> None:
        """Fold a request that was executed and answered (``s.rows`` rows)."""
        total = s.end - s.start
        decode = s.decoded - s.start
        queue = s.exec_start - s.decoded
        assemble = s.infer_start - s.exec_start
        infer = s.infer_end - s.infer_start
        output = s.encode_start - s.infer_end
        encode = s.end - s.encode_start
        self.success.add(total)
        if self.latency_listener is not None:
            self.latency_listener(total, s.planned)
        self.queue.add(queue)
        self.compute_input.add(decode + assemble)
        self.compute_infer.add(infer)
        self.compute_output.add(output + encode)
        self.inference_count += s.rows
        self.last_inference_ms = (_EPOCH_OFFSET_NS + s.end) // 1_000_000
        if self.metrics is not None:
            self.metrics.observe_success(s.rows, total, decode, queue, assemble, infer, output, encode)

    def record_execution(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """Fold one runtime execution of a batch of ``rows`` rows (one or more requests)."""
        self.execution_count += 1
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchStats()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)
        if self.metrics is not None:
            self.metrics.observe_batch(rows)

    def record_failure(self, s: Stamps, end_ns: int, code: str) -> None:
        """Fold a request that failed after it reached the model (bad input, timeout, runtime error, cancelled).

        ``code``: the outcome's name as the protocol edge reports it (e.g. "INVALID_ARGUMENT"), for the metrics.
        """
        total = end_ns - s.start
        self.fail.add(total)
        queue = -1
        if s.exec_start:  # it waited in the queue before failing: count the wait, as Triton does
            queue = s.exec_start - (s.decoded or s.start)
            self.queue.add(queue)
        if self.metrics is not None:
            self.metrics.observe_failure(code, s.rows if s.decoded else 0, total, queue)
