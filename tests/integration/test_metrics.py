"""The /metrics endpoint over the wire: a real server, our clients, a known workload, then a scrape parsed with
prometheus_client's parsers. Exact counts, so this module has a server of its own (nobody else sends to it)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import http.client
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from surge.clients import AsyncInferenceClient, InferenceClient, InferenceServerError
from surge.server.app import ServerConfig
from surge.server.observability.metrics import DEFAULT_LATENCY_BUCKETS_S, STAGES
from tests.conftest import ServerThread

MODELS = ("mlp", "mlp_batched", "versioned", "failing_py")
STAGE_NAMES = [name for name, _ in STAGES[1:7]]  # decode .. encode: they add up to the request total
CUSTOM_BUCKETS = (0.001, 0.01, 0.1, 1.0)


@pytest.fixture(scope="module")
def metrics_server(test_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("metrics-repository")
    for name in MODELS:
        shutil.copytree(test_repository / name, root / name)
    shutil.copytree(test_repository / "mlp" / "1", root / "mlp_buckets" / "1")
    (root / "mlp_buckets" / "config.toml").write_text(f"[metrics]\nlatency_buckets_s = {list(CUSTOM_BUCKETS)}\n")
    shutil.copytree(test_repository / "mlp" / "1", root / "mlp_slo" / "1")
    (root / "mlp_slo" / "config.toml").write_text("max_batch_size = 16\n\n[dynamic_batching]\nlatency_slo_s = 0.05\n")
    thread = ServerThread(ServerConfig(model_repository=root, grpc_port=0, metrics_port=0, http_port=0)).start()
    yield thread
    thread.stop()


def scrape(server: ServerThread, accept: str = "") -> tuple[str, str]:
    """(body, content type) of GET /metrics."""
    request = urllib.request.Request(f"http://{server.server.metrics_address}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode("utf-8"), response.headers["Content-Type"]


def samples(server: ServerThread) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    body, _ = scrape(server)
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(body) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def _version(model: str, version: str = "1") -> dict[str, str]:
    return {"model": model, "version": version}


def _histograms_agree_with(found: dict, labels: dict[str, str], stats) -> None:
    """ModelStatistics (Triton's coarser fields) equals sums of the histograms' stages."""
    count = value(found, "surge_request_duration_seconds_count", **labels)
    total = value(found, "surge_request_duration_seconds_sum", **labels)
    stage = {name: value(found, f"{name}_sum", **labels) for name in STAGE_NAMES}
    assert stats.inference_stats.success.count == count
    assert stats.inference_stats.success.ns / 1e9 == pytest.approx(total, abs=1e-6)
    assert stats.inference_stats.queue.ns / 1e9 == pytest.approx(stage["surge_queue_duration_seconds"], abs=1e-6)
    assert stats.inference_stats.queue.count == value(found, "surge_queue_duration_seconds_count", **labels)
    assert stats.inference_stats.compute_input.ns / 1e9 == pytest.approx(
        stage["surge_decode_duration_seconds"] + stage["surge_compute_input_duration_seconds"], abs=1e-6
    )
    assert stats.inference_stats.compute_infer.ns / 1e9 == pytest.approx(stage["surge_compute_infer_duration_seconds"], abs=1e-6)
    assert stats.inference_stats.compute_output.ns / 1e9 == pytest.approx(
        stage["surge_compute_output_duration_seconds"] + stage["surge_encode_duration_seconds"], abs=1e-6
    )
    assert stats.inference_stats.fail.count == value(found, "surge_failed_request_duration_seconds_count", **labels)
    assert stats.inference_stats.fail.ns / 1e9 == pytest.approx(value(found, "surge_failed_request_duration_seconds_sum", **labels), abs=1e-6)
    assert stats.execution_count == value(found, "surge_batch_size_count", model=labels["model"], version=labels["version"])
    assert stats.inference_count == value(found, "surge_rows_total", **labels, code="OK")


def test_histograms_count_every_request_and_stages_add_up_to_the_total(metrics_server):
    rows = [1, 3, 2, 5, 1, 4, 2]
    rng = np.random.default_rng(0)
    with InferenceClient(metrics_server.address, timeout_s=30, retries=0) as client:
        before = samples(metrics_server)
        for n in rows:
            client.infer("mlp", {"x": rng.standard_normal((n, 16)).astype(np.float32)})
        for _ in range(3):
            client.infer("versioned", {"x": np.ones((2, 4), np.float32)}, version="1")
        for _ in range(4):
            client.infer("versioned", {"x": np.ones((1, 4), np.float32)}, version="2")
        found = samples(metrics_server)
        stats = {(s.name, s.version): s for s in client.model_statistics("").model_stats}

    mlp = _version("mlp")
    assert value(before, "surge_request_duration_seconds_count", **mlp) == 0
    for name, _ in STAGES[:7]:
        assert value(found, f"{name}_count", **mlp) == len(rows), name
        assert value(found, f"{name}_bucket", **mlp, le="+Inf") == len(rows), name
    assert value(found, "surge_requests_total", **mlp, code="OK") == len(rows)
    assert value(found, "surge_rows_total", **mlp, code="OK") == sum(rows)
    assert value(found, "surge_request_duration_seconds_count", **_version("versioned", "1")) == 3
    assert value(found, "surge_request_duration_seconds_count", **_version("versioned", "2")) == 4
    assert value(found, "surge_rows_total", **_version("versioned", "1"), code="OK") == 6

    for labels in (mlp, _version("versioned", "1"), _version("versioned", "2")):
        total = value(found, "surge_request_duration_seconds_sum", **labels)
        parts = sum(value(found, f"{name}_sum", **labels) for name in STAGE_NAMES)
        assert total > 0 and parts == pytest.approx(total, rel=1e-9, abs=1e-9)  # a partition of the same stamps
        for name in STAGE_NAMES:
            assert 0 < value(found, f"{name}_sum", **labels) <= total, name
        _histograms_agree_with(found, labels, stats[(labels["model"], labels["version"])])

    le = sorted(float(dict(key)["le"]) for (name, key) in found if name == "surge_request_duration_seconds_bucket" and dict(key)["model"] == "mlp")
    assert le[:-1] == list(DEFAULT_LATENCY_BUCKETS_S) and le[-1] == float("inf")


def test_bad_requests_are_counted_by_status_code(metrics_server):
    with InferenceClient(metrics_server.address, timeout_s=30, retries=0) as client:
        before = samples(metrics_server)
        failures = [
            (lambda: client.infer("mlp", {"x": np.ones((1, 15), np.float32)}), grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: client.infer("mlp", {"x": np.ones((1, 16), np.float32)}, version="7"), grpc.StatusCode.NOT_FOUND),
            (lambda: client.infer("no_such_model", {"x": np.ones((1, 16), np.float32)}), grpc.StatusCode.NOT_FOUND),
            (lambda: client.infer("failing_py", {"x": np.full((2, 1), -1.0, np.float32)}), grpc.StatusCode.INTERNAL),
            (lambda: client.infer("failing_py", {"x": np.full((1, 1), -1.0, np.float32)}), grpc.StatusCode.INTERNAL),
        ]
        for call, code in failures:
            with pytest.raises(InferenceServerError) as info:
                call()
            assert info.value.code == code
        client.infer("failing_py", {"x": np.ones((1, 1), np.float32)})
        found = samples(metrics_server)
        (stats,) = client.model_statistics("failing_py").model_stats

    def delta(name: str, **labels: str) -> float:
        return value(found, name, **labels) - value(before, name, **labels)

    assert delta("surge_requests_total", **_version("mlp"), code="INVALID_ARGUMENT") == 1
    assert delta("surge_rows_total", **_version("mlp"), code="INVALID_ARGUMENT") == 0  # rejected before its rows were known
    assert delta("surge_unrouted_requests_total", code="NOT_FOUND") == 2  # unknown version, unknown model: no model label
    assert not any(dict(key).get("model") == "no_such_model" for _, key in found)
    failing = _version("failing_py")
    assert delta("surge_requests_total", **failing, code="INTERNAL") == 2
    assert delta("surge_rows_total", **failing, code="INTERNAL") == 3
    assert delta("surge_requests_total", **failing, code="OK") == 1
    assert delta("surge_failed_request_duration_seconds_count", **failing) == 2
    assert delta("surge_request_duration_seconds_count", **failing) == 1  # latency histograms: answered requests
    _histograms_agree_with(found, failing, stats)


async def test_batch_size_histogram_reflects_batching(metrics_server):
    xs = [np.ones((1, 16), np.float32) for _ in range(32)]
    async with AsyncInferenceClient(metrics_server.address, timeout_s=30, retries=0) as client:
        await asyncio.gather(*(client.infer("mlp_batched", {"x": x}) for x in xs))
        (stats,) = (await client.model_statistics("mlp_batched")).model_stats
    found = await asyncio.to_thread(samples, metrics_server)
    key = {"model": "mlp_batched", "version": "1"}
    executions = value(found, "surge_batch_size_count", **key)
    assert value(found, "surge_batch_size_sum", **key) == len(xs)  # rows
    assert executions == stats.execution_count == sum(b.compute_infer.count for b in stats.batch_stats)
    assert executions < len(xs) / 2, f"{executions} batches for {len(xs)} one-row requests"
    assert value(found, "surge_batch_size_bucket", **key, le="1.0") < executions  # some batches had several rows
    assert [float(dict(k)["le"]) for (n, k) in found if n == "surge_batch_size_bucket" and dict(k)["model"] == "mlp_batched"] == [
        1, 2, 4, 8, 16, 32, 64, float("inf")
    ]
    assert value(found, "surge_request_duration_seconds_count", **_version("mlp_batched")) == len(xs)
    assert value(found, "surge_queue_depth", **key) == 0 and value(found, "surge_inflight_requests", **key) == 0


async def test_slo_mode_exports_its_margin_and_late_share(metrics_server):
    async with AsyncInferenceClient(metrics_server.address, timeout_s=30, retries=0) as client:
        await asyncio.gather(*(client.infer("mlp_slo", {"x": np.ones((1, 16), np.float32)}) for _ in range(16)))
    found = await asyncio.to_thread(samples, metrics_server)
    key = frozenset({"model": "mlp_slo", "version": "1"}.items())
    margin, late = found[("surge_batcher_slo_margin_seconds", key)], found[("surge_batcher_late_share", key)]
    assert 0.0 <= margin <= 0.025 and 0.0 <= late < 1.0  # the margin stays within half the SLO
    # versions with a fixed delay (or no batching) have no SLO margin: no series for them
    assert not [k for (name, k) in found if name == "surge_batcher_slo_margin_seconds" and dict(k)["model"] != "mlp_slo"]


def test_model_state_load_duration_and_custom_buckets(metrics_server):
    with InferenceClient(metrics_server.address, timeout_s=30, retries=0) as client:
        client.infer("mlp_buckets", {"x": np.ones((1, 16), np.float32)})
    found = samples(metrics_server)
    for model in (*MODELS, "mlp_buckets"):
        assert value(found, "surge_model_state", model=model, version="1", state="READY") == 1
        assert value(found, "surge_model_state", model=model, version="1", state="UNAVAILABLE") == 0
        assert value(found, "surge_model_load_duration_seconds", model=model, version="1") > 0
    le = [dict(k)["le"] for (n, k) in found if n == "surge_compute_infer_duration_seconds_bucket" and dict(k)["model"] == "mlp_buckets"]
    assert sorted(float(x) for x in le) == [*CUSTOM_BUCKETS, float("inf")]
    assert value(found, "surge_server_info", version=next(dict(k)["version"] for n, k in found if n == "surge_server_info")) == 1
    assert any(name.startswith("process_") for name, _ in found)  # prometheus_client's process collector


def test_openmetrics_when_asked_and_gzip(metrics_server):
    text, content_type = scrape(metrics_server)
    assert content_type.startswith("text/plain; version=0.0.4")
    body, content_type = scrape(metrics_server, accept="application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(body)}
    assert families["surge_request_duration_seconds"].type == "histogram"
    assert families["surge_requests"].type == "counter"  # OpenMetrics names counters without _total
    request = urllib.request.Request(f"http://{metrics_server.server.metrics_address}/metrics", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(response.read()).decode().count("# TYPE surge_") == text.count("# TYPE surge_")


def test_http_edges(metrics_server):
    host, port = metrics_server.server.metrics_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    for _ in range(2):  # keep-alive: two scrapes on one connection
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200 and b"surge_request_duration_seconds" in response.read()
    connection.request("HEAD", "/metrics")
    response = connection.getresponse()
    assert response.status == 200 and int(response.headers["Content-Length"]) > 0 and response.read() == b""
    connection.request("GET", "/nope")
    response = connection.getresponse()
    assert response.status == 404 and b"/metrics" in response.read()
    connection.close()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(f"http://{metrics_server.server.metrics_address}/metrics", data=b"x", method="POST"), timeout=30)
    assert info.value.code == 405 and info.value.headers["Allow"] == "GET, HEAD"
    info.value.close()



def _raw(address: str, data: bytes, timeout_s: float = 30.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    import socket

    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_heads_are_refused_and_the_endpoint_keeps_serving(metrics_server):
    from surge.server.edge.metrics_http import MAX_HEAD_LINE_BYTES, MAX_HEADERS

    address = metrics_server.server.metrics_address
    long_line = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEAD_LINE_BYTES + 10) + b"\r\n\r\n"
    many = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 5)) + b"\r\n"
    long_target = b"GET /" + b"m" * (MAX_HEAD_LINE_BYTES + 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    for head in (long_line, many, long_target):
        answer = _raw(address, head)
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500 and b"surge_request" not in answer, answer[:200]
    body = b"x" * 100
    answer = _raw(address, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + body + b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405") and answer.count(b"HTTP/1.1 ") == 1  # answered, then closed: the body is never read
    assert "surge_request_duration_seconds" in scrape(metrics_server)[0]


def test_idle_connections_are_closed(start_server, test_repository, monkeypatch):
    from surge.server.edge import metrics_http

    monkeypatch.setattr(metrics_http, "IDLE_TIMEOUT_S", 0.5)
    thread = start_server(model_repository=test_repository, model_control_mode="explicit", load_models=("mlp",))
    address = thread.server.metrics_address
    started = time.monotonic()
    assert _raw(address, b"") == b""  # nothing sent: closed
    assert _raw(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n") == b""  # a head that never ends: closed
    answer = _raw(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: answered, then closed once idle
    assert answer.startswith(b"HTTP/1.1 200") and b"/metrics" in answer
    assert time.monotonic() - started < 20


def test_metrics_off(start_server, test_repository):
    thread = start_server(model_repository=test_repository, metrics_port=-1, model_control_mode="explicit", load_models=("mlp",))
    assert thread.server.metrics_address == "" and thread.server.metrics is None
    with InferenceClient(thread.address, timeout_s=30, retries=0) as client:
        client.infer("mlp", {"x": np.ones((2, 16), np.float32)})
        (stats,) = client.model_statistics("mlp").model_stats
    assert stats.inference_count == 2 and stats.inference_stats.success.count == 1  # ModelStatistics does not need metrics


def test_a_deadline_passing_while_queued_counts_as_deadline_exceeded(start_server, test_repository):
    """slow_py has one instance: behind a 1 s request, a request with a 0.3 s gRPC deadline expires in the queue."""
    thread = start_server(model_repository=test_repository, model_control_mode="explicit", load_models=("slow_py",))
    with InferenceClient(thread.address, timeout_s=30, retries=0) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(client.infer, "slow_py", {"delay_s": np.array([[1.0]], np.float32)})
        time.sleep(0.2)
        with pytest.raises(InferenceServerError) as info:
            client.infer("slow_py", {"delay_s": np.array([[0.0]], np.float32)}, timeout_s=0.3)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        blocker.result()
    found = samples(thread)
    labels = _version("slow_py")
    assert value(found, "surge_requests_total", **labels, code="DEADLINE_EXCEEDED") == 1
    assert value(found, "surge_requests_total", **labels, code="OK") == 1
    assert value(found, "surge_failed_request_duration_seconds_count", **labels) == 1
