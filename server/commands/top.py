"""``surge top``: a live terminal view of a Surge server, computed from two scrapes of its ``/metrics``.

    surge top [--url 127.0.0.1:8002] [--interval-s 2] [--once]

Per model version, over the last interval: requests per second, the share that failed (any status but OK)
and the server-side share (INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), p50 and p99 of the
server time and p99 of the queue wait (estimated from the histograms as Prometheus' ``histogram_quantile``
does: linear within a bucket), batch fill (mean rows per executed batch, and as a share of the largest
bucket bound, which is max_batch_size), and the queue depth and in-flight gauges at the last scrape.
Surge's HTTP client (``edge.scrape``) and prometheus_client's parser; nothing that serves is imported.
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TextIO
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from ..edge.scrape import ScrapeError, fetch_page_sync

__all__ = ["Row", "Scrape", "ScrapeError", "fetch_metrics", "format_table", "histogram_quantile", "metrics_address", "parse_scrape", "rows", "run"]

SERVER_SIDE = frozenset({"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNKNOWN"})
_HISTOGRAMS = {"surge_request_duration_seconds": "request", "surge_queue_duration_seconds": "queue", "surge_batch_size": "batch"}


@dataclass(slots=True)
class _Version:
    requests: dict[str, float] = field(default_factory=dict)  # code -> count
    buckets: dict[str, dict[float, float]] = field(default_factory=lambda: defaultdict(dict))  # histogram -> le -> cumulative
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    queue_depth: float = 0.0
    inflight: float = 0.0
    state: str = ""


@dataclass(slots=True)
class Scrape:
    """One parsed scrape: per (model, version), the counters ``surge top`` needs; ``at`` is a monotonic time."""

    at: float
    versions: dict[tuple[str, str], _Version]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the view (rates over the interval between two scrapes)."""

    model: str
    version: str
    state: str
    rate: float
    """Requests per second (all outcomes)."""
    error_ratio: float
    """Share of requests with a status other than OK (NaN without requests)."""
    server_error_ratio: float
    """Share failing on the server side (NaN without requests)."""
    p50_s: float
    p99_s: float
    queue_p99_s: float
    batch_mean: float
    """Mean rows per executed batch (NaN without executions)."""
    batch_fill: float
    """batch_mean / max_batch_size (NaN without executions)."""
    queue_depth: float
    inflight: float


def parse_scrape(text: str, at: float) -> Scrape:
    """Parse a Prometheus text scrape into per-version counters."""
    versions: dict[tuple[str, str], _Version] = defaultdict(_Version)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if "model" not in labels or "version" not in labels:
                continue
            key = (labels["model"], labels["version"])
            name = s.name
            if name == "surge_requests_total":
                versions[key].requests[labels["code"]] = s.value
            elif name == "surge_queue_depth":
                versions[key].queue_depth = s.value
            elif name == "surge_inflight_requests":
                versions[key].inflight = s.value
            elif name == "surge_model_state" and s.value == 1:
                versions[key].state = labels["state"]
            else:
                base, _, suffix = name.rpartition("_")
                short = _HISTOGRAMS.get(base)
                if short is None:
                    continue
                if suffix == "bucket":
                    versions[key].buckets[short][float(labels["le"])] = s.value
                elif suffix == "sum":
                    versions[key].sums[short] = s.value
                elif suffix == "count":
                    versions[key].counts[short] = s.value
    return Scrape(at, dict(versions))


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' estimate of quantile ``q`` from cumulative bucket counts {upper bound: count}; NaN when empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the +Inf bucket: the highest finite bound, as Prometheus answers
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _delta(new: dict[float, float], old: dict[float, float]) -> dict[float, float]:
    return {k: v - old.get(k, 0.0) for k, v in new.items()}


def rows(previous: Scrape, current: Scrape) -> list[Row]:
    """The view between two scrapes of the same server (counters reset by a reload count from zero)."""
    dt = max(current.at - previous.at, 1e-9)
    out = []
    for key in sorted(current.versions):
        cur = current.versions[key]
        old = previous.versions.get(key, _Version())
        if sum(cur.requests.values()) < sum(old.requests.values()):  # the version was reloaded: its counters restarted
            old = _Version()
        requests = {code: n - old.requests.get(code, 0.0) for code, n in cur.requests.items()}
        total = sum(requests.values())
        failed = total - requests.get("OK", 0.0)
        server = sum(n for code, n in requests.items() if code in SERVER_SIDE)
        executions = cur.counts.get("batch", 0.0) - old.counts.get("batch", 0.0)
        batch_rows = cur.sums.get("batch", 0.0) - old.sums.get("batch", 0.0)
        finite = [b for b in cur.buckets.get("batch", {}) if not math.isinf(b)]
        max_batch = max(finite) if finite else math.nan
        batch_mean = batch_rows / executions if executions > 0 else math.nan
        request = _delta(cur.buckets.get("request", {}), old.buckets.get("request", {}))
        out.append(Row(
            model=key[0], version=key[1], state=cur.state, rate=total / dt,
            error_ratio=failed / total if total else math.nan, server_error_ratio=server / total if total else math.nan,
            p50_s=histogram_quantile(0.5, request), p99_s=histogram_quantile(0.99, request),
            queue_p99_s=histogram_quantile(0.99, _delta(cur.buckets.get("queue", {}), old.buckets.get("queue", {}))),
            batch_mean=batch_mean, batch_fill=batch_mean / max_batch if max_batch > 0 else math.nan,
            queue_depth=cur.queue_depth, inflight=cur.inflight,
        ))  # fmt: skip
    return out


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.2f}"


def _pct(ratio: float) -> str:
    return "-" if math.isnan(ratio) else f"{ratio * 100:.1f}%"


def format_table(table: Sequence[Row], *, url: str = "", interval_s: float = 0.0) -> str:
    """The view as text: one header, one line per model version."""
    head = f"surge top  {url}  interval {interval_s:.1f} s  {time.strftime('%H:%M:%S')}"
    columns = f"{'MODEL':<22} {'VER':>4} {'STATE':<11} {'REQ/S':>9} {'ERR':>6} {'SRV-ERR':>7} {'P50 MS':>8} {'P99 MS':>8} {'QUEUE P99':>9} {'BATCH':>6} {'FILL':>6} {'QUEUED':>6} {'IN-FL':>6}"
    lines = [head, columns]
    for r in table:
        batch = "-" if math.isnan(r.batch_mean) else f"{r.batch_mean:.1f}"
        lines.append(
            f"{r.model[:22]:<22} {r.version:>4} {r.state[:11]:<11} {r.rate:>9.1f} {_pct(r.error_ratio):>6} {_pct(r.server_error_ratio):>7} "
            f"{_ms(r.p50_s):>8} {_ms(r.p99_s):>8} {_ms(r.queue_p99_s):>9} {batch:>6} {_pct(r.batch_fill):>6} {r.queue_depth:>6.0f} {r.inflight:>6.0f}"
        )
    if not table:
        lines.append("(no model versions loaded)")
    return "\n".join(lines) + "\n"


def metrics_address(url: str) -> str:
    """``host:port`` of a metrics endpoint given as ``host:port``, ``http://host:port`` or ``http://host:port/metrics``."""
    url = url.strip().removeprefix("http://").rstrip("/")
    return url.removesuffix("/metrics")


def fetch_metrics(url: str, timeout_s: float = 10.0) -> str:
    """The text of ``http://URL/metrics``; raises ScrapeError with a one-line reason (nothing there, a gRPC port, ...)."""
    try:
        return fetch_page_sync(metrics_address(url), timeout_s=timeout_s)
    except ScrapeError as exc:
        raise ScrapeError(f"{exc} Surge's metrics endpoint is on port 8002 by default (--metrics-url HOST:PORT)") from None


def scrape(url: str, timeout_s: float = 10.0) -> Scrape:
    """GET ``http://URL/metrics`` and parse it; raises ScrapeError."""
    text = fetch_metrics(url, timeout_s)
    try:
        return parse_scrape(text, time.monotonic())
    except ValueError as exc:  # prometheus_client's parser: the page is not the text exposition format
        raise ScrapeError(f"http://{metrics_address(url)}/metrics is not Prometheus text ({exc})") from None


def run(url: str, interval_s: float, *, once: bool = False, out: TextIO | None = None) -> int:
    """Refresh the view every ``interval_s`` until Ctrl-C (``once``: print one view after one interval and return)."""
    stream = out if out is not None else sys.stdout
    previous = scrape(url)
    try:
        while True:
            time.sleep(interval_s)
            current = scrape(url)
            text = format_table(rows(previous, current), url=url, interval_s=current.at - previous.at)
            if once:
                stream.write(text)
                return 0
            tty = stream.isatty()
            stream.write(("\x1b[H\x1b[2J" if tty else "\n") + text)  # a terminal: home, clear screen
            stream.flush()
            previous = current
    except KeyboardInterrupt:
        return 0
