"""wire.py: large ModelInfer messages parsed and built without copying tensor bytes, byte-identical to protobuf."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from surge.protos import grpc_service_pb2 as pb
from surge.server.edge import wire

BIG = wire.LARGE_MESSAGE_BYTES


def _request(*arrays: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="req-1")
    request.parameters["priority"].int64_param = 1
    request.outputs.add(name="y")
    for i, a in enumerate(arrays):
        request.inputs.add(name=f"x{i}", datatype="FP32", shape=a.shape)
        request.raw_input_contents.append(a.tobytes())
    return request


def test_a_large_request_keeps_its_tensors_in_place():
    a, b = np.arange(BIG // 4, dtype=np.float32), np.ones(3, np.float32)
    data = _request(a, b).SerializeToString()
    parsed = wire.parse_infer_request(data)
    assert isinstance(parsed, wire.WireRequest)
    assert all(isinstance(r, memoryview) and r.obj is data for r in parsed.raw_input_contents)  # views of the message
    np.testing.assert_array_equal(np.frombuffer(parsed.raw_input_contents[0], np.float32), a)
    np.testing.assert_array_equal(np.frombuffer(parsed.raw_input_contents[1], np.float32), b)
    expected = pb.ModelInferRequest.FromString(data)
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "2", "req-1")
    assert list(parsed.inputs) == list(expected.inputs) and list(parsed.outputs) == list(expected.outputs)
    assert parsed.parameters["priority"].int64_param == 1


def test_fields_in_any_order_and_repeated_scalars_parse_as_protobuf_does():
    a = np.arange(BIG // 4, dtype=np.float32)
    raw = _request(a).SerializeToString()
    tail = pb.ModelInferRequest(model_name="later").SerializeToString()  # a repeated singular field: the last wins
    data = tail + raw + tail
    parsed = wire.parse_infer_request(data)
    assert parsed.model_name == pb.ModelInferRequest.FromString(data).model_name == "later"
    assert len(parsed.raw_input_contents) == 1


def _same_as_protobuf(parsed, data: bytes) -> None:
    expected = pb.ModelInferRequest.FromString(data)
    assert (parsed.model_name, parsed.model_version, parsed.id) == (expected.model_name, expected.model_version, expected.id)
    assert [bytes(r) for r in parsed.raw_input_contents] == list(expected.raw_input_contents)
    assert list(parsed.inputs) == list(expected.inputs) and list(parsed.outputs) == list(expected.outputs)
    assert dict(parsed.parameters) == dict(expected.parameters)


def test_a_small_request_is_scanned_into_views_and_its_head():
    data = _request(np.ones(4, np.float32), np.zeros(2, np.float32)).SerializeToString()
    parsed = wire.parse_infer_request(data)
    assert isinstance(parsed, wire.WireRequest) and parsed.head
    assert all(isinstance(r, memoryview) and r.obj is data for r in parsed.raw_input_contents)
    _same_as_protobuf(parsed, data)
    again = wire.parse_infer_request(data)  # the head is known now: protobuf is not asked until an attribute needs it
    assert again.head == parsed.head and again._message is None
    _same_as_protobuf(again, data)
    # once parsed lazily, the whole message is the request's, name, version and id included
    expected = pb.ModelInferRequest.FromString(data)
    del expected.raw_input_contents[:]
    assert again.SerializeToString() == expected.SerializeToString()


@pytest.mark.parametrize(
    "data",
    [
        pb.ModelInferRequest(id="only-an-id").SerializeToString(),
        b"",
        _request(np.ones(2, np.float32)).SerializeToString() + b"\x98\x06\x01",  # an unknown varint field: protobuf's parse
        b"\x0a\x01n" + _request(np.ones(2, np.float32)).SerializeToString(),  # model_name "n", then "m": the last wins
        pb.ModelInferRequest(model_name="m", id="x" * 300).SerializeToString(),  # a two-byte length
    ],
)
def test_small_requests_of_every_shape_parse_as_protobuf_does(data):
    _same_as_protobuf(wire.parse_infer_request(data), data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x2a\x03\xff\xff\xff",  # an inputs entry that is not a message
        b"\x2a\x02\x0a\x05",  # an inputs entry whose name runs past the entry
        b"\x0a\x02\xff\xfe",  # invalid UTF-8 in model_name
        b"\x3a\x10abc",  # raw_input_contents past the end
        b"\x1a",  # a tag and no length
    ],
)
def test_malformed_small_requests_raise_every_time(data):
    for _ in range(2):  # a malformed head is never remembered as known
        with pytest.raises((ValueError, DecodeError)):
            wire.parse_infer_request(data)


def test_known_heads_stay_bounded():
    for i in range(wire._MAX_KNOWN_HEADS + 10):
        wire.parse_infer_request(pb.ModelInferRequest(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=f"y{i}")]).SerializeToString())
    assert len(wire._known_heads) <= wire._MAX_KNOWN_HEADS


@pytest.mark.parametrize(
    "data",
    [
        b"\x3a\xff\xff\xff\x0f" + bytes(BIG),  # raw_input_contents claims 4 GiB
        b"\x0a\x05abc" + bytes(BIG),  # a string field running into zeros: field 0 is invalid
        b"\x0a\x03\xff\xfe\xfd" + _request(np.ones(BIG // 4, np.float32)).SerializeToString(),  # invalid UTF-8 in model_name
        b"\x08" + b"\xff" * 11 + bytes(BIG),  # an overlong varint
    ],
)
def test_malformed_large_requests_raise(data):
    with pytest.raises((ValueError, DecodeError)):
        wire.parse_infer_request(data)


def test_a_request_of_many_tiny_fields_goes_to_protobuf_in_one_call():
    data = b"\x98\x06\x01" * (BIG // 3)  # 350k top-level fields (unknown field 99, varint): the scan stops early
    parsed = wire.parse_infer_request(data)
    assert type(parsed) is pb.ModelInferRequest and parsed == pb.ModelInferRequest.FromString(data)


def _response(arrays: list[np.ndarray]) -> tuple[pb.ModelInferResponse, list[np.ndarray]]:
    header = pb.ModelInferResponse(model_name="m", model_version="1", id="r")
    for i, a in enumerate(arrays):
        header.outputs.add(name=f"y{i}", datatype="BYTES" if a.dtype == object else "FP32", shape=a.shape)
    return header, arrays


def test_assemble_writes_what_protobuf_would_serialise():
    arrays = [np.arange(BIG // 4 + 3, dtype=np.float32).reshape(-1, 1)[::1], np.array([b"a", b"bc", b""], dtype=object), np.zeros(0, np.float32)]
    header, _ = _response(arrays)
    built = wire.assemble(header.SerializeToString(), arrays)
    expected = pb.ModelInferResponse()
    expected.CopyFrom(header)
    expected.raw_output_contents.extend([arrays[0].tobytes(), b"\x01\x00\x00\x00a\x02\x00\x00\x00bc\x00\x00\x00\x00", b""])
    assert built == expected.SerializeToString()
    streamed = wire.assemble(header.SerializeToString(), arrays, stream=True)
    assert pb.ModelStreamInferResponse.FromString(streamed) == pb.ModelStreamInferResponse(infer_response=expected)
    assert wire.serialize(built) is built and wire.serialize(expected) == built


def test_assemble_copies_a_strided_array_in_order():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    header, _ = _response([a])
    parsed = pb.ModelInferResponse.FromString(wire.assemble(header.SerializeToString(), [a]))
    np.testing.assert_array_equal(np.frombuffer(parsed.raw_output_contents[0], np.float32).reshape(4, 3), a)
