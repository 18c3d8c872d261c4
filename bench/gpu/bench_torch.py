"""GPU benchmark: a torch MLP and a small CNN, in-process eager vs CUDA graphs vs through Surge end to end.

    python -m bench.gpu.bench_torch [--duration-s 4] [--workers 1,4] [--json FILE]

In-process timings include what serving needs too: pinned host input -> device, compute, device -> host,
synchronise (one CUDA stream). Surge runs as a real ``surge serve`` process (torch backend, GPU instances,
CUDA graphs per power-of-two bucket, dynamic batching) driven by ``bench.scenarios.loadgen`` (raw grpc.aio,
pre-serialised requests) pinned to other cores; the batch size Surge formed comes from ModelStatistics
deltas. The gRPC floor (``bench.peers.floor_server``, a precomputed answer) gives the transport's own p50.
With perf_analyzer set up (``.cache/perf_analyzer``), 64-row requests are also driven by it (C++, one channel per
thread, ``PA_CONCURRENCY`` in flight) into ``surge serve --workers N`` for each ``--workers``
count, and into the floor: one Python process's front end caps rows/s below the in-process CUDA-graph figure
(the floor itself reached 38% of it on an H200), so the 64-row target is checked against the best Surge
configuration measured. Prints one table and the issue's two targets; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.torch_models import TinyCNN, make_mlp, write_torch_model  # noqa: E402

#: in-process batch sizes: 128 is the graph bucket that the 64-row cells' formed batches (about 100-160 rows) replay
BATCHES = (1, 64, 128, 256)
#: (rows per request, concurrency) levels driven through Surge
LEVELS = ((1, 1), (1, 32), (64, 8), (256, 4))
#: perf_analyzer's requests in flight for the 64-row cells (sync mode: one thread and one channel each)
PA_CONCURRENCY = 32


class FlatCNN(nn.Module):
    """TinyCNN over flat rows of 3*32*32 floats (so one generator payload shape serves both models)."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = TinyCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(x.view(-1, 3, 32, 32))


MODELS = {"mlp": (lambda: make_mlp(), 256, 16), "cnn": (FlatCNN, 3072, 10)}

CONFIG = """
backend = "torch"
default_model_filename = "model.pt2"
max_batch_size = 256

[[input]]
name = "x"
datatype = "FP32"
dims = [{features}]

[[output]]
name = "y"
datatype = "FP32"
dims = [{outputs}]

[instance_group]
kind = "gpu"
count = 2

[dynamic_batching]
max_queue_delay_s = 0  # dispatch as soon as an instance is free: batches form while both instances are busy
"""


def in_process(module: nn.Module, features: int, rows: int, graphs: bool, iterations: int, device_name: str = "cuda") -> dict:
    """Latency of one batch, host numpy in -> host numpy out, eager or by CUDA graph replay."""
    import contextlib

    device = torch.device(device_name)
    module = module.to(device).eval()
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream() if cuda else None
    host_in = torch.randn(rows, features).pin_memory() if cuda else torch.randn(rows, features)
    static_in = torch.zeros(rows, features, device=device)
    with torch.inference_mode(), (torch.cuda.stream(stream) if cuda else contextlib.nullcontext()):
        for _ in range(3):
            module(static_in)
        if cuda:
            stream.synchronize()
        if graphs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                static_out = module(static_in)
        latencies = []
        for i in range(iterations + 20):
            t0 = time.perf_counter()
            static_in.copy_(host_in, non_blocking=True)
            if graphs:
                graph.replay()
                out = static_out
            else:
                out = module(static_in)
            out.to("cpu", non_blocking=True)
            if cuda:
                stream.synchronize()
            if i >= 20:
                latencies.append(time.perf_counter() - t0)
    lat = np.array(latencies) * 1e3
    return {"rows_per_s": float(rows / (lat.mean() / 1e3)), "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def _start(cmd: list[str], cores: str, address_file: Path, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(["taskset", "-c", cores, *cmd], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 300
    while not address_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{cmd[2:4]} did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process


def loadgen(address: str, model: str, features: int, rows: int, concurrency: int, duration_s: float, cores: str) -> dict:
    cmd = ["taskset", "-c", cores, sys.executable, "-m", "bench.scenarios.loadgen", "--address", address, "--model", model,
           "--features", str(features), "--rows", str(rows), "--concurrency", str(concurrency),
           "--duration-s", str(duration_s), "--warmup-s", "1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    if out.returncode:
        raise SystemExit(f"loadgen failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


#: ModelStatistics' per-request durations (Triton's names): success is the whole server-side request time
STAGES = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def formed_batch(address: str, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of a model, from ModelStatistics."""
    counts = server_stats(address, model)
    return counts["inference_count"], counts["execution_count"]


def server_stats(address: str, model: str) -> dict[str, int]:
    """A model's ModelStatistics counters: inference and execution counts, and each stage's count and total ns."""
    from surge.clients import InferenceClient

    with InferenceClient(address, timeout_s=10) as client:
        (s,) = client.model_statistics(model).model_stats
    counts = {"inference_count": s.inference_count, "execution_count": s.execution_count}
    for stage in STAGES:
        duration = getattr(s.inference_stats, stage)
        counts[f"{stage}_count"], counts[f"{stage}_ns"] = duration.count, duration.ns
    return counts


def stage_means_us(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Mean microseconds per request of each stage between two ModelStatistics readings (as in Triton, a batch's
    compute time counts for each of its requests, so queue and the compute stages add up to success)."""
    requests = max(after["success_count"] - before["success_count"], 1)
    return {stage: (after[f"{stage}_ns"] - before[f"{stage}_ns"]) / requests / 1e3 for stage in STAGES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile-dir", type=Path, help="also profile the Surge server with py-spy (mlp, 1 row x 1 and 64 rows x 8) into this folder")
    parser.add_argument("--workers", default="1,4", help="worker counts for the perf_analyzer 64-row cells ('' skips them)")
    parser.add_argument("--switch-interval-ms", type=float, default=0.0, help="surge serve --switch-interval-ms for every Surge cell (0: Python's 5 ms)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="exercise the whole script on the CPU (no graphs): checks the script, measures nothing useful")
    args = parser.parse_args()
    dry = args.cpu_dry_run
    if not torch.cuda.is_available() and not dry:
        print("no CUDA GPU: nothing to measure (--cpu-dry-run checks the script)")
        return 2
    gpu = "CPU dry run" if dry else torch.cuda.get_device_name(0)
    cpus = os.cpu_count() or 2
    server_cores, load_cores = f"0-{cpus // 2 - 1}", f"{cpus // 2}-{cpus - 1}"
    results: dict = {"gpu": gpu, "torch": torch.__version__, "switch_interval_ms": args.switch_interval_ms, "in_process": {}, "surge": {}, "surge_pa": {}, "targets": {}}

    for name, (build, features, _) in MODELS.items():
        for rows in BATCHES:
            for graphs in (False, True):
                key = f"{name}/{rows}/{'graph' if graphs else 'eager'}"
                if dry:  # no graphs on the CPU: record eager twice so the rest of the script runs
                    results["in_process"][key] = in_process(build(), features, rows, False, 5, "cpu")
                else:
                    results["in_process"][key] = in_process(build(), features, rows, graphs, args.iterations)
                print(f"in-process {key}: {results['in_process'][key]}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        for name, (build, features, outputs) in MODELS.items():
            config = CONFIG.format(features=features, outputs=outputs)
            if dry:
                config = config.replace('kind = "gpu"', 'kind = "cpu"')
            write_torch_model(root / name, build(), torch.zeros(2, features), kind="export", config=config)
        floor_file, surge_file = Path(tmp) / "floor.addr", Path(tmp) / "surge.addr"
        floor = _start([sys.executable, "-m", "bench.peers.floor_server", "--address-file", str(floor_file)], server_cores, floor_file, Path(tmp) / "floor.log")
        try:
            results["floor"] = loadgen(floor_file.read_text(), "tiny", 16, 1, 1, args.duration_s, load_cores)
            print(f"gRPC floor (tiny, concurrency 1): {results['floor']}", flush=True)
            # the same 64-row mlp requests as Surge gets: the most any Python gRPC server answers here
            results["floor_mlp_64x8"] = loadgen(floor_file.read_text(), "mlp", 256, 64, 8, args.duration_s, load_cores)
            results["floor_mlp_64x8"]["rows_per_s"] = results["floor_mlp_64x8"]["infer_per_s"] * 64
            print(f"gRPC floor (mlp, 64 rows x 8): {results['floor_mlp_64x8']}", flush=True)
        finally:
            floor.terminate()
            floor.wait(30)
        surge = _start(
            [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(root), "--grpc-port", "0", "--metrics-port", "0", "--http-port", "-1", "--address-file", str(surge_file),
             "--switch-interval-ms", str(args.switch_interval_ms)],
            server_cores, surge_file, Path(tmp) / "surge.log",
        )
        try:
            address = surge_file.read_text()
            for name, (_, features, _) in MODELS.items():
                for rows, concurrency in LEVELS:
                    before = server_stats(address, name)
                    cell = loadgen(address, name, features, rows, concurrency, args.duration_s, load_cores)
                    after = server_stats(address, name)
                    executions = max(after["execution_count"] - before["execution_count"], 1)
                    cell["rows_per_s"] = cell["infer_per_s"] * rows
                    cell["formed_batch"] = (after["inference_count"] - before["inference_count"]) / executions
                    cell["server_us"] = stage_means_us(before, after)  # warm-up second included: means, not p50
                    results["surge"][f"{name}/{rows}x{concurrency}"] = cell
                    print(f"surge {name} {rows} rows x {concurrency}: {cell}", flush=True)
        finally:
            surge.terminate()
            surge.wait(60)
        if args.workers:
            _workers_cells(results, root, Path(tmp), [int(n) for n in args.workers.split(",")], server_cores, load_cores, args.switch_interval_ms)
        if args.profile_dir:
            _profile(root, Path(tmp), args.profile_dir, server_cores, load_cores, args.duration_s)

    _targets(results)
    _table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _workers_cells(results: dict, root: Path, tmp: Path, counts: list[int], server_cores: str, load_cores: str, switch_ms: float) -> None:
    """64-row requests from perf_analyzer: the floor, then ``surge serve --workers N``."""
    from bench.scenarios import perf_analyzer as pa
    from bench.scenarios import workers as wk

    if not pa.available():
        print("perf_analyzer is not set up (bench/perf_analyzer/setup.sh): no perf_analyzer cells", flush=True)
        return
    floor_file = tmp / "floor-pa.addr"
    floor = _start([sys.executable, "-m", "bench.peers.floor_server", "--address-file", str(floor_file)], server_cores, floor_file, tmp / "floor-pa.log")
    try:
        results["floor_pa_mlp_64"] = wk.perf_analyzer(floor_file.read_text(), PA_CONCURRENCY, load_cores, 2000, model="mlp", features=256, rows=64)
        print(f"gRPC floor (perf_analyzer, mlp, 64 rows x {PA_CONCURRENCY}): {results['floor_pa_mlp_64']}", flush=True)
    finally:
        floor.terminate()
        floor.wait(30)
    for n in counts:
        with wk.surge(root, n, server_cores, tmp / f"w{n}", models=tuple(MODELS), extra=("--switch-interval-ms", str(switch_ms))) as (address, _):
            for name, (_, features, _) in MODELS.items():
                before = formed_batch(address, name)  # the whole server's counts (ModelStatistics asks every worker)
                cell = wk.perf_analyzer(address, PA_CONCURRENCY, load_cores, 2000, model=name, features=features, rows=64)
                after = formed_batch(address, name)
                cell["formed_batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
                results["surge_pa"][f"{name}/64x{PA_CONCURRENCY}/w{n}"] = cell
                print(f"surge --workers {n} {name} 64 rows x {PA_CONCURRENCY} (perf_analyzer): {cell}", flush=True)


#: stacks of the server's start-up (imports, model load, graph capture, warm-up): left out of the profile's summary
_STARTUP = ("_find_and_load", "TorchRuntime.load", "ModelVersion.load", "_warmup", "_capture")


#: innermost Python frames under which C code runs holding the GIL (py-spy --gil samples only the GIL's holder)
_IN_C = {"Runner.run (asyncio/runners.py": "(uvloop and gRPC's Cython callbacks, under the event loop)",
         "Thread.run (threading.py": "(a thread's C target: gRPC's poller)"}  # fmt: skip


def _profile(root: Path, tmp: Path, out: Path, server_cores: str, load_cores: str, duration_s: float) -> None:
    """py-spy profiles of the Surge server for the mlp cells that miss their targets (batch-1 latency, 64-row
    rows/s): py-spy starts the server (tracing a child needs no ptrace rights), writes collapsed stacks
    (``--format raw``: one line per stack with its sample count) when the server exits; the 15 functions with the most
    samples of their own are printed."""
    import collections
    import shutil
    import signal

    found = [shutil.which("py-spy"), *(str(Path(p) / "bin" / "py-spy") for p in sys.path if p)]  # pip --target puts it in bin/
    spy = next((c for c in found if c and Path(c).is_file()), None)
    if spy is None:
        print("py-spy not found (carry its wheel in .whl/): no profile", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    for rows, concurrency in ((1, 1), (64, 8)):
        flame, address_file = out / f"pyspy-mlp-{rows}x{concurrency}.txt", tmp / f"spy-{rows}.addr"
        cmd = [spy, "record", "--format", "raw", "--rate", "500", "--threads", "--gil", "--output", str(flame), "--",
               sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(root), "--grpc-port", "0",
               "--metrics-port", "0", "--http-port", "-1", "--address-file", str(address_file)]  # fmt: skip
        spy_process = _start(cmd, server_cores, address_file, tmp / f"spy-{rows}.log")
        try:
            _wait_ready(address_file.read_text(), list(MODELS))
            cell = loadgen(address_file.read_text(), "mlp", 256, rows, concurrency, 3 * duration_s, load_cores)
            print(f"profiled surge mlp {rows} rows x {concurrency}: {cell}", flush=True)
        finally:
            children = subprocess.run(["pgrep", "-P", str(spy_process.pid)], capture_output=True, text=True).stdout.split()
            for pid in children:  # stop the server: py-spy then writes its file and exits
                os.kill(int(pid), signal.SIGTERM)
            spy_process.wait(120)
        if not flame.is_file():
            print(f"py-spy wrote no profile: {(tmp / f'spy-{rows}.log').read_text()[-800:]}", flush=True)
            continue
        own: collections.Counter[str] = collections.Counter()  # samples by innermost Python function (native code below it included)
        for line in flame.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [f for f in stack.split(";") if ".py:" in f]
            if not count.isdigit() or any(marker in stack for marker in _STARTUP):
                continue
            leaf = frames[-1] if frames else "(no Python frame: C threads, GC, exit)"
            own[next((label for prefix, label in _IN_C.items() if leaf.startswith(prefix)), leaf)] += int(count)
        total = sum(own.values()) or 1
        print(f"py-spy, mlp {rows} rows x {concurrency}: {total} samples of the thread holding the GIL while serving (start-up left out), by innermost Python function:")
        for frame, n in own.most_common(15):
            print(f"  {n / total:6.1%}  {frame}")


def _wait_ready(address: str, names: list[str], timeout_s: float = 300) -> None:
    from surge.clients import InferenceClient

    deadline = time.monotonic() + timeout_s
    with InferenceClient(address, timeout_s=10) as client:
        while not all(client.is_model_ready(name) for name in names):
            if time.monotonic() > deadline:
                raise SystemExit(f"models {names} not ready after {timeout_s:.0f} s at {address}")
            time.sleep(0.2)


def _graph_at(results: dict, name: str, rows: float) -> dict:
    """The in-process CUDA-graph cell at the measured batch size nearest to ``rows``."""
    nearest = min(BATCHES, key=lambda b: abs(b - rows))
    return results["in_process"][f"{name}/{nearest}/graph"]


def _targets(results: dict) -> None:
    floor_p50 = results["floor"]["p50_ms"]
    for name in MODELS:
        cells = {f"{name}/64x8": results["surge"][f"{name}/64x8"]}
        cells.update((key, cell) for key, cell in results["surge_pa"].items() if key.startswith(f"{name}/"))
        ratios = {key: cell["rows_per_s"] / _graph_at(results, name, cell["formed_batch"])["rows_per_s"] for key, cell in cells.items()}
        best = max(ratios, key=ratios.__getitem__)
        ratio = ratios[best]
        one = results["surge"][f"{name}/1x1"]
        budget = results["in_process"][f"{name}/1/graph"]["p50_ms"] + floor_p50 + 0.3
        results["targets"][name] = {
            "rows_ratio_64": float(ratio), "rows_ratio_ok": bool(ratio >= 0.5), "rows_ratio_cell": best,
            "batch1_p50_ms": one["p50_ms"], "batch1_budget_ms": float(budget), "batch1_ok": bool(one["p50_ms"] <= budget),
        }  # fmt: skip


def _table(results: dict) -> None:
    print(f"\nGPU: {results['gpu']} (torch {results['torch']})")
    print(f"{'model':<5} {'rows':>5} {'path':<22} {'rows/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'formed':>7}")
    for key, cell in results["in_process"].items():
        name, rows, kind = key.split("/")
        print(f"{name:<5} {rows:>5} {'in-process ' + kind:<22} {cell['rows_per_s']:>12,.0f} {cell['p50_ms']:>8.3f} {cell['p99_ms']:>8.3f} {'':>7}")
    for key, cell in results["surge"].items():
        name, level = key.split("/")
        rows, concurrency = level.split("x")
        print(f"{name:<5} {rows:>5} {'surge, concurrency ' + concurrency:<22} {cell['rows_per_s']:>12,.0f} {cell['p50_ms']:>8.3f} {cell['p99_ms']:>8.3f} {cell['formed_batch']:>7.1f}")
    for key, cell in results["surge_pa"].items():
        name, level, workers = key.split("/")
        rows, concurrency = level.split("x")
        path = f"surge {workers} c{concurrency} (PA)"
        print(f"{name:<5} {rows:>5} {path:<22} {cell['rows_per_s']:>12,.0f} {cell['p50_ms']:>8.3f} {cell['p99_ms']:>8.3f} {cell['formed_batch']:>7.1f}")
    print("Surge server-side, mean us per request (ModelStatistics): " + ", ".join(STAGES))
    for key, cell in results["surge"].items():
        print(f"  {key:<10} " + " ".join(f"{cell['server_us'][stage]:>9.1f}" for stage in STAGES))
    print(f"gRPC floor p50 (tiny, concurrency 1): {results['floor']['p50_ms']:.3f} ms")
    floor64 = results["floor_mlp_64x8"]
    print(f"gRPC floor, mlp 64 rows x 8 (precomputed answers, no compute): {floor64['rows_per_s']:,.0f} rows/s, p50 {floor64['p50_ms']:.3f} ms")
    if "floor_pa_mlp_64" in results:
        f = results["floor_pa_mlp_64"]
        print(f"gRPC floor, mlp 64 rows x {PA_CONCURRENCY} (perf_analyzer): {f['rows_per_s']:,.0f} rows/s, p50 {f['p50_ms']:.3f} ms")
    for name, t in results["targets"].items():
        print(
            f"target {name}: 64-row rows/s = {t['rows_ratio_64']:.0%} of in-process CUDA graph at the formed batch, best cell {t['rows_ratio_cell']} "
            f"({'met' if t['rows_ratio_ok'] else 'MISSED'}, >= 50%); batch-1 p50 {t['batch1_p50_ms']:.3f} ms vs budget "
            f"{t['batch1_budget_ms']:.3f} ms ({'met' if t['batch1_ok'] else 'MISSED'})"
        )


if __name__ == "__main__":
    sys.exit(main())
