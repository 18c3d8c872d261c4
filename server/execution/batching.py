"""The dynamic batcher: turns concurrent requests into few runtime calls, Triton's semantics counted in rows.

One ``DynamicBatcher`` per model version sits between the servicer and the version's runtime instances.
It is event-driven: ``submit`` appends to a queue and returns a future; a scheduling pass runs when a
request arrives, when an instance frees up, and when the one armed timer (``call_later``) fires. There
is no polling loop and no task per request.

Scheduling pass (repeated while an instance slot is free and requests wait):

1. Drop, before anything is formed, requests that are done (the client cancelled) or whose deadline has
   passed (they fail with DeadlineExpired and never cost compute).
2. Scan the queues in priority order (level 1 first), oldest first, taking whole requests whose
   non-batch shapes match the oldest request's, while the rows fit in ``max_batch_size``.
3. Dispatch now if the scan is **full** (``max_batch_size`` rows, or the next request does not fit), or a
   prefix of it is exactly a **preferred batch size** (the largest such prefix is dispatched), or
   **the wait is over** (see below). Otherwise arm the timer for the moment the wait ends.

When the wait is over:

- Fixed delay (Triton's ``max_queue_delay``): ``oldest.enqueued + max_queue_delay_s``; 0 dispatches at once.
- Latency-SLO mode (``latency_slo_s``, what Triton lacks): the batcher learns what a batch of ``b`` rows
  costs from its own executions (``CostModel``: per power-of-two bucket, an exponentially weighted mean
  and mean absolute deviation of the measured execution time; ``cost(b) = mean + 3 * deviation``,
  interpolated between buckets, extrapolated linearly above the largest measured one). The oldest request
  must be answered by ``oldest.arrived + latency_slo_s``, where ``arrived`` is when the server began
  handling it (its decoding is already spent when it reaches the queue). Waiting lets the batch grow to the
  next bucket, whose cost is ``cost(next)``. So the wait ends at ``oldest.arrived + latency_slo_s - margin -
  cost(next)``, where ``next`` is the next power of two above the rows in hand (capped at
  ``max_batch_size``). The **margin** covers what the plan cannot see: the time after the batch (results
  handed back on the event loop, responses encoded), the timer firing late on a busy loop, noise. It is
  steered by the realised server latencies (``observe_latency``, fed every answered request by the version's
  statistics) as an online quantile tracker: a request answered later than the SLO whose batch left when
  its plan said (``Stamps.planned``) raises the margin by ``_MARGIN_STEP`` of the SLO; a timely answer lowers
  it by ``_SLO_MISS_SHARE`` of that step; so it settles where ``_SLO_MISS_SHARE`` (0.5%) of answers are late,
  a p99 under the SLO. It stays within 0..``_MARGIN_MAX`` of the SLO. Late answers whose batch did not
  leave by the plan (it waited for a busy instance, or left early by a rule below) do not raise it: a shorter
  plan cannot help them, and under load smaller batches would make the loop busier still (an earlier
  experiment that subtracted a learned post-batch time on every batch lost throughput at concurrency 64).
  When more than ``_OUT_OF_REACH`` (10%) of recent answers are late, the SLO cannot be held at this load at
  all (64 closed-loop clients on a model that answers 2,000/s spend 32 ms in the server whatever the
  batcher does): the margin is given back, and the batcher gathers the largest batches the SLO plan allows.
  Three rules keep waits from costing latency when they cannot gather anything:

  * **Alone:** a request that arrives while nothing is queued and every instance is idle has no company;
    after ``_ALONE_STREAK`` such arrivals in a row (a closed-loop client at concurrency 1, or light open-loop
    load), requests are dispatched at once. The first arrival that finds a queue or a busy instance turns
    waiting back on. (A lone request cannot gain from a wait: nobody else is there to join it.)
  * **Everyone is here:** ``in_server()`` (given by the model version) counts the version's requests in the
    server: queued, executing, or answered but not yet resumed. The batcher remembers its peak, seen at arrivals and
    decaying by 0.1% per arrival. Closed-loop clients keep about that many requests in the server; once the
    count is back at 95% of the peak, the requests not in the queue are executing or being answered and will
    not join: waiting longer gathers nobody (closed-loop clients at concurrency 8 no longer wait for a quiet gap).
  * **Quiet:** a batch stops gathering when no request arrived for 4 typical gaps (at least 2 ms), where
    the typical gap is an exponentially weighted mean of the gaps between arrivals that found company
    (open-loop or bursty arrivals that pause; the rest of the wait would only add latency).

  Under heavy load batches fill before the wait ends. The cost estimate is fed by warm-up and every
  executed batch.

Requests carry several rows and are combined whole; one larger than ``max_batch_size`` is rejected by
the codec before it gets here. Without batching (``batching=False``), every dispatch takes exactly one
request, with the same queueing, priorities, deadlines and bounds.

Priorities: ``priority_levels`` queues, level 1 highest, ``default_priority_level`` for requests that
give none. Each level has a queue policy: ``max_queue_size`` (requests beyond it are rejected at once
with QueueFull) and ``default_timeout_s`` (a request's own timeout may only shorten it).

The clock and the timer are injected (``clock``, ``call_later``), so unit tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DeadlineExpired, InvalidInput, ModelNotReady, QueueFull

__all__ = ["BatchRequest", "CostModel", "DynamicBatcher", "QueuePolicy", "SchedulerPolicy"]

#: SLO mode: after this many arrivals in a row that found nothing queued and every instance idle, dispatch at once.
_ALONE_STREAK = 4
#: SLO mode: a batch stops gathering when no request arrived for this many typical in-burst gaps.
_QUIET_GAPS = 4
#: ...and never sooner than this after the last arrival (requests delivered in one loop turn show gaps of ~0, and a
#: busy event loop delivers arrivals with pauses while it answers others; 0.5 ms ended batches at ~6 rows at c64).
_QUIET_MIN_S = 0.002
#: SLO mode: per arrival, the remembered peak of requests in the server decays by this factor...
_PEAK_DECAY = 0.999
#: ...and a batch stops gathering once the requests in the server reach this share of that peak.
_PEAK_SHARE = 0.95
#: SLO mode: the share of requests allowed to finish later than the SLO (the margin controller's target)...
_SLO_MISS_SHARE = 0.005
#: ...the margin's step per late request, as a share of the SLO (an on-time one takes back _SLO_MISS_SHARE of it)...
_MARGIN_STEP = 0.02
#: ...and the most the margin may take from the SLO.
_MARGIN_MAX = 0.5
#: SLO mode: when more than this share of recent answers is late (an exponentially weighted share, about the last
#: 100 answers), the SLO is out of reach at this load (e.g. closed-loop clients keeping more requests in the server
#: than it can answer within the SLO): the margin stops growing and is given back, so batches stay large.
_OUT_OF_REACH = 0.1
#: Requests allowed to wait per priority level when no ``max_queue_size`` is configured (never unbounded).
DEFAULT_MAX_QUEUE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Per-priority queue policy (Triton's ModelQueuePolicy, in seconds; REJECT on timeout)."""

    max_queue_size: int = 0
    """Requests waiting at this level beyond which new ones are rejected (0: DEFAULT_MAX_QUEUE_SIZE)."""
    default_timeout_s: float = 0.0
    """Time a request may wait before it is rejected (0: none); a request's own timeout may only shorten it."""


@dataclass(frozen=True, slots=True)
class SchedulerPolicy:
    """Everything the batcher needs from the model's config."""

    batching: bool = False
    """False: one request per execution (same queueing, priorities and deadlines)."""
    max_batch_size: int = 0
    """Rows per batch (0: the model has no batch dimension; implies batching=False)."""
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    latency_slo_s: float | None = None
    """Latency-SLO mode: the target server latency of every request (replaces max_queue_delay_s)."""
    priority_levels: int = 1
    default_priority_level: int = 1
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    priority_queue_policy: dict[int, QueuePolicy] = field(default_factory=dict)


class BatchRequest:
    """One request waiting in (or dispatched by) the batcher."""

    __slots__ = ("arrived", "deadline", "enqueued", "future", "inputs", "output_names", "priority", "rows", "shape_key", "stamps", "timer")

    def __init__(
        self, inputs: dict[str, np.ndarray], rows: int, output_names: Sequence[str], stamps: Any, future: asyncio.Future[Any]
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.output_names = output_names
        self.stamps = stamps
        self.future = future
        self.enqueued = 0.0
        self.arrived = 0.0  # SLO mode: enqueued minus the server time already spent on it (decoding)
        self.deadline: float | None = None
        self.priority = 1
        self.timer: asyncio.TimerHandle | None = None
        # Requests batch together only when every input has the same non-batch shape (set by submit, batching only).
        self.shape_key: tuple[Any, ...] = ()


class CostModel:
    """Execution time of a batch as a function of its rows, learned from measurements (seconds).

    Buckets are powers of two; each keeps an exponentially weighted mean and mean absolute deviation.
    """

    def __init__(self, max_batch_size: int, alpha: float = 0.1) -> None:
        self._alpha = alpha
        self._buckets = [1 << i for i in range(max(1, max_batch_size).bit_length() + 1)]
        self._mean: dict[int, float] = {}
        self._dev: dict[int, float] = {}
        self._cached: dict[int, float] = {}  # estimate per bucket, asked on every arrival; cleared by observe

    def _bucket(self, rows: int) -> int:
        return 1 << max(0, (rows - 1).bit_length())

    def observe(self, rows: int, seconds: float) -> None:
        """Fold one executed batch's measured time into its bucket."""
        bucket = self._bucket(rows)
        self._cached.clear()
        mean = self._mean.get(bucket)
        if mean is None:
            self._mean[bucket], self._dev[bucket] = seconds, seconds / 4
            return
        self._mean[bucket] = mean + self._alpha * (seconds - mean)
        self._dev[bucket] += self._alpha * (abs(seconds - mean) - self._dev[bucket])

    def estimate(self, rows: int) -> float:
        """A high-percentile estimate (mean + 3 deviations) of a ``rows``-row batch; 0 before any measurement."""
        if not self._mean:
            return 0.0
        bucket = self._bucket(rows)
        cached = self._cached.get(bucket)
        if cached is None:
            cached = self._cached[bucket] = self._estimate(bucket)
        return cached

    def _estimate(self, bucket: int) -> float:
        if bucket in self._mean:
            return self._mean[bucket] + 3 * self._dev[bucket]
        known = sorted(self._mean)
        below = [b for b in known if b < bucket]
        above = [b for b in known if b > bucket]
        lo = below[-1] if below else None
        hi = above[0] if above else None
        if lo is not None and hi is not None:
            f = (bucket - lo) / (hi - lo)
            return (1 - f) * self._estimate(lo) + f * self._estimate(hi)
        ref = lo if lo is not None else hi
        assert ref is not None
        return self._estimate(ref) * (bucket / ref if lo is not None else 1.0)  # linear in rows above, flat below


class DynamicBatcher:
    """Forms batches from submitted requests and hands them to ``dispatch`` when an instance slot is free.

    ``dispatch(batch)`` is called on the event loop with a list of BatchRequest; whoever executes the batch
    resolves each request's future and calls ``release_slot()`` when the instance is free again.
    ``in_server()``: the version's requests in the server, for SLO mode's everyone-is-here rule (None: rule off).
    """

    def __init__(
        self,
        policy: SchedulerPolicy,
        *,
        slots: int,
        dispatch: Callable[[list[BatchRequest]], None],
        in_server: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        call_later: Callable[..., Any] | None = None,
        name: str = "",
    ) -> None:
        self.policy = policy
        self.cost = CostModel(policy.max_batch_size)
        self._name = name
        self._batching = policy.batching and policy.max_batch_size > 0
        self.slo_mode = self._batching and policy.latency_slo_s is not None
        """Latency-SLO mode: the version feeds ``observe_latency`` and exports the margin."""
        self._max_rows = policy.max_batch_size if self._batching else 0
        self._preferred = sorted(set(p for p in policy.preferred_batch_sizes if p <= policy.max_batch_size), reverse=True)
        self._free_slots = slots
        self._slots = slots
        self._dispatch = dispatch
        self._clock = clock
        self._call_later = call_later
        levels = max(1, policy.priority_levels)
        self._queues: list[collections.deque[BatchRequest]] = [collections.deque() for _ in range(levels)]
        self._rows_waiting = 0  # rows of every queued request (cancelled ones too, until dropped)
        # Below this many rows no batch can be full or of a preferred size: with a fixed delay the oldest request's
        # wait decides alone, and an arrival need not scan the queue (the scan made a batch cost quadratic in its size).
        self._trigger_rows = min([*self._preferred, self._max_rows]) if self._batching else 0
        self._policies = [policy.priority_queue_policy.get(level, policy.default_queue_policy) for level in range(1, levels + 1)]
        self._limits = [p.max_queue_size or DEFAULT_MAX_QUEUE_SIZE for p in self._policies]
        self._timer: Any = None
        self._timer_at = math.inf
        self._closed = False
        self.dropped_expired = 0
        self.dropped_cancelled = 0
        # SLO mode: arrivals in a row that found the batcher idle (start as if alone: the first request does not wait)
        self._alone = _ALONE_STREAK
        self._in_server = in_server
        self._peak = 0.0  # SLO mode: decayed maximum of the requests in the server seen at arrivals
        self._last_arrival = 0.0
        self._burst_gap_s: float | None = None  # EWMA of the gaps between arrivals while a batch is gathering
        self._slo_bound = False  # SLO mode: the last wait computed ends at the SLO plan (not a quiet gap)
        self._releasing = False
        self.margin_s = 0.0  # SLO mode: taken from the SLO when planning waits, steered by the realised latencies
        self.late_share = 0.0  # SLO mode: recent answers later than the SLO (exponentially weighted)
        slo = policy.latency_slo_s or 0.0
        self._slo_ns = int(slo * 1e9)
        self._margin_up = _MARGIN_STEP * slo * (1 - _SLO_MISS_SHARE)
        self._margin_down = _MARGIN_STEP * slo * _SLO_MISS_SHARE
        self._margin_max = _MARGIN_MAX * slo

    # -- public API (event loop) -----------------------------------------------------------------

    def submit(
        self, request: BatchRequest, *, deadline: float | None = None, priority: int = 0, timeout_s: float | None = None, spent_s: float = 0.0
    ) -> None:
        """Queue a request. ``deadline`` is a ``clock()`` value (the gRPC deadline); ``timeout_s`` its own timeout;
        ``spent_s`` the server time it already took before reaching the queue (decoding), which SLO mode counts.

        Raises ModelNotReady (closing), InvalidInput (priority out of range) or QueueFull, at once.
        """
        if self._closed:
            raise ModelNotReady(f"model '{self._name}' is unloading")
        levels = len(self._queues)
        level = priority or self.policy.default_priority_level
        if not 1 <= level <= levels:
            raise InvalidInput(f"priority {priority} is out of range for model '{self._name}': it has priority levels 1 to {levels}")
        queue = self._queues[level - 1]
        limit = self._limits[level - 1]
        if len(queue) >= limit:
            self._purge(queue, self._clock())
            if len(queue) >= limit:
                raise QueueFull(
                    f"queue full for model '{self._name}': {len(queue)} requests waiting at priority {level} "
                    f"(max_queue_size {limit}); retry later"
                )
        now = self._clock()
        request.enqueued = now
        request.arrived = now - spent_s
        if self._batching:
            request.shape_key = tuple((name, a.shape[1:]) for name, a in request.inputs.items())
        if self._batching and self.policy.latency_slo_s is not None:
            if any(self._queues):
                gap = now - self._last_arrival
                self._burst_gap_s = gap if self._burst_gap_s is None else self._burst_gap_s + 0.1 * (gap - self._burst_gap_s)
                self._alone = 0
            elif self._free_slots < self._slots:
                self._alone = 0
            else:
                self._alone += 1
            self._last_arrival = now
            if self._in_server is not None:
                self._peak = max(float(self._in_server()), self._peak * _PEAK_DECAY)
        request.priority = level
        own = self._policies[level - 1].default_timeout_s
        if timeout_s is not None and timeout_s > 0:
            own = min(own, timeout_s) if own else timeout_s
        if own:
            deadline = now + own if deadline is None else min(deadline, now + own)
        request.deadline = deadline
        if own:  # our own timeout: fail it on time even while every instance is busy (the gRPC deadline cancels by itself)
            call_later = self._call_later or asyncio.get_running_loop().call_later
            request.timer = call_later(own, self._expire, request)
        queue.append(request)
        self._rows_waiting += request.rows
        self._schedule()

    def release_slot(self) -> None:
        """An instance finished its batch: schedule again."""
        self._free_slots += 1
        self._releasing = True  # a batch that leaves now waited for the instance, not for its plan
        try:
            self._schedule()
        finally:
            self._releasing = False

    def take_slot(self) -> None:
        """An idle instance left service (its process died): one slot fewer until ``release_slot`` gives it back."""
        self._free_slots -= 1

    def observe_latency(self, total_ns: int, planned: bool) -> None:
        """SLO mode: one answered request's server latency (arrival to response), which steers the margin;
        ``planned``: its batch left when the planned wait ended (only those misses say the plan was late)."""
        if total_ns > self._slo_ns:
            self.late_share += 0.01 * (1.0 - self.late_share)
            if self.late_share >= _OUT_OF_REACH:
                self.margin_s = max(0.0, self.margin_s - self._margin_down)
            elif planned:
                self.margin_s = min(self._margin_max, self.margin_s + self._margin_up)
            return
        self.late_share -= 0.01 * self.late_share
        if self.margin_s > 0.0:
            self.margin_s = max(0.0, self.margin_s - self._margin_down)

    def queued(self) -> int:
        """Requests waiting (including ones cancelled but not yet dropped)."""
        return sum(len(q) for q in self._queues)

    def close(self, reason: str) -> None:
        """Refuse new requests and fail every queued one with ModelNotReady(reason)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._rows_waiting = 0
        for queue in self._queues:
            while queue:
                request = queue.popleft()
                _cancel_timer(request)
                if not request.future.done():
                    request.future.set_exception(ModelNotReady(reason))

    # -- scheduling ------------------------------------------------------------------------------

    def _schedule(self) -> None:
        while self._free_slots > 0:
            now = self._clock()
            batch, wait_until = self._form(now)
            if batch is None:
                if wait_until is not None:
                    self._arm(wait_until, now)
                return
            self._free_slots -= 1
            self._dispatch(batch)

    def _form(self, now: float) -> tuple[list[BatchRequest] | None, float | None]:
        """A batch to dispatch now, or (None, when to look again) / (None, None) when nothing waits."""
        head = self._head(now)
        if head is None:
            return None, None
        if not self._batching:
            self._take([head])
            return [head], None
        if self._rows_waiting < self._trigger_rows and self.policy.latency_slo_s is None:
            wait_until = head.enqueued + self.policy.max_queue_delay_s
            if now < wait_until:
                return None, wait_until
        candidates: list[BatchRequest] = []
        rows = 0
        full = False
        prefix_rows: list[int] = []
        for queue in self._queues:
            for request in queue:
                if request.future.done() or request.shape_key != head.shape_key:
                    continue
                if request.deadline is not None and request.deadline <= now:
                    continue  # dropped by _head when it reaches the front
                if rows + request.rows > self._max_rows:
                    full = True
                    break
                candidates.append(request)
                rows += request.rows
                prefix_rows.append(rows)
                if rows == self._max_rows:
                    full = True
                    break
            if full:
                break
        take = len(candidates)
        if not full:
            preferred = next((p for p in self._preferred if p in prefix_rows), None)
            if preferred is not None:
                take = prefix_rows.index(preferred) + 1
            else:
                wait_until = self._wait_until(head, rows)
                if now < wait_until:
                    return None, wait_until
                if self._slo_bound and not self._releasing:  # the plan's wait ended: tell the margin controller
                    for request in candidates:
                        if request.stamps is not None:
                            request.stamps.planned = True
        batch = candidates[:take]
        self._take(batch)
        return batch, None

    def _wait_until(self, oldest: BatchRequest, rows: int) -> float:
        slo = self.policy.latency_slo_s
        self._slo_bound = False
        if slo is None:
            return oldest.enqueued + self.policy.max_queue_delay_s
        if self._alone >= _ALONE_STREAK:
            return -math.inf  # requests arrive alone (light load): nobody would join, dispatch now
        grow_to = min(self._max_rows, 1 << rows.bit_length())
        deadline = oldest.arrived + slo - self.margin_s - self.cost.estimate(grow_to)
        if self._in_server is not None and self._in_server() >= _PEAK_SHARE * self._peak:
            return -math.inf  # every request the clients usually have in the server is here: nobody else is coming
        if self._burst_gap_s is not None:  # arrivals have gone quiet: the burst is over, stop gathering
            quiet = self._last_arrival + max(_QUIET_GAPS * self._burst_gap_s, _QUIET_MIN_S)
            if quiet < deadline:
                return quiet
        self._slo_bound = True
        return deadline

    def _head(self, now: float) -> BatchRequest | None:
        """The oldest live request of the highest non-empty priority; drops dead ones on the way."""
        for queue in self._queues:
            self._purge_front(queue, now)
            if queue:
                return queue[0]
        return None

    def _purge_front(self, queue: collections.deque[BatchRequest], now: float) -> None:
        while queue:
            request = queue[0]
            if request.future.done():
                queue.popleft()
                self._rows_waiting -= request.rows
                _cancel_timer(request)
                self._count_cancelled(request, now)
            elif request.deadline is not None and request.deadline <= now:
                queue.popleft()
                self._rows_waiting -= request.rows
                self._expire(request)
            else:
                return

    def _purge(self, queue: collections.deque[BatchRequest], now: float) -> None:
        alive = collections.deque[BatchRequest]()
        for request in queue:
            if request.future.done():
                _cancel_timer(request)
                self._count_cancelled(request, now)
            elif request.deadline is not None and request.deadline <= now:
                self._expire(request)
            else:
                alive.append(request)
        self._rows_waiting -= sum(r.rows for r in queue) - sum(r.rows for r in alive)
        queue.clear()
        queue.extend(alive)

    def _count_cancelled(self, request: BatchRequest, now: float) -> None:
        """A request whose future is done before dispatch: gRPC cancels the handler when its deadline passes
        (counted as expired, the reason that matters) or when the client goes away (cancelled)."""
        if request.future.cancelled():
            if request.deadline is not None and request.deadline <= now:
                self.dropped_expired += 1
            else:
                self.dropped_cancelled += 1

    def _expire(self, request: BatchRequest) -> None:
        _cancel_timer(request)
        if not request.future.done():
            self.dropped_expired += 1
            waited_ms = (self._clock() - request.enqueued) * 1e3
            request.future.set_exception(
                DeadlineExpired(f"request timed out after waiting {waited_ms:.1f} ms in the queue of model '{self._name}' (dropped before compute)")
            )

    def _take(self, batch: list[BatchRequest]) -> None:
        chosen = {id(r) for r in batch}
        left = len(batch)
        for queue in self._queues:
            # Common case: the batch is the front of the queue (stale entries aside): pop, no rebuild.
            while queue and left and (id(queue[0]) in chosen or queue[0].future.done()):
                request = queue.popleft()
                self._rows_waiting -= request.rows
                if id(request) in chosen:
                    left -= 1
            if left and any(id(r) in chosen for r in queue):
                kept = [r for r in queue if id(r) not in chosen]
                left -= len(queue) - len(kept)
                self._rows_waiting -= sum(r.rows for r in queue if id(r) in chosen)
                queue.clear()
                queue.extend(kept)
            if not left:
                break
        for request in batch:
            _cancel_timer(request)

    def _arm(self, when: float, now: float) -> None:
        if self._timer is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._timer_at = when
        self._timer = call_later(max(0.0, when - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._schedule()


def _cancel_timer(request: BatchRequest) -> None:
    if request.timer is not None:
        request.timer.cancel()
        request.timer = None
