"""The load itself: closed loop (N requests in flight) or open loop (Poisson or constant arrivals), over several
grpc.aio channels, in this process or several (``run_level``).

Requests are the plan's pre-serialised bytes, sent through a bytes-in bytes-out ``ModelInfer`` method (no
protobuf work per request on the send side); of each response only ``model_version`` is read (a prefix scan,
``served_version``). Latency is measured from the *intended* send time: in closed loop that is the moment the
request is sent; in open loop it is the request's slot in the arrival schedule, so a generator or server that
falls behind shows up in the latency instead of silently sending later (no coordinated omission). How late
the generator actually sent is kept apart (``send_lag``).

Recording: one HDR histogram (microseconds) per (request kind, served version) and one per second of the run
for the timeline; requests whose intended time falls in the warm-up are sent but not recorded.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import queue as queue_module
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import numpy as np

from surge.clients._common import call_metadata
from surge.clients.loadgen.histogram import new_histogram, record_many
from surge.clients.loadgen.scenario import Plan
from surge.protos import grpc_service_pb2 as pb

__all__ = ["Load", "ProcessResult", "run_level", "served_version"]

METHOD = "/inference.GRPCInferenceService/ModelInfer"
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # one TCP connection per channel: without it, channels to one address share a subchannel (one connection)
    ("grpc.use_local_subchannel_pool", 1),
)
#: The multi-process start is this far in the future, so that every process is connected and waiting.
START_DELAY_S = 2.0
CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Load:
    """One level of load. Exactly one of ``concurrency`` (closed loop) and ``rate`` (open loop, requests/s)."""

    concurrency: int | None = None
    rate: float | None = None
    arrival: str = "poisson"  # or "constant"
    duration_s: float | None = 10.0  # measured window; None when ``requests`` counts instead
    requests: int | None = None  # measured requests (count mode)
    warmup_s: float = 1.0
    connections: int = 4
    max_inflight: int = 16384  # open loop: beyond this many outstanding requests the schedule waits (still counted from its slot)
    drain_s: float = 10.0  # after the window, how long outstanding requests may take before they are cancelled
    seed: int = 0
    phase_s: float = 0.0  # open loop: this process's schedule starts this much later (interleaves constant arrivals)

    @property
    def closed(self) -> bool:
        return self.concurrency is not None

    def share(self, index: int, processes: int) -> Load:
        """This process's part of the load when ``processes`` share it."""
        def part(total: int) -> int:
            return total // processes + (1 if index < total % processes else 0)

        return Load(
            concurrency=None if self.concurrency is None else part(self.concurrency),
            rate=None if self.rate is None else self.rate / processes,
            arrival=self.arrival, duration_s=self.duration_s,
            requests=None if self.requests is None else part(self.requests),
            warmup_s=self.warmup_s, connections=max(1, part(self.connections)), max_inflight=self.max_inflight,
            drain_s=self.drain_s, seed=self.seed + 7919 * index,
            # constant arrivals from P processes interleave: process i starts i/rate later (Poisson needs no phase)
            phase_s=index / self.rate if self.rate and self.arrival == "constant" else 0.0,
        )  # fmt: skip


@dataclass
class ProcessResult:
    """What one process measured (histograms hdr-encoded, so it crosses process boundaries)."""

    histograms: dict[tuple[int, str], bytes]  # (kind index, served version) -> latency histogram (us)
    rows: dict[tuple[int, str], int]
    timeline: dict[int, bytes]  # second of the measured window -> latency histogram of completions in it
    timeline_errors: dict[int, int]
    errors: dict[str, int]  # gRPC status name -> count (measured requests only)
    completed_in_window: int  # successes completed inside the window (throughput)
    rows_in_window: int
    last_completion_s: float  # relative to the window start
    send_lag: bytes | None  # open loop: actual minus intended send time (us)
    service: bytes | None  # open loop: latency from the actual send (us), what a generator without the schedule would report
    sent_span: tuple[int, float, float] | None  # open loop: measured sends, first and last actual send (s from the window start)
    cpu_s: float  # this process's CPU time during the window
    wall_s: float


def served_version(response: bytes) -> str:
    """``model_version`` of a serialised ModelInferResponse, read from its first fields (a full parse otherwise)."""
    # Fields are written in number order: model_name (1) then model_version (2). Short strings: one-byte lengths.
    if len(response) > 2 and response[0] == 0x0A:
        n = response[1]
        if n < 0x80:
            j = 2 + n
            if len(response) > j + 1 and response[j] == 0x12 and response[j + 1] < 0x80:
                return response[j + 2 : j + 2 + response[j + 1]].decode()
            if len(response) == j or response[j] > 0x12:
                return ""
    return pb.ModelInferResponse.FromString(response).model_version


class _Recorder:
    """Per-process accumulation; every method runs on the event loop.

    An answer costs three list appends (``ok``); ``flush`` moves them into the HDR histograms, vectorised,
    twice a second and at the end. Keys are (kind index, served version).
    """

    def __init__(self, window_start: float, window_end: float | None, kinds: Sequence[Any]) -> None:
        self.window_start = window_start
        self.window_end = window_end
        self.kind_rows = [kind.rows for kind in kinds]
        self.key_ids: dict[tuple[int, str], int] = {}
        self.key_rows: list[int] = []
        self.histograms: list[Any] = []
        self.rows: list[int] = []
        self.timeline: dict[int, Any] = {}
        self.timeline_errors: collections.Counter[int] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.completed_in_window = 0
        self.rows_in_window = 0
        self.last_completion = window_start
        self.send_lag = new_histogram()
        self.service = new_histogram()
        self.measured_sent = 0
        self._keys: list[int] = []
        self._intended: list[float] = []
        self._done: list[float] = []
        self._lags: list[float] = []
        self._sent: list[float] = []
        self.first_send: float | None = None
        self.last_send = 0.0

    def ok(self, kind: int, version: str, intended: float, done: float) -> None:
        key = self.key_ids.get((kind, version))
        if key is None:
            key = self.key_ids[(kind, version)] = len(self.histograms)
            self.histograms.append(new_histogram())
            self.rows.append(0)
            self.key_rows.append(self.kind_rows[kind])
        self._keys.append(key)
        self._intended.append(intended)
        self._done.append(done)

    def ok_sent(self, kind: int, version: str, intended: float, sent: float, done: float) -> None:
        """``ok`` for an open-loop answer, with the moment its request actually left (for the service latency)."""
        self._sent.append(done - sent)
        self.ok(kind, version, intended, done)

    def sent(self, now: float, intended: float) -> None:
        """A measured open-loop request left at ``now`` for its slot at ``intended``."""
        self._lags.append(now - intended)
        if self.first_send is None:
            self.first_send = now
        self.last_send = now

    def error(self, status: str, done: float) -> None:
        self.errors[status] += 1
        self.timeline_errors[int(done - self.window_start)] += 1
        if done > self.last_completion:
            self.last_completion = done

    def flush(self) -> None:
        if self._lags:
            record_many(self.send_lag, np.maximum(1, (np.array(self._lags) * 1e6).astype(np.int64)))
            self._lags = []
        if self._sent:
            record_many(self.service, np.maximum(1, (np.array(self._sent) * 1e6).astype(np.int64)))
            self._sent = []
        if not self._done:
            return
        keys, done = np.array(self._keys, np.int64), np.array(self._done)
        micros = np.maximum(1, ((done - np.array(self._intended)) * 1e6).astype(np.int64))
        self._keys, self._intended, self._done = [], [], []
        rows = np.array(self.key_rows, np.int64)[keys]
        inside = np.ones(done.size, bool) if self.window_end is None else done < self.window_end
        self.completed_in_window += int(inside.sum())
        self.rows_in_window += int(rows[inside].sum())
        self.last_completion = max(self.last_completion, float(done.max()))
        for key in np.unique(keys).tolist():
            chosen = keys == key
            record_many(self.histograms[key], micros[chosen])
            self.rows[key] += int(rows[chosen].sum())
        seconds = np.floor(done - self.window_start).astype(np.int64)
        for second in np.unique(seconds).tolist():
            tick = self.timeline.get(second)
            if tick is None:
                tick = self.timeline[second] = new_histogram()
            record_many(tick, micros[seconds == second])

    def ok_count(self) -> int:
        return sum(h.get_total_count() for h in self.histograms)

    def result(self, cpu_s: float, wall_s: float, open_loop: bool) -> ProcessResult:
        self.flush()
        return ProcessResult(
            histograms={k: self.histograms[i].encode() for k, i in self.key_ids.items()},
            rows={k: self.rows[i] for k, i in self.key_ids.items()},
            timeline={s: h.encode() for s, h in self.timeline.items()}, timeline_errors=dict(self.timeline_errors),
            errors=dict(self.errors), completed_in_window=self.completed_in_window, rows_in_window=self.rows_in_window,
            last_completion_s=self.last_completion - self.window_start,
            send_lag=self.send_lag.encode() if open_loop and self.send_lag.get_total_count() else None,
            service=self.service.encode() if open_loop and self.service.get_total_count() else None,
            sent_span=None if self.first_send is None else (self.measured_sent, self.first_send - self.window_start, self.last_send - self.window_start),
            cpu_s=cpu_s, wall_s=wall_s,
        )  # fmt: skip


Tick = Callable[[int, int, "float | None"], None]  # (measured successes so far, errors so far, p99 ms of the last second)


async def run_process(address: str, plan: Plan, load: Load, start_at: float | None, tick: Tick | None = None) -> ProcessResult:
    """Run one process's share of a level; ``start_at`` is the shared wall-clock start (None: at once)."""
    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(load.connections)]
    try:
        calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [c.unary_unary(METHOD) for c in channels]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"cannot connect to {address} within {CONNECT_TIMEOUT_S:g} s") from None
        clock = time.perf_counter
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        start = clock()
        window_start = start + load.warmup_s
        window_end = None if load.duration_s is None else window_start + load.duration_s
        recorder = _Recorder(window_start, window_end, plan.kinds)
        cpu = _CpuWindow(window_start)
        reporter = asyncio.create_task(_report(recorder, tick, window_start))
        try:
            if load.closed:
                await _closed_loop(calls, plan, load, recorder, start)
            else:
                await _open_loop(calls, plan, load, recorder, start)
        finally:
            reporter.cancel()
        cpu_s, wall_s = cpu.stop()
        return recorder.result(cpu_s, wall_s, not load.closed)
    finally:
        await asyncio.gather(*(c.close() for c in channels))


class _CpuWindow:
    """Process CPU time from the window start (or now, if later) to ``stop``."""

    def __init__(self, window_start: float) -> None:
        self._start = window_start
        self._cpu0: float | None = None
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, window_start - time.perf_counter()), self._mark)

    def _mark(self) -> None:
        if self._cpu0 is None:
            self._cpu0, self._wall0 = time.process_time(), time.perf_counter()

    def stop(self) -> tuple[float, float]:
        self._mark()
        assert self._cpu0 is not None
        return time.process_time() - self._cpu0, time.perf_counter() - self._wall0


async def _report(recorder: _Recorder, tick: Tick | None, window_start: float) -> None:
    """Twice a second: empty the recorder's lists into its histograms, and report progress."""
    while True:
        await asyncio.sleep(0.5)
        recorder.flush()
        if tick is not None:
            last = recorder.timeline.get(int(time.perf_counter() - window_start) - 1)
            p99 = last.get_value_at_percentile(99.0) / 1e3 if last is not None else None
            tick(recorder.ok_count(), sum(recorder.errors.values()), p99)


async def _closed_loop(calls: list[Any], plan: Plan, load: Load, rec: _Recorder, start: float) -> None:
    assert load.concurrency is not None
    clock = time.perf_counter
    kinds, mix = plan.kinds, plan.mix
    window_start, window_end, budget = rec.window_start, rec.window_end, load.requests
    counter = 0

    async def worker(call: Any) -> None:
        nonlocal counter
        while True:
            intended = clock()
            measured = intended >= window_start
            if measured:
                if window_end is not None and intended >= window_end:
                    return
                if budget is not None and rec.measured_sent >= budget:
                    return
                rec.measured_sent += 1
            i = counter
            counter += 1
            k = mix[i % len(mix)]
            kind = kinds[k]
            try:
                response = await call(kind.payloads[i % len(kind.payloads)], timeout=kind.timeout_s, metadata=call_metadata(None))
            except grpc.aio.AioRpcError as exc:
                if measured:
                    rec.error(exc.code().name, clock())
                continue
            except asyncio.CancelledError:  # still outstanding after the drain: cancelled by the generator
                if measured:
                    rec.error("CANCELLED", clock())
                raise
            if measured:
                rec.ok(k, served_version(response), intended, clock())

    workers = [asyncio.ensure_future(worker(calls[w % len(calls)])) for w in range(load.concurrency)]
    await _finish(workers, None if window_end is None else window_end + load.drain_s)


async def _finish(tasks: Collection[asyncio.Future[None]], give_up_at: float | None) -> None:
    """Wait for ``tasks``; those still running at ``give_up_at`` (perf_counter; None: never) are cancelled."""
    if not tasks:
        return
    timeout = None if give_up_at is None else max(0.0, give_up_at - time.perf_counter())
    _, late = await asyncio.wait(tasks, timeout=timeout)
    for task in late:
        task.cancel()
    if late:
        await asyncio.gather(*late, return_exceptions=True)


def arrival_gaps(rate: float, arrival: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` gaps (seconds) between arrivals at ``rate`` per second: exponential (Poisson) or constant."""
    if arrival == "poisson":
        return rng.exponential(1.0 / rate, n)
    if arrival == "constant":
        return np.full(n, 1.0 / rate)
    raise ValueError(f"arrival must be 'poisson' or 'constant', got {arrival!r}")


async def _open_loop(calls: list[Any], plan: Plan, load: Load, rec: _Recorder, start: float) -> None:
    assert load.rate is not None and load.rate > 0
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    kinds, mix = plan.kinds, plan.mix
    window_start, window_end, budget = rec.window_start, rec.window_end, load.requests
    rng = np.random.default_rng(load.seed)
    pending: set[asyncio.Task[None]] = set()
    room = asyncio.Event()
    room.set()
    sent = rec.sent

    async def one(call: Any, i: int, intended: float, measured: bool) -> None:
        k = mix[i % len(mix)]
        kind = kinds[k]
        sent = clock()
        try:
            response = await call(kind.payloads[i % len(kind.payloads)], timeout=kind.timeout_s, metadata=call_metadata(None))
        except grpc.aio.AioRpcError as exc:
            if measured:
                rec.error(exc.code().name, clock())
            return
        except asyncio.CancelledError:  # still outstanding after the drain: cancelled by the generator
            if measured:
                rec.error("CANCELLED", clock())
            raise
        if measured:
            rec.ok_sent(k, served_version(response), intended, sent, clock())

    def done(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        if len(pending) < load.max_inflight:
            room.set()

    gaps = arrival_gaps(load.rate, load.arrival, rng, 4096)
    first = start + load.phase_s
    intended = first + (gaps[0] if load.arrival == "poisson" else 0.0)
    i = 0
    while True:
        now = clock()
        while intended <= now:
            measured = intended >= window_start
            if measured:
                if window_end is not None and intended >= window_end:
                    break
                if budget is not None and rec.measured_sent >= budget:
                    break
                rec.measured_sent += 1
                sent(now, intended)
            task = loop.create_task(one(calls[i % len(calls)], i, intended, measured))
            pending.add(task)
            task.add_done_callback(done)
            i += 1
            if load.arrival == "constant":  # from the index, not a running sum: ten 0.1 s gaps add up to less than 1 s
                intended = first + i / load.rate
            else:
                if i % 4096 == 0:
                    gaps = arrival_gaps(load.rate, load.arrival, rng, 4096)
                intended += gaps[i % 4096]
            if len(pending) >= load.max_inflight:
                room.clear()
                await room.wait()
                now = clock()
        else:
            await asyncio.sleep(intended - now)
            continue
        break
    await _finish(set(pending), time.perf_counter() + load.drain_s)


# --- several processes ---------------------------------------------------------------------------------------


def run_level(address: str, plan: Plan, load: Load, processes: int, loop_kind: str = "auto",
              tick: Tick | None = None, start_at: float | None = None) -> list[ProcessResult]:  # fmt: skip
    """Run one level in this process (``processes`` 1) or in ``processes`` spawned ones; one result each.

    ``start_at``: the wall-clock (``time.time``) start of the load, warm-up included (default: shortly after now).
    """
    if processes <= 1:
        return [_run_loop(run_process(address, plan, load, start_at, tick), loop_kind)]
    context = multiprocessing.get_context("spawn")  # never fork a process that holds gRPC state
    results: multiprocessing.Queue[tuple[int, str, Any]] = context.Queue()
    start_at = time.time() + START_DELAY_S if start_at is None else start_at
    workers = [
        context.Process(target=_child, args=(address, plan, load.share(i, processes), start_at, loop_kind, results, i), daemon=True)
        for i in range(processes)
    ]  # fmt: skip
    for w in workers:
        w.start()
    collected: dict[int, ProcessResult] = {}
    progress: dict[int, tuple[int, int, float | None]] = {}
    try:
        while len(collected) < processes:
            try:
                index, kind, payload = results.get(timeout=1.0)
            except queue_module.Empty:
                dead = [w for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a load process exited with code {dead[0].exitcode}") from None
                continue
            if kind == "error":
                raise RuntimeError(f"load process {index} failed: {payload}")
            if kind == "tick":
                progress[index] = payload
                if tick:
                    p99s = [p[2] for p in progress.values() if p[2] is not None]
                    tick(sum(p[0] for p in progress.values()), sum(p[1] for p in progress.values()), max(p99s, default=None))
            else:
                collected[index] = payload
    finally:
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.terminate()
    return [collected[i] for i in range(processes)]


def _child(address: str, plan: Plan, load: Load, start_at: float, loop_kind: str, results: Any, index: int) -> None:
    def tick(ok: int, errors: int, p99_ms: float | None) -> None:
        results.put((index, "tick", (ok, errors, p99_ms)))

    try:
        results.put((index, "result", _run_loop(run_process(address, plan, load, start_at, tick), loop_kind)))
    except BaseException as exc:  # reported to the parent, which raises it
        results.put((index, "error", f"{type(exc).__name__}: {exc}"))


def _run_loop(coro: Any, loop_kind: str) -> Any:
    if loop_kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop_kind == "uvloop":
                raise
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)
