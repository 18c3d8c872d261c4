"""Outputs are checked against the model's config before they are answered: a runtime returning an output with
the wrong shape, datatype or row count, or none at all, fails its request with INTERNAL naming the output and
what was expected (never OK with whatever came back); the model keeps serving good requests."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from surge.clients import InferenceClient, InferenceServerError
from tests.models import write_python_model

#: No batch dimension: x FP32 [2] -> y FP32 [2] and label BYTES [1]; the input's first value picks a fault.
_WRONG_PY = '''
import numpy as np

class Model:
    def infer(self, inputs, output_names):
        x = inputs["x"]
        mode = int(x[0])
        y, label = x * 2, np.array([b"ok"], dtype=object)
        if mode == 1:
            y = np.concatenate([y, y])          # shape [4]
        elif mode == 2:
            y = y.astype(np.float64)            # FP64 for FP32
        elif mode == 3:
            return {"label": label}             # y missing
        elif mode == 4:
            y = y.astype(np.float16).tolist()   # a list (of float64 once the runtime makes it an array)
        elif mode == 5:
            label = np.array([1], np.int64)     # numbers for BYTES
        elif mode == 6:
            y = y.reshape(1, 2)                 # one dimension too many
        return {"y": y, "label": label}
'''
#: Batched (no dynamic batcher): answers one row more than it was given.
_EXTRA_ROW_PY = '''
import numpy as np

class Model:
    def infer(self, inputs, output_names):
        x = inputs["x"]
        return {"y": x if x[0, 0] == 0 else np.concatenate([x, x[:1]])}
'''


def _write(root: Path) -> Path:
    write_python_model(root / "wrong_py", _WRONG_PY, inputs=[("x", "FP32", (2,))], outputs=[("y", "FP32", (2,)), ("label", "BYTES", (1,))])
    write_python_model(root / "extra_row_py", _EXTRA_ROW_PY, inputs=[("x", "FP32", (3,))], outputs=[("y", "FP32", (3,))], max_batch_size=4)
    return root


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from tests.conftest import ServerThread
    from surge.server.app import ServerConfig

    root = _write(tmp_path_factory.mktemp("repo"))
    server = ServerThread(ServerConfig(model_repository=root, grpc_port=0, metrics_port=0, http_port=-1)).start()
    with InferenceClient(server.address, retries=0, timeout_s=30) as c:
        yield c
    server.stop()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (1, "returned output 'y' as shape [4], not [2]"),
        (2, "returned output 'y' as dtype float64, not FP32"),
        (3, "returned output 'y' as missing"),
        (4, "returned output 'y' as dtype float64, not FP32"),
        (5, "returned output 'label' as dtype int64, not BYTES"),
        (6, "returned output 'y' as shape [1, 2], not [2]"),
    ],
)
def test_a_wrong_output_is_internal_naming_it(client, mode, expected):
    with pytest.raises(InferenceServerError) as info:
        client.infer("wrong_py", {"x": np.array([mode, 1], np.float32)}, request_id=f"bad-{mode}")
    assert info.value.code == grpc.StatusCode.INTERNAL, info.value
    assert f"model 'wrong_py' version 1 {expected}" in info.value.message and f"bad-{mode}" in info.value.message, info.value.message
    good = client.infer("wrong_py", {"x": np.array([0, 1], np.float32)})  # the model keeps serving
    np.testing.assert_array_equal(good["y"], [0, 2])
    assert good["label"].tolist() == [b"ok"]


def test_a_requested_output_is_checked_alone(client):
    """Only the outputs the request asked for are checked (and answered)."""
    assert client.infer("wrong_py", {"x": np.array([1, 1], np.float32)}, outputs=["label"])["label"].tolist() == [b"ok"]


def test_a_wrong_row_count_is_internal(client):
    with pytest.raises(InferenceServerError) as info:
        client.infer("extra_row_py", {"x": np.ones((2, 3), np.float32)})
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "model 'extra_row_py' version 1 returned output 'y' as shape [3, 3], not [2, 3]" in info.value.message, info.value.message
    np.testing.assert_array_equal(client.infer("extra_row_py", {"x": np.zeros((2, 3), np.float32)})["y"], np.zeros((2, 3)))
