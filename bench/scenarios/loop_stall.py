"""Event-loop stall under large messages: a small gRPC probe's latency while one large request is decoded or one
large response is encoded.

``surge serve`` (pinned to the server CPU) serves two Python models: ``sink_py`` takes FP32 x[-1] and answers its
length (a large request, a small answer: the decode side), ``source_py`` takes INT64 n[1] and answers n FP32 values
from a buffer it keeps (a small request, a large answer: the encode side). A sender process (pinned to the
generator CPU, so its own serialisation shares nothing with the probe) sends ``--requests`` large calls one after
the other; meanwhile this process calls ServerLive every ``--probe-interval-ms`` and records each call's latency.
Everything the server does with a probe happens on its event loop, so a probe's latency is the loop's stall
plus a round trip. A baseline without large calls is measured first. The server's tensor limits are raised so that
the largest request the default ``--max-request-bytes`` (256 MiB) admits fits in one FP32 tensor.

    python -m bench.scenarios.loop_stall [--sizes-mib 16 64 255] [--requests 8] [--out bench/results/loop-stall.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.scenarios.servers import GENERATOR_CPU, running
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc

_SINK_PY = '''
import numpy as np

class Model:
    def infer(self, inputs, output_names):
        return {"n": np.array([inputs["x"].size], np.int64)}
'''
_SOURCE_PY = '''
import numpy as np

class Model:
    def __init__(self):
        self.buffer = np.zeros(0, np.float32)

    def infer(self, inputs, output_names):
        n = int(inputs["n"][0])
        if self.buffer.size < n:
            self.buffer = np.random.default_rng(0).random(n, dtype=np.float32)
        return {"y": self.buffer[:n]}
'''
_CONFIGS = {
    "sink_py": ("x", "FP32", "n", "INT64"),
    "source_py": ("n", "INT64", "y", "FP32"),
}
_MAX_MESSAGE = 2**31 - 1
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)]


def write_repository(root: Path) -> Path:
    for name, code in (("sink_py", _SINK_PY), ("source_py", _SOURCE_PY)):
        inp, in_type, out, out_type = _CONFIGS[name]
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(code)
        (root / name / "config.toml").write_text(
            f'backend = "python"\nmax_batch_size = 0\n\n[[input]]\nname = "{inp}"\ndatatype = "{in_type}"\ndims = [-1]\n\n'
            f'[[output]]\nname = "{out}"\ndatatype = "{out_type}"\ndims = [-1]\n'
        )
    return root


def _large_request(direction: str, size_bytes: int) -> pb.ModelInferRequest:
    if direction == "decode":
        request = pb.ModelInferRequest(model_name="sink_py")
        request.inputs.add(name="x", datatype="FP32", shape=[size_bytes // 4])
        request.raw_input_contents.append(np.ones(size_bytes // 4, np.float32).tobytes())
    else:
        request = pb.ModelInferRequest(model_name="source_py")
        request.inputs.add(name="n", datatype="INT64", shape=[1])
        request.raw_input_contents.append(np.array([size_bytes // 4], np.int64).tobytes())
    return request


def _send(address: str, direction: str, size_bytes: int, count: int, ready: multiprocessing.Event, out: multiprocessing.Queue) -> None:
    """In the sender process: ``count`` large calls, one after the other; puts each call's latency in ``out``."""
    os.sched_setaffinity(0, {int(GENERATOR_CPU)})
    request = _large_request(direction, size_bytes)
    try:
        with grpc.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
            ready.set()
            for _ in range(count):
                started = time.perf_counter()
                stub.ModelInfer(request, timeout=120)
                out.put(time.perf_counter() - started)
    except grpc.RpcError as exc:
        out.put(f"{exc.code().name}: {exc.details()}")
    out.put(None)


def _probe(stub: pb_grpc.GRPCInferenceServiceStub, interval_s: float, until) -> list[float]:
    latencies = []
    while not until():
        started = time.perf_counter()
        stub.ServerLive(pb.ServerLiveRequest(), timeout=30)
        latencies.append(time.perf_counter() - started)
        time.sleep(max(0.0, interval_s - (time.perf_counter() - started)))
    return latencies


def _summary(latencies: list[float]) -> dict:
    ms = np.array(latencies) * 1e3
    return {"probes": len(ms), "p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def measure(address: str, sizes_mib: list[int], requests: int, interval_s: float) -> list[dict]:
    rows = []
    context = multiprocessing.get_context("spawn")
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(20):
            stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
        quiet_until = time.monotonic() + 3.0
        rows.append({"direction": "none", "size_mib": 0, **_summary(_probe(stub, interval_s, lambda: time.monotonic() > quiet_until))})
        print(rows[-1], flush=True)
        for direction in ("decode", "encode"):
            for size in sizes_mib:
                size_bytes = size * 2**20 - 4096  # room for the message's own fields under a limit of size MiB
                ready, out = context.Event(), context.Queue()
                sender = context.Process(target=_send, args=(address, direction, size_bytes, requests + 1, ready, out))
                sender.start()
                ready.wait(120)
                out_first = out.get(timeout=300)  # the first call warms the model's buffer and the allocator: not measured
                if isinstance(out_first, str):
                    raise RuntimeError(f"the large {direction} call of {size} MiB failed: {out_first}")
                finished: list[float | None] = []

                def done() -> bool:
                    while not out.empty():
                        finished.append(out.get())
                    return bool(finished) and finished[-1] is None

                latencies = _probe(stub, interval_s, done)
                sender.join(60)
                calls = [s for s in finished if s is not None]
                if any(isinstance(s, str) for s in calls):
                    raise RuntimeError(f"a large {direction} call of {size} MiB failed: {calls}")
                rows.append({"direction": direction, "size_mib": size, "large_call_s": float(np.median(calls)),
                             "first_call_s": out_first, **_summary(latencies)})  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[16, 64, 255])
    parser.add_argument("--requests", type=int, default=8, help="large calls per size and direction (after one warm-up call)")
    parser.add_argument("--probe-interval-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repository(Path(tmp) / "repo")
        address_file = Path(tmp) / "address"
        cmd = [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(repo), "--grpc-port", "0",
               "--metrics-port", "-1", "--http-port", "-1", "--address-file", str(address_file),
               # the largest request (256 MiB, the default --max-request-bytes) as one FP32 tensor
               "--max-tensor-elements", str(2**26), "--max-request-elements", str(2**26)]  # fmt: skip
        with running(cmd, log=Path(tmp) / "server.log", address_file=address_file, models=("sink_py", "source_py")) as address:
            rows = measure(address, args.sizes_mib, args.requests, args.probe_interval_ms / 1e3)
    print(f"{'direction':<9} {'MiB':>4} {'large call':>11} {'probe p50':>10} {'p99':>9} {'max':>9}")
    for r in rows:
        call = f"{r['large_call_s'] * 1e3:.0f} ms" if "large_call_s" in r else "-"
        print(f"{r['direction']:<9} {r['size_mib']:>4} {call:>11} {r['p50_ms']:>8.2f}ms {r['p99_ms']:>7.1f}ms {r['max_ms']:>7.1f}ms")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
