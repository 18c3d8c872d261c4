"""Per-request stage stamps and the cumulative per-version statistics built from them.

Every request carries one ``Stamps`` object; each stage boundary writes ``time.perf_counter_ns()`` into
it once. ``VersionStats`` folds finished requests into Triton's cumulative counters (what the
ModelStatistics RPC reports); later the Prometheus histograms read the same stamps, so both views agree.

Stage boundaries and what each Triton duration means here::

    start ── decode ──> decoded ── wait for an instance ──> exec_start ── prepare ──> infer_start
          ── runtime ──> infer_end ── back on the loop ──> exec_end ── encode ──> end

    queue          = exec_start - decoded              (waiting for a free runtime instance)
    compute_input  = (decoded - start) + (infer_start - exec_start)   (decode + handing inputs over)
    compute_infer  = infer_end - infer_start           (the runtime's own call)
    compute_output = (exec_end - infer_end) + (end - exec_end)        (results back + encode)
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
        """Fold a request that was executed and answered (one execution of ``s.rows`` rows)."""
        compute_input = (s.decoded - s.start) + (s.infer_start - s.exec_start)
        compute_infer = s.infer_end - s.infer_start
        compute_output = (s.end - s.infer_end)
        self.success.add(s.end - s.start)
        self.queue.add(s.exec_start - s.decoded)
        self.compute_input.add(compute_input)
        self.compute_infer.add(compute_infer)
        self.compute_output.add(compute_output)
        self.inference_count += s.rows
        self.execution_count += 1
        self.last_inference_ms = (_EPOCH_OFFSET_NS + s.end) // 1_000_000
        batch = self.batches.get(s.rows)
        if batch is None:
            batch = self.batches[s.rows] = BatchStats()
        batch.compute_input.add(compute_input)
        batch.compute_infer.add(compute_infer)
        batch.compute_output.add(compute_output)

    def record_failure(self, s: Stamps, end_ns: int) -> None:
        """Fold a request that failed after it reached the model (bad input, timeout, runtime error)."""
        self.fail.add(end_ns - s.start)
        if s.exec_start:  # it waited in the queue before failing: count the wait, as Triton does
            self.queue.add(s.exec_start - (s.decoded or s.start))
