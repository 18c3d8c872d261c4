"""What metrics cost: the demo ``mlp`` served with metrics on and off, side by side in one run.

    python bench/scenarios/metrics_overhead.py [--concurrency 64] [--duration-s 5] [--warmup-s 1] [--rounds 5]
        [--scrape-interval-s 1] [--out results.json] [--a-a | --toggle]

Two ``surge serve`` processes serve the same demo repository, both pinned to CPU 0 (``taskset -c 0``),
one with ``--metrics-port 0`` (histograms on the hot path, /metrics endpoint) and one with
``--metrics-port -1`` (off). Only one is loaded at a time: rounds alternate on, off, on, off, ... (the
order flips every round, so drift on a shared machine hits both alike), and each round is a closed loop
of ``--concurrency`` requests in flight from this process, pinned to CPU 1, over raw grpc.aio with a
request serialised once (1 row of 16 FP32) and responses not parsed. While "on" is measured, /metrics is
scraped every ``--scrape-interval-s`` (Prometheus' default is 15 s: this is harsher), so the scrape's
cost on the server CPU is in the numbers. Besides throughput and latency, each round records the server's
CPU time per answered request (from /proc): on a shared machine other processes take CPU 0 away and move
throughput by several percent between rounds, while CPU per request moves less. Prints one JSON line per
round and a summary: median throughput and p50/p99 latency of each side, and the cost of metrics in
percent, both from the medians and as the median of each round's on/off ratio (the two halves of a round
run back to back). ``--a-a`` runs both sides with metrics off: the "cost" it reports is the noise floor.

``--toggle`` isolates the hot path: one server, in this process (pinned to CPU 0; the load generator is a
child process on CPU 1), whose ``mlp`` version has its histograms detached and re-attached every
``--duration-s`` (on, off, off, on, ...): the same process, memory and sockets on both sides, so the
paired difference in server CPU per request is what recording costs, without the noise of separate
server processes. No scrapes in this mode.
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
    from .closed_loop import closed_loop as load
    from .servers import free_port
else:  # run as a file (python bench/scenarios/metrics_overhead.py), its folder first on sys.path
    from closed_loop import closed_loop as load  # type: ignore[no-redef]
    from servers import free_port  # type: ignore[no-redef]

METHOD = "/inference.GRPCInferenceService/ModelInfer"
SERVER_CPU, LOAD_CPU = "0", 1


def request_bytes(rows: int = 1, seed: int = 0) -> bytes:
    from surge.protos import grpc_service_pb2 as pb

    x = np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 16])
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def _enable_drift(repository: Path, sample_rate: float) -> None:
    """Give the demo mlp a reference profile (N(0, 1) rows, like the generator's) and a [drift] table."""
    import numpy as np

    from surge.server.observability.drift import PROFILE_FILENAME, build_profile

    sample = np.random.default_rng(1).standard_normal((5000, 16)).astype(np.float32)
    (repository / "mlp" / "1" / PROFILE_FILENAME).write_text(build_profile({"x": sample}).to_json())
    config = repository / "mlp" / "config.toml"
    config.write_text(config.read_text() + f"\n[drift]\nsample_rate = {sample_rate}\nwindow_rows = 1000\n")


@contextlib.contextmanager
def surge_server(repository: Path, workdir: Path, metrics: bool, extra: tuple[str, ...] = ()) -> Iterator[tuple[str, str, int]]:
    """A pinned ``surge serve`` (``extra``: more flags); yields (gRPC address, metrics address or "", pid) once ready."""
    address_file = workdir / f"address-{'on' if metrics else 'off'}"
    address_file.unlink(missing_ok=True)
    metrics_port = str(free_port()) if metrics else "-1"
    cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(repository),
           "--grpc-port", "0", "--metrics-port", metrics_port, "--http-port", "-1", "--address-file", str(address_file), "--log-level", "warning", *extra]  # fmt: skip
    log = open(workdir / f"server-{'on' if metrics else 'off'}.log", "wb")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (address_file.is_file() and address_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {log.name}")
            time.sleep(0.05)
        yield address_file.read_text().strip(), f"127.0.0.1:{metrics_port}" if metrics else "", proc.pid  # taskset execs: the server's pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


async def closed_loop(address: str, payload: bytes, concurrency: int, warmup_s: float, duration_s: float,
                      metrics_address: str, scrape_interval_s: float, server_pid: int = 0) -> dict:  # fmt: skip
    """``closed_loop.closed_loop`` against ``address`` (after 50 warm-up calls), scraping ``/metrics`` meanwhile."""
    options = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
    scrapes: list[float] = []

    async def scraper(stop_at: float) -> None:
        while metrics_address and scrape_interval_s > 0 and time.perf_counter() < stop_at:
            await asyncio.sleep(scrape_interval_s)
            t0 = time.perf_counter()
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=30).read())
            scrapes.append(time.perf_counter() - t0)
            assert b"surge_request_duration_seconds" in body

    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(METHOD)
        for _ in range(50):
            await call(payload, timeout=30)
        result = await load(call, payload, concurrency, warmup_s, duration_s, server_pid=server_pid, alongside=[scraper])
    return {**result, "scrapes": len(scrapes), "scrape_ms": float(np.median(scrapes) * 1e3) if scrapes else None}


def toggle(args: argparse.Namespace) -> dict:
    """The in-process toggle (see the module docstring); returns the summary."""
    import threading

    import uvloop

    from surge.server.app import Server, ServerConfig
    from surge.server.demo import write_demo_repository

    os.sched_setaffinity(0, {int(SERVER_CPU)})
    tmp = tempfile.TemporaryDirectory(prefix="surge-metrics-toggle-")
    repository = write_demo_repository(Path(tmp.name) / "repository")
    server = Server(ServerConfig(model_repository=repository, grpc_port=0, metrics_port=0, http_port=-1))
    loop = uvloop.new_event_loop()
    address = loop.run_until_complete(server.start())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    version = server.repository.get("mlp")
    recorder = version.stats.metrics
    generator = subprocess.Popen(
        ["taskset", "-c", str(LOAD_CPU), sys.executable, __file__, "--generate", address, "--concurrency", str(args.concurrency)], cwd=Path.cwd()
    )
    per_request: dict[str, list[float]] = {"on": [], "off": []}
    try:
        time.sleep(args.warmup_s + 2)
        for i in range(2 * args.rounds):
            side = ("on", "off")[(i + i // 2) % 2]  # on off off on on off ...: neither side always goes first
            version.stats.metrics = recorder if side == "on" else None  # a reference swap, read by the loop thread
            time.sleep(0.3)
            cpu0, served0 = time.process_time(), version.stats.success.count
            time.sleep(args.duration_s)
            cpu1, served1 = time.process_time(), version.stats.success.count
            per_request[side].append((cpu1 - cpu0) / (served1 - served0) * 1e6)
            print(json.dumps({"window": i, "metrics": side, "server_cpu_us_per_request": per_request[side][-1], "requests": served1 - served0}), flush=True)
    finally:
        generator.kill()
        generator.wait()
        loop.call_soon_threadsafe(loop.stop)
    ratios = [a / b for a, b in zip(per_request["on"], per_request["off"])]
    return {"mode": "toggle", "concurrency": args.concurrency, "window_s": args.duration_s, "windows_per_side": args.rounds,
            "on_cpu_us_per_request": statistics.median(per_request["on"]), "off_cpu_us_per_request": statistics.median(per_request["off"]),
            "paired_cpu_per_request_cost_pct": 100 * (statistics.median(ratios) - 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side (on and off alternate)")
    parser.add_argument("--scrape-interval-s", type=float, default=1.0, help="0: no scrapes (the hot path alone)")
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--drift", type=float, default=0.0, metavar="RATE",
                        help="also turn drift monitoring on for mlp (sample_rate RATE, e.g. 0.01) on the metrics side")
    parser.add_argument("--a-a", action="store_true", help="calibration: both sides with metrics off (the 'cost' measured is noise)")
    parser.add_argument("--toggle", action="store_true", help="one in-process server, histograms attached and detached in turn")
    parser.add_argument("--generate", metavar="ADDRESS", help=argparse.SUPPRESS)  # --toggle's load generator
    args = parser.parse_args()
    if args.generate:
        import uvloop

        uvloop.run(closed_loop(args.generate, request_bytes(), args.concurrency, 0.0, 3600.0, "", 0))
        return
    if args.toggle:
        summary = toggle(args)
        print(json.dumps({"summary": summary}), flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps(summary, indent=2))
        return
    os.sched_setaffinity(0, {LOAD_CPU})
    import uvloop

    from surge.server.demo import write_demo_repository

    payload = request_bytes()
    results: dict[str, list[dict]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="surge-metrics-overhead-") as tmp:
        workdir = Path(tmp)
        repository = write_demo_repository(workdir / "repository")
        if args.drift:
            _enable_drift(repository, args.drift)
        for i in range(args.rounds):
            for side in (("on", "off") if i % 2 == 0 else ("off", "on")):
                with surge_server(repository, workdir, metrics=side == "on" and not args.a_a) as (address, metrics_address, pid):
                    r = uvloop.run(closed_loop(address, payload, args.concurrency, args.warmup_s, args.duration_s, metrics_address,
                                               args.scrape_interval_s, pid))  # fmt: skip
                results[side].append(r)
                print(json.dumps({"round": i, "metrics": side, **r}), flush=True)

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    summary = {
        "a_a": args.a_a, "concurrency": args.concurrency, "duration_s": args.duration_s, "rounds": args.rounds, "scrape_interval_s": args.scrape_interval_s,
        "on": {k: median("on", k) for k in ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")},
        "off": {k: median("off", k) for k in ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")},
        "throughput_cost_pct": 100 * (1 - median("on", "infer_per_s") / median("off", "infer_per_s")),
        "p99_cost_pct": 100 * (median("on", "p99_ms") / median("off", "p99_ms") - 1),
        # each round's on and off ran back to back: the median of their ratios cancels slow drift of a shared machine
        "paired_throughput_cost_pct": 100 * (1 - statistics.median(a["infer_per_s"] / b["infer_per_s"] for a, b in zip(results["on"], results["off"]))),
        "paired_cpu_per_request_cost_pct": 100 * (statistics.median(a["server_cpu_us_per_request"] / b["server_cpu_us_per_request"]
                                                                    for a, b in zip(results["on"], results["off"])) - 1),
        "paired_p99_cost_pct": 100 * (statistics.median(a["p99_ms"] / b["p99_ms"] for a, b in zip(results["on"], results["off"])) - 1),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}",
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip(),
    }  # fmt: skip
    print(json.dumps({"summary": summary, "runs": results} if args.out is None else {"summary": summary}), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
