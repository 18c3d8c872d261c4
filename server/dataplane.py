"""The data plane: what a request means, apart from the wire it came on. Both edges call it; it knows neither.

The gRPC edge (``edge/grpc_servicer.py``) and the REST edge (``edge/rest.py``) each turn their wire format into
the plain arguments of a ``DataPlane`` method (model name, version, the request's tensors as views over the bytes
that carried them, parameters, deadline, the caller's metadata) and its plain answer back into their wire format.
Every lookup, routing decision, limit, shadow, statistic, trace and error message lives here, once:

- **Inference** (``infer``): look the version up (or route the request: weighted split by routing key, shadow,
  feedback), decode and check its tensors against the version's signature and the server's limits (``codec``),
  run them through the version's batcher (``ModelVersion.execute``), and hand the outputs to the edge's encoder
  while the request still holds the shared-memory regions it names; statistics, metrics and the trace span
  record the outcome by its status name (``errors.status_name``).
- **Health, metadata, configuration, statistics, repository, shared memory, trace settings**: plain values in
  and out (``ModelMetadata``, the version's ``ModelConfig``, ``IndexEntry`` rows, ``Region`` objects, setting lists);
  statistics are Triton's ``ModelStatisticsResponse`` (summed with sibling workers' under ``--workers``).
- **Errors**: raised as the protocol-neutral classes of ``errors.py``; ``error_message`` is the one text a client
  sees for any of them (an unexpected error: a request id, its traceback in the log).

Models are reached only through ``ModelRepository`` and ``ModelVersion``'s public methods (``get``,
``versions_of``, ``model_names``, ``index``, ``load``, ``unload``, ``check_mutable``, ``execute``, ``stats``,
``config``), so a front end that reaches its engine through proxies with the same methods needs no change here.
Nothing here imports grpc or aiohttp (a test checks it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from surge.protos import grpc_service_pb2 as pb

from . import errors
from .config import ModelConfig
from .edge import codec, shared_memory
from .edge.shared_memory import Region, SharedMemoryRegistry
from .edge.triton import config_overrides_from_json, statistics_message
from .execution.model import ModelVersion
from .execution.stats import Stamps, now_ns
from .observability.tracing import DISABLED, Tracing
from .repository import IndexEntry, ModelRepository, parse_version
from .traffic.routing import RouteEntry, stable_hash

if TYPE_CHECKING:
    from .observability.metrics import ServerMetrics
    from .peers import WorkerPeers
    from .traffic.feedback import FeedbackIndex
    from .traffic.shadow import ShadowJob, ShadowSender
    from .traffic.traffic import Traffic

__all__ = ["DEADLINE_SLACK_S", "EXTENSIONS", "ROUTING_KEY_METADATA", "DataPlane", "Encode", "Metadata", "ModelMetadata", "TensorMetadata", "error_message"]

log = logging.getLogger("surge.dataplane")

#: ServerMetadata.extensions: only what is really implemented (the shared-memory ones where the server offers them).
EXTENSIONS = ("classification", "model_repository", "model_configuration", "statistics", "parameters", "trace")
#: The metadata key that carries a routing key (the ``routing_key`` request parameter takes precedence).
ROUTING_KEY_METADATA = "x-surge-routing-key"
#: A cancellation this close to the request's deadline is counted as the deadline passing: the client's own
#: deadline fires first and its cancel reaches us before our copy of the deadline (ours starts after transit and
#: the wait for a handler, which a busy server makes long); a client's early cancel is rarely this close.
DEADLINE_SLACK_S = 0.1

Metadata = Callable[[], Iterable[tuple[str, Any]] | None]
"""The caller's metadata, read only when needed: gRPC's invocation metadata, or the HTTP headers (lower-case names).
It carries who calls (``authorization``: the owner of shared-memory regions), the routing key, the trace context."""

R = TypeVar("R")
Encode = Callable[[Any, Any, str, dict[str, np.ndarray], codec.DecodedRequest], Awaitable[R]]
"""An edge's encoder: ``(request, spec, version, outputs, decoded)`` -> the edge's answer. Runs before the request
lets go of its shared-memory regions (outputs written into them are written here) and counts as part of the request."""

_request_ids = itertools.count(1)


def error_message(exc: BaseException, request_id: str = "") -> str:
    """What a client is told about an error: its own text, or, for a runtime failure or anything unexpected, a
    request id to find the details in the log (never internals)."""
    if isinstance(exc, errors.InferenceServerError) and not isinstance(exc, errors.RuntimeFailure):
        return str(exc)
    rid = request_id or f"surge-{next(_request_ids)}"
    if isinstance(exc, errors.RuntimeFailure):
        log.error("request %s: %s", rid, exc)
        return f"{exc} (request id {rid}; the server log has the details)"
    log.error("request %s failed with an unexpected error", rid, exc_info=exc)
    return f"internal error (request id {rid}); the server log has the details"


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """A model's metadata (the protocol's ModelMetadataResponse): its ready versions and its signature."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class DataPlane:
    """The protocol-neutral serving core both edges call (module docstring)."""

    def __init__(
        self, repository: ModelRepository, *, server_name: str, server_version: str, is_ready: Callable[[], bool], metrics: ServerMetrics | None = None,
        limits: codec.Limits = codec.DEFAULT_LIMITS, traffic: Traffic | None = None, peers: WorkerPeers | None = None,
        regions: SharedMemoryRegistry | None = None,
    ) -> None:
        """``metrics``: where requests that reach no model version are counted (None: metrics off); ``limits``: request limits;
        ``traffic``: version routing, shadows and feedback (None: every request goes to the version it names or the latest);
        ``peers``: in a ``--workers`` worker, the siblings statistics and repository calls also go to;
        ``regions``: the registered shared memory (None: a registry of its own)."""
        self.repository = repository
        self.limits = limits
        self.traffic = traffic
        self.metrics = metrics
        self.stopping = False
        """Set when the server begins to shut down: inference requests are refused (UNAVAILABLE, retryable)."""
        self.tracing: Tracing = DISABLED
        """The server's tracing (``observability/tracing.py``); set by the server when it is configured."""
        self._peers = peers
        self._name = server_name
        self._version = server_version
        self._is_ready = is_ready
        self.regions = regions if regions is not None else SharedMemoryRegistry()
        self.extensions = EXTENSIONS + self.regions.extensions()

    # -- health and metadata ---------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._is_ready()

    def model_ready(self, name: str, version: str) -> bool:
        try:
            found = self.repository.get(name, version)
        except (errors.ModelNotFound, errors.VersionNotFound, errors.ModelNotReady):
            return False
        return found.state == "READY"  # not READY: e.g. its only instance hung and is being replaced

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        """The server's name, version and protocol extensions."""
        return self._name, self._version, self.extensions

    def model_metadata(self, name: str, version: str) -> ModelMetadata:
        config = self.repository.get(name, version).config
        batch = [-1] if config.max_batch_size else []
        return ModelMetadata(
            name=config.name,
            versions=[v.version_str for v in self.repository.versions_of(name) if v.state == "READY"],
            platform=config.platform,
            inputs=[TensorMetadata(t.name, t.datatype, batch + list(t.dims)) for t in config.inputs],
            outputs=[TensorMetadata(t.name, t.datatype, batch + list(t.dims)) for t in config.outputs],
        )

    def model_config(self, name: str, version: str) -> ModelConfig:
        return self.repository.get(name, version).config

    async def statistics(self, name: str, version: str, metadata: Metadata) -> pb.ModelStatisticsResponse:
        """Triton's statistics of one model (or every model: empty ``name``), one version (or all); under ``--workers``,
        the whole server's: a front end's repository copies in its engines' counters first."""
        if version:
            parse_version(version)
        if not name and version:
            raise errors.InvalidInput("ModelStatistics: a version needs a model name")
        names = [name] if name else self.repository.model_names()
        await self.repository.refresh_statistics()  # a front end copies in its engines' counters (the whole server's)
        response = pb.ModelStatisticsResponse()
        for model in names:
            versions = self.repository.versions_of(model)
            if version:
                versions = [v for v in versions if v.version_str == version]
                if not versions:
                    raise errors.VersionNotFound(f"model '{model}' has no loaded version {version}")
            response.model_stats.extend(statistics_message(model, versions))
        return response

    # -- repository ------------------------------------------------------------------------------

    def repository_index(self, ready_only: bool) -> list[IndexEntry]:
        return self.repository.index(ready_only=ready_only)

    async def load(self, name: str, parameters: Mapping[str, str | bytes | int | bool], metadata: Metadata) -> None:
        """Load (or reload) a model; the ``config`` parameter (ModelConfig JSON) overrides its config.toml."""
        self.repository.check_mutable("RepositoryModelLoad")
        overrides = None
        for key, value in parameters.items():
            if key.startswith("file:"):
                raise errors.Unsupported(f"loading model files sent in the request ('{key}') is not supported; put them in the repository")
            if key == "config":
                text = value if isinstance(value, str) else value.decode("utf-8", "replace") if isinstance(value, bytes) else ""
                if len(text) <= 1 << 16:
                    overrides = config_overrides_from_json(name, text)
                else:  # a large text is parsed off the event loop
                    overrides = await asyncio.to_thread(config_overrides_from_json, name, text)
        await self.repository.load(name, overrides)  # a front end's repository loads it in its engine: the whole server

    async def unload(self, name: str, metadata: Metadata) -> None:
        self.repository.check_mutable("RepositoryModelUnload")
        await self.repository.unload(name)

    # -- shared memory (edge/shared_memory.py) ---------------------------------------------------

    def _owner(self, metadata: Metadata) -> str:
        return shared_memory.owner_of(metadata(), self.regions.scoped)

    def shared_memory_status(self, kind: str, name: str, metadata: Metadata) -> list[Region]:
        """The caller's regions of ``kind`` ("system" or "cuda"): the one named, or all (empty ``name``)."""
        return self.regions.status(self._owner(metadata), name, kind)

    async def register_system_shared_memory(self, name: str, key: str, offset: int, byte_size: int, metadata: Metadata) -> None:
        owner = self._owner(metadata)
        self.regions.register_system(owner, name, key, offset, byte_size)
        request = pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=byte_size)
        await self._share("SystemSharedMemoryRegister", request, metadata, lambda: self.regions.unregister(owner, name, "system"))

    async def register_cuda_shared_memory(self, name: str, raw_handle: bytes, device_id: int, byte_size: int, metadata: Metadata) -> None:
        owner = self._owner(metadata)
        self.regions.register_cuda(owner, name, raw_handle, device_id, byte_size)
        request = pb.CudaSharedMemoryRegisterRequest(name=name, raw_handle=raw_handle, device_id=device_id, byte_size=byte_size)
        await self._share("CudaSharedMemoryRegister", request, metadata, lambda: self.regions.unregister(owner, name, "cuda"))

    async def unregister_shared_memory(self, kind: str, name: str, metadata: Metadata) -> None:
        """Forget the caller's region ``name`` of ``kind`` (empty ``name``: all of them)."""
        self.regions.unregister(self._owner(metadata), name, kind)
        request: Any = (pb.SystemSharedMemoryUnregisterRequest if kind == "system" else pb.CudaSharedMemoryUnregisterRequest)(name=name)
        try:
            await self._share(f"{'System' if kind == 'system' else 'Cuda'}SharedMemoryUnregister", request, metadata, None)
        except errors.Relayed as exc:  # freed here; a sibling that cannot (e.g. restarted since, without it) is logged
            log.warning("unregistering %s shared memory '%s' on a sibling front end: %s %s", kind, name, exc.status, exc)

    async def _share(self, method: str, request: Any, metadata: Metadata, undo: Callable[[], None] | None) -> None:
        """Under ``--workers``, apply a region change made here to the sibling front ends too (``undo`` it here when
        one refuses a registration), unless a sibling asked."""
        if self._peers is None or self._peers.is_local(caller := tuple(metadata() or ())):
            return
        try:
            await self._peers.shared_memory_call(method, request, caller)
        except BaseException:
            if undo is not None:
                undo()
            raise

    def log_settings(self) -> None:
        """Triton's LogSettings: not built (the log level is a command-line setting)."""
        raise errors.Unsupported("LogSettings (set the log level with surge serve --log-level) is not implemented by Surge yet")

    # -- trace settings --------------------------------------------------------------------------

    def trace_setting(self, model: str, changes: dict[str, list[str]]) -> dict[str, list[str]]:
        """Triton's trace extension: change (or only read, with no changes) the global or a model's settings."""
        if model:
            self.repository.get(model, "")  # NOT_FOUND for a model the repository does not serve
        return self.tracing.update(model, changes)

    # -- inference -------------------------------------------------------------------------------

    def refused(self, exc: BaseException) -> None:
        """Count a request that reached no model version (its body could not be read, say), by its status."""
        if self.metrics is not None:
            self.metrics.record_unrouted(errors.status_name(exc))

    async def infer(self, request: Any, metadata: Metadata, deadline: float | None, encode: Encode[R], method: str = "ModelInfer") -> R:
        """Run one inference request and return ``encode``'s answer.

        ``request``: the request in the protocol's ``ModelInferRequest`` shape (model_name, model_version, id,
        parameters, inputs, outputs, raw_input_contents: each input's bytes, viewed, never copied, by ``codec``);
        ``deadline``: a ``time.monotonic()`` value (None: none); ``method``: the RPC it is traced as."""
        stamps = Stamps(now_ns())
        if self.tracing.on:  # sampled: the request's spans (observability/tracing.py)
            stamps.trace = self.tracing.begin(stamps, metadata, request.model_name, method)
        entry = self.traffic.table.get(request.model_name) if self.traffic is not None else None
        if entry is None:  # no routes, shadow or feedback for this model: the fast path
            return await self._infer(request, self.lookup(request), stamps, deadline, metadata, encode)
        version, sender, feedback = self._route(request, entry, metadata)
        return await self._infer(request, version, stamps, deadline, metadata, encode, sender, feedback)

    def _route(
        self, request: Any, entry: RouteEntry[ModelVersion], metadata: Metadata
    ) -> tuple[ModelVersion, ShadowSender | None, FeedbackIndex | None]:
        """The version that answers (split by routing key unless the request names one), its shadow sender, the feedback index."""
        feedback = entry.extras["feedback"]
        if request.model_version:  # an explicit version bypasses the split and the shadow
            return self.lookup(request), None, feedback
        key = _routing_key(request, metadata)
        key_hash = stable_hash(key) if key else random.getrandbits(64)
        primary = entry.primary(key_hash)
        shadow = entry.shadow_for(primary, key_hash)
        return primary, entry.extras["sender"] if shadow is not None else None, feedback

    def lookup(self, request: Any) -> ModelVersion:
        """The version that serves the request; a failure is counted by its status (no model label: bounded)."""
        try:
            if self.stopping:
                raise errors.ModelNotReady("the server is shutting down; retry on another replica")
            return self.repository.get(request.model_name, request.model_version)
        except Exception as exc:
            self.refused(exc)
            raise

    async def _infer(
        self, request: Any, version: ModelVersion, stamps: Stamps, deadline: float | None, metadata: Metadata, encode: Encode[R],
        sender: ShadowSender | None = None, feedback: FeedbackIndex | None = None,
    ) -> R:
        """Decode, execute, encode. ``sender``: mirror the request to a shadow; ``feedback``: index the answer by request id."""
        spec = version.codec_spec
        if spec is None:
            spec = version.codec_spec = codec.model_spec(version.config)
        job: ShadowJob | None = None
        regions = shared_memory.RequestRegions(self.regions, metadata)  # the regions it uses, until answered
        try:
            decoded = codec.decode_request(request, spec, self.limits, regions)
            stamps.decoded = now_ns()
            stamps.rows = decoded.rows
            if sender is not None:  # never raises, never waits: the shadow has its own budget
                job = sender.offer(version.version_str, decoded.inputs, decoded.rows, decoded.output_names, request.id)
                if job is not None:
                    job.trace = stamps.trace
            outputs = await version.execute(
                decoded.inputs, decoded.rows, decoded.output_names, stamps, deadline, priority=decoded.priority, timeout_s=decoded.timeout_s
            )
            stamps.encode_start = now_ns()
            if job is not None:
                job.primary_done(outputs, stamps.encode_start - stamps.decoded)
            response = await encode(request, spec, version.version_str, outputs, decoded)
        except asyncio.CancelledError:  # the edge cancels the request when its deadline passes or the client goes away
            if job is not None:
                job.primary_done(None)
            expired = deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_S
            version.stats.record_failure(stamps, end := now_ns(), code := "DEADLINE_EXCEEDED" if expired else "CANCELLED")
            if stamps.trace is not None:
                stamps.trace.end(stamps, version, code, end_ns=end)
            raise
        except Exception as exc:
            if job is not None:
                job.primary_done(None)
            version.stats.record_failure(stamps, end := now_ns(), code := errors.status_name(exc))
            if stamps.trace is not None:
                stamps.trace.end(stamps, version, code, end_ns=end)
            raise
        finally:
            regions.release()
        stamps.end = now_ns()
        version.stats.record_success(stamps)
        if stamps.trace is not None:
            stamps.trace.end(stamps, version, "OK", "shadowed" if job is not None else "primary")
        if feedback is not None and request.id:
            feedback.record(request.id, version.version_str, outputs, decoded.rows)
        return response


def _routing_key(request: Any, metadata: Metadata) -> str:
    """The request's routing key: parameter ``routing_key``, else metadata ``x-surge-routing-key``, else the request id."""
    params = request.parameters
    if params and "routing_key" in params:
        value = codec.parameter_value(params["routing_key"])
        if value is not None:
            return str(value)
    for key, value in metadata() or ():
        if key == ROUTING_KEY_METADATA:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return request.id  # type: ignore[no-any-return]
