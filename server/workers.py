"""``surge serve --workers N``: N front ends on one port (SO_REUSEPORT) over one engine per device, supervised by the parent.

Why processes: one Surge process runs its event loop (decode, batching, encode, the gRPC machinery) on one core.
N front ends multiply that part; the models stay in one place: each front end is a ``Server`` whose repository is
a ``RemoteRepository`` (``engine/remote.py``): the gRPC and REST edges, auth, decoding, validation, routing and
shadow decisions and encoding run there, and every request goes to the engine process that owns its model
(``engine/host.py``), tensors through shared memory. So a model is loaded once (one copy of the weights, one CUDA
context per GPU engine), and its ONE dynamic batcher fills from every front end. ``--workers 1`` (the default)
keeps the single process, models in process, no IPC.

The parent (``Supervisor``) does no serving:

- **Port.** It reserves the shared port first with a bound, never-listening SO_REUSEPORT socket (port 0
  becomes a concrete free port every front end then binds; a port held by another program is a clear "cannot
  bind" error before any process starts). The REST port is reserved and shared the same way. A Unix socket gRPC
  address cannot be shared: refused with exit 2.
- **Order.** Engines first (``engine/devices.py``: one for CPU models, one per GPU that the repository's GPU models
  use, ``gpu0``, ``gpu1``, ...), each ready once its models have loaded; then the front ends, which connect to every engine's socket in
  the 0700 state folder (with a per-server secret) and wait for its repository snapshot.
- **Supervision.** Every child is a ``multiprocessing`` *spawn* child (never fork: gRPC's threads do not survive
  fork). A child that exits while the server runs is logged and restarted, after a backoff that doubles from
  0.5 s to 30 s and resets once it has stayed up for a minute. A dead engine: the front ends answer UNAVAILABLE
  for its models at once ("its engine stopped; it is being restarted"), reconnect, and serve them again when the
  new engine has reloaded them; other engines' models keep serving. A child that fails at its first start with a
  configuration error (exit 2) stops the whole server with exit 2. SIGTERM/SIGINT: every front end gets SIGTERM
  and drains as a single server does (readiness off, in-flight requests finish within ``drain_timeout_s``); once
  they have exited, the engines get SIGTERM and free the models; the parent exits 0. Children die with the parent
  (Linux ``PR_SET_PDEATHSIG``), so a killed supervisor leaves no orphan.
- **Metrics** (one scrape shows the whole server): each child serves its own ``/metrics`` on 127.0.0.1 at an
  ephemeral port; the parent serves the configured metrics port and, per scrape, reads every child's page,
  merges it (``merge_families``) and answers in the format the scraper asked for. The model families (per-model
  histograms, queue depth, states) come whole from the engine that owns the model (front ends have none); the
  edge families (gRPC calls, loop lag, unrouted requests) are summed over front ends. Merging rules: counters and
  histograms are summed (bucket by bucket); gauges that are amounts (queue depth, in-flight requests, memory, open
  fds) are summed; ``process_start_time_seconds`` is the earliest; every other gauge is the maximum. When a child
  dies, its counters as last scraped are kept ("retired") and added to every later scrape, so the whole-server
  counters never go down. The parent adds ``surge_workers`` (ready front ends) and ``surge_worker_restarts_total``
  (front ends and engines restarted); each engine adds ``surge_engine_requests_total{device, front_end}``.
- **ModelStatistics and repository calls** go to the engines (``RemoteRepository``): statistics are the engine's
  counters, whole; RepositoryModelLoad/Unload act on the engine, so once on the whole server, and every front end
  sees the change in the engine's next snapshot (sent before the call is answered). A restarted engine loads what
  the control mode and ``--load-model`` say, not what was loaded through the API since.
- **Front ends among themselves** (``WorkerPeers``): each also listens on a private Unix socket in the state
  folder; ``surge.v1.Admin`` route changes are sent to every front end, and a ``surge.v1.Feedback`` report whose
  request id this front end never indexed is asked of the siblings (``surge_servicer.py``). A sibling call carries
  the caller's own ``authorization`` metadata and the sibling checks it like any call.
- **Triton shared memory** (client-registered regions) stays refused under ``--workers``: a region registered
  through one front end would not be seen by the others, nor by the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import write_atomic
from .observability.metrics import encode, negotiate
from .observability.page_merge import Family, format_page, merge_families, parse_page
from .edge.scrape import fetch_page
from .engine.devices import devices_for
from .engine.host import ARENA_BYTES
from .engine.process import engine_main, engine_socket
from .engine.remote import EngineLinks
from .peers import WorkerPeers

__all__ = ["Supervisor", "reserve_port", "supervise"]

log = logging.getLogger("surge.workers")

#: How long the parent waits for one worker's /metrics page (seconds).
SCRAPE_TIMEOUT_S = 10.0
#: Restart backoff: first delay, cap, and how long a worker must stay up for the delay to reset (seconds).
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_S = 60.0
#: Exit code of a worker that cannot start (bad configuration, port): the whole server stops with it.
EXIT_CANNOT_START = 2

# -- ports ----------------------------------------------------------------------------------------


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen) an SO_REUSEPORT socket to ``host:port``; port 0 picks a free one (``getsockname``).

    Holding it keeps the port for the workers (which bind it with SO_REUSEPORT too) across restarts; it takes
    no connections since it does not listen. Raises OSError when another program holds the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _supervisor_families(ready: int, restarts: int, *, openmetrics: bool) -> list[Family]:
    restarts_name = "surge_worker_restarts" if openmetrics else "surge_worker_restarts_total"
    return [
        Family("surge_workers", "gauge", ["# HELP surge_workers Worker processes serving (ready) under the supervisor.",
                                          "# TYPE surge_workers gauge"], {"surge_workers": float(ready)}),
        Family(restarts_name, "counter", [f"# HELP {restarts_name} Worker processes restarted after they died.",
                                          f"# TYPE {restarts_name} counter"], {"surge_worker_restarts_total": float(restarts)}),
    ]  # fmt: skip


# -- the worker process ---------------------------------------------------------------------------


def _set_parent_death_signal() -> None:
    """Linux: SIGTERM this process when the supervisor dies (no orphan workers); a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker_main(index: int, config: Any, state_dir: str, ready: Connection, log_level: str, loop: str, engines: EngineLinks) -> None:
    """Entry point of a spawned front end: serve until SIGTERM; exit 2 when it cannot start."""
    _set_parent_death_signal()
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s %(levelname)-7s %(name)s [front end {index}]: %(message)s")
    from .cli import _run

    try:
        _run(_serve_worker(index, config, Path(state_dir), ready, engines), loop)
    except (ConfigError, OSError) as exc:
        logging.getLogger("surge.server").error("cannot start: %s", exc)
        sys.exit(EXIT_CANNOT_START)


async def _serve_worker(index: int, config: Any, state_dir: Path, ready: Connection, engines: EngineLinks) -> None:
    from .app import Server

    peers = WorkerPeers(state_dir, index)
    peers.socket_path.unlink(missing_ok=True)  # left behind by a crashed predecessor
    server = Server(config, peers=peers, engines=engines)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    state = {"index": index, "pid": os.getpid(), "private": peers.private_target, "metrics": server.metrics_address, "address": server.address}
    state_file = state_dir / f"worker-{index}.json"
    write_atomic(state_file, json.dumps(state))
    ready.send(state)
    ready.close()
    await stopping.wait()
    state_file.unlink(missing_ok=True)  # siblings stop asking this one
    log.info("stopping: readiness off, draining in-flight requests (up to %.0f s)", config.drain_timeout_s)
    await server.stop()
    await peers.aclose()
    log.info("stopped")


# -- the supervisor -------------------------------------------------------------------------------


@dataclass
class _Slot:
    index: int
    device: str = ""
    """An engine's device ("" for a front end)."""
    process: Any = None
    state: dict[str, Any] | None = None
    ever_ready: bool = False
    last_page: dict[bool, dict[str, Family]] = field(default_factory=dict)
    """The last page scraped from it, per format (OpenMetrics or not: their counter family names differ)."""


def _name(slot: _Slot) -> str:
    return f"engine {slot.device}" if slot.device else f"front end {slot.index}"


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: None if future.done() else future.set_result(None))
    try:
        await future
    finally:
        loop.remove_reader(fd)


class Supervisor:
    """Runs ``workers`` server processes on ``config``'s port and the whole server's metrics endpoint."""

    def __init__(self, config: Any, workers: int, *, log_level: str = "info", loop: str = "auto", arena_bytes: int = ARENA_BYTES) -> None:
        if workers < 1:
            raise ConfigError(f"--workers: a supervisor runs 1 or more front ends, got {workers}")
        if config.grpc_address or config.http_address:
            flag, address = ("--grpc-address", config.grpc_address) if config.grpc_address else ("--http-address", config.http_address)
            raise ConfigError(
                f"--workers {workers} with {flag} {address}: workers share a TCP port (SO_REUSEPORT); a Unix socket "
                "has one listener. Use --workers 1 with a Unix socket, or a TCP port (--grpc-port) with workers"
            )
        self.config = config
        self.workers = workers
        self._log_level = log_level
        self._loop_name = loop
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(workers)]
        self._engines = [_Slot(i, device=d) for i, d in enumerate(devices_for(config.model_repository))]
        self._engines_ready = asyncio.Event()
        self._arena_bytes = arena_bytes
        self._stopping = asyncio.Event()
        self._exit_code = 0
        self._retired: dict[bool, dict[str, Family]] = {}
        self._restarts = 0
        self._all_ready = asyncio.Event()
        self.address = ""
        self.metrics_address = ""

    def request_stop(self) -> None:
        """Begin the graceful stop (what SIGTERM/SIGINT do)."""
        self._stopping.set()

    async def run(self, *, address_file: Path | None = None) -> int:
        """Serve until stopped; returns the exit code (0, or 2 when a worker cannot start)."""
        from .edge.metrics_http import MetricsEndpoint

        config = self.config
        try:
            reserved = reserve_port(config.host, config.grpc_port)
        except OSError as exc:
            raise OSError(f"cannot bind gRPC to {config.host}:{config.grpc_port} ({exc.strerror or exc})") from None
        port = reserved.getsockname()[1]
        self.address = f"{config.host}:{port}"
        http_port, reserved_http = config.http_port, None
        if http_port >= 0:  # REST: the same shared port scheme as gRPC
            try:
                reserved_http = reserve_port(config.host, http_port)
            except OSError as exc:
                reserved.close()
                raise OSError(f"cannot bind REST to {config.host}:{config.http_port} ({exc.strerror or exc})") from None
            http_port = reserved_http.getsockname()[1]
        state_dir = Path(tempfile.mkdtemp(prefix="surge-workers-"))  # 0700: only this user reaches the sockets
        worker_config = dataclasses.replace(
            config, grpc_port=port, http_port=http_port, reuse_port=True, metrics_port=0 if config.metrics_port >= 0 else -1
        )
        endpoint = None
        tasks: list[asyncio.Task[None]] = []
        try:
            if config.metrics_port >= 0:
                context, token = config.metrics_protection()
                endpoint = MetricsEndpoint(None, config.host, config.metrics_port, source=self._scrape, ssl_context=context, token=token)
                try:
                    self.metrics_address = await endpoint.start()
                except OSError as exc:
                    raise OSError(f"cannot bind the metrics endpoint to {config.host}:{config.metrics_port}: {exc.strerror or exc}") from None
                log.info("metrics of all workers on http://%s/metrics", self.metrics_address)
            secret = os.urandom(16).hex().encode()
            engine_config = dataclasses.replace(config, metrics_port=0 if config.metrics_port >= 0 else -1)
            devices = [e.device for e in self._engines]
            log.info("starting engine(s) %s; state in %s", ", ".join(devices), state_dir)
            tasks = [asyncio.create_task(self._guarded_keep(e, engine_main, (e.device, devices, engine_config, str(state_dir), secret), state_dir))
                     for e in self._engines]  # fmt: skip
            engines_up = asyncio.create_task(self._engines_ready.wait())
            stop = asyncio.create_task(self._stopping.wait())
            await asyncio.wait((engines_up, stop), return_when=asyncio.FIRST_COMPLETED)
            engines_up.cancel()
            if not self._stopping.is_set():
                links = EngineLinks({d: engine_socket(state_dir, d) for d in devices}, secret, self._arena_bytes)
                log.info("starting %d front ends on %s%s (SO_REUSEPORT)", self.workers, self.address,
                         f" and REST {config.host}:{http_port}" if reserved_http is not None else "")  # fmt: skip
                tasks += [asyncio.create_task(self._guarded_keep(slot, _worker_main, (slot.index, worker_config, str(state_dir)), state_dir, links))
                          for slot in self._slots]  # fmt: skip
            ready = asyncio.create_task(self._all_ready.wait())
            await asyncio.wait((ready, stop), return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not self._stopping.is_set():
                log.info("Surge READY: %d front ends and engine(s) %s on %s", self.workers, ", ".join(devices), self.address)
                if address_file is not None:
                    write_atomic(address_file, self.address)
            await stop
            log.info("stopping: SIGTERM to every front end; each drains (up to %.0f s); then the engines", config.drain_timeout_s)
            await self._stop_all(tasks)
        finally:
            for task in tasks:
                task.cancel()
            if endpoint is not None:
                await endpoint.aclose()
            reserved.close()
            if reserved_http is not None:
                reserved_http.close()
            shutil.rmtree(state_dir, ignore_errors=True)
        log.info("stopped")
        return self._exit_code

    async def _stop_all(self, tasks: list[asyncio.Task[None]]) -> None:
        """Front ends first (they drain their requests through the engines), then the engines."""
        for group in (self._slots, self._engines):
            for slot in group:
                if slot.process is not None and slot.process.is_alive():
                    slot.process.terminate()
            deadline = time.monotonic() + self.config.drain_timeout_s + 15.0
            for slot in group:
                process = slot.process
                if process is None:
                    continue
                while process.is_alive() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if process.is_alive():
                    log.error("%s (pid %d) did not stop in time: killed", _name(slot), process.pid)
                    process.kill()
                    await asyncio.to_thread(process.join, 5.0)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _check_all_ready(self) -> None:
        if all(slot.state is not None for slot in self._engines):
            self._engines_ready.set()
        if all(slot.state is not None for slot in self._slots):
            self._all_ready.set()

    async def _guarded_keep(self, slot: _Slot, target: Any, args: tuple[Any, ...], state_dir: Path, *extra: Any) -> None:
        """``_keep``, but a supervisor bug (say, a child that cannot be spawned) stops the server, never hangs it."""
        try:
            await self._keep(slot, target, args, extra)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: the supervisor failed to run it: stopping the server", _name(slot))
            self._exit_code = 1
            self._stopping.set()

    async def _keep(self, slot: _Slot, target: Any, args: tuple[Any, ...], extra: tuple[Any, ...]) -> None:
        """Run one child (front end or engine), restarting it with backoff whenever it exits while the server runs."""
        backoff_s = BACKOFF_FIRST_S
        while not self._stopping.is_set():
            receiver, sender = self._context.Pipe(duplex=False)
            if slot.device:
                extra = (self._arena_bytes,)
            process = self._context.Process(
                target=target, args=(*args, sender, self._log_level, self._loop_name, *extra),
                name=f"surge-engine-{slot.device}" if slot.device else f"surge-front-end-{slot.index}", daemon=False,
            )
            process.start()
            sender.close()
            slot.process = process
            started = time.monotonic()
            await _readable(receiver.fileno())  # the ready message, or EOF when it died first
            try:
                slot.state = receiver.recv()
            except (EOFError, OSError):
                slot.state = None
            receiver.close()
            if slot.state is not None:
                slot.ever_ready = True
                log.info("%s ready (pid %d)", _name(slot), process.pid)
                self._check_all_ready()
            await _readable(process.sentinel)
            process.join()
            code = process.exitcode
            slot.state = None
            for openmetrics, page in slot.last_page.items():
                self._retired[openmetrics] = merge_families([], merge_families([self._retired.get(openmetrics, {}), page]))
            slot.last_page = {}
            if self._stopping.is_set():
                return
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            if code == EXIT_CANNOT_START and not slot.ever_ready:
                log.error("%s cannot start (%s): stopping the server", _name(slot), how)
                self._exit_code = EXIT_CANNOT_START
                self._stopping.set()
                return
            if time.monotonic() - started >= BACKOFF_RESET_S:
                backoff_s = BACKOFF_FIRST_S
            self._restarts += 1
            log.warning("%s (pid %d) died (%s); restarting in %.1f s", _name(slot), process.pid, how, backoff_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff_s)
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _scrape(self, accept: str, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
        """The whole server's /metrics: every ready worker's page (in the format asked for), merged, plus the
        supervisor's own families."""
        openmetrics, content_type = negotiate(accept)
        slots = [s for s in (*self._slots, *self._engines) if s.state is not None and s.state.get("metrics")]
        texts = await asyncio.gather(*(
            fetch_page(s.state["metrics"], accept=accept, timeout_s=SCRAPE_TIMEOUT_S)  # type: ignore[index]
            for s in slots
        ), return_exceptions=True)  # fmt: skip
        ready, restarts, retired = sum(s.state is not None for s in self._slots), self._restarts, self._retired.get(openmetrics)

        def merge() -> tuple[list[tuple[_Slot, dict[str, Family]]], str]:
            pages = []
            for slot, text in zip(slots, texts):
                if isinstance(text, BaseException):
                    log.warning("metrics: %s did not answer (%s): left out of this scrape", _name(slot), text)
                    continue
                pages.append((slot, parse_page(text)))
            merged = merge_families([page for _, page in pages], retired)
            families = [*_supervisor_families(ready, restarts, openmetrics=openmetrics), *merged.values()]
            return pages, format_page(families, openmetrics=openmetrics)

        pages, text = await asyncio.get_running_loop().run_in_executor(None, merge)
        for slot, page in pages:  # on the loop: read by _keep when a worker dies
            slot.last_page[openmetrics] = page
        return encode(text, content_type, accept_encoding)


async def supervise(config: Any, workers: int, *, log_level: str, loop: str, address_file: Path | None = None, arena_bytes: int = ARENA_BYTES) -> int:
    """``surge serve --workers N``: run the supervisor until SIGTERM/SIGINT; returns the exit code."""
    supervisor = Supervisor(config, workers, log_level=log_level, loop=loop, arena_bytes=arena_bytes)
    event_loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(sig, supervisor.request_stop)
    return await supervisor.run(address_file=address_file)
