"""Distributed tracing over the wire: real servers, our client and REST with a caller's W3C context, spans caught by
the SDK's in-memory exporter (and by a local OTLP receiver for both exporters), exemplars parsed back from a scrape,
and Triton's TraceSetting over gRPC and REST."""

from __future__ import annotations

import asyncio
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs surge[tracing]")

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics  # noqa: E402

from surge.clients import AsyncInferenceClient, InferenceClient  # noqa: E402
from surge.protos import grpc_service_pb2 as pb  # noqa: E402
from surge.protos import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from surge.server.app import ServerConfig  # noqa: E402
from surge.server.observability import tracing  # noqa: E402
from tests.conftest import ServerThread  # noqa: E402
from tests.integration.test_rest import http, infer_body, x_rows  # noqa: E402

STAGES = ("decode", "queue", "compute", "encode")


def _x(rows: int) -> np.ndarray:
    return x_rows(rows)


@pytest.fixture
def traced(test_repository: Path, tmp_path: Path) -> Iterator[tuple[ServerThread, InMemorySpanExporter]]:
    """A server whose spans go to an in-memory exporter (every new trace sampled)."""
    root = tmp_path / "repository"
    for name in ("mlp", "mlp_batched", "failing_py"):
        shutil.copytree(test_repository / name, root / name)
    exporter = InMemorySpanExporter()
    thread = ServerThread(ServerConfig(model_repository=root, grpc_port=0, metrics_port=0, http_port=0))
    thread.server.tracing = tracing.build(SimpleSpanProcessor(exporter), service_name="surge-test")
    thread.start()
    yield thread, exporter
    thread.stop()


def _caller() -> tuple[TracerProvider, object]:
    provider = TracerProvider()  # the caller's own SDK, not the global one
    return provider, provider.get_tracer("caller")


def _by_trace(spans, trace_id: int):
    return [s for s in spans if s.context.trace_id == trace_id]


def _children(spans, parent) -> dict[str, object]:
    return {s.name: s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id}


def test_grpc_request_spans_keep_the_callers_trace_and_batch_links(traced) -> None:
    thread, exporter = traced
    _, tracer = _caller()

    async def burst() -> None:  # 6 requests at once into a batcher that waits 20 ms: they share batches
        async with AsyncInferenceClient(thread.address, timeout_s=30.0, retries=0) as client:
            await asyncio.gather(*(client.infer("mlp_batched", {"x": _x(2)}) for _ in range(6)))

    with tracer.start_as_current_span("caller") as caller:
        asyncio.run(burst())
        with InferenceClient(thread.address, timeout_s=30.0, retries=0) as client:
            client.infer("mlp", {"x": _x(3)})
    spans = exporter.get_finished_spans()
    mine = _by_trace(spans, caller.get_span_context().trace_id)
    servers = [s for s in mine if s.kind == SpanKind.SERVER]
    assert len(servers) == 7, [s.name for s in mine]
    for span in servers:
        assert span.parent.span_id == caller.get_span_context().span_id and span.parent.is_remote
        assert span.name == "inference.GRPCInferenceService/ModelInfer"
        a = span.attributes
        assert a["rpc.system"] == "grpc" and a["rpc.method"] == "ModelInfer" and a["rpc.grpc.status_code"] == 0
        assert a["surge.model_version"] == "1" and a["surge.status"] == "OK" and a["surge.route"] == "primary"
        children = _children(mine, span)
        assert set(STAGES) <= set(children), children
        ends = [children[n] for n in STAGES]
        assert span.start_time == ends[0].start_time and span.end_time == ends[-1].end_time
        assert all(a.end_time == b.start_time for a, b in zip(ends, ends[1:]))  # the stamps: stages meet exactly
        assert span.resource.attributes["service.name"] == "surge-test"
    batched = [s for s in servers if s.attributes["surge.model"] == "mlp_batched"]
    assert all(s.attributes["surge.rows"] == 2 for s in batched)
    batches = [s for s in spans if s.name == "batch" and s.attributes["surge.model"] == "mlp_batched"]
    linked = {link.context.span_id for b in batches for link in b.links}
    assert linked == {s.context.span_id for s in batched}  # every request span is linked from its batch
    assert any(b.attributes["surge.batch_requests"] > 1 and len(b.links) > 1 for b in batches)  # one compute, many requests
    for s in batched:  # each compute span links back to its batch
        compute = _children(mine, s)["compute"]
        assert [link.context.span_id for link in compute.links][0] in {b.context.span_id for b in batches}
        assert s.attributes["surge.batch_size"] >= 2


def test_rest_headers_and_failures_are_traced(traced) -> None:
    thread, exporter = traced
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    header = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "tracestate": "vendor=x", "Content-Type": "application/json"}
    ok = http(thread.server.http_address, "POST", "/v2/models/mlp/infer", infer_body([{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": _x(1).ravel().tolist()}]), header)
    assert ok.status == 200
    bad = {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [-1.0]}
    assert http(thread.server.http_address, "POST", "/v2/models/failing_py/infer", infer_body([bad]), header).status == 500
    servers = [s for s in _by_trace(exporter.get_finished_spans(), int(trace_id, 16)) if s.kind == SpanKind.SERVER]
    assert {s.attributes["surge.model"] for s in servers} == {"mlp", "failing_py"}
    assert all(s.parent.span_id == 0x00F067AA0BA902B7 for s in servers)
    assert servers[0].context.trace_state.get("vendor") == "x"
    failed = next(s for s in servers if s.attributes["surge.model"] == "failing_py")
    assert failed.attributes["surge.status"] == "INTERNAL" and failed.attributes["rpc.grpc.status_code"] == 13
    assert not failed.status.is_ok


def test_unsampled_caller_and_trace_level_off_send_no_spans(traced) -> None:
    thread, exporter = traced
    channel = grpc.insecure_channel(thread.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    tensor.contents.fp32_contents.extend(_x(1).ravel().tolist())
    unsampled = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),)
    stub.ModelInfer(request, metadata=unsampled, timeout=30)
    assert not exporter.get_finished_spans()  # parent-based: the caller did not sample

    def setting(**values: list[str]) -> dict[str, list[str]]:
        req = pb.TraceSettingRequest()
        for k, v in values.items():
            req.settings[k].value.extend(v)
        return {k: list(v.value) for k, v in stub.TraceSetting(req, timeout=10).settings.items()}

    assert setting(trace_level=["OFF"])["trace_level"] == ["OFF"]
    assert not thread.server.tracing.on  # the request path's one check
    stub.ModelInfer(request, timeout=30)
    assert not exporter.get_finished_spans()
    assert setting(trace_level=["TIMESTAMPS"], trace_count=["2"])["trace_count"] == ["2"]
    for _ in range(4):
        stub.ModelInfer(request, timeout=30)
    assert len([s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]) == 2  # trace_count stops it
    assert setting()["trace_count"] == ["0"] and not thread.server.tracing.on
    channel.close()


def test_trace_settings_per_model_over_grpc_and_rest(traced) -> None:
    thread, exporter = traced
    rest = thread.server.http_address
    doc = http(rest, "GET", "/v2/trace/setting").json()
    assert doc["trace_level"] == ["TIMESTAMPS"] and doc["trace_rate"] == "1" and doc["trace_count"] == "-1" and doc["trace_mode"] == "opentelemetry"
    model = http(rest, "POST", "/v2/models/mlp/trace/setting", {"trace_level": ["OFF"]}).json()
    assert model["trace_level"] == ["OFF"] and model["trace_rate"] == "1"
    assert http(rest, "GET", "/v2/trace/setting").json()["trace_level"] == ["TIMESTAMPS"]  # the global setting is untouched
    with InferenceClient(thread.address, timeout_s=30.0, retries=0) as client:
        client.infer("mlp", {"x": _x(1)})
        client.infer("mlp_batched", {"x": _x(1)})
        assert {s.attributes["surge.model"] for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER} == {"mlp_batched"}
        assert http(rest, "POST", "/v2/models/mlp/trace/setting", {"trace_level": None}).json()["trace_level"] == ["TIMESTAMPS"]  # cleared
        client.infer("mlp", {"x": _x(1)})
    assert "mlp" in {s.attributes["surge.model"] for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER}
    rate = http(rest, "POST", "/v2/trace/setting", {"trace_rate": "100", "log_frequency": "5", "trace_file": "t.json"}).json()
    assert rate["trace_rate"] == "100" and rate["log_frequency"] == "5" and rate["trace_file"] == "t.json"
    for body, words in (
        ({"trace_level": ["LOUD"]}, "not one of"), ({"trace_rate": "0"}, "at least 1"), ({"trace_rate": "x"}, "integer"),
        ({"trace_count": ["1", "2"]}, "one value"), ({"bogus": "1"}, "unknown trace setting"), ({"trace_rate": None}, "cannot be cleared"),
        ({"trace_level": [{"a": 1}]}, "list of strings"), ({"trace_mode": "triton"}, "OpenTelemetry only"),
    ):
        r = http(rest, "POST", "/v2/trace/setting", body)
        assert r.status == 400 and words in r.error, (body, r.body)
    assert http(rest, "POST", "/v2/trace/setting", b"[1]").status == 400
    assert http(rest, "POST", "/v2/models/nosuch/trace/setting", {}).status == 404
    with grpc.insecure_channel(thread.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.TraceSetting(pb.TraceSettingRequest(model_name="nosuch"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        got = stub.TraceSetting(pb.TraceSettingRequest(model_name="mlp"), timeout=10).settings
        assert list(got["trace_rate"].value) == ["100"]  # the global value, the model has no override


def test_exemplars_carry_sampled_trace_ids(traced) -> None:
    thread, exporter = traced
    with InferenceClient(thread.address, timeout_s=30.0, retries=0) as client:
        for _ in range(3):
            client.infer("mlp", {"x": _x(1)})
    traces = {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER}
    request = urllib.request.Request(f"http://{thread.server.metrics_address}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    families = {f.name: f for f in parse_openmetrics(text)}
    samples = [s for s in families["surge_request_duration_seconds"].samples if s.labels.get("model") == "mlp" and s.exemplar is not None]
    assert samples and all(s.exemplar.labels["trace_id"] in traces for s in samples)
    for s in samples:  # each exemplar's value lies in its bucket
        assert s.exemplar.value <= float(s.labels["le"])
    with urllib.request.urlopen(f"http://{thread.server.metrics_address}/metrics", timeout=30) as response:
        assert "trace_id" not in response.read().decode()  # Prometheus text format has no exemplars


class _GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):  # noqa: N802
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def _otlp_spans(requests) -> list[tuple[str, str, dict]]:
    out = []
    for request in requests:
        for rs in request.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out.append((service, span.name, {a.key: a.value for a in span.attributes}))
    return out


@pytest.mark.parametrize("kind", ["otlp-grpc", "otlp-http"])
def test_otlp_exporters_reach_a_local_receiver(test_repository: Path, tmp_path: Path, kind: str) -> None:
    received: list = []
    if kind == "otlp-grpc":
        collector = _GrpcCollector()
        receiver = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
        port = receiver.add_insecure_port("127.0.0.1:0")
        receiver.start()
        received = collector.requests
        endpoint, stop = f"http://127.0.0.1:{port}", lambda: receiver.stop(0)
    else:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                received.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()
                self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        endpoint, stop = f"http://127.0.0.1:{httpd.server_address[1]}", lambda: (httpd.shutdown(), httpd.server_close())
    root = tmp_path / "repository"
    shutil.copytree(test_repository / "mlp", root / "mlp")
    config = ServerConfig(
        model_repository=root, grpc_port=0, metrics_port=-1, http_port=-1,
        trace=tracing.TraceOptions(exporter=kind, endpoint=endpoint, ratio=1.0, service_name="surge-otlp"),
    )
    thread = ServerThread(config).start()
    try:
        with InferenceClient(thread.address, timeout_s=30.0, retries=0) as client:
            client.infer("mlp", {"x": _x(4)})
    finally:
        thread.stop()  # flushes the batch processor
        stop()
    spans = _otlp_spans(received)
    names = {name for _, name, _ in spans}
    assert {"inference.GRPCInferenceService/ModelInfer", *STAGES, "batch"} <= names
    assert {service for service, _, _ in spans} == {"surge-otlp"}
    server = next(a for _, name, a in spans if name == "inference.GRPCInferenceService/ModelInfer")
    assert server["surge.model"].string_value == "mlp" and server["surge.rows"].int_value == 4


def test_off_by_default_and_config_errors(server, monkeypatch) -> None:
    assert not server.server.tracing.on and not server.server.tracing.configured
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="trace exporter"):
        tracing.from_options(tracing.TraceOptions())
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "lots")
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG"):
        tracing.from_options(tracing.TraceOptions())
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    configured = tracing.from_options(tracing.TraceOptions())
    assert configured.on and configured.settings_of()["trace_rate"] == ["4"]
    configured.shutdown()
    with pytest.raises(ValueError, match="between 0 and 1"):
        tracing.from_options(tracing.TraceOptions(exporter="console", ratio=2.0))


def test_client_injects_the_current_context_only_when_a_span_is_current() -> None:
    from surge.clients._common import call_metadata

    assert call_metadata((("a", "b"),)) == (("a", "b"),)
    _, tracer = _caller()
    with tracer.start_as_current_span("caller") as span:
        metadata = dict(call_metadata((("a", "b"),)))
    assert metadata["a"] == "b"
    version, trace_id, span_id, flags = metadata["traceparent"].split("-")
    assert (trace_id, span_id) == (f"{span.get_span_context().trace_id:032x}", f"{span.get_span_context().span_id:016x}")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert json.dumps(metadata)  # plain strings


def test_shadow_call_is_a_linked_span_of_its_request(tmp_path: Path) -> None:
    from tests.models import write_add_model

    root = tmp_path / "repository"
    for version in (1, 2):
        write_add_model(root / "shadowed" / str(version) / "model.onnx", float(version))
    (root / "shadowed" / "config.toml").write_text("max_batch_size = 8\n[version_policy]\nall = true\n[routing.weights]\n1 = 1\n[routing.shadow]\nversion = 2\n")
    exporter = InMemorySpanExporter()
    thread = ServerThread(ServerConfig(model_repository=root, grpc_port=0, metrics_port=-1, http_port=-1))
    thread.server.tracing = tracing.build(SimpleSpanProcessor(exporter))
    thread.start()
    try:
        with InferenceClient(thread.address, timeout_s=30.0, retries=0) as client:
            client.infer("shadowed", {"x": np.ones((2, 4), np.float32)})
        deadline = time.monotonic() + 10
        while not any(s.name == "shadow" for s in exporter.get_finished_spans()) and time.monotonic() < deadline:
            time.sleep(0.02)  # the shadow runs after the primary answered
    finally:
        thread.stop()
    spans = exporter.get_finished_spans()
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert server.attributes["surge.route"] == "shadowed" and server.attributes["surge.model_version"] == "1"
    shadow = next(s for s in spans if s.name == "shadow")
    assert shadow.parent.span_id == server.context.span_id and [link.context.span_id for link in shadow.links] == [server.context.span_id]
    assert shadow.attributes["surge.model_version"] == "2" and shadow.attributes["surge.status"] == "OK" and shadow.attributes["surge.route"] == "shadow"
    assert shadow.end_time > shadow.start_time


def test_stream_requests_are_traced_under_the_streams_context(traced) -> None:
    from surge.clients import InferRequest

    thread, exporter = traced
    _, tracer = _caller()
    with tracer.start_as_current_span("caller") as caller, InferenceClient(thread.address, timeout_s=30.0, retries=0) as client:
        answers = list(client.stream_infer([InferRequest("mlp", {"x": _x(1)}), InferRequest("nosuch", {"x": _x(1)}), InferRequest("mlp", {"x": _x(2)})]))
    assert len(answers) == 3
    servers = [s for s in _by_trace(exporter.get_finished_spans(), caller.get_span_context().trace_id) if s.kind == SpanKind.SERVER]
    assert sorted(s.attributes["surge.rows"] for s in servers) == [1, 2]  # the unknown model reached no version: not traced
    assert all(s.name == "inference.GRPCInferenceService/ModelStreamInfer" and s.attributes["rpc.method"] == "ModelStreamInfer" for s in servers)
