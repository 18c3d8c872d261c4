"""Per-request stage stamps and the cumulative per-version statistics built from them.

Every request carries one ``Stamps`` object; each stage boundary writes ``time.perf_counter_ns()`` into
it once. ``VersionStats`` folds finished requests into Triton's cumulative counters (what the
ModelStatistics RPC reports); later the Prometheus histograms read the same stamps, so both views agree.

Stage boundaries and what each Triton duration means here::

    start ── decode ──> decoded ── wait for an instance ──> exec_start ── prepare ──> infer_start
          ── runtime ──> infer_end ── back on the loop ──> exec_end ── encode ──> end

    queue          = exec_start - decoded              (in the batcher: waiting for rows and a free instance)
    compute_input  = (decoded - start) + (infer_start - exec_start)   (decode + batch assembly)
    compute_infer  = infer_end - infer_start           (the runtime's own call)
    compute_output = end - infer_end                   (results back, split into rows, encode)

Per executed batch (not per request): ``execution_count`` and ``batch_stats`` by batch size.
    success        = end - start                       (total server time of the request)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Duration", "Stamps", "VersionStats", "now_ns"]

now_ns = time.perf_counter_ns
#: perf_counter_ns -> nanoseconds since the epoch (computed once; perf_counter has no defined epoch).
_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


class Stamps:
    """perf_counter_ns stamps of one request's stage boundaries (0 = not reached)."""

    __slots__ = ("decoded", "end", "exec_end", "exec_start", "infer_end", "infer_start", "rows", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.decoded = self.exec_start = self.infer_start = self.infer_end = self.exec_end = self.end = 0
        self.rows = 1


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
    """Cumulative statistics of one model version; updated on the event loop only (no locks needed)."""

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

    def record_success(self, s: Stamps) -> None:
        """Fold a request that was executed and answered (``s.rows`` rows)."""
        self.success.add(s.end - s.start)
        self.queue.add(s.exec_start - s.decoded)
        self.compute_input.add((s.decoded - s.start) + (s.infer_start - s.exec_start))
        self.compute_infer.add(s.infer_end - s.infer_start)
        self.compute_output.add(s.end - s.infer_end)
        self.inference_count += s.rows
        self.last_inference_ms = (_EPOCH_OFFSET_NS + s.end) // 1_000_000

    def record_execution(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """Fold one runtime execution of a batch of ``rows`` rows (one or more requests)."""
        self.execution_count += 1
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchStats()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)

    def record_failure(self, s: Stamps, end_ns: int) -> None:
        """Fold a request that failed after it reached the model (bad input, timeout, runtime error)."""
        self.fail.add(end_ns - s.start)
        if s.exec_start:  # it waited in the queue before failing: count the wait, as Triton does
            self.queue.add(s.exec_start - (s.decoded or s.start))
