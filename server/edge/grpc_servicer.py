"""The gRPC edge: Triton's ``inference.GRPCInferenceService`` over grpc.aio. Wire format only.

Each RPC turns its request message into the plain arguments of a ``DataPlane`` method (``server/dataplane.py``:
lookup, routing, limits, statistics, errors) and the answer back into its response message. Errors are not
handled in the RPCs but mapped once, by ``_edge`` below, from their status name (``errors.status_name``) to a
gRPC status code (``STATUS_OF``), with the data plane's message (``dataplane.error_message``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, TypeVar

import grpc
import numpy as np

from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from surge.protos.pool import POOL as SURGE_POOL

from . import codec, shared_memory, stream, wire
from .. import errors
from ..dataplane import DEADLINE_SLACK_S, EXTENSIONS, DataPlane, error_message
from ..execution.model import ModelVersion
from ..execution.stats import Stamps, now_ns
from .triton import model_config_message

__all__ = ["EXTENSIONS", "InferenceServicer", "STATUS_OF", "Undecodable", "add_to_server", "add_tolerant", "status_of"]

#: Status name (``errors.status_name``) -> gRPC status code.
_CODE_OF_NAME: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}
#: Error class -> gRPC status (``errors.STATUS_NAME_OF`` on this wire).
STATUS_OF: dict[type[BaseException], grpc.StatusCode] = {cls: _CODE_OF_NAME[name] for cls, name in errors.STATUS_NAME_OF.items()}

#: Answers one ModelStreamInfer stream holds (running, or done and not yet written); at the bound it stops reading.
STREAM_MAX_ANSWERS = 128

_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code for an error (INTERNAL for anything ``errors.STATUS_NAME_OF`` does not list)."""
    return _CODE_OF_NAME[errors.status_name(exc)]


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


class _Call(NamedTuple):
    """The ``grpc.HandlerCallDetails`` of a method, to ask a service handler for that method's handler."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


class _Capture:
    """Stands in for a server to collect a generated ``add_*Servicer_to_server``'s method handlers (by method name,
    each asked of the service handler it registers; the methods are those of the service's descriptor)."""

    service = ""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]

    def add_generic_rpc_handlers(self, generic_handlers: tuple[grpc.ServiceRpcHandler, ...]) -> None:
        (handler,) = generic_handlers
        self.service = handler.service_name()
        methods = SURGE_POOL.FindServiceByName(self.service).methods
        found = {m.name: handler.service(_Call(f"/{self.service}/{m.name}")) for m in methods}  # type: ignore[arg-type]
        self.handlers = {name: h for name, h in found.items() if h is not None}


def add_tolerant(add: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as the generated ``add`` function would, except that request deserializers never
    raise (see ``Undecodable``; the servicer's methods go through ``_edge``)."""
    capture = _Capture()
    add(servicer, capture)
    handlers = {name: h._replace(request_deserializer=_tolerant(h.request_deserializer)) for name, h in capture.handlers.items()}  # type: ignore[attr-defined, arg-type]  # grpc's handlers are namedtuples
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
    async def wrapper(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
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
            await context.abort(status_of(exc), error_message(exc, getattr(request, "id", "")))
        if getattr(self, "_stopping", False):
            await self._answers_released.wait()
        return response

    return wrapper  # type: ignore[return-value]


def _handler_failed(servicer: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Count a gRPC call a handler ended with an error or that was cancelled in it (observability/edge.py)."""
    metrics = getattr(servicer, "_metrics", None)  # the surge.v1 admin services count nothing
    if metrics is not None:
        metrics.edge.handler_failed(context)


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """The request's gRPC deadline as a ``time.monotonic()`` value (None without one)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Triton's GRPCInferenceService over a ``DataPlane``."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._metrics = plane.metrics  # where calls a handler ended with an error are counted (observability/edge.py)
        self._stopping = False
        self._answers_released = asyncio.Event()  # while stopping: set once the connections have been told GOAWAY
        self._stream_readers: set[asyncio.Task[None]] = set()

    # -- health and metadata ---------------------------------------------------------------------

    @_edge
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._plane.live())

    @_edge
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.ready())

    @_edge
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version))

    @_edge
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerMetadataResponse:
        name, version, extensions = self._plane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @_edge
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelMetadataResponse:
        meta = self._plane.model_metadata(request.name, request.version)
        response = pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
        for t in meta.inputs:
            response.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in meta.outputs:
            response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        return response

    @_edge
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=model_config_message(self._plane.model_config(request.name, request.version)))

    @_edge
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelStatisticsResponse:
        return await self._plane.statistics(request.name, request.version, context.invocation_metadata)

    # -- inference -------------------------------------------------------------------------------

    @_edge
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelInferResponse:
        return await self._plane.infer(request, context.invocation_metadata, _deadline(context), _encode_message)

    async def _model_infer_wire(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelInferResponse | bytes:
        """ModelInfer as gRPC serves it: a large response comes back as its wire bytes (``wire.assemble``)."""
        return await self._plane.infer(request, context.invocation_metadata, _deadline(context), _encode_for_wire)

    _model_infer_wire.__name__ = "ModelInfer"  # what _edge's errors call it
    model_infer_wire = _edge(_model_infer_wire)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest | Undecodable], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ModelStreamInferResponse | bytes]:
        """Bidirectional stream: requests run concurrently, answers come as they finish.

        Each request gets one response, flagged final (``stream.FINAL_RESPONSE``). A stream holds at most
        STREAM_MAX_ANSWERS answers (running, or done and not yet written to the client); at the bound it stops
        reading the stream until one is written, so a client that does not read its answers is held back by HTTP/2
        flow control instead of growing the server's memory. A failed request is answered with its message in
        ``error_message``, as Triton sends it, and its status name in the ``surge_status_code`` parameter
        (``stream.failure``); the stream stays open. With the ``triton_grpc_error: true`` header (Triton's opt-in),
        the first error instead ends the stream with that gRPC status. On server shutdown the stream stops
        reading, answers what it accepted, and ends.

        The fast path (``_Stream``): a request to a model without routes, shadow or feedback, tracing off, is decoded
        and queued in the batcher as it is read, with no task of its own; its batch's answers are encoded by callbacks
        in one loop turn and written by this generator, woken once per group.
        """
        grpc_errors = any(k == "triton_grpc_error" and v.lower() == "true" for k, v in context.invocation_metadata() or ())
        state = _Stream(self, context)
        reader = asyncio.create_task(state.read(request_iterator))
        self._stream_readers.add(reader)
        answers = state.answers
        try:
            while True:
                if not answers:
                    await state.answered()
                item = answers.popleft()
                if item is None:
                    break
                response, exc = item
                if exc is not None and grpc_errors:
                    _handler_failed(self, context)
                    await context.abort(status_of(exc), response.error_message)  # type: ignore[union-attr]  # a failure is a message
                yield response  # returns once gRPC has taken the message within the client's flow-control window
                state.written()
        except (asyncio.CancelledError, GeneratorExit):
            # The client cancelled or the deadline passed (GeneratorExit: grpc closed the generator while sending). An idle
            # stream's cancel can race with the end of its requests and end the stream normally here: not counted.
            _handler_failed(self, context)
            raise
        finally:
            self._stream_readers.discard(reader)
            reader.cancel()
            state.cancel()

    def begin_shutdown(self) -> None:
        """New inference requests get UNAVAILABLE; open streams stop reading: each answers what it accepted, then ends.

        Unary answers (and refusals) are held until ``release_answers``: the server calls it once gRPC has sent every
        connection its GOAWAY, so a client that gets an answer sends its next call on a new connection (refused while
        connecting: UNAVAILABLE, retryable), never on one being closed, where gRPC would cancel it (CANCELLED).
        """
        self._stopping = True
        self._plane.stopping = True
        for reader in list(self._stream_readers):
            reader.cancel()

    def release_answers(self) -> None:
        """Let the unary answers held since ``begin_shutdown`` go out (the connections have been told GOAWAY)."""
        self._answers_released.set()

    @_edge
    async def TraceSetting(self, request: pb.TraceSettingRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.TraceSettingResponse:
        """Triton's trace extension: read (no settings) or change the global or a model's settings."""
        changes = {name: list(value.value) for name, value in request.settings.items()}
        response = pb.TraceSettingResponse()
        for name, values in self._plane.trace_setting(request.model_name, changes).items():
            response.settings[name].value.extend(values)
        return response

    @_edge
    async def LogSettings(self, request: pb.LogSettingsRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.LogSettingsResponse:
        self._plane.log_settings()
        return pb.LogSettingsResponse()  # pragma: no cover  (log_settings raises Unsupported)

    # -- repository ------------------------------------------------------------------------------

    @_edge
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for row in self._plane.repository_index(request.ready):
            response.models.add(name=row.name, version=row.version, state=row.state, reason=row.reason)
        return response

    @_edge
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.RepositoryModelLoadResponse:
        parameters = {key: getattr(param, param.WhichOneof("parameter_choice") or "string_param") for key, param in request.parameters.items()}
        await self._plane.load(request.model_name, parameters, context.invocation_metadata)
        return pb.RepositoryModelLoadResponse()

    @_edge
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RepositoryModelUnloadResponse:
        await self._plane.unload(request.model_name, context.invocation_metadata)
        return pb.RepositoryModelUnloadResponse()

    # -- shared memory (shared_memory.py) --------------------------------------------------------

    @_edge
    async def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        response = pb.SystemSharedMemoryStatusResponse()
        for r in self._plane.shared_memory_status("system", request.name, context.invocation_metadata):
            response.regions[r.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size))
        return response

    @_edge
    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._plane.register_system_shared_memory(request.name, request.key, request.offset, request.byte_size, context.invocation_metadata)
        return pb.SystemSharedMemoryRegisterResponse()

    @_edge
    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._plane.unregister_shared_memory("system", request.name, context.invocation_metadata)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_edge
    async def CudaSharedMemoryStatus(self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        response = pb.CudaSharedMemoryStatusResponse()
        for r in self._plane.shared_memory_status("cuda", request.name, context.invocation_metadata):
            response.regions[r.name].CopyFrom(pb.CudaSharedMemoryStatusResponse.RegionStatus(name=r.name, device_id=r.device_id, byte_size=r.byte_size))
        return response

    @_edge
    async def CudaSharedMemoryRegister(self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._plane.register_cuda_shared_memory(request.name, request.raw_handle, request.device_id, request.byte_size, context.invocation_metadata)
        return pb.CudaSharedMemoryRegisterResponse()

    @_edge
    async def CudaSharedMemoryUnregister(self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._plane.unregister_shared_memory("cuda", request.name, context.invocation_metadata)
        return pb.CudaSharedMemoryUnregisterResponse()


async def _encode_message(
    request: pb.ModelInferRequest, spec: Any, version: str, outputs: dict[str, np.ndarray], decoded: codec.DecodedRequest
) -> pb.ModelInferResponse:
    """The response as a message (``DataPlane.infer``'s encoder for the generated ModelInfer handler)."""
    return codec.encode_response(request, spec, version, outputs, decoded.output_names, decoded.classes, decoded.targets)


async def _encode_stream(
    request: pb.ModelInferRequest, spec: Any, version: str, outputs: dict[str, np.ndarray], decoded: codec.DecodedRequest
) -> bytes:
    return await _encode_for_wire(request, spec, version, outputs, decoded, True)


class _Stream:
    """One ModelStreamInfer stream's requests and answers (``InferenceServicer.ModelStreamInfer``).

    ``read`` takes messages while fewer than STREAM_MAX_ANSWERS are held (read and not yet written). ``start`` runs a
    request's decode and batcher submission at once, on the reader's turn (``ModelVersion.submit``: no task, no
    coroutine); ``_finish`` encodes its answer (``codec.encode_header`` + ``wire.join``: bytes from the version's
    skeleton) when its batch is done, records it and queues it for the writer, which ``put`` wakes once per group.
    A request the fast path does not cover (routes, shadows, feedback, tracing) runs in a task through
    ``InferenceServicer._infer`` as a unary call does; so does the off-loop assembly of a large answer.
    """

    __slots__ = ("answers", "context", "deadline", "held", "loop", "pending", "room", "servicer", "tasks", "wake")

    def __init__(self, servicer: InferenceServicer, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.servicer = servicer
        self.context = context
        self.deadline = _deadline(context)  # the stream's: every request on it shares it
        self.answers: collections.deque[tuple[pb.ModelStreamInferResponse | bytes, BaseException | None] | None] = collections.deque()
        self.loop = asyncio.get_running_loop()
        self.wake: asyncio.Future[None] | None = None  # the writer's, while it waits for answers: resolved by put
        self.room = asyncio.Event()  # the reader's: set when an answer was written below the bound
        self.held = 0  # answers held: read, and not yet written
        self.pending: set[asyncio.Future[Any]] = set()  # requests in a batcher
        self.tasks: set[asyncio.Task[None]] = set()

    def put(self, item: tuple[pb.ModelStreamInferResponse | bytes, BaseException | None] | None) -> None:
        self.answers.append(item)
        wake = self.wake
        if wake is not None:
            self.wake = None
            if not wake.done():
                wake.set_result(None)

    async def answered(self) -> None:
        """The writer's, when ``answers`` is empty: until ``put`` adds one."""
        wake = self.wake = self.loop.create_future()
        try:
            await wake
        finally:
            self.wake = None

    def written(self) -> None:
        """An answer went out: one fewer held; the reader goes on if it waited at the bound."""
        self.held -= 1
        if not self.room.is_set():
            self.room.set()

    async def read(self, request_iterator: AsyncIterator[pb.ModelInferRequest | Undecodable]) -> None:
        try:
            while True:
                while self.held >= STREAM_MAX_ANSWERS:
                    self.room.clear()
                    await self.room.wait()
                request = await anext(request_iterator, None)
                if request is None:
                    break
                self.held += 1
                if isinstance(request, Undecodable):
                    exc = request.error("ModelStreamInfer")
                    self.put((stream.failure(status_of(exc).name, str(exc)), exc))
                    continue
                self.start(request)
        except asyncio.CancelledError:
            pass  # shutdown (or the client went away): stop reading, finish what was accepted
        finally:
            while self.pending or self.tasks:
                await asyncio.gather(*self.pending, *self.tasks, return_exceptions=True)
            self.put(None)

    def cancel(self) -> None:
        """The stream ended: what is still queued or running is cancelled (counted CANCELLED)."""
        for future in list(self.pending):
            future.cancel()
        for task in self.tasks:
            task.cancel()

    def fail(self, exc: BaseException, request: pb.ModelInferRequest) -> None:
        self.put((stream.failure(status_of(exc).name, error_message(exc, request.id), request), exc))

    def start(self, request: pb.ModelInferRequest) -> None:
        plane = self.servicer._plane
        traffic = plane.traffic
        if plane.tracing.on or (traffic is not None and request.model_name in traffic.table):
            self.spawn(self._routed(request))
            return
        stamps = Stamps(now_ns())
        try:
            version = plane.lookup(request)
        except Exception as exc:  # noqa: BLE001  # every failure is answered on the stream (status_of maps it)
            self.fail(exc, request)
            return
        spec = version.codec_spec
        if spec is None:
            spec = version.codec_spec = codec.model_spec(version.config)
        regions = shared_memory.RequestRegions(plane.regions, self.context.invocation_metadata)
        try:
            decoded = codec.decode_request(request, spec, plane.limits, regions)
            stamps.decoded = now_ns()
            stamps.rows = decoded.rows
            future = version.submit(
                decoded.inputs, decoded.rows, decoded.output_names, stamps, self.deadline,
                functools.partial(self._finish, request, version, decoded, stamps, regions), priority=decoded.priority, timeout_s=decoded.timeout_s,
            )
        except Exception as exc:  # noqa: BLE001  # every failure is answered on the stream (status_of maps it)
            regions.release()
            version.stats.record_failure(stamps, now_ns(), status_of(exc).name)
            self.fail(exc, request)
            return
        self.pending.add(future)

    def _finish(
        self, request: pb.ModelInferRequest, version: ModelVersion, decoded: codec.DecodedRequest, stamps: Stamps,
        regions: shared_memory.RequestRegions, future: asyncio.Future[dict[str, Any]],
    ) -> None:
        """On the loop, once the request's batch is done: encode, record, queue the answer for the writer."""
        self.pending.discard(future)
        stamps.encode_start = now_ns()
        try:
            if future.cancelled():  # the stream ended: nobody to answer
                version.stats.record_failure(stamps, now_ns(), self._cancelled())
                return
            exc = future.exception()
            if exc is None:
                try:
                    header, arrays = codec.encode_header(
                        request.id, version.codec_spec, version.version_str, future.result(), decoded.output_names, decoded.classes, decoded.targets,
                        stream.FINAL_PARAMETER,
                    )
                except Exception as error:  # noqa: BLE001  # every failure is answered on the stream (status_of maps it)
                    exc = error
                else:
                    if sum(a.nbytes for a in arrays) < wire.LARGE_MESSAGE_BYTES:
                        response = wire.join(header, arrays, stream=True)
                        stamps.end = now_ns()
                        version.stats.record_success(stamps)
                        self.put((response, None))
                    else:
                        self.spawn(self._assemble(version, stamps, header, arrays))
                    return
            version.stats.record_failure(stamps, now_ns(), status_of(exc).name)
            self.fail(exc, request)
        finally:
            regions.release()

    def _cancelled(self) -> str:
        """The outcome of a request the stream's end cancelled: its deadline passing, or the client going away."""
        expired = self.deadline is not None and time.monotonic() >= self.deadline - DEADLINE_SLACK_S
        return "DEADLINE_EXCEEDED" if expired else "CANCELLED"

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _assemble(self, version: ModelVersion, stamps: Stamps, header: bytes, arrays: list[Any]) -> None:
        try:
            response = await _assemble(header, arrays, stream=True)
        except asyncio.CancelledError:
            version.stats.record_failure(stamps, now_ns(), self._cancelled())
            raise
        stamps.end = now_ns()
        version.stats.record_success(stamps)
        self.put((response, None))

    async def _routed(self, request: pb.ModelInferRequest) -> None:
        """A request the fast path does not cover (routes, shadows, feedback, tracing), through the data plane as a
        unary call goes."""
        try:
            response = await self.servicer._plane.infer(request, self.context.invocation_metadata, self.deadline, _encode_stream, "ModelStreamInfer")
            self.put((response, None))
        except Exception as exc:  # noqa: BLE001  # every failure is answered on the stream (status_of maps it)
            self.fail(exc, request)


def _assemble(header: bytes, arrays: list[Any], *, stream: bool) -> asyncio.Future[bytes]:
    """``wire.assemble`` in a worker thread."""
    return asyncio.get_running_loop().run_in_executor(None, functools.partial(wire.assemble, header, arrays, stream=stream))


async def _encode_for_wire(
    request: pb.ModelInferRequest, spec: Any, version: str, outputs: dict[str, np.ndarray], decoded: codec.DecodedRequest, in_stream: bool = False
) -> bytes:
    """``DataPlane.infer``'s encoder for ModelInfer (and, ``in_stream``, ModelStreamInfer) as gRPC serves them: the
    response's wire bytes, its header from the version's precomputed skeleton, then the output buffers
    (``wire.join``); a large one is assembled in a worker thread without holding the GIL for the copies
    (``wire.assemble``): nothing that scales with its size runs on the loop."""
    header, arrays = codec.encode_header(
        request.id, spec, version, outputs, decoded.output_names, decoded.classes, decoded.targets, stream.FINAL_PARAMETER if in_stream else b""
    )
    if sum(a.nbytes for a in arrays) < wire.LARGE_MESSAGE_BYTES:  # a BYTES array's nbytes counts its references
        return wire.join(header, arrays, stream=in_stream)
    return await _assemble(header, arrays, stream=in_stream)
