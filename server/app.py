"""Build the server from its config, start it, stop it: the only place that wires the rooms together.

``Server.start()`` binds the gRPC port (so liveness answers at once), the metrics port and the REST port,
loads the repository, then turns readiness and gRPC health to SERVING, and returns the bound gRPC address (the
metrics endpoint's is ``Server.metrics_address``, REST's ``Server.http_address``). ``stop()`` (also on SIGTERM/SIGINT
through ``serve``) turns readiness off first, stops accepting, lets in-flight RPCs finish within the grace
period, then drains and frees every model; a second signal exits at once (code 128 + signal).

Binding: ``host:grpc_port`` or a Unix socket (``grpc_address``), plaintext or TLS/mutual TLS; access
control is ``security.py``'s one interceptor, installed only when tokens are configured or admin is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from surge.protos import grpc_service_pb2 as pb

from .edge.codec import DEFAULT_LIMITS, Limits
from .errors import ConfigError
from .files import write_atomic
from .dataplane import DataPlane
from .edge.grpc_servicer import InferenceServicer, add_to_server, status_of
from .observability.edge import grpc_server_ids
from .observability.metrics import ServerMetrics, render
from .edge.metrics_http import MetricsEndpoint, read_scrape_token
from .observability.tracing import TraceOptions
from .observability.tracing import from_options as tracing_from_options
from .execution.model import abandoned_threads
from .repository import ModelRepository
from .edge.rest import RestEndpoint
from .traffic.rollout import RolloutCollector, Rollouts
from .traffic.routing_metrics import TrafficCollector
from .edge.reflection import enable_reflection
from .edge.security import SecurityPolicy, TokenAuth, auth_interceptor
from .edge.shared_memory import SharedMemoryRegistry
from .edge.surge_servicer import add_surge_services
from .traffic.traffic import Traffic
from .peers import WorkerPeers
from .engine.remote import EngineLinks, RemoteRepository

__all__ = ["MAX_MESSAGE_BYTES", "Server", "ServerConfig", "serve"]

log = logging.getLogger("surge.server")

#: grpc.aio defaults to 4 MiB; Triton and its clients use INT32_MAX.
MAX_MESSAGE_BYTES = 2**31 - 1
#: On stop: how long calls already sent may take to reach the server before gRPC stops accepting (they are held,
#: not answered, meanwhile), and how long gRPC gets to write its GOAWAY frames before the held answers go out.
SHUTDOWN_SETTLE_S = 0.25
GOAWAY_SENT_S = 0.05
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SURGE_SERVICE_NAMES = ("surge.v1.Admin", "surge.v1.Feedback")
try:
    from importlib.metadata import version as _dist_version

    SERVER_VERSION = _dist_version("surge")
except Exception:  # pragma: no cover - running from a source tree without metadata
    SERVER_VERSION = "0+unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """How one Surge process serves (the ``surge serve`` flags)."""

    model_repository: Path
    """Folder of models: ``<model>/config.toml`` and numbered version folders."""
    host: str = "127.0.0.1"
    """Interface to bind; 127.0.0.1 is the safe sidecar default, 0.0.0.0 for containers."""
    grpc_port: int = 8001
    """gRPC port (Triton's default); 0 picks a free port (the bound one is returned by ``start``)."""
    model_control_mode: str = "none"
    """"none" (load all at start), "explicit" (only through the API) or "poll" (watch the folder)."""
    load_models: tuple[str, ...] = ()
    """Models to load at start in explicit mode."""
    poll_interval_s: float = 15.0
    """Seconds between repository scans in poll mode."""
    strict_readiness: bool = True
    """Ready only when every model the control mode wants is serving (Triton's --strict-readiness)."""
    drain_timeout_s: float = 30.0
    """On stop or unload: how long in-flight requests may take to finish."""
    metrics_port: int = 8002
    """Prometheus ``/metrics`` HTTP port (Triton's default); 0 picks a free port (``Server.metrics_address``);
    -1 turns metrics off (no endpoint, no histograms on the hot path; ModelStatistics still works)."""
    metrics_tls: bool = False
    """Serve ``/metrics`` over the same TLS as gRPC and REST (``tls_cert_file``; with ``tls_client_ca_file``, scrapers
    need a client certificate: Prometheus' ``tls_config``)."""
    metrics_token_file: Path | None = None
    """A file holding one bearer token that every scrape must send (``Authorization: Bearer ...``: Prometheus'
    ``authorization.credentials_file``); others get 401. None: scrapes need no token."""
    grpc_address: str = ""
    """``unix:///path.sock``: serve gRPC on a Unix socket (sidecars) instead of ``host:grpc_port``."""
    http_address: str = ""
    """``unix:///path.sock``: serve REST on a Unix socket instead of ``host:http_port`` (with the same mode as gRPC's)."""
    socket_mode: int = 0o600
    """File mode of the Unix sockets (owner only by default)."""
    tls_cert_file: Path | None = None
    """PEM server certificate (chain): gRPC over TLS. Needs ``tls_key_file``."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle: clients must present a certificate it signed (mutual TLS). Needs the server certificate."""
    auth_tokens_file: Path | None = None
    """Bearer tokens with scopes (``security.parse_tokens``); ``$SURGE_AUTH_TOKENS`` adds more. None and unset: no auth."""
    admin_enabled: bool = True
    """False: admin RPCs (repository load/unload, surge.v1.Admin) answer UNIMPLEMENTED."""
    limits: Limits = DEFAULT_LIMITS
    """Request limits (sizes, elements, rows, streams per connection)."""
    http_port: int | None = None
    """REST v2 (HTTP/JSON) port (Triton's default); 0 picks a free port (``Server.http_address``); -1 turns REST off.
    None (the default): 8000, except with a Unix gRPC socket (``grpc_address``): then REST is off unless asked for
    (``http_address`` or a port), so a sidecar never opens an unauthenticated TCP port beside its owner-only socket."""
    switch_interval_s: float = 0.0
    """Python's GIL switch interval for this process (``sys.setswitchinterval``); 0 leaves Python's 5 ms. A runtime
    thread that lets go of the GIL (every torch call does) waits up to this long to get it back while the event
    loop runs Python: smaller values shorten those waits under load, at the cost of more thread switches."""
    state_dir: Path | None = None
    """Where admin route changes and rollouts are kept across restarts (``routes.json``, ``rollouts.json``,
    ``rollout-audit.jsonl``); None: the model repository's ``.surge/`` folder (the repository scan skips dot folders)."""
    trace: TraceOptions = TraceOptions()
    """OpenTelemetry tracing (``observability/tracing.py``): exporter, endpoint, ratio; unset fields come from ``OTEL_*``."""
    reuse_port: bool = False
    """Bind the gRPC and REST ports with SO_REUSEPORT so several worker processes share them (set by ``--workers``;
    see ``workers.py``). Off otherwise, so a port already taken is a clear error rather than a silent share."""

    def __post_init__(self) -> None:
        if self.http_port is None:
            object.__setattr__(self, "http_port", -1 if self.grpc_address or self.http_address else 8000)
        assert self.http_port is not None
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics port must be -1 (off), 0 (any free port) or 1..65535, got {self.metrics_port}")
        if not -1 <= self.http_port <= 65535:
            raise ConfigError(f"HTTP port must be -1 (off), 0 (any free port) or 1..65535, got {self.http_port}")
        for flag, address in (("--grpc-address", self.grpc_address), ("--http-address", self.http_address)):
            if address and not (address.startswith("unix:") and len(address) > len("unix:")):
                raise ConfigError(f"{flag} must be unix:///absolute/path.sock (or unix:relative.sock), got {address!r}")
        if self.http_address and self.http_address == self.grpc_address:
            raise ConfigError(f"--http-address and --grpc-address must be different sockets, both are {self.http_address!r}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        if self.metrics_tls and self.tls_cert_file is None:
            raise ConfigError("--metrics-tls serves /metrics with the server's certificate: give --tls-cert and --tls-key")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("mutual TLS (--tls-client-ca) needs the server's own certificate too (--tls-cert, --tls-key)")
        if not 0 < self.poll_interval_s <= 86400:  # 0 would rescan the repository in a busy loop
            raise ConfigError(f"--repository-poll-s must be above 0 and at most 86400 (a day), got {self.poll_interval_s:g}")
        if not 0 <= self.drain_timeout_s <= 3600:
            raise ConfigError(f"--drain-timeout-s must be from 0 to 3600 (an hour), got {self.drain_timeout_s:g}")
        if not 0 <= self.switch_interval_s <= 0.1:
            raise ConfigError(f"--switch-interval-ms must be between 0 (Python's default) and 100 ms, got {self.switch_interval_s * 1e3:g} ms")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS (or mutual TLS) credentials from the configured files; None for plaintext. Raises ConfigError."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None

        def read(path: Path, what: str) -> bytes:
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None

        pair = (read(self.tls_key_file, "TLS key"), read(self.tls_cert_file, "TLS certificate"))
        ca = read(self.tls_client_ca_file, "client CA bundle") if self.tls_client_ca_file is not None else None
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The same TLS (or mutual TLS) as ``server_credentials``, for the REST listener; None for plaintext. Raises ConfigError."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # gRPC's (BoringSSL's) floor too
        try:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            if self.tls_client_ca_file is not None:
                context.load_verify_locations(cafile=self.tls_client_ca_file)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the TLS files {self.tls_cert_file}, {self.tls_key_file}{f', {self.tls_client_ca_file}' if self.tls_client_ca_file else ''} "
                              f"for REST: {getattr(exc, 'strerror', None) or exc}") from None
        return context

    def metrics_protection(self) -> tuple[ssl.SSLContext | None, TokenAuth | None]:
        """The metrics endpoint's TLS context and scrape token (each None when not configured). Raises ConfigError."""
        token = read_scrape_token(self.metrics_token_file) if self.metrics_token_file is not None else None
        return (self.ssl_context() if self.metrics_tls else None), token

    def unix_socket_path(self, address: str | None = None) -> Path | None:
        """The socket file of a ``unix:`` address (default: ``grpc_address``; None for TCP)."""
        address = self.grpc_address if address is None else address
        if not address:
            return None
        rest = address[len("unix:"):]
        return Path(rest[2:] if rest.startswith("//") else rest)

    @property
    def rest_enabled(self) -> bool:
        """Whether REST listens (on ``http_address``'s socket, or ``host:http_port``)."""
        return bool(self.http_address) or (self.http_port or 0) >= 0


@contextlib.contextmanager
def _unix_socket(path: Path | None, mode: int) -> Iterator[None]:
    """Around the bind of a listener: for a Unix socket ``path``, remove a stale socket file of an earlier run, create
    the new one owner-only (umask 0177: never wider, not even briefly), then give it ``mode``. Nothing for TCP (None)."""
    if path is None:
        yield
        return
    if path.is_socket():  # a stale socket would make the bind fail
        path.unlink()
    umask = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(umask)
    os.chmod(path, mode)


class _Health(HealthServicer):  # type: ignore[misc]  # grpcio-health-checking has no type information
    """grpc's health service, except that on shutdown a Watch stream ends once it has sent NOT_SERVING, so an
    open watch (a load balancer's) does not hold the drain until its deadline; and with List, which
    grpcio-health-checking's asyncio servicer (1.85) leaves unimplemented."""

    def __init__(self) -> None:
        super().__init__()
        self._stopping = False

    async def enter_graceful_shutdown(self) -> None:
        self._stopping = True
        await super().enter_graceful_shutdown()

    async def List(self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]) -> health_pb2.HealthListResponse:
        """Every name Check answers for ("" for the whole server, and each service set), with its status."""
        response = health_pb2.HealthListResponse()
        for service, status in list(self._server_status.items()):
            response.statuses[service].status = status
        return response

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        told = asyncio.Event()
        outer = self

        class _Context:
            def __getattr__(self, name: str) -> object:
                return getattr(context, name)

            async def write(self, message: health_pb2.HealthCheckResponse) -> None:
                await context.write(message)
                if outer._stopping and message.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    told.set()

        watch = asyncio.ensure_future(super().Watch(request, _Context()))
        ended = asyncio.ensure_future(told.wait())
        try:
            await asyncio.wait((watch, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            ended.cancel()
        if watch.done() and not watch.cancelled() and watch.exception() is not None:
            raise watch.exception()


class Server:
    """One Surge server: gRPC inference service, health, reflection, and the model repository."""

    def __init__(self, config: ServerConfig, *, peers: WorkerPeers | None = None, engines: EngineLinks | None = None) -> None:
        """``peers``: set in a ``--workers`` front end (admin routes and feedback span all front ends); ``engines``: the
        engine processes that own the models (a front end; None: the models run in this process)."""
        self.config = config
        self._peers = peers
        self.repository: ModelRepository
        if engines is not None:  # a front end: lookups from the engines' snapshots, requests through shared memory
            self.repository = RemoteRepository(
                config.model_repository, engines.sockets, engines.secret, peers.index if peers is not None else 0,
                control_mode=config.model_control_mode, arena_bytes=engines.arena_bytes,
            )
        else:
            self.repository = ModelRepository(
                config.model_repository,
                control_mode=config.model_control_mode,
                load_models=config.load_models,
                poll_interval_s=config.poll_interval_s,
                drain_timeout_s=config.drain_timeout_s,
                metrics=config.metrics_port >= 0,
            )
        state_dir = config.state_dir if config.state_dir is not None else config.model_repository / ".surge"
        self.traffic = Traffic(self.repository, state_dir)
        """Version routing, shadows and feedback (``traffic.py``); the repository tells it when versions change."""
        self.repository.on_serving_change = self.traffic.serving_changed
        self.metrics: ServerMetrics | None = None
        traffic_collector = TrafficCollector(self.traffic)
        if config.metrics_port >= 0:
            # a front end's page has no model families: the engines' pages have them, whole
            versions = (lambda: []) if engines is not None else (lambda: [v.sample() for v in self.repository.all_versions()])
            self.metrics = ServerMetrics(versions, server_version=SERVER_VERSION)
            self.metrics.registry.register(traffic_collector)
        owner = peers is None or peers.index == 0  # under --workers the first worker runs the rollout controller
        self.rollouts = Rollouts(
            self.traffic, self._rollout_page(traffic_collector) if self.metrics is not None else None, state_dir if owner else None,
            broadcast=peers.broadcast_routes if peers is not None else None,
        )
        """Progressive rollouts (``traffic/rollout.py``); under ``--workers`` only the first worker's controller decides."""
        self._rollouts_owner = owner
        if self.metrics is not None:
            self.metrics.registry.register(RolloutCollector(self.rollouts))
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.metrics_address = ""
        """The bound metrics ``host:port`` once started ("" when metrics are off)."""
        self._rest: RestEndpoint | None = None
        self.http_address = ""
        """The bound REST ``host:port`` once started ("" when REST is off)."""
        self._ready = False
        self._grpc: grpc.aio.Server | None = None
        self._servicer: InferenceServicer | None = None
        self.dataplane: DataPlane | None = None
        """The protocol-neutral core both edges call (``dataplane.py``); built by ``start``."""
        self._health = _Health()
        self.address = ""
        self.tracing = tracing_from_options(config.trace)
        """Spans per request stage, when an exporter is configured (else off: one attribute check per request)."""
        self.security = SecurityPolicy(auth=TokenAuth.load(config.auth_tokens_file), admin_enabled=config.admin_enabled)

    def _rollout_page(self, traffic_collector: TrafficCollector) -> Any:
        async def page() -> list[str]:
            """This process's model families as text (rendered in a thread), and the sibling workers' pages."""
            assert self.metrics is not None
            body, _ = await asyncio.to_thread(render, self.metrics.snapshot(), (traffic_collector,))
            pages = [body.decode("utf-8"), *(await self._peers.sibling_pages() if self._peers is not None else ())]
            if isinstance(self.repository, RemoteRepository):  # the model families are on the engines' pages
                pages += await self.repository.engine_pages()
            return pages

        return page

    def is_ready(self) -> bool:
        """Readiness as ServerReady and gRPC health report it."""
        return self._ready and (self.repository.ready() or not self.config.strict_readiness)

    async def start(self) -> str:
        """Bind, load the repository, become ready; returns the bound ``host:port``.

        Raises ConfigError for a bad repository or flags; a model that fails to load does not raise.
        """
        if self.config.switch_interval_s:
            sys.setswitchinterval(self.config.switch_interval_s)  # process-wide: each worker process sets its own
        limits = self.config.limits
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", limits.max_request_bytes),
            ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
            # enforce the stream cap as HTTP/2 counts streams, as advertised in the first SETTINGS frame: gRPC's
            # default also counts streams not yet freed after their call ended, so a client that honours the cap
            # (gRPC clients queue beyond it) saw its next calls refused (REFUSED_STREAM -> UNAVAILABLE)
            ("grpc.http.overload_protection", 0),
            # gRPC's own queue of calls not yet taken by the loop: its default soft limit (1000) is below one
            # connection's stream cap, so a stalled loop saw calls CANCELLED rather than refused per stream
            ("grpc.server.max_pending_requests", limits.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", limits.max_pending_calls),
            ("grpc.so_reuseport", int(self.config.reuse_port)),
        ]
        interceptors = [auth_interceptor(self.security, status_of)] if self.security.active else []
        ids_before = grpc_server_ids() if self.metrics is not None else set()
        server = grpc.aio.server(options=options, interceptors=interceptors)
        if self.metrics is not None:  # grpc core's own call counters (observability/edge.py), and the loop-lag probe
            self.metrics.edge.watch_grpc_server(ids_before)
            self.metrics.edge.start_probe()
        plane = DataPlane(
            self.repository, server_name="surge", server_version=SERVER_VERSION, is_ready=self.is_ready, metrics=self.metrics, limits=limits,
            traffic=self.traffic, peers=self._peers,
            regions=SharedMemoryRegistry(
                scoped=self.security.auth is not None, max_regions=limits.max_shared_memory_regions, max_bytes=limits.max_shared_memory_bytes,
            ),
        )
        plane.tracing = self.tracing
        self.dataplane = plane
        servicer = InferenceServicer(plane)
        add_to_server(servicer, server)
        add_surge_services(self.traffic, server, self._peers, rollouts=self.rollouts)  # surge.v1.Admin and surge.v1.Feedback (admin scope: server/edge/security.py)
        self._servicer = servicer
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection((SERVICE_NAME, *SURGE_SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
        target = f"[{self.config.host}]:{self.config.grpc_port}" if ":" in self.config.host else f"{self.config.host}:{self.config.grpc_port}"
        credentials = self.config.server_credentials()
        socket = self.config.unix_socket_path()
        if socket is not None:
            target = self.config.grpc_address
        with _unix_socket(socket, self.config.socket_mode):
            try:  # grpcio returns 0 or raises RuntimeError, by version
                port = server.add_secure_port(target, credentials) if credentials is not None else server.add_insecure_port(target)
            except RuntimeError:
                port = 0
            if port == 0:
                raise OSError(f"cannot bind gRPC to {target} (in use, or not an address of this machine)")
            if self._peers is not None and server.add_insecure_port(self._peers.private_target) == 0:
                raise OSError(f"cannot bind the worker's private socket {self._peers.private_target}")
            self._grpc = server
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            await server.start()
        if socket is not None:
            self.address = target
        else:
            self.address = f"{self.config.host}:{port}"
        log.info("gRPC listening on %s (live; loading models from %s, control mode %s)", self.address, self.config.model_repository, self.config.model_control_mode)
        try:
            if self.metrics is not None:
                if self._peers is not None:  # a worker's own page: for the supervisor only (which serves the protected one)
                    endpoint = MetricsEndpoint(self.metrics, "127.0.0.1", self.config.metrics_port)
                else:
                    context, token = self.config.metrics_protection()
                    endpoint = MetricsEndpoint(self.metrics, self.config.host, self.config.metrics_port, ssl_context=context, token=token)
                try:
                    self.metrics_address = await endpoint.start()
                except OSError as exc:
                    raise OSError(f"cannot bind the metrics endpoint to {self.config.host}:{self.config.metrics_port}: {exc.strerror or exc}") from None
                self._metrics_endpoint = endpoint
                log.info("metrics on %s://%s/metrics%s", "https" if endpoint.tls else "http", self.metrics_address, " (scrape token required)" if endpoint.token_required else "")
            if self.config.rest_enabled:  # REST v2 over the same data plane (rest.py), the same policy, limits and TLS as gRPC
                rest_socket = self.config.unix_socket_path(self.config.http_address)
                rest = RestEndpoint(
                    plane, self.config.host, self.config.http_port or 0, max_request_bytes=limits.max_request_bytes,
                    drain_timeout_s=self.config.drain_timeout_s,
                    authorize=self.security.authorize if self.security.active else None, reuse_port=self.config.reuse_port,
                    ssl_context=self.config.ssl_context(), unix_path=rest_socket,
                )
                where = self.config.http_address or f"{self.config.host}:{self.config.http_port}"
                try:
                    with _unix_socket(rest_socket, self.config.socket_mode):
                        self.http_address = await rest.start()
                except OSError as exc:
                    raise OSError(f"cannot bind REST to {where}: {exc.strerror or exc}") from None
                self._rest = rest
                log.info("REST v2 on %s://%s/v2", "https" if self.config.tls_cert_file is not None else "http", self.http_address)
            elif self.config.grpc_address:
                log.info("REST is off (gRPC is on a Unix socket; --http-address unix:///PATH.sock serves REST on a socket too)")
            await self.repository.start()
            if self._rollouts_owner:
                self.rollouts.start()
        except BaseException:
            await self.stop(0)
            raise
        self._ready = True
        ready = self.is_ready()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING)
        for row in self.repository.index():
            log.info("  %-24s version %-4s %s%s", row.name, row.version or "-", row.state, f" ({row.reason})" if row.reason else "")
        log.info("Surge %s %s on %s", SERVER_VERSION, "READY" if ready else "NOT READY (see the model states above)", self.address)
        return self.address

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    async def wait_for_termination(self) -> None:
        """Return when the gRPC server has stopped."""
        if self._grpc is not None:
            await self._grpc.wait_for_termination()

    async def stop(self, grace_s: float | None = None) -> None:
        """Readiness off, stop accepting, finish in-flight RPCs within ``grace_s``, then free every model."""
        self._ready = False
        await self._health.enter_graceful_shutdown()
        if self._servicer is not None:
            self._servicer.begin_shutdown()
        rest, self._rest = self._rest, None
        grace = self.config.drain_timeout_s if grace_s is None else grace_s
        rest_closed = asyncio.ensure_future(rest.aclose(grace)) if rest is not None else None  # drains beside gRPC
        if self._grpc is not None:
            # GOAWAY before any answer: calls in transit reach the servicer and are held with every answer (see
            # begin_shutdown), so no client sends a new call while gRPC stops accepting (it would cancel that call)
            await asyncio.sleep(SHUTDOWN_SETTLE_S)
            stopped = asyncio.ensure_future(self._grpc.stop(grace))  # GOAWAY and stop listening at once, then drain
            await asyncio.sleep(GOAWAY_SENT_S)
        if self._servicer is not None:
            self._servicer.release_answers()
        if self._grpc is not None:
            await stopped
        if rest_closed is not None:
            await rest_closed
        await self.rollouts.aclose()
        await self.traffic.aclose()  # shadows first: their queued requests would only meet unloading versions
        await self.repository.aclose()
        if self._metrics_endpoint is not None:  # last: a scrape during the drain still sees it
            await self._metrics_endpoint.aclose()
            self._metrics_endpoint = None
        if self.metrics is not None:
            await self.metrics.edge.stop_probe()
        await asyncio.to_thread(self.tracing.shutdown)  # export the spans still buffered


async def serve(config: ServerConfig, *, address_file: Path | None = None) -> None:
    """Run a server until SIGTERM or SIGINT, then stop it gracefully.

    ``address_file``: once ready, the bound ``host:port`` is written there (atomically), for scripts and tests.
    """
    server = Server(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stopping.is_set():  # a second signal: the operator does not want to wait for the drain
            log.warning("second %s while draining: exiting at once (code %d)", sig.name, 128 + sig)
            sys.stderr.flush()
            os._exit(128 + sig)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    address = await server.start()
    if address_file is not None:
        write_atomic(address_file, address)
    await stopping.wait()
    log.info("stopping: readiness off, draining in-flight requests (up to %.0f s)", config.drain_timeout_s)
    await server.stop()
    versions = server.repository.all_versions()
    answered, failed = sum(v.stats.success.count for v in versions), sum(v.stats.fail.count for v in versions)
    log.info("stopped: %s answered, %d failed (model versions in service at the stop)", _plural(answered, "request"), failed)
    hung = abandoned_threads()
    if hung:  # a thread cannot be killed, and the interpreter would wait for it at exit
        log.warning("%d hung runtime thread(s) still running; exiting without waiting for them", hung)
        logging.shutdown()
        os._exit(0)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
