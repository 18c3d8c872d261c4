"""The REST edge: the Open Inference Protocol's HTTP/JSON binding (KServe v2) plus Triton's HTTP extensions.

Built on aiohttp's server, on the same event loop as grpc.aio (uvloop under ``surge serve``), in the same
process. It is a thin edge with no serving logic of its own: each route turns its HTTP request into the plain
arguments of the matching ``DataPlane`` method (``server/dataplane.py``; inference requests through
``rest_codec``, their binary tensors as views of the body) and its answer into JSON (or JSON and binary
tensors). So a REST request meets the very same lookup, validation, limits, batcher, statistics, metrics and
error messages as a gRPC one, and a change to the data plane reaches both edges at once.

Errors: one taxonomy, two edges. Every error is answered ``{"error": "..."}`` with the HTTP status of its status
name (``errors.status_name``) in ``HTTP_STATUS_OF`` (Triton's mapping for the codes Triton has: INTERNAL 500,
NOT_FOUND 404, UNAVAILABLE 503, UNIMPLEMENTED 501, the rest 400; the common gRPC-to-HTTP mapping for the codes
Triton lacks) and the data plane's message (``dataplane.error_message``). Errors of HTTP itself (no such route,
wrong method, body over the limit) answer the same way.

Routes (``{v}``: a version number; every model route also exists without ``/versions/{v}``)::

    GET  /v2/health/live                          200 {"live": true}
    GET  /v2/health/ready                         200 {"ready": true}, or 400 {"ready": false} (as Triton)
    GET  /v2, /v2/                                server metadata
    GET  /v2/models/{m}/versions/{v}              model metadata
    GET  /v2/models/{m}/versions/{v}/ready        200 or 400, {"name": ..., "ready": ...}
    GET  /v2/models/{m}/versions/{v}/config       Triton's ModelConfig as JSON
    GET  /v2/models/stats, /v2/models/{m}/versions/{v}/stats   Triton's statistics extension
    POST /v2/models/{m}/versions/{v}/infer        JSON or JSON + binary tensors
    POST /v2/repository/index                     [{"name", "version", "state", "reason"}, ...]
    POST /v2/repository/models/{m}/load|unload    optional body {"parameters": {"config": "<ModelConfig JSON>"}}
    GET  /v2/{systemsharedmemory|cudasharedmemory}[/region/{r}]/status      [{"name", ...}, ...]
    POST /v2/{systemsharedmemory|cudasharedmemory}/region/{r}/register      Triton's body (``shared_memory.register_from_json``)
    POST /v2/{systemsharedmemory|cudasharedmemory}[/region/{r}]/unregister  all the caller's regions, or one
    GET|POST /v2/trace/setting, /v2/models/{m}/trace/setting   Triton's trace extension
    /v2/logging                                   501, as the gRPC edge answers LogSettings

Bodies: read as they arrive, bounded in size (``max_request_bytes``, before and after decompression) and in
time (``body_timeout_s`` in all, ``idle_timeout_s`` between pieces: 408); ``Content-Encoding`` gzip or deflate is
inflated here, as a stream that stops at the limit (413), never past it. Everything that scales with a body's
size (inflating, parsing JSON, turning JSON values into tensors, writing JSON outputs) runs in a small thread
pool, in bounded steps (``jsonread``, ``rest_codec``), so the event loop that serves gRPC too keeps its
turns; bodies up to ``INLINE_BYTES`` (uncompressed) are decoded in place. Binary tensor bytes reach the data
plane (and the batcher) as views of the body (``rest_codec.RestInferRequest``), and output bytes are copied
once, from the output arrays into the response body.

Connections: aiohttp's keep-alive timer, set to ``idle_timeout_s``, closes a connection that has not sent a
complete request head within that time of connecting or of its last answer (slow headers, idle keep-alive).

Access control: ``authorize(method, authorization)`` (optional) is called by a middleware before any route
reads its body, with the gRPC method name the route stands for and the ``Authorization`` header, and raises
the error to answer with: the single hook point for bearer-token auth (the transport-neutral check). Health
routes pass the ``grpc.health.v1`` method, as Kubernetes probes carry no token.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import sys
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from aiohttp import web

from surge.protos import grpc_service_pb2 as pb

from .. import errors
from ..dataplane import EXTENSIONS, DataPlane, ModelMetadata, error_message
from ..observability import tracing
from . import codec, rest_codec, shared_memory
from .jsonread import CHUNK
from .triton import model_config_message

__all__ = ["HTTP_STATUS_OF", "INLINE_BYTES", "RestEndpoint"]

log = logging.getLogger("surge.rest")

#: Status name (``errors.status_name``) -> HTTP status.
HTTP_STATUS_OF: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "RESOURCE_EXHAUSTED": 413,  # Surge's RESOURCE_EXHAUSTED is a size limit: "content too large"
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "FAILED_PRECONDITION": 400,
    "ALREADY_EXISTS": 400,
    "CANCELLED": 400,
}
#: ServerMetadata.extensions over HTTP: the data plane's, plus the binary tensor data extension.
HTTP_EXTENSIONS = (*EXTENSIONS, "binary_tensor_data")

#: What ``authorize`` is told a route stands for: the gRPC method of the same operation.
_SERVICE = "/inference.GRPCInferenceService/"
_HEALTH = "/grpc.health.v1.Health/Check"
_JSON = "application/json"

Authorize = Callable[[str, "str | None"], object]
_T = TypeVar("_T")

INLINE_BYTES = 1 << 16
"""Uncompressed bodies up to this size are decoded on the event loop: a pool hop costs more."""
INLINE_ELEMENTS = 1 << 14
"""Responses with up to this many output elements are encoded on the event loop."""
_ENCODINGS = ("identity", "gzip", "x-gzip", "deflate")


class _BodyTooLarge(errors.LimitExceeded):
    """The body is over the limit (as sent, or inflated): answered 413, and the connection closed unread."""


class _BodyTimeout(Exception):
    """The body did not arrive in time: answered 408, and the connection closed."""


class _ClientErrors(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection log: a request the HTTP parser rejects (the client's fault, already answered 400)
    is one warning line, not an error with a traceback (every handler error is answered by ``_errors`` first)."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        self.warning(f"{msg}: %s", *args, exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1])


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=rest_codec.json_dumps(doc), status=status, content_type=_JSON)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=rest_codec.json_dumps({"error": message}), status=status, content_type=_JSON, headers=headers)


def _failure(exc: BaseException, request_id: str = "") -> web.Response:
    """An error's answer: the HTTP status of its status name, the data plane's message."""
    name = errors.status_name(exc)
    return _error(HTTP_STATUS_OF.get(name, 500), error_message(exc, request_id), _challenge(name))


def _metadata(request: web.Request) -> Callable[[], tuple[tuple[str, str], ...]]:
    """The request's headers as the caller's metadata (``dataplane.Metadata``: lower-case names, read when needed)."""
    return lambda: tuple((k.lower(), v) for k, v in request.headers.items())


class RestEndpoint:
    """Serves the REST v2 routes over ``plane``. ``start``/``aclose`` on the event loop."""

    def __init__(
        self, plane: DataPlane, host: str, port: int, *, max_request_bytes: int, drain_timeout_s: float = 30.0,
        authorize: Authorize | None = None, reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None, unix_path: Path | None = None, idle_timeout_s: float = 10.0, body_timeout_s: float = 60.0,
        decode_threads: int = 2,
    ) -> None:
        """``max_request_bytes``: largest request body accepted (after decompression; larger: 413).
        ``authorize``: the access-control hook (module docstring); None: every route is open.
        ``reuse_port``: bind with SO_REUSEPORT, so worker processes can share the port (else a taken port is an error).
        ``ssl_context``: serve HTTPS (``ServerConfig.ssl_context``: the gRPC port's certificate and client CA); None: plain HTTP.
        ``unix_path``: listen on this Unix socket instead of ``host:port`` (its mode is the caller's: ``app._unix_socket``).
        ``idle_timeout_s``: a connection must send a complete request head within this time of connecting or of its
        last answer (else it is closed), and a body may pause this long between pieces (else 408).
        ``body_timeout_s``: the longest a body may take to arrive, in all (else 408).
        ``decode_threads``: the threads that decode large bodies and encode large outputs."""
        self._unix_path = unix_path
        self._plane = plane
        self._host = host
        self._port = port
        self._authorize = authorize
        self._max_request_bytes = max_request_bytes
        self._reuse_port = reuse_port
        self._ssl_context = ssl_context
        self._idle_timeout_s = idle_timeout_s
        self._body_timeout_s = body_timeout_s
        self._pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="surge-rest-decode")
        self._rpc_of: dict[Callable[..., Any], str] = {}
        app = web.Application(client_max_size=max_request_bytes, middlewares=[self._errors, self._access])
        self._routes(app.router)
        # aclose() drains first (with its own grace), so aiohttp's cleanup only cancels what outlived it: a tiny
        # positive timeout (aiohttp reads 0 as "no limit"). Bodies are inflated here (``_inflate``), not by aiohttp.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.01, logger=_ClientErrors(log, {}), auto_decompress=False, keepalive_timeout=idle_timeout_s,
            lingering_time=0,  # a body left unread (refused before or while reading it) is not read on: the connection closes
        )
        self._drain_timeout_s = drain_timeout_s
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.address = ""

    async def start(self) -> str:
        """Bind and listen; returns the bound ``host:port`` (port 0 picks a free one) or ``unix:PATH``. Raises OSError."""
        await self._runner.setup()
        site: web.BaseSite
        if self._unix_path is not None:
            site = web.UnixSite(self._runner, str(self._unix_path), ssl_context=self._ssl_context)
        else:
            site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True, reuse_port=self._reuse_port or None, ssl_context=self._ssl_context)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        if self._unix_path is not None:
            self.address = f"unix:{self._unix_path}"
            return self.address
        port = self._runner.addresses[0][1]
        self.address = f"[{self._host}]:{port}" if ":" in self._host else f"{self._host}:{port}"
        return self.address

    async def aclose(self, grace_s: float | None = None) -> None:
        """Stop listening, let in-flight requests finish for up to ``grace_s`` (default: the drain timeout), then
        close every connection (requests still running then are cancelled)."""
        for site in list(self._runner.sites):
            await site.stop()
        if not self._idle.is_set():
            grace = self._drain_timeout_s if grace_s is None else grace_s
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                log.warning("REST: %d requests still running after %.1f s; closing their connections", self._inflight, grace)
        await self._runner.cleanup()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- plumbing ------------------------------------------------------------------------------

    def _routes(self, router: web.UrlDispatcher) -> None:
        def add(method: str, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], rpc: str) -> None:
            if method == "GET":
                router.add_get(path, handler)  # and HEAD
            else:
                router.add_route(method, path, handler)
            self._rpc_of[handler] = rpc  # what ``_access`` authorizes the route as

        add("GET", "/v2/health/live", self._live, _HEALTH)
        add("GET", "/v2/health/ready", self._ready, _HEALTH)
        add("GET", "/v2", self._server_metadata, _SERVICE + "ServerMetadata")
        add("GET", "/v2/", self._server_metadata, _SERVICE + "ServerMetadata")  # the OIP OpenAPI document writes it with the slash
        add("GET", "/v2/models/stats", self._statistics, _SERVICE + "ModelStatistics")
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            add("GET", prefix, self._model_metadata, _SERVICE + "ModelMetadata")
            add("GET", prefix + "/ready", self._model_ready, _SERVICE + "ModelReady")
            add("GET", prefix + "/config", self._model_config, _SERVICE + "ModelConfig")
            add("GET", prefix + "/stats", self._statistics, _SERVICE + "ModelStatistics")
            add("POST", prefix + "/infer", self._infer, _SERVICE + "ModelInfer")
        add("POST", "/v2/repository/index", self._repository_index, _SERVICE + "RepositoryIndex")
        add("POST", "/v2/repository/models/{model}/load", self._load, _SERVICE + "RepositoryModelLoad")
        add("POST", "/v2/repository/models/{model}/unload", self._unload, _SERVICE + "RepositoryModelUnload")
        for path, kind in (("systemsharedmemory", "system"), ("cudasharedmemory", "cuda")):
            rpc = "SystemSharedMemory" if kind == "system" else "CudaSharedMemory"
            add("GET", f"/v2/{path}/status", self._shared_memory(kind, "Status"), _SERVICE + f"{rpc}Status")
            add("GET", f"/v2/{path}/region/{{region}}/status", self._shared_memory(kind, "Status"), _SERVICE + f"{rpc}Status")
            add("POST", f"/v2/{path}/region/{{region}}/register", self._shared_memory(kind, "Register"), _SERVICE + f"{rpc}Register")
            add("POST", f"/v2/{path}/unregister", self._shared_memory(kind, "Unregister"), _SERVICE + f"{rpc}Unregister")
            add("POST", f"/v2/{path}/region/{{region}}/unregister", self._shared_memory(kind, "Unregister"), _SERVICE + f"{rpc}Unregister")
        for path in ("/v2/trace/setting", "/v2/models/{model}/trace/setting"):
            add("GET", path, self._trace_setting, _SERVICE + "TraceSetting")
            add("POST", path, self._trace_setting, _SERVICE + "TraceSetting")
        add("*", "/v2/logging", self._log_settings, _SERVICE + "LogSettings")

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Every failure as ``{"error": ...}`` with its HTTP status; the connection stays usable. Counts requests in flight."""
        self._inflight += 1
        self._idle.clear()
        try:
            return await handler(request)
        except _BodyTimeout as exc:
            reply = _error(408, str(exc))
            reply.force_close()  # the rest of the body may never come
            return reply
        except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method, ...
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return _error(exc.status, _http_reason(exc, request), headers)
        except Exception as exc:  # errors.* raised by the data plane or at this edge (a body that is not a request), or a bug
            reply = _failure(exc)
            if isinstance(exc, _BodyTooLarge):
                reply.force_close()  # do not read the rest of a body over the limit
            return reply
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    @web.middleware
    async def _access(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Authorize every route as the RPC it stands for, before its handler reads anything of the body."""
        if self._authorize is not None:
            rpc = self._rpc_of.get(request.match_info.handler)
            if rpc is not None:  # None: no such route (aiohttp answers 404/405)
                self._authorize(rpc, request.headers.get("Authorization"))
        return await handler(request)

    async def _read(self, request: web.Request) -> tuple[list[bytes], str]:
        """The body as it arrived (its pieces) and its content coding, bounded in size and time."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
        if encoding not in _ENCODINGS:
            raise web.HTTPUnsupportedMediaType(text=f"Content-Encoding '{encoding[:40]}' is not supported; send gzip, deflate or identity")
        limit = self._max_request_bytes
        if (request.content_length or 0) > limit:
            raise self._too_large()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._body_timeout_s
        pieces: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(None) as timer:
                while True:
                    timer.reschedule(min(deadline, loop.time() + self._idle_timeout_s))
                    piece = await request.content.readany()
                    if not piece:
                        break
                    size += len(piece)
                    if size > limit:
                        raise self._too_large()
                    pieces.append(piece)
        except TimeoutError:
            raise _BodyTimeout(
                f"the request body did not arrive in time ({size} bytes received; a body may take {self._body_timeout_s:g} s in all "
                f"and pause {self._idle_timeout_s:g} s at most)"
            ) from None
        except ConnectionError:  # the client went away before sending the body its Content-Length announced
            raise errors.InvalidInput("the connection closed before the request body was complete (shorter than its Content-Length)") from None
        return pieces, encoding

    def _too_large(self) -> errors.LimitExceeded:
        return _BodyTooLarge(f"the request body is larger than the server's limit of {self._max_request_bytes} bytes; send a smaller batch")

    async def _decoded(self, request: web.Request, decode: Callable[[Iterable[bytes]], _T]) -> _T:
        """Read the body and run ``decode`` on its (inflated) pieces: in place when small and not compressed, else in the pool."""
        pieces, encoding = await self._read(request)
        if encoding == "identity" and sum(map(len, pieces)) <= INLINE_BYTES:
            return decode([b"".join(pieces)])  # one piece: the decoders yield the GIL between pieces, which the loop must not
        return await self._offload(lambda: decode(_Inflated(pieces, encoding, self._max_request_bytes)))

    async def _offload(self, work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def _log_settings(self, request: web.Request) -> web.Response:
        self._plane.log_settings()  # UNIMPLEMENTED, with what to do instead
        raise AssertionError("LogSettings answered over HTTP")  # pragma: no cover

    def _shared_memory(self, kind: str, action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A shared-memory route: the data plane's status, register or unregister with the JSON Triton's REST edge uses."""

        async def handler(request: web.Request) -> web.Response:
            name = request.match_info.get("region", "")
            metadata = _metadata(request)
            if action == "Status":
                regions = self._plane.shared_memory_status(kind, name, metadata)
                if kind == "system":
                    return _json([{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions])
                return _json([{"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size} for r in regions])
            if action == "Register":  # authorized before the body is read, like every route (``_access``)
                doc = await self._decoded(request, lambda pieces: rest_codec.json_body(pieces, "the register request body"))
                fields = shared_memory.register_from_json(kind, name, doc)
                if kind == "system":
                    await self._plane.register_system_shared_memory(**fields, metadata=metadata)
                else:
                    await self._plane.register_cuda_shared_memory(**fields, metadata=metadata)
            else:
                await self._plane.unregister_shared_memory(kind, name, metadata)
            return _json({})

        return handler

    # -- health and metadata -------------------------------------------------------------------

    async def _live(self, request: web.Request) -> web.Response:
        live = self._plane.live()
        return _json({"live": live}, 200 if live else 400)

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self._plane.ready()
        return _json({"ready": ready}, 200 if ready else 400)

    async def _server_metadata(self, request: web.Request) -> web.Response:
        name, version, extensions = self._plane.server_metadata()
        return _json({"name": name, "version": version, "extensions": [*extensions, *(e for e in HTTP_EXTENSIONS if e not in extensions)]})

    async def _model_metadata(self, request: web.Request) -> web.Response:
        return _json(_metadata_json(self._plane.model_metadata(*_model(request))))

    async def _model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        ready = self._plane.model_ready(name, version)
        return _json({"name": name, "ready": ready}, 200 if ready else 400)

    async def _model_config(self, request: web.Request) -> web.Response:
        return _json(rest_codec.message_to_json(model_config_message(self._plane.model_config(*_model(request)))))

    async def _statistics(self, request: web.Request) -> web.Response:
        response = await self._plane.statistics(request.match_info.get("model", ""), request.match_info.get("version", ""), _metadata(request))
        return _json(rest_codec.message_to_json(response))

    # -- inference -----------------------------------------------------------------------------

    async def _infer(self, request: web.Request) -> web.Response:
        header_length = request.headers.get(rest_codec.HEADER_LENGTH)
        model, version = request.match_info["model"], request.match_info.get("version", "")
        try:
            infer = await self._decoded(request, lambda body: rest_codec.decode_infer_request(body, header_length, model, version))
        except errors.InferenceServerError as exc:  # never reached a model: counted as the data plane counts unrouted requests
            self._plane.refused(exc)
            raise
        try:
            response, arrays = await self._plane.infer(infer.message, _metadata(request), None, _encode_arrays)
        except Exception as exc:
            return _failure(exc, infer.message.id)
        if sum(math.prod(t.shape) for t in response.outputs) <= INLINE_ELEMENTS:
            body, header_length_out = rest_codec.encode_infer_response(response, arrays, infer)
        else:
            body, header_length_out = await self._offload(lambda: rest_codec.encode_infer_response(response, arrays, infer))
        if header_length_out is None:
            reply = web.Response(body=body, content_type=_JSON)
        else:
            reply = web.Response(body=body, content_type="application/octet-stream", headers={rest_codec.HEADER_LENGTH: str(header_length_out)})
        accept = request.headers.get("Accept-Encoding", "")
        if "gzip" in accept or "deflate" in accept:
            reply.enable_compression()  # what the client accepts (tritonclient's response_compression_algorithm)
        return reply

    async def _trace_setting(self, request: web.Request) -> web.Response:
        """Triton's trace extension over REST (JSON in and out: ``tracing.py``)."""
        doc = await self._decoded(request, lambda pieces: rest_codec.optional_object(pieces, "the trace-setting body")) if request.method == "POST" else {}
        changes = tracing.setting_request(doc)
        return _json(tracing.setting_json(self._plane.trace_setting(request.match_info.get("model", ""), changes)))

    # -- repository ----------------------------------------------------------------------------

    async def _repository_index(self, request: web.Request) -> web.Response:
        ready = await self._decoded(request, rest_codec.index_ready)
        return _json([{"name": row.name, "version": row.version, "state": row.state, "reason": row.reason} for row in self._plane.repository_index(ready)])

    async def _load(self, request: web.Request) -> web.Response:
        parameters = await self._decoded(request, rest_codec.load_parameters)
        await self._plane.load(request.match_info["model"], parameters, _metadata(request))
        return web.Response(status=200)

    async def _unload(self, request: web.Request) -> web.Response:
        await self._read(request)  # {"parameters": {"unload_dependents": ...}}: Surge has no dependent models
        await self._plane.unload(request.match_info["model"], _metadata(request))
        return web.Response(status=200)


async def _encode_arrays(
    request: Any, spec: Any, version: str, outputs: dict[str, np.ndarray], decoded: codec.DecodedRequest
) -> tuple[pb.ModelInferResponse, list[np.ndarray]]:
    """``DataPlane.infer``'s encoder for this edge: the outputs' descriptions and arrays (classified, written into shared
    memory where asked); ``rest_codec.encode_infer_response`` writes the body from them after the request is answered."""
    return codec.encode_outputs(request, spec, version, outputs, decoded.output_names, decoded.classes, decoded.targets)


def _metadata_json(meta: ModelMetadata) -> dict[str, Any]:
    inputs, outputs = ([{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in ts] for ts in (meta.inputs, meta.outputs))
    return {"name": meta.name, "versions": meta.versions, "platform": meta.platform, "inputs": inputs, "outputs": outputs}


class _Inflated:
    """A body's inflated pieces, as a re-iterable (``jsonread`` may read a text twice): each pass inflates anew."""

    __slots__ = ("_pieces", "_encoding", "_limit")

    def __init__(self, pieces: list[bytes], encoding: str, limit: int) -> None:
        self._pieces, self._encoding, self._limit = pieces, encoding, limit

    def __iter__(self) -> Iterator[bytes]:
        return _inflate(self._pieces, self._encoding, self._limit)


def _inflate(pieces: list[bytes], encoding: str, limit: int) -> Iterator[bytes]:
    """The body's pieces decoded from its content coding, at most ``jsonread.CHUNK`` bytes at a time, stopping with
    LimitExceeded as soon as the output passes ``limit`` (a small bomb never inflates past it)."""
    if encoding == "identity":
        yield from pieces
        return
    first = pieces[0][:1] if pieces else b""
    # gzip (RFC 1952); deflate is zlib-wrapped (RFC 1950) as HTTP says, or raw as some clients send it
    wbits = 31 if encoding != "deflate" else 15 if first and first[0] & 0x0F == 8 else -15
    name = "gzip" if wbits == 31 else "deflate"
    inflater = zlib.decompressobj(wbits)
    total = 0
    try:
        for index, piece in enumerate(pieces):
            data = piece
            while data:
                out = inflater.decompress(data, CHUNK)
                data = inflater.unconsumed_tail
                total += len(out)
                if total > limit:
                    raise _BodyTooLarge(
                        f"the request body inflates past the server's limit of {limit} bytes (Content-Encoding: {encoding}); send a smaller batch"
                    )
                if out:
                    yield out
                if inflater.eof:
                    if inflater.unused_data or any(pieces[index + 1:]):
                        raise errors.InvalidInput(f"the request body has data after the end of its {name} stream")
                    return
    except zlib.error as exc:
        raise errors.InvalidInput(f"the request body is not valid {name} data (its Content-Encoding says {encoding}): {exc}") from None
    raise errors.InvalidInput(f"the request body's {name} data is incomplete (its Content-Encoding says {encoding})")


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


def _challenge(status: str) -> dict[str, str] | None:
    return {"WWW-Authenticate": "Bearer"} if status == "UNAUTHENTICATED" else None


def _http_reason(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        return f"no such route: {request.method} {request.path} (the Open Inference Protocol's routes start with /v2)"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path}; use {exc.headers.get('Allow', 'another method')}"
    return exc.text or exc.reason
