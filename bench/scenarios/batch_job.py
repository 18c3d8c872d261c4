"""``surge batch`` throughput against the runtime alone on the same chunks (issue 8: target >= 90%).

    taskset -c 0,1 .venv/bin/python -m bench.scenarios.batch_job [--rounds 3] [--chunk-rows N]

Two demo models (written to a temp folder): ``classifier`` (uint8 64x64 images -> fused resize/crop/normalise
kernel -> ONNX CNN -> top-3) and ``tabular`` (the demo MLP behind a fill/clip/standardise kernel, top-2 after it).
"job" is ``run_batch_job`` from a .npy file to a .npz file (reading, the served path through the batcher,
writing, assembly; model load excluded). "alone" is the same model and pipeline called directly on in-memory
arrays, slice after slice of max_batch_size rows (``PipelineInstance.run``: kernels + runtime, nothing else).
Rounds alternate job / alone; medians are reported, and the median of each round's job / alone ratio ("paired":
the two runs of a round are seconds apart, so a noisy box moves both). Prints one JSON object per model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from surge.server.commands.batch import run_batch_job
from surge.server.config import load_model_config
from surge.server.demo import write_demo_repository
from surge.server.execution.model import complete_signature
from surge.server.execution.pipeline import Pipeline
from surge.server.runtimes.base import create_runtime

TABULAR_CONFIG = """\
max_batch_size = 256
[dynamic_batching]
max_queue_delay_s = 0.0
[[preprocess]]
op = "tabular_transform"
input = "features"
output = "x"
fill = 0.0
low = -3.0
high = 3.0
mean = 0.0
std = 1.0
[[postprocess]]
op = "topk"
input = "probabilities"
output = "top2"
k = 2
[parameters]
intra_op_threads = 1
"""


def _alone(repo: Path, model: str, data: np.ndarray) -> float:
    """rows/s of kernels + runtime on max_batch_size slices (the model loaded once, outside the timing)."""
    config = load_model_config(repo / model)
    runtime = create_runtime(config)
    signature = runtime.load(repo / model / "1" / config.model_filename, config, 0)
    config = complete_signature(config, signature)
    pipeline = Pipeline(config)
    instance = pipeline.instance(runtime, 0)
    names = [t.name for t in pipeline.config.outputs]
    (name,) = [t.name for t in pipeline.config.inputs]
    step = config.max_batch_size
    for _ in range(10):  # warm, as the server's warm-up does (first runs of a shape pay one-off costs)
        instance.run({name: data[:step]}, names)
    start = time.perf_counter()
    for i in range(0, data.shape[0], step):
        instance.run({name: data[i : i + step]}, names)
    seconds = time.perf_counter() - start
    runtime.close()
    return data.shape[0] / seconds


def _job(repo: Path, model: str, source: Path, out: Path, chunk_rows: int | None) -> tuple[float, int]:
    out.unlink(missing_ok=True)
    summary = asyncio.run(run_batch_job(repo, model, source, out, chunk_rows=chunk_rows, progress=None))
    return summary.rows_per_s, summary.chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-rows", type=int, default=None, help="the job's chunk size (default: surge batch's own, about 8 MiB of input)")
    parser.add_argument("--image-rows", type=int, default=8192, help="images of the classifier dataset (default 8192, 100 MB: 12 chunks)")
    parser.add_argument("--tabular-rows", type=int, default=2_000_000,
                        help="rows of the tabular dataset (default 2M, 128 MB: about 1 s of work, so the job's fixed costs are amortised as in a real job)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="surge-batch-bench-"))
    try:
        repo = write_demo_repository(folder / "repo")
        (repo / "tabular" / "1").mkdir(parents=True)
        shutil.copy(repo / "mlp" / "1" / "model.onnx", repo / "tabular" / "1" / "model.onnx")
        (repo / "tabular" / "config.toml").write_text(TABULAR_CONFIG)
        rng = np.random.default_rng(0)
        datasets = {
            "classifier": rng.integers(0, 256, (args.image_rows, 64, 64, 3), dtype=np.uint8),
            "tabular": rng.standard_normal((args.tabular_rows, 16)).astype(np.float32),
        }
        chunk_rows = args.chunk_rows
        for model, data in datasets.items():
            source = folder / f"{model}.npy"
            np.save(source, data)
            job, alone = [], []
            chunks = 0
            for _ in range(args.rounds):
                rate, chunks = _job(repo, model, source, folder / f"{model}-out.npz", chunk_rows)
                job.append(rate)
                alone.append(_alone(repo, model, data))
            j, a = statistics.median(job), statistics.median(alone)
            print(json.dumps({"model": model, "rows": data.shape[0], "chunk_rows": chunk_rows or "default", "chunks": chunks, "job_rows_per_s": round(j), "alone_rows_per_s": round(a),
                              "job_vs_alone": round(j / a, 3),
                              "job_vs_alone_paired": round(statistics.median(x / y for x, y in zip(job, alone)), 3), "job_rounds": [round(x) for x in job], "alone_rounds": [round(x) for x in alone]}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
