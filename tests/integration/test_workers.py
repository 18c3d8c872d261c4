"""``surge serve --workers 2`` as a user runs it: two front ends on one port over one engine; whole-server metrics and
statistics, restarts, SIGTERM."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from surge.clients import InferenceClient
from tests.models import write_add_model, write_slow_model
from tests.process import SurgeProcess

pytestmark = pytest.mark.timeout(120)

X = np.ones((1, 4), np.float32)


def _repository(root: Path) -> Path:
    write_add_model(root / "add" / "1" / "model.onnx", 1.0)
    (root / "add" / "config.toml").write_text("max_batch_size = 8\n")
    return root


def _from_log(server: SurgeProcess, pattern: str) -> str:
    match = re.search(pattern, server.log())
    assert match, f"no {pattern!r} in the log:\n{server.log()}"
    return match.group(1)


def _workers(state_dir: Path) -> dict[int, dict]:
    states = {}
    for path in state_dir.glob("worker-*.json"):
        try:
            state = json.loads(path.read_text())
        except ValueError:
            continue
        states[state["index"]] = state
    return states


def _scrape(address: str, openmetrics: bool = False) -> dict[tuple[str, frozenset], float]:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    with urllib.request.urlopen(urllib.request.Request(f"http://{address}/metrics", headers=headers), timeout=30) as response:
        text = response.read().decode()
        assert response.headers["Content-Type"].startswith("application/openmetrics-text" if openmetrics else "text/plain")
    parse = parse_openmetrics if openmetrics else text_string_to_metric_families
    return {(s.name, frozenset(s.labels.items())): s.value for f in parse(text) for s in f.samples}


def _from_front_end(samples: dict, index: int) -> float:
    return samples.get(("surge_engine_requests_total", frozenset({("device", "cpu"), ("front_end", str(index))})), 0.0)


def _ok_requests(samples: dict) -> float:
    return samples.get(("surge_requests_total", frozenset({("model", "add"), ("version", "1"), ("code", "OK")})), 0.0)


def _infer_count(address: str) -> int:
    with InferenceClient(address, timeout_s=30) as client:
        stats = client.model_statistics("add")
    assert [(s.name, s.version) for s in stats.model_stats] == [("add", "1")]
    return stats.model_stats[0].inference_count


def test_two_workers_one_port_whole_server_metrics_statistics_restart_and_sigterm(tmp_path):
    server = SurgeProcess(_repository(tmp_path / "repository"), tmp_path / "run", "--workers", "2", "--log-level", "info").start()
    try:
        state_dir = Path(_from_log(server, r"state in (\S+)"))
        metrics = _from_log(server, r"metrics of all workers on http://(\S+)/metrics")
        workers = _workers(state_dir)
        assert sorted(workers) == [0, 1] and workers[0]["pid"] != workers[1]["pid"]
        assert workers[0]["address"] == workers[1]["address"] == server.address  # one shared port

        # traffic that certainly reaches each worker (their private sockets), and some through the shared port
        for index, count in ((0, 3), (1, 5)):
            with InferenceClient(workers[index]["private"], timeout_s=30) as client:
                for _ in range(count):
                    np.testing.assert_array_equal(client.infer("add", {"x": X})["y"], X + 1)
        for _ in range(4):
            with InferenceClient(server.address, timeout_s=30) as client:  # new connections: spread by the kernel
                client.infer("add", {"x": X})
        # the engine counts every request once, and which front end sent it; a front end's own page has no model families
        samples = _scrape(metrics)
        own = [_from_front_end(samples, i) for i in (0, 1)]
        assert own[0] >= 3 and own[1] >= 5 and sum(own) == 12
        assert _ok_requests(_scrape(workers[0]["metrics"])) == 0
        assert _ok_requests(samples) == 12
        assert _ok_requests(_scrape(metrics, openmetrics=True)) == 12
        assert samples[("surge_workers", frozenset())] == 2
        assert samples[("surge_request_duration_seconds_count", frozenset({("model", "add"), ("version", "1")}))] == 12
        assert samples[("surge_queue_depth", frozenset({("model", "add"), ("version", "1")}))] == 0
        assert samples[("surge_model_state", frozenset({("model", "add"), ("version", "1"), ("state", "READY")}))] == 1
        assert _infer_count(server.address) == 12
        assert _infer_count(workers[0]["private"]) == 12 and _infer_count(workers[1]["private"]) == 12

        # a front end that dies is logged and restarted; the whole-server counters do not go down
        os.kill(workers[1]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (1 in (now := _workers(state_dir)) and now[1]["pid"] != workers[1]["pid"]):
            assert time.monotonic() < deadline, f"worker 1 was not restarted; log:\n{server.log()}"
            time.sleep(0.1)
        assert re.search(rf"front end 1 \(pid {workers[1]['pid']}\) died \(signal 9\); restarting in 0.5 s", server.log())
        samples = _scrape(metrics)
        assert samples[("surge_worker_restarts_total", frozenset())] == 1
        assert _ok_requests(samples) == 12  # counted by the engine, which kept running
        with InferenceClient(now[1]["private"], timeout_s=30) as client:
            client.infer("add", {"x": X})
        assert _ok_requests(_scrape(metrics)) == 13
        assert _ok_requests(_scrape(metrics, openmetrics=True)) == 13  # retired counters kept in this format too
        with InferenceClient(server.address, timeout_s=30) as client:
            assert client.is_server_ready()
        # dying again soon after a restart: the delay doubles
        os.kill(now[1]["pid"], signal.SIGKILL)
        while not (1 in (again := _workers(state_dir)) and again[1]["pid"] not in (workers[1]["pid"], now[1]["pid"])):
            assert time.monotonic() < deadline, f"worker 1 was not restarted twice; log:\n{server.log()}"
            time.sleep(0.1)
        assert re.search(rf"front end 1 \(pid {now[1]['pid']}\) died \(signal 9\); restarting in 1.0 s", server.log())
        assert _scrape(metrics)[("surge_worker_restarts_total", frozenset())] == 2
        pids = [workers[0]["pid"], again[1]["pid"]]
    finally:
        code = server.stop()
    assert code == 0, f"exit code {code} after SIGTERM; log:\n{server.log()}"
    for pid in pids:  # every worker stopped with the supervisor
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert not state_dir.exists()


def test_sigint_drains_requests_in_flight_on_every_worker_and_exits_zero(tmp_path):
    repository = _repository(tmp_path / "repository")
    write_slow_model(repository / "slow_py")
    server = SurgeProcess(repository, tmp_path / "run", "--workers", "2").start()
    workers = _workers(Path(_from_log(server, r"state in (\S+)")))
    delay = {"delay_s": np.array([[1.0]], np.float32)}
    clients = [InferenceClient(workers[i]["private"], timeout_s=30, retries=0) for i in (0, 1)]
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            in_flight = [pool.submit(client.infer, "slow_py", delay) for client in clients]  # one on each worker
            time.sleep(0.4)
            os.kill(server.proc.pid, signal.SIGINT)  # Ctrl-C on the supervisor alone
            results = [f.result() for f in in_flight]
    finally:
        for client in clients:
            client.close()
        code = server.stop()
    assert [r["delay_s_out"][0, 0] for r in results] == [1.0, 1.0]
    assert code == 0, server.log()
    assert server.log().count("stopping: readiness off, draining in-flight requests") == 2


def test_workers_that_cannot_start_stop_the_server_with_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(tmp_path / "missing"), "--workers", "2",
         "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cannot start" in result.stderr


def test_workers_flag_out_of_range(tmp_path):
    result = subprocess.run([sys.executable, "-m", "surge.server.cli", "serve", "--workers", "0", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "--workers must be 1 or more" in result.stderr


def test_each_gpu_gets_an_engine_of_its_own_and_cpu_models_keep_serving(tmp_path):
    repository = _repository(tmp_path / "repository")
    write_add_model(repository / "add_gpu" / "1" / "model.onnx", 1.0)
    (repository / "add_gpu" / "config.toml").write_text('max_batch_size = 8\n\n[instance_group]\nkind = "gpu"\n')
    write_add_model(repository / "add_gpu1" / "1" / "model.onnx", 1.0)
    (repository / "add_gpu1" / "config.toml").write_text('max_batch_size = 8\n\n[instance_group]\ncount = 2\nkind = "gpu"\ngpus = [1, 0]\n')
    server = SurgeProcess(repository, tmp_path / "run", "--workers", "2", "--log-level", "info").start()
    try:
        assert "starting engine(s) cpu, gpu0, gpu1" in server.log()
        with InferenceClient(server.address, timeout_s=30, retries=0) as client:
            np.testing.assert_array_equal(client.infer("add", {"x": X})["y"], X + 1)
            index = {(m.name, m.state) for m in client.repository_index()}
        assert ("add", "READY") in index
        if not Path("/dev/nvidia0").exists():  # no GPU here: each gpu engine reports its model as unavailable
            assert {("add_gpu", "UNAVAILABLE"), ("add_gpu1", "UNAVAILABLE")} <= index
        assert re.search(r"\[engine gpu0\]", server.log()) and re.search(r"\[engine gpu1\]", server.log())
    finally:
        assert server.stop() == 0, server.log()


#: A stand-in for NVML (``pynvml``) that the workers import: one 80 GiB GPU, whose memory prometheus_client's own
#: encoder would write as 8.589934592e+10.
_FAKE_PYNVML = """
import types

class NVMLError(Exception):
    pass

def nvmlInit():
    pass

def nvmlDeviceGetCount():
    return 1

def nvmlDeviceGetHandleByIndex(index):
    return index

def nvmlDeviceGetUUID(handle):
    return "GPU-2a6b0c9e-1111-2222-3333-444455556666"

def nvmlDeviceGetUtilizationRates(handle):
    return types.SimpleNamespace(gpu=37, memory=0)

def nvmlDeviceGetMemoryInfo(handle):
    return types.SimpleNamespace(total=85899345920, used=12884901888, free=73014444032)

def nvmlDeviceGetPowerUsage(handle):
    return 312456

def nvmlDeviceGetPowerManagementLimit(handle):
    return 700000
"""


def test_perf_analyzer_reads_the_gpu_gauges_of_the_merged_page_behind_a_scrape_token(tmp_path):
    """The supervisor re-emits every worker's page: values stay plain digits (perf_analyzer's regex stops at an
    exponent); the merged page asks for the scrape token, as a single server's does."""
    from tests.unit.test_gpu_metrics import PERF_ANALYZER_REGEX

    fake = tmp_path / "fake-nvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(_FAKE_PYNVML)
    token = "scrape-token-0123456789abcdef"
    (tmp_path / "token").write_text(token)
    pythonpath = os.pathsep.join(filter(None, (str(fake), os.environ.get("PYTHONPATH"))))
    server = SurgeProcess(_repository(tmp_path / "repository"), tmp_path / "run", "--workers", "2", "--log-level", "info",
                          "--metrics-token-file", str(tmp_path / "token"), env={"PYTHONPATH": pythonpath}).start()  # fmt: skip
    try:
        metrics = _from_log(server, r"metrics of all workers on http://(\S+)/metrics")
        for _ in range(3):
            with InferenceClient(server.address, timeout_s=30) as client:
                client.infer("add", {"x": X})
        request = urllib.request.Request(f"http://{metrics}/metrics", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        expected = {"nv_gpu_utilization": "0.37", "nv_gpu_memory_total_bytes": "85899345920", "nv_gpu_memory_used_bytes": "12884901888",
                    "nv_gpu_power_usage": "312.456", "nv_gpu_power_limit": "700"}  # fmt: skip
        for metric, value in expected.items():
            assert re.findall(PERF_ANALYZER_REGEX.format(metric=metric), text) == [("GPU-2a6b0c9e-1111-2222-3333-444455556666", value)], metric
        samples = {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert _ok_requests(samples) == 3 and samples[("surge_workers", frozenset())] == 2  # both workers' pages were read
        assert "e+" not in text  # no value of the page in exponent form
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{metrics}/metrics", timeout=30)
        assert info.value.code == 401
        info.value.close()
    finally:
        server.stop_and_check()
