"""Model faults over the wire: a runtime that hangs is bounded by execution_timeout_s, its requests fail
(DEADLINE_EXCEEDED, request id), its instance is replaced, the model's health says so meanwhile; a model that fails
to warm up stays UNAVAILABLE with its reason while the others serve."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from surge.clients import InferenceClient, InferenceServerError
from tests.models import write_add_model, write_python_model, write_slow_model

#: Sleeps delay_s seconds; every load after the first takes REPLACEMENT_LOAD_S (so the window without an
#: instance is long enough to observe); one instance; batches running past 1 s are failed.
_HANG_PY = '''
import time
from pathlib import Path

class Model:
    def load(self, version_dir, config):
        counter = Path(version_dir) / "loads"
        loads = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(loads + 1))
        if loads:
            time.sleep({replacement_load_s})

    def infer(self, inputs, output_names):
        time.sleep(float(inputs["delay_s"].reshape(-1)[0]))
        return {{"delay_s_out": inputs["delay_s"]}}
'''
_WARMUP_FAILS_PY = '''
class Model:
    def infer(self, inputs, output_names):
        raise RuntimeError("cannot run on zeros")
'''
REPLACEMENT_LOAD_S = 4.0  # long enough to observe the gap on a noisy box
HANG_S = 3.0  # the abandoned thread sleeps this long, then is closed


def _write(root: Path) -> Path:
    write_slow_model(root / "hang_py", max_queue_size=8, settings="execution_timeout_s = 1.0", code=_HANG_PY.format(replacement_load_s=REPLACEMENT_LOAD_S))
    write_python_model(root / "warmup_fails_py", _WARMUP_FAILS_PY, inputs=[("x", "FP32", (1,))], outputs=[("y", "FP32", (1,))], max_batch_size=2)
    write_add_model(root / "adder" / "1" / "model.onnx", 1.0)
    return root


@pytest.fixture
def faulty(tmp_path, start_server):
    return start_server(model_repository=_write(tmp_path / "repo"), strict_readiness=False)


def _delay(seconds: float) -> dict[str, np.ndarray]:
    return {"delay_s": np.array([[seconds]], np.float32)}


def _state(client: InferenceClient, model: str):
    (row,) = [r for r in client.repository_index() if r.name == model]
    return row


def test_hung_runtime_fails_its_batch_and_its_instance_is_replaced(faulty):
    with InferenceClient(faulty.address, retries=0, timeout_s=30) as client, concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        hung = pool.submit(client.infer, "hang_py", _delay(HANG_S), request_id="stuck-1")
        time.sleep(0.2)
        queued = pool.submit(client.infer, "hang_py", _delay(0.0), request_id="behind")  # waits for the instance
        with pytest.raises(InferenceServerError) as info:
            hung.result()
        failed_after = time.monotonic() - started
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "execution_timeout_s of 1 s" in info.value.message and "stuck-1" in info.value.message
        assert 0.9 < failed_after < HANG_S, f"failed after {failed_after:.2f} s"

        # No instance until the replacement is warm (it takes REPLACEMENT_LOAD_S): the model says so.
        assert client.is_model_ready("hang_py") is False
        row = _state(client, "hang_py")
        assert row.state == "UNAVAILABLE" and "1 instance(s) replaced" in row.reason and "no instance can serve" in row.reason
        with pytest.raises(InferenceServerError) as refused:
            client.infer("hang_py", _delay(0.0))
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE and "replaced" in refused.value.message
        assert client.infer("adder", {"x": np.zeros((1, 4), np.float32)})["y"][0, 0] == 1.0  # the others serve on

        # The queued request is served by the replacement, which then takes new requests.
        assert queued.result()["delay_s_out"][0, 0] == 0.0
        assert client.is_model_ready("hang_py") is True
        row = _state(client, "hang_py")
        assert row.state == "READY" and row.reason.startswith("1 instance(s) replaced after running past execution_timeout_s")
        assert client.infer("hang_py", _delay(0.01))["delay_s_out"][0, 0] == pytest.approx(0.01)


def test_a_model_failing_its_warmup_stays_unavailable_with_its_reason(faulty):
    with InferenceClient(faulty.address, retries=0, timeout_s=30) as client:
        row = _state(client, "warmup_fails_py")
        assert row.state == "UNAVAILABLE" and "cannot run on zeros" in row.reason
        with pytest.raises(InferenceServerError) as info:
            client.infer("warmup_fails_py", {"x": np.ones((1, 1), np.float32)})
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and "cannot run on zeros" in info.value.message
        assert client.infer("adder", {"x": np.zeros((1, 4), np.float32)})["y"][0, 0] == 1.0
