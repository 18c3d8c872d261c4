"""Watching models in production: metrics (served by ``edge/metrics_http.py``), drift, GPU metrics, and ready-made dashboards.

``metrics`` (per-version histograms and counters, bound at load; what a page holds), ``exposition`` (the one writer of
Prometheus text and OpenMetrics, and the one histogram class), ``page_merge`` (``--workers``),
``edge`` (what is seen of calls before the handlers: grpc core's call counters, the event-loop lag),
``drift`` (profiles, PSI/KS windows), ``gpu_metrics`` (``nv_gpu_*`` from NVML).

Shipped as package data: a Grafana dashboard and Prometheus alerting rules. Both read only the metrics that
``surge.server.observability.metrics`` exports (and Prometheus' ``up``); a test parses the rules and every
dashboard query with a PromQL parser and checks each metric name against a real scrape; another evaluates them all
in a real Prometheus scraping a live server (``tests/integration/test_prometheus.py``).
``surge observability --out DIR`` copies them out of the installed package.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

__all__ = ["ALERT_RULES", "DASHBOARD", "resource"]

#: Grafana dashboard (JSON model, schemaVersion 39; a ``datasource`` variable picks the Prometheus source).
DASHBOARD = "grafana-dashboard.json"
#: Prometheus alerting rules (a ``rule_files`` entry).
ALERT_RULES = "prometheus-alerts.yaml"


def resource(name: str) -> Traversable:
    """One of the shipped files (``DASHBOARD`` or ``ALERT_RULES``), readable with ``.read_text()``."""
    if name not in (DASHBOARD, ALERT_RULES):
        raise ValueError(f"no observability file {name!r}; there are {DASHBOARD!r} and {ALERT_RULES!r}")
    return files(__name__) / name
