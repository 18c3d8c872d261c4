"""Who may call what, and what a request may touch on disk: the server's one place for access control.

- **Scopes.** Every RPC needs one scope, read from ``METHOD_SCOPES`` (exact method first, then its service
  prefix ``/package.Service/``; anything not listed needs ``inference``). ``admin`` covers repository
  changes and the ``surge.v1.Admin`` service; health checks and reflection are open so probes work.
- **Tokens.** ``TokenAuth`` holds static bearer tokens, each with its scopes, read from a file or an
  environment variable (``parse_tokens`` gives the format). Only SHA-256 digests are kept; a presented
  token's digest is compared with every known one by ``hmac.compare_digest`` (constant time, and no early
  exit, so the time taken says nothing about which token or how much of it matched).
- **Admin switch.** With ``admin_enabled=False`` every admin-scope method answers UNIMPLEMENTED ("disabled
  on this server"): the server does not offer them at all, so no credential would help (PERMISSION_DENIED
  would suggest another token might).
- **Transport-neutral.** ``SecurityPolicy.authorize(method, authorization)`` and ``TokenAuth.check(header,
  scope)`` take the ``authorization`` header's value and raise ``errors.Unauthenticated`` /
  ``PermissionDenied`` / ``Unsupported``; a REST edge calls them with its own header. ``auth_interceptor``
  makes the gRPC edge's single interceptor over them (installed only when tokens are configured or admin is
  disabled: otherwise it costs nothing).
- **Repository confinement** (names and paths from a request stay inside the repository root, a load request
  cannot opt into pickle loading) belongs to the repository: ``repository.check_model_name``, ``confine``,
  ``check_load_overrides``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import errors

if TYPE_CHECKING:
    import grpc

__all__ = [
    "ADMIN",
    "INFERENCE",
    "METHOD_SCOPES",
    "OPEN",
    "SecurityPolicy",
    "TokenAuth",
    "auth_interceptor",
    "parse_tokens",
    "scope_of",
]

INFERENCE = "inference"
ADMIN = "admin"
OPEN = ""
"""No credentials needed."""
SCOPES = (INFERENCE, ADMIN)

#: Method (``/package.Service/Method``) or service prefix (``/package.Service/``) -> the scope it needs.
#: Not listed: ``INFERENCE``. Extend here (one table) when a service is added.
METHOD_SCOPES: dict[str, str] = {
    "/inference.GRPCInferenceService/RepositoryModelLoad": ADMIN,
    "/inference.GRPCInferenceService/RepositoryModelUnload": ADMIN,
    "/surge.v1.Admin/": ADMIN,
    "/surge.v1.Feedback/": INFERENCE,
    "/grpc.health.v1.Health/": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/": OPEN,
    "/grpc.reflection.v1.ServerReflection/": OPEN,
}

#: Environment variable holding tokens (same format as the tokens file; ``;`` also separates entries).
TOKENS_ENV = "SURGE_AUTH_TOKENS"


def scope_of(method: str) -> str:
    """The scope a fully qualified gRPC method name needs (``OPEN`` for none)."""
    scope = METHOD_SCOPES.get(method)
    if scope is not None:
        return scope
    return METHOD_SCOPES.get(method[: method.rfind("/") + 1], INFERENCE)


def parse_tokens(text: str, source: str) -> list[tuple[str, frozenset[str]]]:
    """Parse token entries: one per line (or ``;``-separated), ``SCOPES TOKEN`` where SCOPES is
    ``inference``, ``admin`` or ``inference,admin``; blank lines and ``#`` comments are skipped.

    Raises ConfigError naming ``source`` and the entry number (never the token itself).
    """
    entries: list[tuple[str, frozenset[str]]] = []
    for number, line in enumerate(text.replace(";", "\n").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise errors.ConfigError(f"{source}: entry {number}: expected 'SCOPES TOKEN' (e.g. 'inference,admin s3cr3t'), got {len(parts)} fields")
        scopes = frozenset(s.strip() for s in parts[0].split(",") if s.strip())
        unknown = sorted(scopes - set(SCOPES))
        if not scopes or unknown:
            raise errors.ConfigError(f"{source}: entry {number}: unknown scope(s) {unknown or ['(none)']}; scopes are {', '.join(SCOPES)}")
        if len(parts[1]) < 16:
            raise errors.ConfigError(f"{source}: entry {number}: tokens must be at least 16 characters")
        entries.append((parts[1], scopes))
    return entries


class TokenAuth:
    """Static bearer tokens with scopes; only their SHA-256 digests are kept."""

    def __init__(self, entries: Iterable[tuple[str, Iterable[str]]]) -> None:
        self._digests: list[tuple[bytes, frozenset[str]]] = [
            (hashlib.sha256(token.encode("utf-8")).digest(), frozenset(scopes)) for token, scopes in entries
        ]
        if not self._digests:
            raise errors.ConfigError("bearer-token auth is on but no token is configured")

    @classmethod
    def load(cls, file: Path | None = None, environ: Mapping[str, str] | None = None) -> TokenAuth | None:
        """Tokens from ``file`` and the ``SURGE_AUTH_TOKENS`` variable; None when neither gives any (auth off)."""
        entries: list[tuple[str, frozenset[str]]] = []
        if file is not None:
            try:
                text = file.read_text(encoding="utf-8")
            except OSError as exc:
                raise errors.ConfigError(f"cannot read the auth tokens file {file}: {exc.strerror or exc}") from None
            entries += parse_tokens(text, str(file))
            if not entries:
                raise errors.ConfigError(f"the auth tokens file {file} holds no token")
        value = (os.environ if environ is None else environ).get(TOKENS_ENV, "")
        if value.strip():
            entries += parse_tokens(value, f"${TOKENS_ENV}")
        return cls(entries) if entries else None

    def scopes(self, authorization: str | None) -> frozenset[str]:
        """The scopes of the token in an ``authorization`` header value; raises Unauthenticated."""
        if not authorization:
            raise errors.Unauthenticated("missing credentials: send the metadata 'authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.Unauthenticated("the authorization metadata must be 'Bearer <token>'")
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        granted: frozenset[str] = frozenset()
        found = False
        for known, scopes in self._digests:  # every entry, no early exit
            if hmac.compare_digest(digest, known):
                granted, found = scopes, True
        if not found:
            raise errors.Unauthenticated("invalid bearer token")
        return granted

    def check(self, authorization: str | None, scope: str, what: str = "this call") -> None:
        """Raise Unauthenticated (no or unknown token) or PermissionDenied (token without ``scope``)."""
        if scope == OPEN:
            return
        if scope not in self.scopes(authorization):
            raise errors.PermissionDenied(f"{what} needs the '{scope}' scope, which this token does not have")


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    """Token auth (None: off) and whether admin methods are offered."""

    auth: TokenAuth | None = None
    admin_enabled: bool = True

    @property
    def active(self) -> bool:
        """Whether any call can be refused (else the gRPC edge installs no interceptor)."""
        return self.auth is not None or not self.admin_enabled

    def authorize(self, method: str, authorization: str | None) -> None:
        """Check one call of ``method`` (``/package.Service/Method``); raises the error to answer with."""
        scope = scope_of(method)
        name = method.rsplit("/", 1)[-1] or method
        if scope == ADMIN and not self.admin_enabled:
            raise errors.Unsupported(f"{name} is an admin RPC, and admin RPCs are disabled on this server (--disable-admin)")
        if self.auth is not None:
            self.auth.check(authorization, scope, name)


def _authorization(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


def auth_interceptor(policy: SecurityPolicy, status_of: Callable[[BaseException], grpc.StatusCode]) -> grpc.aio.ServerInterceptor:
    """The gRPC edge of ``policy``: one interceptor; a refused call is answered with the error's status, never run.

    (grpc is imported here, not at the top, so the repository and a REST edge can use this module without it.)
    """
    import grpc

    def refusal(handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
        """A handler of the same kind as ``handler`` that aborts with ``code`` before reading anything."""

        async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(code, message)

        serializers = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(abort, **serializers)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(abort, **serializers)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(abort, **serializers)
        return grpc.unary_unary_rpc_method_handler(abort, **serializers)

    class AuthInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]], details: grpc.HandlerCallDetails
        ) -> grpc.RpcMethodHandler[Any, Any] | None:
            try:
                policy.authorize(details.method, _authorization(details.invocation_metadata))
            except errors.InferenceServerError as exc:
                handler = await continuation(details)
                return refusal(handler, status_of(exc), str(exc)) if handler is not None else handler
            return await continuation(details)

    return AuthInterceptor()
