"""Surge against MLServer 1.7 on one cell, the same generator for both, rounds interleaved.

    python -m bench.scenarios.vs_mlserver [--model mlp] [--concurrency 64] [--rounds 3] [--batching JSON] [REVISION ...]

Each round starts every Surge revision (``tree`` or a git revision; with ``bench.models.BATCHING``) and every
MLServer configuration (``bench.peers.mlserver.CONFIGS``: one process or one worker, adaptive batching off or on)
in turn on the server CPU, and drives each with ``bench.scenarios.loadgen`` (raw grpc.aio ModelInfer, the request
serialised once) on the generator CPU. ``floor`` among the revisions adds the gRPC floor
(``bench/peers/floor_server.py``: precomputed answers, no model): the most any grpc.aio server can serve there. Prints, per target, the median infer/s over the rounds and every round's,
then each Surge revision's ratio to the best MLServer configuration: of the medians, and the median of each round's
ratio to that round's best configuration. The MLServer venv is made on first use.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from bench.models import (
    BATCHING,
    BATCHING_PER_MODEL,
    MODELS,
    write_onnx_files,
    write_repository,
)
from bench.peers import mlserver as mls

from . import targets
from .servers import GENERATOR_CPU, pinned


def _load(address: str, model: str, concurrency: int) -> float:
    cmd = [sys.executable, "-m", "bench.scenarios.loadgen", "--address", address, "--model", model, "--features", str(MODELS[model].features),
           "--concurrency", str(concurrency), "--duration-s", "3", "--warmup-s", "1"]  # fmt: skip
    proc = subprocess.run(pinned(GENERATOR_CPU, cmd), capture_output=True, text=True, cwd=targets.REPO_ROOT, timeout=300, check=True)
    result = json.loads(proc.stdout.splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} errors against {address}")
    return float(result["infer_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="*", default=["tree"], help="tree, git revisions, or floor (bench/peers/floor_server.py: the gRPC floor)")
    parser.add_argument("--model", default="mlp", choices=sorted(MODELS))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batching", help="Surge's batching table for every model, as JSON (default: bench.models')")
    args = parser.parse_args()
    onnx = write_onnx_files(targets.CACHE / "onnx")
    batching, per_model = (json.loads(args.batching), None) if args.batching else (BATCHING, BATCHING_PER_MODEL)
    repo = write_repository(targets.CACHE / "repo-vs-mlserver", onnx, batching, per_model)
    sources = {rev: targets.surge_source(None if rev == "tree" else rev)[1] for rev in args.revisions if rev != "floor"}
    mls.ensure_venv()
    print(mls.version())
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for i, rev in enumerate(args.revisions):
            server = targets.floor() if rev == "floor" else targets.surge(repo, sources[rev], f"vs{i}", models=(args.model,))
            with server as address:
                results.setdefault(f"surge {rev}" if rev != "floor" else "floor", []).append(_load(address, args.model, args.concurrency))
        for config in mls.CONFIGS:
            with targets.mlserver(config, {args.model: onnx[args.model]}) as address:
                results.setdefault(config.label, []).append(_load(address, args.model, args.concurrency))
    medians = {label: statistics.median(values) for label, values in results.items()}
    for label, values in results.items():
        print(f"{args.model} c{args.concurrency}  {label:28s} infer/s {medians[label]:7.0f}  rounds {[round(v) for v in values]}")
    best = max((label for label in medians if label.startswith("mlserver")), key=medians.__getitem__)
    mlserver = [values for label, values in results.items() if label.startswith("mlserver")]
    for rev in args.revisions:
        label = "floor" if rev == "floor" else f"surge {rev}"
        # per round against that round's best MLServer configuration: less moved by a busy box than the medians
        per_round = [v / max(m[i] for m in mlserver) for i, v in enumerate(results[label])]
        print(f"{label} / {best} (medians): {medians[label] / medians[best]:.2f}x; per round against that round's best MLServer: "
              f"median {statistics.median(per_round):.2f}x, rounds {[round(r, 2) for r in per_round]}")


if __name__ == "__main__":
    main()
