"""A 4 MiB binary tensor through the REST edge and back, in process (pytest-benchmark; not part of the test suite).

    .venv/bin/python -m pytest bench/micro/test_rest_binary.py --benchmark-only --benchmark-json=OUT.json
    PYTHONPATH=.cache/bench/surge-src/<sha> .venv/bin/python -m pytest bench/micro/test_rest_binary.py ...   (another revision:
        ``bench.scenarios.targets.surge_source`` exports it there)

The answer's side in isolation, the same 4 MiB FP32 output written as a binary HTTP body: from the output array
(``test_rest_encode_4mib_from_arrays``: ``codec.encode_outputs`` and ``rest_codec.encode_infer_response``, what the
REST edge does now) against the former path through protobuf (``test_rest_encode_4mib_through_protobuf``: the
output copied into ``raw_output_contents``, read back out of the message, and joined into the body).

End to end, a real server (``tests.conftest.ServerThread``: repository, batcher, ONNX Runtime instance, REST edge) serves an
FP32 identity model ``x[1, 1048576] -> y``; one keep-alive HTTP connection posts the Open Inference Protocol's binary
form (``Inference-Header-Content-Length``) of a 4 MiB input and asks for the output as binary data; the round
trip's time is ``test_rest_binary_4mib_round_trip`` (run it at two revisions to compare them).
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import numpy as np
import pytest
from surge.server.config import TensorConfig, parse_model_config
from surge.server.edge import codec, rest_codec

from tests.conftest import ServerThread

ELEMENTS = 1 << 20  # 4 MiB of FP32
X = np.random.default_rng(0).standard_normal((1, ELEMENTS)).astype(np.float32)


def _identity(root: Path) -> Path:
    from onnx import TensorProto, helper
    from surge.server.demo import write_onnx_model

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", ELEMENTS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", ELEMENTS])],
    )  # fmt: skip
    write_onnx_model(root / "identity" / "1" / "model.onnx", graph)
    (root / "identity" / "config.toml").write_text("max_batch_size = 4\n")
    return root


@pytest.fixture(scope="module")
def connection(tmp_path_factory: pytest.TempPathFactory):
    from surge.server.app import ServerConfig

    root = _identity(tmp_path_factory.mktemp("repo"))
    thread = ServerThread(ServerConfig(model_repository=root, grpc_port=0, metrics_port=-1, http_port=0)).start()
    host, port = thread.server.http_address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    yield conn
    conn.close()
    thread.stop()


def _body() -> tuple[bytes, dict[str, str]]:
    head = json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(X.shape), "parameters": {"binary_data_size": X.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    return head + X.tobytes(), {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def _post(conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> bytes:
    conn.request("POST", "/v2/models/identity/infer", body, headers)
    reply = conn.getresponse()
    data = reply.read()
    assert reply.status == 200, data[:200]
    return data


def _check(data: bytes) -> None:
    assert data[-X.nbytes:] == X.tobytes()


def test_rest_binary_4mib_round_trip(benchmark, connection):
    body, headers = _body()
    for _ in range(5):
        _post(connection, body, headers)
    data = benchmark.pedantic(_post, args=(connection, body, headers), rounds=60, warmup_rounds=5)
    _check(data)


@pytest.fixture(scope="module")
def encode_case():
    config = parse_model_config("identity", {"max_batch_size": 4}).with_signature(
        (TensorConfig(name="x", datatype="FP32", dims=(ELEMENTS,)),), (TensorConfig(name="y", datatype="FP32", dims=(ELEMENTS,)),), 4
    )
    body, headers = _body()
    infer = rest_codec.decode_infer_request(body, headers["Inference-Header-Content-Length"], "identity", "")
    return codec.model_spec(config), infer, {"y": X.copy()}


def _through_protobuf(spec, infer, outputs) -> bytes:
    response = codec.encode_response(infer.message, spec, "1", outputs, ("y",))  # tobytes() into raw_output_contents
    raw = response.raw_output_contents[0]  # read back out of the message: a new bytes object
    head = rest_codec.json_dumps({"model_name": response.model_name, "model_version": response.model_version,
                                  "outputs": [{"name": "y", "datatype": "FP32", "shape": list(X.shape), "parameters": {"binary_data_size": len(raw)}}]})  # fmt: skip
    return b"".join((head, raw))


def _from_arrays(spec, infer, outputs) -> bytes:
    response, arrays = codec.encode_outputs(infer.message, spec, "1", outputs, ("y",))
    body, _ = rest_codec.encode_infer_response(response, arrays, infer)
    return body


@pytest.mark.parametrize("path", [_through_protobuf, _from_arrays], ids=["through_protobuf", "from_arrays"])
def test_rest_encode_4mib(benchmark, encode_case, path):
    body = benchmark.pedantic(path, args=encode_case, rounds=200, warmup_rounds=10)
    _check(body)
