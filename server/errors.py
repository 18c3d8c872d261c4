"""Protocol-neutral errors of the serving core, and the status each one is answered with.

Nothing here imports grpc. Every module below the edges raises these; ``STATUS_NAME_OF`` is the one table from
an error class to its status, named as gRPC names its codes (the vocabulary of statistics, metrics and both
edges); each edge maps a name to its wire once (``grpc_servicer.STATUS_OF``: gRPC codes, ``rest.HTTP_STATUS_OF``:
HTTP statuses). Anything not listed is INTERNAL with a request id (the traceback goes to the log, never to the client).

    InferenceServerError
    ├── InvalidInput            INVALID_ARGUMENT   malformed request: names the tensor and what was expected
    │   └── RowsRejected        INVALID_ARGUMENT   some rows of a batch cannot be used (e.g. undecodable images)
    ├── ModelNotFound           NOT_FOUND          no such model in the repository
    ├── VersionNotFound         NOT_FOUND          the model exists, the version does not (or is not loaded)
    ├── ModelNotReady           UNAVAILABLE        loading, unloading or failed to load; retryable
    ├── QueueFull               UNAVAILABLE        load shedding; retryable with backoff
    ├── DeadlineExpired         DEADLINE_EXCEEDED  the request's deadline passed before it was computed
    ├── LimitExceeded           RESOURCE_EXHAUSTED a configured size limit; names the limit and its value
    ├── Unsupported             UNIMPLEMENTED      a feature or datatype that is not built (yet)
    ├── RuntimeFailure          INTERNAL           the model's runtime raised
    │   ├── ExecutionTimeout    DEADLINE_EXCEEDED  a batch ran past the model's execution_timeout_s (instance replaced)
    │   └── InstanceCrashed     UNAVAILABLE        a Python model's process died during the batch (instance restarted)
    ├── Unauthenticated         UNAUTHENTICATED    no bearer token, or one the server does not know
    ├── PermissionDenied        PERMISSION_DENIED  a known token without the scope the method needs
    ├── ConfigError             INVALID_ARGUMENT   a model or server configuration is invalid (names the key path)
    └── Relayed                 (its own)          a sibling worker's refusal of a call passed on to it
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "DeadlineExpired",
    "ExecutionTimeout",
    "InferenceServerError",
    "InstanceCrashed",
    "InvalidInput",
    "LimitExceeded",
    "ModelNotFound",
    "ModelNotReady",
    "PermissionDenied",
    "QueueFull",
    "Relayed",
    "RepositoryFixed",
    "RowsRejected",
    "RuntimeFailure",
    "Unauthenticated",
    "Unsupported",
    "VersionNotFound",
]


class InferenceServerError(Exception):
    """Base of every error the server reports to a client; ``str(err)`` is the client-facing message."""


class InvalidInput(InferenceServerError):
    """The request does not match the model's signature or the protocol (INVALID_ARGUMENT)."""


class RowsRejected(InvalidInput):
    """Some rows of a batch cannot be used; ``reasons`` maps a row of the batch to why.

    A batch holds rows of several requests: the model fails only the requests that own a rejected row
    (``for_rows`` gives each its own error, rows counted from its first) and runs the others again without them.
    """

    def __init__(self, prefix: str, reasons: dict[int, str]) -> None:
        self.prefix = prefix
        self.reasons = dict(sorted(reasons.items()))
        shown = list(self.reasons.items())[:3]
        more = f" (and {len(self.reasons) - 3} more rows)" if len(self.reasons) > 3 else ""
        super().__init__(f"{prefix}: " + "; ".join(f"row {row}: {why}" for row, why in shown) + more)

    def for_rows(self, start: int, count: int) -> RowsRejected | None:
        """The error of the request holding batch rows ``start .. start+count-1`` (None when none is rejected)."""
        mine = {row - start: why for row, why in self.reasons.items() if start <= row < start + count}
        return RowsRejected(self.prefix, mine) if mine else None


class ModelNotFound(InferenceServerError):
    """No model of that name is known (NOT_FOUND)."""


class VersionNotFound(InferenceServerError):
    """The model is known but the version is not served (NOT_FOUND)."""


class ModelNotReady(InferenceServerError):
    """The model exists but cannot serve now: loading, unloading, or failed to load (UNAVAILABLE)."""


class RepositoryFixed(ModelNotReady):
    """A repository load or unload in the ``none`` control mode: UNAVAILABLE with Triton's words (model_analyzer
    recognises them and tells its user to start the server in explicit mode)."""


class QueueFull(InferenceServerError):
    """The model's queue is at its bound; the request was rejected at once (UNAVAILABLE)."""


class DeadlineExpired(InferenceServerError):
    """The request's deadline passed while it waited; it was dropped before compute (DEADLINE_EXCEEDED)."""


class LimitExceeded(InferenceServerError):
    """A configured size limit was exceeded (RESOURCE_EXHAUSTED)."""


class Unsupported(InferenceServerError):
    """The request asks for something Surge does not implement (UNIMPLEMENTED)."""


class RuntimeFailure(InferenceServerError):
    """The runtime raised while executing; the message carries no internals (INTERNAL)."""


class ExecutionTimeout(RuntimeFailure):
    """A batch did not finish within the model's ``execution_timeout_s``; its instance is replaced (DEADLINE_EXCEEDED:
    the server's own deadline for the call passed; not retried by clients, since the same input may hang again)."""


class InstanceCrashed(RuntimeFailure):
    """A Python model's process exited or was killed during the batch; the instance restarts (UNAVAILABLE, retryable)."""


class Unauthenticated(InferenceServerError):
    """The call carries no valid credentials (UNAUTHENTICATED)."""


class PermissionDenied(InferenceServerError):
    """The credentials are valid but lack the scope the call needs (PERMISSION_DENIED)."""


class ConfigError(InferenceServerError, ValueError):
    """A configuration is invalid; the message names the key path and what is expected."""


class Relayed(InferenceServerError):
    """Another worker's refusal of a call this server passed on (``peers.py``): answered with its status and message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


#: Error class -> the status it is answered with (subclasses resolve through their MRO; see the module docstring).
STATUS_NAME_OF: dict[type[BaseException], str] = {
    InvalidInput: "INVALID_ARGUMENT",
    ConfigError: "INVALID_ARGUMENT",
    ModelNotFound: "NOT_FOUND",
    VersionNotFound: "NOT_FOUND",
    ModelNotReady: "UNAVAILABLE",
    QueueFull: "UNAVAILABLE",
    DeadlineExpired: "DEADLINE_EXCEEDED",
    LimitExceeded: "RESOURCE_EXHAUSTED",
    Unsupported: "UNIMPLEMENTED",
    RuntimeFailure: "INTERNAL",
    ExecutionTimeout: "DEADLINE_EXCEEDED",
    InstanceCrashed: "UNAVAILABLE",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
}


def status_name(exc: BaseException) -> str:  # not in __all__, which lists the error classes
    """The status an error is answered with (``STATUS_NAME_OF``; a relayed refusal keeps its own; else INTERNAL)."""
    if exc.__class__ is Relayed:
        return exc.status
    for cls in type(exc).__mro__:
        name = STATUS_NAME_OF.get(cls)
        if name is not None:
            return name
    return "INTERNAL"


def without_root(text: str, root: Path) -> str:  # not in __all__, which lists the error classes
    """``text`` with the absolute path of ``root`` (the model repository) taken out of every path in it, for clients:
    ``Load model from /srv/models/m/1/model.onnx failed`` -> ``Load model from m/1/model.onnx failed``.

    Every reason a model version or the repository keeps (and answers with) passes through here; the log keeps the
    full text. Both the path as configured and its resolved form (symlinks followed) are removed.
    """
    for prefix in sorted({str(root.absolute()), str(root.resolve())}, key=len, reverse=True):
        if prefix != "/":
            text = text.replace(prefix + "/", "").replace(prefix, "<model repository>")
    return text
