"""The front-end side of the front-end/engine split: a repository whose models run in engine processes.

``RemoteRepository`` is a ``ModelRepository`` whose tables are filled from the engines' snapshots (``host.py``),
so every lookup, state, reason, index row and readiness answer is the one the repository code computes, and the
edges, the data plane and the router call the same methods they call in process. Its versions are
``RemoteVersion``s: ``execute`` writes the request's input bytes into this front end's request arena (in a worker
thread from ``arena.COPY_IN_THREAD_BYTES`` on, so the event loop never copies a large tensor), sends one
control message, and returns numpy views of the outputs in the engine's response arena (the edge encodes from
there); ``stats.record_success``/``record_failure`` send the request's stamps to the engine, which counts them.
Repository calls (load, unload) go to the engine that owns the model, so they act on the whole server once;
``refresh_statistics`` fetches the engine's counters before a ModelStatistics answer.

When an engine's channel closes (it died), its models turn UNAVAILABLE at once with a reason that says so, their
requests in flight fail with UNAVAILABLE, and the front end reconnects every RECONNECT_S; the restarted engine
reloads the models and its first snapshot makes them serve again. Other engines' models keep serving.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import weakref
from dataclasses import dataclass
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors
from ..execution.model import State
from ..execution.stats import Stamps, VersionStats
from ..repository import ModelRepository, _Model
from .arena import COPY_IN_THREAD_BYTES, Allocator, Arena, aligned, copy_in_thread, copy_into
from .channel import Link
from .host import ARENA_BYTES, HELLO, error_from

__all__ = ["EngineClient", "EngineLinks", "RemoteRepository", "RemoteVersion"]

log = logging.getLogger("surge.engine")

#: How often a front end tries to reach an engine that is down (seconds).
RECONNECT_S = 0.2
#: How long a repository call to an engine may take (a load waits for warm-up).
CALL_TIMEOUT_S = 600.0

_ids = itertools.count(1).__next__


@dataclass(frozen=True, slots=True)
class EngineLinks:
    """How a front end reaches the engines: their sockets (by device), the server's secret, the arena size."""

    sockets: dict[str, Path]
    secret: bytes
    arena_bytes: int = ARENA_BYTES


class RemoteStats(VersionStats):
    """A version's statistics as the front end sees them: recording sends the stamps to the engine (which counts
    them); the counters are the engine's, copied in by ``RemoteRepository.refresh_statistics``."""

    __slots__ = ("_client", "_name", "_number")

    def __init__(self, client: EngineClient, name: str, number: str) -> None:
        super().__init__()
        self._client = client
        self._name = name
        self._number = number

    def record_success(self, s: Stamps) -> None:
        self._client.send(("s", self._name, self._number, s.start, s.decoded, s.exec_start, s.infer_start, s.infer_end, s.encode_start, s.end,
                           s.rows, s.planned))  # fmt: skip

    def record_failure(self, s: Stamps, end_ns: int, code: str) -> None:
        self._client.send(("f", self._name, self._number, s.start, s.decoded, s.exec_start, end_ns, s.rows if s.decoded else 0, code))

    def record_execution(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        raise AssertionError("executions are counted by the engine")


class RemoteVersion:
    """A model version served by an engine: what the edges and the router read of a ``ModelVersion``."""

    def __init__(self, client: EngineClient, token: int, number: int, state: str, reason: str, config: Any) -> None:
        self.client = client
        self.token = token
        self.config = config
        self.version = number
        self.version_str = str(number)
        self.state = state
        self.reason = reason
        self.stats: VersionStats = RemoteStats(client, config.name, self.version_str)
        self.codec_spec: Any = None
        self.output_names = tuple(t.name for t in config.outputs)

    async def execute(
        self, inputs: dict[str, np.ndarray], rows: int, output_names: Sequence[str], stamps: Stamps,
        deadline: float | None, *, priority: int = 0, timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one request in the engine; raises as ``ModelVersion.execute`` does (the engine's exception, by class)."""
        if self.state != State.READY:
            raise errors.ModelNotReady(f"model '{self.config.name}' version {self.version} is {self.state.lower()}" + (f": {self.reason}" if self.reason else ""))
        return await self.client.infer(self, inputs, rows, output_names, stamps, deadline, priority, timeout_s)

    def submit(
        self, inputs: dict[str, np.ndarray], rows: int, output_names: Sequence[str], stamps: Stamps, deadline: float | None,
        on_done: Callable[[asyncio.Future[dict[str, np.ndarray]]], None], *, priority: int = 0, timeout_s: float | None = None,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """``ModelVersion.submit`` for a front end (a ModelStreamInfer stream's fast path): the request goes to the engine
        in a task; ``on_done(future)`` runs on the loop when it is answered or cancelled. Raises as ``execute`` does."""
        if self.state != State.READY:
            raise errors.ModelNotReady(f"model '{self.config.name}' version {self.version} is {self.state.lower()}" + (f": {self.reason}" if self.reason else ""))
        task = asyncio.ensure_future(self.client.infer(self, inputs, rows, output_names, stamps, deadline, priority, timeout_s))
        task.add_done_callback(on_done)
        return task


class EngineClient:
    """This front end's connection to one engine: channel, arenas, requests in flight, calls."""

    def __init__(self, repository: RemoteRepository, socket_path: Path, secret: bytes, index: int, arena_bytes: int = ARENA_BYTES) -> None:
        self.repository = repository
        self.socket_path = socket_path
        self.device = "?"
        self.metrics_address = ""
        self._secret = secret
        self._index = index
        self._arena_bytes = arena_bytes
        self._link: Link | None = None
        self._requests: Arena | None = None
        self._responses: Arena | None = None
        self._allocator = Allocator(0)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self.connected = asyncio.Event()
        self.snapshot_seen = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- connection ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._connect_forever())

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self._link is not None:
            self._link.close()

    async def _connect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        warned = False
        while not self._closing:
            if self._link is None:
                try:
                    conn, requests, responses, reply = await asyncio.to_thread(self._handshake)
                except (OSError, ValueError) as exc:
                    if not warned:
                        log.info("engine at %s not reachable yet (%s); retrying every %.1f s", self.socket_path, exc, RECONNECT_S)
                        warned = True
                    await asyncio.sleep(RECONNECT_S)
                    continue
                warned = False
                _, self.device, self.metrics_address = (reply.decode().split(" ") + ["", ""])[:3]
                self._requests, self._responses = requests, responses
                self._allocator = Allocator(requests.size)
                link = Link(self._on_messages, self._lost)
                await loop.create_unix_connection(lambda: link, sock=conn)  # noqa: B023 (awaited here, in this iteration)
                self._link = link
                self.connected.set()
                log.info("connected to engine %s", self.device)
            await asyncio.sleep(RECONNECT_S)

    def _handshake(self) -> tuple[socket.socket, Arena, Arena, bytes]:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(10.0)
            conn.connect(str(self.socket_path))
            requests = Arena.create("surge-front-end-requests", self._arena_bytes)
            try:
                socket.send_fds(conn, [HELLO + b" " + self._secret + b" " + str(self._index).encode()], [requests.fd])
                reply, fds, _, _ = socket.recv_fds(conn, 256, 1)
            except BaseException:
                requests.close()
                raise
            if not reply.startswith(b"OK ") or len(fds) != 1:
                raise ValueError("the engine refused the handshake")
            responses = Arena.attach(fds[0])
            conn.setblocking(False)
            return conn, requests, responses, reply
        except BaseException:
            conn.close()
            raise

    def _lost(self) -> None:
        """The engine's channel closed: fail what is in flight, mark its models UNAVAILABLE, reconnect."""
        self._link = None
        self.connected.clear()
        self.snapshot_seen.clear()
        reason = f"its engine ({self.device}) stopped; it is being restarted and the model reloaded: retry shortly"
        for future in [*self._pending.values(), *self._calls.values()]:
            if not future.done():
                future.set_exception(errors.ModelNotReady(reason))
        self._pending.clear()
        self._calls.clear()
        for arena in (self._requests, self._responses):
            if arena is not None:
                arena.close()
        self._requests = self._responses = None
        if not self._closing:
            log.error("engine %s: channel closed; its models answer UNAVAILABLE until it is back", self.device)
            self.repository.engine_lost(self, reason)

    # -- messages --------------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        if self._link is not None:
            self._link.send(message)

    def _on_messages(self, messages: list[Any]) -> None:
        for message in messages:
            kind = message[0]
            if kind == "d" or kind == "e":
                future = self._pending.pop(message[1], None)
                if future is not None and not future.done():
                    future.set_result(message)
                elif kind == "d" and message[3] >= 0:
                    self.send(("r", message[3]))  # cancelled meanwhile: nobody reads these outputs
            elif kind == "r":
                self._allocator.free(message[1])
            elif kind == "m":
                self.repository.apply_snapshot(self, message[1])
                self.snapshot_seen.set()
            elif kind == "a":
                future = self._calls.pop(message[1], None)
                if future is not None and not future.done():
                    future.set_result(message)

    async def call(self, method: str, *args: Any) -> Any:
        """A repository call on the engine; raises its error (same class) or ModelNotReady when it is down."""
        if self._link is None:
            raise errors.ModelNotReady(f"the engine ({self.device}) is restarting; retry shortly")
        cid = _ids()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[cid] = future
        self._link.send(("q", cid, method, args))
        try:
            _, _, result, error = await asyncio.wait_for(future, CALL_TIMEOUT_S)
        finally:
            self._calls.pop(cid, None)
        if error is not None:
            raise error_from(*error)
        return result

    async def infer(
        self, version: RemoteVersion, inputs: Mapping[str, np.ndarray], rows: int, output_names: Sequence[str], stamps: Stamps,
        deadline: float | None, priority: int, timeout_s: float | None,
    ) -> dict[str, np.ndarray]:
        link, arena = self._link, self._requests
        if link is None or arena is None:
            raise errors.ModelNotReady(f"model '{version.config.name}' is not ready: its engine ({self.device}) is restarting; retry shortly")
        specs: list[tuple[Any, ...]] = []
        total = 0
        for name, array in inputs.items():
            if array.dtype.hasobject:  # BYTES: no fixed layout, travels inline
                specs.append((name, None, None, 0, 0, array))
            else:
                specs.append((name, array.dtype.str, array.shape, total, array.nbytes, None))
                total += aligned(array.nbytes)
        offset = -1
        if total:
            if total > arena.size:
                raise errors.LimitExceeded(f"the request's tensors take {total} bytes, more than the engine's request memory of {arena.size} bytes "
                                           "(surge serve --engine-arena-mb)")  # fmt: skip
            allocator = self._allocator
            offset = allocator.allocate(total)
            if offset < 0:
                raise errors.QueueFull(f"model '{version.config.name}': this front end's request memory ({arena.size >> 20} MiB) is full of requests in "
                                       "flight; retry")  # fmt: skip
            base = arena.region(offset, total)
            if total < COPY_IN_THREAD_BYTES:
                copy_into(base, specs, inputs.values())
            else:
                await copy_in_thread(allocator, offset, base, specs, list(inputs.values()))
                if self._link is not link:  # the engine went away meanwhile
                    allocator.free(offset)
                    raise errors.ModelNotReady(f"model '{version.config.name}' is not ready: its engine ({self.device}) is restarting; retry shortly")
            del base
        rid = _ids()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        link.send(("i", rid, version.token, specs, rows, tuple(output_names), deadline, priority, timeout_s, stamps.start, stamps.decoded, offset, total))
        try:
            reply = await future
        except asyncio.CancelledError:
            if self._pending.pop(rid, None) is not None:
                self.send(("c", rid))
            raise
        if reply[0] == "e":
            raise error_from(reply[2], reply[3])
        _, _, out_specs, out_offset, out_total, stamps.exec_start, stamps.infer_start, stamps.infer_end, stamps.planned = reply
        outputs: dict[str, np.ndarray] = {}
        if out_total:
            responses = self._responses
            assert responses is not None
            out = responses.region(out_offset, out_total)
            weakref.finalize(out, self.send, ("r", out_offset))  # the engine frees the region once no view remains here
            for name, dtype, shape, rel, nbytes, inline in out_specs:
                outputs[name] = inline if inline is not None else out[rel : rel + nbytes].view(dtype).reshape(shape)
        else:
            for name, _, _, _, _, inline in out_specs:
                outputs[name] = inline
        return outputs


class RemoteRepository(ModelRepository):
    """The repository of a front end: the engines' models, looked up exactly as ``ModelRepository`` does."""

    def __init__(self, root: Path, engines: Mapping[str, Path], secret: bytes, index: int, *, control_mode: str = "none",
                 arena_bytes: int = ARENA_BYTES) -> None:  # fmt: skip
        super().__init__(root, control_mode=control_mode)
        self._by_device = {device: EngineClient(self, path, secret, index, arena_bytes) for device, path in engines.items()}
        self.engines = list(self._by_device.values())
        self._owner: dict[str, EngineClient] = {}

    async def start(self) -> None:
        """Connect to every engine and wait (up to a minute) for each one's first snapshot; an engine that is down
        leaves its models unknown until it is up (the front end serves the others meanwhile)."""
        for client in self.engines:
            client.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(c.snapshot_seen.wait() for c in self.engines)), 60.0)
        except TimeoutError:
            log.error("not every engine answered within 60 s; serving the models of those that did")

    async def aclose(self) -> None:
        for client in self.engines:
            await client.aclose()

    async def poll_once(self) -> None:
        """The engines poll the repository folder; a front end has nothing to scan."""

    async def engine_of(self, name: str) -> EngineClient:
        """The engine that serves (or would serve) model ``name``."""
        client = self._owner.get(name)
        if client is None and len(self.engines) > 1:
            from .devices import device_of

            client = self._by_device.get(await asyncio.to_thread(device_of, self.root, name))
        return client if client is not None else self.engines[0]

    async def load(self, name: str, overrides: Mapping[str, Any] | None = None) -> None:
        await (await self.engine_of(name)).call("load", name, dict(overrides) if overrides is not None else None)

    async def unload(self, name: str) -> None:
        if name not in self._models:
            raise errors.ModelNotFound(f"model '{name}' is not in the repository")
        await (await self.engine_of(name)).call("unload", name)

    async def refresh_statistics(self) -> None:
        """Copy every engine's cumulative counters into this front end's versions (before a ModelStatistics answer)."""
        results = await asyncio.gather(*(c.call("statistics") for c in self.engines if c.connected.is_set()), return_exceptions=True)
        counters: dict[tuple[str, str], VersionStats] = {}
        for result in results:
            if isinstance(result, dict):
                counters.update(result)
        for version in self.all_versions():
            source = counters.get((version.config.name, version.version_str))
            if source is not None:
                for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "inference_count", "execution_count",
                              "last_inference_ms", "batches"):  # fmt: skip
                    setattr(version.stats, field, getattr(source, field))

    async def engine_pages(self) -> list[str]:
        """The engines' metrics pages (model families live there), for the rollout controller's figures."""
        from ..edge.scrape import fetch_page

        pages = await asyncio.gather(*(fetch_page(c.metrics_address, timeout_s=10.0) for c in self.engines if c.metrics_address), return_exceptions=True)
        return [p for p in pages if isinstance(p, str)]

    # -- snapshots -------------------------------------------------------------------------------

    def apply_snapshot(self, client: EngineClient, snapshot: tuple[str, list[tuple[Any, ...]]]) -> None:
        """Install an engine's repository snapshot (``host.snapshot_of``): versions kept by token, serving swapped."""
        control_mode, models = snapshot
        self.control_mode = control_mode
        seen = set()
        for name, reason, wanted, versions, serving in models:
            seen.add(name)
            self._owner[name] = client
            model = self._models.get(name)
            if model is None:
                model = self._models[name] = _Model(name)
            model.reason, model.wanted = reason, wanted
            by_token: dict[Any, Any] = {getattr(v, "token", None): v for v in model.versions.values()}
            table: dict[int, Any] = {}
            for number, token, state, vreason, config in versions:
                version = by_token.get(token)
                if version is None:
                    version = RemoteVersion(client, token, number, state, vreason, config)
                version.state, version.reason = state, vreason
                table[number] = version
            model.versions = table
            fresh = tuple(table[n] for n in serving)
            if fresh != model.serving:
                model.serving = fresh
                self._notify(name, fresh)
        for name in [n for n, c in self._owner.items() if c is client and n not in seen]:
            del self._owner[name]
            model = self._models.pop(name, None)
            if model is not None and model.serving:
                self._notify(name, ())

    def engine_lost(self, client: EngineClient, reason: str) -> None:
        for name, owner in self._owner.items():
            if owner is not client:
                continue
            model = self._models[name]
            for version in model.versions.values():  # RemoteVersions (the base class types them as ModelVersion)
                version.state, version.reason = State.UNAVAILABLE, reason
                version.token = -1  # type: ignore[attr-defined]  # the new engine's versions are new objects (ids may repeat)
            if not model.versions:
                model.reason = reason
            if model.serving:
                model.serving = ()
                self._notify(name, ())
