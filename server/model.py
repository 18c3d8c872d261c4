"""A loaded model version: its runtime instances, its completed signature, its statistics.

``ModelVersion`` owns ``instance_group.count`` runtime instances, each driven by its own single-thread
executor (runtimes never run on the event loop). A request takes a free instance (waiting in a bounded
FIFO when all are busy), runs in that instance's thread, and gives it back when the thread finishes,
even if the awaiting request was cancelled meanwhile. The dynamic batcher (a later layer) submits whole
batches through the same ``execute`` path.

Lifecycle: ``LOADING`` -> ``load()`` (instances loaded and warmed up in their threads) -> ``READY`` ->
``aclose()`` (``UNLOADING``: new requests refused, in-flight ones drained, instances closed) -> gone.
A load or warm-up failure leaves the version ``UNAVAILABLE`` with its reason.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from surge.protos.datatypes import numpy_dtype

from .config import ModelConfig, TensorConfig
from .errors import ConfigError, DeadlineExpired, InferenceServerError, ModelNotReady, QueueFull, RuntimeFailure
from .runtimes.base import Runtime, Signature, create_runtime
from .stats import Stamps, VersionStats, now_ns

__all__ = ["DEFAULT_MAX_QUEUE_SIZE", "ModelVersion", "complete_signature", "State"]

log = logging.getLogger("surge.model")

#: Requests allowed to wait for an instance when the config sets no ``max_queue_size``.
DEFAULT_MAX_QUEUE_SIZE = 4096
#: Triton's default max_batch_size for a model whose config does not say and whose file allows batching.
AUTO_MAX_BATCH_SIZE = 4


class State:
    """Version states as RepositoryIndex reports them (Triton's strings)."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


class _Instance:
    __slots__ = ("executor", "index", "runtime")

    def __init__(self, runtime: Runtime, executor: ThreadPoolExecutor, index: int) -> None:
        self.runtime = runtime
        self.executor = executor
        self.index = index

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> tuple[dict[str, np.ndarray], int, int]:
        """In the instance thread: the runtime call, stamped."""
        t0 = now_ns()
        outputs = self.runtime.infer(inputs, output_names)
        return outputs, t0, now_ns()


class ModelVersion:
    """One served version of one model. Methods are called on the event loop unless noted."""

    def __init__(self, config: ModelConfig, version: int, model_path: Path) -> None:
        self.config = config
        self.version = version
        self.version_str = str(version)
        self.model_path = model_path
        self.state = State.LOADING
        self.reason = ""
        self.error: Exception | None = None  # why load() failed, for the caller that asked for the load
        self.stats = VersionStats()
        self.output_names: tuple[str, ...] = ()
        self.codec_spec: Any = None  # the codec's lookup tables for this signature, built on first request
        self._instances: list[_Instance] = []
        self._free: collections.deque[_Instance] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_Instance]] = collections.deque()
        batching = config.dynamic_batching
        self._max_waiting = (batching.max_queue_size if batching and batching.max_queue_size else DEFAULT_MAX_QUEUE_SIZE)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def load(self) -> None:
        """Create, load and warm up every instance in its own thread; READY on success, else UNAVAILABLE.

        Never raises for a model problem: the reason is kept in ``self.reason`` and logged.
        """
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            if not self.model_path.is_file():
                raise ConfigError(f"model file {self.model_path} does not exist")
            count = self.config.instance_group.count
            executors = [ThreadPoolExecutor(1, thread_name_prefix=f"surge-{self.config.name}-v{self.version}-{i}") for i in range(count)]
            self._instances = [_Instance(create_runtime(self.config), ex, i) for i, ex in enumerate(executors)]
            signatures = await asyncio.gather(
                *(loop.run_in_executor(inst.executor, inst.runtime.load, self.model_path, self.config, inst.index) for inst in self._instances)
            )
            self.config = complete_signature(self.config, signatures[0])
            self.output_names = tuple(t.name for t in self.config.outputs)
            await asyncio.gather(*(loop.run_in_executor(inst.executor, self._warmup, inst) for inst in self._instances))
        except Exception as exc:  # a broken model must not take the server down
            self.state, self.reason, self.error = State.UNAVAILABLE, _reason(exc), exc
            log.error("model %s version %d failed to load: %s", self.config.name, self.version, self.reason, exc_info=not isinstance(exc, InferenceServerError))
            await self._close_instances()
            return
        self._free.extend(self._instances)
        self.state = State.READY
        log.info(
            "model %s version %d READY (%s, %d instance%s, max_batch_size %d, loaded in %.2f s)",
            self.config.name, self.version, self.config.backend, len(self._instances), "s" if len(self._instances) > 1 else "",
            self.config.max_batch_size or 0, time.perf_counter() - started,
        )

    def _warmup(self, inst: _Instance) -> None:
        """In the instance thread: run synthetic batches (1 row and max rows) through every instance."""
        sizes = sorted({1, self.config.max_batch_size or 1})
        for rows in sizes:
            inputs = {t.name: _synthetic(t, rows if self.config.max_batch_size else None) for t in self.config.inputs if not t.optional}
            inst.runtime.infer(inputs, self.output_names)

    async def aclose(self, drain_timeout_s: float = 30.0) -> None:
        """Stop taking requests, wait for in-flight ones (up to ``drain_timeout_s``), close the instances."""
        if self.state == State.READY:
            self.state = State.UNLOADING
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        except TimeoutError:
            log.warning("model %s version %d: %d requests still running after %.0f s; closing anyway", self.config.name, self.version, self._inflight, drain_timeout_s)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ModelNotReady(f"model '{self.config.name}' version {self.version} is unloading"))
        self._waiters.clear()
        await self._close_instances()
        if self.state == State.UNLOADING:
            self.state, self.reason = State.UNAVAILABLE, "unloaded"

    async def _close_instances(self) -> None:
        loop = asyncio.get_running_loop()
        for inst in self._instances:
            try:
                await loop.run_in_executor(inst.executor, inst.runtime.close)
            except Exception:
                log.exception("model %s version %d: closing instance %d failed", self.config.name, self.version, inst.index)
            inst.executor.shutdown(wait=False)
        self._instances = []
        self._free.clear()

    # -- execution -------------------------------------------------------------------------------

    async def execute(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], stamps: Stamps, deadline: float | None
    ) -> dict[str, np.ndarray]:
        """Run one request (or batch) on the next free instance; ``deadline`` is a ``time.monotonic()`` value.

        Raises ModelNotReady, QueueFull, DeadlineExpired, InvalidInput (from the runtime) or RuntimeFailure.
        """
        if self.state != State.READY:
            raise ModelNotReady(f"model '{self.config.name}' version {self.version} is {self.state.lower()}")
        self._inflight += 1
        self._idle.clear()
        try:
            inst = await self._acquire()
            stamps.exec_start = now_ns()
            if deadline is not None and time.monotonic() >= deadline:
                self._release(inst)
                raise DeadlineExpired(f"deadline passed while queued for model '{self.config.name}' (dropped before compute)")
            future: Future[tuple[dict[str, np.ndarray], int, int]] = inst.executor.submit(inst.run, inputs, output_names)
            loop = asyncio.get_running_loop()
            # The instance goes back when its thread is done, whatever happens to this coroutine.
            future.add_done_callback(lambda _f: _call_soon(loop, self._release, inst))
            try:
                outputs, stamps.infer_start, stamps.infer_end = await asyncio.wrap_future(future)
            except InferenceServerError:
                raise
            except Exception as exc:
                log.error("model %s version %d: runtime failed", self.config.name, self.version, exc_info=exc)
                raise RuntimeFailure(f"model '{self.config.name}' version {self.version} failed to execute the request") from exc
            stamps.exec_end = now_ns()
            return outputs
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _acquire(self) -> _Instance:
        if self._free:
            return self._free.popleft()
        if len(self._waiters) >= self._max_waiting:
            raise QueueFull(f"queue full for model '{self.config.name}' version {self.version}: {len(self._waiters)} requests waiting (max_queue_size {self._max_waiting}); retry later")
        waiter: asyncio.Future[_Instance] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # handed to us just as we were cancelled: pass it on
            raise

    def _release(self, inst: _Instance) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(inst)
                return
        if inst in self._instances:
            self._free.append(inst)


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

    - ``max_batch_size`` unset: Triton's auto-complete (4 when every tensor has a variable leading
      dimension, else 0).
    - ``max_batch_size > 0`` requires a variable leading dimension on every model tensor.
    - Tensors declared in the config must exist in the model with the same datatype and compatible dims;
      undeclared ones are taken from the model.

    Raises ConfigError naming the tensor.
    """
    all_tensors = model.inputs + model.outputs
    batchable = bool(all_tensors) and all(t.dims and t.dims[0] == -1 for t in all_tensors)
    max_batch_size = config.max_batch_size
    if max_batch_size is None:
        max_batch_size = AUTO_MAX_BATCH_SIZE if batchable else 0
    elif max_batch_size > 0 and not batchable:
        fixed = [t.name for t in all_tensors if not (t.dims and t.dims[0] == -1)]
        raise ConfigError(f"max_batch_size = {max_batch_size} needs a variable first dimension on every tensor, but {fixed} have a fixed one; set max_batch_size = 0")
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
