"""Shadow traffic: mirror sampled requests to another version and compare its outputs with the primary's.

The primary is never delayed or failed by its shadow:

- On the request path the servicer only calls ``ShadowSender.offer`` (after decoding: a few attribute
  writes and a deque append) and, once the primary has answered or failed, ``ShadowJob.primary_done``
  (one future set). Nothing is awaited there and nothing raised by the shadow reaches the request.
- The shadow has its own budget: at most ``max_concurrency`` shadow requests execute at once (each in a
  task that, when done, takes the next waiting job) and at most ``max_queue`` wait; beyond that the
  shadow request is dropped and counted (``surge_shadow_requests_total{outcome="dropped"}``). Executing
  it goes through the shadow version's own batcher and instances, with no deadline.
- The comparison runs after both answers are in, in the shadow's task: on the event loop when the answers
  are small (``INLINE_COMPARE_ELEMENTS``: tens of microseconds, cheaper than waking a thread, which on a
  busy single core costs more), otherwise in one background thread (``surge-shadow-compare``); the log is
  written by that thread. Counters are written on the loop only.

Comparison, per output present in both answers (``compare``):

- integer, bool and BYTES outputs (class ids, tokens): agree when exactly equal;
- float outputs: agree when ``numpy.allclose(primary, shadow, rtol, atol)`` (``[routing.shadow]``);
  score vectors (a float output of at least 2 dimensions whose last has more than one element) also
  count argmax agreement: every row's top class is the same;
- numeric outputs: the maximum and mean absolute difference (over the elements);
- a request agrees when every compared output agrees; a shape or dtype mismatch is a disagreement.

Latency: the primary's execution time (from decoded to answered) and the shadow's (its execute call,
queueing in its batcher included), both into histograms per (primary, shadow) pair, so the difference of
their means and percentiles shows which version is slower on the same requests.

Disagreement log (``log_path``): one JSON object per line for a sampled fraction of disagreeing requests
(time, model, versions, request id, per-output agreement and the first values of both outputs; the
inputs only with ``log_inputs = true``), written by the comparison thread; it stops growing at
``log_max_bytes`` (counted as ``surge_shadow_log_skipped_total``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ShadowConfig
from ..execution.stats import Stamps, now_ns
from ..observability.exposition import Histogram
from ..observability.metrics import DEFAULT_LATENCY_BUCKETS_S

__all__ = ["Comparison", "PairStats", "ShadowJob", "ShadowSender", "compare"]

log = logging.getLogger("surge.shadow")

#: How long a shadow job waits for its primary's answer before it gives up (seconds; primaries always answer or fail).
PRIMARY_WAIT_S = 600.0
#: Values of each output written to a disagreement log line.
LOG_VALUES = 16
#: Answers with at most this many elements (both sides together) are compared on the event loop (about 50 us at
#: most); larger ones in the comparison thread, so a big output never holds the loop.
INLINE_COMPARE_ELEMENTS = 4096

_BOUNDS_NS = [round(b * 1e9) for b in DEFAULT_LATENCY_BUCKETS_S]
#: What became of a mirrored request (``surge_shadow_requests_total{outcome}``): compared; dropped (the budget was
#: full); shadow_failed; primary_failed; compare_failed (the comparison itself raised: a bug or an output it cannot
#: read, logged with its traceback).
OUTCOMES = ("compared", "dropped", "shadow_failed", "primary_failed", "compare_failed")


@dataclass(slots=True)
class OutputComparison:
    """One output's comparison in one request."""

    agree: bool
    argmax_agree: bool | None = None  # None: not a score vector
    max_abs: float | None = None  # None: not numeric (or shapes differ)
    mean_abs: float | None = None


@dataclass(slots=True)
class Comparison:
    """One request's comparison: per output, and whether all agreed."""

    outputs: dict[str, OutputComparison]

    @property
    def agree(self) -> bool:
        return all(o.agree for o in self.outputs.values())


def compare(primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray], *, rtol: float, atol: float) -> Comparison:
    """Compare two answers to the same request, output by output (see the module docstring)."""
    result: dict[str, OutputComparison] = {}
    for name, p in primary.items():
        s = shadow.get(name)
        if s is None:
            result[name] = OutputComparison(agree=False)
            continue
        p, s = np.asarray(p), np.asarray(s)
        if p.shape != s.shape or p.dtype.kind != s.dtype.kind:
            result[name] = OutputComparison(agree=False)
            continue
        kind = p.dtype.kind
        if kind in "fc":
            agree = bool(np.allclose(p, s, rtol=rtol, atol=atol, equal_nan=True))
            argmax = None
            if p.ndim >= 2 and p.shape[-1] > 1:
                argmax = bool(np.array_equal(p.argmax(axis=-1), s.argmax(axis=-1)))
            diff = np.abs(p.astype(np.float64) - s.astype(np.float64))
            result[name] = OutputComparison(agree, argmax, *_max_mean(diff))
        elif kind in "iub":
            agree = bool(np.array_equal(p, s))
            diff = np.abs(p.astype(np.float64) - s.astype(np.float64))
            result[name] = OutputComparison(agree, None, *_max_mean(diff))
        else:  # BYTES (object) and anything else: exact equality only
            result[name] = OutputComparison(agree=bool(np.array_equal(p, s)))
    return Comparison(result)


def _max_mean(diff: np.ndarray) -> tuple[float | None, float | None]:
    if diff.size == 0:
        return 0.0, 0.0
    finite = diff[np.isfinite(diff)]
    if finite.size == 0:
        return None, None
    return float(finite.max()), float(finite.mean())


@dataclass(slots=True)
class OutputStats:
    """Cumulative comparison counters of one output of one (primary, shadow) pair."""

    compared: int = 0
    agreed: int = 0
    argmax_compared: int = 0
    argmax_agreed: int = 0
    max_abs: float = 0.0
    abs_sum: float = 0.0  # sum over requests of the mean absolute difference
    abs_count: int = 0


@dataclass(slots=True)
class PairStats:
    """Cumulative counters of one (model, primary, shadow) pair. Written on the event loop only; read by scrapes
    in another thread (plain ints and floats, dicts copied: a scrape sees a recent value)."""

    model: str
    primary: str
    shadow: str
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    agreed: int = 0
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    primary_latency: Histogram = field(default_factory=lambda: Histogram(_BOUNDS_NS))
    shadow_latency: Histogram = field(default_factory=lambda: Histogram(_BOUNDS_NS))
    log_written: int = 0
    log_skipped: int = 0

    def fold(self, comparison: Comparison, primary_ns: int, shadow_ns: int) -> None:
        """Add one compared request (event loop). Counts go up before agreements, and scrapes read agreements
        first, so a scrape never shows more agreements than comparisons."""
        self.outcomes["compared"] += 1
        for name, c in comparison.outputs.items():
            o = self.outputs.get(name)
            if o is None:
                o = self.outputs[name] = OutputStats()
            o.compared += 1
            if c.argmax_agree is not None:
                o.argmax_compared += 1
                o.argmax_agreed += c.argmax_agree
            o.agreed += c.agree
            if c.max_abs is not None and c.mean_abs is not None:
                o.max_abs = max(o.max_abs, c.max_abs)
                o.abs_sum += c.mean_abs
                o.abs_count += 1
        self.primary_latency.observe(primary_ns)
        self.shadow_latency.observe(shadow_ns)
        self.agreed += comparison.agree


class ShadowJob:
    """One mirrored request: the shadow's inputs, and the primary's answer once it is there."""

    __slots__ = ("inputs", "output_names", "pair", "primary", "primary_ns", "request_id", "rows", "trace")

    def __init__(self, pair: PairStats, inputs: dict[str, np.ndarray], rows: int, output_names: tuple[str, ...], request_id: str) -> None:
        self.pair = pair
        self.inputs = inputs
        self.rows = rows
        self.output_names = output_names
        self.request_id = request_id
        self.primary: asyncio.Future[dict[str, np.ndarray] | None] = asyncio.get_running_loop().create_future()
        self.primary_ns = 0
        self.trace: Any = None  # the mirrored request's RequestTrace when it is sampled (observability/tracing.py)

    def primary_done(self, outputs: dict[str, np.ndarray] | None, primary_ns: int = 0) -> None:
        """The primary answered (``outputs``) or failed (None). Request path: one future set."""
        if not self.primary.done():
            self.primary_ns = primary_ns
            self.primary.set_result(outputs)


class ShadowSender:
    """Mirrors one model's sampled requests to its shadow version within a bounded budget. Event loop only."""

    def __init__(
        self, model: str, shadow: Any, config: ShadowConfig, pool: ThreadPoolExecutor, *, pairs: dict[tuple[str, str], PairStats] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        """``shadow``: the shadow ``ModelVersion``; ``pool``: the comparison thread; ``pairs``: where the per-pair
        counters live (kept by the caller across senders, so exported counters never go back); ``log_dir``:
        base of a relative ``log_path``."""
        self.model = model
        self.shadow = shadow
        self.config = config
        self._pool = pool
        self._queue: collections.deque[ShadowJob] = collections.deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.pairs: dict[tuple[str, str], PairStats] = pairs if pairs is not None else {}  # by (primary, shadow) version
        self._log: _DisagreementLog | None = None
        if config.log_path:
            path = Path(config.log_path)
            if not path.is_absolute() and log_dir is not None:
                path = log_dir / path
            self._log = _DisagreementLog(path, config.log_max_bytes)

    def pair(self, primary: str) -> PairStats:
        """The counters of (this model, ``primary``, the shadow), created on first use."""
        key = (primary, self.shadow.version_str)
        stats = self.pairs.get(key)
        if stats is None:
            stats = self.pairs[key] = PairStats(self.model, primary, self.shadow.version_str)
        return stats

    def offer(self, primary: str, inputs: dict[str, np.ndarray], rows: int, output_names: tuple[str, ...], request_id: str) -> ShadowJob | None:
        """Mirror a decoded request; returns its job (None: dropped, the budget is full). Request path, never raises."""
        pair = self.pair(primary)
        if self._running >= self.config.max_concurrency and len(self._queue) >= self.config.max_queue:
            pair.outcomes["dropped"] += 1
            return None
        job = ShadowJob(pair, inputs, rows, output_names, request_id)
        if self._running < self.config.max_concurrency:
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._work(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._queue.append(job)
        return job

    def pending(self) -> int:
        """Shadow requests waiting or executing."""
        return len(self._queue) + self._running

    async def aclose(self) -> None:
        """Drop what waits and cancel what runs (the shadow was removed or replaced)."""
        for job in self._queue:
            job.pair.outcomes["dropped"] += 1
        self._queue.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _work(self, job: ShadowJob | None) -> None:
        try:
            while job is not None:
                await self._one(job)
                job = self._queue.popleft() if self._queue else None
        finally:
            self._running -= 1

    async def _one(self, job: ShadowJob) -> None:
        pair = job.pair
        start = now_ns()
        try:
            outputs = await self.shadow.execute(job.inputs, job.rows, job.output_names, Stamps(start), None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never reaches the primary: counted, logged at debug level
            pair.outcomes["shadow_failed"] += 1
            log.debug("shadow %s version %s failed: %s", self.model, self.shadow.version_str, exc)
            if job.trace is not None:
                job.trace.shadow(self.model, self.shadow.version_str, start, now_ns(), type(exc).__name__)
            return
        shadow_ns = now_ns() - start
        if job.trace is not None:
            job.trace.shadow(self.model, self.shadow.version_str, start, start + shadow_ns, "OK")
        try:
            primary = await asyncio.wait_for(asyncio.shield(job.primary), PRIMARY_WAIT_S)
        except TimeoutError:
            primary = None
        if primary is None:
            pair.outcomes["primary_failed"] += 1
            return
        loop = asyncio.get_running_loop()
        if sum(a.size for a in primary.values()) + sum(a.size for a in outputs.values()) <= INLINE_COMPARE_ELEMENTS:
            comparison = self._compare(primary, outputs)  # tens of microseconds: cheaper here than a thread handoff
        else:
            comparison = await loop.run_in_executor(self._pool, self._compare, primary, outputs)
        if comparison is None:
            pair.outcomes["compare_failed"] += 1
            return
        pair.fold(comparison, job.primary_ns, shadow_ns)  # counters are written on the loop only
        if self._log is not None and not comparison.agree and random.random() < self.config.log_sample_rate:
            written = await loop.run_in_executor(self._pool, self._write_log, job, comparison, primary, outputs)
            if written:
                pair.log_written += 1
            else:
                pair.log_skipped += 1

    def _compare(self, primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> Comparison | None:
        """On the loop (small outputs) or in the comparison thread; None when the comparison itself failed (logged)."""
        try:
            return compare(primary, shadow, rtol=self.config.rtol, atol=self.config.atol)
        except Exception:
            log.exception("shadow comparison of %s failed", self.model)
            return None

    def _write_log(self, job: ShadowJob, comparison: Comparison, primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> bool:
        """In the comparison thread: one disagreement into the log; False when the log is full or unwritable."""
        assert self._log is not None
        return self._log.write(_log_record(self.model, job, comparison, primary, shadow, self.config.log_inputs))


def _values(array: np.ndarray) -> list[Any]:
    flat = np.asarray(array).reshape(-1)[:LOG_VALUES]
    if flat.dtype.kind == "O":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return [v if math.isfinite(v) else str(v) for v in flat.astype(np.float64).tolist()] if flat.dtype.kind in "fc" else flat.tolist()


def _log_record(
    model: str, job: ShadowJob, comparison: Comparison, primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray], with_inputs: bool
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model,
        "primary_version": job.pair.primary,
        "shadow_version": job.pair.shadow,
        "request_id": job.request_id,
        "primary_latency_s": job.primary_ns / 1e9,
        "outputs": {
            name: {
                "agree": c.agree, "argmax_agree": c.argmax_agree, "max_abs_difference": c.max_abs,
                "primary": _values(primary[name]), "shadow": _values(shadow[name]) if name in shadow else None,
            }
            for name, c in comparison.outputs.items()
        },
    }
    if with_inputs:
        record["inputs"] = {name: {"shape": list(a.shape), "values": _values(a)} for name, a in job.inputs.items()}
    return record


class _DisagreementLog:
    """An append-only JSON-lines file that stops growing at ``max_bytes`` (comparison thread only)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._size: int | None = None
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> bool:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            try:
                if self._size is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._size = self.path.stat().st_size if self.path.exists() else 0
                if self._size + len(line) > self.max_bytes:
                    return False
                with self.path.open("ab") as f:
                    f.write(line)
                self._size += len(line)
                return True
            except OSError as exc:
                log.warning("cannot write the shadow disagreement log %s: %s", self.path, exc)
                return False
