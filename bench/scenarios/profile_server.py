"""Where a served request's CPU goes, by stage: the working tree's server under perf_analyzer, sampled by py-spy.

    python -m bench.scenarios.profile_server [--cell tiny:1:32:s] [--seconds 12] [--raw FILE]

Starts ``surge serve`` (the working tree, ``bench.models.BATCHING``; ``--batching`` replaces it) on the server CPU,
drives one cell (``model:rows:concurrency[:s]``, ``:s`` over ModelStreamInfer streams) with perf_analyzer on the
generator CPU, and samples the server's Python stacks with py-spy (``--rate`` per second, ``--seconds`` long,
after perf_analyzer's warm-up). Each sample of the event loop's thread is counted under the innermost Surge stage
on its stack (``STAGES``); a sample with none is gRPC's and the event loop's own work (grpc.aio's Cython layer,
uvloop, the C-core's completion queue), and one whose innermost Surge frame is the stream's reader awaiting its
next message is gRPC reading the stream. The runtime's threads are left out. Prints each stage's share of the
loop's samples and perf_analyzer's throughput; ``--raw`` keeps py-spy's collapsed stacks.

py-spy samples from outside the process (nothing in the server is instrumented, so the shares are not inflated
as cProfile's are) and sees Python frames only: time in a C function is counted under the Python frame that
called it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.models import BATCHING, MODELS, write_onnx_files, write_repository

from . import perf_analyzer as pa
from . import targets
from .servers import GENERATOR_CPU, pinned

#: Stage -> the Surge functions whose frames mark it (py-spy's "Class.method" names, matched at the start).
STAGES: dict[str, tuple[str, ...]] = {
    "decode (scan, template, codec)": ("parse_infer_request", "_scan", "_scan_any", "_tolerant.", "decode_request", "_Template.", "_decode", "_from_raw"),
    "statistics and metrics": ("VersionStats.", "VersionMetrics.", "Histogram.", "Stamps."),
    "encode (skeleton, wire bytes)": ("encode_header", "join", "_Skeleton.", "serialize", "_length_prefix", "_encode_for_wire", "_encode_stream"),
    "batcher, dispatch to the instance": ("DynamicBatcher.", "CostModel.", "ModelVersion.submit", "ModelVersion._queue", "ModelVersion.execute",
                                          "ModelVersion._dispatch", "ThreadPoolExecutor.", "Future.add_done_callback"),
    "batch outputs to requests": ("ModelVersion._finish", "ModelVersion._answered", "ModelVersion._left", "ModelVersion._check_outputs", "_OutputSpec."),
    "edge and data plane bookkeeping": ("_Stream.", "InferenceServicer.", "DataPlane.", "ModelRepository.", "RequestRegions.", "_infer"),
}
READING = "gRPC reading the stream"
GRPC = "gRPC and the event loop (no Surge frame)"


def stage_shares(collapsed: str) -> tuple[dict[str, float], int]:
    """Each stage's share of the event loop's samples in py-spy's collapsed (``--format raw``) output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        if not line.strip():
            continue
        stack, _, n = line.rpartition(" ")
        frames = [re.sub(r" \(.*\)$", "", f) for f in stack.split(";")]
        if frames[0].startswith("Thread._bootstrap") or "OnnxRuntime." in frames[0]:
            continue  # a runtime or helper thread, not the event loop
        stage = GRPC
        for frame in reversed(frames):
            if frame.startswith("_Stream.read"):
                stage = READING
                break
            found = next((s for s, names in STAGES.items() if frame.startswith(names)), None)
            if found is not None:
                stage = found
                break
        counts[stage] += int(n)
    total = sum(counts.values())
    return {s: c / total for s, c in counts.most_common()}, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="tiny:1:32:s", help="model:rows:concurrency[:s]")
    parser.add_argument("--batching", default=json.dumps(BATCHING), help="the models' batching table, as JSON")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists() or not pa.available():
        sys.exit("needs py-spy (surge[dev]) and perf_analyzer (bench/perf_analyzer/setup.sh)")
    model, rows, concurrency, *streaming = args.cell.split(":")
    cache = targets.CACHE
    repository = write_repository(cache / "repo-profile", write_onnx_files(cache / "onnx"), json.loads(args.batching))
    with targets.surge(repository, {}, "profile", models=(model,)) as address, tempfile.TemporaryDirectory() as tmp:
        pids = subprocess.run(["pgrep", "-f", f"serve --model-repository {repository}"], capture_output=True, text=True).stdout.split()
        pid = next(p for p in reversed(pids) if not Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"taskset"))
        load = ["-m", model, "-x", "1", "-u", address, "-i", "grpc", "--async", "-b", rows, "--shape", f"x:{MODELS[model].features}",
                "--concurrency-range", concurrency, "--measurement-interval", str(int(args.seconds * 1000 / 3)), "-s", "100", "-r", "4",
                *(["--streaming"] if streaming else [])]  # fmt: skip
        generator = subprocess.Popen(pinned(GENERATOR_CPU, ["bash", str(pa.RUN_SH), *load]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2.0)  # perf_analyzer's warm-up
        raw = Path(tmp) / "stacks.txt"
        subprocess.run([py_spy, "record", "-p", pid, "-r", str(args.rate), "-d", str(int(args.seconds)), "-f", "raw", "-o", str(raw), "--nonblocking"],
                       check=True, capture_output=True, env=dict(os.environ))  # fmt: skip
        output = generator.communicate(timeout=300)[0]
        collapsed = raw.read_text()
        if args.raw:
            args.raw.write_text(collapsed)
    throughput = re.findall(r"throughput: ([\d.]+) infer/sec", output)
    shares, samples = stage_shares(collapsed)
    print(f"{args.cell}: {throughput[-1] if throughput else '?'} infer/s (perf_analyzer); {samples} samples of the event loop's thread")
    for stage, share in shares.items():
        print(f"  {100 * share:5.1f}%  {stage}")


if __name__ == "__main__":
    main()
