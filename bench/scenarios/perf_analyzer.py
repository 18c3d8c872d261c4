"""Run Triton's perf_analyzer (``bench/perf_analyzer/run.sh``) on the generator CPU and parse its CSV.

One call measures one concurrency (or one request rate, open loop): ``--async``, time windows, ``-x 1``
(every target serves version 1). A level perf_analyzer cannot stabilise within the trials is measured
again with the stability check off (``-s 100``: the first windows are taken) and marked unstable.
"""

from __future__ import annotations

import csv
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .servers import GENERATOR_CPU, pinned

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_SH = REPO_ROOT / "bench" / "perf_analyzer" / "run.sh"
BINARY = REPO_ROOT / ".cache" / "perf_analyzer" / "bin" / "perf_analyzer"


@dataclass(frozen=True)
class Windows:
    interval_ms: int = 2000
    stability_pct: int = 25
    max_trials: int = 6
    warmup_requests: int = 200


def available() -> bool:
    return BINARY.is_file()


def measure(address: str, model: str, features: int, rows: int, *, concurrency: int = 0, rate: float = 0.0,
            windows: Windows = Windows(), streaming: bool = False) -> dict:  # fmt: skip
    """infer_per_s (requests), rows_per_s, p50_ms, p99_ms, generator_cpu, stable; raises RuntimeError on failure.

    ``streaming``: the requests go over ModelStreamInfer streams (``--streaming``) instead of ModelInfer calls."""
    load = ["--request-rate-range", f"{rate:g}"] if rate else ["--concurrency-range", str(concurrency)]
    if streaming:
        load.append("--streaming")
    base = ["-m", model, "-x", "1", "-u", address, "-i", "grpc", "--async", "-b", str(rows), "--shape", f"x:{features}",
            "--measurement-interval", str(windows.interval_ms), "--warmup-request-count", str(windows.warmup_requests), *load]  # fmt: skip
    result, output = _run(base + ["-s", str(windows.stability_pct), "-r", str(windows.max_trials)], rows)
    if result is None:
        result, output = _run(base + ["-s", "100", "-r", "3"], rows)
        if result is None:
            raise RuntimeError(f"perf_analyzer failed on {model} at {address} ({' '.join(load)}):\n{output[-1500:]}")
        result["stable"] = False
    return result


def _run(args: list[str], rows: int) -> tuple[dict | None, str]:
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "out.csv"
        before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        proc = subprocess.run(pinned(GENERATOR_CPU, ["bash", str(RUN_SH), *args, "-f", str(csv_path)]), capture_output=True, text=True, timeout=300)
        wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0 or not csv_path.is_file():
            return None, proc.stdout + proc.stderr
        with open(csv_path, newline="") as f:
            row = next(csv.DictReader(f))
    infer = float(row["Inferences/Second"])  # perf_analyzer counts rows (batch size x requests)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / wall
    return {"infer_per_s": infer / rows, "rows_per_s": infer, "p50_ms": float(row["p50 latency"]) / 1e3,
            "p99_ms": float(row["p99 latency"]) / 1e3, "generator_cpu": cpu, "stable": True}, ""  # fmt: skip
