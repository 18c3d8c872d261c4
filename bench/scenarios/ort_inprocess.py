"""onnxruntime in-process: the runtime's own limit, with the servers' settings (one intra-op thread).

    python -m bench.scenarios.ort_inprocess --onnx-dir DIR [--models tiny,mlp] [--batches 1,16,64] [--duration-s 2]

For each model and batch size: session.run in a loop on one pre-made batch, after a short warm-up.
Prints one JSON object per (model, batch): rows_per_s, runs_per_s, p50_ms (one run's latency).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def measure(session: ort.InferenceSession, features: int, batch: int, duration_s: float) -> dict:
    x = np.random.default_rng(0).standard_normal((batch, features)).astype(np.float32)
    feed, outputs = {"x": x}, ["y"]
    for _ in range(20):
        session.run(outputs, feed)
    times = []
    clock = time.perf_counter
    start = clock()
    while (t0 := clock()) - start < duration_s:
        session.run(outputs, feed)
        times.append(clock() - t0)
    wall = clock() - start
    runs = len(times)
    return {"batch": batch, "rows_per_s": runs * batch / wall, "runs_per_s": runs / wall, "p50_ms": float(np.median(times) * 1e3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, required=True)
    parser.add_argument("--models", default="tiny,mlp,mlp-large")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    for name in args.models.split(","):
        session = ort.InferenceSession(str(args.onnx_dir / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        features = session.get_inputs()[0].shape[1]
        for batch in (int(b) for b in args.batches.split(",")):
            print(json.dumps({"model": name, **measure(session, features, batch, args.duration_s)}), flush=True)


if __name__ == "__main__":
    main()
