"""Front ends over one engine vs the single process: requests/s per front end and CPU per request, ``tiny`` at c64.

    python -m bench.scenarios.frontends                                   # 1, 2, 4, 8 front ends vs the single process
    python -m bench.scenarios.frontends --frontends 1,2 --repeats 3 --out bench/results/frontends.json

Configurations, each on a fresh server, interleaved within every repeat (single, 1, 2, 4, 8, single, 1, ...):
``single`` is ``surge serve`` as it runs by default (one process, models in process); ``N`` is
``surge serve --workers N --engine-process`` (N front ends over one CPU engine process; with N = 1 the flag forces
the split). perf_analyzer (``--sync``, one gRPC channel per thread) drives ``tiny`` (y = x + 1 over 16 floats,
1 row per request) at ``--concurrency``; then 2,000 sequential requests from one client (ours) give the p50 at
concurrency 1, the latency the split adds to one request.

CPU per request: the user + system CPU time (``/proc/<pid>/stat`` utime + stime, children included while alive)
of every process of the Surge tree (supervisor, front ends, engine, ONNX Runtime threads), read just before and just
after the measurement window, divided by the requests the engine counted in that window (ModelStatistics, the whole
server's). perf_analyzer's own CPU is not in it. Pinning: as ``workers.py`` (on fewer than 4 CPUs server and
generator share every CPU: absolute rates cannot scale there, the CPU per request still compares).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from bench.models import write_onnx_files, write_repository
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc

from .contention import wait_idle
from .workers import MODEL, REPO_ROOT, default_cpus, perf_analyzer, surge

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    """``root`` and every descendant (from /proc/*/stat parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root``'s process tree so far (threads included; utime + stime)."""
    total = 0
    for pid in _tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def inferences(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(pb.ModelStatisticsRequest(name=MODEL), timeout=30)
    return sum(s.inference_count for s in response.model_stats)


def warm(address: str, requests: int = 200) -> None:
    """A few hundred requests on fresh channels (the kernel spreads connections over the front ends), unmeasured."""
    from bench.models import MODELS
    from surge.clients import InferenceClient

    x = {"x": np.ones((1, MODELS[MODEL].features), np.float32)}
    for _ in range(8):
        with InferenceClient(address, timeout_s=30, retries=3) as client:
            for _ in range(requests // 8):
                client.infer(MODEL, x)


def sequential_latencies_ms(address: str, requests: int = 2000) -> list[float]:
    """Concurrency 1 from one client (ours, one channel): each request's round trip in ms. perf_analyzer's stability
    rule rarely holds at c1 on a loaded box; the same client serves every configuration, so differences compare."""
    from bench.models import MODELS
    from surge.clients import InferenceClient

    x = {"x": np.ones((1, MODELS[MODEL].features), np.float32)}
    latencies = []
    with InferenceClient(address, timeout_s=30, retries=0) as client:
        for _ in range(requests):
            started = time.perf_counter()
            client.infer(MODEL, x)
            latencies.append((time.perf_counter() - started) * 1e3)
    return latencies


def measure(repository: Path, label: str, cpus: str, generator_cpus: str, concurrency: int, interval_ms: int, work: Path, wait_idle_s: float) -> dict:
    frontends = 0 if label == "single" else int(label)
    extra = () if label == "single" else ("--engine-process",)
    with surge(repository, max(1, frontends), cpus, work / f"f{label}", extra=extra) as (address, _):
        root = int((work / f"f{label}" / "pid").read_text())
        if wait_idle_s > 0:
            wait_idle(wait_idle_s, lambda line: print(line, flush=True))
        warm(address)
        before_cpu, before_n, started = cpu_seconds(root), inferences(address), time.monotonic()
        result = perf_analyzer(address, concurrency, generator_cpus, interval_ms)
        cpu, served, elapsed = cpu_seconds(root) - before_cpu, inferences(address) - before_n, time.monotonic() - started
        c1 = sequential_latencies_ms(address)
    return {"config": label, "frontends": frontends, "infer_per_s": result["infer_per_s"], "per_frontend": result["infer_per_s"] / max(1, frontends),
            "cpu_us_per_request": cpu / served * 1e6, "cores_used": cpu / elapsed, "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
            "c1_p50_ms": statistics.median(c1), "c1_p99_ms": sorted(c1)[int(len(c1) * 0.99)], "stable": result["stable"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    server_default, generator_default = default_cpus()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frontends", default="1,2,4,8", help="front-end counts over one engine (default 1,2,4,8)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--server-cpus", default=server_default)
    parser.add_argument("--generator-cpus", default=generator_default)
    parser.add_argument("--wait-idle-s", type=float, default=20.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not (REPO_ROOT / ".cache" / "perf_analyzer" / "bin" / "perf_analyzer").is_file():
        print("perf_analyzer is not set up: run bash bench/perf_analyzer/setup.sh", file=sys.stderr)
        return 2
    work = REPO_ROOT / ".cache" / "bench-frontends"
    onnx = write_onnx_files(work / "onnx")
    repository = write_repository(work / "repository", {MODEL: onnx[MODEL]}, None)
    labels = ["single", *args.frontends.split(",")]
    print(f"tiny, 1 row/request, perf_analyzer --sync c{args.concurrency}; server CPUs {args.server_cpus}, generator CPUs {args.generator_cpus}; "
          f"{args.repeats} repeats; {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    points = []
    for repeat in range(args.repeats):
        for label in labels:
            point = {"repeat": repeat, **measure(repository, label, args.server_cpus, args.generator_cpus, args.concurrency, args.interval_ms, work,
                                                 args.wait_idle_s)}  # fmt: skip
            points.append(point)
            if args.out:  # after every point: a run cut short keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"points": points}, indent=1))
            print(f"  repeat {repeat} {label:>6}: {point['infer_per_s']:7.0f} req/s  {point['per_frontend']:7.0f} per front end  "
                  f"{point['cpu_us_per_request']:6.0f} us CPU/request  c64 p50 {point['p50_ms']:.2f} ms  c1 p50 {point['c1_p50_ms']:.3f} ms", flush=True)
    single = {p["repeat"]: p for p in points if p["config"] == "single"}
    table = []
    for label in labels:
        mine = [p for p in points if p["config"] == label]
        table.append({
            "config": label, "infer_per_s": statistics.median(p["infer_per_s"] for p in mine), "per_frontend": statistics.median(p["per_frontend"] for p in mine),
            "cpu_us_per_request": statistics.median(p["cpu_us_per_request"] for p in mine),
            "cpu_vs_single": statistics.median(p["cpu_us_per_request"] / single[p["repeat"]]["cpu_us_per_request"] for p in mine),
            "p50_ms": statistics.median(p["p50_ms"] for p in mine), "c1_p50_ms": statistics.median(p["c1_p50_ms"] for p in mine),
            "c1_p50_vs_single_ms": statistics.median(p["c1_p50_ms"] - single[p["repeat"]]["c1_p50_ms"] for p in mine),
        })  # fmt: skip
    print("\n| configuration | req/s | req/s per front end | CPU us/request | CPU vs single | c64 p50 ms | c1 p50 ms | c1 p50 vs single |")
    print("|---|---|---|---|---|---|---|---|")
    for row in table:
        name = "single process" if row["config"] == "single" else f"{row['config']} front end(s) + engine"
        print(f"| {name} | {row['infer_per_s']:.0f} | {row['per_frontend']:.0f} | {row['cpu_us_per_request']:.0f} | {row['cpu_vs_single']:.2f}x | "
              f"{row['p50_ms']:.2f} | {row['c1_p50_ms']:.3f} | {row['c1_p50_vs_single_ms']:+.3f} ms |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"server_cpus": args.server_cpus, "generator_cpus": args.generator_cpus, "concurrency": args.concurrency,
                                        "cpus": os.cpu_count(), "points": points, "table": table}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
