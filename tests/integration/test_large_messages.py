"""Large requests and responses over gRPC, unary and streamed: decoded in place and encoded off the event loop
(``server/edge/wire.py``), they round-trip exactly, BYTES included, and a malformed large request is
INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from surge.clients import InferenceClient, InferRequest, InferResult

_ECHO_PY = '''
class Model:
    def infer(self, inputs, output_names):
        return {"y": inputs["x"][::-1], "s": inputs["s"]}
'''
_ECHO_CONFIG = """
backend = "python"
max_batch_size = 0

[[input]]
name = "x"
datatype = "FP32"
dims = [-1]

[[input]]
name = "s"
datatype = "BYTES"
dims = [-1]

[[output]]
name = "y"
datatype = "FP32"
dims = [-1]

[[output]]
name = "s"
datatype = "BYTES"
dims = [-1]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from surge.server.app import ServerConfig
    from tests.conftest import ServerThread

    root = tmp_path_factory.mktemp("repo")
    (root / "echo_big_py" / "1").mkdir(parents=True)
    (root / "echo_big_py" / "1" / "model.py").write_text(_ECHO_PY)
    (root / "echo_big_py" / "config.toml").write_text(_ECHO_CONFIG)
    thread = ServerThread(ServerConfig(model_repository=root, grpc_port=0, metrics_port=-1, http_port=-1)).start()
    yield thread
    thread.stop()


def _inputs(floats: int, strings: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = np.array([rng.bytes(int(n)) for n in rng.integers(0, 9, strings)], dtype=object)
    return {"x": rng.random(floats, dtype=np.float32), "s": s}


def _check(result: InferResult, inputs: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(result["y"], inputs["x"][::-1])
    assert result["s"].tolist() == inputs["s"].tolist()


@pytest.mark.parametrize(("floats", "strings"), [(10, 3), (3 * 2**20, 5), (7, 140_000), (2**20 + 1, 5)])
def test_unary_and_streamed_round_trips(server, floats, strings):
    with InferenceClient(server.address, retries=0, timeout_s=60) as client:
        inputs = _inputs(floats, strings, floats)
        _check(client.infer("echo_big_py", inputs, request_id="u"), inputs)
        many = [_inputs(floats, strings, floats + i) for i in range(2)]
        results = list(client.stream_infer(InferRequest("echo_big_py", x, request_id=str(i)) for i, x in enumerate(many)))
        assert len(results) == 2
        for result in results:
            assert isinstance(result, InferResult), result
            _check(result, many[int(result.id)])


def test_a_malformed_large_request_is_invalid_argument(server):
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x3a\xff\xff\xff\x0f" + bytes(2**20), timeout=10)  # raw_input_contents claims 4 GiB
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "the ModelInfer request is not a valid protobuf message" in info.value.details()
