"""Errors raised by Surge's clients, one class per gRPC status a caller may want to handle.

Every failed call raises an ``InferenceServerError`` carrying the status (``.code``, a ``grpc.StatusCode``) and
the server's message (``.message``); ``str(err)`` reads ``"NOT_FOUND: model 'x' is not in the repository"``.
gRPC errors are translated at one boundary, ``map_rpc_error``, which picks the most specific class; a status
without a class of its own (UNKNOWN, ABORTED, ...) gives the base class with that code.

    InferenceServerError                any failed call; .code, .message, .request_id
    ├── InvalidArgumentError            INVALID_ARGUMENT    malformed request (bad shape, dtype, missing tensor)
    ├── NotFoundError                   NOT_FOUND           no such model or version
    ├── UnavailableError                UNAVAILABLE         server unreachable, model not ready, queue full; retried
    ├── DeadlineExceededError           DEADLINE_EXCEEDED   the call's timeout passed
    ├── ResourceExhaustedError          RESOURCE_EXHAUSTED  a size limit (message, batch, elements)
    ├── UnimplementedError              UNIMPLEMENTED       an RPC, feature or datatype the server lacks
    ├── InternalError                   INTERNAL            the model or server failed
    ├── UnauthenticatedError            UNAUTHENTICATED
    ├── PermissionDeniedError           PERMISSION_DENIED
    └── RequestCancelledError           CANCELLED           the call was cancelled (not asyncio.CancelledError)
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

__all__ = [
    "DeadlineExceededError",
    "InferenceServerError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "error_for_status",
    "error_from_stream_message",
    "map_rpc_error",
]


class InferenceServerError(Exception):
    """A call to the server failed.

    Attributes:
        code: the gRPC status (``grpc.StatusCode``) the call ended with.
        message: the server's details string (or the stream's ``error_message``).
        request_id: the request's id where the failure concerns one request (stream errors), else ``""``.
    """

    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None, *, request_id: str = "") -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = self.default_code if code is None else code
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.code})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles ``self.args`` only; keep the code and id across processes (load generator workers).
        return (type(self), (self.message, self.code), {"request_id": self.request_id})


class InvalidArgumentError(InferenceServerError):
    """The server rejected the request as malformed: shape, datatype, missing or unknown tensor (INVALID_ARGUMENT)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(InferenceServerError):
    """The model or version does not exist on the server (NOT_FOUND)."""

    default_code = grpc.StatusCode.NOT_FOUND


class UnavailableError(InferenceServerError):
    """The server is unreachable, the model is not ready, or its queue is full (UNAVAILABLE); clients retry it."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(InferenceServerError):
    """The call's timeout passed before the server answered (DEADLINE_EXCEEDED)."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhaustedError(InferenceServerError):
    """A configured limit was exceeded: message size, batch size, element count (RESOURCE_EXHAUSTED)."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnimplementedError(InferenceServerError):
    """The server does not implement the RPC, feature or datatype (UNIMPLEMENTED)."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(InferenceServerError):
    """The model's runtime or the server failed (INTERNAL); the message carries a request id, not a traceback."""

    default_code = grpc.StatusCode.INTERNAL


class UnauthenticatedError(InferenceServerError):
    """The call lacked valid credentials (UNAUTHENTICATED)."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(InferenceServerError):
    """The caller may not perform this call (PERMISSION_DENIED)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class RequestCancelledError(InferenceServerError):
    """The call was cancelled, by the client or the server (CANCELLED); distinct from ``asyncio.CancelledError``."""

    default_code = grpc.StatusCode.CANCELLED


_CLASS_OF_STATUS: dict[grpc.StatusCode, type[InferenceServerError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        UnavailableError,
        DeadlineExceededError,
        ResourceExhaustedError,
        UnimplementedError,
        InternalError,
        UnauthenticatedError,
        PermissionDeniedError,
        RequestCancelledError,
    )
}
_STATUS_OF_NAME: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}


def error_for_status(code: grpc.StatusCode, message: str, *, request_id: str = "") -> InferenceServerError:
    """The most specific ``InferenceServerError`` for a status code (the base class when none is more specific)."""
    return _CLASS_OF_STATUS.get(code, InferenceServerError)(message, code, request_id=request_id)


def map_rpc_error(error: grpc.RpcError) -> InferenceServerError:
    """Translate a ``grpc.RpcError`` (sync) or ``grpc.aio.AioRpcError`` into the most specific client error.

    Both carry ``code()`` and ``details()``; an RpcError without them (which gRPC does not raise from calls)
    becomes the base class with UNKNOWN and ``str(error)`` as the message.
    """
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else None
    details = details_of() if callable(details_of) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_for_status(code, details if details is not None else str(error))


def error_from_stream_message(message: str, *, request_id: str = "", code_name: str = "") -> InferenceServerError:
    """The error for a stream response's ``error_message`` (Triton sends a message but no status code).

    ``code_name``: the status name Surge sends beside the message (its ``surge_status_code`` response parameter);
    the error is that status's class. Without it, a message that starts with a status name and a colon
    (``"NOT_FOUND: ..."``, as Surge servers before the parameter wrote it) maps to that status's class, with the
    prefix removed; any other message gives the base class with UNKNOWN.
    """
    if code_name:
        code = _STATUS_OF_NAME.get(code_name)
        rest = message
    else:
        name, sep, rest = message.partition(": ")
        code = _STATUS_OF_NAME.get(name) if sep else None
    if code is None or code is grpc.StatusCode.OK:
        return InferenceServerError(message, request_id=request_id)
    return error_for_status(code, rest, request_id=request_id)
