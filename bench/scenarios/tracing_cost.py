"""What tracing costs: ``tiny`` at concurrency 64 served with tracing off and sampled at a ratio, side by side.

    python -m bench.scenarios.tracing_cost [--before REV] [--ratios 0.01] [--rounds 5] [--duration-s 5] [--concurrency 64]

Sides, each a ``surge serve`` pinned to the server CPU (``servers.SERVER_CPU``) and started in turn every round,
the order rotating from round to round: ``before`` (a git revision without tracing, when given: what the
request path's one check costs), ``off`` (this tree, no exporter: the default), and ``ratio=R`` for each ratio
(this tree, ``--trace-exporter otlp-http`` to a receiver in this process that decodes nothing and answers 200;
every span is built and exported for real). The load is ``closed_loop`` from this process on the other CPU: one
pre-serialised request of 1 row of 16 FP32, answers not parsed. Per side: medians over the rounds of infer/s,
p50, p99 and the server's CPU per answered request (less moved than throughput by other work on a shared box);
each cost is also given as the median of the per-round ratios to ``off`` (run back to back).

``--toggle`` (the precise one on a shared machine): one server in this process, pinned to the server CPU, the
load generator a child process on the other CPU; the servicer's tracing is swapped between off and sampled at
the first ``--ratios`` value every ``--duration-s`` (off, on, on, off, ...), exactly as the server switches it.
Same process, memory and sockets on both sides: the paired difference in this process's CPU per answered request
(every thread, the exporter's included) is what tracing costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import uvloop

from bench.models import BATCHING, write_onnx_files, write_repository

from . import targets
from .closed_loop import closed_loop
from .servers import GENERATOR_CPU, SERVER_CPU, free_port, running

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _payload() -> bytes:
    from surge.protos import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    return request.SerializeToString()


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that counts what it gets and answers 200."""

    spans_bytes = 0

    def do_POST(self) -> None:  # noqa: N802
        _Sink.spans_bytes += len(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def _measure(address: str, payload: bytes, concurrency: int, warmup_s: float, duration_s: float, pid: int) -> dict:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)
        for _ in range(50):
            await call(payload, timeout=30)
        return await closed_loop(call, payload, concurrency, warmup_s, duration_s, server_pid=pid)


def _server_pid(address_file: Path) -> int:
    pids = subprocess.run(["pgrep", "-f", str(address_file)], capture_output=True, text=True).stdout.split()
    return int(pids[-1])


def toggle(args: argparse.Namespace, repository: Path, endpoint: str) -> dict:
    """The in-process toggle (see the module docstring); returns the summary."""
    import time

    from surge.server.app import Server, ServerConfig
    from surge.server.observability import tracing

    os.sched_setaffinity(0, {int(SERVER_CPU)})
    ratio = float(args.ratios.split(",")[0])
    on = tracing.from_options(tracing.TraceOptions(exporter="otlp-http", endpoint=endpoint, ratio=ratio))
    server = Server(ServerConfig(model_repository=repository, grpc_port=0, metrics_port=0, http_port=-1))
    loop = uvloop.new_event_loop()
    address = loop.run_until_complete(server.start())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    servicer = server._servicer
    stats = server.repository.get("tiny").stats
    generator = subprocess.Popen(["taskset", "-c", GENERATOR_CPU, sys.executable, "-m", "bench.scenarios.tracing_cost", "--generate", address,
                                  "--concurrency", str(args.concurrency)], cwd=targets.REPO_ROOT)  # fmt: skip
    per_request: dict[str, list[float]] = {"off": [], "on": []}
    throughput: dict[str, list[float]] = {"off": [], "on": []}
    try:
        time.sleep(args.warmup_s + 3)
        for i in range(2 * args.rounds):
            side = ("off", "on")[(i + i // 2) % 2]
            servicer.tracing = on if side == "on" else tracing.DISABLED  # a reference swap, read by the loop thread
            time.sleep(0.3)
            cpu0, served0, t0 = time.process_time(), stats.success.count, time.perf_counter()
            time.sleep(args.duration_s)
            cpu1, served1, t1 = time.process_time(), stats.success.count, time.perf_counter()
            per_request[side].append((cpu1 - cpu0) / (served1 - served0) * 1e6)
            throughput[side].append((served1 - served0) / (t1 - t0))
            print(json.dumps({"window": i, "tracing": side, "server_cpu_us_per_request": per_request[side][-1], "infer_per_s": throughput[side][-1]}), flush=True)
    finally:
        generator.kill()
        generator.wait()
        loop.call_soon_threadsafe(loop.stop)
        on.shutdown()
    ratios = [a / b for a, b in zip(per_request["on"], per_request["off"])]
    return {"mode": "toggle", "ratio": ratio, "concurrency": args.concurrency, "window_s": args.duration_s, "windows_per_side": args.rounds,
            "on_cpu_us_per_request": statistics.median(per_request["on"]), "off_cpu_us_per_request": statistics.median(per_request["off"]),
            "paired_cpu_per_request_cost_pct": 100 * (statistics.median(ratios) - 1), "otlp_bytes_received": _Sink.spans_bytes,
            "on_infer_per_s": statistics.median(throughput["on"]), "off_infer_per_s": statistics.median(throughput["off"]),
            "throughput_cost_pct": 100 * (1 - statistics.median(throughput["on"]) / statistics.median(throughput["off"])),
            "paired_throughput_cost_pct": 100 * (1 - statistics.median(a / b for a, b in zip(throughput["on"], throughput["off"])))}  # fmt: skip


async def _generate(address: str, concurrency: int) -> None:
    await _measure(address, _payload(), concurrency, 0.0, 3600.0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toggle", action="store_true", help="one in-process server, tracing switched off and on in turn")
    parser.add_argument("--generate", metavar="ADDRESS", help=argparse.SUPPRESS)  # --toggle's load generator
    parser.add_argument("--before", help="also measure this git revision (Surge before tracing)")
    parser.add_argument("--ratios", default="0.01", help="comma-separated sampling ratios to measure (default 0.01)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    args = parser.parse_args()
    if args.generate:
        uvloop.run(_generate(args.generate, args.concurrency))
        return
    repository = write_repository(targets.CACHE / "repo-tracing", {"tiny": write_onnx_files(targets.CACHE / "onnx")["tiny"]}, BATCHING)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    if args.toggle:
        summary = toggle(args, repository, endpoint)
        summary["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
        print(json.dumps({"summary": summary}), flush=True)
        return
    os.sched_setaffinity(0, {int(GENERATOR_CPU)})
    sides: dict[str, tuple[dict[str, str], list[str]]] = {}
    if args.before:
        sides["before"] = (targets.surge_source(args.before)[1], [])
    sides["off"] = ({}, [])
    for ratio in args.ratios.split(","):
        sides[f"ratio={ratio}"] = ({}, ["--trace-exporter", "otlp-http", "--trace-endpoint", endpoint, "--trace-ratio", ratio])
    payload = _payload()
    results: dict[str, list[dict]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(args.rounds):
        for name in names[i % len(names):] + names[: i % len(names)]:
            env, flags = sides[name]
            address_file = targets.CACHE / "run" / f"tracing-{name}.address"
            address_file.parent.mkdir(parents=True, exist_ok=True)
            address_file.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(repository),
                   "--grpc-port", "0", "--http-port", "-1", "--metrics-port", str(free_port()), "--address-file", str(address_file),
                   "--log-level", "warning", "--drain-timeout-s", "2", *flags]  # fmt: skip
            with running(cmd, log=targets.LOGS / f"tracing-{name}.log", env=env, cwd=targets.REPO_ROOT, address_file=address_file, models=["tiny"]) as address:
                r = uvloop.run(_measure(address, payload, args.concurrency, args.warmup_s, args.duration_s, _server_pid(address_file)))
            results[name].append(r)
            print(json.dumps({"round": i, "side": name, **{k: r[k] for k in ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")}}), flush=True)
    keys = ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")
    summary = {
        "concurrency": args.concurrency, "rounds": args.rounds, "duration_s": args.duration_s, "server_cpu": SERVER_CPU, "load_cpu": GENERATOR_CPU,
        "medians": {name: {k: statistics.median(r[k] for r in runs) for k in keys} for name, runs in results.items()},
        "paired_vs_off_pct": {
            name: {
                "throughput_cost": 100 * (1 - statistics.median(a["infer_per_s"] / b["infer_per_s"] for a, b in zip(runs, results["off"]))),
                "cpu_per_request_cost": 100 * (statistics.median(a["server_cpu_us_per_request"] / b["server_cpu_us_per_request"]
                                                                 for a, b in zip(runs, results["off"])) - 1),
            }
            for name, runs in results.items() if name != "off"
        },
        "otlp_bytes_received": _Sink.spans_bytes,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}",
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip(),
    }  # fmt: skip
    print(json.dumps({"summary": summary}, indent=1), flush=True)
    sink.shutdown()


if __name__ == "__main__":
    main()
