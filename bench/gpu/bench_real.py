"""GPU benchmark of the two real serving paths: ResNet-50 (JPEG bytes in, top-5 out) and a BERT-base encoder (token
ids in, a mean-pooled embedding out), the same pipeline in process vs through Surge with perf_analyzer.

    python -m bench.gpu.bench_real [--concurrency 1,8,64,256] [--workers 1,4] [--json FILE] [--cpu-dry-run]

Models: ``surge.server.zoo`` writes both repository entries (random weights; fp16 and ``kind = "gpu"`` on a GPU, CUDA
graphs per batch bucket, and per (batch, length) bucket for BERT). Inputs: 64 synthetic JPEGs in three sizes
(500x375, 375x500, 640x480: ImageNet-like) and 64 token sequences padded to 128 tokens (real lengths 16..128,
the rest masked), the same in process and over the wire.

In process: the model's own pipeline object (``Pipeline`` + ``TorchRuntime``, as an instance runs it: decode,
kernels, the model with its CUDA graph, top-5, results on the host) in a Python loop over batches of 1, 8, 32 and
max_batch_size rows; for ResNet also the step split (decode_jpeg, resize_crop_normalize, model + top-5).
Through Surge: ``surge serve`` pinned to half the cores, perf_analyzer (one row per request, ``--async``) on the
others at each concurrency, for each ``--workers`` count (N front ends over one engine above 1). For each cell: rows/s,
p50/p99, the batch Surge formed and the server-side split per request from ModelStatistics (queue, compute input,
compute infer, which holds the pipeline's decode and kernels, compute output), the protocol decode and encode
means from Surge's Prometheus histograms (``surge_decode_duration_seconds``, ``surge_encode_duration_seconds``) and
the GPU's mean utilisation from NVML while perf_analyzer ran.
Targets (per model): rows/s through Surge >= 80% of in process at the batch Surge formed (best cell), and p50 at
concurrency 1 <= in-process batch-1 p50 + 0.3 ms.

``--cpu-dry-run``: the same script on the CPU with the small CI models (zoo.RESNET_SMALL, zoo.BERT_TINY), fp32,
concurrency 1 and 8 by default, no NVML; it checks the script end to end and prints the table (measures nothing
useful). Without perf_analyzer (``bench/perf_analyzer/setup.sh``) the Surge cells are skipped and said so.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.gpu.bench_torch import STAGES, server_stats, stage_means_us  # noqa: E402

IMAGE_SIZES = ((375, 500), (500, 375), (480, 640))
SEQUENCE = 128
SAMPLES = 64


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    return np.clip(np.kron(coarse, np.ones((16, 16, 1)))[:h, :w] + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def inputs_for(model: str, bert_vocab: int) -> list[dict[str, np.ndarray]]:
    """SAMPLES one-row requests for ``model`` (the same data in process and for perf_analyzer)."""
    rng = np.random.default_rng(0)
    if model == "resnet50":
        from surge.server.execution.decode import encode_jpeg

        jpegs = [encode_jpeg(_photo(rng, *IMAGE_SIZES[i % len(IMAGE_SIZES)]), quality=90) for i in range(SAMPLES)]
        return [{"jpeg": np.array([[j]], dtype=np.object_)} for j in jpegs]
    rows = []
    for _ in range(SAMPLES):
        real = int(rng.integers(16, SEQUENCE + 1))
        mask = (np.arange(SEQUENCE) < real).astype(np.int64)[None]
        rows.append({"input_ids": rng.integers(1, bert_vocab, (1, SEQUENCE)).astype(np.int64) * mask, "attention_mask": mask})
    return rows


def write_repository(root: Path, dry: bool, max_batch_size: int) -> dict[str, object]:
    from surge.server import zoo

    kind, precision = ("cpu", "fp32") if dry else ("gpu", "fp16")
    resnet, bert = (zoo.RESNET_SMALL, zoo.BERT_TINY) if dry else (zoo.RESNET50, zoo.BERT_BASE)
    zoo.write_resnet_entry(root, "resnet50", spec=resnet, max_batch_size=max_batch_size, precision=precision, kind=kind, max_queue_delay_s=0.0)
    zoo.write_bert_entry(root, "bert", spec=bert, max_length=SEQUENCE, max_batch_size=max_batch_size, precision=precision, kind=kind, max_queue_delay_s=0.0)
    return {"resnet50": resnet, "bert": bert}


class _Loaded:
    """One model's pipeline as an instance runs it, outside any server."""

    def __init__(self, folder: Path) -> None:
        from surge.server.config import load_model_config
        from surge.server.execution.model import complete_signature
        from surge.server.execution.pipeline import Pipeline
        from surge.server.runtimes.torch import TorchRuntime

        config = load_model_config(folder)
        self.runtime = TorchRuntime()
        config = complete_signature(config, self.runtime.load(folder / "1" / config.model_filename, config, 0))
        self.pipeline = Pipeline(config).instance(self.runtime, 0) if config.preprocess else None
        self.outputs = tuple(t.name for t in config.outputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.pipeline.run(inputs, self.outputs) if self.pipeline else self.runtime.infer(inputs, self.outputs)

    def steps(self, inputs: dict[str, np.ndarray]) -> tuple[float, float]:
        """ResNet: seconds for decode_jpeg, then for decode + resize_crop_normalize (synchronised)."""
        inst = self.pipeline
        decode, image_step = inst.pipeline.pre
        sync = (lambda: __import__("torch").cuda.synchronize()) if inst.on_device else (lambda: None)
        t0 = time.perf_counter()
        images = inst._decode(decode, inputs["jpeg"])
        sync()
        t1 = time.perf_counter()
        (inst._pre_device if inst.on_device else inst._pre_cpu)(image_step, images)
        sync()
        return t1 - t0, time.perf_counter() - t0


def _batch(samples: list[dict[str, np.ndarray]], rows: int, start: int) -> dict[str, np.ndarray]:
    picked = [samples[(start + i) % len(samples)] for i in range(rows)]
    return {name: np.concatenate([p[name] for p in picked]) for name in picked[0]}


def in_process(loaded: _Loaded, samples: list[dict[str, np.ndarray]], rows: int, iterations: int, split: bool) -> dict:
    for i in range(3):
        loaded.run(_batch(samples, rows, i))
    latencies, decode, pre = [], [], []
    for i in range(iterations):
        batch = _batch(samples, rows, i * rows)
        t0 = time.perf_counter()
        loaded.run(batch)
        latencies.append(time.perf_counter() - t0)
        if split:
            d, p = loaded.steps(batch)
            decode.append(d)
            pre.append(p - d)
    lat = np.array(latencies) * 1e3
    cell = {"rows_per_s": float(rows / (lat.mean() / 1e3)), "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}
    if split:
        cell["split_ms"] = {"decode_jpeg": float(np.median(decode) * 1e3), "resize_crop_normalize": float(np.median(pre) * 1e3),
                            "model_top5": float(max(np.median(lat) - np.median(decode) * 1e3 - np.median(pre) * 1e3, 0.0))}  # fmt: skip
    return cell


def perf_input_data(model: str, samples: list[dict[str, np.ndarray]], path: Path) -> None:
    """perf_analyzer's --input-data: one entry per sample; BYTES as b64 of the serialised tensor (length-prefixed)."""
    entries = []
    for sample in samples:
        if model == "resnet50":
            jpeg = sample["jpeg"][0, 0]
            entries.append({"jpeg": {"b64": base64.b64encode(struct.pack("<I", len(jpeg)) + jpeg).decode(), "shape": [1]}})
        else:
            entries.append({n: {"content": a[0].tolist(), "shape": [a.shape[1]]} for n, a in sample.items()})
    path.write_text(json.dumps({"data": entries}))


def perf_analyzer(address: str, model: str, data: Path, concurrency: int, cores: str, interval_ms: int) -> dict:
    import csv

    run_sh = REPO / "bench" / "perf_analyzer" / "run.sh"
    base = ["taskset", "-c", cores, "bash", str(run_sh), "-m", model, "-x", "1", "-u", address, "-i", "grpc", "--async", "-b", "1",
            "--input-data", str(data), "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(interval_ms)]  # fmt: skip
    output = ""
    for stability, stable in ((["-s", "25", "-r", "6"], True), (["-s", "100", "-r", "3"], False), (["-s", "1000", "-r", "3"], False)):
        with tempfile.TemporaryDirectory() as tmp:
            csv_path = Path(tmp) / "out.csv"
            proc = subprocess.run([*base, *stability, "-f", str(csv_path)], capture_output=True, text=True, timeout=600)
            if proc.returncode == 0 and csv_path.is_file():
                with open(csv_path, newline="") as f:
                    row = next(csv.DictReader(f))
                return {"rows_per_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1e3,
                        "p99_ms": float(row["p99 latency"]) / 1e3, "stable": stable}  # fmt: skip
            output = proc.stdout + proc.stderr
    raise RuntimeError(f"perf_analyzer failed on {model} at concurrency {concurrency}:\n{output[-1500:]}")


def wire_stages_s(metrics_address: str, model: str) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) of the protocol decode and encode histograms for ``model`` (empty when unreadable)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    except OSError:
        return {}
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        stage = {"surge_decode_duration_seconds": "decode", "surge_encode_duration_seconds": "encode"}.get(family.name)
        for sample in family.samples if stage else ():
            if sample.labels.get("model") == model and sample.name.endswith(("_sum", "_count")):
                found.setdefault(stage, [0.0, 0.0])[sample.name.endswith("_count")] += sample.value
    return {stage: (v[0], v[1]) for stage, v in found.items()}


def _wire_means_us(before: dict, after: dict) -> dict[str, float]:
    return {s: (after[s][0] - before.get(s, (0, 0))[0]) / max(after[s][1] - before.get(s, (0, 0))[1], 1) * 1e6 for s in after}


class GpuSampler:
    """Mean GPU utilisation (NVML, every 50 ms) while in use; ``None`` without NVML or a GPU."""

    def __init__(self) -> None:
        self._handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            pass
        self._samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self) -> GpuSampler:
        if self._handle is not None:
            self._samples, self._stop = [], threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self._samples)) if self._samples else None


def surge_cells(results: dict, root: Path, tmp: Path, samples: dict, args: argparse.Namespace, server_cores: str, load_cores: str) -> None:
    from bench.scenarios import perf_analyzer as pa
    from bench.scenarios import workers as wk

    if not pa.available():
        results["notes"].append("perf_analyzer is not set up (bench/perf_analyzer/setup.sh): no Surge cells")
        print(results["notes"][-1], flush=True)
        return
    data = {}
    for model in samples:
        data[model] = tmp / f"{model}-data.json"
        perf_input_data(model, samples[model], data[model])
    for workers in [int(n) for n in args.workers.split(",") if n]:
        extra: tuple[str, ...] = ()  # --workers N: N front ends over one GPU engine (one copy of each model)
        with wk.surge(root, workers, server_cores, tmp / f"w{workers}", timeout_s=900, models=tuple(samples), extra=extra) as (address, _):
            found = re.search(r"metrics on http://(\S+)/metrics", (tmp / f"w{workers}" / "server.log").read_text())
            metrics = found.group(1) if found else ""
            for model in samples:
                for concurrency in args.concurrency:
                    wire = wire_stages_s(metrics, model) if metrics else {}
                    before = server_stats(address, model)
                    with GpuSampler() as gpu:
                        cell = perf_analyzer(address, model, data[model], concurrency, load_cores, args.interval_ms)
                    after = server_stats(address, model)
                    cell["formed_batch"] = (after["inference_count"] - before["inference_count"]) / max(after["execution_count"] - before["execution_count"], 1)
                    cell["server_us"] = stage_means_us(before, after)
                    cell["server_us"].update(_wire_means_us(wire, wire_stages_s(metrics, model) if metrics else {}))
                    cell["gpu_util_pct"] = gpu.mean
                    results["surge"][f"{model}/c{concurrency}/w{workers}"] = cell
                    print(f"surge --workers {workers} {model} concurrency {concurrency}: {cell}", flush=True)


def _nearest(results: dict, model: str, rows: float, batches: list[int]) -> dict:
    return results["in_process"][f"{model}/{min(batches, key=lambda b: abs(b - rows))}"]


def targets(results: dict, batches: list[int]) -> None:
    for model in results["models"]:
        cells = {k: c for k, c in results["surge"].items() if k.startswith(f"{model}/")}
        if not cells:
            continue
        ratios = {k: c["rows_per_s"] / _nearest(results, model, c["formed_batch"], batches)["rows_per_s"] for k, c in cells.items()}
        best = max(ratios, key=ratios.__getitem__)
        ones = {k: c for k, c in cells.items() if "/c1/" in k}
        budget = results["in_process"][f"{model}/1"]["p50_ms"] + 0.3
        one = min(ones.values(), key=lambda c: c["p50_ms"]) if ones else None
        results["targets"][model] = {
            "rows_ratio": float(ratios[best]), "rows_ratio_cell": best, "rows_ratio_ok": bool(ratios[best] >= 0.8),
            "c1_p50_ms": one["p50_ms"] if one else None, "c1_budget_ms": float(budget), "c1_ok": bool(one and one["p50_ms"] <= budget),
        }  # fmt: skip


def table(results: dict) -> None:
    print(f"\nDevice: {results['device']} (torch {results['torch']}); models: {results['models']}")
    print(f"{'model':<9} {'path':<28} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'formed':>7} {'GPU %':>6}")
    for key, cell in results["in_process"].items():
        model, rows = key.split("/")
        print(f"{model:<9} {'in process, batch ' + rows:<28} {cell['rows_per_s']:>10,.0f} {cell['p50_ms']:>8.3f} {cell['p99_ms']:>8.3f} {'':>7} {'':>6}")
    for key, cell in results["surge"].items():
        model, c, w = key.split("/")
        util = f"{cell['gpu_util_pct']:.0f}" if cell["gpu_util_pct"] is not None else "n/a"
        print(f"{model:<9} {f'surge {w} {c} (PA)':<28} {cell['rows_per_s']:>10,.0f} {cell['p50_ms']:>8.3f} {cell['p99_ms']:>8.3f} {cell['formed_batch']:>7.1f} {util:>6}")
    print("In-process step split, ms per batch (median): decode_jpeg, resize_crop_normalize, model + top-5")
    for key, cell in results["in_process"].items():
        if "split_ms" in cell:
            s = cell["split_ms"]
            print(f"  {key:<14} {s['decode_jpeg']:>9.3f} {s['resize_crop_normalize']:>9.3f} {s['model_top5']:>9.3f}")
    if results["surge"]:
        print("Surge server-side, mean us per request: protocol decode, queue, compute input, compute infer (decode_jpeg + kernels + model), compute output, encode")
        for key, cell in results["surge"].items():
            us = cell["server_us"]
            print(f"  {key:<18} " + " ".join(f"{us[s]:>9.1f}" if s in us else f"{'n/a':>9}" for s in ("decode", *STAGES[1:], "encode")))
    for model, t in results["targets"].items():
        print(f"target {model}: rows/s {t['rows_ratio']:.0%} of in process at the formed batch, best cell {t['rows_ratio_cell']} "
              f"({'met' if t['rows_ratio_ok'] else 'MISSED'}, >= 80%); concurrency-1 p50 {t['c1_p50_ms']} ms vs budget "
              f"{t['c1_budget_ms']:.3f} ms ({'met' if t['c1_ok'] else 'MISSED'})")  # fmt: skip
    for note in results["notes"]:
        print(f"note: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="", help="perf_analyzer concurrencies (default 1,8,64,256; dry run 1,8)")
    parser.add_argument("--workers", default="", help="surge serve --workers counts (default 1,4; dry run 1)")
    parser.add_argument("--max-batch-size", type=int, default=0, help="the models' max_batch_size (default 128; dry run 8)")
    parser.add_argument("--iterations", type=int, default=0, help="in-process batches per cell (default 50; dry run 3)")
    parser.add_argument("--interval-ms", type=int, default=0, help="perf_analyzer's measurement window (default 3000; dry run 2000)")
    parser.add_argument("--models", default="resnet50,bert")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cpu-dry-run", action="store_true", help="the small CI models on the CPU: checks the script, measures nothing useful")
    args = parser.parse_args()
    import torch

    dry = args.cpu_dry_run
    if not torch.cuda.is_available() and not dry:
        print("no CUDA GPU: nothing to measure (--cpu-dry-run checks the script)")
        return 2
    if dry:
        torch.set_num_threads(1)  # as the server runs it (OMP_NUM_THREADS=1)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,8" if dry else "1,8,64,256")).split(",")]
    args.workers = args.workers or ("1" if dry else "1,4")
    max_batch = args.max_batch_size or (8 if dry else 128)
    iterations = args.iterations or (3 if dry else 50)
    args.interval_ms = args.interval_ms or (2000 if dry else 3000)
    batches = sorted({1, 8, 32, max_batch} & set(range(1, max_batch + 1)))
    cpus = os.cpu_count() or 2
    server_cores, load_cores = (f"0-{cpus // 2 - 1}", f"{cpus // 2}-{cpus - 1}") if cpus > 1 else ("0", "0")
    results: dict = {"device": "CPU dry run" if dry else torch.cuda.get_device_name(0), "torch": torch.__version__, "models": {},
                     "in_process": {}, "surge": {}, "targets": {}, "notes": []}  # fmt: skip
    try:
        import torchvision  # noqa: F401

        results["decode"] = "nvJPEG (torchvision) on the GPU" if not dry else "Pillow"
    except Exception as exc:
        results["decode"] = "Pillow on the CPU"
        results["notes"].append(f"torchvision is not importable ({type(exc).__name__}): decode_jpeg decodes with Pillow on the CPU")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "repo"
        specs = write_repository(root, dry, max_batch)
        wanted = [m for m in args.models.split(",") if m]
        results["models"] = {m: repr(specs[m]) for m in wanted}
        samples = {m: inputs_for(m, specs["bert"].vocab_size) for m in wanted}
        for model in wanted:
            loaded = _Loaded(root / model)
            for rows in batches:
                cell = in_process(loaded, samples[model], rows, iterations, split=model == "resnet50")
                results["in_process"][f"{model}/{rows}"] = cell
                print(f"in process {model} batch {rows}: {cell}", flush=True)
            loaded.runtime.close()
            del loaded
        surge_cells(results, root, tmp, samples, args, server_cores, load_cores)
    targets(results, batches)
    table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
