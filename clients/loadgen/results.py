"""Results: one level's numbers from its processes' histograms, the server's ModelStatistics deltas, the SLO gate,
the terminal table and the comparison with an earlier JSON report.

The JSON report (``report``) is versioned by ``SCHEMA``; tests/unit/test_loadgen.py pins its keys.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from surge.clients.loadgen.engine import Load, ProcessResult
from surge.clients.loadgen.histogram import PERCENTILES, decode, merged, new_histogram, summary_ms
from surge.clients.loadgen.scenario import Plan
from surge.protos import grpc_service_pb2 as pb

__all__ = ["SCHEMA", "SloCheck", "SloError", "compare_text", "evaluate_slo", "level_result", "parse_slo", "server_delta", "table_text"]

SCHEMA = "surge.bench/1"
STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


def level_key(load: dict[str, Any]) -> str:
    """A level's name in tables and comparisons: ``c8`` (closed loop, 8 in flight) or ``r500`` (open loop, 500/s)."""
    return f"c{load['concurrency']}" if load["mode"] == "closed" else f"r{load['rate']:g}"


def level_result(load: Load, plan: Plan, parts: Sequence[ProcessResult], server: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One level's results (JSON-ready) from every process's part."""
    total = new_histogram()
    by_key: dict[tuple[int, str], Any] = {}
    rows: dict[tuple[int, str], int] = {}
    errors: dict[str, int] = {}
    for part in parts:
        for key, encoded in part.histograms.items():
            hist = decode(encoded)
            total.add(hist)
            if key in by_key:
                by_key[key].add(hist)
            else:
                by_key[key] = hist
            rows[key] = rows.get(key, 0) + part.rows.get(key, 0)
        for status, n in part.errors.items():
            errors[status] = errors.get(status, 0) + n
    ok = total.get_total_count()
    failed = sum(errors.values())
    if load.duration_s is not None:
        window_s = load.duration_s
        completed = sum(p.completed_in_window for p in parts)
        rows_done = sum(p.rows_in_window for p in parts)
    else:  # count mode: the window ends with the last answer
        window_s = max((p.last_completion_s for p in parts), default=0.0) or float("nan")
        completed, rows_done = ok, sum(rows.values())
    seconds = sorted({s for p in parts for s in (*p.timeline, *p.timeline_errors) if s >= 0})
    timeline = []
    for second in seconds:
        hist = merged(p.timeline[second] for p in parts if second in p.timeline)
        s = summary_ms(hist)
        timeline.append({"t_s": second, "ok": hist.get_total_count(), "errors": sum(p.timeline_errors.get(second, 0) for p in parts),
                         "p50_ms": s["p50"], "p99_ms": s["p99"], "max_ms": s["max"]})  # fmt: skip
    lags = [p.send_lag for p in parts if p.send_lag]
    service = [p.service for p in parts if p.service]
    spans = [p.sent_span for p in parts if p.sent_span]
    sent = sum(n for n, _, _ in spans)
    span_s = max((last for _, _, last in spans), default=0.0) - min((first for _, first, _ in spans), default=0.0)
    cpu = sum(p.cpu_s for p in parts)
    wall = max((p.wall_s for p in parts), default=0.0)
    by_model = []
    for (kind, version), hist in sorted(by_key.items(), key=lambda kv: (plan.kinds[kv[0][0]].label, kv[0][1])):
        spec = plan.kinds[kind]
        by_model.append({"model": spec.model, "requested_version": spec.version, "served_version": version,
                         "ok": hist.get_total_count(), "rows": rows[(kind, version)], "latency_ms": summary_ms(hist)})  # fmt: skip
    return {
        "load": {"mode": "closed" if load.closed else "open", "concurrency": load.concurrency, "rate": load.rate,
                 "arrival": None if load.closed else load.arrival},
        "window_s": window_s,
        "requests": ok + failed,
        "ok": ok,
        "errors": dict(sorted(errors.items())),
        "error_rate": failed / (ok + failed) if ok + failed else 0.0,
        "infer_per_s": completed / window_s,
        "rows_per_s": rows_done / window_s,
        "latency_ms": summary_ms(total),
        "send_lag_ms": summary_ms(merged(lags)) if lags else None,
        # open loop: latency from each request's actual send (no schedule correction), as perf_analyzer reports it
        "service_latency_ms": summary_ms(merged(service)) if service else None,
        # open loop: the rate the generator actually sent at (measured sends over the span of their actual send times)
        "sent_per_s": (sent - 1) / span_s if sent > 1 and span_s > 0 else None,
        "by_model": by_model,
        "timeline": timeline,
        "server": server,
        "generator": {"processes": len(parts), "cpu_cores": cpu / wall if wall else 0.0},
        "histogram_hdr": total.encode().decode("ascii"),
    }  # fmt: skip


def server_delta(before: pb.ModelStatisticsResponse, after: pb.ModelStatisticsResponse, models: set[str]) -> list[dict[str, Any]]:
    """What the server counted between two ModelStatistics snapshots, per model and version, for ``models``."""
    old = {(s.name, s.version): s for s in before.model_stats}
    out = []
    for stats in sorted(after.model_stats, key=lambda s: (s.name, s.version)):
        if stats.name not in models:
            continue
        prev = old.get((stats.name, stats.version)) or pb.ModelStatistics()
        inf, pinf = stats.inference_stats, prev.inference_stats
        success = inf.success.count - pinf.success.count
        fail = inf.fail.count - pinf.fail.count
        if not success and not fail:
            continue
        mean = {}
        for stage in ("success", *STAGES):
            now, then = getattr(inf, stage), getattr(pinf, stage)
            count = now.count - then.count
            mean["total" if stage == "success" else stage] = (now.ns - then.ns) / count / 1e6 if count else None
        out.append({"model": stats.name, "version": stats.version, "success": success, "fail": fail,
                    "inference_count": stats.inference_count - prev.inference_count,
                    "execution_count": stats.execution_count - prev.execution_count, "mean_ms": mean})  # fmt: skip
    return out


# --- the SLO gate ----------------------------------------------------------------------------------------------


class SloError(ValueError):
    """An SLO text that cannot be parsed."""


@dataclass(frozen=True)
class SloCheck:
    metric: str  # p50 p90 p99 p99.9 max mean | errors | error_rate | infer/s | rows/s
    op: str
    threshold: float  # ms for latencies, a fraction for error_rate, a count for errors, per second for rates
    text: str

    def value(self, level: dict[str, Any]) -> float:
        if self.metric in level["latency_ms"]:
            v = level["latency_ms"][self.metric]
            return float("inf") if v is None else float(v)
        if self.metric == "error_rate":
            return float(level["error_rate"])
        if self.metric == "errors":
            return float(sum(level["errors"].values()))
        return float(level["infer_per_s" if self.metric == "infer/s" else "rows_per_s"])

    def passed(self, level: dict[str, Any]) -> bool:
        return bool(_OPS[self.op](self.value(level), self.threshold))


_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_CHECK = re.compile(r"^\s*([a-z0-9./_]+)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*([a-z%/]*)\s*$")
_TIME_UNITS = {"": 1.0, "ms": 1.0, "us": 1e-3, "s": 1e3}
_LATENCY = (*PERCENTILES, "max", "mean", "min")


def parse_slo(text: str) -> list[SloCheck]:
    """``'p99<20ms,errors<0.1%'`` -> checks. Latencies (p50 p90 p99 p99.9 max mean min) take us, ms (default) or s;
    ``errors`` takes a percentage (a rate) or a count; ``infer/s`` (alias ``throughput``) and ``rows/s`` a rate."""
    checks = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        m = _CHECK.match(item.lower())
        if not m:
            raise SloError(f"SLO {item!r}: expected METRIC<VALUE, e.g. p99<20ms, errors<0.1%, infer/s>500")
        metric, op, number, unit = m.groups()
        try:
            value = float(number)
        except ValueError:
            raise SloError(f"SLO {item!r}: {number!r} is not a number") from None
        if metric in _LATENCY:
            if unit not in _TIME_UNITS:
                raise SloError(f"SLO {item!r}: latency unit must be us, ms or s")
            checks.append(SloCheck(metric, op, value * _TIME_UNITS[unit], item))
        elif metric == "errors":
            if unit not in ("", "%"):
                raise SloError(f"SLO {item!r}: errors take a percentage (errors<0.1%) or a count (errors<=0)")
            checks.append(SloCheck("error_rate" if unit == "%" else "errors", op, value / 100 if unit == "%" else value, item))
        elif metric in ("infer/s", "throughput", "rows/s"):
            if unit not in ("", "/s"):
                raise SloError(f"SLO {item!r}: a rate takes no unit")
            checks.append(SloCheck("rows/s" if metric == "rows/s" else "infer/s", op, value, item))
        else:
            raise SloError(f"SLO {item!r}: unknown metric {metric!r}; one of {', '.join(_LATENCY)}, errors, infer/s, rows/s")
    if not checks:
        raise SloError("SLO is empty")
    return checks


def evaluate_slo(checks: Sequence[SloCheck], levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every check on every level; passed only when all hold."""
    results = []
    for level in levels:
        for check in checks:
            results.append({"level": level_key(level["load"]), "check": check.text, "value": check.value(level), "passed": check.passed(level)})
    return {"passed": all(r["passed"] for r in results), "checks": results}


# --- text ------------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table_text(report: dict[str, Any]) -> str:
    """The terminal table: one line per level, then per model/version, errors, and the server's stages."""
    lines = [f"{'level':>8} {'requests':>9} {'infer/s':>9} {'rows/s':>9} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>8}  errors   (latency ms)"]
    for level in report["levels"]:
        lat = level["latency_ms"]
        err = level["error_rate"]
        lines.append(f"{level_key(level['load']):>8} {level['requests']:>9} {level['infer_per_s']:>9.1f} {level['rows_per_s']:>9.1f} "
                     + " ".join(f"{_ms(lat[k]):>8}" for k in ("p50", "p90", "p99", "p99.9", "max")) + f"  {err:.2%}")  # fmt: skip
    for level in report["levels"]:
        name = level_key(level["load"])
        if len(level["by_model"]) > 1 or any(m["requested_version"] != m["served_version"] for m in level["by_model"]):
            lines.append(f"\n{name} by model and served version:")
            for m in level["by_model"]:
                lat = m["latency_ms"]
                asked = f" (asked {m['requested_version']})" if m["requested_version"] else ""
                lines.append(f"  {m['model']:<20} v{m['served_version'] or '?':<6}{asked} {m['ok']:>9} ok {m['rows']:>9} rows  "
                             f"p50 {_ms(lat['p50'])}  p99 {_ms(lat['p99'])}  max {_ms(lat['max'])} ms")  # fmt: skip
        if level["errors"]:
            lines.append(f"{name} errors: " + ", ".join(f"{status} {n}" for status, n in level["errors"].items()))
        if level["sent_per_s"] is not None:
            lag = level["send_lag_ms"]
            lines.append(f"{name} sent {level['sent_per_s']:.1f} requests/s; send lag p50 {_ms(lag['p50'])}  p99 {_ms(lag['p99'])}  max {_ms(lag['max'])} ms")
            if level["service_latency_ms"]:
                svc = level["service_latency_ms"]
                lines.append(f"{name} latency from the actual send (not schedule-corrected): p50 {_ms(svc['p50'])}  p99 {_ms(svc['p99'])}  max {_ms(svc['max'])} ms")
        if level["send_lag_ms"] and level["send_lag_ms"]["p99"] is not None and level["send_lag_ms"]["p99"] > 1.0:
            lines.append(f"{name} note: the generator sent late (send lag p99 {_ms(level['send_lag_ms']['p99'])} ms); "
                         "latencies count from the intended send time, so they include it")  # fmt: skip
        if level["server"]:
            lines.append(f"{name} server-side means (ms, from ModelStatistics):")
            for s in level["server"]:
                mean = s["mean_ms"]
                batch = s["inference_count"] / s["execution_count"] if s["execution_count"] else 0.0
                lines.append(f"  {s['model']:<20} v{s['version']:<6} {s['success']:>9} ok  total {_ms(mean['total'])}  queue {_ms(mean['queue'])}  "
                             f"input {_ms(mean['compute_input'])}  infer {_ms(mean['compute_infer'])}  output {_ms(mean['compute_output'])}  "
                             f"rows/execution {batch:.2f}")  # fmt: skip
    slo = report.get("slo")
    if slo:
        failed = [c for c in slo["checks"] if not c["passed"]]
        lines.append("\nSLO " + ("passed" if slo["passed"] else "MISSED: " + "; ".join(f"{c['level']} {c['check']} (was {c['value']:.4g})" for c in failed)))
    return "\n".join(lines)


def compare_text(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The change from an earlier report, level by level (levels matched by concurrency or rate)."""
    before = {level_key(level["load"]): level for level in old.get("levels", [])}
    lines = [f"compared with {old.get('started_at', '?')} (git {old.get('git_revision') or '?'}):",
             f"{'level':>8} {'metric':>10} {'old':>10} {'new':>10} {'change':>8}"]  # fmt: skip
    for level in new["levels"]:
        key = level_key(level["load"])
        prev = before.get(key)
        if prev is None:
            lines.append(f"{key:>8} (no such level in the old report)")
            continue
        rows = [("infer/s", prev["infer_per_s"], level["infer_per_s"])]
        rows += [(f"{k} ms", prev["latency_ms"][k], level["latency_ms"][k]) for k in ("p50", "p99", "p99.9", "max")]
        rows.append(("errors %", 100 * prev["error_rate"], 100 * level["error_rate"]))
        for name, a, b in rows:
            change = "-" if a in (None, 0) or b is None else f"{(b - a) / a:+.1%}"
            lines.append(f"{key:>8} {name:>10} {_fmt(a):>10} {_fmt(b):>10} {change:>8}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
