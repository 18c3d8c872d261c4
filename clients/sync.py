"""``InferenceClient``: a blocking client for Surge (and Triton) over gRPC.

Requests are built and responses parsed in ``_common`` and ``_codec``, shared with ``AsyncInferenceClient``;
this module only makes the calls. Thread-safe: one client (one HTTP/2 channel) can serve many threads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy.typing as npt

from surge.clients import _common
from surge.clients._codec import InferRequest, InferResult, ParameterValue, StreamRequests, decode_stream_response
from surge.clients.errors import InferenceServerError, map_rpc_error
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from surge.protos import model_config_pb2

__all__ = ["InferenceClient"]

T = TypeVar("T")


class InferenceClient:
    """A blocking gRPC client for ``inference.GRPCInferenceService``.

    Args:
        address: ``"host:port"`` of the server, e.g. ``"127.0.0.1:8001"`` (insecure channel); or several servers,
            ``["10.0.0.1:8001", "10.0.0.2:8001"]`` (or ``"10.0.0.1:8001,10.0.0.2:8001"``), or a DNS name that
            resolves to several (``"dns:///surge.default.svc:8001"``): calls are spread round-robin over them,
            and a call that fails UNAVAILABLE (a server went away) is retried on another (``retries``).
        timeout_s: default deadline of each call in seconds, retries included (None: no deadline).
        retries: extra attempts after an UNAVAILABLE status (never for other statuses, never for streams).
        backoff_s: the first retry's delay in seconds; each next one doubles, with up to 10% jitter.
        channel_options: extra gRPC channel arguments; they override the defaults (2**31-1 byte message limits).
        metadata: gRPC metadata (lowercase keys) sent with every call, e.g. ``{"authorization": "Bearer TOKEN"}``.
        credentials: TLS (or mutual TLS) channel credentials, e.g. ``grpc.ssl_channel_credentials(ca_pem)``; None: plaintext.

    Every method raises ``InferenceServerError`` (the subclass for the status, see ``surge.clients.errors``)
    when the call fails, and ValueError for a constructor argument out of range.
    """

    def __init__(
        self,
        address: str | Sequence[str],
        *,
        timeout_s: float | None = None,
        retries: int = 3,
        backoff_s: float = 0.05,
        channel_options: _common.ChannelOptions | None = None,
        metadata: _common.Metadata | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._settings = _common.ClientSettings.build(
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            channel_options=channel_options,
            metadata=metadata,
        )
        self.address = _common.channel_target(address)
        options = self._settings.channel_options
        self._channel = grpc.secure_channel(self.address, credentials, options) if credentials else grpc.insecure_channel(self.address, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled and later calls fail."""
        self._channel.close()

    def is_server_live(self, *, timeout_s: float | None = None) -> bool:
        """Whether the server is live (ServerLive); raises UnavailableError when it cannot be reached."""
        return self._unary(_common.is_server_live(), timeout_s)

    def is_server_ready(self, *, timeout_s: float | None = None) -> bool:
        """Whether the server is ready to serve (ServerReady)."""
        return self._unary(_common.is_server_ready(), timeout_s)

    def is_model_ready(self, name: str, version: str = "", *, timeout_s: float | None = None) -> bool:
        """Whether the model (``version`` ``""``: the server's default version) is ready (ModelReady)."""
        return self._unary(_common.is_model_ready(name, version), timeout_s)

    def server_metadata(self, *, timeout_s: float | None = None) -> pb.ServerMetadataResponse:
        """The server's name, version and extensions (ServerMetadata)."""
        return self._unary(_common.server_metadata(), timeout_s)

    def model_metadata(
        self, name: str, version: str = "", *, timeout_s: float | None = None
    ) -> pb.ModelMetadataResponse:
        """The model's versions, platform and tensor signatures (ModelMetadata); NotFoundError if unknown."""
        return self._unary(_common.model_metadata(name, version), timeout_s)

    def model_config(
        self, name: str, version: str = "", *, timeout_s: float | None = None
    ) -> model_config_pb2.ModelConfig:
        """The model's Triton ``ModelConfig`` (the ``config`` of ModelConfigResponse); NotFoundError if unknown."""
        return self._unary(_common.model_config(name, version), timeout_s)

    def model_statistics(
        self, name: str = "", version: str = "", *, timeout_s: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Cumulative statistics (durations in ns) for one model, or for every model when ``name`` is ``""``."""
        return self._unary(_common.model_statistics(name, version), timeout_s)

    def repository_index(
        self, ready: bool = False, *, timeout_s: float | None = None
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """The models in the repository with their state (only the ready ones when ``ready``)."""
        return self._unary(_common.repository_index(ready), timeout_s)

    def load_model(
        self, name: str, config: Mapping[str, Any] | str | None = None, *, timeout_s: float | None = None
    ) -> None:
        """Load (or reload) a model; ``config`` (a dict or JSON text of a ModelConfig) overrides its config file."""
        self._unary(_common.load_model(name, config), timeout_s)

    def unload_model(self, name: str, *, timeout_s: float | None = None) -> None:
        """Unload a model (RepositoryModelUnload)."""
        self._unary(_common.unload_model(name), timeout_s)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        request_id: str = "",
        parameters: Mapping[str, ParameterValue] | None = None,
        timeout_s: float | None = None,
    ) -> InferResult:
        """Run one inference (ModelInfer) and decode the response.

        ``inputs`` maps input names to arrays (str/bytes/object arrays are BYTES); ``outputs`` names the
        outputs to return (None: all); ``parameters`` become request parameters (bool, int, float, str).
        Raises ValueError or TypeError before sending when an input or parameter cannot be encoded.
        """
        call = _common.infer(
            model, inputs, version=version, outputs=outputs, request_id=request_id, parameters=parameters
        )
        return self._unary(call, timeout_s)

    def stream_infer(
        self,
        requests: Iterable[InferRequest | pb.ModelInferRequest],
        *,
        timeout_s: float | None = None,
    ) -> Iterator[InferResult | InferenceServerError]:
        """Send ``requests`` over one bidirectional ModelStreamInfer call and yield the responses as they come.

        A request the server rejects yields its ``InferenceServerError`` in place (not raised) and the stream
        goes on. A failure of the stream itself raises: the mapped ``InferenceServerError``, or the exception
        that ``requests`` (or encoding an item) raised. ``timeout_s`` (else the client's default) bounds the
        whole stream; streams are never retried. Items may also be pre-encoded ``ModelInferRequest``s.
        Stopping the iteration early cancels the call.
        """
        source = StreamRequests(requests)
        call = self._stub.ModelStreamInfer(
            source.encoded(),
            timeout=self._settings.call_timeout_s(timeout_s),
            metadata=_common.call_metadata(self._settings.metadata),
        )
        try:
            for response in call:
                yield decode_stream_response(response)
        except grpc.RpcError as exc:
            if source.error is not None:
                raise source.error from None
            raise map_rpc_error(exc) from exc
        finally:
            call.cancel()

    def _unary(self, call: _common.UnaryCall[T], timeout_s: float | None) -> T:
        retry = self._settings.retry_state(timeout_s)
        method = getattr(self._stub, call.method)
        while True:
            try:
                response = method(call.request, timeout=retry.timeout_s(), metadata=_common.call_metadata(self._settings.metadata))
            except grpc.RpcError as exc:
                delay_s = retry.next_delay_s(exc)
                if delay_s is None:
                    raise map_rpc_error(exc) from exc
                time.sleep(delay_s)
            else:
                return call.parse(response)
