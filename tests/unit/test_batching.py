"""DynamicBatcher on a fake clock: dispatch decisions, priorities, bounds, deadlines, cancellation, SLO mode.

The batcher is driven exactly as ModelVersion drives it: ``dispatch`` receives batches, the test plays the
runtime instance (resolving futures, then ``release_slot``). Time only moves when the test advances it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

import numpy as np
import pytest

from surge.server.execution.batching import BatchRequest, CostModel, DynamicBatcher, QueuePolicy, SchedulerPolicy
from surge.server.execution.stats import Stamps
from surge.server.errors import DeadlineExpired, InvalidInput, ModelNotReady, QueueFull


class FakeClock:
    """A clock and a ``call_later`` whose timers fire only when the test advances time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._ids = itertools.count()

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback, *args) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._ids), timer))
        return timer

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.now = target


class FakeTimer:
    def __init__(self, when: float, callback, args) -> None:
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Harness:
    """A batcher with ``slots`` fake instances; dispatched batches are kept until the test completes them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, slots: int = 1, in_server=None, **policy) -> None:
        self.loop = loop
        self.clock = FakeClock()
        self.batches: list[list[BatchRequest]] = []
        policy.setdefault("batching", True)
        policy.setdefault("max_batch_size", 8)
        self.batcher = DynamicBatcher(
            SchedulerPolicy(**policy), slots=slots, dispatch=self.batches.append, in_server=in_server, clock=self.clock, call_later=self.clock.call_later, name="m"
        )

    def submit(self, rows: int = 1, *, width: int = 3, value: float = 0.0, stamps: Stamps | None = None, **kwargs) -> BatchRequest:
        inputs = {"x": np.full((rows, width), value, dtype=np.float32)}
        request = BatchRequest(inputs, rows, ("y",), stamps, self.loop.create_future())
        self.batcher.submit(request, **kwargs)
        return request

    def complete(self, index: int = 0) -> list[BatchRequest]:
        """Play the instance: answer every request of batch ``index`` and free the slot."""
        batch = self.batches.pop(index)
        for request in batch:
            if not request.future.done():
                request.future.set_result(request.rows)
        self.batcher.release_slot()
        return batch

    def sizes(self) -> list[int]:
        return [sum(r.rows for r in batch) for batch in self.batches]


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_full_batch_dispatches_at_once(loop):
    h = Harness(loop, max_batch_size=4, max_queue_delay_s=10.0)
    for _ in range(4):
        h.submit()
    assert h.sizes() == [4]


def test_delay_expiry_dispatches_what_waits(loop):
    h = Harness(loop, max_batch_size=8, max_queue_delay_s=0.005)
    h.submit()
    h.clock.advance(0.002)
    h.submit()
    assert h.sizes() == []
    h.clock.advance(0.0029)
    assert h.sizes() == []
    h.clock.advance(0.0002)  # 5 ms after the oldest request
    assert h.sizes() == [2]


def test_zero_delay_dispatches_immediately_and_batches_form_while_the_instance_is_busy(loop):
    h = Harness(loop, max_batch_size=8)
    h.submit()
    assert h.sizes() == [1]
    for _ in range(5):
        h.submit()
    assert h.sizes() == [1]  # the only instance is busy: rows accumulate
    h.complete()
    assert h.sizes() == [5]


def test_preferred_batch_size_dispatches_before_the_delay(loop):
    h = Harness(loop, max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_s=1.0)
    for _ in range(3):
        h.submit()
    assert h.sizes() == []
    h.submit()
    assert h.sizes() == [4]


def test_largest_preferred_prefix_is_taken_and_the_rest_waits(loop):
    h = Harness(loop, slots=2, max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_s=1.0)
    first = [h.submit(rows=3), h.submit(rows=3)]  # 3, 6: no preferred prefix yet
    assert h.sizes() == []
    h.submit(rows=2)  # prefixes 3, 6, 8 -> 8 is preferred
    assert h.sizes() == [8] and h.batches[0][:2] == first
    h.submit(rows=5)
    assert h.sizes() == [8]  # 5 rows wait for the delay
    h.clock.advance(1.0)
    assert h.sizes() == [8, 5]


def test_multi_row_requests_are_combined_whole_and_never_split(loop):
    h = Harness(loop, max_batch_size=8, max_queue_delay_s=1.0)
    h.submit(rows=5)
    h.submit(rows=4)  # 9 > 8: the batch is full with the first request alone
    assert h.sizes() == [5]
    h.complete()
    h.clock.advance(1.0)
    assert h.sizes() == [4]


def test_requests_with_other_shapes_wait_for_their_own_batch(loop):
    h = Harness(loop, max_batch_size=8, max_queue_delay_s=1.0)
    a = h.submit(width=3)
    b = h.submit(width=5)
    c = h.submit(width=3)
    h.clock.advance(1.0)
    assert [[r is x for r, x in zip(batch, (a, c))] for batch in h.batches] == [[True, True]]
    h.complete()
    h.clock.advance(1.0)
    assert h.batches == [[b]]


def test_priorities_go_first_and_default_level_applies(loop):
    h = Harness(loop, max_batch_size=2, priority_levels=3, default_priority_level=3)
    busy = h.submit()  # occupies the instance
    low = h.submit()
    high = h.submit(priority=1)
    mid = h.submit(priority=2)
    assert h.batches == [[busy]]
    h.complete()
    assert h.batches == [[high, mid]]
    h.complete()
    assert h.batches == [[low]]
    with pytest.raises(InvalidInput, match="priority 4 is out of range.*1 to 3"):
        h.submit(priority=4)


def test_queue_full_rejects_at_once_per_priority_level(loop):
    h = Harness(
        loop, max_batch_size=1, priority_levels=2, default_priority_level=2,
        default_queue_policy=QueuePolicy(max_queue_size=2), priority_queue_policy={1: QueuePolicy(max_queue_size=1)},
    )
    h.submit()  # runs
    h.submit()
    h.submit()  # level 2 now holds 2
    with pytest.raises(QueueFull, match="2 requests waiting at priority 2 .max_queue_size 2."):
        h.submit()
    h.submit(priority=1)
    with pytest.raises(QueueFull, match="priority 1"):
        h.submit(priority=1)


def test_cancelled_requests_free_their_queue_place_and_are_never_dispatched(loop):
    h = Harness(loop, max_batch_size=1, default_queue_policy=QueuePolicy(max_queue_size=1))
    h.submit()  # runs
    waiting = h.submit()
    waiting.future.cancel()
    replacement = h.submit()  # the cancelled one is purged instead of rejecting this one
    h.complete()
    assert h.batches == [[replacement]]
    assert h.batcher.dropped_cancelled == 1


def test_expired_requests_are_dropped_before_a_batch_is_formed(loop):
    h = Harness(loop, max_batch_size=4)
    h.submit()  # occupies the instance
    doomed = h.submit(deadline=0.010)
    kept = h.submit(deadline=1.0)
    h.clock.advance(0.020)
    h.complete()
    assert h.batches == [[kept]]
    assert isinstance(doomed.future.exception(), DeadlineExpired)
    assert "dropped before compute" in str(doomed.future.exception())


def test_queue_policy_timeout_fails_on_time_even_while_the_instance_is_busy(loop):
    h = Harness(loop, max_batch_size=4, default_queue_policy=QueuePolicy(default_timeout_s=0.050))
    h.submit()  # occupies the instance for the whole test
    short = h.submit(timeout_s=0.010)  # a request may shorten the default...
    long = h.submit(timeout_s=5.0)  # ...but not lengthen it
    h.clock.advance(0.011)
    assert isinstance(short.future.exception(), DeadlineExpired) and not long.future.done()
    h.clock.advance(0.040)
    assert isinstance(long.future.exception(), DeadlineExpired)
    assert h.batcher.dropped_expired == 2


def test_close_fails_what_waits_and_refuses_new_requests(loop):
    h = Harness(loop, max_batch_size=1)
    h.submit()
    waiting = h.submit()
    h.batcher.close("unloading")
    assert isinstance(waiting.future.exception(), ModelNotReady)
    with pytest.raises(ModelNotReady):
        h.submit()


def test_batching_off_dispatches_one_request_per_execution(loop):
    h = Harness(loop, slots=1, batching=False, max_batch_size=8)
    a, b = h.submit(rows=2), h.submit(rows=3)
    assert h.batches == [[a]]
    h.complete()
    assert h.batches == [[b]]


def test_several_instances_take_batches_concurrently(loop):
    h = Harness(loop, slots=3, max_batch_size=8)
    for _ in range(3):
        h.submit()
    assert h.sizes() == [1, 1, 1]


def test_cost_model_learns_buckets_and_interpolates():
    cost = CostModel(64)
    assert cost.estimate(8) == 0.0
    for _ in range(50):
        cost.observe(1, 0.001)
        cost.observe(16, 0.004)
    assert cost.estimate(1) == pytest.approx(0.001, rel=0.05)
    assert cost.estimate(16) == pytest.approx(0.004, rel=0.05)
    assert 0.001 < cost.estimate(4) < 0.004  # between measured buckets
    assert cost.estimate(64) > cost.estimate(16)  # extrapolated above


def test_slo_mode_waits_while_the_oldest_request_can_still_meet_its_slo(loop):
    h = Harness(loop, max_batch_size=16, latency_slo_s=0.010)
    for _ in range(100):
        h.batcher.cost.observe(2, 0.002)  # a 2-row batch costs ~2 ms (no variance)
    h.submit()  # arrives alone: dispatched at once
    assert h.sizes() == [1]
    h.submit()  # arrives while the instance is busy: it has company, waiting may gather more
    h.complete()
    # 1 row in hand; waiting could grow it to 2 rows, costing 2 ms: dispatch by 10 - 2 = 8 ms
    h.clock.advance(0.0079)
    assert h.sizes() == []
    h.clock.advance(0.0002)
    assert h.sizes() == [1]


def test_slo_mode_counts_time_spent_before_the_queue(loop):
    h = Harness(loop, max_batch_size=16, latency_slo_s=0.010)
    for _ in range(100):
        h.batcher.cost.observe(2, 0.002)  # a 2-row batch: ~2 ms
    h.submit()  # alone: runs at once and keeps the instance busy
    h.submit(spent_s=0.0005)  # decoded in 0.5 ms before it reached the queue
    h.complete()
    # answered by -0.5 + 10 ms; its batch may cost 2 ms: dispatch by 7.5 ms
    h.clock.advance(0.0074)
    assert h.sizes() == []
    h.clock.advance(0.0002)
    assert h.sizes() == [1]


def test_slo_mode_dispatches_full_batches_without_waiting(loop):
    h = Harness(loop, max_batch_size=4, latency_slo_s=1.0)
    for _ in range(4):
        h.submit()
    assert h.sizes() == [1]  # the first arrived alone and went at once
    h.submit()
    assert h.sizes() == [1]  # three wait behind the busy instance: not full yet
    h.complete()
    assert h.sizes() == [4]


def test_slo_mode_never_waits_for_a_lone_client_and_waits_again_when_company_comes(loop):
    h = Harness(loop, max_batch_size=16, latency_slo_s=0.010)
    for _ in range(20):  # a closed-loop client at concurrency 1: nobody to wait for
        h.submit()
        assert h.sizes() == [1]
        h.complete()
    a = h.submit()  # a second client appears while the first one's request runs
    b = h.submit()
    assert h.batches == [[a]]
    h.complete()
    assert h.sizes() == []  # b has company (it arrived while a ran): it waits for more rows
    c = h.submit()
    h.clock.advance(0.011)
    assert h.batches == [[b, c]]
    h.complete()
    for _ in range(3):  # requests arriving alone again: after a few, dispatch at once again
        h.submit()
        h.clock.advance(0.011)
        h.complete()
    h.submit()
    assert h.sizes() == [1]


def test_slo_mode_stops_gathering_when_arrivals_go_quiet(loop):
    h = Harness(loop, max_batch_size=16, latency_slo_s=0.050)
    h.submit()  # alone: runs at once, and keeps the instance busy
    for _ in range(4):  # a burst behind it: one request every 0.2 ms
        h.submit()
        h.clock.advance(0.0002)
    h.complete()
    assert h.sizes() == []
    h.clock.advance(0.0017)  # 4 typical gaps are 0.8 ms, but the quiet rule waits at least 2 ms after the last arrival
    assert h.sizes() == []
    h.clock.advance(0.0002)  # 2 ms after the last arrival, far before the 50 ms SLO
    assert h.sizes() == [4]


def test_slo_mode_stops_gathering_when_every_request_the_clients_keep_in_the_server_is_here(loop):
    in_server = [0]  # what ModelVersion counts: requests queued, executing or being answered
    h = Harness(loop, max_batch_size=16, latency_slo_s=0.050, in_server=lambda: in_server[0])

    def arrive() -> BatchRequest:
        in_server[0] += 1
        return h.submit()

    def answer() -> None:
        batch = h.complete()  # the instance is free while its requests are still being answered...
        in_server[0] -= len(batch)  # ...then they leave

    a = arrive()  # four closed-loop clients: the first runs alone, three queue behind it (the peak is 4)
    others = [arrive() for _ in range(3)]
    assert h.batches == [[a]]
    answer()  # all four are in the server (three queued, one being answered): nobody else can join
    assert h.batches == [others]
    answer()
    assert in_server[0] == 0
    first = [arrive() for _ in range(3)]  # the clients come back one by one: three of the usual four are here
    assert h.sizes() == []
    last = arrive()  # the fourth: everyone is here, no need to wait for the SLO or a quiet gap
    assert h.batches == [[*first, last]]


def test_slo_margin_moves_the_plan_earlier_after_late_answers_and_back_after_timely_ones(loop):
    h = Harness(loop, max_batch_size=16, latency_slo_s=0.010)
    for _ in range(100):
        h.batcher.cost.observe(2, 0.002)
    late, timely = 11_000_000, 6_000_000  # ns
    for _ in range(200):  # recent answers on time
        h.batcher.observe_latency(timely, True)
    h.batcher.observe_latency(late, False)  # late, but its batch did not leave by the plan (e.g. it waited for the instance)
    assert h.batcher.margin_s == 0.0
    for _ in range(5):  # late although its batch left when the plan said: the plan must leave more room
        h.batcher.observe_latency(late, True)
    assert h.batcher.margin_s == pytest.approx(5 * 0.02 * 0.010 * 0.995)
    for _ in range(1000):
        for _ in range(20):  # one late answer in 21 keeps the share of late ones under 10%...
            h.batcher.observe_latency(timely, True)
        h.batcher.observe_latency(late, True)
    assert h.batcher.margin_s == pytest.approx(0.005)  # ...and the margin grows to at most half the SLO
    h.submit()  # alone: runs at once
    h.submit()  # waits: by 10 - 5 (margin) - 2 (cost) = 3 ms
    h.complete()
    h.clock.advance(0.0029)
    assert h.sizes() == []
    h.clock.advance(0.0002)
    assert h.sizes() == [1]
    for _ in range(50_000):  # timely answers take the margin back, 1/199 of a step each
        h.batcher.observe_latency(timely, True)
    assert h.batcher.margin_s == 0.0


def test_slo_margin_is_given_back_when_most_answers_are_late(loop):
    """Closed-loop clients keeping more requests in the server than it answers within the SLO: out of reach,
    so the margin must not shrink batches (that would only lower throughput)."""
    h = Harness(loop, max_batch_size=16, latency_slo_s=0.010)
    for _ in range(10):
        h.batcher.observe_latency(11_000_000, True)
    grown = h.batcher.margin_s
    assert grown > 0
    for _ in range(5000):
        h.batcher.observe_latency(30_000_000, True)
    assert h.batcher.late_share > 0.9
    assert h.batcher.margin_s < grown


def test_slo_margin_settles_where_half_a_percent_of_answers_are_late(loop):
    """The margin is an online quantile tracker: on a latency that falls 1:1 with it, late answers settle at 0.5%."""
    h = Harness(loop, max_batch_size=16, latency_slo_s=0.010)
    rng = np.random.default_rng(7)
    noise = rng.exponential(0.001, 400_000)  # seconds: 8.5 ms + Exp(1 ms) - margin; 0.5% late needs a 3.8 ms margin
    late = 0
    for i, extra in enumerate(noise):
        latency_ns = int((0.0085 + extra - h.batcher.margin_s) * 1e9)
        h.batcher.observe_latency(latency_ns, True)
        late += i >= 200_000 and latency_ns > 10_000_000
    assert late / 200_000 == pytest.approx(0.005, rel=0.25)
    assert h.batcher.margin_s == pytest.approx(0.0038, abs=0.0006)


def test_slo_mode_marks_only_batches_that_left_by_the_plan(loop):
    h = Harness(loop, max_batch_size=16, latency_slo_s=0.010)
    for _ in range(100):
        h.batcher.cost.observe(2, 0.002)
    h.submit(stamps=Stamps(0))  # alone: at once, not by a plan
    waiting = h.submit(stamps=Stamps(0))
    (first,) = h.complete()
    assert not first.stamps.planned
    h.clock.advance(0.0081)  # the plan's wait (8 ms) ended with the instance free
    assert h.batches == [[waiting]] and waiting.stamps.planned
    # the instance is still busy when the next plan ends: that batch leaves when it frees up, not by the plan
    queued = h.submit(stamps=Stamps(0))
    h.clock.advance(0.009)
    h.complete()
    assert h.batches == [[queued]] and not queued.stamps.planned


def test_cost_estimates_follow_new_measurements():
    """Estimates are cached between measurements (they are asked on every arrival); a measurement refreshes them."""
    cost = CostModel(64)
    cost.observe(1, 0.001)
    cost.observe(16, 0.004)
    between = cost.estimate(4)
    assert cost.estimate(4) == between
    for _ in range(50):
        cost.observe(16, 0.008)
    assert cost.estimate(4) > between  # interpolated toward the slower 16-row bucket
    assert cost.estimate(16) == pytest.approx(0.008, rel=0.1)


@pytest.mark.parametrize("seed", range(5))
def test_fixed_delay_decisions_match_a_full_scan_under_random_traffic(loop, seed):
    """Arrivals skip the queue scan while too few rows wait for any batch to be full or of a preferred size. Under
    random arrivals, sizes, cancellations, deadlines, priorities and completions, every decision equals the one a
    batcher that always scans makes (the rows it counts follow every way a request leaves the queues)."""
    rng = np.random.default_rng(seed)
    policy = {"max_batch_size": 8, "max_queue_delay_s": 0.004, "preferred_batch_sizes": [4, 6], "priority_levels": 2,
              "default_queue_policy": QueuePolicy(max_queue_size=12)}
    fast, full = Harness(loop, **policy), Harness(loop, **policy)
    full.batcher._trigger_rows = 0  # always scans
    live: list[tuple[BatchRequest, BatchRequest]] = []
    for _ in range(400):
        action = rng.integers(0, 6)
        if action <= 2:
            rows, priority = int(rng.integers(1, 4)), int(rng.integers(1, 3))
            timeout = float(rng.choice([0.0, 0.002, 0.01]))
            deadline = float(rng.choice([0.0, 0.003]))  # a gRPC deadline: no timer, dropped when found passed
            pair = []
            for h in (fast, full):
                try:
                    pair.append(h.submit(rows, priority=priority, timeout_s=timeout or None, deadline=h.clock.now + deadline if deadline else None))
                except QueueFull:
                    pair.append(None)
            assert (pair[0] is None) == (pair[1] is None)
            if pair[0] is not None:
                live.append((pair[0], pair[1]))
        elif action == 3 and live:
            a, b = live.pop(int(rng.integers(0, len(live))))
            a.future.cancel()
            b.future.cancel()
        elif action == 4:
            step = float(rng.uniform(0, 0.003))
            for h in (fast, full):
                h.clock.advance(step)
        elif fast.batches:
            fast.complete()
            full.complete()
        assert fast.sizes() == full.sizes()
        waiting = sum(r.rows for q in fast.batcher._queues for r in q)
        assert fast.batcher._rows_waiting == waiting
