"""The engine side of the front-end/engine split: one process per device that owns the models.

``EngineHost`` serves today's ``ModelRepository`` (versions, dynamic batchers, instances, pipelines, runtimes,
all unchanged) to every front end that connects to its Unix socket. Each front end's requests for a model go to
that model's one batcher, so batches fill across front ends. Per connection (see ``channel.py`` and
``arena.py``):

- handshake: the front end sends the server's secret, its index and its request arena's memfd; the engine
  answers with the response arena it made for that front end, and its metrics address;
- ``("i", ...)`` a request: the engine builds numpy views on the request arena (no copy), queues it with
  ``ModelVersion.execute`` and answers ``("d", ...)`` with its outputs written into the response arena (one copy,
  from the runtime's memory; in a worker thread from ``arena.COPY_IN_THREAD_BYTES`` on), or ``("e", error
  class, message)``; ``("c", id)`` cancels it (a client that went away or a deadline that passed: the batcher
  drops it before compute);
- ``("r", offset)`` frees a response region (the front end's last view on it died); the engine sends the same
  for request regions once its own views die;
- ``("s", ...)``/``("f", ...)`` fold an answered/failed request's stage stamps into the version's statistics
  and metrics (perf_counter_ns is CLOCK_MONOTONIC, one clock for every process), so ModelStatistics and the
  model metrics are whole, counted in one place;
- ``("q", id, method, args)`` repository calls (load, unload, statistics) answered with ``("a", id, result,
  error)``; ``("m", snapshot)`` repository snapshots (models, versions, states, reasons, ModelConfigs), sent on
  connect and whenever they change (checked on every serving change and every SNAPSHOT_EVERY_S).

A front end that disconnects (it died, or stopped) has its queued requests dropped; batches already running
finish and their outputs are discarded; its arenas are closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors
from ..execution.model import ModelVersion
from ..execution.stats import Stamps
from ..repository import ModelRepository
from .arena import COPY_IN_THREAD_BYTES, Allocator, Arena, aligned, copy_in_thread, copy_into
from .channel import Link

__all__ = ["ARENA_BYTES", "HELLO", "EngineHost", "error_from", "snapshot_of"]

log = logging.getLogger("surge.engine")

#: The first bytes of a front end's handshake (then the secret and its index).
HELLO = b"SURGE-ENGINE-1"
#: How often the engine compares its repository with the last snapshot it sent (seconds).
SNAPSHOT_EVERY_S = 0.1
#: Default size of each arena (request and response, per front end); pages are only used once touched.
ARENA_BYTES = 512 * 2**20


def snapshot_of(repository: ModelRepository) -> tuple[str, list[tuple[Any, ...]]]:
    """What a front end needs to answer lookups, metadata and index calls as this repository would.

    ``(control mode, [(name, reason, wanted, [(number, token, state, reason, config)], serving numbers)])``;
    ``token`` names one ModelVersion object (a reload makes new ones), the key requests use.
    """
    models = []
    for name in repository.model_names():
        model = repository._models[name]
        versions = [(n, id(v), str(v.state), v.reason, v.config) for n, v in sorted(model.versions.items())]
        models.append((name, model.reason, model.wanted, versions, tuple(v.version for v in model.serving)))
    return repository.control_mode, models


def _signature(snapshot: tuple[str, list[tuple[Any, ...]]]) -> Any:
    return [(m[0], m[1], m[2], [(v[0], v[1], v[2], v[3], id(v[4])) for v in m[3]], m[4]) for m in snapshot[1]]


class _FrontEnd:
    """One connected front end: its channel, its arenas, its requests in the engine."""

    def __init__(self, index: int, requests: Arena, responses: Arena) -> None:
        self.index = index
        self.requests = requests
        self.responses = responses
        self.allocator = Allocator(responses.size)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.link: Link | None = None


class EngineHost:
    """Serves one repository to the front ends that connect to ``socket_path``."""

    def __init__(self, repository: ModelRepository, socket_path: Path, secret: bytes, *, device: str = "cpu", metrics_address: str = "",
                 arena_bytes: int = ARENA_BYTES) -> None:  # fmt: skip
        self.repository = repository
        self.socket_path = socket_path
        self.device = device
        self.metrics_address = metrics_address
        self._secret = secret
        self._arena_bytes = arena_bytes
        self._server: socket.socket | None = None
        self._front_ends: set[_FrontEnd] = set()
        self._tokens: dict[int, ModelVersion] = {}
        self._signature: Any = None
        self._snapshot: tuple[str, list[tuple[Any, ...]]] = ("none", [])
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving_hook: Callable[[str, tuple[ModelVersion, ...]], None] | None = None
        self.requests_by_front_end: Counter[int] = Counter()
        """Requests each front end (by index) sent this engine: shows batches filling across front ends."""
        self.idle = asyncio.Event()
        self.idle.set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)  # a dead predecessor's
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        server.listen(64)
        server.setblocking(False)
        self._server = server
        self._serving_hook = self.repository.on_serving_change
        self.repository.on_serving_change = self._serving_changed
        self._publish()
        self._spawn(self._accept_forever())
        self._spawn(self._watch_forever())

    async def aclose(self) -> None:
        """Stop accepting; the connected front ends' requests already queued are answered by the repository's drain."""
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    def _serving_changed(self, name: str, serving: tuple[ModelVersion, ...]) -> None:
        if self._serving_hook is not None:
            self._serving_hook(name, serving)
        self._publish_soon()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._server is not None
        while True:
            conn, _ = await loop.sock_accept(self._server)
            self._spawn(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        """Handshake (in a thread: ``recv_fds`` is blocking), then serve the front end on the loop."""
        try:
            front_end = await asyncio.wait_for(asyncio.to_thread(self._handshake, conn), 10.0)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("engine %s: a front end's handshake failed (%s); closing it", self.device, exc)
            conn.close()
            return
        loop = asyncio.get_running_loop()
        link = Link(lambda messages: self._on_messages(front_end, messages), lambda: self._lost(front_end))
        front_end.link = link
        await loop.create_unix_connection(lambda: link, sock=conn)
        self._front_ends.add(front_end)
        self.idle.clear()
        link.send(("m", self._snapshot))
        log.info("engine %s: front end %d connected", self.device, front_end.index)

    def _handshake(self, conn: socket.socket) -> _FrontEnd:
        conn.setblocking(True)
        conn.settimeout(10.0)
        data, fds, _, _ = socket.recv_fds(conn, 256, 1)
        if len(fds) != 1 or not data.startswith(HELLO + b" "):
            for fd in fds:
                os.close(fd)
            raise ValueError("not a Surge front end")
        parts = data[len(HELLO) + 1 :].split(b" ")
        if len(parts) != 2 or parts[0] != self._secret:
            os.close(fds[0])
            raise ValueError("wrong secret")
        requests = Arena.attach(fds[0])
        responses = Arena.create(f"surge-engine-{self.device}-responses", self._arena_bytes)
        reply = f"OK {self.device} {self.metrics_address}".encode()
        socket.send_fds(conn, [reply], [responses.fd])
        conn.setblocking(False)
        return _FrontEnd(int(parts[1]), requests, responses)

    def _lost(self, front_end: _FrontEnd) -> None:
        self._front_ends.discard(front_end)
        for task in front_end.tasks.values():
            task.cancel()  # queued: dropped by the batcher; running: the batch finishes, its outputs are discarded
        front_end.tasks.clear()
        front_end.requests.close()
        front_end.responses.close()
        log.info("engine %s: front end %d disconnected", self.device, front_end.index)
        if not self._front_ends:
            self.idle.set()

    # -- snapshots -------------------------------------------------------------------------------

    def _publish_soon(self) -> None:
        asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        snapshot = snapshot_of(self.repository)
        signature = _signature(snapshot)
        if signature == self._signature:
            return
        self._signature = signature
        self._snapshot = snapshot
        self._tokens = {id(v): v for v in self.repository.all_versions()}
        for front_end in self._front_ends:
            assert front_end.link is not None
            front_end.link.send(("m", snapshot))

    async def _watch_forever(self) -> None:
        """States change without a serving change too (an instance hangs, a load starts): compare regularly."""
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY_S)
            self._publish()

    # -- messages --------------------------------------------------------------------------------

    def _on_messages(self, front_end: _FrontEnd, messages: list[Any]) -> None:
        for message in messages:
            try:
                self._on_message(front_end, message)
            except Exception as exc:  # one bad message fails its request, never the channel
                log.exception("engine %s: message %r from front end %d failed", self.device, message[:2], front_end.index)
                if message[0] == "i" and front_end.link is not None:
                    front_end.link.send(("e", message[1], "RuntimeFailure", f"the engine could not take the request ({type(exc).__name__})"))

    def _on_message(self, front_end: _FrontEnd, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "i":
            self._infer(front_end, message)
        elif kind == "r":
            front_end.allocator.free(message[1])
        elif kind == "c":
            task = front_end.tasks.pop(message[1], None)
            if task is not None:
                task.cancel()
        elif kind == "s":
            self._record_success(message)
        elif kind == "f":
            self._record_failure(message)
        elif kind == "q":
            self._spawn(self._call(front_end, message[1], message[2], message[3]))

    def _infer(self, front_end: _FrontEnd, message: tuple[Any, ...]) -> None:
        _, rid, token, specs, rows, output_names, deadline, priority, timeout_s, start, decoded, offset, size = message
        link = front_end.link
        assert link is not None
        self.requests_by_front_end[front_end.index] += 1
        version = self._tokens.get(token)
        if version is None:
            link.send(("e", rid, "ModelNotReady", "this model version was unloaded or replaced; retry"))
            if size:
                link.send(("r", offset))
            return
        inputs: dict[str, np.ndarray] = {}
        if size:
            base = front_end.requests.region(offset, size)
            weakref.finalize(base, link.send, ("r", offset))  # the front end frees the region once no view remains
            for name, dtype, shape, rel, nbytes, inline in specs:
                inputs[name] = inline if inline is not None else base[rel : rel + nbytes].view(dtype).reshape(shape)
            del base
        else:
            for name, _, _, _, _, inline in specs:
                inputs[name] = inline
        stamps = Stamps(start)
        stamps.decoded = decoded
        stamps.rows = rows
        task = asyncio.get_running_loop().create_task(self._run(front_end, rid, version, inputs, rows, output_names, stamps, deadline, priority, timeout_s))
        front_end.tasks[rid] = task

    async def _run(
        self, front_end: _FrontEnd, rid: int, version: ModelVersion, inputs: dict[str, np.ndarray], rows: int, output_names: tuple[str, ...],
        stamps: Stamps, deadline: float | None, priority: int, timeout_s: float | None,
    ) -> None:
        link = front_end.link
        assert link is not None
        try:
            outputs = await version.execute(inputs, rows, output_names, stamps, deadline, priority=priority, timeout_s=timeout_s)
        except asyncio.CancelledError:
            return  # the front end cancelled it, or went away: no answer
        except Exception as exc:
            link.send(("e", rid, type(exc).__name__, str(exc)))
            return
        finally:
            front_end.tasks.pop(rid, None)
            del inputs
        link.send(await self._answer(front_end, rid, outputs, stamps))

    async def _answer(self, front_end: _FrontEnd, rid: int, outputs: dict[str, np.ndarray], stamps: Stamps) -> tuple[Any, ...]:
        """The completion message: outputs copied into this front end's response arena (BYTES inline; in a worker
        thread from COPY_IN_THREAD_BYTES on, so the event loop never copies a large tensor)."""
        specs: list[tuple[Any, ...]] = []
        total = 0
        for name, array in outputs.items():
            if array.dtype.hasobject:
                specs.append((name, None, None, 0, 0, array))
            else:
                specs.append((name, array.dtype.str, array.shape, total, array.nbytes, None))
                total += aligned(array.nbytes)
        offset = -1
        if total:
            offset = front_end.allocator.allocate(total)
            if offset < 0:
                return ("e", rid, "QueueFull", f"the engine's response memory for this front end is full ({front_end.responses.size >> 20} MiB in "
                        "answers not yet sent); retry")  # fmt: skip
            base = front_end.responses.region(offset, total)
            if total < COPY_IN_THREAD_BYTES:
                copy_into(base, specs, outputs.values())
            else:
                await copy_in_thread(front_end.allocator, offset, base, specs, list(outputs.values()))
        return ("d", rid, specs, offset, total, stamps.exec_start, stamps.infer_start, stamps.infer_end, stamps.planned)

    def _version(self, name: str, number: str) -> ModelVersion | None:
        model = self.repository._models.get(name)
        return model.versions.get(int(number)) if model is not None else None

    def _record_success(self, message: tuple[Any, ...]) -> None:
        _, name, number, start, decoded, exec_start, infer_start, infer_end, encode_start, end, rows, planned = message
        version = self._version(name, number)
        if version is None:
            return
        s = Stamps(start)
        s.decoded, s.exec_start, s.infer_start, s.infer_end, s.encode_start, s.end, s.rows, s.planned = (
            decoded, exec_start, infer_start, infer_end, encode_start, end, rows, planned)  # fmt: skip
        version.stats.record_success(s)

    def _record_failure(self, message: tuple[Any, ...]) -> None:
        _, name, number, start, decoded, exec_start, end, rows, code = message
        version = self._version(name, number)
        if version is None:
            return
        s = Stamps(start)
        s.decoded, s.exec_start, s.rows = decoded, exec_start, rows
        version.stats.record_failure(s, end, code)

    async def _call(self, front_end: _FrontEnd, cid: int, method: str, args: tuple[Any, ...]) -> None:
        """A repository call from a front end: load, unload (acting on the whole server once), statistics."""
        result: Any = None
        error: tuple[str, str] | None = None
        try:
            if method == "load":
                await self.repository.load(*args)
            elif method == "unload":
                await self.repository.unload(*args)
            elif method == "statistics":
                result = {(v.config.name, v.version_str): dataclasses.replace(v.stats, metrics=None, latency_listener=None)
                          for v in self.repository.all_versions()}  # fmt: skip
            else:
                raise errors.Unsupported(f"unknown engine call {method!r}")
        except Exception as exc:
            error = (type(exc).__name__, str(exc))
        self._publish()  # before the answer: the caller's next lookup sees the change
        if front_end.link is not None:
            front_end.link.send(("a", cid, result, error))


def error_from(name: str, message: str) -> Exception:
    """The engine's exception as the front end raises it (same class, so the edge maps it to the same status)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.InferenceServerError):
        return cls(message)
    return errors.RuntimeFailure(message)

