"""``surge.server.edge.codec``: ModelInferRequest -> numpy (validated, zero-copy for raw) and numpy -> ModelInferResponse."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from surge.protos import grpc_service_pb2 as pb
from surge.protos.datatypes import CONTENTS_FIELD, deserialize_bytes_tensor, numpy_dtype, serialize_bytes_tensor
from surge.server.edge.codec import DecodedRequest, Limits, decode_request, encode_response, model_spec, parameter_value
from surge.server.config import ModelConfig, TensorConfig, parse_model_config
from surge.server.errors import InvalidInput, LimitExceeded

_U32 = struct.Struct("<I")


def _config(
    inputs: list[tuple[str, str, tuple[int, ...]]] | list[TensorConfig],
    outputs: list[tuple[str, str, tuple[int, ...]]] | None = None,
    max_batch_size: int = 8,
    name: str = "m",
) -> ModelConfig:
    def tensors(items: Any) -> tuple[TensorConfig, ...]:
        return tuple(t if isinstance(t, TensorConfig) else TensorConfig(name=t[0], datatype=t[1], dims=t[2]) for t in items)

    base = parse_model_config(name, {"backend": "onnxruntime", "max_batch_size": max_batch_size})
    return base.with_signature(tensors(inputs), tensors(outputs or [("y", "FP32", (2,))]), max_batch_size)


def _spec(*args: Any, **kwargs: Any):
    return model_spec(_config(*args, **kwargs))


def _raw_request(*tensors: tuple[str, str, list[int], bytes], outputs: list[str] | None = None, id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id=id)
    for name, datatype, shape, data in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)
    for out in outputs or []:
        request.outputs.add(name=out)
    return request


def _array_request(arrays: dict[str, tuple[str, np.ndarray]], outputs: list[str] | None = None) -> pb.ModelInferRequest:
    return _raw_request(*((n, dt, list(a.shape), a.tobytes()) for n, (dt, a) in arrays.items()), outputs=outputs)


def _invalid(request: pb.ModelInferRequest, spec: Any) -> str:
    with pytest.raises(InvalidInput) as info:
        decode_request(request, spec)
    return str(info.value)


def _bases(array: np.ndarray) -> Iterator[Any]:
    obj: Any = array
    while obj is not None:
        yield obj
        obj = getattr(obj, "base", None)


# --- raw decode ------------------------------------------------------------------------------------------


def test_raw_decode_is_zero_copy_over_the_request_bytes() -> None:
    spec = _spec([("x", "FP32", (4,))])
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    request = _array_request({"x": ("FP32", values)})
    decoded = decode_request(request, spec)
    array = decoded.inputs["x"]
    np.testing.assert_array_equal(array, values)
    assert array.dtype == np.dtype("<f4") and array.shape == (3, 4)
    assert array.flags.owndata is False
    assert array.flags.writeable is False  # a view over immutable bytes, not a private copy
    root = list(_bases(array))[-1]
    assert isinstance(root, bytes) and root == values.tobytes()
    # the array's memory is the bytes object's own buffer: nothing was copied out of it
    assert array.ctypes.data == np.frombuffer(root, dtype=np.uint8).ctypes.data


def test_raw_decode_adds_no_copy_of_its_own() -> None:
    # protobuf (upb) materialises a bytes object when raw_input_contents[i] is read: one payload's worth.
    # A copy in the codec would make it two.
    size = 16 << 20
    spec = _spec([("x", "UINT8", (-1,))], max_batch_size=1)
    request = _raw_request(("x", "UINT8", [1, size], bytes(size)))
    tracemalloc.start()
    try:
        decoded = decode_request(request, spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.inputs["x"].nbytes == size
    assert peak < size * 1.5, f"decode peaked at {peak} bytes for a {size}-byte input"


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"])
def test_raw_decode_every_fixed_size_type(datatype: str) -> None:
    dtype = numpy_dtype(datatype)
    values = (np.arange(6) % 2).astype(dtype).reshape(2, 3) if datatype == "BOOL" else np.arange(6).astype(dtype).reshape(2, 3)
    decoded = decode_request(_array_request({"x": (datatype, values)}), _spec([("x", datatype, (3,))]))
    assert decoded.inputs["x"].dtype == dtype
    np.testing.assert_array_equal(decoded.inputs["x"], values)
    assert decoded.rows == 2


def test_raw_decode_bf16() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([[1.5, -2.0]], dtype=ml_dtypes.bfloat16)
    decoded = decode_request(_array_request({"x": ("BF16", values)}), _spec([("x", "BF16", (2,))]))
    assert decoded.inputs["x"].dtype == values.dtype
    np.testing.assert_array_equal(decoded.inputs["x"].astype(np.float32), values.astype(np.float32))


def test_raw_decode_bytes() -> None:
    values = np.array([[b"a", b""], [b"\x00\xff", "h\u00e9".encode()]], dtype=np.object_)
    spec = _spec([("s", "BYTES", (2,))])
    decoded = decode_request(_raw_request(("s", "BYTES", [2, 2], serialize_bytes_tensor(values))), spec)
    array = decoded.inputs["s"]
    assert array.dtype == np.object_ and array.shape == (2, 2)
    assert array.tolist() == values.tolist()


def test_variable_dims_and_rows() -> None:
    spec = _spec([("a", "FP32", (-1, 2)), ("b", "INT64", ())])
    a = np.zeros((3, 5, 2), np.float32)
    b = np.arange(3, dtype=np.int64)
    decoded = decode_request(_array_request({"a": ("FP32", a), "b": ("INT64", b)}), spec)
    assert decoded.rows == 3
    assert decoded.inputs["a"].shape == (3, 5, 2) and decoded.inputs["b"].shape == (3,)
    assert isinstance(decoded, DecodedRequest)


def test_model_without_batch_dimension() -> None:
    spec = _spec([("x", "FP32", (2, 3))], max_batch_size=0)
    values = np.ones((2, 3), np.float32)
    decoded = decode_request(_array_request({"x": ("FP32", values)}), spec)
    assert decoded.rows == 1 and decoded.inputs["x"].shape == (2, 3)
    message = _invalid(_array_request({"x": ("FP32", np.ones((1, 2, 3), np.float32))}), spec)
    assert message == "input 'x' has shape [1, 2, 3] but model 'm' expects [2, 3]"


def test_scalar_input_without_batch_dimension() -> None:
    spec = _spec([("x", "INT32", ())], max_batch_size=0)
    decoded = decode_request(_raw_request(("x", "INT32", [], np.int32(7).tobytes())), spec)
    assert decoded.inputs["x"].shape == () and int(decoded.inputs["x"]) == 7


def test_optional_input_may_be_omitted() -> None:
    spec = _spec([TensorConfig(name="x", datatype="FP32", dims=(2,)), TensorConfig(name="mask", datatype="BOOL", dims=(2,), optional=True)])
    decoded = decode_request(_array_request({"x": ("FP32", np.zeros((4, 2), np.float32))}), spec)
    assert set(decoded.inputs) == {"x"} and decoded.rows == 4


def test_request_with_only_optional_inputs_omitted_has_one_row() -> None:
    spec = _spec([TensorConfig(name="x", datatype="FP32", dims=(2,), optional=True)])
    decoded = decode_request(pb.ModelInferRequest(model_name="m"), spec)
    assert decoded.inputs == {} and decoded.rows == 1


# --- typed contents --------------------------------------------------------------------------------------

_TYPED_VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 254, 255],
    "UINT16": [0, 1, 65534, 65535],
    "UINT32": [0, 1, 2**32 - 2, 2**32 - 1],
    "UINT64": [0, 1, 2**64 - 2, 2**64 - 1],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-32768, -1, 0, 32767],
    "INT32": [-(2**31), -1, 0, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**63 - 1],
    "FP32": [-1.5, 0.0, 0.25, 3.0e38],
    "FP64": [-1.5, 0.0, 1e-300, 1e300],
    "BYTES": [b"", b"a", b"\x00\xff", "h\u00e9".encode()],
}


def test_typed_values_cover_every_contents_field() -> None:
    assert set(_TYPED_VALUES) == set(CONTENTS_FIELD)


@pytest.mark.parametrize("datatype", sorted(_TYPED_VALUES))
def test_typed_contents_decode(datatype: str) -> None:
    values = _TYPED_VALUES[datatype]
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 2])
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(values)
    decoded = decode_request(request, _spec([("x", datatype, (2,))]))
    array = decoded.inputs["x"]
    assert array.shape == (2, 2)
    assert array.dtype == numpy_dtype(datatype)
    if datatype == "BYTES":
        assert array.reshape(-1).tolist() == values
    else:
        np.testing.assert_array_equal(array.reshape(-1), np.array(values, dtype=numpy_dtype(datatype)))


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_typed_contents_rejected_for_types_without_a_field(datatype: str) -> None:
    if datatype == "BF16":
        pytest.importorskip("ml_dtypes")
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=datatype, shape=[1, 2]).contents.fp32_contents.extend([1.0, 2.0])
    message = _invalid(request, _spec([("x", datatype, (2,))]))
    assert message == f"input 'x' is {datatype}, which must be sent in raw_input_contents (it has no typed contents field)"


def test_typed_input_without_contents_rejected() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT64", shape=[1, 2])
    assert _invalid(request, _spec([("x", "INT64", (2,))])) == "input 'x' has no data: set raw_input_contents or contents.int64_contents"


def test_typed_contents_count_mismatch_rejected() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend([1.0, 2.0, 3.0])
    assert _invalid(request, _spec([("x", "FP32", (2,))])) == "input 'x' has 3 values in contents.fp32_contents but shape [2, 2] needs 4"


def test_typed_contents_in_the_wrong_field_rejected() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT32", shape=[1, 2]).contents.int64_contents.extend([1, 2])
    assert _invalid(request, _spec([("x", "INT32", (2,))])) == "input 'x' has 0 values in contents.int_contents but shape [1, 2] needs 2"


@pytest.mark.parametrize(("datatype", "value"), [("INT8", 128), ("INT8", -129), ("INT16", 40000), ("UINT8", 256), ("UINT16", 65536)])
def test_typed_value_out_of_range_rejected(datatype: str, value: int) -> None:
    request = pb.ModelInferRequest(model_name="m")
    getattr(request.inputs.add(name="x", datatype=datatype, shape=[1, 1]).contents, CONTENTS_FIELD[datatype]).append(value)
    message = _invalid(request, _spec([("x", datatype, (1,))]))
    assert message == f"input 'x': a value in contents.{CONTENTS_FIELD[datatype]} does not fit {datatype}"


# --- errors ----------------------------------------------------------------------------------------------


def test_unknown_input_rejected() -> None:
    spec = _spec([("x", "FP32", (2,)), ("w", "FP32", (2,))])
    message = _invalid(_array_request({"z": ("FP32", np.zeros((1, 2), np.float32))}), spec)
    assert message == "unexpected input 'z' for model 'm'; its inputs are ['w', 'x']"


def test_duplicate_input_rejected() -> None:
    data = np.zeros((1, 2), np.float32).tobytes()
    request = _raw_request(("x", "FP32", [1, 2], data), ("x", "FP32", [1, 2], data))
    assert _invalid(request, _spec([("x", "FP32", (2,))])) == "input 'x' appears twice in the request"


@pytest.mark.parametrize(("sent", "shown"), [("FP64", "FP64"), ("fp32", "fp32"), ("", "(empty)")])
def test_wrong_datatype_rejected(sent: str, shown: str) -> None:
    request = _raw_request(("x", sent, [1, 2], bytes(8)))
    assert _invalid(request, _spec([("x", "FP32", (2,))])) == f"input 'x' has datatype {shown} but model 'm' expects FP32"


@pytest.mark.parametrize(
    ("dims", "shape", "expected"),
    [
        ((4,), [4], "[-1, 4]"),
        ((4,), [1, 4, 1], "[-1, 4]"),
        ((-1, 3), [1, 3], "[-1, -1, 3]"),
        ((), [1, 1], "[-1]"),
    ],
)
def test_wrong_rank_rejected(dims: tuple[int, ...], shape: list[int], expected: str) -> None:
    request = _raw_request(("x", "FP32", shape, bytes(4 * int(np.prod(shape)))))
    assert _invalid(request, _spec([("x", "FP32", dims)])) == f"input 'x' has shape {shape} but model 'm' expects {expected}"


def test_wrong_fixed_dim_rejected() -> None:
    request = _raw_request(("x", "FP32", [2, 5, 3], bytes(4 * 30)))
    assert _invalid(request, _spec([("x", "FP32", (-1, 4))])) == "input 'x' has shape [2, 5, 3] but model 'm' expects [-1, -1, 4]"


def test_negative_dim_rejected() -> None:
    request = _raw_request(("x", "FP32", [1, -4], b""))
    assert _invalid(request, _spec([("x", "FP32", (-1,))])) == "input 'x' has shape [1, -4] but model 'm' expects [-1, -1]"


@pytest.mark.parametrize("rows", [0, 9, 10**9])
def test_batch_size_out_of_range_rejected(rows: int) -> None:
    request = _raw_request(("x", "FP32", [rows, 2], b""))
    message = _invalid(request, _spec([("x", "FP32", (2,))], max_batch_size=8))
    assert message == f"input 'x' has batch size {rows} but model 'm' accepts 1 to 8 rows per request (max_batch_size)"


def test_rows_differing_across_inputs_rejected() -> None:
    spec = _spec([("a", "FP32", (2,)), ("b", "INT32", (1,))])
    request = _array_request({"a": ("FP32", np.zeros((3, 2), np.float32)), "b": ("INT32", np.zeros((2, 1), np.int32))})
    assert _invalid(request, spec) == "input 'b' has 2 rows but an earlier input has 3; all inputs need the same batch size"


@pytest.mark.parametrize("size", [0, 23, 25, 48])
def test_raw_byte_length_mismatch_rejected(size: int) -> None:
    request = _raw_request(("x", "FP32", [2, 3], bytes(size)))
    message = _invalid(request, _spec([("x", "FP32", (3,))]))
    assert message == f"input 'x' has {size} bytes of raw data but shape [2, 3] of FP32 needs 24 bytes"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "BYTES data of 0 bytes cannot hold 2 elements (each needs a 4-byte length)"),
        (_U32.pack(1) + b"a" + b"\x01\x00", "BYTES data of 7 bytes cannot hold 2 elements (each needs a 4-byte length)"),
        (_U32.pack(2) + b"ab" + b"\x01\x00", "BYTES data ends inside the length prefix of element 1 (of 2)"),
        (_U32.pack(1) + b"a" + _U32.pack(5) + b"ab", "BYTES element 1 claims 5 bytes but only 2 remain"),
        (_U32.pack(1) + b"a" + _U32.pack(1) + b"b" + b"zz", "BYTES data has 2 bytes after its 2 elements"),
        (_U32.pack(0) + _U32.pack(0) + _U32.pack(0), "BYTES data has 4 bytes after its 2 elements"),
    ],
)
def test_bytes_truncated_or_trailing_rejected(data: bytes, problem: str) -> None:
    request = _raw_request(("s", "BYTES", [1, 2], data))
    assert _invalid(request, _spec([("s", "BYTES", (2,))])) == f"input 's': {problem}"


@pytest.mark.parametrize("raw_count", [1, 3])
def test_raw_count_differing_from_inputs_rejected(raw_count: int) -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=[1, 2])
    request.inputs.add(name="b", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.extend([bytes(8)] * raw_count)
    message = _invalid(request, _spec([("a", "FP32", (2,)), ("b", "FP32", (2,))]))
    assert message == f"request has 2 inputs but {raw_count} raw_input_contents entries; send one per input, in order"


def test_missing_required_input_rejected() -> None:
    spec = _spec([("a", "FP32", (2,)), ("b", "FP32", (2,)), TensorConfig(name="c", datatype="FP32", dims=(2,), optional=True)])
    message = _invalid(_array_request({"a": ("FP32", np.zeros((1, 2), np.float32))}), spec)
    assert message == "missing input(s) ['b'] for model 'm'; it needs ['a', 'b']"


def test_unknown_requested_output_rejected() -> None:
    spec = _spec([("x", "FP32", (2,))], outputs=[("y", "FP32", (2,)), ("z", "INT64", ())])
    request = _array_request({"x": ("FP32", np.zeros((1, 2), np.float32))}, outputs=["y", "w"])
    assert _invalid(request, spec) == "unknown output 'w' requested from model 'm'; its outputs are ['y', 'z']"


def test_requested_outputs_keep_order_and_drop_duplicates() -> None:
    spec = _spec([("x", "FP32", (2,))], outputs=[("y", "FP32", (2,)), ("z", "INT64", ())])
    x = {"x": ("FP32", np.zeros((1, 2), np.float32))}
    assert decode_request(_array_request(x), spec).output_names == ("y", "z")
    assert decode_request(_array_request(x, outputs=["z"]), spec).output_names == ("z",)
    assert decode_request(_array_request(x, outputs=["z", "y", "z"]), spec).output_names == ("z", "y")


# --- a huge claimed shape costs nothing ------------------------------------------------------------------


_NO_ELEMENT_LIMITS = Limits(max_tensor_elements=2**62, max_request_elements=2**62)


def _decode_under_tracemalloc(request: pb.ModelInferRequest, spec: Any) -> tuple[Exception | None, int]:
    tracemalloc.start()
    error: Exception | None = None
    try:
        decode_request(request, spec, _NO_ELEMENT_LIMITS)  # the byte checks alone must refuse without allocating
    except Exception as exc:  # returned for the caller to judge
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("datatype", ["FP32", "UINT8", "INT64"])
def test_huge_claimed_shape_with_tiny_raw_buffer_rejected_without_allocating(datatype: str) -> None:
    spec = _spec([("x", datatype, (-1, -1))], max_batch_size=8)
    request = _raw_request(("x", datatype, [1, 10**6, 10**6], bytes(16)))  # 10**12 elements claimed
    error, peak = _decode_under_tracemalloc(request, spec)
    assert isinstance(error, InvalidInput), error
    assert "input 'x' has 16 bytes of raw data but shape [1, 1000000, 1000000]" in str(error)
    assert peak < 1 << 20, f"peak {peak} bytes"


def test_huge_claimed_shape_with_few_typed_values_rejected_without_allocating() -> None:
    spec = _spec([("x", "BYTES", (-1, -1))], max_batch_size=8)
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="BYTES", shape=[1, 10**6, 10**6]).contents.bytes_contents.extend([b"a", b"b"])
    error, peak = _decode_under_tracemalloc(request, spec)
    assert isinstance(error, InvalidInput), error
    assert str(error) == "input 'x' has 2 values in contents.bytes_contents but shape [1, 1000000, 1000000] needs 1000000000000"
    assert peak < 1 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize("elements", [10**7, 10**12])
def test_huge_claimed_bytes_shape_with_tiny_raw_buffer_rejected_without_allocating(elements: int) -> None:
    spec = _spec([("s", "BYTES", (-1,))], max_batch_size=8)
    request = _raw_request(("s", "BYTES", [1, elements], _U32.pack(1) + b"a"))
    error, peak = _decode_under_tracemalloc(request, spec)
    assert isinstance(error, InvalidInput), error
    assert str(error).startswith("input 's': ")
    assert peak < 1 << 20, f"peak {peak} bytes"


# --- encode_response -------------------------------------------------------------------------------------


def _encode_spec():
    return _spec(
        [("x", "FP32", (2,))],
        outputs=[("probs", "FP32", (2,)), ("label", "BYTES", ()), ("index", "INT64", ())],
    )


def test_encode_writes_one_raw_entry_per_output_in_requested_order() -> None:
    spec = _encode_spec()
    request = _array_request({"x": ("FP32", np.zeros((2, 2), np.float32))}, outputs=["index", "probs"])
    request.id = "req-42"
    decoded = decode_request(request, spec)
    outputs = {
        "probs": np.array([[0.25, 0.75], [0.5, 0.5]], np.float32),
        "label": np.array([b"cat", b"dog"], np.object_),
        "index": np.array([1, 0], np.int64),
    }
    response = encode_response(request, spec, "3", outputs, decoded.output_names)
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "req-42")
    assert [o.name for o in response.outputs] == ["index", "probs"]
    assert [o.datatype for o in response.outputs] == ["INT64", "FP32"]
    assert [list(o.shape) for o in response.outputs] == [[2], [2, 2]]
    assert len(response.raw_output_contents) == 2
    assert response.raw_output_contents[0] == outputs["index"].tobytes()
    assert response.raw_output_contents[1] == outputs["probs"].tobytes()
    assert not any(o.HasField("contents") for o in response.outputs)


def test_encode_all_outputs_when_none_requested() -> None:
    spec = _encode_spec()
    request = _array_request({"x": ("FP32", np.zeros((1, 2), np.float32))})
    decoded = decode_request(request, spec)
    outputs = {"probs": np.ones((1, 2), np.float32), "label": np.array(["x"], np.object_), "index": np.zeros(1, np.int64)}
    response = encode_response(request, spec, "1", outputs, decoded.output_names)
    assert [o.name for o in response.outputs] == ["probs", "label", "index"]
    assert len(response.raw_output_contents) == 3
    assert response.id == ""


def test_encode_serialises_bytes_outputs() -> None:
    spec = _encode_spec()
    request = pb.ModelInferRequest(model_name="m", id="b")
    labels = np.array([["cat", b"\x00dog"], ["", "\u00e9"]], dtype=np.object_)
    response = encode_response(request, spec, "1", {"label": labels}, ("label",))
    out = response.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("label", "BYTES", [2, 2])
    raw = response.raw_output_contents[0]
    assert raw == _U32.pack(3) + b"cat" + _U32.pack(4) + b"\x00dog" + _U32.pack(0) + _U32.pack(2) + "\u00e9".encode()
    assert deserialize_bytes_tensor(raw, 4).tolist() == [b"cat", b"\x00dog", b"", "\u00e9".encode()]


def test_encode_serialises_numpy_string_arrays_as_bytes() -> None:
    spec = _encode_spec()
    response = encode_response(pb.ModelInferRequest(), spec, "1", {"label": np.array(["ab", "c"])}, ("label",))
    assert response.raw_output_contents[0] == _U32.pack(2) + b"ab" + _U32.pack(1) + b"c"


@pytest.mark.parametrize(
    ("name", "returned", "datatype", "expected"),
    [
        ("probs", np.array([[0.5, 1.5]], np.float64), "FP32", np.array([[0.5, 1.5]], np.float32)),
        ("probs", np.array([[1, 2]], np.int64), "FP32", np.array([[1.0, 2.0]], np.float32)),
        ("index", np.array([7], np.int32), "INT64", np.array([7], np.int64)),
        ("index", np.array([3], np.uint8), "INT64", np.array([3], np.int64)),
    ],
)
def test_encode_casts_to_the_declared_dtype(name: str, returned: np.ndarray, datatype: str, expected: np.ndarray) -> None:
    spec = _encode_spec()
    response = encode_response(pb.ModelInferRequest(id="c"), spec, "1", {name: returned}, (name,))
    out = response.outputs[0]
    assert out.datatype == datatype and list(out.shape) == list(expected.shape)
    assert response.raw_output_contents[0] == expected.tobytes()
    assert len(response.raw_output_contents[0]) == expected.size * numpy_dtype(datatype).itemsize


def test_encode_non_contiguous_output_is_written_row_major() -> None:
    spec = _spec([("x", "FP32", (2,))], outputs=[("y", "FP32", (3,))])
    y = np.arange(6, dtype=np.float32).reshape(3, 2).T  # (2, 3), Fortran-ordered view
    response = encode_response(pb.ModelInferRequest(), spec, "1", {"y": y}, ("y",))
    assert response.raw_output_contents[0] == np.ascontiguousarray(y).tobytes()


def test_decode_encode_round_trip() -> None:
    spec = _spec([("x", "INT16", (3,))], outputs=[("y", "INT16", (3,))])
    x = np.array([[1, -2, 3], [4, 5, -6]], np.int16)
    request = _array_request({"x": ("INT16", x)})
    decoded = decode_request(request, spec)
    response = encode_response(request, spec, "1", {"y": decoded.inputs["x"]}, decoded.output_names)
    echoed = np.frombuffer(response.raw_output_contents[0], np.int16).reshape(tuple(response.outputs[0].shape))
    np.testing.assert_array_equal(echoed, x)


# --- parameter_value -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value"),
    [
        (pb.InferParameter(bool_param=True), True),
        (pb.InferParameter(bool_param=False), False),
        (pb.InferParameter(int64_param=-5), -5),
        (pb.InferParameter(uint64_param=2**64 - 1), 2**64 - 1),
        (pb.InferParameter(double_param=0.5), 0.5),
        (pb.InferParameter(string_param="fast"), "fast"),
        (pb.InferParameter(string_param=""), ""),
        (pb.InferParameter(), None),
    ],
)
def test_parameter_value(param: pb.InferParameter, value: Any) -> None:
    result = parameter_value(param)
    assert result == value and type(result) is type(value)


# -- Triton's tensor-parameter extensions: classification, shared memory (one check for both edges) ----------


def _classify_request(count: pb.InferParameter, output: str = "probs", x: np.ndarray | None = None) -> pb.ModelInferRequest:
    request = _array_request({"x": ("FP32", np.zeros((2, 2), np.float32) if x is None else x)}, outputs=[output])
    request.outputs[0].parameters["classification"].CopyFrom(count)
    return request


def test_classification_is_top_k_per_row_with_labels() -> None:
    labelled = TensorConfig(name="probs", datatype="FP32", dims=(4,), label_filename="labels.txt", labels=("cat", "dog", "", "emu"))
    spec = _spec([("x", "FP32", (2,))], outputs=[labelled])
    request = _classify_request(pb.InferParameter(int64_param=2))
    decoded = decode_request(request, spec)
    assert decoded.output_names == ("probs",) and decoded.classes == {"probs": 2}
    probs = np.array([[0.1, 0.6, 0.2, 0.1], [0.3, 0.3, 0.35, 0.05]], np.float32)
    response = encode_response(request, spec, "1", {"probs": probs}, decoded.output_names, decoded.classes)
    out = response.outputs[0]
    assert (out.datatype, list(out.shape)) == ("BYTES", [2, 2])
    # C's %f for the value, the index in the row, the label when its line is not empty; ties: lower index first
    assert deserialize_bytes_tensor(response.raw_output_contents[0], 4).tolist() == [
        b"0.600000:1:dog", b"0.200000:2", b"0.350000:2", b"0.300000:0:cat",
    ]


def test_classification_without_batch_dimension_integers_and_more_classes_than_values() -> None:
    spec = _spec([("x", "FP32", (2,))], outputs=[("counts", "INT32", (2, 2))], max_batch_size=0)
    request = _classify_request(pb.InferParameter(uint64_param=9), output="counts", x=np.zeros(2, np.float32))
    request.inputs[0].ClearField("shape")
    request.inputs[0].shape.extend([2])
    decoded = decode_request(request, spec)
    response = encode_response(request, spec, "1", {"counts": np.array([[5, -1], [7, 0]], np.int32)}, decoded.output_names, decoded.classes)
    assert list(response.outputs[0].shape) == [4]  # min(k, values): the whole tensor is one row
    assert deserialize_bytes_tensor(response.raw_output_contents[0], 4).tolist() == [b"7:2", b"5:0", b"0:3", b"-1:1"]


def test_classification_zero_is_the_raw_output() -> None:
    spec = _encode_spec()
    decoded = decode_request(_classify_request(pb.InferParameter(int64_param=0)), spec)
    assert decoded.classes is None


@pytest.mark.parametrize(
    ("count", "output", "fragment"),
    [
        (pb.InferParameter(int64_param=-1), "probs", "non-negative integer"),
        (pb.InferParameter(bool_param=True), "probs", "non-negative integer"),
        (pb.InferParameter(string_param="2"), "probs", "non-negative integer"),
        (pb.InferParameter(), "probs", "non-negative integer"),
        (pb.InferParameter(int64_param=1), "label", "BYTES: classification needs a numeric output"),
    ],
)
def test_classification_parameter_errors(count: pb.InferParameter, output: str, fragment: str) -> None:
    assert fragment in _invalid(_classify_request(count, output), _encode_spec())


def _unsupported(request: pb.ModelInferRequest, spec: Any) -> str:
    from surge.server.errors import Unsupported

    with pytest.raises(Unsupported) as info:
        decode_request(request, spec)
    return str(info.value)


@pytest.mark.parametrize("key", ["shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"])
def test_shared_memory_parameters_are_unimplemented_on_inputs_and_outputs(key: str) -> None:
    spec = _spec([("x", "FP32", (2,)), ("z", "FP32", (2,))])
    # as tritonclient sends it: the shared-memory input has no raw entry, the other one has
    request = _raw_request(("z", "FP32", [1, 2], np.zeros(2, np.float32).tobytes()))
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2]).parameters[key].int64_param = 0
    message = _unsupported(request, spec)
    assert "input 'x' asks for shared memory" in message and "send the tensor in the request" in message
    alone = pb.ModelInferRequest(model_name="m")  # the only input, in shared memory: not "has no data"
    alone.inputs.add(name="x", datatype="FP32", shape=[1, 2]).parameters[key].int64_param = 0
    assert "input 'x' asks for shared memory" in _unsupported(alone, _spec([("x", "FP32", (2,))]))
    output = _array_request({"x": ("FP32", np.zeros((1, 2), np.float32))}, outputs=["y"])
    output.outputs[0].parameters[key].string_param = "region"
    assert "output 'y' asks for shared memory" in _unsupported(output, _spec([("x", "FP32", (2,))]))


# --- the wire path: a received message decoded in place; responses from the skeleton --------------------


def test_a_16_mib_input_received_on_the_wire_is_decoded_without_a_copy() -> None:
    """The gRPC edge's deserializer (wire.parse_infer_request) hands decode_request views of the received message:
    the model's array is the message's own memory."""
    from surge.server.edge import wire

    values = np.random.default_rng(0).standard_normal((4, 1 << 20)).astype(np.float32)  # 16 MiB
    received = _array_request({"x": ("FP32", values)}).SerializeToString()
    tracemalloc.start()
    try:
        decoded = decode_request(wire.parse_infer_request(received), _spec([("x", "FP32", (-1,))]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    array = decoded.inputs["x"]
    assert array.shape == values.shape and array.tobytes() == values.tobytes()
    assert np.shares_memory(array, np.frombuffer(received, np.uint8))
    assert peak < 1 << 20, f"decoding a 16 MiB input allocated {peak} bytes"


def _every_datatype_outputs() -> tuple[list[tuple[str, str, tuple[int, ...]]], dict[str, np.ndarray]]:
    datatypes = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
    rng = np.random.default_rng(1)
    outputs: dict[str, np.ndarray] = {}
    for dt in datatypes:
        if dt == "BYTES":
            outputs[f"o_{dt}"] = np.array([[b"", b"\x00a"], [b"surge", b"x" * 300]], dtype=object)
        else:
            dtype = numpy_dtype(dt)
            outputs[f"o_{dt}"] = rng.integers(0, 256, size=(2, 2 * dtype.itemsize), dtype=np.uint8).view(dtype).reshape(2, 2)
    return [(name, name[2:], (2,)) for name in outputs], outputs


@pytest.mark.parametrize("large", [False, True], ids=["joined", "assembled"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_responses_from_the_skeleton_are_protobufs_bytes_for_every_datatype(stream: bool, large: bool) -> None:
    from surge.server.edge import codec, wire
    from surge.server.edge import stream as streams

    tensors, outputs = _every_datatype_outputs()
    spec = _spec([("x", "FP32", (1,))], tensors)
    names = tuple(reversed(outputs))  # as requested, not as declared
    header, arrays = codec.encode_header("rid", spec, "7", outputs, names, parameters=streams.FINAL_PARAMETER if stream else b"")
    built = (wire.assemble if large else wire.join)(header, arrays, stream=stream)
    expected = encode_response(pb.ModelInferRequest(id="rid"), spec, "7", outputs, names)
    if stream:
        expected.parameters[streams.FINAL_RESPONSE].bool_param = True
        assert built == pb.ModelStreamInferResponse(infer_response=expected).SerializeToString()
    else:
        assert built == expected.SerializeToString()
    again, _ = codec.encode_header("rid", spec, "7", outputs, names, parameters=streams.FINAL_PARAMETER if stream else b"")
    assert again == header  # the second time from the skeleton's remembered entries


def test_the_skeleton_follows_each_response_shape() -> None:
    from surge.server.edge import codec, wire

    spec = _spec([("x", "FP32", (-1,))], [("y", "FP32", (-1,))])
    for rows, cols in ((1, 3), (4, 1), (1, 3), (8, 0)):
        y = np.ones((rows, cols), np.float32)
        response = pb.ModelInferResponse.FromString(wire.join(*codec.encode_header("", spec, "1", {"y": y}, ("y",))))
        assert list(response.outputs[0].shape) == [rows, cols] and response.raw_output_contents[0] == y.tobytes()
        assert response.id == "" and (response.model_name, response.model_version) == ("m", "1")


# --- templates: a request whose head was decoded before ------------------------------------------------------------


def _decoded_as_tuple(d: DecodedRequest) -> tuple:
    return ({k: (v.dtype, v.shape, v.tolist() if v.dtype == object else v.tobytes()) for k, v in d.inputs.items()}, d.output_names, d.rows, d.priority, d.timeout_s, d.classes, d.targets)


def _wire(request: pb.ModelInferRequest) -> Any:
    from surge.server.edge import wire

    return wire.parse_infer_request(request.SerializeToString())


@pytest.mark.parametrize("outputs", [None, ["y"]])
def test_a_template_decodes_exactly_what_the_full_decode_does(outputs: list[str] | None) -> None:
    spec = _spec([("a", "FP32", (3,)), ("b", "INT64", (-1,)), ("s", "BYTES", (1,))], outputs=[("y", "FP32", (2,))])
    rng = np.random.default_rng(3)
    for rows in (1, 2, 1, 2):
        arrays = {"a": ("FP32", rng.standard_normal((rows, 3)).astype(np.float32)), "b": ("INT64", rng.integers(0, 9, (rows, 5))),
                  "s": ("BYTES", np.array([[b"x" * rows]] * rows, dtype=object))}  # fmt: skip
        request = _raw_request(*((n, dt, list(a.shape), serialize_bytes_tensor(a) if dt == "BYTES" else a.tobytes()) for n, (dt, a) in arrays.items()),
                               outputs=outputs)  # fmt: skip
        request.parameters["priority"].int64_param = 2
        full = decode_request(request, spec)
        first, second = decode_request(_wire(request), spec), decode_request(_wire(request), spec)  # the second from the template
        assert _decoded_as_tuple(first) == _decoded_as_tuple(second) == _decoded_as_tuple(full)
        assert first.priority == 2 and second.inputs["s"].tolist() == full.inputs["s"].tolist()
    assert len(spec.templates) == 2  # one per head (rows 1 and 2), each from its first request


def test_a_template_hit_with_wrong_tensor_bytes_fails_as_the_full_decode_does() -> None:
    spec = _spec([("x", "FP32", (4,))])
    good = _array_request({"x": ("FP32", np.ones((1, 4), np.float32))})
    decode_request(_wire(good), spec)
    short = pb.ModelInferRequest()
    short.CopyFrom(good)
    short.raw_input_contents[0] = b"\x00" * 12
    with pytest.raises(InvalidInput, match=r"has 12 bytes of raw data but shape \[1, 4\] of FP32 needs 16 bytes"):
        decode_request(_wire(short), spec)
    missing = pb.ModelInferRequest()
    missing.CopyFrom(good)
    del missing.raw_input_contents[:]
    missing.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])  # the data in the head instead: a head of its own
    assert decode_request(_wire(missing), spec).inputs["x"].tolist() == [[1, 2, 3, 4]]
    assert len(spec.templates) == 1  # data sent in the head never becomes a template


def test_a_template_is_per_version_and_per_limits() -> None:
    request = _array_request({"x": ("FP32", np.ones((4, 2), np.float32))})
    loose, strict = Limits(), Limits(max_batch_rows=2)
    spec = _spec([("x", "FP32", (2,))])
    decode_request(_wire(request), spec, loose)
    with pytest.raises(LimitExceeded, match="max_batch_rows"):
        decode_request(_wire(request), spec, strict)  # remembered under other limits: decoded (and refused) in full
    other = _spec([("x", "FP32", (3,))])
    with pytest.raises(InvalidInput, match="expects"):
        decode_request(_wire(request), other)  # another version's spec has its own templates


def test_templates_stay_bounded() -> None:
    from surge.server.edge import codec

    spec = _spec([("x", "FP32", (-1,))], max_batch_size=0)
    for n in range(codec._MAX_TEMPLATES + 20):
        decode_request(_wire(_array_request({"x": ("FP32", np.ones(n + 1, np.float32))})), spec)
    assert 0 < len(spec.templates) <= codec._MAX_TEMPLATES
