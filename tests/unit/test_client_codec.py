"""The client's codec and errors, without a server: encode a request, echo it back as a response, decode it.

The echo (``_echo``) plays the server's part the way Triton does: one output per input, same name, datatype
and shape, and the request's raw bytes as ``raw_output_contents``.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import time
from collections.abc import Iterator

import grpc
import grpc.aio
import numpy as np
import pytest

import surge.clients
from surge.clients import (
    AsyncInferenceClient,
    DeadlineExceededError,
    InferenceClient,
    InferenceServerError,
    InferRequest,
    InferResult,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    decode_infer_response,
    decode_stream_response,
    encode_infer_request,
    error_for_status,
    map_rpc_error,
)
from surge.protos import grpc_service_pb2 as pb
from surge.protos.datatypes import CONTENTS_FIELD

ml_dtypes = pytest.importorskip("ml_dtypes")

_RNG = np.random.default_rng(0)


def _echo(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    for tensor in request.inputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(request.raw_input_contents)
    return response


def _round_trip(inputs: dict[str, np.ndarray]) -> InferResult:
    return decode_infer_response(_echo(encode_infer_request("echo", inputs)))


_ARRAYS: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([0, 1, 255], dtype=np.uint8),
    "UINT16": np.array([0, 1, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 1, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 1, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 0, 2**15 - 1], dtype=np.int16),
    "INT32": np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32),
    "INT64": np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64),
    "FP16": np.array([-1.5, 0.0, 65504.0], dtype=np.float16),
    "FP32": _RNG.standard_normal((2, 3, 4)).astype(np.float32),
    "FP64": np.array([np.pi, -np.inf, np.nan]),
    "BF16": np.array([1.0, -2.5, 3.0e38], dtype=ml_dtypes.bfloat16),
    "BYTES": np.array([[b"a", b""], [b"\x00\xff", b"longer element"]], dtype=np.object_),
}


def test_exported_names() -> None:
    assert sorted(surge.clients.__all__) == surge.clients.__all__
    assert {"InferenceClient", "AsyncInferenceClient", "InferResult", "InferRequest", "InferenceServerError"} <= set(
        surge.clients.__all__
    )
    assert all(hasattr(surge.clients, name) for name in surge.clients.__all__)


@pytest.mark.parametrize("datatype", sorted(_ARRAYS))
def test_every_datatype_round_trips(datatype: str) -> None:
    array = _ARRAYS[datatype]
    request = encode_infer_request("echo", {"x": array})

    assert request.inputs[0].datatype == datatype
    assert list(request.inputs[0].shape) == list(array.shape)
    assert len(request.raw_input_contents) == 1 and not request.inputs[0].HasField("contents")
    result = decode_infer_response(_echo(request))
    out = result["x"]
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(
    "array",
    [
        np.float32(3.5) * np.ones(()),  # 0-d
        np.zeros((0, 3), dtype=np.int32),  # empty
        np.arange(12, dtype=np.int64).reshape(3, 4).T,  # non-contiguous (Fortran order)
        np.arange(20, dtype=np.float64)[::3],  # strided
        np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian
        np.array([], dtype=np.object_),  # empty BYTES
    ],
    ids=["scalar", "empty", "transposed", "strided", "big-endian", "empty-bytes"],
)
def test_layouts_round_trip(array: np.ndarray) -> None:
    out = _round_trip({"x": array})["x"]
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_raw_bytes_are_row_major_little_endian() -> None:
    array = np.arange(6, dtype=">u2").reshape(2, 3).T
    request = encode_infer_request("m", {"x": array})
    assert request.raw_input_contents[0] == np.ascontiguousarray(array).astype("<u2").tobytes()
    assert request.inputs[0].datatype == "UINT16"


def test_bytes_tensor_accepts_str_bytes_and_empty_elements() -> None:
    array = np.array(["héllo", b"\x00raw", "", b""], dtype=np.object_)
    request = encode_infer_request("m", {"text": array})

    assert request.inputs[0].datatype == "BYTES"
    assert request.raw_input_contents[0] == (
        b"\x06\x00\x00\x00h\xc3\xa9llo" b"\x04\x00\x00\x00\x00raw" b"\x00\x00\x00\x00" b"\x00\x00\x00\x00"
    )
    out = decode_infer_response(_echo(request))["text"]
    assert out.dtype == np.object_
    assert out.tolist() == ["héllo".encode(), b"\x00raw", b"", b""]


@pytest.mark.parametrize("array", [np.array(["ab", "c"]), np.array([b"ab", b"c"]), ["ab", "c"]])
def test_str_and_bytes_arrays_are_bytes_tensors(array: object) -> None:
    request = encode_infer_request("m", {"s": array})
    assert request.inputs[0].datatype == "BYTES"
    assert decode_infer_response(_echo(request))["s"].tolist() == [b"ab", b"c"]


def test_unsupported_dtype_is_rejected_before_sending() -> None:
    with pytest.raises(ValueError, match="complex"):
        encode_infer_request("m", {"x": np.zeros(2, dtype=np.complex64)})


def test_request_fields_outputs_and_parameters() -> None:
    request = encode_infer_request(
        "resnet",
        {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.int8)},
        version="2",
        outputs=["probs", "labels"],
        request_id="req-1",
        parameters={"flag": True, "count": 7, "np_count": np.int32(8), "temperature": 0.5, "mode": "fast"},
    )

    assert (request.model_name, request.model_version, request.id) == ("resnet", "2", "req-1")
    assert [t.name for t in request.inputs] == ["a", "b"] and len(request.raw_input_contents) == 2
    assert [o.name for o in request.outputs] == ["probs", "labels"]
    params = request.parameters
    assert params["flag"].WhichOneof("parameter_choice") == "bool_param" and params["flag"].bool_param is True
    assert params["count"].WhichOneof("parameter_choice") == "int64_param" and params["count"].int64_param == 7
    assert params["np_count"].int64_param == 8
    assert params["temperature"].WhichOneof("parameter_choice") == "double_param"
    assert params["temperature"].double_param == 0.5
    assert params["mode"].WhichOneof("parameter_choice") == "string_param" and params["mode"].string_param == "fast"


def test_no_outputs_means_all_outputs() -> None:
    request = encode_infer_request("m", {"x": np.zeros(1)})
    assert len(request.outputs) == 0 and len(request.parameters) == 0


@pytest.mark.parametrize("value", [None, [1, 2], b"bytes", 1j])
def test_unsupported_parameter_type_raises_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="'p'"):
        encode_infer_request("m", {}, parameters={"p": value})  # type: ignore[dict-item]


def test_infer_request_encodes_like_the_function() -> None:
    inputs = {"x": np.arange(4, dtype=np.float32)}
    request = InferRequest("m", inputs, version="3", outputs=["y"], request_id="9", parameters={"k": 1})
    expected = encode_infer_request("m", inputs, version="3", outputs=["y"], request_id="9", parameters={"k": 1})
    assert request.encode() == expected


def test_result_fields_order_and_lookup() -> None:
    response = _echo(encode_infer_request("m", {"z": np.ones(1), "a": np.zeros(2)}, request_id="42"))
    response.parameters["sequence_end"].bool_param = True
    response.parameters["batch"].int64_param = 4
    response.parameters["priority"].uint64_param = 2
    response.parameters["empty"].CopyFrom(pb.InferParameter())
    result = decode_infer_response(response)

    assert (result.model_name, result.model_version, result.id) == ("m", "1", "42")
    assert list(result.outputs) == ["z", "a"]
    assert result.parameters == {"sequence_end": True, "batch": 4, "priority": 2}
    assert result.as_numpy("a") is result["a"] and "a" in result
    assert result.as_numpy("missing") is None
    with pytest.raises(KeyError):
        result["missing"]


def test_raw_outputs_are_read_only_views() -> None:
    out = _round_trip({"x": np.arange(3, dtype=np.float32)})["x"]
    assert not out.flags.writeable
    with pytest.raises(ValueError):
        out[0] = 1.0


_CONTENTS_VALUES: dict[str, list[object]] = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 2, 255],
    "UINT16": [0, 1, 2, 65535],
    "UINT32": [0, 1, 2, 2**32 - 1],
    "UINT64": [0, 1, 2, 2**64 - 1],
    "INT8": [-128, 0, 1, 127],
    "INT16": [-(2**15), 0, 1, 2**15 - 1],
    "INT32": [-(2**31), 0, 1, 2**31 - 1],
    "INT64": [-(2**63), 0, 1, 2**63 - 1],
    "FP32": [0.5, -1.0, 2.25, 1024.0],
    "FP64": [0.1, -1e300, 2.0, 3.0],
    "BYTES": [b"a", b"", b"\x00", b"xyz"],
}


@pytest.mark.parametrize("datatype", sorted(CONTENTS_FIELD))
def test_typed_contents_are_decoded(datatype: str) -> None:
    values = _CONTENTS_VALUES[datatype]
    response = pb.ModelInferResponse(model_name="m")
    tensor = response.outputs.add(name="y", datatype=datatype, shape=[2, 2])
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(values)

    out = decode_infer_response(response)["y"]
    assert out.shape == (2, 2)
    assert out.reshape(-1).tolist() == values
    if datatype != "BYTES":
        assert out.dtype == _ARRAYS[datatype].dtype


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_half_types_have_no_typed_contents(datatype: str) -> None:
    response = pb.ModelInferResponse()
    response.outputs.add(name="y", datatype=datatype, shape=[1])
    with pytest.raises(ValueError, match="raw only"):
        decode_infer_response(response)


def test_malformed_responses_raise_value_error() -> None:
    response = _echo(encode_infer_request("m", {"a": np.zeros(2), "b": np.zeros(2)}))
    del response.raw_output_contents[1]
    with pytest.raises(ValueError, match="raw_output_contents"):
        decode_infer_response(response)

    response = _echo(encode_infer_request("m", {"a": np.zeros(2, np.float32)}))
    response.outputs[0].shape[:] = [3]
    with pytest.raises(ValueError, match="needs 12 bytes, got 8"):
        decode_infer_response(response)

    response = pb.ModelInferResponse()
    response.outputs.add(name="y", datatype="FP32", shape=[2]).contents.fp32_contents.append(1.0)
    with pytest.raises(ValueError, match="needs 2 values"):
        decode_infer_response(response)

    response = pb.ModelInferResponse(raw_output_contents=[b"\x00"])
    response.outputs.add(name="y", datatype="FP8", shape=[1])
    with pytest.raises(ValueError, match="unknown datatype"):
        decode_infer_response(response)


def test_stream_response_yields_result_or_error() -> None:
    ok = pb.ModelStreamInferResponse(infer_response=_echo(encode_infer_request("m", {"x": np.ones(2)})))
    result = decode_stream_response(ok)
    assert isinstance(result, InferResult)
    np.testing.assert_array_equal(result["x"], np.ones(2))

    failed = pb.ModelStreamInferResponse(
        error_message="NOT_FOUND: model 'x' is not in the repository", infer_response=pb.ModelInferResponse(id="7")
    )
    error = decode_stream_response(failed)
    assert isinstance(error, NotFoundError) and error.request_id == "7"
    assert error.message == "model 'x' is not in the repository"

    # what Surge sends: Triton's plain message, the status name in the surge_status_code parameter
    tagged = pb.ModelInferResponse(id="8")
    tagged.parameters["surge_status_code"].string_param = "INVALID_ARGUMENT"
    error = decode_stream_response(pb.ModelStreamInferResponse(error_message="input 'x': bad shape", infer_response=tagged))
    assert isinstance(error, InvalidArgumentError) and error.request_id == "8" and error.message == "input 'x': bad shape"

    plain = decode_stream_response(pb.ModelStreamInferResponse(error_message="in: bad shape"))
    assert type(plain) is InferenceServerError and plain.code is grpc.StatusCode.UNKNOWN
    assert str(plain) == "UNKNOWN: in: bad shape"


_CLASS_OF_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNKNOWN: InferenceServerError,
    grpc.StatusCode.ABORTED: InferenceServerError,
    grpc.StatusCode.FAILED_PRECONDITION: InferenceServerError,
}


class _SyncRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """The shape of the errors sync grpc raises from a failed call (``_InactiveRpcError``)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> None: ...
    def trailing_metadata(self) -> None: ...
    def is_active(self) -> bool: ...  # type: ignore[empty-body]
    def time_remaining(self) -> None: ...
    def cancel(self) -> bool: ...  # type: ignore[empty-body]
    def add_callback(self, callback: object) -> bool: ...  # type: ignore[empty-body]


def _aio_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize("make_error", [_SyncRpcError, _aio_error], ids=["sync", "aio"])
@pytest.mark.parametrize("code", list(_CLASS_OF_STATUS), ids=lambda code: code.name)
def test_rpc_error_maps_to_most_specific_class(make_error: object, code: grpc.StatusCode) -> None:
    error = map_rpc_error(make_error(code, "model 'x' is not in the repository"))  # type: ignore[operator]

    assert type(error) is _CLASS_OF_STATUS[code]
    assert isinstance(error, InferenceServerError)
    assert error.code is code and error.message == "model 'x' is not in the repository"
    assert str(error) == f"{code.name}: model 'x' is not in the repository"


def test_error_classes_default_their_code_and_pickle() -> None:
    assert NotFoundError("gone").code is grpc.StatusCode.NOT_FOUND
    assert str(UnavailableError("queue full")) == "UNAVAILABLE: queue full"
    assert not issubclass(RequestCancelledError, asyncio.CancelledError)
    error = error_for_status(grpc.StatusCode.INTERNAL, "runtime failed", request_id="r1")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InternalError
    assert (copy.code, copy.message, copy.request_id) == (error.code, error.message, "r1")


# -- retries and deadlines, against a port where nothing listens (UNAVAILABLE, no server involved) --


@pytest.fixture
def closed_address() -> Iterator[str]:
    """An address that refuses connections: a bound socket that never listens, held so no one else takes it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_sync_retries_unavailable_with_backoff(closed_address: str) -> None:
    with InferenceClient(closed_address, retries=2, backoff_s=0.2) as client:
        start = time.monotonic()
        with pytest.raises(UnavailableError) as caught:
            client.is_server_live()
        elapsed_s = time.monotonic() - start
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert elapsed_s >= 0.2 + 0.4  # two backoffs slept: 0.2 s, then 0.4 s


def test_sync_retries_stop_at_the_deadline(closed_address: str) -> None:
    with InferenceClient(closed_address, retries=5, backoff_s=10.0, timeout_s=30.0) as client:
        start = time.monotonic()
        with pytest.raises((UnavailableError, DeadlineExceededError)):
            client.infer("m", {"x": np.zeros(1)}, timeout_s=1.0)
    assert time.monotonic() - start < 5.0  # a 10 s backoff would pass the 1 s deadline: not slept


async def test_async_retries_unavailable_and_stop_at_the_deadline(closed_address: str) -> None:
    async with AsyncInferenceClient(closed_address, retries=2, backoff_s=0.2) as client:
        start = time.monotonic()
        with pytest.raises(UnavailableError):
            await client.is_model_ready("m")
        assert time.monotonic() - start >= 0.2 + 0.4

    async with AsyncInferenceClient(closed_address, retries=5, backoff_s=10.0, timeout_s=1.0) as client:
        start = time.monotonic()
        with pytest.raises((UnavailableError, DeadlineExceededError)):
            await client.server_metadata()
        assert time.monotonic() - start < 5.0


async def test_async_stream_is_not_retried(closed_address: str) -> None:
    async with AsyncInferenceClient(closed_address, retries=3, backoff_s=10.0) as client:
        start = time.monotonic()
        with pytest.raises(UnavailableError):
            async for _ in client.stream_infer([InferRequest("m", {"x": np.zeros(1)})]):
                pass
        assert time.monotonic() - start < 5.0


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        InferenceClient("127.0.0.1:1", timeout_s=0)
    with pytest.raises(ValueError, match="retries"):
        InferenceClient("127.0.0.1:1", retries=-1)


def test_channel_target_for_one_or_several_addresses() -> None:
    from surge.clients._common import channel_target

    assert channel_target("127.0.0.1:8001") == "127.0.0.1:8001"
    assert channel_target("dns:///surge.default.svc:8001") == "dns:///surge.default.svc:8001"
    assert channel_target(["127.0.0.1:1", "10.0.0.2:2"]) == "ipv4:127.0.0.1:1,10.0.0.2:2"
    assert channel_target("127.0.0.1:1, 127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    for bad in ([], ["a.example:1", "b.example:2"], ["127.0.0.1:1", "[::1]:2"], ["dns:///x:1", "127.0.0.1:2"], "127.0.0.1:1,"):
        with pytest.raises(ValueError, match="address"):
            channel_target(bad)
