"""Micro-benchmarks of what the REST edge adds per request (pytest-benchmark; not part of the test suite).

    .venv/bin/python -m pytest bench/micro/test_rest_edge.py --benchmark-only

The REST edge turns an HTTP body into the ``ModelInferRequest`` the gRPC edge gets from grpc's deserializer,
and the response back into an HTTP body. Side by side for the same 1x3x224x224 FP32 image request: the
REST translation (binary tensor extension) against protobuf's parse of the same request's wire bytes (what the
gRPC path pays there), and the response for 1x1000 FP32 scores as binary and as JSON against protobuf's
serialisation. Plus the small JSON request (1 row of 16 FP32, the demo mlp) curl users send.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from surge.protos import grpc_service_pb2 as pb
from surge.server.edge import rest_codec

IMAGE = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
SCORES = np.random.default_rng(1).standard_normal((1, 1000)).astype(np.float32)


@pytest.fixture(scope="module")
def grpc_wire() -> bytes:
    request = pb.ModelInferRequest(model_name="resnet", id="bench")
    request.inputs.add(name="input", datatype="FP32", shape=IMAGE.shape)
    request.raw_input_contents.append(IMAGE.tobytes())
    return request.SerializeToString()


@pytest.fixture(scope="module")
def http_body() -> tuple[bytes, str]:
    head = json.dumps({"id": "bench", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(IMAGE.shape),
                                                  "parameters": {"binary_data_size": IMAGE.nbytes}}]}).encode()  # fmt: skip
    return head + IMAGE.tobytes(), str(len(head))


@pytest.fixture(scope="module")
def response() -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name="resnet", model_version="1", id="bench")
    message.outputs.add(name="scores", datatype="FP32", shape=SCORES.shape)
    message.raw_output_contents.append(SCORES.tobytes())
    return message


def test_grpc_parse_image_request(benchmark, grpc_wire):
    request = benchmark(pb.ModelInferRequest.FromString, grpc_wire)
    assert len(request.raw_input_contents[0]) == IMAGE.nbytes


def test_rest_decode_image_request_binary(benchmark, http_body):
    body, header_length = http_body
    request = benchmark(rest_codec.decode_infer_request, body, header_length, "resnet", "")
    assert len(request.message.raw_input_contents[0]) == IMAGE.nbytes


def test_grpc_serialize_scores_response(benchmark, response):
    assert len(benchmark(response.SerializeToString)) > SCORES.nbytes


def test_rest_encode_scores_response_binary(benchmark, response):
    request = rest_codec.decode_infer_request(b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], '
                                              b'"parameters": {"binary_data_output": true}}', None, "resnet", "")  # fmt: skip
    body, header_length = benchmark(rest_codec.encode_infer_response, response, [SCORES], request)
    assert len(body) - header_length == SCORES.nbytes


def test_rest_encode_scores_response_json(benchmark, response):
    request = rest_codec.decode_infer_request(b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}]}', None, "resnet", "")
    body, header_length = benchmark(rest_codec.encode_infer_response, response, [SCORES], request)
    assert header_length is None and len(json.loads(body)["outputs"][0]["data"]) == 1000


def test_rest_decode_small_json_request(benchmark):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}).encode()
    request = benchmark(rest_codec.decode_infer_request, body, None, "mlp", "")
    assert len(request.message.raw_input_contents[0]) == 64
