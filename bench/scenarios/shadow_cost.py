"""What a shadow costs the primary: the demo ``mlp`` with a 100% shadow to a slow version vs no shadow, side by side.

    python bench/scenarios/shadow_cost.py [--concurrency 16] [--duration-s 4] [--warmup-s 1] [--rounds 6]
        [--shadow-delay-s 0.02] [--out results.json] [--a-a]

One ``surge serve`` pinned to CPU 0 (``taskset -c 0``) serves model ``mlp`` (16 FP32 in, 4 class scores
out, Python backend): version 1 a small NumPy classifier, version 2 the same that first sleeps
``--shadow-delay-s`` per request (a slow model: at 20 ms it answers at most 50 requests/s, far below the
primary's rate; sleeping, it costs the shared CPU little, so this measures the shadow machinery and its
budget, not CPU contention with a compute-heavy shadow). Routes pin every
request to version 1 (``[routing.weights] 1 = 1``), so both sides take the same routed request path; the
only difference is the shadow: before each window the script sets it (``SurgeClient.set_shadow(2)``,
fraction 1.0: every request is mirrored) or removes it. The shadow's budget is the default (4 executing,
64 waiting); everything beyond is dropped and counted. Windows alternate on, off, off, on, ... so neither
side always goes first; each is a closed loop of ``--concurrency`` requests from this process, pinned to
CPU 1, over raw grpc.aio with a request serialised once. Reports median p50/p99/throughput per side,
the paired ratios (each round's on and off ran back to back), the server CPU per answered request, and the
shadow's compared/dropped counts from /metrics. ``--a-a`` runs both sides without a shadow: the "rise" it
reports is the noise floor of the machine. ``--toggle`` measures the server's CPU time per primary request
instead, in one in-process server whose shadow is set and removed between windows (less noisy than latency
on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

if __package__:
    from .closed_loop import closed_loop
    from .servers import free_port
else:  # run as a file (python bench/scenarios/shadow_cost.py), its folder first on sys.path
    from closed_loop import closed_loop  # type: ignore[no-redef]
    from servers import free_port  # type: ignore[no-redef]

METHOD = "/inference.GRPCInferenceService/ModelInfer"
SERVER_CPU, LOAD_CPU = "0", 1

_MODEL = '''
import time

import numpy as np

W = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)


class Model:
    def infer(self, inputs, output_names):
        if {delay_s}:
            time.sleep({delay_s})
        logits = inputs["x"] @ W
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {{"probabilities": e / e.sum(axis=1, keepdims=True)}}
'''
_CONFIG = """
backend = "python"
max_batch_size = 64
[version_policy]
all = true
[[input]]
name = "x"
datatype = "FP32"
dims = [16]
[[output]]
name = "probabilities"
datatype = "FP32"
dims = [4]
[routing.weights]
1 = 1
"""


def write_repository(root: Path, delay_s: float) -> Path:
    """Model ``mlp``: version 1 a small NumPy classifier, version 2 the same after sleeping ``delay_s`` (Python backend both:
    a model's backend is per model, not per version)."""
    for version, delay in ((1, 0.0), (2, delay_s)):
        (root / "mlp" / str(version)).mkdir(parents=True)
        (root / "mlp" / str(version) / "model.py").write_text(_MODEL.format(delay_s=delay))
    (root / "mlp" / "config.toml").write_text(_CONFIG)
    return root


@contextlib.contextmanager
def surge_server(repository: Path, workdir: Path) -> Iterator[tuple[str, str, int]]:
    """A pinned ``surge serve``; yields (gRPC address, metrics address, pid) once ready."""
    address_file = workdir / "address"
    metrics_port = str(free_port())
    cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(repository),
           "--grpc-port", "0", "--metrics-port", metrics_port, "--http-port", "-1", "--address-file", str(address_file), "--log-level", "warning"]  # fmt: skip
    log = open(workdir / "server.log", "wb")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (address_file.is_file() and address_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {log.name}")
            time.sleep(0.05)
        yield address_file.read_text().strip(), f"127.0.0.1:{metrics_port}", proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def request_bytes() -> bytes:
    from surge.protos import grpc_service_pb2 as pb

    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


async def window(channel: grpc.aio.Channel, payload: bytes, concurrency: int, warmup_s: float, duration_s: float, pid: int) -> dict:
    return await closed_loop(channel.unary_unary(METHOD), payload, concurrency, warmup_s, duration_s, server_pid=pid)


def shadow_counts(metrics_address: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=30).read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == "surge_shadow_requests_total" and s.labels.get("model") == "mlp":
                counts[s.labels["outcome"]] = counts.get(s.labels["outcome"], 0.0) + s.value
    return counts


async def run(args: argparse.Namespace, address: str, metrics_address: str, pid: int) -> dict[str, list[dict]]:
    from surge.clients import SurgeClient

    payload = request_bytes()
    results: dict[str, list[dict]] = {"shadow": [], "none": []}
    options = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
    with SurgeClient(address) as admin:
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            for _ in range(100):
                await channel.unary_unary(METHOD)(payload, timeout=30)
            for i in range(2 * args.rounds):
                side = ("shadow", "none")[(i + i // 2) % 2]  # shadow none none shadow shadow none ...
                if side == "shadow" and not args.a_a:
                    admin.set_shadow("mlp", 2, fraction=1.0)
                else:
                    admin.remove_shadow("mlp")
                r = await window(channel, payload, args.concurrency, args.warmup_s, args.duration_s, pid)
                r["shadow_counts"] = shadow_counts(metrics_address)
                results[side].append(r)
                print(json.dumps({"window": i, "side": side, **r}), flush=True)
    return results


def toggle(args: argparse.Namespace) -> dict:
    """One in-process server on CPU 0 (the generator is a child process on CPU 1, sending without pause); the
    shadow is set and removed between windows (on, off, off, on, ...) on the same server, and the measure
    is the server's CPU time per answered primary request: the same process, memory and sockets on both sides."""
    import threading

    import uvloop

    from surge.server.app import Server, ServerConfig

    os.sched_setaffinity(0, {int(SERVER_CPU)})
    tmp = tempfile.TemporaryDirectory(prefix="surge-shadow-toggle-")
    repository = write_repository(Path(tmp.name) / "repository", args.shadow_delay_s)
    server = Server(ServerConfig(model_repository=repository, grpc_port=0, metrics_port=0, http_port=-1))
    loop = uvloop.new_event_loop()
    address = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    primary = server.repository.get("mlp", "1")
    generator = subprocess.Popen(
        ["taskset", "-c", str(LOAD_CPU), sys.executable, __file__, "--generate", address, "--concurrency", str(args.concurrency)], cwd=Path.cwd()
    )
    per_request: dict[str, list[float]] = {"shadow": [], "none": []}
    try:
        time.sleep(args.warmup_s + 2)
        for i in range(2 * args.rounds):
            side = ("shadow", "none")[(i + i // 2) % 2]
            change = (lambda: server.traffic.set_shadow("mlp", 2, 1.0)) if side == "shadow" else (lambda: server.traffic.remove_shadow("mlp"))
            loop.call_soon_threadsafe(change)  # the traffic object lives on the server's loop
            time.sleep(0.3)
            cpu0, served0 = time.process_time(), primary.stats.success.count
            time.sleep(args.duration_s)
            cpu1, served1 = time.process_time(), primary.stats.success.count
            per_request[side].append((cpu1 - cpu0) / (served1 - served0) * 1e6)
            print(json.dumps({"window": i, "side": side, "server_cpu_us_per_request": per_request[side][-1], "requests": served1 - served0}), flush=True)
    finally:
        generator.kill()
        generator.wait()
        asyncio.run_coroutine_threadsafe(server.stop(1.0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        tmp.cleanup()
    pairs = server.traffic.snapshot()[0][5]
    return {"mode": "toggle", "concurrency": args.concurrency, "window_s": args.duration_s, "windows_per_side": args.rounds,
            "shadow_cpu_us_per_request": statistics.median(per_request["shadow"]), "none_cpu_us_per_request": statistics.median(per_request["none"]),
            "paired_cpu_per_request_rise_pct": 100 * (statistics.median(a / b for a, b in zip(per_request["shadow"], per_request["none"])) - 1),
            "shadow_outcomes": {k: v for p in pairs for k, v in p.outcomes.items()}}  # fmt: skip


async def generate(address: str, concurrency: int) -> None:
    """--toggle's load: ``concurrency`` requests in flight until killed."""
    payload = request_bytes()
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)

        async def worker() -> None:
            while True:
                await call(payload, timeout=30)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=6, help="windows per side (they alternate)")
    parser.add_argument("--shadow-delay-s", type=float, default=0.02, help="how long the slow shadow version takes per request")
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--a-a", action="store_true", help="calibration: no shadow on either side (the 'rise' measured is the noise)")
    parser.add_argument("--toggle", action="store_true", help="one in-process server, shadow set and removed in turn; CPU per request")
    parser.add_argument("--generate", metavar="ADDRESS", help=argparse.SUPPRESS)  # --toggle's load generator
    args = parser.parse_args()
    import uvloop

    if args.generate:
        uvloop.run(generate(args.generate, args.concurrency))
        return
    if args.toggle:
        summary = toggle(args)
        print(json.dumps({"summary": summary}), flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps(summary, indent=2))
        return
    os.sched_setaffinity(0, {LOAD_CPU})

    with tempfile.TemporaryDirectory(prefix="surge-shadow-cost-") as tmp:
        workdir = Path(tmp)
        repository = write_repository(workdir / "repository", args.shadow_delay_s)
        with surge_server(repository, workdir) as (address, metrics_address, pid):
            results = uvloop.run(run(args, address, metrics_address, pid))

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    def paired(key: str) -> float:
        return statistics.median(a[key] / b[key] for a, b in zip(results["shadow"], results["none"]))

    last = results["shadow"][-1]["shadow_counts"]
    summary = {
        "a_a": args.a_a, "concurrency": args.concurrency, "duration_s": args.duration_s, "rounds": args.rounds, "shadow_delay_s": args.shadow_delay_s,
        "shadow": {k: median("shadow", k) for k in ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")},
        "none": {k: median("none", k) for k in ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")},
        "p50_rise_pct": 100 * (median("shadow", "p50_ms") / median("none", "p50_ms") - 1),
        "p99_rise_pct": 100 * (median("shadow", "p99_ms") / median("none", "p99_ms") - 1),
        "paired_p50_rise_pct": 100 * (paired("p50_ms") - 1),
        "paired_p99_rise_pct": 100 * (paired("p99_ms") - 1),
        "paired_cpu_per_request_rise_pct": 100 * (paired("server_cpu_us_per_request") - 1),
        "errors": sum(r["errors"] for side in results.values() for r in side),
        "shadow_compared": last.get("compared", 0), "shadow_dropped": last.get("dropped", 0),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}",
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip(),
    }  # fmt: skip
    print(json.dumps({"summary": summary}), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
