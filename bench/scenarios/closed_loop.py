"""A closed-loop gRPC load of one pre-serialised request, and the server's CPU time over the measured window.

``closed_loop(call, payload, concurrency, warmup_s, duration_s)``: ``concurrency`` workers, each sending as soon
as its previous answer came, for ``warmup_s + duration_s``; latencies are kept for the window after the warm-up.
With ``server_pid``, also the server's CPU time per answered request over the window: unlike throughput, it does
not move when other processes take the server's CPU away (a shared machine). ``alongside``: coroutine functions
run during the load, each given the time (``time.perf_counter()``) at which the load stops.
Used by ``metrics_overhead.py`` and ``shadow_cost.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far, from /proc (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loop(call: Any, payload: bytes, concurrency: int, warmup_s: float, duration_s: float, *, server_pid: int = 0,
                      alongside: Sequence[Callable[[float], Awaitable[None]]] = ()) -> dict:  # fmt: skip
    """infer_per_s, p50_ms, p99_ms, requests, errors, server_cpu_us_per_request (None without ``server_pid``)."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s
    cpu: list[float] = []

    async def worker() -> None:
        nonlocal errors
        clock = time.perf_counter
        while (t0 := clock()) < stop_at:
            try:
                await call(payload, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            if t0 >= measure_from:
                latencies.append(clock() - t0)

    async def cpu_probe() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu.append(cpu_seconds(server_pid))
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        cpu.append(cpu_seconds(server_pid))

    await asyncio.gather(*(f(stop_at) for f in alongside), *([cpu_probe()] if server_pid else []), *(worker() for _ in range(concurrency)))
    lat = np.array(latencies) * 1e3
    return {"infer_per_s": len(latencies) / duration_s, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "requests": len(latencies), "errors": errors,
            "server_cpu_us_per_request": (cpu[1] - cpu[0]) / len(latencies) * 1e6 if len(cpu) == 2 and latencies else None}  # fmt: skip
