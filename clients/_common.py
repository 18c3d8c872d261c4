"""What the sync and asyncio clients share: channel options, one ``UnaryCall`` per RPC, the retry policy.

Each client method builds a ``UnaryCall`` here (the RPC's name, its request, how to read its response) and
hands it to the client's ``_unary``, the only place that differs between sync and asyncio (``time.sleep``
versus ``await asyncio.sleep``). Nothing here touches a channel.
"""

from __future__ import annotations

import json
import operator
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

import grpc
import numpy.typing as npt

from surge.clients._codec import InferResult, ParameterValue, decode_infer_response, encode_infer_request
from surge.protos import grpc_service_pb2 as pb
from surge.protos import model_config_pb2

__all__ = [
    "ChannelOptions",
    "channel_target",
    "ClientSettings",
    "Metadata",
    "RetryState",
    "UnaryCall",
    "infer",
    "is_model_ready",
    "is_server_live",
    "is_server_ready",
    "load_model",
    "model_config",
    "model_metadata",
    "model_statistics",
    "repository_index",
    "server_metadata",
    "unload_model",
]

T = TypeVar("T")
ChannelOptions: TypeAlias = Sequence[tuple[str, Any]]
Metadata: TypeAlias = Mapping[str, str] | Sequence[tuple[str, str]]

#: gRPC's default message limit is 4 MiB; tensors are larger. Same as tritonclient (INT32_MAX both ways).
_MAX_MESSAGE_BYTES = 2**31 - 1
_DEFAULT_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.max_send_message_length": _MAX_MESSAGE_BYTES,
    "grpc.max_receive_message_length": _MAX_MESSAGE_BYTES,
    # Client-side load balancing: one connection to every address the target resolves to (a list of addresses,
    # or a DNS name with several records such as a Kubernetes headless Service), calls spread round-robin, and
    # a server that goes away leaves the rotation. With a single address it is the same as gRPC's pick_first.
    "grpc.lb_policy_name": "round_robin",
}
#: Backoff delays are stretched by up to this fraction at random, so that clients retrying together spread out.
_JITTER = 0.1


def channel_target(address: str | Sequence[str]) -> str:
    """The gRPC target for ``address``: ``"host:port"``, a gRPC target URI (``dns:///name:port``,
    ``unix:///path.sock``, ``ipv4:a:p,b:q``), or several ``"ip:port"`` (a list, or one comma-separated string),
    which become one ``ipv4:``/``ipv6:`` target that the round_robin policy spreads calls over.

    Raises ValueError for an empty list, or for several addresses that are not IP literals (gRPC's static
    address list takes only IPs; for names, use one DNS name that resolves to all of them: ``dns:///name:port``).
    """
    parts = [a.strip() for a in (address.split(",") if isinstance(address, str) else address)]
    if not parts or not all(parts):
        raise ValueError(f"address: expected 'host:port' or a list of them, got {address!r}")
    if len(parts) == 1:
        return parts[0]
    if any(p.startswith(("ipv4:", "ipv6:", "dns:", "unix:")) for p in parts):
        raise ValueError(f"address: several addresses are plain 'ip:port' (no scheme), got {address!r}")
    hosts = [p.rsplit(":", 1)[0] for p in parts]
    if all(_is_ip(h, 4) for h in hosts):
        return "ipv4:" + ",".join(parts)
    if all(h.startswith("[") and _is_ip(h[1:-1], 6) for h in hosts):
        return "ipv6:" + ",".join(parts)
    raise ValueError(
        f"address: several addresses must all be IPv4 'a.b.c.d:port' or all IPv6 '[::1]:port', got {address!r}; "
        "for host names, use one DNS name that resolves to every server ('dns:///surge.default.svc:8001')"
    )


def _is_ip(host: str, version: int) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """A client's validated settings; ``timeout_s`` and ``backoff_s`` in seconds."""

    timeout_s: float | None
    retries: int
    backoff_s: float
    metadata: tuple[tuple[str, str], ...] | None
    channel_options: tuple[tuple[str, Any], ...]

    @classmethod
    def build(
        cls,
        *,
        timeout_s: float | None,
        retries: int,
        backoff_s: float,
        channel_options: ChannelOptions | None,
        metadata: Metadata | None,
    ) -> ClientSettings:
        """Validate the client's keyword arguments; raises ValueError naming the bad one."""
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        if not backoff_s >= 0:
            raise ValueError(f"backoff_s must be >= 0, got {backoff_s!r}")
        options = dict(_DEFAULT_CHANNEL_OPTIONS)
        options.update(channel_options or ())  # the caller's value wins over ours
        pairs = tuple(metadata.items()) if isinstance(metadata, Mapping) else tuple(metadata or ())
        return cls(timeout_s, retries, backoff_s, pairs or None, tuple(options.items()))

    def call_timeout_s(self, timeout_s: float | None) -> float | None:
        """A call's gRPC timeout in seconds: ``timeout_s``, else the client's default (None: no deadline)."""
        return self.timeout_s if timeout_s is None else timeout_s

    def retry_state(self, timeout_s: float | None) -> RetryState:
        """Start one call's retry state; ``timeout_s`` overrides the client's default deadline."""
        return RetryState(self.retries, self.backoff_s, self.call_timeout_s(timeout_s))


class RetryState:
    """One call's deadline and attempts: retries UNAVAILABLE only, with exponential backoff, never past the deadline."""

    __slots__ = ("_attempt", "_backoff_s", "_deadline", "_retries")

    def __init__(self, retries: int, backoff_s: float, timeout_s: float | None) -> None:
        self._retries = retries
        self._backoff_s = backoff_s
        self._attempt = 0
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def timeout_s(self) -> float | None:
        """The time left until the call's deadline, in seconds, to pass as the gRPC timeout (None: no deadline)."""
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def next_delay_s(self, error: grpc.RpcError) -> float | None:
        """Seconds to sleep before retrying after ``error``, or None to give up and raise it.

        Gives up when the status is not UNAVAILABLE, when the retries are spent, or when the sleep would reach
        the deadline. The n-th retry (from 0) waits ``backoff_s * 2**n``, stretched by up to 10% at random.
        """
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code is not grpc.StatusCode.UNAVAILABLE or self._attempt >= self._retries:
            return None
        delay_s = self._backoff_s * 2.0**self._attempt * (1.0 + _JITTER * random.random())
        if self._deadline is not None and time.monotonic() + delay_s >= self._deadline:
            return None
        self._attempt += 1
        return delay_s


@dataclass(frozen=True, slots=True)
class UnaryCall(Generic[T]):
    """One unary RPC to make: the stub method's name, its request, and how to turn the response into T."""

    method: str
    request: Any
    parse: Callable[[Any], T]


def is_server_live() -> UnaryCall[bool]:
    return UnaryCall("ServerLive", pb.ServerLiveRequest(), operator.attrgetter("live"))


def is_server_ready() -> UnaryCall[bool]:
    return UnaryCall("ServerReady", pb.ServerReadyRequest(), operator.attrgetter("ready"))


def is_model_ready(name: str, version: str) -> UnaryCall[bool]:
    return UnaryCall("ModelReady", pb.ModelReadyRequest(name=name, version=version), operator.attrgetter("ready"))


def server_metadata() -> UnaryCall[pb.ServerMetadataResponse]:
    return UnaryCall("ServerMetadata", pb.ServerMetadataRequest(), _same)


def model_metadata(name: str, version: str) -> UnaryCall[pb.ModelMetadataResponse]:
    return UnaryCall("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version), _same)


def model_config(name: str, version: str) -> UnaryCall[model_config_pb2.ModelConfig]:
    return UnaryCall("ModelConfig", pb.ModelConfigRequest(name=name, version=version), operator.attrgetter("config"))


def model_statistics(name: str, version: str) -> UnaryCall[pb.ModelStatisticsResponse]:
    return UnaryCall("ModelStatistics", pb.ModelStatisticsRequest(name=name, version=version), _same)


def repository_index(ready: bool) -> UnaryCall[list[pb.RepositoryIndexResponse.ModelIndex]]:
    return UnaryCall("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready), _models)


def load_model(name: str, config: Mapping[str, Any] | str | None) -> UnaryCall[None]:
    request = pb.RepositoryModelLoadRequest(model_name=name)
    if config is not None:
        # Triton's convention (model_analyzer relies on it): the override is a JSON ModelConfig under "config".
        text = config if isinstance(config, str) else json.dumps(config)
        request.parameters["config"].string_param = text
    return UnaryCall("RepositoryModelLoad", request, _nothing)


def unload_model(name: str) -> UnaryCall[None]:
    return UnaryCall("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=name), _nothing)


def infer(
    model: str,
    inputs: Mapping[str, npt.ArrayLike],
    *,
    version: str,
    outputs: Sequence[str] | None,
    request_id: str,
    parameters: Mapping[str, ParameterValue] | None,
) -> UnaryCall[InferResult]:
    request = encode_infer_request(
        model, inputs, version=version, outputs=outputs, request_id=request_id, parameters=parameters
    )
    return UnaryCall("ModelInfer", request, decode_infer_response)


def _same(response: T) -> T:
    return response


def _nothing(response: object) -> None:
    return None


def _models(response: pb.RepositoryIndexResponse) -> list[pb.RepositoryIndexResponse.ModelIndex]:
    return list(response.models)


def call_metadata(metadata: tuple[tuple[str, str], ...] | None) -> tuple[tuple[str, str], ...] | None:
    """``metadata`` plus the caller's current OpenTelemetry context (W3C ``traceparent``/``tracestate``), so a trace
    crosses client -> server. Only when the application uses opentelemetry (already imported) and a span is current:
    the client never imports or needs it."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return metadata
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return (*(metadata or ()), *carrier.items()) if carrier else metadata
