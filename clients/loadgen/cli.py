"""``surge bench``: load-test any Open Inference Protocol (v2) gRPC server, print a table, gate on an SLO.

    surge bench MODEL [--url 127.0.0.1:8001] [--concurrency 1,8,64 | --rate 100,500 [--arrival poisson|constant]]
                      [--duration-s 10 | --requests N] [--warmup-s 1] [--connections 4] [--processes 1]
                      [--rows N] [--shape NAME:D1,D2] [--input NAME=FILE.npy] [--version V] [--routing-key K] [--deadline-ms MS]
                      [--server-stats] [--json FILE] [--plot FILE.png] [--compare OLD.json] [--slo 'p99<20ms,errors<0.1%']
    surge bench --scenario FILE.toml [...]      # models, shapes, mix weights, routing keys, deadlines (scenario.py)

Exit codes: 0 done (and the SLO met), 1 the SLO was missed, 2 bad arguments or scenario, 3 the server or a model
could not be reached. Imports only the client side of Surge (never ``surge.server`` or a model runtime).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_OK, EXIT_SLO, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="surge bench", description="Load-test a v2 inference server (Surge, Triton, ...) and gate on an SLO.",
                                epilog="Exit codes: 0 ok, 1 SLO missed, 2 bad arguments or scenario, 3 server or model unreachable.")  # fmt: skip
    p.add_argument("model", nargs="?", help="the model to load (or --scenario)")
    p.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address (default 127.0.0.1:8001)")
    p.add_argument("--scenario", type=Path, help="a TOML scenario: models, shapes, mix weights, routing keys, deadlines")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", help="closed loop: requests in flight, a comma list sweeps (default 1)")
    load.add_argument("--rate", help="open loop: requests per second, a comma list sweeps")
    p.add_argument("--arrival", choices=("poisson", "constant"), default="poisson", help="open-loop arrivals (default poisson)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--duration-s", type=float, help="measured seconds per level (default 10)")
    size.add_argument("--requests", type=int, help="measured requests per level instead of a duration")
    p.add_argument("--warmup-s", type=float, default=1.0, help="seconds of load before measuring, per level (default 1)")
    p.add_argument("--connections", type=int, default=4, help="gRPC connections (channels) in all (default 4)")
    p.add_argument("--processes", type=int, default=1, help="generator processes sharing the load (default 1)")
    p.add_argument("--max-inflight", type=int, default=16384, help="open loop: at most this many outstanding requests (default 16384)")
    p.add_argument("--drain-s", type=float, default=10.0, help="after the window, wait this long for answers, then cancel (default 10)")
    p.add_argument("--rows", type=int, default=1, help="rows per request for a batched model (default 1)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2", help="an input's dims without the batch dimension")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="an input's rows from a .npy file")
    p.add_argument("--version", default="", help="ask for this model version (default: the server's choice)")
    p.add_argument("--routing-key", action="append", default=[], metavar="KEY", help="request parameter routing_key (repeat: cycled)")
    p.add_argument("--deadline-ms", type=float, help="gRPC deadline of each request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-stats", action="store_true", help="add the server's stage breakdown (ModelStatistics deltas)")
    p.add_argument("--json", type=Path, help="write the full results here")
    p.add_argument("--plot", type=Path, help="write a PNG: percentiles over time, latency against throughput (needs surge[plot])")
    p.add_argument("--compare", type=Path, help="print the change against an earlier --json report")
    p.add_argument("--slo", help="e.g. 'p99<20ms,errors<0.1%%': exit 1 when any level misses it")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="live progress line (default: when stderr is a terminal)")
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``surge bench``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        from surge.clients.loadgen import histogram  # noqa: F401  (fails early without the extra)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from surge.clients.loadgen.results import SloError, parse_slo
    from surge.clients.loadgen.scenario import ScenarioError

    try:
        checks = parse_slo(args.slo) if args.slo else None
        levels = _levels(args)
        scenario = _scenario(args)
        old = json.loads(args.compare.read_text()) if args.compare else None
    except (SloError, ScenarioError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _run(args, scenario, levels, checks, old)


def _levels(args: argparse.Namespace) -> list[Any]:
    from surge.clients.loadgen.engine import Load

    if args.processes < 1 or args.connections < 1 or args.warmup_s < 0 or args.rows < 1:
        raise ValueError("--processes, --connections and --rows must be positive and --warmup-s not negative")
    duration = None if args.requests is not None else (10.0 if args.duration_s is None else args.duration_s)
    if (duration is not None and duration <= 0) or (args.requests is not None and args.requests < 1):
        raise ValueError("--duration-s and --requests must be positive")
    common = dict(duration_s=duration, requests=args.requests, warmup_s=args.warmup_s, connections=args.connections,
                  max_inflight=args.max_inflight, drain_s=args.drain_s, seed=args.seed, arrival=args.arrival)  # fmt: skip
    if args.rate:
        rates = [float(r) for r in args.rate.split(",")]
        if any(r <= 0 for r in rates):
            raise ValueError("--rate values must be positive")
        return [Load(rate=r, **common) for r in rates]
    concurrencies = [int(c) for c in (args.concurrency or "1").split(",")]
    if any(c < 1 for c in concurrencies):
        raise ValueError("--concurrency values must be positive")
    return [Load(concurrency=c, **common) for c in concurrencies]


def _scenario(args: argparse.Namespace) -> Any:
    from surge.clients.loadgen.scenario import InputSpec, RequestSpec, Scenario, ScenarioError, load_scenario

    if args.scenario is not None:
        if args.model or args.shape or args.input or args.routing_key or args.version or args.deadline_ms or args.rows != 1:
            raise ScenarioError("--scenario describes the requests: give no MODEL, --rows, --shape, --input, --version, --routing-key or --deadline-ms")
        return load_scenario(args.scenario)
    if not args.model:
        raise ScenarioError("name a MODEL or give --scenario FILE.toml")
    inputs: dict[str, InputSpec] = {}
    for item in args.shape:
        name, sep, dims = item.partition(":")
        if not sep:
            raise ScenarioError(f"--shape {item!r}: expected NAME:D1,D2")
        try:
            inputs[name] = InputSpec(name, shape=tuple(int(d) for d in dims.split(",") if d))
        except ValueError:
            raise ScenarioError(f"--shape {item!r}: dims must be integers") from None
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep:
            raise ScenarioError(f"--input {item!r}: expected NAME=FILE.npy")
        inputs[name] = InputSpec(name, npy=str(Path(path).resolve()))
    spec = RequestSpec(model=args.model, version=args.version, rows=args.rows, deadline_ms=args.deadline_ms,
                       routing_keys=tuple(args.routing_key), inputs=tuple(inputs.values()))  # fmt: skip
    return Scenario((spec,), seed=args.seed)


def _run(args: argparse.Namespace, scenario: Any, levels: list[Any], checks: Any, old: dict[str, Any] | None) -> int:
    from surge.clients import InferenceClient, InferenceServerError
    from surge.clients.loadgen.engine import run_level
    from surge.clients.loadgen.results import SCHEMA, compare_text, evaluate_slo, level_result, server_delta, table_text
    from surge.clients.loadgen.scenario import ScenarioError, build_plan

    models = sorted({r.model for r in scenario.requests})
    try:
        with InferenceClient(args.url, timeout_s=10.0, retries=2) as client:
            server = client.server_metadata()
            metadata = {m: client.model_metadata(m) for m in models}
    except InferenceServerError as exc:
        print(f"error: {args.url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        plan = build_plan(scenario, metadata)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": ["surge", "bench", *args.argv],
        "git_revision": _git_revision(Path.cwd()),
        "surge": {"version": _surge_version(), "git_revision": _git_revision(Path(__file__).resolve().parent)},
        "target": {"url": args.url, "server": server.name, "server_version": server.version},
        "machine": _machine(),
        "settings": {"duration_s": levels[0].duration_s, "requests": levels[0].requests, "warmup_s": args.warmup_s,
                     "connections": args.connections, "processes": args.processes, "arrival": args.arrival,
                     "server_stats": args.server_stats, "loop": args.loop},
        "scenario": scenario.to_dict(),
        "levels": [],
        "slo": None,
    }  # fmt: skip
    show = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        for load in levels:
            report["levels"].append(_one_level(args, plan, load, models, show, run_level, level_result, server_delta))
    except (InferenceServerError, RuntimeError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if checks:
        report["slo"] = {"spec": args.slo, **evaluate_slo(checks, report["levels"])}
    if not args.quiet:
        print(table_text(report))
        if old is not None:
            print("\n" + compare_text(old, report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        try:
            from surge.clients.loadgen.plot import write_plot
        except ImportError:
            print("error: --plot needs matplotlib: pip install 'surge[plot]'", file=sys.stderr)
            return EXIT_USAGE
        write_plot(report, args.plot)
    if report["slo"] is not None and not report["slo"]["passed"]:
        return EXIT_SLO
    return EXIT_OK


def _one_level(args: argparse.Namespace, plan: Any, load: Any, models: list[str], show: bool, run_level: Any, level_result: Callable[..., dict[str, Any]],
               server_delta: Any) -> dict[str, Any]:  # fmt: skip
    from surge.clients import InferenceClient
    from surge.clients.loadgen.results import level_key

    name = level_key({"mode": "closed" if load.closed else "open", "concurrency": load.concurrency, "rate": load.rate})
    snapshots: dict[str, Any] = {}
    stats_client = InferenceClient(args.url, timeout_s=10.0) if args.server_stats else None
    start_at = time.time() + (0.5 if args.processes == 1 else 2.0)
    timer = None
    if stats_client is not None:
        if load.warmup_s == 0:
            snapshots["before"] = stats_client.model_statistics()
        else:  # the load runs on: the snapshot is taken while it does, at the window's start
            def snap() -> None:
                try:
                    snapshots["before"] = stats_client.model_statistics()
                except Exception as exc:  # reported, and the level goes on without the server's breakdown
                    print(f"\nwarning: ModelStatistics failed at the window start: {exc}", file=sys.stderr)

            timer = threading.Timer(max(0.0, start_at + load.warmup_s - time.time()), snap)
            timer.start()
    progress = _Progress(name, start_at, load.warmup_s, show)
    server = None
    try:
        try:
            parts = run_level(args.url, plan, load, args.processes, args.loop, tick=progress.tick, start_at=start_at)
        finally:
            progress.done()
            if timer is not None:
                timer.join()
        if stats_client is not None and "before" in snapshots:
            server = server_delta(snapshots["before"], stats_client.model_statistics(), set(models))
    finally:
        if stats_client is not None:
            stats_client.close()
    return level_result(load, plan, parts, server)


class _Progress:
    """The live line on stderr: measured answers per second, p99 over the last second, errors."""

    def __init__(self, name: str, start_at: float, warmup_s: float, show: bool) -> None:
        self.name, self.window_at, self.show = name, start_at + warmup_s, show
        self.last = (time.time(), 0)
        self.rate = 0.0
        self.lock = threading.Lock()

    def tick(self, ok: int, errors: int, p99_ms: float | None) -> None:
        if not self.show:
            return
        now = time.time()
        with self.lock:
            t0, n0 = self.last
            if now - t0 >= 0.9:
                self.rate = (ok - n0) / (now - t0)
                self.last = (now, ok)
            phase = "warm-up" if now < self.window_at else f"{now - self.window_at:6.1f} s"
            p99 = "-" if p99_ms is None else f"{p99_ms:.3f}"
            sys.stderr.write(f"\r[{self.name}] {phase}  {self.rate:9.1f} infer/s  p99 {p99} ms  errors {errors}  ok {ok}   ")
            sys.stderr.flush()

    def done(self) -> None:
        if self.show:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _git_revision(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _surge_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("surge")
    except PackageNotFoundError:
        return None


def _machine() -> dict[str, Any]:
    import grpc
    import numpy

    cpu = None
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), None)
    except OSError:
        pass
    return {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "grpcio": grpc.__version__, "numpy": numpy.__version__,
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
