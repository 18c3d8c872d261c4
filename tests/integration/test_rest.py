"""REST v2 over raw HTTP (urllib and raw sockets) against a real server: every route, JSON and binary tensors,
malformed requests (clear 4xx, and the server keeps serving), the same answers as the gRPC edge, curl."""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from surge.clients import InferenceClient
from surge.protos.datatypes import serialize_bytes_tensor
from surge.server import errors
from surge.server.edge.rest import RestEndpoint
from tests.models import MLP_LABELS, ONNX_DATATYPES, top_k_classes, write_test_repository
from tests.process import SurgeProcess

HEADER_LENGTH = "Inference-Header-Content-Length"


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    @property
    def error(self) -> str:
        doc = self.json()
        assert set(doc) == {"error"}, doc
        return doc["error"]


def http(address: str, method: str, path: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None) -> Reply:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


def raw_http(address: str, request: bytes, *, wait_s: float = 10.0) -> bytes:
    """Send bytes as they are on a fresh connection; read until the server closes it (or ``wait_s`` pass)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def infer_body(inputs: list[dict], **extra) -> dict:
    return {"inputs": inputs, **extra}


def binary_request(header: dict, *buffers: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(buffers), {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


def split_binary(reply: Reply) -> tuple[dict, dict[str, bytes]]:
    """The JSON header and each binary output's bytes of a binary inference response."""
    length = int(reply.headers[HEADER_LENGTH])
    doc = json.loads(reply.body[:length])
    offset, out = length, {}
    for output in doc["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            out[output["name"]] = reply.body[offset : offset + size]
            offset += size
    assert offset == len(reply.body)
    return doc, out


def identity_all_inputs(rows: int, given: list[dict]) -> list[dict]:
    """``given`` plus a zero-filled JSON input of shape [rows, 1] for every other datatype (identity_all needs them all)."""
    named = {t["name"] for t in given}
    filler = [
        {"name": f"in_{dt}", "datatype": dt, "shape": [rows, 1], "data": [[""] if dt == "BYTES" else [False] if dt == "BOOL" else [0]] * rows}
        for dt in ONNX_DATATYPES if f"in_{dt}" not in named
    ]  # fmt: skip
    return given + filler


def x_rows(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def rest(server) -> str:
    assert server.server.http_address
    return server.server.http_address


def assert_serving(address: str) -> None:
    """The server still answers health and an inference after whatever the test did."""
    assert http(address, "GET", "/v2/health/live").json() == {"live": True}
    reply = http(address, "POST", "/v2/models/mlp/infer", infer_body([{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]))
    assert reply.status == 200 and len(reply.json()["outputs"][0]["data"]) == 4


# -- health and metadata -----------------------------------------------------------------------


def test_health(rest):
    live, ready = http(rest, "GET", "/v2/health/live"), http(rest, "GET", "/v2/health/ready")
    assert (live.status, live.json()) == (200, {"live": True})
    assert (ready.status, ready.json()) == (200, {"ready": True})
    assert live.headers["Content-Type"].startswith("application/json")
    assert http(rest, "HEAD", "/v2/health/live").status == 200


def test_server_metadata(rest):
    doc = http(rest, "GET", "/v2").json()
    assert doc["name"] == "surge" and doc["version"]
    assert {"binary_tensor_data", "statistics", "model_repository", "model_configuration"} <= set(doc["extensions"])
    # the OIP OpenAPI document writes the path as /v2/ (curl following the spec sends it so)
    slash = http(rest, "GET", "/v2/")
    assert (slash.status, slash.json()) == (200, doc)


def test_model_metadata_latest_and_versioned(rest):
    doc = http(rest, "GET", "/v2/models/mlp").json()
    assert doc == {
        "name": "mlp", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert http(rest, "GET", "/v2/models/versioned/versions/2").json()["versions"] == ["1", "2"]
    assert http(rest, "GET", "/v2/models/nobatch").json()["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [2, 3]}]


def test_model_ready(rest):
    assert (r := http(rest, "GET", "/v2/models/mlp/ready")).status == 200 and r.json() == {"name": "mlp", "ready": True}
    assert http(rest, "GET", "/v2/models/versioned/versions/1/ready").status == 200
    for path in ("/v2/models/broken/ready", "/v2/models/nope/ready", "/v2/models/versioned/versions/9/ready"):
        reply = http(rest, "GET", path)
        assert reply.status == 400 and reply.json()["ready"] is False, path


def test_model_config_is_triton_json_with_numbers(rest):
    config = http(rest, "GET", "/v2/models/mlp_batched/config").json()
    assert config["name"] == "mlp_batched" and config["max_batch_size"] == 64
    assert config["input"][0]["dims"] == [16] and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20000  # uint64: a JSON number, as Triton writes it
    assert config["dynamic_batching"]["preferred_batch_size"] == [8]
    assert "dynamic_batching" not in http(rest, "GET", "/v2/models/mlp/versions/1/config").json()


def test_statistics_count_rest_requests(rest):
    def count(path: str) -> int:
        return sum(s["inference_count"] for s in http(rest, "GET", path).json()["model_stats"])

    before = count("/v2/models/versioned/versions/2/stats")
    body = infer_body([{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": [1.0] * 12}])
    assert http(rest, "POST", "/v2/models/versioned/versions/2/infer", body).status == 200
    assert count("/v2/models/versioned/versions/2/stats") == before + 3
    stats = http(rest, "GET", "/v2/models/versioned/stats").json()["model_stats"]
    assert [s["version"] for s in stats] == ["1", "2"]
    assert isinstance(stats[1]["inference_stats"]["success"]["ns"], int) and stats[1]["inference_stats"]["success"]["count"] >= 1
    everything = {s["name"] for s in http(rest, "GET", "/v2/models/stats").json()["model_stats"]}
    assert {"mlp", "versioned", "identity"} <= everything
    assert http(rest, "GET", "/v2/models/versioned/versions/7/stats").status == 404


# -- inference ---------------------------------------------------------------------------------


def test_json_inference_matches_grpc(rest, server):
    x = x_rows(3)
    reply = http(rest, "POST", "/v2/models/mlp/infer", infer_body([{"name": "x", "datatype": "FP32", "shape": [3, 16], "data": x.tolist()}], id="req-7"))
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    doc = reply.json()
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("mlp", "1", "req-7")
    [out] = doc["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [3, 4])
    with InferenceClient(server.address, retries=0) as client:
        expected = client.infer("mlp", {"x": x})["probabilities"]
    np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(3, 4), expected)


def test_binary_inference_in_and_out(rest):
    x = x_rows(2, seed=1)
    header = infer_body(
        [{"name": "x", "datatype": "FP32", "shape": [2, 16], "parameters": {"binary_data_size": x.nbytes}}],
        outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}],
    )
    reply = http(rest, "POST", "/v2/models/mlp/infer", *binary_request(header, x.tobytes()))
    assert reply.status == 200, reply.body
    doc, buffers = split_binary(reply)
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 2 * 4 * 4}
    binary = np.frombuffer(buffers["probabilities"], np.float32).reshape(2, 4)
    json_reply = http(rest, "POST", "/v2/models/mlp/infer", infer_body([{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": x.ravel().tolist()}]))
    np.testing.assert_array_equal(binary, np.array(json_reply.json()["outputs"][0]["data"], np.float32).reshape(2, 4))
    np.testing.assert_allclose(binary.sum(axis=1), 1.0, rtol=1e-5)


def test_every_datatype_round_trips_as_json_and_as_binary(rest):
    rng = np.random.default_rng(3)
    arrays = {}
    for dt in ONNX_DATATYPES:
        if dt == "BYTES":
            arrays[dt] = np.array([[b"a", b"bc"], [b"", "d\u00e9".encode()]], dtype=np.object_)
        elif dt == "BOOL":
            arrays[dt] = np.array([[True, False], [False, True]])
        elif dt.startswith("FP"):
            arrays[dt] = rng.standard_normal((2, 2)).astype({"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[dt])
        else:
            info = np.iinfo(np.dtype(dt.lower()))
            arrays[dt] = np.array([[info.min, info.max], [0, 1]], dtype=np.dtype(dt.lower()))
    # JSON in, JSON out (BYTES as UTF-8 strings)
    inputs = [
        {"name": f"in_{dt}", "datatype": dt, "shape": [2, 2],
         "data": [v.decode() for v in a.ravel()] if dt == "BYTES" else a.tolist()}
        for dt, a in arrays.items()
    ]  # fmt: skip
    reply = http(rest, "POST", "/v2/models/identity_all/infer", infer_body(inputs))
    assert reply.status == 200, reply.body
    for out in reply.json()["outputs"]:
        dt = out["datatype"]
        expected = arrays[dt]
        got = np.array(out["data"], dtype=object if dt == "BYTES" else expected.dtype).reshape(out["shape"])
        if dt == "BYTES":
            got = np.vectorize(str.encode, otypes=[object])(got)
        np.testing.assert_array_equal(got, expected, err_msg=dt)
    # binary in, binary out (binary_data_output for all)
    buffers = [serialize_bytes_tensor(a) if dt == "BYTES" else a.tobytes() for dt, a in arrays.items()]
    inputs = [{"name": f"in_{dt}", "datatype": dt, "shape": [2, 2], "parameters": {"binary_data_size": len(b)}} for dt, b in zip(arrays, buffers)]
    reply = http(rest, "POST", "/v2/models/identity_all/infer", *binary_request(infer_body(inputs, parameters={"binary_data_output": True}), *buffers))
    assert reply.status == 200, reply.body
    doc, out = split_binary(reply)
    assert {o["name"] for o in doc["outputs"]} == {f"out_{dt}" for dt in arrays}
    for dt, b in zip(arrays, buffers):
        assert out[f"out_{dt}"] == b, dt


def test_mixed_json_and_binary_inputs_and_output_selection(rest):
    ints = np.arange(4, dtype=np.int64).reshape(2, 2)
    header = infer_body(
        identity_all_inputs(2, [
            {"name": "in_FP32", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4.5]]},
            {"name": "in_INT64", "datatype": "INT64", "shape": [2, 2], "parameters": {"binary_data_size": ints.nbytes}},
        ]),
        outputs=[{"name": "out_INT64", "parameters": {"binary_data": False}}, {"name": "out_FP32"}],
        parameters={"binary_data_output": True},  # out_FP32 has no binary_data of its own: binary; out_INT64 asks JSON
    )
    body, headers = binary_request(header, ints.tobytes())
    reply = http(rest, "POST", "/v2/models/identity_all/infer", body, headers)
    assert reply.status == 200, reply.body
    doc, buffers = split_binary(reply)
    assert [o["name"] for o in doc["outputs"]] == ["out_INT64", "out_FP32"]  # only those asked for, in that order
    assert doc["outputs"][0]["data"] == [0, 1, 2, 3]
    assert np.frombuffer(buffers["out_FP32"], np.float32).tolist() == [1, 2, 3, 4.5]


def test_versioned_inference_and_parameters(rest):
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}
    for version, value in (("1", 1.0), ("2", 2.0)):
        doc = http(rest, "POST", f"/v2/models/versioned/versions/{version}/infer", infer_body([x])).json()
        assert doc["model_version"] == version and doc["outputs"][0]["data"] == [value] * 4
    # Triton's parameters travel as over gRPC: an unknown priority level is refused by the same check
    x16 = {**x, "shape": [1, 16], "data": [0.0] * 16}
    reply = http(rest, "POST", "/v2/models/mlp_batched/infer", infer_body([x16], parameters={"priority": 3}))
    assert reply.status == 400 and "priority 3" in reply.error


def test_gzip_request_and_response(rest):
    body = gzip.compress(json.dumps(infer_body([{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}])).encode())
    reply = http(rest, "POST", "/v2/models/mlp/infer", body, {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    assert reply.status == 200 and reply.headers.get("Content-Encoding") == "gzip"
    assert len(json.loads(gzip.decompress(reply.body))["outputs"][0]["data"]) == 4


# -- errors: {"error": ...}, the gRPC edge's status as HTTP, and the server keeps serving ----------


def _x(**overrides) -> dict:
    return {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16, **overrides}


@pytest.mark.parametrize(
    ("body", "headers", "fragment"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b"\xff\xfe", {}, "not valid JSON"),
        (b"[1, 2]", {}, "must be a JSON object"),
        (b"{}", {}, "needs 'inputs'"),
        (json.dumps({"inputs": [_x()], "id": 7}).encode(), {}, "'id' must be a string"),
        (json.dumps({"inputs": [_x(datatype="FP33")]}).encode(), {}, "datatype 'FP33'"),
        (json.dumps({"inputs": [_x(datatype="INT32", data=[0] * 16)]}).encode(), {}, "has datatype INT32 but model 'mlp' expects FP32"),
        (json.dumps({"inputs": [_x(shape=[1, 15], data=[0.0] * 15)]}).encode(), {}, "expects [-1, 16]"),
        (json.dumps({"inputs": [_x(shape=[1, -16])]}).encode(), {}, "non-negative integers"),
        (json.dumps({"inputs": [_x(data=[0.0] * 15)]}).encode(), {}, "has 15 values in 'data' but shape [1, 16] needs 16"),
        (json.dumps({"inputs": [_x(data=["a"] * 16)]}).encode(), {}, "must be numbers"),
        (json.dumps({"inputs": [_x(data=None)]}).encode(), {}, "has no data"),
        (json.dumps({"inputs": [_x(name="y")]}).encode(), {}, "unexpected input 'y'"),
        (json.dumps({"inputs": [_x()], "outputs": [{"name": "nope"}]}).encode(), {}, "unknown output 'nope'"),
        (json.dumps({"inputs": [_x()], "parameters": {"binary_data_output": "yes"}}).encode(), {}, "binary_data_output"),
        (json.dumps({"inputs": [_x()]}).encode(), {HEADER_LENGTH: "many"}, "must be an integer"),
        (json.dumps({"inputs": [_x()]}).encode(), {HEADER_LENGTH: "100000"}, "the request body has"),
        (json.dumps({"inputs": [_x()]}).encode(), {HEADER_LENGTH: "0"}, "must be 1.."),
        (json.dumps({"inputs": [_x()]}).encode() + b"tail", {HEADER_LENGTH: str(len(json.dumps({"inputs": [_x()]})))}, "binary_data_size add up to 0"),
        (json.dumps({"inputs": [_x(data=None, parameters={"binary_data_size": 64})]}).encode(), {}, "only 0 bytes of binary data are left"),
    ],
)
def test_malformed_inference_requests_are_400(rest, body, headers, fragment):
    reply = http(rest, "POST", "/v2/models/mlp/infer", body, headers)
    assert reply.status == 400, (reply.status, reply.body)
    assert fragment in reply.error


def test_binary_size_that_does_not_match_the_shape_is_400(rest):
    header = infer_body([_x(data=None, parameters={"binary_data_size": 60})])
    reply = http(rest, "POST", "/v2/models/mlp/infer", *binary_request(header, b"\0" * 60))
    assert reply.status == 400 and "60 bytes of raw data but shape [1, 16] of FP32 needs 64 bytes" in reply.error
    assert_serving(rest)


def test_json_values_are_checked_against_the_datatype(rest):
    def call(dt: str, data: list) -> Reply:
        given = [{"name": f"in_{dt}", "datatype": dt, "shape": [1, len(data)], "data": data}]
        return http(rest, "POST", "/v2/models/identity_all/infer", infer_body(identity_all_inputs(1, given), outputs=[{"name": f"out_{dt}"}]))

    assert "does not fit UINT8 (0..255)" in call("UINT8", [1, 256]).error
    assert "must be integers" in call("INT32", [1.5]).error
    assert "must be true/false" in call("BOOL", [1]).error
    assert "must be strings" in call("BYTES", [1]).error
    assert call("INT64", [-(2**63), 2**63 - 1]).json()["outputs"][0]["data"] == [-(2**63), 2**63 - 1]
    assert call("UINT64", [2**64 - 1]).json()["outputs"][0]["data"] == [2**64 - 1]


def test_statuses_follow_the_grpc_mapping(rest):
    assert (r := http(rest, "POST", "/v2/models/nope/infer", infer_body([_x()]))).status == 404 and "not in the repository" in r.error
    assert (r := http(rest, "POST", "/v2/models/mlp/versions/9/infer", infer_body([_x()]))).status == 404 and "no version 9" in r.error
    assert (r := http(rest, "POST", "/v2/models/mlp/versions/x1/infer", infer_body([_x()]))).status == 400 and "positive integer" in r.error
    assert (r := http(rest, "POST", "/v2/models/broken/infer", infer_body([_x()]))).status == 503 and "not ready" in r.error
    failing = http(rest, "POST", "/v2/models/failing_py/infer", infer_body([{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [-1.0]}]))
    assert failing.status == 500 and "request id" in failing.error and "secret" not in failing.error
    shm = infer_body([_x(data=None, parameters={"shared_memory_region": "r", "shared_memory_byte_size": 64})])
    assert (r := http(rest, "POST", "/v2/models/mlp/infer", shm)).status == 400 and "no shared memory region named 'r'" in r.error
    assert (r := http(rest, "POST", "/v2/systemsharedmemory/region/r/register", {"key": "/no/such"})).status == 400 and "'byte_size'" in r.error
    assert (r := http(rest, "POST", "/v2/systemsharedmemory/region/r/register", {"key": "/x/y", "byte_size": 8})).status == 400 and "POSIX" in r.error
    assert (r := http(rest, "POST", "/v2/models/mlp/trace/setting", {"trace_rate": "10"})).status == 400 and "--trace-exporter" in r.error
    assert (r := http(rest, "POST", "/v2/models/nosuch/trace/setting", {})).status == 404
    assert (r := http(rest, "GET", "/v2/models/mlp/infer")).status == 405 and "POST" in r.error and "POST" in r.headers["Allow"]
    assert (r := http(rest, "GET", "/v1/models/mlp")).status == 404 and "no such route" in r.error
    assert_serving(rest)


def test_classification_as_tritons_extension_document_writes_it(rest, server):
    x = x_rows(2, 5)
    body = infer_body([_x(shape=[2, 16], data=x.tolist())], id="42", outputs=[{"name": "probabilities", "parameters": {"classification": 2}}])
    reply = http(rest, "POST", "/v2/models/mlp_labelled/infer", body)
    assert reply.status == 200, reply.body
    (out,) = reply.json()["outputs"]
    with InferenceClient(server.address) as client:
        probabilities = client.infer("mlp_labelled", {"x": x})["probabilities"]
    expected = [[v.decode() for v in row] for row in top_k_classes(probabilities, 2, MLP_LABELS)]
    assert (out["datatype"], out["shape"], out["data"]) == ("BYTES", [2, 2], [v for row in expected for v in row])


def test_classification_as_the_kserve_sdk_asks_for_it(rest, server):
    """kserve 0.21's InferenceRESTClient (its SDK pins protobuf < 7, so it cannot join this environment): the body
    its ``InferRequest.to_rest()`` writes for ``RequestedOutput("probabilities", parameters={"classification": 3})``
    with a JSON input, captured as it is (flat ``data``, a uuid ``id`` and the ``model_name`` inside the body),
    and read back with a strict parser as its orjson does."""
    x = x_rows(3, 6)
    body = (
        '{"id":"5f0c6c52-3c2e-4a8e-9a57-2f6a3c1e9b10","model_name":"mlp_labelled","inputs":[{"name":"x","shape":[3,16],'
        '"datatype":"FP32","data":' + json.dumps(x.reshape(-1).tolist()) + '}],"outputs":[{"name":"probabilities","parameters":{"classification":3}}]}'
    )
    reply = http(rest, "POST", "/v2/models/mlp_labelled/infer", body.encode(), {"Content-Type": "application/json"})
    assert reply.status == 200, reply.body
    doc = json.loads(reply.body, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert doc["id"] == "5f0c6c52-3c2e-4a8e-9a57-2f6a3c1e9b10"
    (out,) = doc["outputs"]
    with InferenceClient(server.address) as client:
        expected = top_k_classes(client.infer("mlp_labelled", {"x": x})["probabilities"], 3, MLP_LABELS)
    assert (out["datatype"], out["shape"], out["data"]) == ("BYTES", [3, 3], [v.decode() for row in expected for v in row])
    # its InferenceGRPCClient: InferRequest.to_grpc() with the input as raw_input_contents
    import grpc

    from surge.protos import grpc_service_pb2 as pb
    from surge.protos import grpc_service_pb2_grpc as pb_grpc
    from surge.protos.datatypes import deserialize_bytes_tensor

    message = pb.ModelInferRequest(
        id="5f0c6c52", model_name="mlp_labelled", model_version="",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", shape=[3, 16], datatype="FP32")], raw_input_contents=[x.tobytes()],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities", parameters={"classification": pb.InferParameter(int64_param=3)})],
    )
    with grpc.insecure_channel(server.address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=10)
    (tensor,) = response.outputs
    assert (tensor.datatype, list(tensor.shape)) == ("BYTES", [3, 3])
    assert deserialize_bytes_tensor(response.raw_output_contents[0], 9).tolist() == [v for row in expected for v in row]


def _grpc_request(inputs: list[dict], outputs: list[dict]):
    """The gRPC message a Triton client sends for the same request (built here, not by the REST edge)."""
    from surge.protos import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name="mlp")
    for tensor in inputs:
        added = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        for key, value in tensor.get("parameters", {}).items():
            setattr(added.parameters[key], "string_param" if isinstance(value, str) else "int64_param", value)
        if tensor.get("data") is not None:
            added.contents.fp32_contents.extend(tensor["data"])
    for out in outputs:
        added = request.outputs.add(name=out["name"])
        for key, value in out.get("parameters", {}).items():
            setattr(added.parameters[key], "string_param" if isinstance(value, str) else "int64_param", value)
    return request


@pytest.mark.parametrize(
    ("inputs", "outputs", "http_status", "code"),
    [
        ([_x()], [{"name": "probabilities", "parameters": {"classification": -3}}], 400, "INVALID_ARGUMENT"),
        ([_x()], [{"name": "probabilities", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 16}}], 400, "INVALID_ARGUMENT"),
        ([_x(data=None, parameters={"shared_memory_region": "r", "shared_memory_byte_size": 64})], [], 400, "INVALID_ARGUMENT"),
        ([_x(data=None, parameters={"shared_memory_offset": 0})], [{"name": "probabilities", "parameters": {"classification": 2}}], 400, "INVALID_ARGUMENT"),
    ],
    ids=["bad-class-count", "output-shm", "input-shm", "input-shm-beside-classification"],
)
def test_extension_parameters_meet_one_check_on_both_edges(rest, server, inputs, outputs, http_status, code):
    import grpc

    from surge.protos import grpc_service_pb2_grpc as pb_grpc

    reply = http(rest, "POST", "/v2/models/mlp/infer", infer_body([{k: v for k, v in t.items() if v is not None} for t in inputs], outputs=outputs))
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_grpc_request(inputs, outputs), timeout=10)
    assert (reply.status, info.value.code().name) == (http_status, code)
    assert reply.error == info.value.details()  # the same check answered both
    assert_serving(rest)


def test_queue_timeout_is_504_and_queue_full_is_503(rest):
    slow = infer_body([{"name": "delay_s", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}])
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        blockers = [pool.submit(http, rest, "POST", "/v2/models/slow_py/infer", slow) for _ in range(3)]  # 1 running, 2 waiting
        time.sleep(0.4)
        full = http(rest, "POST", "/v2/models/slow_py/infer", slow)
        assert full.status == 503 and "queue full" in full.error
        assert all(b.result().status == 200 for b in blockers)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(http, rest, "POST", "/v2/models/slow_py/infer", slow)
        time.sleep(0.3)
        quick = infer_body([{"name": "delay_s", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}], parameters={"timeout": 50_000})
        expired = http(rest, "POST", "/v2/models/slow_py/infer", quick)
        assert expired.status == 504 and "dropped before compute" in expired.error
        assert blocker.result().status == 200


def test_oversized_body_is_413_and_the_endpoint_keeps_serving(server):
    endpoint = RestEndpoint(server.server.dataplane, "127.0.0.1", 0, max_request_bytes=4096)
    address = server.call(endpoint.start())
    try:
        big = infer_body([{"name": "x", "datatype": "FP32", "shape": [64, 16], "data": [0.125] * (64 * 16)}])
        reply = http(address, "POST", "/v2/models/mlp/infer", big)
        assert reply.status == 413 and "larger than the server's limit of 4096 bytes" in reply.error
        # gzip does not get around the limit: it applies to the decompressed body
        reply = http(address, "POST", "/v2/models/mlp/infer", gzip.compress(json.dumps(big).encode()), {"Content-Encoding": "gzip"})
        assert reply.status == 413
        assert_serving(address)
    finally:
        server.call(endpoint.aclose())


def test_wrong_content_lengths_are_4xx_and_the_server_keeps_serving(rest, caplog):
    body = json.dumps(infer_body([_x()])).encode()
    head = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    # claims more than it sends: the server waits for the rest (no answer yet); the client gives up and closes
    assert raw_http(rest, (head + f"Content-Length: {len(body) + 100}\r\n\r\n").encode() + body, wait_s=0.5) == b""
    # claims less than it sends: the bytes after the announced length are not a request
    reply = raw_http(rest, (head + f"Content-Length: {len(body) - 10}\r\n\r\n").encode() + body)
    assert reply.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), reply[:300]
    # not a number at all
    reply = raw_http(rest, (head + "Content-Length: ten\r\n\r\n").encode() + body)
    assert reply.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")) and b"Content-Length" in reply, reply[:200]
    assert_serving(rest)
    # a client's malformed HTTP is a warning line in the server log, not an error with a traceback
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], [r.getMessage() for r in caplog.records]
    assert any(r.name == "surge.rest" and "Error handling request" in r.getMessage() for r in caplog.records)


def test_chunked_request_body(rest):
    """No Content-Length at all: a chunked body is read to its end (and counted against the same size limit)."""
    body = json.dumps(infer_body([_x()])).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:40], body[40:])) + b"0\r\n\r\n"
    head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    reply = raw_http(rest, head + chunks)
    assert reply.startswith(b"HTTP/1.1 200") and b'"probabilities"' in reply, reply[:300]


def test_keep_alive_connection_survives_an_error(rest):
    """A 4xx answer leaves the connection usable: two requests on one socket, a bad one then a good one."""
    bad = b"{oops"
    good = json.dumps(infer_body([_x()])).encode()
    head = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n"
    request = head.format(len(bad), "").encode() + bad + head.format(len(good), "Connection: close\r\n").encode() + good
    reply = raw_http(rest, request)
    assert reply.count(b"HTTP/1.1 ") == 2 and reply.index(b"HTTP/1.1 400") < reply.index(b"HTTP/1.1 200"), reply


# -- repository ----------------------------------------------------------------------------------


def test_repository_index(rest):
    rows = http(rest, "POST", "/v2/repository/index").json()
    assert {"name": "mlp", "version": "1", "state": "READY", "reason": ""} in rows
    assert any(r["name"] == "broken" and r["state"] == "UNAVAILABLE" and r["reason"] for r in rows)
    ready = http(rest, "POST", "/v2/repository/index", {"ready": True}).json()
    assert ready and all(r["state"] == "READY" for r in ready)
    assert http(rest, "POST", "/v2/repository/index", {"ready": "yes"}).status == 400


def test_load_and_unload_need_a_mutable_repository(rest):
    reply = http(rest, "POST", "/v2/repository/models/mlp/load", {})
    assert reply.status == 503 and "explicit model load / unload is not allowed if polling is enabled" in reply.error  # as Triton
    assert "model-control-mode explicit" in reply.error


def test_load_with_config_override_and_unload(start_server, tmp_path):
    thread = start_server(model_repository=write_test_repository(tmp_path / "repo"), model_control_mode="explicit", load_models=("identity",))
    address = thread.server.http_address
    assert http(address, "GET", "/v2/models/mlp/ready").status == 400
    override = {"parameters": {"config": json.dumps({"max_batch_size": 4})}}
    assert (r := http(address, "POST", "/v2/repository/models/mlp/load", override)).status == 200, r.body
    assert http(address, "GET", "/v2/models/mlp/config").json()["max_batch_size"] == 4
    too_many = infer_body([{"name": "x", "datatype": "FP32", "shape": [5, 16], "data": [0.0] * 80}])
    assert (r := http(address, "POST", "/v2/models/mlp/infer", too_many)).status == 400 and "1 to 4 rows" in r.error
    # a config given as an object (handy with curl) works the same
    assert http(address, "POST", "/v2/repository/models/mlp/load", {"parameters": {"config": {"max_batch_size": 2}}}).status == 200
    assert http(address, "GET", "/v2/models/mlp/config").json()["max_batch_size"] == 2
    assert (r := http(address, "POST", "/v2/repository/models/mlp/load", {"parameters": {"config": "{oops"}})).status == 400 and "not valid JSON" in r.error
    assert (r := http(address, "POST", "/v2/repository/models/mlp/load", {"parameters": {"file:1/model.onnx": "AAAA"}})).status == 501
    assert http(address, "POST", "/v2/repository/models/mlp/load", b"{oops").status == 400
    assert http(address, "POST", "/v2/repository/models/nope/load").status == 404
    assert http(address, "POST", "/v2/repository/models/mlp/unload", {"parameters": {"unload_dependents": False}}).status == 200
    assert http(address, "GET", "/v2/models/mlp/ready").status == 400
    assert http(address, "POST", "/v2/models/mlp/infer", infer_body([_x()])).status == 503


# -- the hook, the CLI, SIGTERM, curl --------------------------------------------------------------


def test_authorize_hook_sees_each_route_as_its_grpc_method(server):
    seen: list[tuple[str, str | None]] = []

    def authorize(method: str, authorization: str | None) -> None:
        seen.append((method, authorization))
        if method.endswith("/RepositoryIndex"):
            raise errors.Unsupported("RepositoryIndex is disabled on this endpoint")

    endpoint = RestEndpoint(server.server.dataplane, "127.0.0.1", 0, max_request_bytes=1 << 20, authorize=authorize)
    address = server.call(endpoint.start())
    try:
        assert http(address, "GET", "/v2/health/ready", headers={"Authorization": "Bearer t0k3n"}).status == 200
        assert http(address, "POST", "/v2/models/mlp/infer", infer_body([_x()])).status == 200
        assert (r := http(address, "POST", "/v2/repository/index")).status == 501 and "disabled" in r.error
    finally:
        server.call(endpoint.aclose())
    assert seen == [
        ("/grpc.health.v1.Health/Check", "Bearer t0k3n"),
        ("/inference.GRPCInferenceService/ModelInfer", None),
        ("/inference.GRPCInferenceService/RepositoryIndex", None),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_surge_serve_drains_rest_requests_on_sigterm(tmp_path, test_repository):
    port = _free_port()
    proc = SurgeProcess(test_repository, tmp_path / "server", "--http-port", str(port)).start()
    address = f"127.0.0.1:{port}"
    try:
        assert http(address, "GET", "/v2/health/ready").status == 200
        slow = infer_body([{"name": "delay_s", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}])
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(http, address, "POST", "/v2/models/slow_py/infer", slow)
            time.sleep(0.3)
            proc.proc.send_signal(signal.SIGTERM)
            reply = in_flight.result()
        assert reply.status == 200 and reply.json()["outputs"][0]["data"] == [1.0]
        code = proc.proc.wait(30)  # the one SIGTERM ends it (a second would mean "exit at once", code 143)
    finally:
        if proc.proc.poll() is None:
            proc.stop()
    assert code == 0, proc.log()
    assert "REST v2 on http://127.0.0.1:" in proc.log()


def test_surge_serve_refuses_a_taken_http_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(tmp_path),
             "--grpc-port", "0", "--metrics-port", "0", "--http-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2 and f"cannot bind REST to 127.0.0.1:{port}" in result.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(rest, tmp_path):
    def curl(*args: str) -> tuple[int, dict]:
        out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30, check=True).stdout
        body, _, status = out.rpartition("\n")
        return int(status), json.loads(body)

    assert curl(f"http://{rest}/v2/health/ready") == (200, {"ready": True})
    status, doc = curl(
        "-X", "POST", f"http://{rest}/v2/models/mlp/infer", "-H", "Content-Type: application/json",
        "-d", json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}),
    )  # fmt: skip
    assert status == 200 and doc["outputs"][0]["shape"] == [1, 4]
    status, doc = curl("-X", "POST", f"http://{rest}/v2/models/mlp/infer", "-d", "{broken")
    assert status == 400 and "not valid JSON" in doc["error"]
    # a larger body: curl sends "Expect: 100-continue" first and waits for the server's go-ahead
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"inputs": [{"name": "x", "shape": [64, 16], "datatype": "FP32", "data": [0.5] * 1024}]}))
    status, doc = curl("-X", "POST", f"http://{rest}/v2/models/mlp/infer", "-H", "Content-Type: application/json", "--data-binary", f"@{big}")
    assert status == 200 and doc["outputs"][0]["shape"] == [64, 4]


def test_binary_inputs_are_taken_in_input_order(rest):
    """Two binary inputs are taken in input order from one binary section."""
    a, b = np.array([[1.5, 2.5]], np.float32), np.array([[7, 8]], np.int64)
    header = infer_body(
        identity_all_inputs(1, [
            {"name": "in_FP32", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": a.nbytes}},
            {"name": "in_INT64", "datatype": "INT64", "shape": [1, 2], "parameters": {"binary_data_size": b.nbytes}},
        ]),
        outputs=[{"name": "out_INT64"}, {"name": "out_FP32"}],
    )
    reply = http(rest, "POST", "/v2/models/identity_all/infer", *binary_request(header, a.tobytes(), b.tobytes()))
    doc = reply.json()  # no output asked for binary: all JSON, no header-length header
    assert HEADER_LENGTH not in reply.headers
    assert [o["data"] for o in doc["outputs"]] == [[7, 8], [1.5, 2.5]]


def test_rest_and_grpc_share_one_set_of_statistics_and_metrics(rest, server):
    """Same core: a REST request is counted where gRPC's are; a body that reaches no model is counted as unrouted."""
    with InferenceClient(server.address, retries=0) as client:
        def served() -> int:
            return sum(s.inference_count for s in client.model_statistics("nobatch").model_stats)

        before = served()
        assert http(rest, "POST", "/v2/models/nobatch/infer", infer_body([{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1.0] * 6}])).status == 200
        assert served() == before + 1
    unrouted = server.server.metrics.unrouted
    invalid = unrouted.get("INVALID_ARGUMENT", 0)
    assert http(rest, "POST", "/v2/models/nobatch/infer", b"{nope").status == 400
    assert unrouted.get("INVALID_ARGUMENT", 0) == invalid + 1


def test_reuse_port_lets_two_endpoints_share_a_port(server):
    """What worker processes need (SO_REUSEPORT); without it a taken port is refused."""
    first = RestEndpoint(server.server.dataplane, "127.0.0.1", 0, max_request_bytes=1 << 20, reuse_port=True)
    port = int(server.call(first.start()).rsplit(":", 1)[1])
    second = RestEndpoint(server.server.dataplane, "127.0.0.1", port, max_request_bytes=1 << 20, reuse_port=True)
    plain = RestEndpoint(server.server.dataplane, "127.0.0.1", port, max_request_bytes=1 << 20)
    try:
        assert server.call(second.start()) == f"127.0.0.1:{port}"
        with pytest.raises(OSError):
            server.call(plain.start())
        assert_serving(f"127.0.0.1:{port}")
    finally:
        server.call(second.aclose())
        server.call(first.aclose())


PERF_ANALYZER = Path(__file__).resolve().parents[2] / ".cache" / "perf_analyzer" / "bin" / "perf_analyzer"


@pytest.mark.perf_analyzer
def test_perf_analyzer_over_http(tmp_path, test_repository):
    """Triton's perf_analyzer, unmodified, with ``-i http``: metadata, config, binary inference and statistics over REST."""
    if not os.access(PERF_ANALYZER, os.X_OK):
        pytest.skip(f"perf_analyzer is not set up ({PERF_ANALYZER} missing); run bench/perf_analyzer/setup.sh")
    proc = SurgeProcess(test_repository, tmp_path / "server").start()
    try:
        run_sh = Path(__file__).resolve().parents[2] / "bench" / "perf_analyzer" / "run.sh"
        cmd = ["bash", str(run_sh), "-i", "http", "-u", proc.http_address, "-m", "mlp", "--concurrency-range", "2", "--request-count", "200"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "Avg HTTP time" in output and "Request count: 200" in output, output
        served = int(re.search(r"Successful request count: (\d+)", output).group(1))  # from the statistics route
        assert 198 <= served <= 200, output  # the statistics window may miss a request at each edge
    finally:
        proc.stop_and_check()


def test_aclose_waits_for_in_flight_requests_up_to_the_grace(server):
    slow = infer_body([{"name": "delay_s", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}])
    for grace_s, finishes in ((5.0, True), (0.2, False)):
        endpoint = RestEndpoint(server.server.dataplane, "127.0.0.1", 0, max_request_bytes=1 << 20)
        address = server.call(endpoint.start())
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(http, address, "POST", "/v2/models/slow_py/infer", slow)
            time.sleep(0.3)
            started = time.monotonic()
            server.call(endpoint.aclose(grace_s))
            took = time.monotonic() - started
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(tuple(address.rsplit(":", 1)), timeout=5).close()  # no longer listening
            if finishes:
                assert in_flight.result().status == 200 and 0.3 < took < 5.0
            else:
                with pytest.raises((ConnectionError, urllib.error.URLError)):
                    in_flight.result()
                assert took < 1.0
        time.sleep(1.0)  # let slow_py's single instance finish before the next round
