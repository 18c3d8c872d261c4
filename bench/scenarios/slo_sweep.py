"""Sweep Surge's batcher settings at fixed offered loads: ``max_queue_delay_s`` values vs ``latency_slo_s``.

    python -m bench.compare --slo-sweep        after the main table; rates = 30/60/75/90 % of Surge's mlp-large c64 rate
    python -m bench.scenarios.slo_sweep [--surge-rev REV] [--rates 400,800,1200] [--settings JSON] [--out bench/results/slo-sweep]

Open loop (perf_analyzer ``--request-rate-range R``: requests at rate R whatever the answers' pace), single-row
requests to ``MODEL``, four rates. Each setting gets its own repository and server. A setting the server
refuses (e.g. ``latency_slo_s`` before SLO mode exists) is recorded as refused with the server's reason; a rate
the server cannot sustain (perf_analyzer gives up) as overloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.models import BATCHING, MODELS, write_repository
from surge.server.commands import top

from . import perf_analyzer as pa
from . import targets
from .servers import free_port

MODEL = "mlp-large"
RATES = (400.0, 800.0, 1000.0, 1200.0)
PREFERRED = BATCHING["preferred_batch_sizes"]
SETTINGS: tuple[dict[str, object], ...] = (
    {"max_queue_delay_s": 0.0005},
    {"max_queue_delay_s": 0.002},
    {"max_queue_delay_s": 0.008},
    {"latency_slo_s": 0.010},
    {"latency_slo_s": 0.025},
)


def run(onnx: dict[str, Path], surge_env: dict[str, str], windows: pa.Windows, log: Callable[[str], None],
        rates: tuple[float, ...] = RATES, settings: tuple[dict[str, object], ...] = SETTINGS) -> list[dict]:  # fmt: skip
    points = []
    for setting in settings:
        label = ", ".join(f"{k} = {v}" for k, v in setting.items())
        repo = write_repository(targets.CACHE / "repo-sweep", {MODEL: onnx[MODEL]}, {**setting, "preferred_batch_sizes": PREFERRED})
        try:
            metrics_port = free_port()
            server = targets.surge(repo, surge_env, "surge-sweep", models=(MODEL,), metrics_port=metrics_port)
            address = server.__enter__()
        except RuntimeError as exc:
            points.append({"setting": label, "refused": _last_line(exc)})
            log(f"  sweep {label}: refused ({_last_line(exc)})")
            continue
        try:
            for rate in rates:
                try:
                    before = top.scrape(f"127.0.0.1:{metrics_port}")
                    r = pa.measure(address, MODEL, MODELS[MODEL].features, 1, rate=rate, windows=windows)
                    server_view = [row for row in top.rows(before, top.scrape(f"127.0.0.1:{metrics_port}")) if row.model == MODEL]
                    if server_view:  # the server's own p99 (its histogram, over the whole measurement incl. perf_analyzer's warm-up)
                        r["server_p99_ms"] = server_view[0].p99_s * 1e3
                        r["batch_mean"] = server_view[0].batch_mean
                except RuntimeError as exc:
                    points.append({"setting": label, "rate": rate, "overloaded": _last_line(exc)})
                    log(f"  sweep {label:<28} {rate:6.0f}/s offered: not sustained ({_last_line(exc)})")
                    continue
                points.append({"setting": label, "rate": rate, **r})
                log(f"  sweep {label:<28} {rate:6.0f}/s offered: {r['infer_per_s']:6.0f} served  p50 {r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f} ms"
                    f"  server p99 {r.get('server_p99_ms', float('nan')):.2f} ms  batch {r.get('batch_mean', float('nan')):.1f}")
        finally:
            server.__exit__(None, None, None)
    return points


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def markdown(points: list[dict]) -> str:
    lines = [f"## Batcher settings at fixed offered loads ({MODEL}, 1 row, open loop)", "",
             "p50/p99: perf_analyzer's (client side); server p99: Surge's request-duration histogram over the same run "
             "(Prometheus-style interpolation within a bucket); batch: mean rows per execution.", "",
             "| setting | offered req/s | served infer/s | p50 ms | p99 ms | server p99 ms | batch |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in points:
        if "refused" in p:
            lines.append(f"| {p['setting']} | - | refused: {p['refused']} | | | | |")
        elif "overloaded" in p:
            lines.append(f"| {p['setting']} | {p['rate']:.0f} | not sustained: {p['overloaded']} | | | | |")
        else:
            lines.append(f"| {p['setting']} | {p['rate']:.0f} | {p['infer_per_s']:.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} "
                         f"| {p.get('server_p99_ms', float('nan')):.2f} | {p.get('batch_mean', float('nan')):.1f} |")
    return "\n".join(lines) + "\n" + verdict(points)


def verdict(points: list[dict]) -> str:
    """The issue's SLO-mode check per offered load: server p99 under the SLO, and throughput at least the best fixed
    delay's: served at least as many, or the whole offered load (99% of it: the rate's own rounding; nobody can serve more)."""
    lines = ["", "SLO mode vs the best fixed `max_queue_delay_s` at each offered load:", "",
             "| offered req/s | setting | server p99 ms vs SLO | served vs best fixed delay | both |", "|---|---|---|---|---|"]  # fmt: skip
    for rate in sorted({p["rate"] for p in points if "rate" in p}):
        at = [p for p in points if p.get("rate") == rate]
        fixed = [p for p in at if p["setting"].startswith("max_queue_delay_s") and "infer_per_s" in p]
        best = max(fixed, key=lambda p: p["infer_per_s"], default=None)
        for p in at:
            if not p["setting"].startswith("latency_slo_s"):
                continue
            if "infer_per_s" not in p:
                lines.append(f"| {rate:.0f} | {p['setting']} | not sustained | | no |")
                continue
            slo_ms = float(p["setting"].split("=")[1]) * 1e3
            p99 = p.get("server_p99_ms", float("nan"))
            served_ok = best is None or p["infer_per_s"] >= min(best["infer_per_s"], 0.99 * rate)
            against = f"{p['infer_per_s']:.0f} vs {best['infer_per_s']:.0f} ({best['setting']})" if best else f"{p['infer_per_s']:.0f} (no fixed delay sustained it)"
            lines.append(f"| {rate:.0f} | {p['setting']} | {p99:.2f} vs {slo_ms:.0f} | {against} | {'yes' if p99 < slo_ms and served_ok else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse
    import json
    import sys
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surge-rev", help="serve Surge from this git revision instead of the working tree")
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES), help="offered loads, requests/s")
    parser.add_argument("--settings", type=json.loads, help='only these settings, a JSON list (e.g. \'[{"latency_slo_s": 0.01}]\')')
    parser.add_argument("--out", type=Path, default=targets.REPO_ROOT / "bench" / "results" / "slo-sweep")
    args = parser.parse_args()
    from bench.models import write_onnx_files

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    description, env = targets.surge_source(args.surge_rev)
    rates = tuple(float(r) for r in args.rates.split(","))
    points = run(write_onnx_files(targets.CACHE / "onnx"), env, pa.Windows(), log, rates, tuple(args.settings or SETTINGS))
    text = f"surge served: {description}\n\n" + markdown(points)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"surge served": description, "points": points}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
