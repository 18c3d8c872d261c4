"""rest_codec: HTTP/JSON <-> protocol messages, without a server; and the REST edge's status table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from surge.protos import grpc_service_pb2 as pb
from surge.protos import model_config_pb2 as mc
from surge.protos.datatypes import deserialize_bytes_tensor
from surge.server.errors import InvalidInput
from surge.server.errors import STATUS_NAME_OF
from surge.server.edge.rest import HTTP_STATUS_OF
from surge.server.edge.rest_codec import STEP, _leaves, decode_infer_request, encode_infer_response, load_parameters, message_to_json


def test_every_status_an_error_is_answered_with_has_an_http_status():
    """One taxonomy, two edges: an error class added to STATUS_NAME_OF must get an HTTP status too."""
    assert set(STATUS_NAME_OF.values()) <= set(HTTP_STATUS_OF)
    assert {HTTP_STATUS_OF[c] for c in STATUS_NAME_OF.values()} <= {400, 401, 403, 404, 413, 500, 501, 503, 504}


def flatten(values):
    return [v for part in _leaves(values) for v in part]


def test_leaves_are_row_major_keep_strings_whole_and_come_in_bounded_slices():
    assert flatten([[1, [2, 3]], [], [[4]], 5]) == [1, 2, 3, 4, 5]
    assert flatten(["ab", ["cd"]]) == ["ab", "cd"]
    rows = [[[r, c] for c in range(300)] for r in range(500)]  # 300,000 leaves, nested three deep
    expected = [v for row in rows for pair in row for v in pair]
    parts = list(_leaves(rows))
    assert [v for p in parts for v in p] == expected
    assert max(map(len, parts)) <= STEP
    assert rows == [None] * 500  # consumed: the numbers are freed as they are converted
    flat = list(range(3 * STEP + 5))
    assert [len(p) for p in _leaves(flat)] == [STEP, STEP, STEP, 5]


def test_json_and_binary_inputs_become_raw_contents_in_order():
    header = json.dumps({
        "id": "q", "parameters": {"priority": 2, "timeout": 1.5, "binary_data_output": True, "big": 2**64 - 1, "tag": "t"},
        "inputs": [
            {"name": "a", "datatype": "INT16", "shape": [2, 2], "data": [[1, -2], [3, 4]]},
            {"name": "b", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
            {"name": "c", "datatype": "BYTES", "shape": [2], "data": ["x", "\u00e9"]},
        ],
        "outputs": [{"name": "o", "parameters": {"binary_data": False}}, {"name": "p"}],
    }).encode()  # fmt: skip
    b = np.array([0.5, -1.0], np.float32).tobytes()
    request = decode_infer_request(header + b, str(len(header)), "m", "3")
    message = request.message
    assert (message.model_name, message.model_version, message.id) == ("m", "3", "q")
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [("a", "INT16", [2, 2]), ("b", "FP32", [2]), ("c", "BYTES", [2])]
    assert np.frombuffer(message.raw_input_contents[0], "<i2").tolist() == [1, -2, 3, 4]
    assert message.raw_input_contents[1] == b
    assert deserialize_bytes_tensor(message.raw_input_contents[2], 2).tolist() == [b"x", "\u00e9".encode()]
    params = message.parameters
    assert (params["priority"].int64_param, params["timeout"].double_param, params["big"].uint64_param, params["tag"].string_param) == (2, 1.5, 2**64 - 1, "t")
    assert "binary_data_output" not in params  # HTTP-only: it chooses the response's encoding
    assert [o.name for o in message.outputs] == ["o", "p"]
    assert (request.binary("o"), request.binary("p")) == (False, True)


@pytest.mark.parametrize(
    ("doc", "error", "fragment"),
    [
        ({"inputs": [{"name": "a", "datatype": "BF16", "shape": [1], "data": [1.0]}]}, InvalidInput, "BF16, which has no JSON form"),
        ({"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [-129]}]}, InvalidInput, "does not fit INT8"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": [1.0, True]}]}, InvalidInput, "must be numbers"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [True], "data": [1.0]}]}, InvalidInput, "non-negative integers"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": 1.0}]}, InvalidInput, "must be a JSON list"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1], "parameters": {"binary_data_size": 4}}]}, InvalidInput, "both"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], "parameters": {"p": [1]}}, InvalidInput, "boolean, number or string"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": {"name": "o"}}, InvalidInput, "must be a list"),
        ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}, InvalidInput, "needs a 'name'"),
    ],
)
def test_decode_errors_name_the_tensor_and_the_fix(doc, error, fragment):
    with pytest.raises(error) as info:
        decode_infer_request(json.dumps(doc).encode(), None, "m", "")
    assert fragment in str(info.value)


def test_extension_parameters_go_on_in_the_message_for_the_shared_check():
    """Classification and shared-memory parameters are not judged here: they reach codec like gRPC's do."""
    doc = {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}},
                   {"name": "b", "datatype": "FP32", "shape": [1], "data": [1.0]}],
        "outputs": [{"name": "o", "parameters": {"classification": 3, "binary_data": True}}],
    }
    request = decode_infer_request(json.dumps(doc).encode(), None, "m", "")
    shm, plain = request.message.inputs
    assert shm.parameters["shared_memory_region"].string_param == "r" and shm.parameters["shared_memory_byte_size"].int64_param == 4
    assert not plain.parameters and len(request.message.raw_input_contents) == 1  # the shared-memory input has no data
    (out,) = request.message.outputs
    assert dict(out.parameters) == {"classification": pb.InferParameter(int64_param=3)} and request.binary("o")


def test_encode_binary_and_json_outputs():
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="z")
    response.outputs.add(name="f", datatype="FP16", shape=[2])
    response.outputs.add(name="g", datatype="INT32", shape=[1, 2])
    arrays = [np.array([1.5, -2], np.float16), np.array([[7, 8]], np.int32)]
    request = decode_infer_request(json.dumps({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}],
                                               "outputs": [{"name": "f"}, {"name": "g", "parameters": {"binary_data": True}}]}).encode(), None, "m", "")
    body, header_length = encode_infer_response(response, arrays, request)
    doc = json.loads(body[:header_length])
    assert doc == {
        "model_name": "m", "model_version": "1", "id": "z",
        "outputs": [{"name": "f", "datatype": "FP16", "shape": [2], "data": [1.5, -2.0]},
                    {"name": "g", "datatype": "INT32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}],
    }  # fmt: skip
    assert np.frombuffer(body[header_length:], np.int32).tolist() == [7, 8]


def test_message_to_json_writes_64_bit_integers_as_numbers_in_maps_and_lists():
    config = mc.ModelConfig(name="m", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[-1, 16])
    config.dynamic_batching.max_queue_delay_microseconds = 250
    config.dynamic_batching.priority_queue_policy[2].default_timeout_microseconds = 10**12
    doc = message_to_json(config)
    assert doc["input"][0]["dims"] == [-1, 16]
    assert doc["dynamic_batching"]["max_queue_delay_microseconds"] == 250
    assert doc["dynamic_batching"]["priority_queue_policy"]["2"]["default_timeout_microseconds"] == 10**12
    assert doc["input"][0]["optional"] is False  # defaults are written, as Triton does


def test_load_parameters():
    assert load_parameters(b"  ") == {}
    params = load_parameters(json.dumps({"parameters": {"config": {"max_batch_size": 2}, "flag": True, "n": 3}}).encode())
    assert json.loads(params["config"]) == {"max_batch_size": 2}
    assert (params["flag"], params["n"]) == (True, 3)
    with pytest.raises(InvalidInput, match="must be a string, 64-bit integer or boolean"):
        load_parameters(b'{"parameters": {"x": 1.5}}')
