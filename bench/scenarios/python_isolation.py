"""What running a Python model in a process of its own costs per request, side by side.

1. Runtime level (no server): the model's ``infer`` called in this process, as the Python backend did
   before it isolated models (``model.infer(dict(inputs), names)`` and ``np.asarray``), against
   ``PythonRuntime.infer`` (arena copy in, control round trip to the child, outputs copied out), for a
   tiny tensor and a 1 MiB one; interleaved rounds, median wall time and CPU time (this thread plus the
   child) per call.
2. Over the wire: ``surge serve`` from a tree without isolation (``--before REV``, extracted with ``git
   archive`` and put first on PYTHONPATH) against this tree, the same tiny Python model, one sequential
   client (concurrency 1); the two servers run at the same time on the server CPU and are measured in
   alternating rounds; p50/p99 per round, medians over rounds.

    taskset -c 1 .venv/bin/python -m bench.scenarios.python_isolation --before a70c21a [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.scenarios.servers import running
from surge.clients import InferenceClient
from surge.server.config import parse_model_config
from surge.server.runtimes.python import PythonRuntime

REPO_ROOT = Path(__file__).resolve().parents[2]
_MODEL_PY = '''
class Model:
    def infer(self, inputs, output_names):
        return {"y": inputs["x"] * 2}
'''
_CONFIG = """
backend = "python"
max_batch_size = 0
[[input]]
name = "x"
datatype = "FP32"
dims = [-1]
[[output]]
name = "y"
datatype = "FP32"
dims = [-1]
"""


def _write_model(root: Path) -> Path:
    (root / "tiny_py" / "1").mkdir(parents=True)
    (root / "tiny_py" / "1" / "model.py").write_text(_MODEL_PY)
    (root / "tiny_py" / "config.toml").write_text(_CONFIG)
    return root / "tiny_py" / "1" / "model.py"


def _cpu_s(pid: int | None) -> float:
    """CPU seconds of this thread, plus those of process ``pid`` (from /proc, in clock ticks) when given."""
    own = time.thread_time()
    if pid is None:
        return own
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return own + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per_call_us(fn, inputs: dict[str, np.ndarray], calls: int, pid: int | None = None) -> tuple[float, float]:
    """(wall, CPU) microseconds per call; CPU counts this thread and process ``pid``."""
    start, cpu = time.perf_counter(), _cpu_s(pid)
    for _ in range(calls):
        fn(inputs, ["y"])
    return (time.perf_counter() - start) / calls * 1e6, (_cpu_s(pid) - cpu) / calls * 1e6


def runtime_level(model_path: Path, rounds: int) -> list[dict]:
    spec = importlib.util.spec_from_file_location("tiny_model", model_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Model()

    def in_process(inputs, names):
        results = model.infer(dict(inputs), list(names))
        return {n: np.asarray(results[n]) for n in names}

    config = parse_model_config("tiny_py", {"backend": "python", "max_batch_size": 0, "input": [{"name": "x", "datatype": "FP32", "dims": [-1]}],
                                            "output": [{"name": "y", "datatype": "FP32", "dims": [-1]}]})  # fmt: skip
    runtime = PythonRuntime()
    runtime.load(model_path, config, 0)
    rows = []
    try:
        for label, size, calls in (("4 x FP32", 4, 5000), ("1 MiB FP32", 1 << 18, 500)):
            inputs = {"x": np.ones(size, np.float32)}
            timings: dict[str, list[tuple[float, float]]] = {"in process": [], "own process": []}
            for _ in range(rounds):
                timings["in process"].append(_per_call_us(in_process, inputs, calls))
                timings["own process"].append(_per_call_us(runtime.infer, inputs, calls, runtime._proc.pid))  # type: ignore[union-attr]
            rows.append({"tensor": label, **{f"{k} {m}": statistics.median(t[i] for t in v) for k, v in timings.items() for i, m in enumerate(("wall", "cpu"))}})
    finally:
        runtime.close()
    return rows


def _before_tree(rev: str, into: Path) -> Path:
    """``git archive REV`` extracted under ``into``; returns a directory to put first on PYTHONPATH."""
    archive = subprocess.run(["git", "archive", rev, "server", "protos", "clients", "kernels"], cwd=REPO_ROOT, check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "pkg" / "surge").mkdir(parents=True)
    for part in ("server", "protos", "clients", "kernels"):
        (into / "pkg" / "surge" / part).symlink_to(into / part)
    return into / "pkg"


def _round(address: str, requests: int) -> list[float]:
    x = {"x": np.ones(4, np.float32)}
    with InferenceClient(address, retries=0, timeout_s=10) as client:
        for _ in range(50):
            client.infer("tiny_py", x)
        latencies = []
        for _ in range(requests):
            start = time.perf_counter()
            client.infer("tiny_py", x)
            latencies.append((time.perf_counter() - start) * 1e3)
    return latencies


def over_the_wire(before: str, rounds: int, requests: int, work: Path) -> dict:
    _write_model(work / "repo")
    pythonpath = _before_tree(before, work / "before")
    serve = [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(work / "repo"), "--grpc-port", "0",
             "--metrics-port", "0", "--http-port", "0", "--log-level", "warning"]  # fmt: skip
    results: dict[str, dict[str, list[float]]] = {"before": {"p50": [], "p99": []}, "after": {"p50": [], "p99": []}}
    with contextlib.ExitStack() as stack:
        addresses = {}
        for name, env in (("before", {"PYTHONPATH": str(pythonpath)}), ("after", {})):
            address_file = work / f"{name}.address"
            addresses[name] = stack.enter_context(running([*serve, "--address-file", str(address_file)], log=work / f"{name}.log", env=env,
                                                          cwd=work, address_file=address_file, models=["tiny_py"]))  # fmt: skip
        for _ in range(rounds):
            for name in ("before", "after"):
                latencies = _round(addresses[name], requests)
                results[name]["p50"].append(float(np.percentile(latencies, 50)))
                results[name]["p99"].append(float(np.percentile(latencies, 99)))
    return {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="a70c21a", help="a revision whose Python backend runs models in process")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per round and server")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="surge-pyiso-") as tmp:
        work = Path(tmp)
        model_path = _write_model(work / "runtime")
        runtime_rows = runtime_level(model_path, args.rounds)
        wire = over_the_wire(args.before, args.rounds, args.requests, work)
    print("| tensor | in process: wall / CPU (us/call) | own process: wall / CPU, both processes (us/call) |")
    print("|---|---:|---:|")
    for r in runtime_rows:
        print(f"| {r['tensor']} | {r['in process wall']:.1f} / {r['in process cpu']:.1f} | {r['own process wall']:.1f} / {r['own process cpu']:.1f} |")
    print()
    print("| server | p50 (ms) | p99 (ms) |")
    print("|---|---:|---:|")
    for name, label in (("before", f"in process ({args.before})"), ("after", "own process (this tree)")):
        print(f"| {label} | {wire[name]['p50']:.3f} | {wire[name]['p99']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"runtime": runtime_rows, "wire": wire, "before": args.before}, indent=2))


if __name__ == "__main__":
    main()
