"""Worker scaling: infer/s of ``surge serve --workers N`` on the ``tiny`` model, measured with perf_analyzer.

    python -m bench.scenarios.workers                                  # 2-core box: 1 vs 2 workers, all on CPUs 0-1
    python -m bench.scenarios.workers --workers 1,4,8 --repeats 3      # a 16-core machine
    python -m bench.scenarios.workers --server-cpus 0-11 --generator-cpus 12-15 --concurrency 64 --out bench/results/workers.json

Needs perf_analyzer (``bash bench/perf_analyzer/setup.sh`` caches it under .cache/) and nothing from the network.
``tiny`` (y = x + 1 over 16 floats, one row per request, no dynamic batching) is pure serving overhead, the
case workers are for. Each repeat runs every worker count once, in turn (1, 2, 1, 2, ...), each on a fresh
server; the table gives medians over repeats and each count's throughput relative to 1 worker. On a shared
box each measurement first waits (up to ``--wait-idle-s``) for other work to stop, and records the CPU other
processes used while it ran (``contention.Meter``, in cores).

Pinning (``taskset``): the server (the supervisor, its workers and their ONNX Runtime threads) on
``--server-cpus``, perf_analyzer on ``--generator-cpus``. Defaults: with 4 or more CPUs, the generator gets
the last quarter (at least 2) and the server the rest; with fewer, both get every CPU and compete (say so when
reporting). perf_analyzer runs synchronous, ``--concurrency`` threads, each with its own gRPC channel
(``TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=1``): SO_REUSEPORT spreads *connections*, so a load
generator with one shared connection would reach one front end only. The table shows how many requests each
front end sent the engine (``surge_engine_requests_total``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc

from bench.models import MODELS, write_onnx_files, write_repository
from prometheus_client.parser import text_string_to_metric_families

from surge.protos import grpc_service_pb2_grpc as pb_grpc

from .contention import Meter, wait_idle
from .servers import _model_ready, _stop

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_SH = REPO_ROOT / "bench" / "perf_analyzer" / "run.sh"
MODEL = "tiny"


def default_cpus() -> tuple[str, str]:
    """(server CPUs, generator CPUs) as taskset lists, from the CPUs this process may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 4:
        every = ",".join(map(str, cpus))
        return every, every
    generator = max(2, len(cpus) // 4)
    return ",".join(map(str, cpus[:-generator])), ",".join(map(str, cpus[-generator:]))


@contextlib.contextmanager
def surge(repository: Path, workers: int, cpus: str, workdir: Path, timeout_s: float = 180.0, models: tuple[str, ...] = (MODEL,),
          extra: tuple[str, ...] = ()) -> Iterator[tuple[str, Path | None]]:  # fmt: skip
    """``surge serve --workers N [extra]`` pinned to ``cpus``; yields (address, the supervisor's metrics address or None)
    once every one of ``models`` is ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    address_file, log = workdir / "address", workdir / "server.log"
    address_file.unlink(missing_ok=True)
    cmd = ["taskset", "-c", cpus, sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(repository),
           "--grpc-port", "0", "--metrics-port", "0", "--http-port", "-1", "--address-file", str(address_file), "--log-level", "info",
           "--workers", str(workers), *extra]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True)
    (workdir / "pid").write_text(str(proc.pid))  # taskset execs surge: the server's own pid (frontends.py reads its CPU time)
    try:
        deadline = time.monotonic() + timeout_s
        while not (address_file.is_file() and address_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"surge serve --workers {workers} did not start; log {log}:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        address = address_file.read_text().strip()
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not all(_model_ready(stub, model) for model in models):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"surge serve --workers {workers}: models {models} not ready after {timeout_s:.0f} s; log {log}")
                time.sleep(0.1)
        text = log.read_text()
        match = re.search(r"metrics of all workers on http://(\S+)/metrics", text)
        yield address, match.group(1) if match else None
    finally:
        _stop(proc)


def served_per_worker(metrics: str | None) -> list[int]:
    """Requests each front end sent the engine so far (``surge_engine_requests_total`` on the supervisor's page)."""
    if not metrics:
        return []
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=30) as response:
        text = response.read().decode()
    counts = {int(s.labels["front_end"]): int(s.value) for f in text_string_to_metric_families(text) if f.name == "surge_engine_requests"
              for s in f.samples if s.name.endswith("_total")}  # fmt: skip
    return [counts[i] for i in sorted(counts)]


def perf_analyzer(address: str, concurrency: int, cpus: str, interval_ms: int, model: str = MODEL, features: int = 0, rows: int = 1) -> dict:
    """One perf_analyzer measurement: infer/s (requests), rows/s, p50 and p99 (ms), stable or not; one channel per thread."""
    features = features or MODELS[model].features
    base = ["taskset", "-c", cpus, "bash", str(RUN_SH), "-m", model, "-x", "1", "-u", address, "-i", "grpc", "--sync",
            "-b", str(rows), "--shape", f"x:{features}", "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-interval", str(interval_ms), "--warmup-request-count", "200"]  # fmt: skip
    env = dict(os.environ, TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT="1")
    output = ""
    for stability, stable in ((["-s", "25", "-r", "6"], True), (["-s", "100", "-r", "3"], False)):
        with tempfile.TemporaryDirectory() as tmp:
            csv_path = Path(tmp) / "out.csv"
            proc = subprocess.run([*base, *stability, "-f", str(csv_path)], capture_output=True, text=True, env=env, timeout=600)
            if proc.returncode == 0 and csv_path.is_file():
                with open(csv_path, newline="") as f:
                    row = next(csv.DictReader(f))
                served = float(row["Inferences/Second"])  # perf_analyzer counts rows
                return {"infer_per_s": served / rows, "rows_per_s": served, "p50_ms": float(row["p50 latency"]) / 1e3,
                        "p99_ms": float(row["p99 latency"]) / 1e3, "stable": stable}  # fmt: skip
            output = proc.stdout + proc.stderr
    raise RuntimeError(f"perf_analyzer failed against {address}:\n{output[-1500:]}")


def main(argv: list[str] | None = None) -> int:
    server_default, generator_default = default_cpus()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="", help="worker counts, comma-separated (default 1,2 below 8 CPUs, else 1,4,8)")
    parser.add_argument("--concurrency", type=int, default=0, help="perf_analyzer threads/requests in flight (default 8 x the most workers)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all worker counts (default 3)")
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer measurement window (default 3000)")
    parser.add_argument("--server-cpus", default=server_default, help=f"taskset CPUs of the server (default {server_default})")
    parser.add_argument("--generator-cpus", default=generator_default, help=f"taskset CPUs of perf_analyzer (default {generator_default})")
    parser.add_argument("--wait-idle-s", type=float, default=60.0,
                        help="before each measurement, wait up to this long for other work on the box to stop (default 60; 0: never)")
    parser.add_argument("--out", type=Path, help="also write the points and the table as JSON here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the server being measured
    if not (REPO_ROOT / ".cache" / "perf_analyzer" / "bin" / "perf_analyzer").is_file():
        print("perf_analyzer is not set up: run bash bench/perf_analyzer/setup.sh", file=sys.stderr)
        return 2
    counts = [int(n) for n in args.workers.split(",")] if args.workers else ([1, 2] if len(os.sched_getaffinity(0)) < 8 else [1, 4, 8])
    concurrency = args.concurrency or 8 * max(counts)
    work = REPO_ROOT / ".cache" / "bench-workers"
    onnx = write_onnx_files(work / "onnx")
    repository = write_repository(work / "repository", {MODEL: onnx[MODEL]}, None)
    print(f"tiny model, 1 row/request, perf_analyzer --sync concurrency {concurrency}; server CPUs {args.server_cpus}, "
          f"generator CPUs {args.generator_cpus}; {args.repeats} repeats; {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    points: list[dict] = []
    for repeat in range(args.repeats):
        for n in counts:
            with surge(repository, n, args.server_cpus, work / f"w{n}") as (address, metrics):
                if args.wait_idle_s > 0:
                    wait_idle(args.wait_idle_s, lambda line: print(line, flush=True))
                before = served_per_worker(metrics)
                with Meter() as meter:  # CPU used by processes outside this benchmark while it measured
                    result = perf_analyzer(address, concurrency, args.generator_cpus, args.interval_ms)
                after = served_per_worker(metrics)
            share = [b - a for a, b in zip(before, after)] if before else []
            points.append({"repeat": repeat, "workers": n, **result, "per_worker": share, "foreign_cores": meter.foreign_cores})
            print(f"  repeat {repeat} workers {n}: {result['infer_per_s']:8.0f} infer/s  p50 {result['p50_ms']:.2f} ms  "
                  f"p99 {result['p99_ms']:.2f} ms{'' if result['stable'] else ' (unstable)'}  per worker {share}  "
                  f"other work {meter.foreign_cores:.2f} cores", flush=True)  # fmt: skip
    table = []
    for n in counts:
        mine = [p for p in points if p["workers"] == n]
        table.append({"workers": n, "infer_per_s": statistics.median(p["infer_per_s"] for p in mine),
                      "p50_ms": statistics.median(p["p50_ms"] for p in mine), "p99_ms": statistics.median(p["p99_ms"] for p in mine)})  # fmt: skip
    base = table[0]["infer_per_s"]
    first = {p["repeat"]: p["infer_per_s"] for p in points if p["workers"] == counts[0]}
    print(f"\n| workers | infer/s (median) | vs {counts[0]} (medians) | vs {counts[0]} (median of per-repeat ratios) | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for row in table:
        row["relative"] = row["infer_per_s"] / base
        row["paired"] = statistics.median(p["infer_per_s"] / first[p["repeat"]] for p in points if p["workers"] == row["workers"])
        print(f"| {row['workers']} | {row['infer_per_s']:.0f} | {row['relative']:.2f}x | {row['paired']:.2f}x | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"server_cpus": args.server_cpus, "generator_cpus": args.generator_cpus, "concurrency": concurrency,
                                        "cpus": os.cpu_count(), "points": points, "table": table}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
