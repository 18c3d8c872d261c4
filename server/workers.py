"""``surge serve --workers N``: N server processes on one port (SO_REUSEPORT), supervised by the parent.

Why processes: one Surge process runs its event loop (decode, batching, encode, the gRPC machinery) on one
core; with CPU models the runtime's threads use others, but the Python front end tops out at about one
core. N workers multiply the front end: each is a whole ``Server`` (its own event loop, repository,
batchers and runtime instances), and the kernel spreads new connections across them (SO_REUSEPORT hashes
each connection to one listening socket). Not for GPU models: each worker would load its own copy of the
model and create its own CUDA context on the same device (see docs/pages/scaling.md).

The parent (``Supervisor``) does no serving:

- **Port.** It reserves the shared port first with a bound, never-listening SO_REUSEPORT socket (port 0
  becomes a concrete free port every worker then binds; a port held by another program is a clear "cannot
  bind" error before any worker starts). The REST port is reserved and shared the same way (workers bind both
  with ``ServerConfig.reuse_port``). A Unix socket gRPC address cannot be shared: refused with exit 2.
- **Supervision.** Workers are ``multiprocessing`` *spawn* children (never fork: gRPC's threads do not survive
  fork). A worker that exits while the server runs is logged and restarted, after a backoff that doubles
  from 0.5 s to 30 s and resets once a worker has stayed up for a minute. A worker that fails at its first
  start with a configuration error (exit 2) stops the whole server with exit 2, rather than restarting a
  worker that can never start. SIGTERM/SIGINT: every worker gets SIGTERM and drains as a single server does
  (readiness off, in-flight requests finish within ``drain_timeout_s``); the parent exits 0 once all have.
  Workers die with the parent (Linux ``PR_SET_PDEATHSIG``), so a killed supervisor leaves no orphan.
- **Metrics** (one scrape shows the whole server): each worker serves its own ``/metrics`` on 127.0.0.1 at an
  ephemeral port; the parent serves the configured metrics port and, per scrape, reads every worker's page,
  merges it (``merge_families``) and answers in the format the scraper asked for. Why not prometheus_client's
  multiprocess mode: Surge's hot-path histograms are its own integer counters (``metrics.py``: 0.25 us an
  observation, not prometheus_client's 3 us), which multiprocess mode cannot see, and multiprocess mode drops
  the process collectors and needs a shared mmap folder. Merging rules: counters and histograms are summed
  (bucket by bucket); gauges that are amounts (queue depth, in-flight requests, memory, open fds) are summed;
  ``process_start_time_seconds`` is the earliest; every other gauge (model state, load duration, drift, GPU,
  info) is the maximum over workers, so ``surge_model_state{state="LOADING"}`` is 1 while any worker loads.
  When a worker dies, its counters as last scraped are kept ("retired") and added to every later scrape, so
  the whole-server counters never go down (what it counted after its last scrape is lost, as on a restart;
  kept per exposition format, as Prometheus always scrapes in the same one). The pages are merged line by
  line (``parse_page``), not through prometheus_client's parser and encoder: a scrape of two workers serving the
  test repository (6,600 lines each) took 41 ms end to end that way, 1.4 s through prometheus_client.
  The parent adds ``surge_workers`` (ready workers) and ``surge_worker_restarts_total``.
- **ModelStatistics and repository calls** (``WorkerPeers``): each worker also listens on a private Unix socket
  in the supervisor's 0700 state folder. A ModelStatistics call to any worker asks every other live worker for
  its own counters (marked with the ``x-surge-worker-local`` metadata, so they do not fan out again) and
  answers the sum: whole-server cumulative statistics, of the workers running at that moment (a worker's
  counters die with it, as a single server's do on restart). RepositoryModelLoad/Unload are applied to every
  live worker the same way, so explicit model control acts on the whole server (a worker restarted later loads
  what ``--load-model`` names, not what was loaded through the API since: use ``none`` or ``poll`` control
  with workers when that matters). ``surge.v1.Admin`` route changes are sent on the same way, and a
  ``surge.v1.Feedback`` report whose request id this worker never indexed is asked of the siblings
  (``surge_servicer.py``).
- **Auth across workers**: a sibling call carries the caller's own ``authorization`` metadata (``call_siblings``)
  and the sibling checks it like any call: the private socket is served by the same gRPC server, whose auth
  interceptor sees every port alike, so it grants nothing by itself (it is also only reachable by this user:
  0700 folder). Trusting the socket instead would need the interceptor to tell ports apart per call.
- **GPU models** refuse to start under ``--workers`` (a model with ``instance_group.kind = "gpu"`` or a TensorRT
  engine): N workers would mean N copies of the weights and N CUDA contexts time-slicing one device. One process
  owns a GPU; ``--workers-share-gpu`` opts in anyway (e.g. a small model whose front end is the bottleneck).
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
from .peers import WorkerPeers

__all__ = ["Supervisor", "gpu_models", "reserve_port", "supervise"]

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


def _worker_main(index: int, config: Any, state_dir: str, ready: Connection, log_level: str, loop: str) -> None:
    """Entry point of a spawned worker: serve until SIGTERM; exit 2 when it cannot start."""
    _set_parent_death_signal()
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s %(levelname)-7s %(name)s [worker {index}]: %(message)s")
    from .cli import _run

    try:
        _run(_serve_worker(index, config, Path(state_dir), ready), loop)
    except (ConfigError, OSError) as exc:
        logging.getLogger("surge.server").error("cannot start: %s", exc)
        sys.exit(EXIT_CANNOT_START)


async def _serve_worker(index: int, config: Any, state_dir: Path, ready: Connection) -> None:
    from .app import Server

    peers = WorkerPeers(state_dir, index)
    peers.socket_path.unlink(missing_ok=True)  # left behind by a crashed predecessor
    server = Server(config, peers=peers)
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


def gpu_models(repository: Path) -> tuple[list[str], list[str]]:
    """(models that run on a GPU, models that may: ``kind = "auto"``) in the repository, from their configs.

    A model whose config does not parse is left out: the workers report it as they load.
    """
    from .config import load_model_config

    gpu: list[str] = []
    auto: list[str] = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()) if repository.is_dir() else ():
        try:
            config = load_model_config(model_dir)
        except (ConfigError, OSError):
            continue
        if config.instance_group.kind == "gpu" or config.backend == "tensorrt":
            gpu.append(model_dir.name)
        elif config.instance_group.kind == "auto":
            auto.append(model_dir.name)
    return gpu, auto


@dataclass
class _Slot:
    index: int
    process: Any = None
    state: dict[str, Any] | None = None
    ever_ready: bool = False
    last_page: dict[bool, dict[str, Family]] = field(default_factory=dict)
    """The last page scraped from it, per format (OpenMetrics or not: their counter family names differ)."""


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

    def __init__(self, config: Any, workers: int, *, log_level: str = "info", loop: str = "auto", share_gpu: bool = False) -> None:
        if workers < 2:
            raise ConfigError(f"--workers: a supervisor runs 2 or more workers, got {workers}")
        if config.grpc_address or config.http_address:
            flag, address = ("--grpc-address", config.grpc_address) if config.grpc_address else ("--http-address", config.http_address)
            raise ConfigError(
                f"--workers {workers} with {flag} {address}: workers share a TCP port (SO_REUSEPORT); a Unix socket "
                "has one listener. Use --workers 1 with a Unix socket, or a TCP port (--grpc-port) with workers"
            )
        gpu, auto = gpu_models(config.model_repository)
        if gpu and not share_gpu:
            raise ConfigError(
                f"--workers {workers}: model(s) {', '.join(gpu)} run on a GPU, and every worker would load its own copy with its "
                "own CUDA context on the same device (memory x N, kernels time-sliced). Serve them with one process "
                "(--workers 1: its instances and CUDA streams already overlap), or opt in with --workers-share-gpu"
            )
        if auto:
            log.warning("--workers %d: model(s) %s have instance_group kind 'auto': where a GPU is present every worker "
                        "puts its own copy on it", workers, ", ".join(auto))  # fmt: skip
        self.config = config
        self.workers = workers
        self._log_level = log_level
        self._loop_name = loop
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(workers)]
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
            log.info("starting %d workers on %s%s (SO_REUSEPORT); worker state in %s", self.workers, self.address,
                     f" and REST {config.host}:{http_port}" if reserved_http is not None else "", state_dir)
            tasks = [asyncio.create_task(self._guarded_keep(slot, worker_config, state_dir)) for slot in self._slots]
            ready = asyncio.create_task(self._all_ready.wait())
            stop = asyncio.create_task(self._stopping.wait())
            await asyncio.wait((ready, stop), return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not self._stopping.is_set():
                log.info("Surge READY: %d workers on %s", self.workers, self.address)
                if address_file is not None:
                    write_atomic(address_file, self.address)
            await stop
            log.info("stopping: SIGTERM to every worker; each drains (up to %.0f s)", config.drain_timeout_s)
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
        for slot in self._slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.terminate()
        deadline = time.monotonic() + self.config.drain_timeout_s + 15.0
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            while process.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if process.is_alive():
                log.error("worker %d (pid %d) did not stop in time: killed", slot.index, process.pid)
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _check_all_ready(self) -> None:
        if all(slot.state is not None for slot in self._slots):
            self._all_ready.set()

    async def _guarded_keep(self, slot: _Slot, config: Any, state_dir: Path) -> None:
        """``_keep``, but a supervisor bug (say, a worker that cannot be spawned) stops the server, never hangs it."""
        try:
            await self._keep(slot, config, state_dir)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker %d: the supervisor failed to run it: stopping the server", slot.index)
            self._exit_code = 1
            self._stopping.set()

    async def _keep(self, slot: _Slot, config: Any, state_dir: Path) -> None:
        """Run one worker, restarting it with backoff whenever it exits while the server runs."""
        backoff_s = BACKOFF_FIRST_S
        while not self._stopping.is_set():
            receiver, sender = self._context.Pipe(duplex=False)
            process = self._context.Process(
                target=_worker_main, args=(slot.index, config, str(state_dir), sender, self._log_level, self._loop_name),
                name=f"surge-worker-{slot.index}", daemon=False,
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
                log.info("worker %d ready (pid %d)", slot.index, process.pid)
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
                log.error("worker %d cannot start (%s): stopping the server", slot.index, how)
                self._exit_code = EXIT_CANNOT_START
                self._stopping.set()
                return
            if time.monotonic() - started >= BACKOFF_RESET_S:
                backoff_s = BACKOFF_FIRST_S
            self._restarts += 1
            log.warning("worker %d (pid %d) died (%s); restarting in %.1f s", slot.index, process.pid, how, backoff_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff_s)
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _scrape(self, accept: str, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
        """The whole server's /metrics: every ready worker's page (in the format asked for), merged, plus the
        supervisor's own families."""
        openmetrics, content_type = negotiate(accept)
        slots = [s for s in self._slots if s.state is not None and s.state.get("metrics")]
        texts = await asyncio.gather(*(
            fetch_page(s.state["metrics"], accept=accept, timeout_s=SCRAPE_TIMEOUT_S)  # type: ignore[index]
            for s in slots
        ), return_exceptions=True)  # fmt: skip
        ready, restarts, retired = sum(s.state is not None for s in self._slots), self._restarts, self._retired.get(openmetrics)

        def merge() -> tuple[list[tuple[_Slot, dict[str, Family]]], str]:
            pages = []
            for slot, text in zip(slots, texts):
                if isinstance(text, BaseException):
                    log.warning("metrics: worker %d did not answer (%s): left out of this scrape", slot.index, text)
                    continue
                pages.append((slot, parse_page(text)))
            merged = merge_families([page for _, page in pages], retired)
            families = [*_supervisor_families(ready, restarts, openmetrics=openmetrics), *merged.values()]
            return pages, format_page(families, openmetrics=openmetrics)

        pages, text = await asyncio.get_running_loop().run_in_executor(None, merge)
        for slot, page in pages:  # on the loop: read by _keep when a worker dies
            slot.last_page[openmetrics] = page
        return encode(text, content_type, accept_encoding)


async def supervise(config: Any, workers: int, *, log_level: str, loop: str, address_file: Path | None = None, share_gpu: bool = False) -> int:
    """``surge serve --workers N``: run the supervisor until SIGTERM/SIGINT; returns the exit code."""
    supervisor = Supervisor(config, workers, log_level=log_level, loop=loop, share_gpu=share_gpu)
    event_loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(sig, supervisor.request_stop)
    return await supervisor.run(address_file=address_file)
