"""Surge's Python clients for ``inference.GRPCInferenceService`` (Surge or Triton), sync and asyncio.

    from surge.clients import InferenceClient

    with InferenceClient("127.0.0.1:8001", timeout_s=5.0) as client:
        result = client.infer("resnet", {"input": batch})
        scores = result["output"]

Imports only grpc, protobuf, numpy and ``surge.protos``. Errors are ``InferenceServerError`` subclasses named
after gRPC statuses (``surge.clients.errors``).
"""

from __future__ import annotations

from surge.clients._codec import (
    InferRequest,
    InferResult,
    ParameterValue,
    decode_infer_response,
    decode_stream_response,
    encode_infer_request,
)
from surge.clients.admin import SurgeClient
from surge.clients.aio import AsyncInferenceClient
from surge.clients.errors import (
    DeadlineExceededError,
    InferenceServerError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    error_for_status,
    map_rpc_error,
)
from surge.clients.sync import InferenceClient

__all__ = [
    "AsyncInferenceClient",
    "DeadlineExceededError",
    "InferRequest",
    "InferResult",
    "InferenceClient",
    "InferenceServerError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "ParameterValue",
    "PermissionDeniedError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "SurgeClient",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "decode_infer_response",
    "decode_stream_response",
    "encode_infer_request",
    "error_for_status",
    "map_rpc_error",
]
