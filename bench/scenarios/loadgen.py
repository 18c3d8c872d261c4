"""A Python asyncio load generator over raw grpc.aio (uvloop), for targets perf_analyzer cannot drive.

    python -m bench.scenarios.loadgen --address HOST:PORT --model mlp --features 256 [--rows 1]
        [--concurrency 1,8,64] [--duration-s 3] [--warmup-s 1] [--repeats 1]

Closed loop: N tasks each send a request as soon as their previous one is answered. The request is
serialised once (random FP32 rows as raw_input_contents) and sent as bytes; responses are not parsed
(an error status still raises), so the generator's own cost per request is the gRPC client's alone.
Prints one JSON object per level: infer_per_s, p50_ms, p99_ms, errors, requests, and generator_cpu (this
process's CPU over the window as a share of one core: near 1.0 means the generator may be the bottleneck).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(model: str, features: int, rows: int, seed: int = 0) -> bytes:
    from surge.protos import grpc_service_pb2 as pb

    data = np.random.default_rng(seed).standard_normal((rows, features)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[rows, features])
    request.outputs.add(name="y")
    request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


async def closed_loop(call: grpc.aio.UnaryUnaryMultiCallable, payload: bytes, concurrency: int, warmup_s: float, duration_s: float) -> dict:
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

    async def worker() -> None:
        nonlocal errors
        clock = time.perf_counter
        while True:
            t0 = clock()
            if t0 >= stop_at:
                return
            try:
                await call(payload)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            if t0 >= measure_from:
                latencies.append(clock() - t0)

    probe = asyncio.create_task(_cpu_share(warmup_s, duration_s))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _summary(latencies, errors, duration_s, await probe, concurrency=concurrency)


async def open_loop(call: grpc.aio.UnaryUnaryMultiCallable, payload: bytes, rate: float, warmup_s: float, duration_s: float) -> dict:
    """Requests at a fixed rate (per second), whatever the answers' pace: latency under a given offered load."""
    latencies: list[float] = []
    errors = 0
    tasks: set[asyncio.Task] = set()
    start = time.perf_counter()
    measure_from = start + warmup_s

    async def one(t0: float) -> None:
        nonlocal errors
        try:
            await call(payload)
        except grpc.aio.AioRpcError:
            errors += 1
            return
        if t0 >= measure_from:
            latencies.append(time.perf_counter() - t0)

    probe = asyncio.create_task(_cpu_share(warmup_s, duration_s))
    n = int(rate * (warmup_s + duration_s))
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due))  # latency from the scheduled moment: no coordinated omission
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return _summary(latencies, errors, duration_s, await probe, rate=rate)


async def _cpu_share(warmup_s: float, duration_s: float) -> float:
    """This process's CPU time (all threads, gRPC's included) over the measured window, as a share of one core."""
    await asyncio.sleep(warmup_s)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(duration_s)
    return (time.process_time() - cpu0) / (time.perf_counter() - wall0)


def _summary(latencies: list[float], errors: int, duration_s: float, cpu_share: float, **key: float) -> dict:
    lat = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {**key, "infer_per_s": len(latencies) / duration_s, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": errors, "requests": len(latencies),
            "generator_cpu": cpu_share}  # fmt: skip


async def run(args: argparse.Namespace) -> None:
    payload = request_bytes(args.model, args.features, args.rows)
    options = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
    async with grpc.aio.insecure_channel(args.address, options=options) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out
        await call(payload, timeout=30)  # connect, and fail fast on a wrong model
        levels = [("rate", float(r)) for r in args.rate.split(",")] if args.rate else [("concurrency", int(c)) for c in args.concurrency.split(",")]
        for kind, level in levels:
            results = []
            for _ in range(args.repeats):
                if kind == "rate":
                    results.append(await open_loop(call, payload, level, args.warmup_s, args.duration_s))
                else:
                    results.append(await closed_loop(call, payload, int(level), args.warmup_s, args.duration_s))
            best = sorted(results, key=lambda r: r["infer_per_s"])[len(results) // 2]  # the median repeat
            print(json.dumps({**best, "rows": args.rows, "repeats": [r["infer_per_s"] for r in results]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", type=int, required=True)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--rate", default="", help="open loop: comma-separated request rates (per second) instead of concurrency")
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
