"""Client-side codec: numpy tensors and Python parameters to ``ModelInferRequest``, responses back to numpy.

Shared by the sync and asyncio clients (and the load generator, which pre-serialises requests with
``encode_infer_request``). Inputs always travel as ``raw_input_contents``: the row-major little-endian bytes
of each array, or Triton's length-prefixed framing for BYTES. Outputs are read from ``raw_output_contents``
with ``np.frombuffer`` (no copy beyond protobuf's own), or from typed ``contents`` when a server sends those.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from surge.clients.errors import InferenceServerError, error_from_stream_message
from surge.protos import grpc_service_pb2 as pb
from surge.protos.datatypes import (
    CONTENTS_FIELD,
    datatype_of,
    deserialize_bytes_tensor,
    numpy_dtype,
    serialize_bytes_tensor,
)

__all__ = [
    "InferRequest",
    "InferResult",
    "ParameterValue",
    "decode_infer_response",
    "decode_stream_response",
    "encode_infer_request",
]

#: The response parameter in which a Surge server names a failed stream request's status (error_message has the message).
STREAM_STATUS_CODE = "surge_status_code"

#: A request or response parameter: bool, int (int64), float (double) or str.
ParameterValue: TypeAlias = bool | int | float | str


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One inference request, as ``stream_infer`` takes them; the fields mirror ``InferenceClient.infer``.

    ``inputs`` maps input names to arrays (anything ``np.asarray`` accepts; str/bytes/object arrays are BYTES).
    ``outputs`` names the outputs to return (``None``: all of them). ``parameters`` become request parameters.
    """

    model: str
    inputs: Mapping[str, npt.ArrayLike]
    version: str = ""
    outputs: Sequence[str] | None = None
    request_id: str = ""
    parameters: Mapping[str, ParameterValue] | None = None

    def encode(self) -> pb.ModelInferRequest:
        """This request as a protobuf message (see ``encode_infer_request``)."""
        return encode_infer_request(
            self.model,
            self.inputs,
            version=self.version,
            outputs=self.outputs,
            request_id=self.request_id,
            parameters=self.parameters,
        )


@dataclass(frozen=True, slots=True)
class InferResult:
    """A decoded inference response.

    ``outputs`` maps output names to arrays in the order of the response. Arrays decoded from raw contents
    are read-only views over the response bytes; copy one (``arr.copy()``) to modify it. BYTES outputs are
    object arrays of ``bytes``.
    """

    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    parameters: dict[str, ParameterValue] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        """The output named ``name``; raises KeyError when the response has no such output."""
        return self.outputs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        """The output named ``name``, or ``None`` when the response has no such output (as tritonclient's)."""
        return self.outputs.get(name)


def encode_infer_request(
    model: str,
    inputs: Mapping[str, npt.ArrayLike],
    *,
    version: str = "",
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    parameters: Mapping[str, ParameterValue] | None = None,
) -> pb.ModelInferRequest:
    """Build a ``ModelInferRequest`` with every input in ``raw_input_contents``.

    The datatype comes from each array's dtype (``datatype_of``); BYTES tensors accept ``str`` (UTF-8) and
    ``bytes`` elements. Raises ValueError for a dtype with no protocol datatype (complex, datetime, ...) and
    TypeError for a parameter that is not bool, int, float or str.
    """
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = datatype_of(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(_raw_bytes(array, datatype))
    for name in outputs or ():
        request.outputs.add(name=name)
    if parameters:
        _encode_parameters(request.parameters, parameters)
    return request


def decode_infer_response(response: pb.ModelInferResponse) -> InferResult:
    """Decode a ``ModelInferResponse`` into an ``InferResult``.

    Raises ValueError when the response is malformed: ``raw_output_contents`` neither empty nor one per
    output, a tensor whose byte count does not match its shape, or an unknown datatype.
    """
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise ValueError(
            f"response has {len(response.outputs)} outputs but {len(raw)} raw_output_contents (expected 0 or equal)"
        )
    outputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(response.outputs):
        shape = tuple(tensor.shape)
        if raw:
            outputs[tensor.name] = _from_raw(tensor.name, raw[i], tensor.datatype, shape)
        else:
            outputs[tensor.name] = _from_contents(tensor, shape)
    return InferResult(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=outputs,
        parameters=_decode_parameters(response.parameters),
    )


def decode_stream_response(response: pb.ModelStreamInferResponse) -> InferResult | InferenceServerError:
    """Decode one ``ModelStreamInfer`` response: an ``InferResult``, or the per-request error (returned, not raised).

    Raises ValueError for a malformed ``infer_response`` (see ``decode_infer_response``).
    """
    if response.error_message:
        failed = response.infer_response
        status = failed.parameters.get(STREAM_STATUS_CODE)
        code_name = status.string_param if status is not None else ""
        return error_from_stream_message(response.error_message, request_id=failed.id, code_name=code_name)
    return decode_infer_response(response.infer_response)


def _raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # tobytes() copies in C order whatever the strides: the same bytes as np.ascontiguousarray(array), one copy.
    return array.tobytes(order="C")


def _from_raw(name: str, raw: bytes, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, count).reshape(shape)
    dtype = _dtype_of(name, datatype)
    if len(raw) != count * dtype.itemsize:
        raise ValueError(
            f"output {name!r} ({datatype}, shape {list(shape)}) needs {count * dtype.itemsize} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype).reshape(shape)


def _from_contents(tensor: pb.ModelInferResponse.InferOutputTensor, shape: tuple[int, ...]) -> np.ndarray:
    field_name = CONTENTS_FIELD.get(tensor.datatype)
    if field_name is None:
        raise ValueError(f"output {tensor.name!r} is {tensor.datatype}, which has no typed contents (raw only)")
    values = getattr(tensor.contents, field_name)
    count = math.prod(shape)
    if len(values) != count:
        raise ValueError(
            f"output {tensor.name!r} (shape {list(shape)}) needs {count} values in {field_name}, got {len(values)}"
        )
    if tensor.datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
    else:
        array = np.array(values, dtype=_dtype_of(tensor.name, tensor.datatype))
    return array.reshape(shape)


def _dtype_of(name: str, datatype: str) -> np.dtype:
    try:
        return numpy_dtype(datatype)
    except KeyError:
        raise ValueError(f"output {name!r} has unknown datatype {datatype!r}") from None


def _encode_parameters(target: Any, parameters: Mapping[str, ParameterValue]) -> None:
    for key, value in parameters.items():
        param = target[key]
        if isinstance(value, (bool, np.bool_)):  # before int: bool is an int subclass
            param.bool_param = bool(value)
        elif isinstance(value, (int, np.integer)):
            param.int64_param = int(value)
        elif isinstance(value, (float, np.floating)):
            param.double_param = float(value)
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise TypeError(f"parameter {key!r} is {type(value).__name__}; expected bool, int, float or str")


def _decode_parameters(parameters: Any) -> dict[str, ParameterValue]:
    decoded: dict[str, ParameterValue] = {}
    for key, param in parameters.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            decoded[key] = getattr(param, choice)
    return decoded


def _as_request_proto(request: InferRequest | pb.ModelInferRequest) -> pb.ModelInferRequest:
    if isinstance(request, pb.ModelInferRequest):
        return request
    if isinstance(request, InferRequest):
        return request.encode()
    raise TypeError(f"stream_infer takes InferRequest or ModelInferRequest items, got {type(request).__name__}")


class StreamRequests:
    """Encodes a stream's requests as gRPC pulls them, and keeps the exception if encoding (or the caller's
    iterator) fails, so the client raises that instead of gRPC's generic cancellation."""

    __slots__ = ("_requests", "error")

    def __init__(self, requests: Iterable[InferRequest | pb.ModelInferRequest] | AsyncIterable[Any]) -> None:
        self._requests = requests
        self.error: BaseException | None = None

    def encoded(self) -> Iterator[pb.ModelInferRequest]:
        """The requests as protobuf messages, for a sync iterable (runs in gRPC's request thread)."""
        try:
            if not isinstance(self._requests, Iterable):
                raise TypeError("InferenceClient.stream_infer takes a sync iterable; use AsyncInferenceClient")
            for request in self._requests:
                yield _as_request_proto(request)
        except Exception as exc:
            self.error = exc
            raise

    async def aencoded(self) -> AsyncIterator[pb.ModelInferRequest]:
        """The requests as protobuf messages, for an async or sync iterable (runs in gRPC's writer task)."""
        try:
            if isinstance(self._requests, AsyncIterable):
                async for request in self._requests:
                    yield _as_request_proto(request)
            else:
                for request in self._requests:
                    yield _as_request_proto(request)
        except Exception as exc:
            self.error = exc
            raise
