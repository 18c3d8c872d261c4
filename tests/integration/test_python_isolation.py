"""Python models in processes of their own, over the wire against ``surge serve``: a model that calls
``os._exit``, loops forever, leaks memory past ``max_memory_bytes`` or whose process is killed between
calls fails only its own calls (UNAVAILABLE / DEADLINE_EXCEEDED with the reason), is NOT READY while it
restarts and READY after; the other models answer throughout; the server's threads, RSS and child
processes stay flat; the children die with the server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from surge.clients import InferenceClient, InferenceServerError
from tests.models import write_add_model
from tests.process import SurgeProcess

_FAULTY_PY = '''
import os
import numpy as np

class Model:
    def load(self, version_dir, config):
        self.kept = []

    def infer(self, inputs, output_names):
        x = inputs["x"]
        code = int(x.reshape(-1)[0])
        if code == -1:
            os._exit(1)
        if code == -2:
            while True:
                pass
        if code == -3:
            self.kept.append(np.ones(10 << 20, np.uint8))  # 10 MB, every page touched
        return {"y": x * 2}
'''
_FLAKY_LOAD_PY = '''
import os
from pathlib import Path

class Model:
    def load(self, version_dir, config):
        counter = Path(version_dir) / "loads"
        loads = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(loads + 1))
        if loads in (1, 2):  # the first two replacements die while they load
            os._exit(3)

    def infer(self, inputs, output_names):
        if int(inputs["x"].reshape(-1)[0]) == -1:
            os._exit(1)
        return {"y": inputs["x"] * 2}
'''
_CONFIG = """
backend = "python"
max_batch_size = 0
{extra}

[[input]]
name = "x"
datatype = "FP32"
dims = [1]

[[output]]
name = "y"
datatype = "FP32"
dims = [1]
"""
MAX_MEMORY = 160 << 20
MODELS = ("faulty_py", "leaky_py", "bystander_py", "flaky_load_py")


def _write(root: Path) -> Path:
    timeout = "execution_timeout_s = 1.0"
    for name, extra in (
        ("faulty_py", timeout), ("leaky_py", f"{timeout}\nmax_memory_bytes = {MAX_MEMORY}"), ("bystander_py", timeout),
        ("flaky_load_py", timeout), ("too_little_memory_py", "max_memory_bytes = 1000"), ("endless_timeout_py", "execution_timeout_s = 1e9"),  # refused
    ):  # fmt: skip
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(_FLAKY_LOAD_PY if name == "flaky_load_py" else _FAULTY_PY)
        (root / name / "config.toml").write_text(_CONFIG.format(extra=extra))
    write_add_model(root / "adder" / "1" / "model.onnx", 1.0)
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    server = SurgeProcess(_write(root / "repo"), root / "server").start()
    yield server
    server.stop_and_check()


def _x(code: float) -> dict[str, np.ndarray]:
    return {"x": np.array([code], np.float32)}


def _status(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"threads": int(fields["Threads"]), "rss": int(fields["VmRSS"].split()[0]) << 10}


def _children(pid: int) -> dict[str, int]:
    """The server's Python-model processes: label (model/version/instance) -> pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid and b"surge.server.runtimes.python_stub" in argv:
            found[argv[-2].decode()] = int(entry.name)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait_ready(client: InferenceClient, model: str, timeout_s: float = 60.0) -> float:
    started = time.monotonic()
    while not client.is_model_ready(model):
        assert time.monotonic() - started < timeout_s, f"{model} not READY again within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def _others_answer(client: InferenceClient) -> None:
    assert client.infer("bystander_py", _x(3.0))["y"][0] == 6.0
    assert client.infer("adder", {"x": np.zeros((1, 4), np.float32)})["y"][0, 0] == 1.0


def _reason(client: InferenceClient, model: str) -> str:
    (row,) = [r for r in client.repository_index() if r.name == model]
    return row.reason


def test_each_instance_runs_in_a_process_of_its_own(served):
    with InferenceClient(served.address, retries=0, timeout_s=30) as client:
        assert client.infer("faulty_py", _x(2.0))["y"][0] == 4.0
    children = _children(served.proc.pid)
    assert sorted(children) == [f"{m}/1/0" for m in sorted(MODELS)]


def test_os_exit_fails_only_its_call_and_the_instance_restarts(served):
    pid = served.proc.pid
    with InferenceClient(served.address, retries=0, timeout_s=30) as client:
        _others_answer(client)
        before = _status(pid)
        for _ in range(4):
            child = _children(pid)["faulty_py/1/0"]
            with pytest.raises(InferenceServerError) as info:
                client.infer("faulty_py", _x(-1.0))
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert "model 'faulty_py' version 1: its process exited with code 1 during the call" in info.value.message
            _others_answer(client)  # while it restarts
            _wait_ready(client, "faulty_py")
            assert client.infer("faulty_py", _x(5.0))["y"][0] == 10.0
            assert _children(pid)["faulty_py/1/0"] != child
        assert "instance(s) replaced after its process exited with code 1" in _reason(client, "faulty_py")
        after = _status(pid)
    assert after["threads"] <= before["threads"] + 1, (before, after)
    assert after["rss"] <= before["rss"] + (30 << 20), (before, after)
    assert sorted(_children(pid)) == [f"{m}/1/0" for m in sorted(MODELS)]  # no process left behind


def test_an_endless_loop_is_killed_at_execution_timeout(served):
    pid = served.proc.pid
    with InferenceClient(served.address, retries=0, timeout_s=30) as client:
        before = _status(pid)
        for _ in range(3):
            child = _children(pid)["faulty_py/1/0"]
            started = time.monotonic()
            with pytest.raises(InferenceServerError) as info:
                client.infer("faulty_py", _x(-2.0))
            took = time.monotonic() - started
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "did not finish within its execution_timeout_s of 1 s" in info.value.message
            assert 0.9 < took < 10, took
            _others_answer(client)
            _wait_ready(client, "faulty_py")
            assert client.infer("faulty_py", _x(1.0))["y"][0] == 2.0
            assert _children(pid)["faulty_py/1/0"] != child
        assert "after running past execution_timeout_s = 1 s" in _reason(client, "faulty_py")
        after = _status(pid)
    assert after["threads"] <= before["threads"] + 1, (before, after)  # the hung thread was not leaked
    assert after["rss"] <= before["rss"] + (30 << 20), (before, after)


def test_a_leak_past_max_memory_bytes_restarts_the_instance_after_answering(served):
    pid = served.proc.pid
    restarts, answered = 0, 0
    with InferenceClient(served.address, retries=0, timeout_s=30) as client:
        before = _status(pid)
        child = _children(pid)["leaky_py/1/0"]
        for _ in range(40):  # 400 MB leaked in all: at least two restarts at 160 MiB
            try:
                assert client.infer("leaky_py", _x(-3.0))["y"][0] == -6.0
                answered += 1
            except InferenceServerError as exc:  # only while the replacement starts
                assert exc.code == grpc.StatusCode.UNAVAILABLE and "above max_memory_bytes" in exc.message, exc
                _wait_ready(client, "leaky_py")
            now = _children(pid).get("leaky_py/1/0")
            if now is not None and now != child:
                restarts, child = restarts + 1, now
            _others_answer(client)
        assert "above max_memory_bytes = 167772160" in _reason(client, "leaky_py")
        after = _status(pid)
    assert restarts >= 2 and answered >= 30, (restarts, answered)
    assert after["threads"] <= before["threads"] + 1, (before, after)
    assert after["rss"] <= before["rss"] + (30 << 20), (before, after)  # the leak stayed in the children


def test_a_process_killed_between_calls_is_noticed_and_restarted(served):
    pid = served.proc.pid
    with InferenceClient(served.address, retries=0, timeout_s=30) as client:
        _wait_ready(client, "faulty_py")
        child = _children(pid)["faulty_py/1/0"]
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while client.is_model_ready("faulty_py") and _children(pid).get("faulty_py/1/0") in (child, None):
            assert time.monotonic() < deadline, "the death of an idle model process went unnoticed"
            time.sleep(0.01)
        _wait_ready(client, "faulty_py")
        assert _children(pid)["faulty_py/1/0"] != child
        assert "after its process was killed by SIGKILL" in _reason(client, "faulty_py")
        assert client.infer("faulty_py", _x(4.0))["y"][0] == 8.0


def test_model_processes_die_with_the_server(tmp_path):
    server = SurgeProcess(_write(tmp_path / "repo"), tmp_path / "server").start()
    children = _children(server.proc.pid)
    assert len(children) == len(MODELS)
    server.proc.kill()  # no chance to clean up: the children must notice on their own
    server.proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(c) for c in children.values()):
        assert time.monotonic() < deadline, "model processes outlived the server"
        time.sleep(0.05)


def test_limits_out_of_bounds_are_refused_with_the_key_and_the_bound(served):
    with InferenceClient(served.address, retries=0, timeout_s=30) as client:
        memory = _reason(client, "too_little_memory_py")
        assert "max_memory_bytes: expected 0 (no limit) or 67108864 (64 MiB) to this machine's memory" in memory and "got 1000" in memory
        assert "execution_timeout_s: expected a number from 0 to 3600 (seconds), got 1000000000.0" in _reason(client, "endless_timeout_py")
        for model in ("too_little_memory_py", "endless_timeout_py"):
            assert not client.is_model_ready(model)
        _others_answer(client)


def test_a_replacement_that_dies_while_loading_is_tried_again_with_backoff(served):
    with InferenceClient(served.address, retries=0, timeout_s=30) as client:
        with pytest.raises(InferenceServerError) as info:
            client.infer("flaky_load_py", _x(-1.0))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and "exited with code 1" in info.value.message
        deadline = time.monotonic() + 30
        while "replacement failed to load" not in _reason(client, "flaky_load_py"):
            assert time.monotonic() < deadline, _reason(client, "flaky_load_py")
            time.sleep(0.02)
        assert "its process exited with code 3" in _reason(client, "flaky_load_py")
        assert not client.is_model_ready("flaky_load_py")
        _others_answer(client)
        _wait_ready(client, "flaky_load_py")  # the third replacement loads
        assert (served.repository / "flaky_load_py" / "1" / "loads").read_text() == "4"
        assert _reason(client, "flaky_load_py") == "1 instance(s) replaced after its process exited with code 1"
        assert client.infer("flaky_load_py", _x(2.0))["y"][0] == 4.0
