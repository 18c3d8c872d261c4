"""Event-loop stall under the largest REST bodies: gRPC probe latency while one large request is decoded.

    python -m bench.scenarios.rest_stall [--before REV] [--json-mb 16,150] [--bomb-mib 1024] [--rounds 2] [--out results.json]

One ``surge serve`` (gRPC and REST, default limits: 256 MiB bodies) is pinned to CPU 0 (``taskset -c 0``) and
serves the demo repository; this process, on CPU 1, sends a gRPC probe (``ModelInfer`` of the demo ``mlp``,
one row) every 10 ms while ``curl`` (also on CPU 1) posts one large body over REST:

- ``json-<N>MB``: a request of FP32 values as a JSON list, N MB of JSON, to a ``sum`` model (ReduceSum over
  each row, written here beside the demo models), so the answer is one number and the decode is what is
  measured;
- ``gzip-bomb``: ``Content-Encoding: gzip``, about 1 MB that inflates to ``--bomb-mib`` MiB of JSON whitespace
  (refused with 413 once the inflated body passes the limit);
- ``idle``: no large request, the probe alone for 3 s: the noise floor of the machine.

Each case runs on a fresh server (so its peak RSS is its own): probe latency p50 and max while the body is
sent and decoded, the large request's status and time, and the server's peak RSS (VmHWM) over its RSS just
before. ``--before REV`` runs the same cases on the server of git revision REV too (``git archive`` into a
temporary tree put first on PYTHONPATH), interleaved round by round, order alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from surge.protos import grpc_service_pb2 as pb
from surge.server.demo import write_demo_repository, write_onnx_model

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_CPU, LOAD_CPU = "0", "1"
PROBE_INTERVAL_S = 0.01


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_body(path: Path, megabytes: float) -> Path:
    """An identity request of about ``megabytes`` MB of JSON (cached in ``path``)."""
    if not path.is_file():
        per_value = len(json.dumps(np.random.default_rng(0).standard_normal(1000).astype(np.float32).tolist())) / 1000
        count = int(megabytes * 1e6 / per_value)
        values = np.random.default_rng(1).standard_normal(count).astype(np.float32)
        doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, count], "data": values.tolist()}]}
        path.write_bytes(json.dumps(doc).encode())
    return path


def gzip_bomb(path: Path, mebibytes: int) -> Path:
    """``{"inputs": `` and then ``mebibytes`` MiB of spaces, gzip-compressed (about 1 MB per GiB)."""
    if not path.is_file():
        compressor = zlib.compressobj(9, wbits=31)
        spaces = b" " * 2**20
        with path.open("wb") as out:
            out.write(compressor.compress(b'{"inputs": '))
            for _ in range(mebibytes):
                out.write(compressor.compress(spaces))
            out.write(compressor.flush())
    return path


def write_sum_model(repository: Path) -> None:
    """``sum``: FP32 [batch, n] -> [batch, 1], the sum of each row (a large input, a small output)."""
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axes"], ["output"], keepdims=1)], "sum",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])], initializer=[axes],
    )
    if not (repository / "sum" / "1" / "model.onnx").is_file():
        write_onnx_model(repository / "sum" / "1" / "model.onnx", graph)
        (repository / "sum" / "config.toml").write_text("max_batch_size = 8\n")


def before_tree(rev: str, workdir: Path) -> Path:
    """A PYTHONPATH entry that imports ``surge`` from git revision ``rev``."""
    src, path = workdir / f"src-{rev}", workdir / f"path-{rev}"
    if not path.is_dir():
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "server", "protos", "kernels", "clients"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        (path / "surge").mkdir(parents=True)
        (path / "surge" / "__init__.py").write_text("")
        for name in ("server", "protos", "kernels", "clients"):
            (path / "surge" / name).symlink_to(src / name)
    return path


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


@contextlib.contextmanager
def surge_server(repository: Path, workdir: Path, pythonpath: Path | None) -> Iterator[tuple[str, str, int]]:
    """A pinned ``surge serve`` with REST on; yields (gRPC address, REST address, pid) once ready."""
    address_file = workdir / "address"
    address_file.unlink(missing_ok=True)
    http_port = free_port()
    cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(repository),
           "--grpc-port", "0", "--metrics-port", "-1", "--http-port", str(http_port), "--address-file", str(address_file), "--log-level", "warning"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    log = open(workdir / "server.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (address_file.is_file() and address_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {log.name}")
            time.sleep(0.05)
        yield address_file.read_text().strip(), f"127.0.0.1:{http_port}", proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


async def run_case(grpc_address: str, http_address: str, pid: int, body: Path | None, gzip: bool) -> dict:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    payload = request.SerializeToString()
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(30):
            await call(payload, timeout=30)
        latencies: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                start = time.perf_counter()
                await call(payload, timeout=60)
                latencies.append(time.perf_counter() - start)
                await asyncio.sleep(PROBE_INTERVAL_S)

        rss_before = memory_mb(pid, "VmRSS")
        prober = asyncio.create_task(probe())
        await asyncio.sleep(0.3)
        del latencies[:]
        headers = ["-H", "Content-Type: application/json"] + (["-H", "Content-Encoding: gzip"] if gzip else [])
        cmd = ["taskset", "-c", LOAD_CPU, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", *headers,
               "--data-binary", f"@{body}", f"http://{http_address}/v2/models/sum/infer"]  # fmt: skip
        started = time.perf_counter()
        if body is None:
            await asyncio.sleep(3.0)
            out = b"0 0"
        else:
            curl = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
            out, _ = await curl.communicate()
        elapsed = time.perf_counter() - started
        done.set()
        await prober
        status, _, _ = out.decode().partition(" ")
    return {
        "status": int(status or 0), "request_s": round(elapsed, 3), "probes": len(latencies),
        "probe_p50_ms": round(statistics.median(latencies) * 1e3, 2) if latencies else None,
        "probe_max_ms": round(max(latencies) * 1e3, 2) if latencies else None,
        "peak_rss_growth_mb": round(memory_mb(pid, "VmHWM") - rss_before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="", help="git revision whose server runs the same cases (interleaved)")
    parser.add_argument("--json-mb", default="16,150", help="JSON body sizes in MB, comma-separated")
    parser.add_argument("--bomb-mib", type=int, default=1024, help="what the gzip bomb inflates to (MiB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="where bodies are cached (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="surge-rest-stall-"))
    workdir.mkdir(parents=True, exist_ok=True)
    repository = write_demo_repository(workdir / "repository")
    write_sum_model(repository)
    cases: list[tuple[str, Path | None, bool]] = [("idle", None, False)]
    cases += [(f"json-{mb}MB", json_body(workdir / f"body-{mb}MB.json", float(mb)), False) for mb in args.json_mb.split(",")]
    cases.append(("gzip-bomb", gzip_bomb(workdir / f"bomb-{args.bomb_mib}MiB.gz", args.bomb_mib), True))
    variants: list[tuple[str, Path | None]] = [("after", None)]
    if args.before:
        variants.append(("before", before_tree(args.before, workdir)))
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows: list[dict] = []
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant, pythonpath in order:
            for case, body, gzip in cases:
                with surge_server(repository, workdir, pythonpath) as (grpc_address, http_address, pid):
                    row = {"round": round_index, "variant": variant, "case": case, "body_mb": round(body.stat().st_size / 1e6, 1) if body else 0,
                           **asyncio.run(run_case(grpc_address, http_address, pid, body, gzip))}  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = []
    for case, _, _ in cases:
        for variant, _ in variants:
            picked = [r for r in rows if r["case"] == case and r["variant"] == variant]
            summary.append({
                "case": case, "variant": variant, "status": sorted({r["status"] for r in picked}),
                **{key: statistics.median(r[key] for r in picked if r[key] is not None)
                   for key in ("probe_p50_ms", "probe_max_ms", "request_s", "peak_rss_growth_mb")},
            })  # fmt: skip
    for line in summary:
        print(json.dumps(line))
    result = {"commit": commit, "before": args.before, "machine": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows, "summary": summary}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
