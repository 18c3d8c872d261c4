"""Soak: minutes of mixed load against ``surge serve`` with reloads, overload and injected faults (not in CI).

    python -m bench.scenarios.soak                    # 10 minutes
    python -m bench.scenarios.soak --duration-s 60    # a quick look

The server (a subprocess, explicit control mode, metrics on a free port) serves four models written into a
temporary repository:

- ``adder``: ONNX y = x + 1, dynamic batching; steady open-loop load; **reloaded** every ``--reload-every-s``
  (RepositoryModelLoad: load beside, swap, drain) and unloaded/loaded once a minute;
- ``work_py``: 20 ms per request, one instance, at most 16 waiting; offered about twice its capacity in
  bursts (**overload**: queue-full rejections);
- ``failing_py``: raises on negative inputs (**runtime faults**, INTERNAL), one request in ten is negative;
- ``hang_py``: ``execution_timeout_s = 1``; every ``--hang-every-s`` a request sleeps 5 s (**hung runtime**:
  failed with DEADLINE_EXCEEDED naming execution_timeout_s, its process killed and restarted), the rest are instant.

Every request has a 30 s deadline. At the end it prints: requests sent and answered, **lost requests** (no
answer from the server: client-side DEADLINE_EXCEEDED, CANCELLED, UNKNOWN, or a transport error while the
server was up; must be 0), outcomes by status and cause per model, and the server's RSS over time; exit code
1 when any request was lost or the server did not exit 0 on SIGTERM.

Shadow traffic is not exercised: routing and shadowing are another issue's work and not in this build.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc

_PY_CONFIG = """
backend = "python"
max_batch_size = 1
{extra}
[[input]]
name = "x"
datatype = "FP32"
dims = [1]

[[output]]
name = "y"
datatype = "FP32"
dims = [1]

[dynamic_batching]
max_queue_size = 16
"""
_WORK_PY = "import time\n\nclass Model:\n    def infer(self, inputs, names):\n        time.sleep(0.02)\n        return {'y': inputs['x']}\n"
_FAILING_PY = (
    "class Model:\n    def infer(self, inputs, names):\n        if (inputs['x'] < 0).any():\n"
    "            raise ValueError('injected fault')\n        return {'y': inputs['x']}\n"
)
_HANG_PY = "import time\n\nclass Model:\n    def infer(self, inputs, names):\n        time.sleep(float(inputs['x'].reshape(-1)[0]))\n        return {'y': inputs['x']}\n"
_ADDER_CONFIG = "max_batch_size = 16\n\n[dynamic_batching]\nmax_queue_delay_s = 0.002\n"


def write_repository(root: Path) -> Path:
    from tests.models import write_add_model

    write_add_model(root / "adder" / "1" / "model.onnx", 1.0)
    (root / "adder" / "config.toml").write_text(_ADDER_CONFIG)
    for name, code, extra in (("work_py", _WORK_PY, ""), ("failing_py", _FAILING_PY, ""), ("hang_py", _HANG_PY, "execution_timeout_s = 1.0\n")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(code)
        (root / name / "config.toml").write_text(_PY_CONFIG.format(extra=extra))
    return root


def _request(model: str, value: float) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    if model == "adder":
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.full((1, 4), value, np.float32).tobytes())
    else:
        request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
        request.raw_input_contents.append(np.array([[value]], np.float32).tobytes())
    return request


_LOST = {"DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN"}


def _cause(code: grpc.StatusCode, details: str) -> str:
    if code == grpc.StatusCode.UNAVAILABLE:
        if "queue full" in details:
            return "queue full"
        if "error code 7" in details:  # HTTP/2 REFUSED_STREAM: the connection had max_concurrent_streams calls open
            return "stream refused (max_concurrent_streams)"
        if "failed to connect" in details or "Socket closed" in details or "Connection reset" in details:
            return "transport"
        return "not ready (reload/unload/replacement)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and "execution_timeout_s" in details:
        return "execution timeout"  # the server's answer to a hung batch, not a lost request
    if code == grpc.StatusCode.INTERNAL:
        return "runtime fault"
    return re.sub(r"\d+", "N", details)[:60]


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.outcomes: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.example: dict[tuple[str, str, str], str] = {}
        self.lost: list[str] = []
        self.max_outstanding = 0
        self.times: dict[tuple[str, str, str], list[float]] = {}
        self.start = time.monotonic()

    async def call(self, stub: pb_grpc.GRPCInferenceServiceStub, model: str, value: float) -> None:
        self.sent += 1
        try:
            await stub.ModelInfer(_request(model, value), timeout=30)
            self.outcomes[(model, "OK", "")] += 1
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            cause = _cause(exc.code(), details)
            if (exc.code().name in _LOST and cause != "execution timeout") or cause == "transport":
                self.lost.append(f"{model}: {exc.code().name}: {details}")
            self.outcomes[(model, exc.code().name, cause)] += 1
            self.example.setdefault((model, exc.code().name, cause), details)
            self.times.setdefault((model, exc.code().name, cause), []).append(time.monotonic())


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(address: str, pid: int, duration_s: float, reload_every_s: float, hang_every_s: float, rate: float, seed: int) -> tuple[Tally, list]:
    rng = random.Random(seed)
    tally = Tally()
    rss: list[tuple[float, float]] = []
    reloads = collections.Counter[str]()
    start = time.monotonic()
    end = start + duration_s
    tasks: set[asyncio.Task[None]] = set()

    def fire(stub: pb_grpc.GRPCInferenceServiceStub, model: str, value: float) -> None:
        task = asyncio.create_task(tally.call(stub, model, value))
        tasks.add(task)
        tally.max_outstanding = max(tally.max_outstanding, len(tasks))
        task.add_done_callback(tasks.discard)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def steady(model: str, per_s: float, value) -> None:
            i = 0
            while (at := start + i / per_s) < end:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                fire(stub, model, value())
                i += 1

        async def bursts() -> None:  # work_py: 1 s at ~2x its 50/s capacity, 1 s quiet
            while time.monotonic() < end:
                burst_end = time.monotonic() + 1.0
                while time.monotonic() < burst_end:
                    fire(stub, "work_py", 0.0)
                    await asyncio.sleep(0.01)
                await asyncio.sleep(1.0)

        async def hangs() -> None:
            while time.monotonic() + hang_every_s < end:
                await asyncio.sleep(hang_every_s)
                fire(stub, "hang_py", 5.0)

        async def reload() -> None:
            n = 0
            while time.monotonic() + reload_every_s < end:
                await asyncio.sleep(reload_every_s)
                n += 1
                try:
                    if n % max(1, round(60 / reload_every_s)) == 0:
                        await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="adder"), timeout=60)
                        reloads["unload"] += 1
                    await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="adder"), timeout=60)
                    reloads["load"] += 1
                except grpc.aio.AioRpcError as exc:
                    reloads[f"failed: {exc.code().name}"] += 1

        async def watch_rss() -> None:
            while time.monotonic() < end:
                rss.append((time.monotonic() - start, _rss_mb(pid)))
                await asyncio.sleep(min(10.0, duration_s / 20))

        await asyncio.gather(
            steady("adder", rate, lambda: 1.0),
            steady("failing_py", rate / 4, lambda: -1.0 if rng.random() < 0.1 else 1.0),
            steady("hang_py", rate / 4, lambda: 0.0),
            bursts(), hangs(), reload(), watch_rss(),
        )
        if tasks:
            await asyncio.gather(*tasks)
    rss.append((time.monotonic() - start, _rss_mb(pid)))
    print(f"reloads: {dict(reloads)}")
    return tally, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--reload-every-s", type=float, default=10.0)
    parser.add_argument("--hang-every-s", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s to adder (failing_py and hang_py get a quarter each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-log", type=Path, help="copy the server's log here")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG", help="extra surge serve argument (repeatable)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server to CPU 0 and this load generator to CPU 1")
    args = parser.parse_args(argv)

    from tests.process import SurgeProcess

    with tempfile.TemporaryDirectory(prefix="surge-soak-") as tmp:
        root = write_repository(Path(tmp) / "repo")
        server = SurgeProcess(root, Path(tmp) / "server", "--model-control-mode", "explicit",
                              *(a for m in ("adder", "work_py", "failing_py", "hang_py") for a in ("--load-model", m)), *args.serve_arg)
        server.start()
        if not args.no_pin and len(os.sched_getaffinity(0)) >= 2:  # server and load generator on a core each
            for task in os.listdir(f"/proc/{server.proc.pid}/task"):  # every thread of the server
                os.sched_setaffinity(int(task), {0})
            os.sched_setaffinity(0, {1})
        try:
            tally, rss = asyncio.run(soak(server.address, server.proc.pid, args.duration_s, args.reload_every_s, args.hang_every_s, args.rate, args.seed))
        finally:
            code = server.stop()
        log = server.log()
        if args.keep_log is not None:
            args.keep_log.write_text(log)

    answered = sum(tally.outcomes.values()) - len(tally.lost)
    print(f"\nsoak: {args.duration_s:.0f} s, {tally.sent} requests sent (at most {tally.max_outstanding} outstanding), "
          f"{answered} answered by the server, LOST {len(tally.lost)}")
    print(f"{'model':<12} {'status':<20} {'cause':<40} {'count':>8}  first message")
    for key, count in sorted(tally.outcomes.items()):
        model, status, cause = key
        when = sorted({int(t - tally.start) for t in tally.times.get(key, [])})
        at = f" (at s {when[:6]}{'...' if len(when) > 6 else ''})" if when else ""
        print(f"{model:<12} {status:<20} {cause:<40} {count:>8}  {tally.example.get(key, '')[:90]}{at}")
    print("\nserver RSS (MB) over time:")
    print("  " + "  ".join(f"{t:.0f}s:{mb:.0f}" for t, mb in rss))
    for line in tally.lost[:10]:
        print(f"lost: {line}")
    replaced = len(re.findall(r"instance \d+ replaced and warm", log))
    print(f"hung instances replaced (server log): {replaced}; server exit code on SIGTERM: {code}")
    return 1 if tally.lost or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
