"""A loaded model version: its runtime instances, its completed signature, its statistics.

``ModelVersion`` owns ``instance_group.count`` runtime instances, each driven by its own single-thread
executor (runtimes never run on the event loop), and one ``DynamicBatcher`` that queues requests and
hands a batch to the next free instance (with batching off, a batch is one request). In the instance's
thread the batch's inputs are concatenated into a reused per-instance buffer (one ``np.concatenate`` per
input; a single request's arrays are passed as they are), the runtime runs, and back on the loop each
request gets zero-copy row slices of the outputs. The instance is given back when its thread is done,
whatever happened to the requests meanwhile.

Lifecycle: ``LOADING`` -> ``load()`` (instances loaded and warmed up in their threads) -> ``READY`` ->
``aclose()`` (``UNLOADING``: new requests refused, in-flight ones drained, instances closed) -> gone.
A load or warm-up failure leaves the version ``UNAVAILABLE`` with its reason.

Hung runtimes: with ``execution_timeout_s`` in the config, a batch still running after that long fails
its requests (``ExecutionTimeout``, DEADLINE_EXCEEDED) and its instance is retired: a runtime that runs in
a process of its own (Python models) is killed; any other is abandoned (a thread cannot be killed: it is
left to finish on its own, then its runtime is closed). Such a runtime also retires its instance when its
process dies (during a batch: the batch fails with ``InstanceCrashed``, UNAVAILABLE; between batches:
noticed on the loop through its ``exit_fd``) or asks for it through ``retire_reason`` (memory above
``max_memory_bytes``; the batch is answered first). A retired instance is replaced by a fresh one, loaded
and warmed up in a new thread, at once the first time and after a backoff (0.25 s, doubling to 30 s) when
replacements follow each other with no batch answered in between (a replacement whose process dies while
it loads is tried again the same way; one whose model raises is not). The version's ``reason`` says how many
instances were replaced and why; while no instance can serve, the version is ``UNAVAILABLE`` (ModelReady
false, new requests UNAVAILABLE), and READY again once a replacement is warm.

Drift (``drift.py``): with metrics on, ``[drift]`` in the config and ``drift_profile.json`` in the version
folder, ``execute`` draws once per request whether to sample it, and hands a sampled request's inputs and
outputs (by reference) to the drift thread once its result is there.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from surge.protos.datatypes import numpy_dtype

from ..config import ModelConfig, TensorConfig
from .batching import BatchRequest, DynamicBatcher, QueuePolicy, SchedulerPolicy
from ..observability.drift import PROFILE_FILENAME, DriftMonitor, Profile
from ..errors import ConfigError, ExecutionTimeout, InferenceServerError, InstanceCrashed, ModelNotReady, RowsRejected, RuntimeFailure, without_root
from ..observability.metrics import VersionMetrics, VersionSample
from .pipeline import Pipeline, PipelineInstance
from ..runtimes.base import Runtime, Signature, create_runtime
from .stats import Stamps, VersionStats, now_ns
from ..observability.tracing import record_batch

__all__ = ["ModelVersion", "State", "abandoned_threads", "complete_signature", "scheduler_policy"]

log = logging.getLogger("surge.model")

#: Triton's default max_batch_size for a model whose config does not say and whose file allows batching.
AUTO_MAX_BATCH_SIZE = 4


_abandoned_running = 0  # threads of hung instances still running their batch (they block a clean interpreter exit)
_BACKOFF_S = (0.25, 30.0)  # the delay before the second replacement in a row, and the most it doubles to


def abandoned_threads() -> int:
    """Runtime threads abandoned after a hang that have not returned yet (``serve`` exits without waiting for them)."""
    return _abandoned_running


class State(enum.StrEnum):
    """Version states as RepositoryIndex reports them (Triton's strings; a member equals its string)."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


class _Instance:
    __slots__ = ("abandoned", "buffers", "executor", "exit_fd", "index", "pipeline", "runtime")

    def __init__(self, runtime: Runtime, executor: ThreadPoolExecutor, index: int) -> None:
        self.runtime = runtime
        self.executor = executor
        self.index = index
        self.abandoned = False  # it was retired (hung, crashed, too big) and replaced
        self.exit_fd: int | None = None  # the runtime's process, while the loop watches it for an exit
        self.buffers: dict[str, np.ndarray] = {}  # per input: reused batch-assembly buffer (max rows)
        self.pipeline: PipelineInstance | None = None  # with [[preprocess]]/[[postprocess]]: steps around the runtime

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> tuple[dict[str, np.ndarray], int, int]:
        """In the instance thread: the runtime call (inside its pipeline, when the model has one), stamped."""
        t0 = now_ns()
        outputs = self.runtime.infer(inputs, output_names) if self.pipeline is None else self.pipeline.run(inputs, output_names)
        return outputs, t0, now_ns()

    def run_batch(
        self, batch: list[BatchRequest], output_names: Sequence[str], rows: int
    ) -> tuple[dict[str, np.ndarray], int, int, dict[int, RowsRejected]]:
        """In the instance thread: assemble the batch's inputs, run, stamp. The last item maps the index of each
        request whose rows a step rejected (``RowsRejected``) to its own error; the outputs then hold the rows of the
        other requests only (the batch ran again without the rejected ones)."""
        if len(batch) == 1:
            return (*self.run(batch[0].inputs, output_names), {})
        try:
            return (*self._run_joined(batch, output_names, rows), {})
        except RowsRejected as exc:
            rejected: dict[int, RowsRejected] = {}
            start = 0
            for i, request in enumerate(batch):
                mine = exc.for_rows(start, request.rows)
                if mine is not None:
                    rejected[i] = mine
                start += request.rows
            kept = [r for i, r in enumerate(batch) if i not in rejected]
            if not rejected or not kept:
                raise
            return (*self._run_joined(kept, output_names, sum(r.rows for r in kept)), rejected)

    def _run_joined(self, batch: list[BatchRequest], output_names: Sequence[str], rows: int) -> tuple[dict[str, np.ndarray], int, int]:
        if len(batch) == 1:
            return self.run(batch[0].inputs, output_names)
        inputs: dict[str, np.ndarray] = {}
        for name, first in batch[0].inputs.items():
            parts = [r.inputs[name] for r in batch]
            shape = (rows, *first.shape[1:])
            buffer = self.buffers.get(name)
            if buffer is not None and buffer.dtype == first.dtype and buffer.shape[1:] == shape[1:] and buffer.shape[0] >= rows:
                inputs[name] = np.concatenate(parts, out=buffer[:rows])
            else:
                inputs[name] = np.concatenate(parts)
        outputs, t0, t1 = self.run(inputs, output_names)
        for name, array in outputs.items():  # an output that views the reused buffer must not see the next batch
            if any(np.may_share_memory(array, b) for b in inputs.values()):
                outputs[name] = array.copy()
        return outputs, t0, t1

    def allocate_buffers(self, config: ModelConfig, max_rows: int) -> None:
        """Preallocate one input buffer per fixed-shape, fixed-width input (others concatenate into new arrays)."""
        for t in config.inputs:
            if t.datatype not in ("BYTES", "BF16") and all(d > 0 for d in t.dims):
                self.buffers[t.name] = np.empty((max_rows, *t.dims), dtype=numpy_dtype(t.datatype))


class ModelVersion:
    """One served version of one model. Methods are called on the event loop unless noted."""

    def __init__(self, config: ModelConfig, version: int, model_path: Path, *, metrics: bool = False) -> None:
        """``metrics``: keep Prometheus histograms and counters for this version (bound at load)."""
        self.config = config
        self.version = version
        self.version_str = str(version)
        self.model_path = model_path
        self.state = State.LOADING
        self.reason = ""
        self.error: Exception | None = None  # why load() failed, for the caller that asked for the load
        self.stats = VersionStats()
        self.load_duration_s = 0.0
        self._metrics = metrics
        self.output_names: tuple[str, ...] = ()
        self._output_specs: dict[str, _OutputSpec] = {}  # what _check_outputs holds each batch's outputs to
        self.codec_spec: Any = None  # the codec's lookup tables for this signature, built on first request
        self._instances: list[_Instance] = []
        self._free: collections.deque[_Instance] = collections.deque()
        self._batcher: DynamicBatcher | None = None
        self._drift: DriftMonitor | None = None  # with metrics, [drift] and a profile in the version folder
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.replaced_instances = 0
        """Instances retired (hung past ``execution_timeout_s``, process died, memory above its limit) and replaced."""
        self._retired_in_a_row = 0  # replacements with no batch answered in between: sets the backoff
        self._replaced_reason = ""  # the reason while serving again after the last replacement
        self._replacing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop  # the loop it was loaded on (set by load)

    # -- lifecycle -------------------------------------------------------------------------------

    async def load(self) -> None:
        """Create, load and warm up every instance in its own thread; READY on success, else UNAVAILABLE.

        Never raises for a model problem: the reason is kept in ``self.reason`` and logged.
        """
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            if not self.model_path.is_file():
                raise ConfigError(f"model file {self.config.name}/{self.version}/{self.model_path.name} does not exist")
            count = self.config.instance_group.count
            executors = [ThreadPoolExecutor(1, thread_name_prefix=f"surge-{self.config.name}-v{self.version}-{i}") for i in range(count)]
            self._instances = [_Instance(create_runtime(self.config), ex, i) for i, ex in enumerate(executors)]
            signatures = await asyncio.gather(
                *(loop.run_in_executor(inst.executor, inst.runtime.load, self.model_path, self.config, inst.index) for inst in self._instances)
            )
            self.config = complete_signature(self.config, signatures[0])
            if self.config.preprocess or self.config.postprocess:  # clients see the pipeline's signature
                pipeline = Pipeline(self.config)
                self.config = pipeline.config
                for inst in self._instances:
                    inst.pipeline = pipeline.instance(inst.runtime, inst.index)
            self.output_names = tuple(t.name for t in self.config.outputs)
            self._output_specs = {t.name: _OutputSpec(t) for t in self.config.outputs}
            if self._metrics:  # bound once, here: the hot path never looks labels up
                self.stats.metrics = VersionMetrics(
                    self.config.name, self.version_str, latency_buckets_s=self.config.metrics.latency_buckets_s,
                    max_batch_size=self.config.max_batch_size or 0,
                )
            if self._metrics and self.config.drift is not None:
                self._drift = self._drift_monitor()
            self._loop = loop  # every request of this version is queued and answered on it (one lookup here, not one per request)
            self._batcher = DynamicBatcher(
                scheduler_policy(self.config), slots=count, dispatch=self._dispatch, in_server=lambda: self._inflight, name=f"{self.config.name}' version '{self.version}",
                call_later=loop.call_later,
            )
            if self._batcher.slo_mode:
                self.stats.latency_listener = self._batcher.observe_latency
            max_rows = self.config.max_batch_size or 1
            for inst in self._instances:
                inst.allocate_buffers(self.config, max_rows)
            timings = await asyncio.gather(*(loop.run_in_executor(inst.executor, self._warmup, inst) for inst in self._instances))
            for rows, seconds in (t for per_instance in timings for t in per_instance):
                self._batcher.cost.observe(rows, seconds)
        except Exception as exc:  # a broken model must not take the server down
            self.load_duration_s = time.perf_counter() - started
            self.state, self.reason, self.error = State.UNAVAILABLE, self._client_reason(exc), exc
            log.error("model %s version %d failed to load: %s", self.config.name, self.version, _reason(exc), exc_info=not isinstance(exc, InferenceServerError))
            await self._close_instances()
            return
        self._free.extend(self._instances)
        for inst in self._instances:
            self._watch(inst)
        self.state = State.READY
        self.load_duration_s = time.perf_counter() - started
        log.info(
            "model %s version %d READY (%s, %d instance%s, max_batch_size %d, loaded in %.2f s)",
            self.config.name, self.version, self.config.backend, len(self._instances), "s" if len(self._instances) > 1 else "",
            self.config.max_batch_size or 0, self.load_duration_s,
        )

    def _drift_monitor(self) -> DriftMonitor | None:
        """The version's drift monitor, or None (logged) when the profile is missing or unreadable: serving goes on."""
        path = self.model_path.parent / PROFILE_FILENAME
        if not path.is_file():
            log.warning("model %s version %d: [drift] is configured but %s does not exist (make it with surge profile); drift is off",
                        self.config.name, self.version, path)
            return None
        try:
            profile = Profile.load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("model %s version %d: cannot read %s: %s; drift is off", self.config.name, self.version, path, exc)
            return None
        d = self.config.drift
        assert d is not None
        monitor = DriftMonitor(profile, model=self.config.name, version=self.version_str, sample_rate=d.sample_rate,
                               window_rows=d.window_rows, psi_alert=d.psi_alert, max_features=d.max_features)
        known = {t.name for t in self.config.inputs + self.config.outputs}
        unknown = sorted(set(monitor.tensors) - known)
        if unknown:
            log.warning("model %s version %d: drift profile names tensors %s the model does not have", self.config.name, self.version, unknown)
        return monitor

    def _warmup(self, inst: _Instance) -> list[tuple[int, float]]:
        """In the instance thread: run synthetic batches through the instance (1 row, powers of two, max rows).

        Returns (rows, seconds) of each run: the batcher's cost model starts from these.
        """
        max_rows = self.config.max_batch_size
        sizes = sorted({1, max_rows or 1} | {1 << i for i in range(max_rows.bit_length())} if max_rows else {1})
        timings = []
        for rows in sizes:
            synthetic = _synthetic if inst.pipeline is None else inst.pipeline.synthetic  # a pipeline knows its steps' sizes
            inputs = {t.name: synthetic(t, rows if max_rows else None) for t in self.config.inputs if not t.optional}
            for _ in range(2):  # the first run of a shape pays one-off costs: keep the second
                _, t0, t1 = inst.run(inputs, self.output_names)
            timings.append((rows, (t1 - t0) / 1e9))
        return timings

    def _client_reason(self, exc: BaseException) -> str:
        """The reason clients read (state, errors): ``exc``'s first line, paths relative to the repository."""
        return without_root(_reason(exc), self.model_path.parents[2])

    async def aclose(self, drain_timeout_s: float = 30.0) -> None:
        """Stop taking requests, wait for in-flight ones (up to ``drain_timeout_s``), close the instances."""
        if self.state == State.READY:
            self.state = State.UNLOADING
        for task in list(self._replacing):
            task.cancel()
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        except TimeoutError:
            log.warning("model %s version %d: %d requests still running after %.0f s; closing anyway", self.config.name, self.version, self._inflight, drain_timeout_s)
        if self._batcher is not None:
            self._batcher.close(f"model '{self.config.name}' version {self.version} is unloading")
        await self._close_instances()
        if self.state == State.UNLOADING:
            self.state, self.reason = State.UNAVAILABLE, "unloaded"

    async def _close_instances(self) -> None:
        loop = asyncio.get_running_loop()
        for inst in self._instances:
            self._unwatch(inst)
            try:
                await loop.run_in_executor(inst.executor, inst.runtime.close)
            except Exception:
                log.exception("model %s version %d: closing instance %d failed", self.config.name, self.version, inst.index)
            inst.executor.shutdown(wait=False)
        self._instances = []
        self._free.clear()

    def run_offline(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[Future[tuple[dict[str, np.ndarray], int, int]]]:
        """``surge batch``: split ``inputs`` across the instances and run each part in its instance's thread, in slices of
        ``max_batch_size`` rows through the same ``_Instance.run`` (pipeline + runtime) as a served batch; no batcher.
        Only for a version that serves no requests (the job's own). Returns one future per part, in row order."""
        rows = next(iter(inputs.values())).shape[0]
        per = -(-rows // len(self._instances))
        step = self.config.max_batch_size or rows
        futures = []
        for inst, start in zip(self._instances, range(0, rows, per)):
            part = {n: a[start : start + per] for n, a in inputs.items()}
            futures.append(inst.executor.submit(_run_slices, inst, part, output_names, step, start))
        return futures

    def sample(self) -> VersionSample:
        """What a metrics scrape reports about this version (event loop; copies the counters)."""
        batcher = self._batcher
        metrics = self.stats.metrics
        return VersionSample(
            model=self.config.name, version=self.version_str, state=self.state, load_duration_s=self.load_duration_s,
            queue_depth=batcher.queued() if batcher is not None else 0, inflight=self._inflight,
            dropped_expired=batcher.dropped_expired if batcher is not None else 0,
            dropped_cancelled=batcher.dropped_cancelled if batcher is not None else 0,
            metrics=metrics.snapshot() if metrics is not None else None,
            drift=self._drift.snapshot() if self._drift is not None else None,
            slo=(batcher.margin_s, batcher.late_share) if batcher is not None and batcher.slo_mode else None,
        )

    # -- execution -------------------------------------------------------------------------------

    async def execute(
        self, inputs: dict[str, np.ndarray], rows: int, output_names: Sequence[str], stamps: Stamps,
        deadline: float | None, *, priority: int = 0, timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Queue one request in the batcher and wait for its outputs. ``deadline`` is a ``time.monotonic()`` value.

        Raises ModelNotReady, QueueFull, DeadlineExpired, InvalidInput (priority, or from the runtime) or RuntimeFailure.
        """
        future = self._queue(inputs, rows, output_names, stamps, deadline, priority, timeout_s)
        try:
            drift = self._drift
            sampled = drift is not None and drift.sample()  # the hot path's only drift work: one random draw
            outputs = await future
            if sampled:
                drift.offer(inputs, outputs)  # type: ignore[union-attr]  # by reference, onto the drift thread's queue
            return outputs
        finally:
            self._left()

    def submit(
        self, inputs: dict[str, np.ndarray], rows: int, output_names: Sequence[str], stamps: Stamps, deadline: float | None,
        on_done: Callable[[asyncio.Future[dict[str, np.ndarray]]], None], *, priority: int = 0, timeout_s: float | None = None,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """``execute`` without a task: queue one request and return its future at once; ``on_done(future)`` runs on
        the loop when its outputs (or its error) are there, also when the caller cancels the future. For callers
        that answer many requests without a coroutine each (a ModelStreamInfer stream). Raises as ``execute`` does."""
        future = self._queue(inputs, rows, output_names, stamps, deadline, priority, timeout_s)
        drift = self._drift
        sampled = drift is not None and drift.sample()
        future.add_done_callback(functools.partial(self._answered, inputs, sampled, on_done))
        return future

    def _answered(
        self, inputs: dict[str, np.ndarray], sampled: bool, on_done: Callable[[asyncio.Future[dict[str, np.ndarray]]], None],
        future: asyncio.Future[dict[str, np.ndarray]],
    ) -> None:
        self._left()
        if sampled and not future.cancelled() and future.exception() is None:
            self._drift.offer(inputs, future.result())  # type: ignore[union-attr]
        on_done(future)

    def _queue(
        self, inputs: dict[str, np.ndarray], rows: int, output_names: Sequence[str], stamps: Stamps, deadline: float | None,
        priority: int, timeout_s: float | None,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Submit one request to the batcher (counted in flight until ``_left``); its future."""
        if self.state != State.READY or self._batcher is None:
            raise ModelNotReady(f"model '{self.config.name}' version {self.version} is {self.state.lower()}" + (f": {self.reason}" if self.reason else ""))
        future: asyncio.Future[dict[str, np.ndarray]] = self._loop.create_future()
        self._inflight += 1  # before submit: the batcher's SLO mode counts the requests in the server
        self._idle.clear()
        try:
            self._batcher.submit(
                BatchRequest(inputs, rows, output_names, stamps, future), deadline=deadline, priority=priority, timeout_s=timeout_s,
                spent_s=(stamps.decoded - stamps.start) / 1e9 if stamps.decoded else 0.0,
            )
        except BaseException:
            self._left()
            raise
        return future

    def _left(self) -> None:
        """A request is answered (or failed): no longer in flight."""
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()

    def _dispatch(self, batch: list[BatchRequest]) -> None:
        """On the loop, from the batcher: run a batch on the next free instance (one is free: the batcher counts slots)."""
        inst = self._free.popleft()
        start = now_ns()
        for request in batch:
            request.stamps.exec_start = start
        if len(batch) == 1:
            names: Sequence[str] = batch[0].output_names
        else:
            wanted = {n for r in batch for n in r.output_names}
            names = [n for n in self.output_names if n in wanted]
        rows = sum(r.rows for r in batch)
        future = inst.executor.submit(inst.run_batch, batch, names, rows)
        loop = self._loop
        timeout = self.config.execution_timeout_s
        timer = loop.call_later(timeout, self._on_hang, inst, batch, rows) if timeout else None
        future.add_done_callback(lambda f: _call_soon(loop, self._finish, inst, batch, rows, start, f, timer))

    def _on_hang(self, inst: _Instance, batch: list[BatchRequest], rows: int) -> None:
        """On the loop: a batch ran past execution_timeout_s. Fail its requests, retire the instance (killing its
        process where it has one)."""
        if inst.abandoned or inst not in self._instances:
            return
        global _abandoned_running
        timeout = self.config.execution_timeout_s
        log.error(
            "model %s version %d: instance %d did not finish a batch of %d rows within execution_timeout_s = %g s; "
            "failing its %d request(s) and replacing the instance", self.config.name, self.version, inst.index, rows, timeout, len(batch),
        )
        error = ExecutionTimeout(f"model '{self.config.name}' version {self.version} did not finish within its execution_timeout_s of {timeout:g} s")
        for request in batch:
            if not request.future.done():
                request.future.set_exception(error)
        kill = getattr(inst.runtime, "kill", None)
        if kill is not None:
            kill()  # its thread returns at once
        _abandoned_running += 1  # until _finish sees its thread return
        self._retire(inst, f"running past execution_timeout_s = {timeout:g} s")

    def _retire(self, inst: _Instance, cause: str) -> None:
        """On the loop: take an instance out of service (its caller closes it) and schedule its replacement."""
        inst.abandoned = True
        self._instances.remove(inst)
        self._unwatch(inst)
        self.replaced_instances += 1
        self._retired_in_a_row += 1
        self.reason = self._replaced_reason = f"{self.replaced_instances} instance(s) replaced after {cause}"
        if not self._instances and self.state == State.READY:
            self.state = State.UNAVAILABLE
            self.reason += "; no instance can serve until a replacement is warm"
        self._start_replacement(inst.index)

    def _start_replacement(self, index: int) -> None:
        """Replace instance ``index``: at once the first time in a row, then after a doubling backoff."""
        n = self._retired_in_a_row
        delay = 0.0 if n == 1 else min(_BACKOFF_S[0] * 2 ** (n - 2), _BACKOFF_S[1])
        task = asyncio.get_running_loop().create_task(self._replace(index, delay))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    def _watch(self, inst: _Instance) -> None:
        """Watch the runtime's process (if it has one) on the loop, so that a death between batches is noticed."""
        fd = getattr(inst.runtime, "exit_fd", None)
        if fd is not None:
            inst.exit_fd = fd
            asyncio.get_running_loop().add_reader(fd, self._on_exit, inst)

    def _unwatch(self, inst: _Instance) -> None:
        if inst.exit_fd is not None:
            asyncio.get_running_loop().remove_reader(inst.exit_fd)
            inst.exit_fd = None

    def _on_exit(self, inst: _Instance) -> None:
        """On the loop: the runtime's process is gone. Retire an idle instance now; a busy one retires in ``_finish``
        (its batch fails with the runtime's InstanceCrashed)."""
        self._unwatch(inst)
        if inst.abandoned or inst not in self._instances:
            return
        reason = inst.runtime.exited()  # type: ignore[attr-defined]  # also sets its retire_reason, which _finish reads
        if inst not in self._free:
            return
        self._free.remove(inst)
        assert self._batcher is not None
        self._batcher.take_slot()
        log.error("model %s version %d: replacing instance %d, idle: %s", self.config.name, self.version, inst.index, reason)
        self._retire(inst, reason)
        _discard(inst)

    async def _replace(self, index: int, delay: float) -> None:
        """After ``delay`` seconds, load and warm up a fresh instance in a new thread, then hand it to the batcher."""
        if delay:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"surge-{self.config.name}-v{self.version}-{index}-r{self.replaced_instances}")
        inst = _Instance(create_runtime(self.config), executor, index)
        try:
            await loop.run_in_executor(executor, inst.runtime.load, self.model_path, self.config, index)
            inst.allocate_buffers(self.config, self.config.max_batch_size or 1)
            await loop.run_in_executor(executor, self._warmup, inst)
        except BaseException as exc:
            _discard(inst)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.error("model %s version %d: the replacement of instance %d failed to load: %s", self.config.name, self.version, index, _reason(exc))
            if not self._instances:
                self.state, self.reason = State.UNAVAILABLE, f"an instance was retired and its replacement failed to load: {self._client_reason(exc)}"
            if isinstance(exc, InstanceCrashed) and self.state in (State.READY, State.UNAVAILABLE):  # its process died: try again
                self._retired_in_a_row += 1
                self._start_replacement(index)
            return
        if self.state not in (State.READY, State.UNAVAILABLE) or self._batcher is None:  # unloading meanwhile
            _discard(inst)
            return
        self._instances.append(inst)
        self._free.append(inst)
        self._watch(inst)
        if self.state == State.UNAVAILABLE:
            self.state = State.READY
            self.reason = self._replaced_reason
        log.info("model %s version %d: instance %d replaced and warm", self.config.name, self.version, index)
        self._batcher.release_slot()

    def _check_outputs(self, outputs: Mapping[str, Any], batch: list[BatchRequest], rows: int) -> None:
        """Once per batch, on the loop: every requested output is there with the config's datatype and shape (and
        the batch's rows); else the batch fails with RuntimeFailure (INTERNAL) naming the output and what was expected."""
        names = batch[0].output_names if len(batch) == 1 else {n for r in batch for n in r.output_names}
        specs = self._output_specs
        batch_rows = rows if self.config.max_batch_size else None
        for name in names:
            array = outputs.get(name)
            problem = "missing" if array is None else specs[name].problem(array, batch_rows)
            if problem:
                raise RuntimeFailure(f"model '{self.config.name}' version {self.version} returned output '{name}' as {problem}, "
                                     f"which does not match its config")

    def _finish(self, inst: _Instance, batch: list[BatchRequest], rows: int, start: int, future: Future[Any], timer: Any = None) -> None:
        """On the loop: hand out each request's slice of the outputs, give the instance back, schedule again."""
        if timer is not None:
            timer.cancel()
        if inst.abandoned:  # it hung and was replaced; its requests were failed: close it in its own thread
            global _abandoned_running
            _abandoned_running -= 1
            _discard(inst)
            return
        try:
            outputs, infer_start, infer_end, rejected = future.result()
            for index, error in rejected.items():
                if not batch[index].future.done():
                    batch[index].future.set_exception(error)
            if rejected:
                batch = [r for i, r in enumerate(batch) if i not in rejected]
                rows = sum(r.rows for r in batch)
            self._check_outputs(outputs, batch, rows)
        except Exception as exc:
            if not isinstance(exc, InferenceServerError):
                log.error("model %s version %d: runtime failed on a batch of %d rows", self.config.name, self.version, rows, exc_info=exc)
                exc = RuntimeFailure(f"model '{self.config.name}' version {self.version} failed to execute the request")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
        else:
            self._retired_in_a_row = 0
            done = now_ns()
            self.stats.record_execution(rows, infer_start - start, infer_end - infer_start, done - infer_end)
            assert self._batcher is not None
            self._batcher.cost.observe(rows, (done - start) / 1e9)
            offset = 0
            traced = None
            for request in batch:
                stamps = request.stamps
                stamps.infer_start, stamps.infer_end = infer_start, infer_end
                if stamps.trace is not None:
                    traced = [stamps.trace] if traced is None else [*traced, stamps.trace]
                if not request.future.done():
                    if len(batch) == 1:
                        request.future.set_result(outputs)
                    else:
                        end = offset + request.rows
                        request.future.set_result({n: outputs[n][offset:end] for n in request.output_names})
                offset += request.rows
            if traced is not None:  # a sampled request is in this batch: its one batch span (observability/tracing.py)
                record_batch(self.config.name, self.version, traced, len(batch), rows, start, done)
        retire = getattr(inst.runtime, "retire_reason", "")  # its process died, or grew past max_memory_bytes
        if retire and inst in self._instances:
            log.error("model %s version %d: replacing instance %d: %s", self.config.name, self.version, inst.index, retire)
            self._retire(inst, retire)
            _discard(inst)
        elif inst in self._instances:
            self._free.append(inst)
            if self._batcher is not None:
                self._batcher.release_slot()


class _OutputSpec:
    """What one output of the model must look like: its dtype (BYTES: any str, bytes or object array) and dims."""

    __slots__ = ("datatype", "dims", "dtype", "name")

    def __init__(self, tensor: TensorConfig) -> None:
        self.name, self.datatype, self.dims = tensor.name, tensor.datatype, tensor.dims
        try:
            self.dtype: np.dtype | None = None if tensor.datatype == "BYTES" else numpy_dtype(tensor.datatype)
        except ValueError:  # BF16 without ml_dtypes: no runtime can produce it either
            self.dtype = None

    def problem(self, array: Any, rows: int | None) -> str:
        """Why ``array`` is not a valid value of this output for a batch of ``rows`` rows (None: no batch
        dimension); "" when it is."""
        if not isinstance(array, np.ndarray):
            return f"a {type(array).__name__}, not an array"
        dtype = array.dtype
        if (dtype.kind not in "OSUT") if self.datatype == "BYTES" else (self.dtype is not None and dtype != self.dtype):
            return f"dtype {dtype}, not {self.datatype}"
        shape = array.shape
        inner = shape if rows is None else shape[1:]
        if (rows is not None and (not shape or shape[0] != rows)) or len(inner) != len(self.dims) or any(
            want != -1 and got != want for got, want in zip(inner, self.dims)
        ):
            return f"shape {list(shape)}, not {([] if rows is None else [rows]) + list(self.dims)}"
        return ""


def _run_slices(inst: _Instance, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], step: int, offset: int) -> tuple[dict[str, np.ndarray], int, int]:
    """In the instance thread: ``inst.run`` over consecutive slices of ``step`` rows, outputs concatenated.
    ``offset``: the first row's index in the whole input (a ``RowsRejected`` counts rows from there)."""
    rows = next(iter(inputs.values())).shape[0]
    t0 = now_ns()
    parts = []
    for i in range(0, rows, step):
        try:
            parts.append(inst.run({n: np.ascontiguousarray(a[i : i + step]) for n, a in inputs.items()}, output_names)[0])
        except RowsRejected as exc:
            raise RowsRejected(exc.prefix, {offset + i + r: why for r, why in exc.reasons.items()}) from None
    return {n: np.concatenate([p[n] for p in parts]) for n in output_names}, t0, now_ns()


def scheduler_policy(config: ModelConfig) -> SchedulerPolicy:
    """The batcher's policy for a completed config (batching on iff ``[dynamic_batching]`` is present)."""
    b = config.dynamic_batching
    if b is None:
        return SchedulerPolicy(batching=False, max_batch_size=config.max_batch_size or 0)
    return SchedulerPolicy(
        batching=True,
        max_batch_size=config.max_batch_size or 0,
        preferred_batch_sizes=b.preferred_batch_sizes,
        max_queue_delay_s=b.max_queue_delay_s,
        latency_slo_s=b.latency_slo_s,
        priority_levels=b.priority_levels,
        default_priority_level=b.default_priority_level,
        default_queue_policy=QueuePolicy(max_queue_size=b.max_queue_size, default_timeout_s=b.default_timeout_s),
        priority_queue_policy={
            level: QueuePolicy(max_queue_size=p.max_queue_size, default_timeout_s=p.default_timeout_s) for level, p in b.priority_queue_policy.items()
        },
    )


def _discard(inst: _Instance) -> None:
    """Close a retired instance's runtime in its own thread, then let the thread end."""
    inst.executor.submit(inst.runtime.close)
    inst.executor.shutdown(wait=False)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: object, *args: object) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)  # type: ignore[arg-type]
    except RuntimeError:  # the loop is closed: the server is gone, nothing to give back to
        pass


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if isinstance(exc, InferenceServerError) else f"{type(exc).__name__}: {text}"


def _synthetic(tensor: TensorConfig, rows: int | None) -> np.ndarray:
    shape = ((rows,) if rows is not None else ()) + tuple(1 if d < 0 else d for d in tensor.dims)
    if tensor.datatype == "BYTES":
        return np.full(shape, b"", dtype=np.object_)
    return np.zeros(shape, dtype=numpy_dtype(tensor.datatype))


def complete_signature(config: ModelConfig, model: Signature) -> ModelConfig:
    """Reconcile the config with the signature read from the model file; returns the completed config.

    - ``max_batch_size`` unset: the model file's own limit when it has one (a TensorRT engine's profiles),
      else Triton's auto-complete (4 when every tensor has a variable leading dimension, else 0).
    - ``max_batch_size`` above the model file's own limit is an error.
    - ``max_batch_size > 0`` requires a variable leading dimension on every model tensor.
    - Tensors declared in the config must exist in the model with the same datatype and compatible dims;
      undeclared ones are taken from the model.

    Raises ConfigError naming the tensor.
    """
    all_tensors = model.inputs + model.outputs
    batchable = bool(all_tensors) and all(t.dims and t.dims[0] == -1 for t in all_tensors)
    max_batch_size = config.max_batch_size
    if max_batch_size is None:
        max_batch_size = (model.max_batch_size or AUTO_MAX_BATCH_SIZE) if batchable else 0
    elif max_batch_size > 0 and not batchable:
        fixed = [t.name for t in all_tensors if not (t.dims and t.dims[0] == -1)]
        raise ConfigError(f"max_batch_size = {max_batch_size} needs a variable first dimension on every tensor, but {fixed} have a fixed one; set max_batch_size = 0")
    elif model.max_batch_size is not None and max_batch_size > model.max_batch_size:
        raise ConfigError(f"max_batch_size = {max_batch_size} exceeds the {model.max_batch_size} rows the model file supports; lower it or rebuild the model")
    skip = 1 if max_batch_size else 0

    def reconcile(kind: str, declared: tuple[TensorConfig, ...], found: tuple[TensorConfig, ...]) -> tuple[TensorConfig, ...]:
        by_name = {t.name: TensorConfig(name=t.name, datatype=t.datatype, dims=t.dims[skip:], optional=t.optional) for t in found}
        if not declared:
            return tuple(by_name.values())
        for t in declared:
            actual = by_name.get(t.name)
            if actual is None:
                raise ConfigError(f"{kind} '{t.name}' is declared in config.toml but the model has {kind}s {sorted(by_name)}")
            if actual.datatype != t.datatype:
                raise ConfigError(f"{kind} '{t.name}': config.toml says {t.datatype}, the model file says {actual.datatype}")
            if len(actual.dims) != len(t.dims) or any(a != -1 and d != -1 and a != d for a, d in zip(actual.dims, t.dims)):
                raise ConfigError(f"{kind} '{t.name}': config.toml dims {list(t.dims)} do not match the model's {list(actual.dims)} (batch dimension excluded)")
        missing = sorted(set(by_name) - {t.name for t in declared})
        if kind == "input" and missing:
            raise ConfigError(f"config.toml declares some inputs but not {missing}; declare all or none")
        return declared

    return config.with_signature(
        reconcile("input", config.inputs, model.inputs), reconcile("output", config.outputs, model.outputs), max_batch_size
    )
