"""The shipped alert rules and Grafana dashboard: parsed with real parsers (PyYAML, promql-parser), and every
metric they read exists in a real scrape of a server that served a request."""

from __future__ import annotations

import json
import re
import urllib.request

import numpy as np
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from surge.clients import InferenceClient
from surge.server.observability import ALERT_RULES, DASHBOARD, resource

#: Metrics that Prometheus makes itself rather than scraping from us.
PROMETHEUS_OWN = {"up"}
#: Exported only by versions with drift monitoring on (tests/integration/test_drift.py scrapes them).
DRIFT_ONLY = {"surge_drift_alert", "surge_drift_psi"}
#: Exported only by versions in the batcher's latency-SLO mode (tests/integration/test_metrics.py scrapes them).
SLO_ONLY = {"surge_batcher_slo_margin_seconds", "surge_batcher_late_share"}
#: Exported only while a model has a rollout (tests/integration/test_progressive_rollout.py scrapes them).
ROLLOUT_ONLY = {"surge_rollout_decisions_total", "surge_rollout_new_version_share", "surge_rollout_step", "surge_rollout_gate_value"}
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
        missing = metric_names(promql_parser.parse(rule["expr"])) - scraped_names - PROMETHEUS_OWN - DRIFT_ONLY - ROLLOUT_ONLY
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
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "job", "model", "version"}


def test_dashboard_queries_parse_and_read_exported_metrics(scraped_names: set[str]) -> None:
    for title, expr in _queries():
        if expr.startswith("label_values("):  # Grafana's variable function, not PromQL: check its selector
            expr = expr[len("label_values(") : expr.rindex(",")]
        parsed = promql_parser.parse(_substitute(expr))
        missing = metric_names(parsed) - scraped_names - DRIFT_ONLY - SLO_ONLY - ROLLOUT_ONLY
        assert not missing, f"panel '{title}' reads {missing}, which no scrape has"
