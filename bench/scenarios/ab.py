"""Side by side: Surge at several git revisions (and the gRPC floor), servers started in turn, rounds interleaved.

    python -m bench.scenarios.ab --cells tiny:1:1,tiny:1:64,mlp-large:1:64 --rounds 3 floor fd69268 HEAD

Targets: ``floor`` (bench/peers/floor_server.py; ``floor:hop``, ``floor:model`` and ``floor:batch`` add its ``--work``), ``tree`` (the working tree) or any git revision. Each round
starts every target once, in the given order, and measures every cell (``model:rows:concurrency``) with
perf_analyzer (1.5 s windows, the stability check off). Servers on CPU 0, perf_analyzer on CPU 1, as in
``bench.compare``. Prints, per cell and target, medians over the rounds of infer/s, p50 and p99, the server's
CPU use over the measurement and its CPU per request (use / throughput: less sensitive than throughput to
other work on a shared box), and every round's infer/s. Meant for before/after checks of one change; the
issue's table is ``bench.compare``'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from bench.models import BATCHING, MODELS, write_onnx_files, write_repository

from . import perf_analyzer as pa
from . import targets
from .closed_loop import cpu_seconds

def _cpu_seconds(pattern: str) -> float:
    """User + system CPU seconds of the newest process whose command line matches ``pattern`` (not taskset)."""
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    pids = [p for p in pids if not Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"taskset")]
    return cpu_seconds(int(pids[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="floor, floor:hop, floor:model, floor:batch, tree, or git revisions")
    parser.add_argument("--cells", default="tiny:1:1,tiny:1:64", help="model:rows:concurrency[:s],... (:s: over ModelStreamInfer streams)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--surge-batching", type=json.loads, default={"latency_slo_s": 0.01},
                        help=f"[dynamic_batching] as JSON, or null for none (default SLO mode; bench.compare's default is {json.dumps(BATCHING)})")
    parser.add_argument("--batchings", type=json.loads, default=None,
                        help="a JSON list of [dynamic_batching] tables (null: none): every Surge target is measured with each in turn, "
                             "labelled TARGET#i (compares settings side by side instead of, or as well as, revisions)")  # fmt: skip
    args = parser.parse_args()
    cells = [(m, int(r), int(c), *s) for m, r, c, *s in (cell.split(":") for cell in args.cells.split(","))]
    windows = pa.Windows(interval_ms=1500, stability_pct=100, max_trials=3, warmup_requests=300)
    onnx = write_onnx_files(targets.CACHE / "onnx")
    batchings = args.batchings if args.batchings is not None else [args.surge_batching]
    repos = [write_repository(targets.CACHE / f"repo-ab{i or ''}", onnx, b) for i, b in enumerate(batchings)]
    if args.batchings is not None:
        for i, b in enumerate(batchings):
            print(f"#{i}: {json.dumps(b)}")
        args.targets = [t if t.startswith("floor") else f"{t}#{i}" for t in args.targets for i in (range(len(batchings)) if not t.startswith("floor") else [0])]
    repo_of = {t: repos[int(t.partition("#")[2] or 0)] for t in args.targets}
    sources = {t: targets.surge_source(None if t.partition("#")[0] == "tree" else t.partition("#")[0])[1] for t in args.targets if not t.startswith("floor")}
    results: dict[tuple[str, tuple[str | int, ...]], list[dict]] = {}
    for _ in range(args.rounds):
        for i, target in enumerate(args.targets):
            is_floor = target.startswith("floor")
            server = targets.floor(target.partition(":")[2] or "none") if is_floor else targets.surge(repo_of[target], sources[target], f"ab{i}")
            pattern = "bench.peers.floor_server" if is_floor else f"ab{i}.address"
            with server as address:
                for cell in cells:
                    model, rows, concurrency, *streaming = cell
                    c0, t0 = _cpu_seconds(pattern), time.monotonic()
                    try:
                        m = pa.measure(address, model, MODELS[model].features, rows, concurrency=concurrency, windows=windows, streaming=bool(streaming))
                    except RuntimeError as exc:  # perf_analyzer found no stable windows twice (a busy shared box): this round has no value
                        print(f"{':'.join(map(str, cell))} {target}: no measurement this round ({str(exc).splitlines()[0]})", flush=True)
                        continue
                    m["util"] = (_cpu_seconds(pattern) - c0) / (time.monotonic() - t0)
                    results.setdefault((target, cell), []).append(m)
    for cell in cells:
        for target in args.targets:
            ms = results.get((target, cell), [])
            if not ms:
                print(f"{':'.join(map(str, cell)):16s} {target:12s} no round measured")
                continue

            def med(key: str, ms: list[dict] = ms) -> float:
                return statistics.median(m[key] for m in ms)

            cpu_us = statistics.median(m["util"] / m["infer_per_s"] * 1e6 for m in ms)
            print(f"{':'.join(map(str, cell)):16s} {target:12s} infer/s {med('infer_per_s'):6.0f}  p50 {med('p50_ms'):7.3f}  p99 {med('p99_ms'):7.3f} ms"
                  f"  cpu {med('util'):.2f}  {cpu_us:4.0f} us/req  rounds {[round(m['infer_per_s']) for m in ms]}")


if __name__ == "__main__":
    main()
