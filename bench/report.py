"""The table and the ratio checks, from the run's cells (plain dicts, as stored in latest.json).

A cell: generator ("perf_analyzer", "python", or "in-process"), target, model, rows (per request), concurrency
(0 for in-process), infer_per_s (requests), rows_per_s, p50_ms, p99_ms, generator_cpu, stable, batch (Surge:
mean_batch, common_batch, common_compute_ms).
"""

from __future__ import annotations

from collections.abc import Iterable

from bench.models import BATCHING
from bench.scenarios.contention import BUSY_CORES

CONCURRENCY = (1, 8, 64)
FLOOR, SURGE, SURGE_OFF, ORT = "floor (grpc.aio)", "surge", "surge (no batching)", "onnxruntime in-process"


def _find(cells: Iterable[dict], generator: str, target: str, model: str, rows: int, concurrency: int) -> dict | None:
    for c in cells:
        if (c["generator"], c["target"], c["model"], c["rows"], c["concurrency"]) == (generator, target, model, rows, concurrency):
            return c
    return None


find = _find


def best_mlserver(cells: list[dict], model: str = "mlp", concurrency: int = 64) -> dict | None:
    """MLServer's best configuration: the highest infer/s on ``model`` at ``concurrency`` (python generator)."""
    candidates = [c for c in cells if c["generator"] == "python" and c["target"].startswith("mlserver")
                  and c["model"] == model and c["rows"] == 1 and c["concurrency"] == concurrency]  # fmt: skip
    return max(candidates, key=lambda c: c["infer_per_s"], default=None)


def ort_at(cells: list[dict], model: str, batch: int) -> dict | None:
    return find(cells, "in-process", ORT, model, batch, 0)


def checks(cells: list[dict]) -> list[dict]:
    """The issue's targets, each {name, value, target, ok, detail}: ok None when a cell is missing, and "?"
    in the table when a cell it uses was measured while other work loaded the box."""
    out = []
    used: list[dict | None] = []

    def add(name: str, value: float | None, target: str, ok: bool | None, detail: str = "") -> None:
        noisy = [c for c in used if c and c.get("foreign_cores", 0.0) >= BUSY_CORES]
        if noisy:
            detail += f" (unreliable: other work used up to {max(c['foreign_cores'] for c in noisy):.2f} cores)"
        out.append({"name": name, "value": value, "target": target, "ok": ok, "detail": detail.strip(), "reliable": not noisy})
        used.clear()

    def find(*key: object) -> dict | None:  # the cells a check reads, remembered for its reliability
        cell = _find(cells, *key)  # type: ignore[arg-type]
        used.append(cell)
        return cell

    s, f = find("perf_analyzer", SURGE, "tiny", 1, 64), find("perf_analyzer", FLOOR, "tiny", 1, 64)
    r = s["infer_per_s"] / f["infer_per_s"] if s and f else None
    add("tiny c64: Surge / floor infer/s", r, ">= 0.85", None if r is None else r >= 0.85,
        f"{s['infer_per_s']:.0f} vs {f['infer_per_s']:.0f}" if r else "")

    s, m = find("python", SURGE, "mlp", 1, 64), best_mlserver(cells)
    used.append(m)
    r = s["infer_per_s"] / m["infer_per_s"] if s and m else None
    add("mlp c64: Surge / MLServer best infer/s", r, ">= 2.2", None if r is None else r >= 2.2,
        f"{s['infer_per_s']:.0f} vs {m['infer_per_s']:.0f} ({m['target']})" if r else "")
    used += [s, m]
    add("mlp c64: Surge p99 < MLServer best p99 (ms)", s["p99_ms"] if s and m else None, f"< {m['p99_ms']:.1f}" if m else "<",
        None if not (s and m) else s["p99_ms"] < m["p99_ms"])

    s, o = find("perf_analyzer", SURGE, "mlp-large", 1, 64), find("perf_analyzer", SURGE_OFF, "mlp-large", 1, 64)
    r = s["infer_per_s"] / o["infer_per_s"] if s and o else None
    add("mlp-large c64: Surge batching / no batching", r, ">= 3", None if r is None else r >= 3,
        f"{s['infer_per_s']:.0f} vs {o['infer_per_s']:.0f}" if r else "")
    batch = (s or {}).get("batch") or {}
    used.append(s)
    if s and batch:
        delay = s.get("max_queue_delay_s", BATCHING["max_queue_delay_s"]) or 0.0  # the model's configured delay (0: SLO mode)
        bound = delay * 1e3 + batch["common_compute_ms"]
        add("mlp-large c64: p99 <= delay + formed batch's compute (ms)", s["p99_ms"], f"<= {bound:.1f}", s["p99_ms"] <= bound,
            f"batch {batch['common_batch']} computes in {batch['common_compute_ms']:.1f} ms")
    else:
        add("mlp-large c64: p99 <= delay + formed batch's compute (ms)", None, "", None, "no batch statistics")

    s = find("perf_analyzer", SURGE, "mlp", 16, 8)
    formed = ((s or {}).get("batch") or {}).get("common_batch")
    o = ort_at(cells, "mlp", formed) if formed else None
    used.append(o)
    r = s["rows_per_s"] / o["rows_per_s"] if s and o else None
    add("mlp 16-row c8: Surge rows/s / ORT at the formed batch", r, ">= 0.70", None if r is None else r >= 0.70,
        f"{s['rows_per_s']:.0f} vs {o['rows_per_s']:.0f} (batch {formed})" if r else "")

    # Surge's better configuration at concurrency 1: a fixed max_queue_delay makes a lone request wait it out (Triton's
    # semantics), so a latency-bound deployment turns batching off or uses SLO mode, which does not wait alone
    ones = [c for c in (find("perf_analyzer", SURGE, "tiny", 1, 1), find("perf_analyzer", SURGE_OFF, "tiny", 1, 1)) if c]
    s, f = min(ones, key=lambda c: c["p50_ms"], default=None), find("perf_analyzer", FLOOR, "tiny", 1, 1)
    d = s["p50_ms"] - f["p50_ms"] if s and f else None
    add("tiny c1: Surge p50 - floor p50 (ms)", d, "<= 0.10", None if d is None else d <= 0.10,
        f"{s['p50_ms']:.3f} ({s['target']}) vs {f['p50_ms']:.3f}" if d is not None else "")
    return out


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _rate(cell: dict) -> str:
    text = _num(cell["infer_per_s"])
    if cell["rows"] > 1:
        text += f" ({cell['rows_per_s'] / 1e3:.1f}k rows/s)"
    return text + ("" if cell.get("stable", True) else "~")


def table(cells: list[dict]) -> str:
    head = ["load", "model", "rows/req", "target"]
    head += [f"infer/s c{c}" for c in CONCURRENCY] + [f"p50 ms c{c}" for c in CONCURRENCY] + [f"p99 ms c{c}" for c in CONCURRENCY]
    head += ["batch formed c8/c64", "gen CPU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple, dict[int, dict]] = {}
    for c in cells:
        if c["generator"] != "in-process":
            groups.setdefault((c["generator"], c["model"], c["rows"], c["target"]), {})[c["concurrency"]] = c
    for (generator, model, rows, target), by_c in groups.items():
        row = [generator, model, str(rows), target]
        row += [_rate(by_c[c]) if c in by_c else "" for c in CONCURRENCY]
        row += [f"{by_c[c]['p50_ms']:.2f}" if c in by_c else "" for c in CONCURRENCY]
        row += [f"{by_c[c]['p99_ms']:.2f}" if c in by_c else "" for c in CONCURRENCY]
        row.append(" / ".join(f"{by_c[c]['batch']['mean_batch']:.1f}" if c in by_c and by_c[c].get("batch") else "-" for c in (8, 64)))
        row.append(f"{max(x['generator_cpu'] for x in by_c.values()):.0%}")
        lines.append("| " + " | ".join(row) + " |")
    for c in cells:
        if c["generator"] == "in-process":
            row = ["in-process", c["model"], str(c["rows"]), ORT, f"{_num(c['infer_per_s'])} runs/s ({c['rows_per_s'] / 1e3:.1f}k rows/s)", "", "",
                   f"{c['p50_ms']:.3f}", "", "", "", "", "", str(c["rows"]), "-"]  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def checks_table(results: list[dict]) -> str:
    lines = ["| check | measured | target | ok | detail |", "|---|---|---|---|---|"]
    for c in results:
        value = "-" if c["value"] is None else f"{c['value']:.2f}"
        ok = "?" if c["ok"] is None else ("yes" if c["ok"] else "NO") + ("" if c.get("reliable", True) else " ?")
        lines.append(f"| {c['name']} | {value} | {c['target']} | {ok} | {c['detail']} |")
    return "\n".join(lines)


def ceilings(cells: list[dict]) -> list[str]:
    """Each generator's ceiling, estimated from its run against the floor: infer/s divided by its CPU share."""
    out = []
    for generator in ("perf_analyzer", "python"):
        cell = find(cells, generator, FLOOR, "tiny", 1, 64)
        if cell and cell["generator_cpu"] > 0:
            out.append(f"{generator}: {cell['infer_per_s']:,.0f} infer/s against the floor (tiny, c64) using {cell['generator_cpu']:.0%} "
                       f"of its core: ceiling about {cell['infer_per_s'] / cell['generator_cpu']:,.0f} infer/s")  # fmt: skip
    for c in cells:
        if c.get("foreign_cores", 0.0) >= BUSY_CORES:
            out.append(f"warning: other work used {c['foreign_cores']:.2f} cores while measuring {c['generator']} {c['target']} "
                       f"{c['model']} x{c['rows']} c{c['concurrency']}")  # fmt: skip
    busy = [c for c in cells if c["generator"] != "in-process" and c["generator_cpu"] >= 0.9]
    for c in busy:
        out.append(f"warning: generator near its ceiling ({c['generator_cpu']:.0%} CPU): {c['generator']} {c['target']} {c['model']} "
                   f"x{c['rows']} c{c['concurrency']}")  # fmt: skip
    return out


def markdown(meta: dict, cells: list[dict]) -> str:
    facts = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    notes = "\n".join(f"- {line}" for line in ceilings(cells))
    return (f"# Surge benchmark\n\n{facts}\n\n{table(cells)}\n\n"
            f"infer/s = requests/s; `~` = perf_analyzer could not stabilise (first windows taken). Batch formed = mean rows per "
            f"execution (Surge's ModelStatistics). Gen CPU = the load generator's busiest level, share of its core.\n\n"
            f"## Generator ceilings\n\n{notes}\n\n## Targets\n\n{checks_table(checks(cells))}\n")  # fmt: skip


def main() -> None:
    """``python -m bench.report NAME.json``: render NAME.md again from the stored cells (after a report change)."""
    import json
    import sys
    from pathlib import Path

    path = Path(sys.argv[1])
    data = json.loads(path.read_text())
    data["checks"] = checks(data["cells"])
    path.write_text(json.dumps(data, indent=1) + "\n")
    text = markdown(data["meta"], data["cells"])
    if data.get("slo_sweep"):
        from bench.scenarios.slo_sweep import markdown as sweep_markdown

        text += "\n" + sweep_markdown(data["slo_sweep"])
    path.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
