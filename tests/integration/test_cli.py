"""The ``surge`` command line as a user runs it: serve (a real process), infer, models, graceful SIGTERM."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from surge.clients import InferenceClient
from tests.process import SurgeProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def served(tmp_path: Path, test_repository: Path):
    server = SurgeProcess(test_repository, tmp_path).start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def _surge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "surge.server.cli", *args], capture_output=True, text=True, timeout=60)


def test_models_and_infer_commands(served, tmp_path):
    address = served.address
    models = _surge("models", "--url", address)
    assert models.returncode == 0, models.stderr
    assert any(line.split()[:3] == ["mlp", "1", "READY"] for line in models.stdout.splitlines())
    random = _surge("infer", "mlp", "--url", address, "--batch", "2")
    assert random.returncode == 0, random.stderr
    assert "probabilities float32 [2, 4]" in random.stdout
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", x)
    from_file = _surge("infer", "nobatch", "--url", address, "--input", f"x={tmp_path / 'x.npy'}")
    assert from_file.returncode == 0, from_file.stderr
    assert "[[1. 2. 3.]" in from_file.stdout
    missing = _surge("infer", "no_such_model", "--url", address)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_sigterm_drains_in_flight_requests_and_exits_zero(served):
    process, address = served.proc, served.address
    with InferenceClient(address, timeout_s=30, retries=0) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.infer, "slow_py", {"delay_s": np.array([[1.0]], np.float32)})
        time.sleep(0.3)
        os.kill(process.pid, signal.SIGTERM)
        result = in_flight.result()
    assert result["delay_s_out"][0, 0] == 1.0
    assert process.wait(30) == 0
    assert "stopped" in served.log()


def test_serve_refuses_a_missing_repository(tmp_path):
    result = _surge("serve", "--model-repository", str(tmp_path / "nowhere"), "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0")
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_an_idle_open_stream_does_not_hold_shutdown(served):
    """A client keeping a stream open (its request answered) must not make SIGTERM wait the drain timeout (30 s)."""
    import threading

    from surge.clients import InferRequest

    process, address = served.proc, served.address
    release = threading.Event()

    def requests():
        yield InferRequest(model="mlp", inputs={"x": np.ones((1, 16), np.float32)}, request_id="only")
        release.wait(60)  # keep the stream open, idle

    with InferenceClient(address, timeout_s=60, retries=0) as client:
        stream = client.stream_infer(requests())
        assert next(stream).id == "only"
        started = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(20) == 0
        assert time.monotonic() - started < 10
        assert list(stream) == []  # the server ended the stream cleanly
        release.set()


def test_build_trt_without_tensorrt_says_what_to_install(tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed: tests/gpu/test_tensorrt.py builds engines")
    from tests.models import write_add_model

    write_add_model(tmp_path / "model.onnx", 1.0)
    result = _surge("build-trt", str(tmp_path / "model.onnx"), "--output", str(tmp_path / "model.plan"))
    assert result.returncode == 2
    assert "surge build-trt needs TensorRT: pip install 'surge[tensorrt]'" in result.stderr
    assert not (tmp_path / "model.plan").exists()


def test_build_trt_rejects_a_missing_onnx_file(tmp_path):
    result = _surge("build-trt", str(tmp_path / "missing.onnx"), "--output", str(tmp_path / "model.plan"))
    assert (result.returncode, result.stderr.strip()) == (2, f"error: {tmp_path / 'missing.onnx'} is not a file")


def test_serve_refuses_a_taken_metrics_port(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _surge("serve", "--model-repository", str(tmp_path), "--grpc-port", "0", "--metrics-port", str(port), "--http-port", "0")
    assert result.returncode == 2 and f"metrics endpoint to 127.0.0.1:{port}" in result.stderr


def test_observability_copies_the_dashboard_and_rules(tmp_path):
    result = _surge("observability", "--out", str(tmp_path / "obs"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "obs").iterdir()) == ["grafana-dashboard.json", "prometheus-alerts.yaml"]
    assert _surge("observability").stdout.count("\n") == 2


def test_serve_refuses_a_taken_grpc_port_with_a_clear_message(tmp_path, test_repository):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _surge("serve", "--model-repository", str(test_repository), "--grpc-port", str(port), "--metrics-port", "0", "--http-port", "0")
    assert result.returncode == 2 and f"cannot bind gRPC to 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_switch_interval_out_of_range(tmp_path):
    result = _surge("serve", "--model-repository", str(tmp_path), "--grpc-port", "0", "--switch-interval-ms", "500")
    assert result.returncode == 2 and "--switch-interval-ms must be between 0 (Python's default) and 100 ms, got 500 ms" in result.stderr


def test_the_switch_interval_is_set_when_the_server_starts(tmp_path):
    from surge.server.app import ServerConfig
    from tests.conftest import ServerThread

    before = sys.getswitchinterval()
    server = ServerThread(ServerConfig(model_repository=tmp_path, grpc_port=0, metrics_port=-1, http_port=-1, switch_interval_s=0.0007)).start()
    try:
        assert sys.getswitchinterval() == pytest.approx(0.0007)
    finally:
        server.stop()
        sys.setswitchinterval(before)


def test_infer_names_an_unreadable_input_file_without_a_traceback(tmp_path):
    (tmp_path / "bad.npy").write_text("not numpy")
    for path in (tmp_path / "missing.npy", tmp_path / "bad.npy"):
        result = _surge("infer", "mlp", "--url", "127.0.0.1:1", "--input", f"x={path}")
        assert result.returncode == 2 and result.stderr.startswith(f"error: --input x={path}: ") and "Traceback" not in result.stderr
