"""Tensors through system shared memory against the same tensors through protobuf, with Triton's perf_analyzer.

One ``surge serve`` (server CPU) serves the demo ``identity`` model (FP32 [-1, -1] -> the same); perf_analyzer
(generator CPU) sends 4 MiB inputs (one row of 1,048,576 FP32) in alternating rounds: ``--shared-memory
system`` (inputs and outputs in regions perf_analyzer registers; the messages carry only region names) and
plain protobuf (``raw_input_contents`` and ``raw_output_contents``). Each round is one perf_analyzer run (a fixed
request count, about 10 s: perf_analyzer times such a run in whole seconds) at a fixed concurrency; the table gives each mode's median rows/s and p50 over the rounds, and their ratio.

    .venv/bin/python -m bench.scenarios.shared_memory [--rounds 5] [--scale 1.0] [--concurrency 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .perf_analyzer import RUN_SH, available
from .servers import GENERATOR_CPU, pinned, running

REPO_ROOT = Path(__file__).resolve().parents[2]
ELEMENTS = 2**20  # 4 MiB of FP32
MODES = {
    "shared memory": ["--shared-memory", "system", "--output-shared-memory-size", str(4 * ELEMENTS)],
    "protobuf": [],
}
#: Requests per round, about 10 s of each mode here: perf_analyzer measures exactly that many (no stability search,
#: which a busy shared machine fails even at -s 100; the alternating rounds are the repeats).
ROUND_REQUESTS = {"shared memory": 3000, "protobuf": 200}


def one_round(address: str, mode: str, scale: float, concurrency: int) -> dict[str, float]:
    """One perf_analyzer run of a fixed request count."""
    cmd = ["bash", str(RUN_SH), "-m", "identity", "-u", address, "-i", "grpc", "--shape", f"input:{ELEMENTS}",
           "--concurrency-range", str(concurrency), "--request-count", str(max(10, int(ROUND_REQUESTS[mode] * scale))),
           *MODES[mode]]  # fmt: skip
    proc = subprocess.run(pinned(GENERATOR_CPU, cmd), capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    out = proc.stdout + proc.stderr
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", out)
    p50 = re.search(r"p50 latency: (\d+) usec", out)
    if proc.returncode != 0 or throughput is None or p50 is None:
        raise RuntimeError(f"perf_analyzer ({mode}) failed:\n{out[-2000:]}")
    return {"rows_per_s": float(throughput.group(1)), "p50_ms": int(p50.group(1)) / 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the requests per round")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not available():
        print("perf_analyzer is not set up: run bench/perf_analyzer/setup.sh", file=sys.stderr)
        return 2
    from tests.models import write_test_repository

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repository = write_test_repository(work / "repository")
        cmd = [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(repository), "--grpc-port", "0",
               "--http-port", "-1", "--metrics-port", "-1", "--address-file", str(work / "address"), "--log-level", "warning"]  # fmt: skip
        rounds: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        with running(cmd, log=work / "server.log", address_file=work / "address", models=("identity",)) as address:
            for mode in MODES:  # warm-up, not counted
                one_round(address, mode, 0.2 * args.scale, args.concurrency)
            for r in range(args.rounds):
                order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    rounds[mode].append(one_round(address, mode, args.scale, args.concurrency))
                    print(f"round {r + 1} {mode}: {rounds[mode][-1]}", file=sys.stderr)
    summary = {
        mode: {key: statistics.median(x[key] for x in results) for key in ("rows_per_s", "p50_ms")} for mode, results in rounds.items()
    }
    ratio = summary["shared memory"]["rows_per_s"] / summary["protobuf"]["rows_per_s"]
    print(f"4 MiB FP32 inputs to identity, concurrency {args.concurrency}, {args.rounds} alternating rounds of {ROUND_REQUESTS} requests x {args.scale:g} (medians)")
    print("| tensors | rows/s | p50 |")
    print("|---|---:|---:|")
    for mode, values in summary.items():
        print(f"| {mode} | {values['rows_per_s']:.1f} | {values['p50_ms']:.2f} ms |")
    print(f"shared memory / protobuf rows/s: {ratio:.2f}x")
    if args.json is not None:
        args.json.write_text(json.dumps({"rounds": rounds, "median": summary, "ratio": ratio, "args": vars(args) | {"json": str(args.json)}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
