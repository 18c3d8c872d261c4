"""One command, one table: Surge beside the gRPC floor, MLServer 1.7 and onnxruntime in-process.

    python -m bench.compare [--quick] [--surge-rev REV] [--no-mlserver] [--slo-sweep]

Servers run on CPU 0 (one ORT thread), load generators on CPU 1. perf_analyzer drives Surge (batching on
and off) and the floor; a Python asyncio generator drives the MLServer comparison (Surge and MLServer
alike) and is measured against the floor too. Writes bench/results/latest.{md,json}. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.models import BATCHING, BATCHING_PER_MODEL, MODELS, write_onnx_files, write_repository
from bench.peers import mlserver as mls
from bench.scenarios import contention
from bench.scenarios import perf_analyzer as pa
from bench.scenarios import targets
from bench.scenarios.servers import GENERATOR_CPU, SERVER_CPU, formed_batches, pinned, surge_statistics

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results"
PA_WORKLOADS = (("tiny", 1), ("mlp", 1), ("mlp-large", 1), ("mlp", 16))
PY_WORKLOADS = (("tiny", 1), ("mlp", 1))
SLUG = {report.SURGE: "surge", report.SURGE_OFF: "surge-nobatch"}


@dataclass(frozen=True)
class Plan:
    windows: pa.Windows
    floor_workloads: tuple[tuple[str, int], ...]
    py_duration_s: float
    py_warmup_s: float
    py_surge_off: bool
    mlserver_configs: tuple[mls.MLServerConfig, ...]
    ort_duration_s: float


FULL = Plan(pa.Windows(2000, 25, 6), PA_WORKLOADS, 3.0, 1.0, True, mls.CONFIGS, 2.0)
QUICK = Plan(pa.Windows(1000, 30, 4, 100), (("tiny", 1),), 1.5, 0.5, False, tuple(c for c in mls.CONFIGS if c.parallel_workers == 0), 1.0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


REPEATS = 1  # set by --repeats: each cell is measured this many times and the median (by infer/s) is kept


def measured(label: str, fn: Callable[[], dict]) -> dict:
    """One cell, REPEATS times (median kept); each on a quiet box (see ``clean``)."""
    results = sorted((clean(label, fn) for _ in range(REPEATS)), key=lambda r: r["infer_per_s"])
    result = {**results[len(results) // 2], "repeats": [round(r["infer_per_s"], 1) for r in results]}
    log(f"  {label:<48} {result['infer_per_s']:8.0f} infer/s  p50 {result['p50_ms']:7.2f}  p99 {result['p99_ms']:7.2f} ms  "
        f"gen CPU {result['generator_cpu']:.0%}  foreign {result['foreign_cores']:.2f}" + ("" if result["stable"] else "  unstable"))  # fmt: skip
    return result


def clean(label: str, fn: Callable[[], dict]) -> dict:
    """Run ``fn``; if other work used the CPUs meanwhile (or perf_analyzer gave up), wait for an idle box and
    measure again, at most twice; the last try is kept whatever happened (its foreign load is recorded)."""
    for attempt in range(3):
        with contention.Meter() as meter:
            try:
                result = fn()
            except RuntimeError as exc:
                if attempt == 2:
                    raise
                log(f"  {label}: failed ({str(exc).splitlines()[-1]}); measuring again once the box is idle")
                contention.wait_idle(120, log)
                continue
        result["foreign_cores"] = meter.foreign_cores
        if meter.foreign_cores < contention.BUSY_CORES or attempt == 2:
            return result
        log(f"  {label}: other work used {meter.foreign_cores:.2f} cores meanwhile; measuring again once the box is idle")
        contention.wait_idle(120, log)
    raise AssertionError("unreachable")


def perf_analyzer_cells(target: str, address: str, workloads: Iterable[tuple[str, int]], plan: Plan, surge: bool) -> list[dict]:
    cells = []
    for model, rows in workloads:
        for concurrency in report.CONCURRENCY:

            def one(model: str = model, rows: int = rows, concurrency: int = concurrency) -> dict:
                before = surge_statistics(address, model) if surge else None
                result = pa.measure(address, model, MODELS[model].features, rows, concurrency=concurrency, windows=plan.windows)
                return {**result, "batch": formed_batches(before, surge_statistics(address, model)) if surge else None}

            result = measured(f"perf_analyzer {target} {model} x{rows} c{concurrency}", one)
            cells.append({"generator": "perf_analyzer", "target": target, "model": model, "rows": rows, "concurrency": concurrency, **result})
    return cells


def python_cells(target: str, address: str, plan: Plan, surge: bool) -> list[dict]:
    cells = []
    for model, rows in PY_WORKLOADS:
        for concurrency in report.CONCURRENCY:

            def one(model: str = model, rows: int = rows, concurrency: int = concurrency) -> dict:
                before = surge_statistics(address, model) if surge else None
                cmd = [sys.executable, "-m", "bench.scenarios.loadgen", "--address", address, "--model", model, "--features", str(MODELS[model].features),
                       "--rows", str(rows), "--concurrency", str(concurrency), "--duration-s", str(plan.py_duration_s), "--warmup-s", str(plan.py_warmup_s)]  # fmt: skip
                proc = subprocess.run(pinned(GENERATOR_CPU, cmd), capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
                if proc.returncode != 0:
                    raise RuntimeError(f"load generator failed against {target}: {proc.stderr[-2000:]}")
                r = json.loads(proc.stdout.splitlines()[-1])
                return {"infer_per_s": r["infer_per_s"], "rows_per_s": r["infer_per_s"] * rows, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                        "generator_cpu": r["generator_cpu"], "errors": r["errors"], "stable": r["errors"] == 0,
                        "batch": formed_batches(before, surge_statistics(address, model)) if surge else None}  # fmt: skip

            result = measured(f"python {target} {model} x{rows} c{concurrency}", one)
            cells.append({"generator": "python", "target": target, "model": model, "rows": rows, "concurrency": concurrency, **result})
    return cells


def ort_cells(onnx_dir: Path, batches: list[int], plan: Plan) -> list[dict]:
    cells = []
    for model in MODELS:
        cmd = [sys.executable, "-m", "bench.scenarios.ort_inprocess", "--onnx-dir", str(onnx_dir), "--models", model,
               "--batches", ",".join(map(str, batches)), "--duration-s", str(plan.ort_duration_s)]  # fmt: skip
        for attempt in range(3):
            with contention.Meter() as meter:
                proc = subprocess.run(pinned(SERVER_CPU, cmd), capture_output=True, text=True, cwd=REPO_ROOT, check=True, timeout=600)
            if meter.foreign_cores < contention.BUSY_CORES or attempt == 2:
                break
            log(f"  in-process {model}: other work used {meter.foreign_cores:.2f} cores meanwhile; measuring again once the box is idle")
            contention.wait_idle(120, log)
        for line in proc.stdout.splitlines():
            r = json.loads(line)
            cells.append({"generator": "in-process", "target": report.ORT, "model": r["model"], "rows": r["batch"], "concurrency": 0,
                          "infer_per_s": r["runs_per_s"], "rows_per_s": r["rows_per_s"], "p50_ms": r["p50_ms"], "p99_ms": None,
                          "generator_cpu": 0.0, "stable": True, "batch": None, "foreign_cores": meter.foreign_cores})  # fmt: skip
            log(f"  in-process {r['model']:>9} batch {r['batch']:<3} {r['rows_per_s']:9.0f} rows/s  p50 {r['p50_ms']:.3f} ms  foreign {meter.foreign_cores:.2f}")
    return cells


def machine_facts(surge_description: str, plan_name: str, mlserver_version: str, batching: dict | None = None) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    import grpc
    import onnxruntime

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.compare " + " ".join(sys.argv[1:]),
        "plan": plan_name,
        "git revision (harness)": rev,
        "surge served": surge_description,
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {platform.platform()}, Python {platform.python_version()}",
        "packages": f"grpcio {grpc.__version__}, onnxruntime {onnxruntime.__version__}, {mlserver_version}",
        "pinning": f"servers and onnxruntime in-process on CPU {SERVER_CPU} (1 ORT thread), load generators on CPU {GENERATOR_CPU}",
        "surge batching": json.dumps(BATCHING if batching is None else batching),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer cells (about 3-4 minutes)")
    parser.add_argument("--surge-rev", help="serve Surge from this git revision instead of the working tree")
    parser.add_argument("--no-mlserver", action="store_true", help="skip MLServer (no venv is created)")
    parser.add_argument("--surge-batching-per-model", type=json.loads, default=BATCHING_PER_MODEL,
                        help=f"per-model replacements of --surge-batching as JSON (default {json.dumps(BATCHING_PER_MODEL)}; '{{}}' for none)")
    parser.add_argument("--slo-sweep", action="store_true", help="also sweep max_queue_delay_s vs latency_slo_s (bench/scenarios/slo_sweep.py)")
    parser.add_argument("--repeats", type=int, default=1, help="measure each cell N times and keep the median (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest")
    parser.add_argument("--surge-batching", type=json.loads, default=BATCHING,
                        help=f"Surge's [dynamic_batching] table as JSON (default {json.dumps(BATCHING)}; e.g. '{{\"latency_slo_s\": 0.01}}')")
    args = parser.parse_args()
    global REPEATS
    REPEATS = max(1, args.repeats)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: every server started is stopped
    if not pa.available():
        print("perf_analyzer is not set up: run bench/perf_analyzer/setup.sh", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    cache = targets.CACHE
    onnx = write_onnx_files(cache / "onnx")
    per_model = args.surge_batching_per_model
    repos = {report.SURGE: write_repository(cache / "repo-batching", onnx, args.surge_batching, per_model),
             report.SURGE_OFF: write_repository(cache / "repo-nobatch", onnx, None)}  # fmt: skip
    surge_description, surge_env = targets.surge_source(args.surge_rev)
    mlserver_version = "MLServer skipped"
    if not args.no_mlserver:
        log("MLServer venv (.cache/bench/mlserver-venv)")
        mls.ensure_venv()
        mlserver_version = mls.version()
    meta = machine_facts(surge_description, "quick" if args.quick else "full", mlserver_version, args.surge_batching)
    if per_model:
        meta["surge batching per model"] = json.dumps(per_model)
    cells: list[dict] = []
    idle = contention.wait_idle(300, log)
    log(f"foreign load before the run: {idle:.2f} cores")

    log("perf_analyzer: floor, Surge, Surge without batching")
    with targets.floor() as address:
        cells += perf_analyzer_cells(report.FLOOR, address, plan.floor_workloads, plan, surge=False)
    for label, repo in repos.items():
        with targets.surge(repo, surge_env, SLUG[label]) as address:
            cells += perf_analyzer_cells(label, address, PA_WORKLOADS, plan, surge=True)

    for cell in cells:  # the delay each Surge cell's model was configured with (the p99 check's bound)
        if cell["target"] == report.SURGE:
            cell["max_queue_delay_s"] = ((per_model or {}).get(cell["model"], args.surge_batching) or {}).get("max_queue_delay_s")
    formed = (report.find(cells, "perf_analyzer", report.SURGE, "mlp", 16, 8) or {}).get("batch") or {}
    batches = sorted({1, 16, 32, 64, formed.get("common_batch", 16)})
    log(f"onnxruntime in-process, batches {batches}")
    cells += ort_cells(cache / "onnx", batches, plan)

    log("python generator: floor, Surge, MLServer")
    with targets.floor() as address:
        cells += python_cells(report.FLOOR, address, plan, surge=False)
    for label, repo in repos.items() if plan.py_surge_off else [(report.SURGE, repos[report.SURGE])]:
        with targets.surge(repo, surge_env, SLUG[label]) as address:
            cells += python_cells(label, address, plan, surge=True)
    for config in () if args.no_mlserver else plan.mlserver_configs:
        with targets.mlserver(config, onnx) as address:
            cells += python_cells(config.label, address, plan, surge=False)

    sweep = None
    if args.slo_sweep:
        from bench.scenarios import slo_sweep

        capacity = (report.find(cells, "perf_analyzer", report.SURGE, slo_sweep.MODEL, 1, 64) or {}).get("infer_per_s")
        rates = tuple(round(capacity * f, -1) for f in (0.3, 0.6, 0.75, 0.9)) if capacity else slo_sweep.RATES
        log(f"batcher settings sweep on {slo_sweep.MODEL} at {rates} requests/s")
        sweep = slo_sweep.run(onnx, surge_env, plan.windows, log, rates)
    meta["duration"] = f"{time.monotonic() - started:.0f} s"
    meta["foreign load"] = f"at most {max(c['foreign_cores'] for c in cells):.2f} cores during a cell (CPU used by other work on the box)"
    text = report.markdown(meta, cells)
    if sweep is not None:
        text += "\n" + slo_sweep.markdown(sweep)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "cells": cells, "checks": report.checks(cells), "slo_sweep": sweep}, indent=1) + "\n")
    print(text)
    log(f"wrote {args.out.with_suffix('.md')} and .json in {meta['duration']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
