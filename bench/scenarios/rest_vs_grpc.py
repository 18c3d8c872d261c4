"""REST v2 against gRPC: the same server, model and load, side by side in one run.

    python -m bench.scenarios.rest_vs_grpc [--rows 1] [--concurrency 16] [--duration-s 4] [--warmup-s 1] [--rounds 3] [--out results.json]

One ``surge serve`` (gRPC and REST on, metrics on) serves the demo repository pinned to CPU 0 (``taskset -c 0``);
this process, pinned to CPU 1, runs closed loops of ``--concurrency`` requests in flight against the demo
``mlp`` (``--rows`` rows of 16 FP32 per request) three ways, in rounds whose order rotates (so drift on a
shared machine hits all alike):

- ``grpc``: raw grpc.aio, the ModelInfer request serialised once, responses not parsed;
- ``rest-binary``: aiohttp client, Triton's binary tensor extension both ways (what tritonclient.http sends);
- ``rest-json``: aiohttp client, tensors as JSON lists both ways (what curl users send).

Per round: throughput, p50/p99 latency, and the server's CPU time per answered request (from /proc), which
is what the edge costs the server whatever the client side manages (the HTTP client here is Python, the
gRPC one is C core: throughput compares the pairs, CPU per request compares the servers' work). Prints one
JSON line per round and a summary: medians per mode, their ratios to gRPC, and the medians of each round's
ratios (``*_paired``: the three modes of a round run back to back, so slow drift on a shared box cancels more).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np

from bench.scenarios.closed_loop import cpu_seconds
from bench.scenarios.metrics_overhead import request_bytes, surge_server

METHOD = "/inference.GRPCInferenceService/ModelInfer"
LOAD_CPU = 1
MODES = ("grpc", "rest-binary", "rest-json")


def rest_payloads(rows: int, seed: int = 0) -> dict[str, tuple[bytes, dict[str, str]]]:
    x = np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16], "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
    binary = (head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})
    as_json = (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16], "data": x.ravel().tolist()}]}).encode(),
               {"Content-Type": "application/json"})  # fmt: skip
    return {"rest-binary": binary, "rest-json": as_json}


async def closed_loop(mode: str, grpc_address: str, http_address: str, rows: int, concurrency: int, warmup_s: float, duration_s: float,
                      server_pid: int) -> dict:  # fmt: skip
    latencies: list[float] = []
    errors = 0
    if mode == "grpc":
        channel = grpc.aio.insecure_channel(grpc_address)
        payload = request_bytes(rows)
        grpc_call = channel.unary_unary(METHOD)

        async def call() -> None:
            await grpc_call(payload, timeout=30)
    else:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
        body, headers = rest_payloads(rows)[mode]
        url = f"http://{http_address}/v2/models/mlp/infer"

        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

    try:
        for _ in range(50):
            await call()
        start = time.perf_counter()
        measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

        async def worker() -> None:
            nonlocal errors
            clock = time.perf_counter
            while (t0 := clock()) < stop_at:
                try:
                    await call()
                except (grpc.aio.AioRpcError, RuntimeError, aiohttp.ClientError):
                    errors += 1
                    continue
                if t0 >= measure_from:
                    latencies.append(clock() - t0)

        cpu: list[float] = []

        async def cpu_probe() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            cpu.append(cpu_seconds(server_pid))
            await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
            cpu.append(cpu_seconds(server_pid))

        await asyncio.gather(cpu_probe(), *(worker() for _ in range(concurrency)))
    finally:
        await (channel.close() if mode == "grpc" else session.close())
    if not latencies:
        raise RuntimeError(f"{mode}: no request finished inside the {duration_s} s window (a stalled machine?); use longer windows")
    lat = np.array(latencies) * 1e3
    return {"mode": mode, "infer_per_s": len(latencies) / duration_s, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "requests": len(latencies), "errors": errors, "server_cpu_us_per_request": (cpu[1] - cpu[0]) / len(latencies) * 1e6}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.sched_setaffinity(0, {LOAD_CPU})
    from surge.server.demo import write_demo_repository

    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="surge-rest-bench-") as tmp:
        repository = write_demo_repository(Path(tmp) / "repository")
        http_port = _free_port()
        with surge_server(repository, Path(tmp), metrics=True, extra=("--http-port", str(http_port))) as (grpc_address, _, pid):
            for round_index in range(args.rounds):
                order = MODES[round_index % 3 :] + MODES[: round_index % 3]
                for mode in order:
                    result = asyncio.run(closed_loop(mode, grpc_address, f"127.0.0.1:{http_port}", args.rows, args.concurrency,
                                                     args.warmup_s, args.duration_s, pid))  # fmt: skip
                    result["round"] = round_index
                    print(json.dumps(result), flush=True)
                    results.append(result)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results if r["mode"] == mode)

    summary = {
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, shared)", "rows": args.rows, "concurrency": args.concurrency,
        "rounds": args.rounds, "duration_s": args.duration_s,
        **{mode: {k: round(median(mode, k), 3) for k in ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")} for mode in MODES},
    }  # fmt: skip
    def paired(mode: str, key: str) -> float:
        """The median over rounds of the round's mode/gRPC ratio (the three ran back to back: drift cancels more)."""
        by_round = {(r["round"], r["mode"]): r[key] for r in results}
        return statistics.median(by_round[(i, mode)] / by_round[(i, "grpc")] for i in range(args.rounds))

    for mode in MODES[1:]:
        summary[f"{mode}_vs_grpc"] = {
            "throughput": round(summary[mode]["infer_per_s"] / summary["grpc"]["infer_per_s"], 3),
            "server_cpu_per_request": round(summary[mode]["server_cpu_us_per_request"] / summary["grpc"]["server_cpu_us_per_request"], 3),
            "throughput_paired": round(paired(mode, "infer_per_s"), 3),
            "server_cpu_per_request_paired": round(paired(mode, "server_cpu_us_per_request"), 3),
        }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rounds": results}, indent=2))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
