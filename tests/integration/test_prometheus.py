"""The shipped dashboard and alert rules against a real Prometheus scraping a live Surge under a short load.

Prometheus is Debian's ``prometheus`` package (``apt-get install prometheus``; ``.ci/run`` installs it); where
neither ``prometheus`` nor ``promtool`` is on PATH the tests skip and say so. One module-scoped run: Surge serves
a healthy model (mlp), a latency-SLO model, a drift-monitored model, a Python model that fails on negative input,
and a version that fails to load; Prometheus scrapes it every second and evaluates the shipped rules every second
while our client sends OK requests, bad requests, requests for unknown models and messages over the size limit.
Then every dashboard query (template variables substituted) and every rule is evaluated through the HTTP API.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import promql_parser
import pytest
import yaml

from surge.clients import InferenceClient, InferenceServerError
from surge.server.app import ServerConfig
from surge.server.cli import main
from surge.server.edge.codec import Limits
from surge.server.observability import ALERT_RULES, DASHBOARD, drift, resource
from tests.conftest import ServerThread
from tests.integration.test_observability import DRIFT_ONLY, ROLLOUT_ONLY, SLO_ONLY, metric_names
from tests.models import write_add_model, write_rollout_repository

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
NOT_INSTALLED = "Prometheus is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
JOB = "surge"
#: The window substituted for Grafana's $__rate_interval: the whole run fits in it.
RATE_WINDOW = "1m"
MAX_REQUEST_BYTES = 64 * 1024
OVERSIZE_CALLS = 3
#: Rounds of load, about a second each (a scrape each).
ROUNDS = 6
#: The model each kind of panel is checked with: one that serves traffic and has the feature the panel shows.
HEALTHY, SLO_MODEL, DRIFT_MODEL, ROLLOUT_MODEL = "mlp", "mlp_slo", "add", "canary"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout_s: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


@dataclass
class Live:
    url: str
    """Prometheus' base URL."""
    config: Path

    def query(self, expr: str) -> list[dict]:
        """An instant query's result vector; raises on an evaluation error (Prometheus answers 400/422 with one)."""
        try:
            doc = _get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Prometheus could not evaluate {expr!r}: {exc.read().decode(errors='replace')}") from None
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def label_values(self, selector: str, label: str) -> set[str]:
        doc = _get(f"{self.url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": selector}))
        assert doc["status"] == "success", doc
        return set(doc["data"])

    def rules(self) -> list[dict]:
        return [rule for group in _get(f"{self.url}/api/v1/rules")["data"]["groups"] for rule in group["rules"]]


def _repository(root: Path, test_repository: Path, tmp: Path) -> Path:
    for name in ("mlp", "failing_py", "broken"):
        shutil.copytree(test_repository / name, root / name)
    shutil.copytree(test_repository / "mlp" / "1", root / SLO_MODEL / "1")
    (root / SLO_MODEL / "config.toml").write_text("max_batch_size = 16\n\n[dynamic_batching]\nlatency_slo_s = 0.05\n")
    write_add_model(root / DRIFT_MODEL / "1" / "model.onnx", 1.0)
    # a rollout to version 2 that stays in its shadow step for the whole run (an hour's window)
    write_rollout_repository(tmp / "rollout", "good", '\n[rollout]\nto_version = 2\nsteps = ["shadow", 100]\nwindow = "1h"\n')
    shutil.copytree(tmp / "rollout" / "m", root / ROLLOUT_MODEL)
    (root / DRIFT_MODEL / "config.toml").write_text("max_batch_size = 64\n\n[drift]\nsample_rate = 1.0\nwindow_rows = 100\n")
    x = np.random.default_rng(0).standard_normal((2_000, 4)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    np.save(tmp / "y.npy", x + 1.0)
    assert main(["profile", str(root / DRIFT_MODEL), "--data", str(tmp / "x.npy"), "--outputs", str(tmp / "y.npy")]) == 0
    return root


def _load(address: str) -> None:
    """About 6 s of traffic over several scrapes: OK and bad requests, unknown models, oversize messages, failures."""
    x = np.ones((1, 16), np.float32)
    rng = np.random.default_rng(1)
    with InferenceClient(address, timeout_s=30, retries=0) as client, ThreadPoolExecutor(4) as pool:
        for round_ in range(ROUNDS):
            started = time.monotonic()
            list(pool.map(lambda _: client.infer(HEALTHY, {"x": x}), range(30)))
            list(pool.map(lambda _: client.infer(SLO_MODEL, {"x": x}), range(15)))
            list(pool.map(lambda _: client.infer(ROLLOUT_MODEL, {"x": x[:, :4]}), range(10)))
            for _ in range(2):
                client.infer(DRIFT_MODEL, {"x": rng.standard_normal((50, 4)).astype(np.float32)})
            for bad in ({"x": np.ones((1, 15), np.float32)}, {"wrong": x}):  # INVALID_ARGUMENT
                with pytest.raises(InferenceServerError):
                    client.infer(HEALTHY, bad)
            with pytest.raises(InferenceServerError):
                client.infer("no_such_model", {"x": x})  # NOT_FOUND, unrouted
            # a near-idle model that mostly fails: 2 calls a round, most of them INTERNAL
            for value in (-1.0, 1.0 if round_ % 3 == 0 else -1.0):
                try:
                    client.infer("failing_py", {"x": np.full((1, 1), value, np.float32)})
                except InferenceServerError as exc:
                    assert exc.code == grpc.StatusCode.INTERNAL
            if 1 <= round_ <= OVERSIZE_CALLS:  # refused by grpc core before any handler runs
                with pytest.raises(InferenceServerError) as refused:
                    client.infer(HEALTHY, {"x": np.ones((MAX_REQUEST_BYTES // 64 + 1, 16), np.float32)})
                assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    assert drift.flush(30.0)


@pytest.fixture(scope="module")
def live(test_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if PROMETHEUS is None:
        pytest.skip(NOT_INSTALLED)
    tmp = tmp_path_factory.mktemp("prometheus")
    repository = _repository(tmp / "repository", test_repository, tmp)
    surge = ServerThread(ServerConfig(
        model_repository=repository, grpc_port=0, metrics_port=0, http_port=-1, strict_readiness=False, limits=Limits(max_request_bytes=MAX_REQUEST_BYTES),
    )).start()
    port = _free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(resource(ALERT_RULES))],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [surge.server.metrics_address]}]}],
    }))
    log = (tmp / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"Prometheus exited: {(tmp / 'prometheus.log').read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready in 60 s"
            time.sleep(0.2)
        prometheus = Live(url, config)
        while not prometheus.query(f'up{{job="{JOB}"}} == 1'):  # counted from the first scrape on: start after it
            assert time.monotonic() < deadline, "Prometheus did not scrape Surge within 60 s"
            time.sleep(0.2)
        _load(surge.address)
        time.sleep(2.5)  # the last scrape, and a rule evaluation after it
        yield prometheus
    finally:
        process.terminate()
        process.wait(30)
        log.close()
        surge.stop()


def _dashboard() -> dict:
    return json.loads(resource(DASHBOARD).read_text())


def _substitute(expr: str, model: str) -> str:
    values = {"$__rate_interval": RATE_WINDOW, "$__interval": RATE_WINDOW, "$job": JOB, "$model": model, "$version": "1"}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


def _model_for(expr: str) -> str:
    names = metric_names(promql_parser.parse(_substitute(expr, HEALTHY)))
    return SLO_MODEL if names & SLO_ONLY else DRIFT_MODEL if names & DRIFT_ONLY else ROLLOUT_MODEL if names & ROLLOUT_ONLY else HEALTHY


def test_every_panel_shows_data_for_a_healthy_model_serving_traffic(live: Live) -> None:
    empty = []
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            model = _model_for(target["expr"])
            result = live.query(_substitute(target["expr"], model))
            values = [float(sample["value"][1]) for sample in result]
            if not values or any(math.isnan(v) for v in values):
                empty.append(f"'{panel['title']}' {target['refId']} for {model}: {result}")
    assert not empty, "panels without data (or NaN) in the healthy state:\n" + "\n".join(empty)


def test_error_ratio_reads_zero_for_a_model_without_errors(live: Live) -> None:
    panel = next(p for p in _dashboard()["panels"] if p["title"].startswith("Error ratio"))
    (sample,) = live.query(_substitute(panel["targets"][0]["expr"], HEALTHY))
    assert sample["metric"]["model"] == HEALTHY and float(sample["value"][1]) == 0.0


def test_model_and_version_selectors_list_a_version_that_failed_to_load(live: Live) -> None:
    variables = {v["name"]: v["query"]["query"] for v in _dashboard()["templating"]["list"] if v["type"] == "query"}
    found = {}
    for name, query in variables.items():
        selector, label = query[len("label_values(") : -1].rsplit(",", 1)
        found[name] = live.label_values(_substitute(selector, ".*"), label.strip())
    assert found["job"] == {JOB}
    assert {HEALTHY, SLO_MODEL, DRIFT_MODEL, ROLLOUT_MODEL, "failing_py", "broken"} <= found["model"]
    assert found["version"] == {"1", "2"}  # 2: the canary's new version
    assert "broken" not in live.label_values("surge_requests_total", "model")  # why the selectors read the model state


def test_every_rule_evaluates_without_error(live: Live) -> None:
    rules = live.rules()
    document = yaml.safe_load(resource(ALERT_RULES).read_text())
    assert {r["name"] for r in rules} == {r["alert"] for g in document["groups"] for r in g["rules"]}
    unhealthy = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    for rule in rules:
        live.query(rule["query"])  # raises on an evaluation error


def test_error_ratio_alert_does_not_fire_on_a_near_idle_failing_model(live: Live) -> None:
    rule = next(r for r in live.rules() if r["name"] == "SurgeHighErrorRatio")
    expr = next(r["expr"] for g in yaml.safe_load(resource(ALERT_RULES).read_text())["groups"] for r in g["rules"] if r["alert"] == rule["name"])
    ratio = expr.split("\nand ")[0]  # the ratio alone, without the minimum-traffic guard
    assert ratio != expr
    failing = {s["metric"]["model"]: float(s["value"][1]) for s in live.query(ratio)}
    assert failing.get("failing_py", 0) > 0.5, failing  # most of its few requests failed...
    assert not [s for s in live.query(expr) if s["metric"]["model"] == "failing_py"]  # ...but too few to judge
    assert not [a for a in rule["alerts"] if a["labels"].get("model") == "failing_py"]


def test_calls_refused_before_the_handler_are_counted(live: Live) -> None:
    (outside,) = live.query(" - ".join(f"sum(increase(surge_grpc_{n}_total[{RATE_WINDOW}]))" for n in ("calls_started", "calls_succeeded", "handler_failures")))
    # increase() extrapolates to the window's edges, so compare with some slack rather than exactly
    assert float(outside["value"][1]) >= OVERSIZE_CALLS * 0.5, outside
    (lag,) = live.query("sum(surge_event_loop_lag_seconds_count)")
    assert float(lag["value"][1]) > 10


def test_the_autoscaling_adapter_rules_serve_values(live: Live) -> None:
    """deploy/kubernetes/prometheus-adapter.yaml's queries, with the adapter's placeholders filled in (the scrape
    here has no namespace/pod labels, so the job stands in for them)."""
    manifest = Path(__file__).parents[2] / "deploy" / "kubernetes" / "prometheus-adapter.yaml"
    rules = yaml.safe_load(yaml.safe_load(manifest.read_text())["data"]["config.yaml"])["rules"]
    for rule in rules:
        series = rule["seriesQuery"].split("{")[0].strip("'")
        query = rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", f'job="{JOB}"').replace("<<.GroupBy>>", "job")
        assert live.query(query), query


@pytest.mark.skipif(PROMTOOL is None, reason=NOT_INSTALLED)
def test_promtool_checks_the_rules() -> None:
    checked = subprocess.run([PROMTOOL, "check", "rules", str(resource(ALERT_RULES))], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
