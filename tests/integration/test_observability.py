"""The shipped alert rules and Grafana dashboard: parsed with real parsers (PyYAML, promql-parser), and every
metric they read exists in a real scrape of a server that served a request; the edge counters (gRPC calls that
failed before a handler) over the wire. test_prometheus.py evaluates them in a real Prometheus."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from surge.clients import InferenceClient, InferenceServerError
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc
from surge.server.edge.codec import Limits
from surge.server.observability import ALERT_RULES, DASHBOARD, resource
from tests.integration.test_metrics import samples, value

#: Metrics that Prometheus makes itself rather than scraping from us.
PROMETHEUS_OWN = {"up"}
#: Exported only by versions with drift monitoring on (tests/integration/test_drift.py scrapes them).
DRIFT_ONLY = {"surge_drift_alert", "surge_drift_psi"}
#: Exported only by versions in the batcher's latency-SLO mode (tests/integration/test_metrics.py scrapes them).
SLO_ONLY = {"surge_batcher_slo_margin_seconds", "surge_batcher_late_share"}
#: Exported only while a model has a rollout (tests/integration/test_progressive_rollout.py scrapes them).
ROLLOUT_ONLY = {"surge_rollout_decisions_total", "surge_rollout_new_version_share", "surge_rollout_step", "surge_rollout_gate_value"}
#: Exported only for models with a shadow version (tests/integration/test_routing.py scrapes them).
SHADOW_ONLY = {"surge_shadow_requests_total"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$job": ".*", "$model": ".*", "$version": ".*"}


@pytest.fixture(scope="module")
def scraped_names(server) -> set[str]:
    """Names of every sample a scrape holds once mlp answered a request (histogram _bucket/_sum/_count included)."""
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        client.infer("mlp", {"x": np.ones((1, 16), np.float32)})
    with urllib.request.urlopen(f"http://{server.server.metrics_address}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def metric_names(expr: object) -> set[str]:
    """Every metric name an expression selects (walks promql_parser's AST)."""
    names: set[str] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        elif isinstance(node, promql_parser.MatrixSelector):
            stack.append(node.vector_selector)
        elif isinstance(node, promql_parser.Call):
            stack.extend(node.args)
        elif isinstance(node, promql_parser.BinaryExpr):
            stack += [node.lhs, node.rhs]
        elif isinstance(node, promql_parser.AggregateExpr):
            stack += [node.expr] + ([node.param] if node.param is not None else [])
        elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
            stack.append(node.expr)
    return names


def _rules() -> list[dict]:
    document = yaml.safe_load(resource(ALERT_RULES).read_text())
    assert set(document) == {"groups"}
    rules = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        rules += group["rules"]
    return rules


def test_alert_rules_are_well_formed() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) >= 6
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        promql_parser.parse(rule["expr"])  # raises on a syntax error


def test_alert_rules_read_only_metrics_the_server_exports(scraped_names: set[str]) -> None:
    for rule in _rules():
        missing = metric_names(promql_parser.parse(rule["expr"])) - scraped_names - PROMETHEUS_OWN - DRIFT_ONLY - ROLLOUT_ONLY - SHADOW_ONLY
        assert not missing, f"{rule['alert']} reads {missing}, which no scrape has"


def test_parser_rejects_a_broken_expression() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(surge_requests_total[5m])")


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads(resource(DASHBOARD).read_text())
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [(f"variable {v['name']}", v["query"]["query"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def _substitute(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(resource(DASHBOARD).read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] != "row":
            assert panel["targets"] and panel["description"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"panel '{panel['title']}' has no unit"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "job", "model", "version"}


def test_dashboard_queries_parse_and_read_exported_metrics(scraped_names: set[str]) -> None:
    for title, expr in _queries():
        if expr.startswith("label_values("):  # Grafana's variable function, not PromQL: check its selector
            expr = expr[len("label_values(") : expr.rindex(",")]
        parsed = promql_parser.parse(_substitute(expr))
        missing = metric_names(parsed) - scraped_names - DRIFT_ONLY - SLO_ONLY - ROLLOUT_ONLY
        assert not missing, f"panel '{title}' reads {missing}, which no scrape has"


def test_grpc_failures_before_the_handler_are_told_apart_from_the_handlers_own(test_repository, start_server) -> None:
    """grpc core counts every call; Surge's handlers count the failures they answered or were cancelled in (an
    invalid request, a deadline, a stream the client dropped); the difference is what failed before a handler ran
    (here: a message over the size limit, an unknown method). REST calls are not gRPC calls."""
    server = start_server(
        model_repository=test_repository, model_control_mode="explicit", load_models=("mlp", "slow_py"), limits=Limits(max_request_bytes=64 * 1024)
    )

    def counts() -> tuple[float, ...]:  # started, succeeded, failed (grpc core), failed in a handler (Surge)
        found = samples(server)
        return tuple(value(found, f"surge_grpc_{name}_total") for name in ("calls_started", "calls_succeeded", "calls_failed", "handler_failures"))

    def delta(before: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(a - b for a, b in zip(counts(), before))

    x = np.ones((1, 16), np.float32)
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        before = counts()
        client.infer("mlp", {"x": x})
        assert delta(before) == (1, 1, 0, 0)
        before = counts()
        with pytest.raises(InferenceServerError):
            client.infer("mlp", {"x": np.ones((1, 15), np.float32)})  # the handler answers INVALID_ARGUMENT
        assert delta(before) == (1, 0, 1, 1)
        before = counts()
        with pytest.raises(InferenceServerError) as refused:
            client.infer("mlp", {"x": np.ones((2000, 16), np.float32)})  # 128 KB: grpc core refuses it before any handler
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert delta(before) == (1, 0, 1, 0)
        before = counts()
        with pytest.raises(InferenceServerError) as expired:  # a deadline that passes while the handler waits: the handler's
            client.infer("slow_py", {"delay_s": np.array([[1.0]], np.float32)}, timeout_s=0.3)
        assert expired.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.0)
        assert delta(before) == (1, 0, 1, 1)
    with grpc.insecure_channel(server.address) as channel:
        before = counts()
        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary("/inference.NoSuchService/Infer")(b"", timeout=10)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert delta(before) == (1, 0, 1, 0)
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        before = counts()
        requests: queue.Queue = queue.Queue()
        request = pb.ModelInferRequest(model_name="slow_py", inputs=[pb.ModelInferRequest.InferInputTensor(name="delay_s", datatype="FP32", shape=[1, 1])])
        request.raw_input_contents.append(np.array([[0.5]], np.float32).tobytes())
        requests.put(request)
        stream = stub.ModelStreamInfer(iter(requests.get, None), timeout=30)
        time.sleep(0.2)
        stream.cancel()  # the client goes away with a request in flight: cancelled in the handler
        time.sleep(1.0)
        assert delta(before) == (1, 0, 1, 1)
        before = counts()
        bad = pb.ModelInferRequest(model_name="mlp", inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 15])])
        bad.raw_input_contents.append(x[:, :15].tobytes())
        with pytest.raises(grpc.RpcError) as ended:  # Triton's opt-in: the first error ends the stream with its status
            list(stub.ModelStreamInfer(iter([bad]), timeout=30, metadata=(("triton_grpc_error", "true"),)))
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        time.sleep(0.2)
        assert delta(before) == (1, 0, 1, 1)
    before = counts()
    rest = urllib.request.Request(f"http://{server.server.http_address}/v2/models/mlp/infer", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(rest, timeout=30)
    assert bad.value.code == 400
    assert delta(before) == (0, 0, 0, 0)


def test_calls_gRPC_cancels_while_the_loop_is_stalled_are_counted_outside_the_handlers(test_repository, start_server) -> None:
    """The overload symptom: while the event loop is blocked, calls beyond --max-pending-calls are cancelled by gRPC
    (the client sees CANCELLED) and never reach a handler nor surge_requests_total; started - succeeded - handler
    failures counts each of them, and the loop-lag histogram records the stall."""
    server = start_server(model_repository=test_repository, model_control_mode="explicit", load_models=("mlp",), limits=Limits(max_pending_calls=4))
    x = np.ones((1, 16), np.float32)

    def lost_and_answered() -> tuple[float, float]:
        found = samples(server)
        lost = sum(value(found, f"surge_grpc_{n}_total") * sign for n, sign in (("calls_started", 1), ("calls_succeeded", -1), ("handler_failures", -1)))
        return lost, sum(v for (name, _), v in found.items() if name == "surge_requests_total")

    async def stall() -> None:
        time.sleep(1.5)  # something blocks the server's loop (a runtime computing on it, a long GC pause)

    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        client.infer("mlp", {"x": x})
        lost_before, answered_before = lost_and_answered()
        stalling = threading.Thread(target=server.call, args=(stall(),))
        stalling.start()
        time.sleep(0.1)

        def one(_: int) -> str:
            try:
                client.infer("mlp", {"x": x})
                return "OK"
            except InferenceServerError as exc:
                return exc.code.name

        with ThreadPoolExecutor(40) as pool:
            codes = list(pool.map(one, range(40)))
        stalling.join()
    cancelled = codes.count("CANCELLED")
    assert cancelled > 0 and set(codes) <= {"OK", "CANCELLED"}, codes
    lost, answered = lost_and_answered()
    assert answered - answered_before == codes.count("OK")  # Surge's request metrics never see the cancelled ones...
    assert lost - lost_before == cancelled  # ...the edge counters count each of them
    lag = {dict(labels)["le"]: v for (name, labels), v in samples(server).items() if name == "surge_event_loop_lag_seconds_bucket"}
    assert lag["+Inf"] - lag["1.0"] >= 1  # the 1.5 s stall, in a bucket above 1 s
