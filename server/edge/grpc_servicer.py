"""The gRPC edge: Triton's ``inference.GRPCInferenceService`` over grpc.aio. The only module that knows grpc.

Each RPC reads top to bottom in a few lines (look up, decode, execute, encode); errors are not handled
in the RPCs but mapped once, by ``_edge`` below, from the protocol-neutral classes of ``errors.py`` to
gRPC status codes (``STATUS_OF``). Anything unmapped becomes INTERNAL with a request id; its traceback
goes to the log, never to the client.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc

from . import codec, shared_memory, stream, wire
from .. import errors
from ..traffic.feedback import FeedbackIndex
from ..observability.metrics import ServerMetrics
from ..execution.model import ModelVersion
from ..repository import ModelRepository, parse_version
from ..traffic.routing import RouteEntry, stable_hash
from ..traffic.shadow import ShadowJob, ShadowSender
from ..execution.stats import Stamps, now_ns
from ..observability.tracing import DISABLED, Tracing
from ..traffic.traffic import Traffic
from .triton import config_overrides_from_json, model_config_message, statistics_message
from ..peers import WorkerPeers

__all__ = ["EXTENSIONS", "InferenceServicer", "STATUS_OF", "Undecodable", "add_to_server", "add_tolerant"]

log = logging.getLogger("surge.grpc")

#: Error class -> gRPC status (the one table; subclasses resolve through their MRO).
STATUS_OF: dict[type[BaseException], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.VersionNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.QueueFull: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    errors.RuntimeFailure: grpc.StatusCode.INTERNAL,
    errors.ExecutionTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.InstanceCrashed: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

#: ServerMetadata.extensions: only what is really implemented.
EXTENSIONS = ("classification", "model_repository", "model_configuration", "statistics", "parameters", "trace")
#: Answers one ModelStreamInfer stream holds (running, or done and not yet written); at the bound it stops reading.
STREAM_MAX_ANSWERS = 128
_MESSAGE, _UNARY, _STREAM = 0, 1, 2  # the forms of an answer (InferenceServicer._infer)

_request_ids = itertools.count(1)
_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code for an error (INTERNAL for anything not in ``STATUS_OF``)."""
    for cls in type(exc).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _error_message(exc: BaseException, request_id: str = "") -> str:
    if isinstance(exc, errors.InferenceServerError) and not isinstance(exc, errors.RuntimeFailure):
        return str(exc)
    rid = request_id or f"surge-{next(_request_ids)}"
    if isinstance(exc, errors.RuntimeFailure):
        log.error("request %s: %s", rid, exc)
        return f"{exc} (request id {rid}; the server log has the details)"
    log.error("request %s failed with an unexpected error", rid, exc_info=exc)
    return f"internal error (request id {rid}); the server log has the details"


class Undecodable:
    """A request message that did not parse (invalid protobuf, bad UTF-8 in a string): answered INVALID_ARGUMENT.

    grpc.aio answers a deserializer's exception with UNKNOWN and logs a traceback; ``add_to_server`` installs
    deserializers that return this instead, and ``_edge`` (or the stream reader) turns it into the status.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self, what: str) -> errors.InvalidInput:
        return errors.InvalidInput(f"the {what} request is not a valid protobuf message: {self.reason}")


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # google.protobuf.message.DecodeError, whatever the protobuf backend
            return Undecodable(str(exc) or type(exc).__name__)

    return deserialize


class _Capture:
    """Stands in for a server to collect a generated ``add_*Servicer_to_server``'s method handlers."""

    service = ""
    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


def add_tolerant(add: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as the generated ``add`` function would, except that request deserializers never
    raise (see ``Undecodable``; the servicer's methods go through ``_edge``)."""
    capture = _Capture()
    add(servicer, capture)
    handlers = {name: h._replace(request_deserializer=_tolerant(h.request_deserializer)) for name, h in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the inference servicer (``add_tolerant`` over the generated function); ModelInfer and ModelStreamInfer
    read and write large messages without copying tensor bytes on the event loop (``wire.py``)."""

    def add(servicer: InferenceServicer, capture: Any) -> None:
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
        handlers = capture.handlers
        handlers["ModelInfer"] = handlers["ModelInfer"]._replace(
            unary_unary=servicer.model_infer_wire, request_deserializer=wire.parse_infer_request, response_serializer=wire.serialize
        )
        handlers["ModelStreamInfer"] = handlers["ModelStreamInfer"]._replace(
            request_deserializer=wire.parse_infer_request, response_serializer=wire.serialize
        )

    add_tolerant(add, servicer, server)


def _edge(method: _F) -> _F:
    """Map errors raised by a unary RPC to its gRPC status, once, at the edge."""

    @functools.wraps(method)
    async def wrapper(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if request.__class__ is Undecodable:
                raise request.error(method.__name__)
            response = await method(self, request, context)
        except asyncio.CancelledError:
            _handler_failed(self, context)
            raise
        except Exception as exc:
            _handler_failed(self, context)
            if isinstance(exc, grpc.aio.AbortError):
                raise
            if getattr(self, "_stopping", False):  # InferenceServicer's answers wait for the GOAWAY (begin_shutdown)
                await self._answers_released.wait()
            if isinstance(exc, grpc.aio.AioRpcError):  # a sibling worker's refusal (workers.py): passed on as it is
                await context.abort(exc.code(), exc.details() or "")
            await context.abort(status_of(exc), _error_message(exc, getattr(request, "id", "")))
        if getattr(self, "_stopping", False):
            await self._answers_released.wait()
        return response

    return wrapper  # type: ignore[return-value]


def _handler_failed(servicer: object, context: grpc.aio.ServicerContext) -> None:
    """Count a gRPC call a handler ended with an error or that was cancelled in it (observability/edge.py)."""
    metrics = getattr(servicer, "_metrics", None)  # the surge.v1 admin services count nothing
    if metrics is not None:
        metrics.edge.handler_failed(context)


#: A cancellation this close to the request's deadline is counted as the deadline passing: the client's own
#: deadline fires first and its cancel reaches us before our copy of the deadline (ours starts after transit and
#: the wait for a handler, which a busy server makes long); a client's early cancel is rarely this close.
DEADLINE_SLACK_S = 0.1


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The request's gRPC deadline as a ``time.monotonic()`` value (None without one)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Triton's GRPCInferenceService over a ModelRepository."""

    def __init__(
        self, repository: ModelRepository, *, server_name: str, server_version: str, is_ready: Callable[[], bool], metrics: ServerMetrics | None = None,
        limits: codec.Limits = codec.DEFAULT_LIMITS, traffic: Traffic | None = None, peers: WorkerPeers | None = None,
        regions: shared_memory.SharedMemoryRegistry | None = None,
    ) -> None:
        """``metrics``: where requests that reach no model version are counted (None: metrics off); ``limits``: request limits;
        ``traffic``: version routing, shadows and feedback (None: every request goes to the version it names or the latest);
        ``peers``: in a ``--workers`` worker, the siblings statistics and repository calls also go to;
        ``regions``: the registered shared memory (None: a registry of its own, shared with the REST edge through this servicer)."""
        self._peers = peers
        self._repo = repository
        self._limits = limits
        self._stopping = False
        self._answers_released = asyncio.Event()  # while stopping: set once the connections have been told GOAWAY
        self._traffic = traffic
        self._metrics = metrics
        self._name = server_name
        self._version = server_version
        self._is_ready = is_ready
        self._stream_readers: set[asyncio.Task[None]] = set()
        self.tracing: Tracing = DISABLED
        """The server's tracing (``observability/tracing.py``); set by the server when it is configured."""
        self._regions = regions if regions is not None else shared_memory.SharedMemoryRegistry()
        self._extensions = EXTENSIONS + self._regions.extensions()

    # -- health and metadata ---------------------------------------------------------------------

    @_edge
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_edge
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._is_ready())

    @_edge
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            version = self._repo.get(request.name, request.version)
        except (errors.ModelNotFound, errors.VersionNotFound, errors.ModelNotReady):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=version.state == "READY")  # not READY: e.g. its only instance hung and is being replaced

    @_edge
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self._name, version=self._version, extensions=self._extensions)

    @_edge
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        version = self._repo.get(request.name, request.version)
        config = version.config
        batch = [-1] if config.max_batch_size else []
        response = pb.ModelMetadataResponse(
            name=config.name,
            versions=[v.version_str for v in self._repo.versions_of(request.name) if v.state == "READY"],
            platform=config.platform,
        )
        for t in config.inputs:
            response.inputs.add(name=t.name, datatype=t.datatype, shape=batch + list(t.dims))
        for t in config.outputs:
            response.outputs.add(name=t.name, datatype=t.datatype, shape=batch + list(t.dims))
        return response

    @_edge
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        version = self._repo.get(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config_message(version.config))

    @_edge
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        if request.version:
            parse_version(request.version)
        if not request.name and request.version:
            raise errors.InvalidInput("ModelStatistics: a version needs a model name")
        names = [request.name] if request.name else self._repo.model_names()
        await self._repo.refresh_statistics()  # a front end copies in its engines' counters (the whole server's)
        response = pb.ModelStatisticsResponse()
        for name in names:
            versions = self._repo.versions_of(name)
            if request.version:
                versions = [v for v in versions if v.version_str == request.version]
                if not versions:
                    raise errors.VersionNotFound(f"model '{name}' has no loaded version {request.version}")
            response.model_stats.extend(statistics_message(name, versions))
        return response

    # -- inference -------------------------------------------------------------------------------

    @_edge
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return await self._model_infer(request, context, _MESSAGE)  # type: ignore[return-value]

    async def _model_infer_wire(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse | bytes:
        """ModelInfer as gRPC serves it: a large response comes back as its wire bytes (``wire.assemble``)."""
        return await self._model_infer(request, context, _UNARY)

    _model_infer_wire.__name__ = "ModelInfer"  # what _edge's errors call it
    model_infer_wire = _edge(_model_infer_wire)

    async def _model_infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, form: int) -> pb.ModelInferResponse | bytes:
        stamps = Stamps(now_ns())
        if self.tracing.on:  # sampled: the request's spans (observability/tracing.py)
            stamps.trace = self.tracing.begin(stamps, context, request.model_name, "ModelInfer")
        entry = self._traffic.table.get(request.model_name) if self._traffic is not None else None
        if entry is None:  # no routes, shadow or feedback for this model: the fast path
            version = self._lookup(request)
            return await self._infer(request, version, stamps, _deadline(context), context, form=form)
        version, sender, feedback = self._route(request, entry, context)
        return await self._infer(request, version, stamps, _deadline(context), context, sender, feedback, form=form)

    def _route(
        self, request: pb.ModelInferRequest, entry: RouteEntry[ModelVersion], context: grpc.aio.ServicerContext
    ) -> tuple[ModelVersion, ShadowSender | None, FeedbackIndex | None]:
        """The version that answers (split by routing key unless the request names one), its shadow sender, the feedback index."""
        feedback = entry.extras["feedback"]
        if request.model_version:  # an explicit version bypasses the split and the shadow
            return self._lookup(request), None, feedback
        key = _routing_key(request, context)
        key_hash = stable_hash(key) if key else random.getrandbits(64)
        primary = entry.primary(key_hash)
        shadow = entry.shadow_for(primary, key_hash)
        return primary, entry.extras["sender"] if shadow is not None else None, feedback

    def _lookup(self, request: pb.ModelInferRequest) -> ModelVersion:
        """The version that serves the request; a failure is counted by its status code (no model label: bounded)."""
        try:
            if self._stopping:
                raise errors.ModelNotReady("the server is shutting down; retry on another replica")
            return self._repo.get(request.model_name, request.model_version)
        except Exception as exc:
            if self._metrics is not None:
                self._metrics.record_unrouted(status_of(exc).name)
            raise

    async def _infer(
        self, request: pb.ModelInferRequest, version: ModelVersion, stamps: Stamps, deadline: float | None, context: grpc.aio.ServicerContext,
        sender: ShadowSender | None = None, feedback: FeedbackIndex | None = None, form: int = _MESSAGE,
    ) -> pb.ModelInferResponse | bytes:
        """Decode, execute, encode. ``sender``: mirror the request to a shadow; ``feedback``: index the answer by request id;
        ``form``: the response as a message (_MESSAGE), or, when it is large, as the wire bytes of a ModelInferResponse
        (_UNARY) or of a ModelStreamInferResponse (_STREAM), built off the event loop."""
        spec = version.codec_spec
        if spec is None:
            spec = version.codec_spec = codec.model_spec(version.config)
        job: ShadowJob | None = None
        regions = shared_memory.RequestRegions(self._regions, context.invocation_metadata)  # the regions it uses, until answered
        try:
            decoded = codec.decode_request(request, spec, self._limits, regions)
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
            if form == _MESSAGE:
                response: pb.ModelInferResponse | bytes = codec.encode_response(
                    request, spec, version.version_str, outputs, decoded.output_names, decoded.classes, decoded.targets
                )
            else:
                response = await _encode_for_wire(
                    request, spec, version.version_str, outputs, decoded.output_names, decoded.classes, decoded.targets, form
                )
        except asyncio.CancelledError:  # gRPC cancels the handler when the deadline passes or the client goes away
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
            version.stats.record_failure(stamps, end := now_ns(), code := status_of(exc).name)
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

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Bidirectional stream: requests run concurrently, answers come as they finish.

        Each request gets one response, flagged final (``stream.answer``). A stream holds at most
        STREAM_MAX_ANSWERS answers (running, or done and not yet written to the client); at the bound it stops
        reading the stream until one is written, so a client that does not read its answers is held back by HTTP/2
        flow control instead of growing the server's memory. A failed request is answered with its message in
        ``error_message``, as Triton sends it, and its status name in the ``surge_status_code`` parameter
        (``stream.failure``); the stream stays open. With the ``triton_grpc_error: true`` header (Triton's opt-in),
        the first error instead ends the stream with that gRPC status. On server shutdown the stream stops
        reading, answers what it accepted, and ends.
        """
        grpc_errors = any(k == "triton_grpc_error" and v.lower() == "true" for k, v in context.invocation_metadata() or ())
        results: asyncio.Queue[tuple[pb.ModelStreamInferResponse | bytes, BaseException | None] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_MAX_ANSWERS)  # taken before a message is read, given back once its answer is written
        tasks: set[asyncio.Task[None]] = set()

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                stamps = Stamps(now_ns())
                if self.tracing.on:
                    stamps.trace = self.tracing.begin(stamps, context, request.model_name, "ModelStreamInfer")
                entry = self._traffic.table.get(request.model_name) if self._traffic is not None else None
                if entry is None:
                    response = await self._infer(request, self._lookup(request), stamps, _deadline(context), context, form=_STREAM)
                else:
                    version, sender, feedback = self._route(request, entry, context)
                    response = await self._infer(request, version, stamps, _deadline(context), context, sender, feedback, form=_STREAM)
                results.put_nowait((response if response.__class__ is bytes else stream.answer(response), None))  # bytes: flagged already
            except Exception as exc:
                results.put_nowait((stream.failure(status_of(exc).name, _error_message(exc, request.id), request), exc))

        async def read() -> None:
            try:
                while True:
                    await slots.acquire()
                    request = await anext(request_iterator, None)
                    if request is None:
                        break
                    if request.__class__ is Undecodable:
                        exc = request.error("ModelStreamInfer")
                        results.put_nowait((stream.failure(status_of(exc).name, str(exc)), exc))
                        continue
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except asyncio.CancelledError:
                pass  # shutdown (or the client went away): stop reading, finish what was accepted
            finally:
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                results.put_nowait(None)

        reader = asyncio.create_task(read())
        self._stream_readers.add(reader)
        try:
            while (item := await results.get()) is not None:
                response, exc = item
                if exc is not None and grpc_errors:
                    _handler_failed(self, context)
                    await context.abort(status_of(exc), response.error_message)
                yield response  # returns once gRPC has taken the message within the client's flow-control window
                slots.release()
        except (asyncio.CancelledError, GeneratorExit):
            # The client cancelled or the deadline passed (GeneratorExit: grpc closed the generator while sending). An idle
            # stream's cancel can race with the end of its requests and end the stream normally here: not counted.
            _handler_failed(self, context)
            raise
        finally:
            self._stream_readers.discard(reader)
            reader.cancel()
            for task in tasks:
                task.cancel()

    def begin_shutdown(self) -> None:
        """New inference requests get UNAVAILABLE; open streams stop reading: each answers what it accepted, then ends.

        Unary answers (and refusals) are held until ``release_answers``: the server calls it once gRPC has sent every
        connection its GOAWAY, so a client that gets an answer sends its next call on a new connection (refused while
        connecting: UNAVAILABLE, retryable), never on one being closed, where gRPC would cancel it (CANCELLED).
        """
        self._stopping = True
        for reader in list(self._stream_readers):
            reader.cancel()

    def release_answers(self) -> None:
        """Let the unary answers held since ``begin_shutdown`` go out (the connections have been told GOAWAY)."""
        self._answers_released.set()

    @_edge
    async def TraceSetting(self, request: pb.TraceSettingRequest, context: grpc.aio.ServicerContext) -> pb.TraceSettingResponse:
        """Triton's trace extension: read (no settings) or change the global or a model's settings."""
        if request.model_name:
            self._repo.get(request.model_name, "")  # NOT_FOUND for a model the repository does not serve
        changes = {name: list(value.value) for name, value in request.settings.items()}
        response = pb.TraceSettingResponse()
        for name, values in self.tracing.update(request.model_name, changes).items():
            response.settings[name].value.extend(values)
        return response

    # -- repository ------------------------------------------------------------------------------

    @_edge
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for row in self._repo.index(ready_only=request.ready):
            response.models.add(name=row.name, version=row.version, state=row.state, reason=row.reason)
        return response

    @_edge
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext) -> pb.RepositoryModelLoadResponse:
        self._repo.check_mutable("RepositoryModelLoad")
        overrides = None
        for key, param in request.parameters.items():
            if key.startswith("file:"):
                raise errors.Unsupported(f"loading model files sent in the request ('{key}') is not supported; put them in the repository")
            if key == "config":
                which = param.WhichOneof("parameter_choice")
                text = param.string_param if which == "string_param" else param.bytes_param.decode("utf-8", "replace") if which == "bytes_param" else ""
                if len(text) <= 1 << 16:
                    overrides = config_overrides_from_json(request.model_name, text)
                else:  # a large text is parsed off the event loop
                    overrides = await asyncio.to_thread(config_overrides_from_json, request.model_name, text)
        await self._repo.load(request.model_name, overrides)
        return pb.RepositoryModelLoadResponse()

    @_edge
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self._repo.check_mutable("RepositoryModelUnload")
        await self._repo.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- shared memory (shared_memory.py) --------------------------------------------------------

    def _owner(self, context: grpc.aio.ServicerContext) -> str:
        return shared_memory.owner_of(context.invocation_metadata(), self._regions.scoped)

    @_edge
    async def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext) -> Any:
        return shared_memory.status_message(self._regions, self._owner(context), request.name, "system")

    @_edge
    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext) -> Any:
        self._regions.register_system(self._owner(context), request)
        return pb.SystemSharedMemoryRegisterResponse()

    @_edge
    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext) -> Any:
        self._regions.unregister(self._owner(context), request.name, "system")
        return pb.SystemSharedMemoryUnregisterResponse()

    @_edge
    async def CudaSharedMemoryStatus(self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext) -> Any:
        return shared_memory.status_message(self._regions, self._owner(context), request.name, "cuda")

    @_edge
    async def CudaSharedMemoryRegister(self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext) -> Any:
        self._regions.register_cuda(self._owner(context), request)
        return pb.CudaSharedMemoryRegisterResponse()

    @_edge
    async def CudaSharedMemoryUnregister(self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext) -> Any:
        self._regions.unregister(self._owner(context), request.name, "cuda")
        return pb.CudaSharedMemoryUnregisterResponse()



async def _encode_for_wire(
    request: pb.ModelInferRequest, spec: Any, version: str, outputs: dict[str, Any], output_names: tuple[str, ...],
    classes: dict[str, int] | None, targets: Any, form: int,
) -> pb.ModelInferResponse | bytes:
    """A small response as a message (protobuf's C code is fastest); a large one as its wire bytes, assembled in a
    worker thread without holding the GIL for the copies (``wire.assemble``): nothing that scales with its size
    runs on the loop."""
    response, arrays = codec.encode_outputs(request, spec, version, outputs, output_names, classes, targets)
    if sum(a.nbytes for a in arrays) < wire.LARGE_MESSAGE_BYTES:  # a BYTES array's nbytes counts its references
        return codec.with_raw_outputs(response, arrays)
    if form == _STREAM:  # the stream response is assembled here, so its final flag goes into the header now
        response.parameters[stream.FINAL_RESPONSE].bool_param = True
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(wire.assemble, response.SerializeToString(), arrays, stream=form == _STREAM))


#: The metadata key that carries a routing key (the ``routing_key`` request parameter takes precedence).
ROUTING_KEY_METADATA = "x-surge-routing-key"


def _routing_key(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> str:
    """The request's routing key: parameter ``routing_key``, else metadata ``x-surge-routing-key``, else the request id."""
    params = request.parameters
    if params and "routing_key" in params:
        value = codec.parameter_value(params["routing_key"])
        if value is not None:
            return str(value)
    for key, value in context.invocation_metadata() or ():
        if key == ROUTING_KEY_METADATA:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return request.id


def _not_built(what: str) -> Callable[..., Awaitable[Any]]:
    async def rpc(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not implemented by Surge yet")

    return rpc


_NOT_BUILT = {
    "LogSettings": "LogSettings (set the log level with surge serve --log-level)",
}
for _rpc, _what in _NOT_BUILT.items():
    setattr(InferenceServicer, _rpc, _not_built(_what))
