"""``AsyncInferenceClient``: the asyncio twin of ``InferenceClient``, over ``grpc.aio``.

Same methods and arguments as ``InferenceClient``, as coroutines; requests are built and responses parsed
by the same shared code (``_common``, ``_codec``). A ``grpc.aio`` channel belongs to the event loop it was
created in, so the channel is created on the first call, in the loop that makes it: construct the client
anywhere, then use it (and close it) from one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy.typing as npt

from surge.clients import _common
from surge.clients._codec import InferRequest, InferResult, ParameterValue, StreamRequests, decode_stream_response
from surge.clients.errors import InferenceServerError, map_rpc_error
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from surge.protos import model_config_pb2

__all__ = ["AsyncInferenceClient"]

T = TypeVar("T")


class AsyncInferenceClient:
    """An asyncio gRPC client for ``inference.GRPCInferenceService``; see ``InferenceClient`` for the arguments.

    Every coroutine raises ``InferenceServerError`` (the subclass for the status) when the call fails;
    cancelling the awaiting task cancels the call and raises ``asyncio.CancelledError`` as usual.
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
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GRPCInferenceServiceStub | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled and later calls raise RuntimeError."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def is_server_live(self, *, timeout_s: float | None = None) -> bool:
        """Whether the server is live (ServerLive); raises UnavailableError when it cannot be reached."""
        return await self._unary(_common.is_server_live(), timeout_s)

    async def is_server_ready(self, *, timeout_s: float | None = None) -> bool:
        """Whether the server is ready to serve (ServerReady)."""
        return await self._unary(_common.is_server_ready(), timeout_s)

    async def is_model_ready(self, name: str, version: str = "", *, timeout_s: float | None = None) -> bool:
        """Whether the model (``version`` ``""``: the server's default version) is ready (ModelReady)."""
        return await self._unary(_common.is_model_ready(name, version), timeout_s)

    async def server_metadata(self, *, timeout_s: float | None = None) -> pb.ServerMetadataResponse:
        """The server's name, version and extensions (ServerMetadata)."""
        return await self._unary(_common.server_metadata(), timeout_s)

    async def model_metadata(
        self, name: str, version: str = "", *, timeout_s: float | None = None
    ) -> pb.ModelMetadataResponse:
        """The model's versions, platform and tensor signatures (ModelMetadata); NotFoundError if unknown."""
        return await self._unary(_common.model_metadata(name, version), timeout_s)

    async def model_config(
        self, name: str, version: str = "", *, timeout_s: float | None = None
    ) -> model_config_pb2.ModelConfig:
        """The model's Triton ``ModelConfig`` (the ``config`` of ModelConfigResponse); NotFoundError if unknown."""
        return await self._unary(_common.model_config(name, version), timeout_s)

    async def model_statistics(
        self, name: str = "", version: str = "", *, timeout_s: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Cumulative statistics (durations in ns) for one model, or for every model when ``name`` is ``""``."""
        return await self._unary(_common.model_statistics(name, version), timeout_s)

    async def repository_index(
        self, ready: bool = False, *, timeout_s: float | None = None
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """The models in the repository with their state (only the ready ones when ``ready``)."""
        return await self._unary(_common.repository_index(ready), timeout_s)

    async def load_model(
        self, name: str, config: Mapping[str, Any] | str | None = None, *, timeout_s: float | None = None
    ) -> None:
        """Load (or reload) a model; ``config`` (a dict or JSON text of a ModelConfig) overrides its config file."""
        await self._unary(_common.load_model(name, config), timeout_s)

    async def unload_model(self, name: str, *, timeout_s: float | None = None) -> None:
        """Unload a model (RepositoryModelUnload)."""
        await self._unary(_common.unload_model(name), timeout_s)

    async def infer(
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
        """Run one inference (ModelInfer); see ``InferenceClient.infer``. Encoding runs on the calling loop."""
        call = _common.infer(
            model, inputs, version=version, outputs=outputs, request_id=request_id, parameters=parameters
        )
        return await self._unary(call, timeout_s)

    async def stream_infer(
        self,
        requests: AsyncIterable[InferRequest | pb.ModelInferRequest] | Iterable[InferRequest | pb.ModelInferRequest],
        *,
        timeout_s: float | None = None,
    ) -> AsyncIterator[InferResult | InferenceServerError]:
        """Async generator over one bidirectional ModelStreamInfer call; see ``InferenceClient.stream_infer``.

        ``requests`` may be an async or a sync iterable (a sync one is iterated on the event loop, so it must
        not block). Per-request errors are yielded in place; a failure of the stream raises.
        """
        source = StreamRequests(requests)
        call = self._get_stub().ModelStreamInfer(
            source.aencoded(),
            timeout=self._settings.call_timeout_s(timeout_s),
            metadata=_common.call_metadata(self._settings.metadata),
        )
        try:
            async for response in call:
                yield decode_stream_response(response)
        except grpc.aio.AioRpcError as exc:
            if source.error is not None:
                raise source.error from None
            raise map_rpc_error(exc) from exc
        except asyncio.CancelledError:
            # grpc.aio cancels the call when the request iterator raises, and reading a cancelled call raises
            # CancelledError: report the iterator's exception instead, unless this task itself is being cancelled.
            task = asyncio.current_task()
            if source.error is not None and (task is None or not task.cancelling()):
                raise source.error from None
            raise
        finally:
            call.cancel()

    def _get_stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        if self._stub is None:
            if self._closed:
                raise RuntimeError("AsyncInferenceClient is closed")
            options = self._settings.channel_options
            credentials = self._credentials
            self._channel = (
                grpc.aio.secure_channel(self.address, credentials, options) if credentials else grpc.aio.insecure_channel(self.address, options=options)
            )
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def _unary(self, call: _common.UnaryCall[T], timeout_s: float | None) -> T:
        retry = self._settings.retry_state(timeout_s)
        method = getattr(self._get_stub(), call.method)
        while True:
            try:
                response = await method(call.request, timeout=retry.timeout_s(), metadata=_common.call_metadata(self._settings.metadata))
            except grpc.aio.AioRpcError as exc:
                delay_s = retry.next_delay_s(exc)
                if delay_s is None:
                    raise map_rpc_error(exc) from exc
                await asyncio.sleep(delay_s)
            else:
                return call.parse(response)
