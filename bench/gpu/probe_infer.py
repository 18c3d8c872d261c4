"""Where a batch-1 call of the PyTorch runtime spends its time on a GPU, outside any server.

    python -m bench.gpu.probe_infer [--iterations 2000]

Through Surge on an H200, the runtime's own call (ModelStatistics compute_infer) took 225 us per batch-1 mlp request,
while the same graph replay in a bare loop (bench_torch's in-process cell: copy in, replay, copy out, synchronise)
took 29 us. This loads the runtime exactly as an instance does (``TorchRuntime.load`` in its executor thread) and
times, p50 over ``--iterations`` calls:

- ``TorchRuntime.infer`` from the main thread, and from its executor thread (the server's case);
- each step of its CUDA path in isolation (the contexts it enters, staging, replay, copy out, synchronise);
- the executor round trip alone (submit, a no-op, result), and from an asyncio loop (``run_in_executor``, uvloop
  when present), which is the hop a request makes twice;
- the call after 1 ms idle, as at concurrency 1 in a server;
- the general path vs the staged one (``TorchRuntime._stage``) with the main thread running Python without pause,
  at switch intervals of 5 and 0.5 ms: each torch call lets go of the GIL and must get it back.

Prints one table; ``--json`` writes it. Needs a CUDA GPU (``--cpu`` only checks the script on a CPU box).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.gpu.bench_torch import CONFIG  # noqa: E402  (the same mlp config as the benchmark's Surge cells)
from tests.torch_models import make_mlp, write_torch_model  # noqa: E402

def p50_us(fn, iterations: int) -> float:
    for _ in range(50):
        fn()
    times = np.empty(iterations)
    for i in range(iterations):
        t0 = time.perf_counter_ns()
        fn()
        times[i] = time.perf_counter_ns() - t0
    return float(np.median(times) / 1e3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU: checks the script, measures nothing useful")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure (--cpu checks the script)")
        return 2
    from surge.server.config import load_model_config
    from surge.server.runtimes.torch import TorchRuntime

    n = args.iterations
    rows: dict[str, float] = {}
    executor = ThreadPoolExecutor(1, thread_name_prefix="probe")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mlp"
        config = CONFIG.format(features=256, outputs=16)
        config = config.replace('kind = "gpu"', 'kind = "cpu"') if args.cpu else config
        write_torch_model(folder, make_mlp(), torch.zeros(2, 256), kind="export", config=config)
        config = load_model_config(folder)
        runtime = TorchRuntime()
        executor.submit(runtime.load, folder / "1" / "model.pt2", config, 0).result()
    x = np.frombuffer(np.random.default_rng(0).standard_normal((1, 256), dtype=np.float32).tobytes(), dtype=np.float32).reshape(1, 256)
    inputs, names = {"x": x}, ["y"]

    rows["infer, main thread"] = p50_us(lambda: runtime.infer(inputs, names), n)
    rows["infer, in its executor thread"] = executor.submit(p50_us, lambda: runtime.infer(inputs, names), n).result()
    rows["executor round trip (no-op), from a thread"] = p50_us(lambda: executor.submit(int).result(), n)

    async def hop() -> float:
        loop = asyncio.get_running_loop()
        times = np.empty(n)
        for i in range(n + 50):
            t0 = time.perf_counter_ns()
            await loop.run_in_executor(executor, int)
            if i >= 50:
                times[i - 50] = time.perf_counter_ns() - t0
        return float(np.median(times) / 1e3)

    try:
        import uvloop

        rows["executor round trip (no-op), from uvloop"] = uvloop.run(hop())
    except ImportError:
        rows["executor round trip (no-op), from asyncio"] = asyncio.run(hop())

    # as in a server at concurrency 1: the thread sleeps between requests (1 ms here), and wakes for each call
    def gapped() -> float:
        times = np.empty(n)
        for i in range(n):
            time.sleep(0.001)
            times[i] = executor.submit(_timed, runtime.infer, inputs, names).result()
        return float(np.median(times) / 1e3)

    rows["infer, in its executor thread, 1 ms idle before each call"] = gapped()

    async def served() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        inside, around = np.empty(n), np.empty(n)
        for i in range(n):
            await asyncio.sleep(0.001)
            t0 = time.perf_counter_ns()
            inside[i] = await loop.run_in_executor(executor, _timed, runtime.infer, inputs, names)
            around[i] = time.perf_counter_ns() - t0
        return float(np.median(inside) / 1e3), float(np.median(around) / 1e3)

    try:
        import uvloop

        inside, around = uvloop.run(served())
    except ImportError:
        inside, around = asyncio.run(served())
    rows["infer from uvloop (run_in_executor), 1 ms apart: in the thread"] = inside
    rows["infer from uvloop (run_in_executor), 1 ms apart: round trip"] = around

    # the instance thread behind a busy event loop: the main thread runs Python without pause meanwhile, so each
    # time a torch call lets go of the GIL, the instance thread waits to get it back (up to a switch interval)
    if not args.cpu and runtime._staged:
        staged, x64 = runtime._staged, np.ascontiguousarray(np.repeat(x, 64, axis=0))
        for interval in (0.005, 0.0005):
            sys.setswitchinterval(interval)
            for label, paths in (("general path", {}), ("staged path", staged)):
                runtime._staged = paths
                for batch in (x, x64):
                    future = executor.submit(p50_us, lambda b=batch: runtime.infer({"x": b}, names), max(n // 20, 20))
                    while not future.done():
                        sum(range(100))
                    rows[f"{label}, {len(batch)} rows, main thread busy, switch {interval * 1e3:g} ms"] = future.result()
        sys.setswitchinterval(0.005)
        runtime._staged = staged
        for label, paths in (("general path", {}), ("staged path", staged)):
            runtime._staged = paths
            rows[f"{label}, 64 rows, back to back in its thread"] = executor.submit(p50_us, lambda: runtime.infer({"x": x64}, names), n).result()
        runtime._staged = staged

    if not args.cpu:  # the CUDA path's steps, one at a time, as TorchRuntime._infer_cuda runs them
        stream = runtime._stream
        graph, static, static_out = runtime._graphs[(1, 0)]
        pinned = runtime._pinned["x"]
        host_out = torch.empty((256, 16), pin_memory=True)

        def steps() -> dict[str, float]:
            out: dict[str, float] = {}
            out["step: torch.inference_mode() enter+exit"] = _ctx(torch.inference_mode, n)
            out["step: torch.cuda.stream(s) enter+exit"] = _ctx(lambda: torch.cuda.stream(stream), n)
            host = pinned[:1]
            out["step: pinned[:1] + .numpy()[...] = x"] = p50_us(lambda: pinned[:1].numpy().__setitem__(Ellipsis, x), n)
            with torch.inference_mode(), torch.cuda.stream(stream):
                out["step: static[:1].copy_(host, non_blocking) + sync"] = p50_us(lambda: (static[0][:1].copy_(host, non_blocking=True), stream.synchronize()), n)
                out["step: graph.replay() + sync"] = p50_us(lambda: (graph.replay(), stream.synchronize()), n)
                out["step: out[:1].to('cpu', non_blocking) + sync"] = p50_us(lambda: (static_out[0][:1].to("cpu", non_blocking=True), stream.synchronize()), n)
                out["step: pinned_out[:1].copy_(out[:1], non_blocking) + sync"] = p50_us(
                    lambda: (host_out[:1].copy_(static_out[0][:1], non_blocking=True), stream.synchronize()), n
                )
                out["step: stream.synchronize() (idle stream)"] = p50_us(stream.synchronize, n)

                def whole() -> None:
                    pinned[:1].numpy()[...] = x
                    static[0][:1].copy_(pinned[:1], non_blocking=True)
                    graph.replay()
                    o = static_out[0][:1].to("cpu", non_blocking=True)
                    stream.synchronize()
                    o.numpy()

                out["whole path, contexts entered once"] = p50_us(whole, n)
            return out

        rows.update(executor.submit(steps).result())
    executor.shutdown()

    device = "CPU (script check)" if args.cpu else torch.cuda.get_device_name(0)
    print(f"\nTorchRuntime batch-1 mlp on {device} (torch {torch.__version__}): p50 us over {n} calls")
    for name, us in rows.items():
        print(f"  {name:<58} {us:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "torch": torch.__version__, "p50_us": rows}, indent=2))
    return 0


def _timed(fn, *args) -> int:
    t0 = time.perf_counter_ns()
    fn(*args)
    return time.perf_counter_ns() - t0


def _ctx(make, n: int) -> float:
    def once() -> None:
        with make():
            pass

    return p50_us(once, n)


if __name__ == "__main__":
    sys.exit(main())
