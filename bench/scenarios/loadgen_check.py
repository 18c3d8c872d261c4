"""``surge bench`` checked: its own ceiling against the gRPC floor, and a cross-check with perf_analyzer on one server.

    python -m bench.scenarios.loadgen_check [--duration-s 5] [--repeats 3] [--out bench/results/loadgen-check]

Servers run on CPU 0 (``servers.SERVER_CPU``), generators on CPU 1, one at a time.

1. Ceiling: ``surge bench`` (closed loop, c64, 1 process) against bench/peers/floor_server.py (precomputed
   answers) on the ``tiny`` model; beside it the same load from ``bench.scenarios.loadgen`` (the raw grpc.aio
   loop, responses unread) and from ``AsyncInferenceClient.infer`` (the client library: numpy encoded per request,
   responses decoded). Each reports infer/s and its CPU share of its core; ``per core`` = infer/s / CPU share is
   what one fully busy core could drive (when the CPU share is near 1 the generator is the bottleneck).
2. Cross-check: ``surge serve`` (batching off, the ``mlp`` model, 1 row) driven by perf_analyzer and by
   ``surge bench`` with the same load (c1, c8, and 200 requests/s constant) and the same measured time, in
   pairs, medians of the repeats. perf_analyzer: --async (one connection), three windows, stability check off.
   surge bench: --connections 1, 1 s warm-up.
Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.models import MODELS, write_onnx_files, write_repository
from bench.scenarios import contention
from bench.scenarios import perf_analyzer as pa
from bench.scenarios import targets
from bench.scenarios.servers import GENERATOR_CPU, pinned

REPO_ROOT = Path(__file__).resolve().parents[2]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def surge_bench(address: str, model: str, load: list[str], duration_s: float, connections: int = 1, warmup_s: float = 1.0,
                requests: int | None = None) -> dict:  # fmt: skip
    out = targets.CACHE / "run" / "loadgen-check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    size = ["--requests", str(requests)] if requests else ["--duration-s", str(duration_s)]
    cmd = [sys.executable, "-m", "surge.clients.loadgen", model, "--url", address, *load, *size,
           "--warmup-s", str(warmup_s), "--connections", str(connections), "--json", str(out), "--quiet", "--no-progress"]  # fmt: skip
    proc = subprocess.run(pinned(GENERATOR_CPU, cmd), capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"surge bench failed: {proc.stderr[-2000:]}")
    (level,) = json.loads(out.read_text())["levels"]
    service = level["service_latency_ms"] or {}
    return {"infer_per_s": level["infer_per_s"], "p50_ms": level["latency_ms"]["p50"], "p99_ms": level["latency_ms"]["p99"],
            "service_p50_ms": service.get("p50"), "send_lag_p50_ms": (level["send_lag_ms"] or {}).get("p50"),
            "generator_cpu": level["generator"]["cpu_cores"], "errors": sum(level["errors"].values())}  # fmt: skip


def raw_loadgen(address: str, model: str, concurrency: int, duration_s: float) -> dict:
    cmd = [sys.executable, "-m", "bench.scenarios.loadgen", "--address", address, "--model", model, "--features", str(MODELS[model].features),
           "--concurrency", str(concurrency), "--duration-s", str(duration_s), "--warmup-s", "1"]  # fmt: skip
    proc = subprocess.run(pinned(GENERATOR_CPU, cmd), capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=True)
    r = json.loads(proc.stdout.splitlines()[-1])
    return {"infer_per_s": r["infer_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "generator_cpu": r["generator_cpu"], "errors": r["errors"]}


_AIO_CLIENT = """
import asyncio, json, sys, time
import numpy as np, uvloop
from surge.clients import AsyncInferenceClient
address, model, features, concurrency, duration = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
async def main():
    x = np.random.default_rng(0).standard_normal((1, features)).astype(np.float32)
    async with AsyncInferenceClient(address, retries=0) as client:
        await client.infer(model, {"x": x})
        count, stop = 0, time.perf_counter() + 1 + duration
        start = time.perf_counter() + 1
        cpu0 = None
        async def worker():
            nonlocal count, cpu0
            while (t := time.perf_counter()) < stop:
                await client.infer(model, {"x": x})
                if t >= start:
                    count += 1
        async def mark():
            nonlocal cpu0
            await asyncio.sleep(1)
            cpu0 = time.process_time()
        m = asyncio.create_task(mark())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        print(json.dumps({"infer_per_s": count / duration, "generator_cpu": (time.process_time() - cpu0) / duration}))
uvloop.run(main())
"""


def aio_client(address: str, model: str, concurrency: int, duration_s: float) -> dict:
    cmd = [sys.executable, "-c", _AIO_CLIENT, address, model, str(MODELS[model].features), str(concurrency), str(duration_s)]
    proc = subprocess.run(pinned(GENERATOR_CPU, cmd), capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=True)
    return {**json.loads(proc.stdout.splitlines()[-1]), "p50_ms": None, "p99_ms": None, "errors": 0}


def perf_analyzer(address: str, model: str, load: list[str], duration_s: float) -> dict:
    """perf_analyzer over three time windows of ``duration_s / 3`` (--async, after 200 warm-up requests), the
    stability check made a no-op (``-s 100000``: a shared box fails any real threshold on latency). Not
    ``--request-count``: in that mode perf_analyzer divides by whole seconds (1500 requests in 3.4 s read 500/s)."""
    args = ["-m", model, "-x", "1", "-u", address, "-i", "grpc", "--async", "-b", "1", "--shape", f"x:{MODELS[model].features}",
            "--warmup-request-count", "200", "--measurement-interval", str(int(duration_s * 1000 / 3)), "-s", "100000", "-r", "3", *load]  # fmt: skip
    result, output = pa._run(args, 1)
    if result is None:
        raise RuntimeError(f"perf_analyzer failed: {output[-1500:]}")
    return {**result, "errors": 0}


def metered(fn, *args, **kwargs) -> dict:  # type: ignore[no-untyped-def]
    """``fn(...)``'s result plus the CPU other work on the box used meanwhile (cores)."""
    with contention.Meter() as meter:
        result = fn(*args, **kwargs)
    return {**result, "foreign_cores": meter.foreign_cores}


def median(results: list[dict]) -> dict:
    """The repeat with the median infer/s, plus every repeat's infer/s, p50 and foreign load."""
    ordered = sorted(results, key=lambda r: r["infer_per_s"])
    return {**ordered[len(ordered) // 2], "repeats": [round(r["infer_per_s"], 1) for r in results],
            "repeats_p50_ms": [None if r["p50_ms"] is None else round(r["p50_ms"], 3) for r in results],
            "repeats_foreign_cores": [round(r["foreign_cores"], 2) for r in results]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "loadgen-check")
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument("--skip-crosscheck", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: every server started is stopped
    if not args.skip_crosscheck and not pa.available():
        print("perf_analyzer is not set up: run bench/perf_analyzer/setup.sh", file=sys.stderr)
        return 2
    d, n = args.duration_s, args.repeats
    results: dict = {"duration_s": d, "repeats": n, "ceiling": {}, "crosscheck": {}}
    if not args.skip_ceiling:
        log("ceiling: generators on CPU 1 against the floor server on CPU 0 (tiny, c64)")
        with targets.floor() as address:
            runs: dict[str, list[dict]] = {"surge bench": [], "bench.scenarios.loadgen (raw)": [], "AsyncInferenceClient": []}
            for _ in range(n):
                contention.wait_idle(20, log)
                runs["surge bench"].append(metered(surge_bench, address, "tiny", ["--concurrency", "64"], d, connections=1))
                runs["bench.scenarios.loadgen (raw)"].append(metered(raw_loadgen, address, "tiny", 64, d))
                runs["AsyncInferenceClient"].append(metered(aio_client, address, "tiny", 64, d))
                runs.setdefault("surge bench, 4 connections", []).append(metered(surge_bench, address, "tiny", ["--concurrency", "64"], d, connections=4))
        for name, rs in runs.items():
            results["ceiling"][name] = median(rs)
            r = results["ceiling"][name]
            log(f"  {name:<32} {r['infer_per_s']:8.0f} infer/s  CPU {r['generator_cpu']:.2f}  per core {r['infer_per_s'] / max(r['generator_cpu'], 1e-9):8.0f}")
    if not args.skip_crosscheck:
        onnx = write_onnx_files(targets.CACHE / "onnx")
        repo = write_repository(targets.CACHE / "repo-loadgen-check", onnx, None)
        log("cross-check: surge serve (mlp, no batching) on CPU 0; perf_analyzer and surge bench alternating on CPU 1")
        # the same load and the same measured time for both (perf_analyzer's rate mode is constant)
        loads = {"c1": (["--concurrency", "1"], ["--concurrency-range", "1"]),
                 "c8": (["--concurrency", "8"], ["--concurrency-range", "8"]),
                 "r200": (["--rate", "200", "--arrival", "constant"], ["--request-rate-range", "200"])}  # fmt: skip
        with targets.surge(repo, {}, "loadgen-check", models=("mlp",)) as address:
            for key, (bench_load, pa_load) in loads.items():
                pas, sbs = [], []
                for _ in range(n):  # side by side: one pair per repeat, on an idle box where possible
                    contention.wait_idle(20, log)
                    pas.append(metered(perf_analyzer, address, "mlp", pa_load, d))
                    sbs.append(metered(surge_bench, address, "mlp", bench_load, d, connections=1))
                a, b = median(pas), median(sbs)
                results["crosscheck"][key] = {"perf_analyzer": a, "surge bench": b,
                                              "throughput_ratio": statistics.median(y["infer_per_s"] / x["infer_per_s"] for x, y in zip(pas, sbs)),
                                              "p50_ratio": statistics.median(y["p50_ms"] / x["p50_ms"] for x, y in zip(pas, sbs))}  # fmt: skip
                if sbs[0].get("service_p50_ms") is not None:  # open loop: also from the actual send, as perf_analyzer measures
                    results["crosscheck"][key]["service_p50_ratio"] = statistics.median(y["service_p50_ms"] / x["p50_ms"] for x, y in zip(pas, sbs))
                    results["crosscheck"][key]["service_p50_ms"] = statistics.median(y["service_p50_ms"] for y in sbs)
                    results["crosscheck"][key]["send_lag_p50_ms"] = statistics.median(y["send_lag_p50_ms"] for y in sbs)
                c = results["crosscheck"][key]
                log(f"  {key}: perf_analyzer {a['infer_per_s']:.0f}/s p50 {a['p50_ms']:.3f}  surge bench {b['infer_per_s']:.0f}/s p50 {b['p50_ms']:.3f}"
                    f"  ratios {c['throughput_ratio']:.3f} {c['p50_ratio']:.3f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def markdown(results: dict) -> str:
    lines = [f"Windows {results['duration_s']:g} s, {results['repeats']} repeats (median by infer/s; every repeat listed; ratios are medians "
             "of the per-pair ratios). Foreign load: CPU (cores) used by other work on the box during each measurement.", ""]
    if results["ceiling"]:
        lines += ["| generator (CPU 1) vs floor (CPU 0), tiny c64 | infer/s | generator CPU | per core (infer/s / CPU) | repeats | foreign load |",
                  "|---|---:|---:|---:|---|---|"]  # fmt: skip
        for name, r in results["ceiling"].items():
            lines.append(f"| {name} | {r['infer_per_s']:.0f} | {r['generator_cpu']:.2f} | {r['infer_per_s'] / max(r['generator_cpu'], 1e-9):.0f} | {r['repeats']} | {r['repeats_foreign_cores']} |")
        lines.append("")
    if results["crosscheck"]:
        lines += ["| surge serve mlp x1 | perf_analyzer infer/s | surge bench infer/s | ratio | perf_analyzer p50 ms | surge bench p50 ms | p50 ratio | p99 ms (PA / bench) | foreign load (PA / bench) |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
        notes = []
        for key, c in results["crosscheck"].items():
            a, b = c["perf_analyzer"], c["surge bench"]
            if "service_p50_ms" in c:
                notes.append(f"{key}: surge bench's p50 from the actual send (what perf_analyzer measures) {c['service_p50_ms']:.3f} ms, "
                             f"ratio to perf_analyzer's {c['service_p50_ratio']:.3f}; send lag p50 {c['send_lag_p50_ms']:.3f} ms")
            lines.append(f"| {key} | {a['infer_per_s']:.0f} {a['repeats']} | {b['infer_per_s']:.0f} {b['repeats']} | {c['throughput_ratio']:.3f} | "
                         f"{a['p50_ms']:.3f} {a['repeats_p50_ms']} | {b['p50_ms']:.3f} {b['repeats_p50_ms']} | {c['p50_ratio']:.3f} | {a['p99_ms']:.2f} / {b['p99_ms']:.2f} | {a['repeats_foreign_cores']} / {b['repeats_foreign_cores']} |")  # fmt: skip
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
