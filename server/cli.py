"""The ``surge`` command line: ``serve``, ``infer``, ``models``, ``build-trt``, ``top``, ``profile``, ``drift``, ...

    surge serve [--model-repository DIR] [--host 127.0.0.1] [--grpc-port 8001] [--http-port 8000] [--metrics-port 8002] [--model-control-mode none|explicit|poll]
                [--workers N]   # N front ends on one port (SO_REUSEPORT) over one engine per device, see workers.py
    surge infer MODEL [--input NAME=FILE.npy ...] [--url 127.0.0.1:8001] [--batch N]    # --url: always the gRPC address
    surge models [--url 127.0.0.1:8001]
    surge build-trt MODEL.onnx --output model.plan [--fp16] [--max-batch-size N] [--workspace-bytes N] [--instances K]
    surge top [--metrics-url 127.0.0.1:8002] [--interval-s 2] [--once]   # live view from the metrics endpoint
    surge observability [--out DIR]      # the Grafana dashboard and Prometheus alert rules shipped with Surge
    surge profile MODEL_DIR|MODEL.onnx --data FILE.npy|.npz [--input NAME] [--outputs FILE.npy|.npz] [--out drift_profile.json]
    surge drift MODEL [--metrics-url 127.0.0.1:8002] [--version N]   # per-feature PSI/KS/alert from the metrics endpoint
    surge route MODEL [--url 127.0.0.1:8001] [--weights 1=90,2=10] [--shadow V[:FRACTION] | --no-shadow] [--promote V] [--rollback] [--reset]
    surge ab MODEL [--metrics-url 127.0.0.1:8002] [--baseline V] [--alpha 0.05] [--interval-s N]   # compare versions, with significance tests
    surge bench MODEL|--scenario FILE.toml [--concurrency 1,8 | --rate 500] [--slo 'p99<20ms']   # load generator (surge.clients.loadgen)
    surge batch --model-repository R --model M --input FILE --output FILE [--chunk-rows N]   # offline, in-process

``infer`` and ``models`` use only the client (``surge.clients``), ``top`` only HTTP and prometheus_client;
``serve`` imports the server. Modules are imported by the command that needs them, so a client command starts fast.
Every user mistake ends in one line on stderr and exit code 2, never a traceback (``CliError``, ``_Parser.error``).
``--url`` is a gRPC address everywhere; the commands that read ``/metrics`` take ``--metrics-url`` (``--url`` is
still accepted there, since they have no gRPC address).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CliError", "main"]

GRPC_URL = "127.0.0.1:8001"
METRICS_URL = "127.0.0.1:8002"


class CliError(Exception):
    """A user mistake: ``main`` prints ``error: MESSAGE`` as one line and exits with 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block): ``error: surge route: argument --weights: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("surge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``surge --version``; the version is read only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print Surge's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> NoReturn:
        print(f"surge {_version()}")
        parser.exit(0)


def grpc_url(url: str) -> str:
    """A gRPC ``host:port`` (or ``unix:PATH``) as the client takes it; ``http://`` and ``grpc://`` prefixes are dropped."""
    url = url.strip()
    for scheme in ("http://", "grpc://"):
        url = url.removeprefix(scheme)
    if url.startswith("https://"):
        raise CliError(f"--url {url}: the command line speaks plain gRPC; give HOST:PORT without https://")
    return url.rstrip("/")


def _metrics_url_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-url", default=METRICS_URL, metavar="HOST:PORT",
                        help=f"the server's metrics endpoint (default {METRICS_URL}; not the gRPC port)")
    parser.add_argument("--url", dest="metrics_url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the older spelling


def _grpc_url_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=GRPC_URL, metavar="HOST:PORT", help=f"the server's gRPC address (default {GRPC_URL})")


def _parser(serving: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``serving=False`` leaves out serve's limit flags, whose defaults import the server's codec."""
    parser = _Parser(prog="surge", description="Surge: a fast, Triton-compatible inference server.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve a model repository over gRPC and REST")
    serve.add_argument("--model-repository", type=Path, help="model repository folder (default: the built-in demo repository)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 in containers)")
    serve.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 = any free port)")
    serve.add_argument("--http-port", type=int, default=None,
                       help="REST v2 (HTTP/JSON) port (default 8000, or off with a Unix --grpc-address; 0 = any free port; -1 = REST off)")
    serve.add_argument("--metrics-port", type=int, default=8002,
                       help="Prometheus /metrics HTTP port (default 8002; 0 = any free port; -1 = metrics off)")
    serve.add_argument("--model-control-mode", choices=("none", "explicit", "poll"), default="none",
                       help="none (default): load all at start; explicit: only through the API; poll: watch the folder")
    serve.add_argument("--load-model", action="append", default=[], metavar="NAME", help="in explicit mode, load NAME at start (repeatable)")
    serve.add_argument("--repository-poll-s", type=float, default=15.0, help="seconds between scans in poll mode (default 15)")
    serve.add_argument("--no-strict-readiness", action="store_true", help="be ready even when some model failed to load")
    serve.add_argument("--switch-interval-ms", type=float, default=0.0,
                       help="the GIL switch interval (sys.setswitchinterval) in ms; 0 (default) keeps Python's 5 ms. Lower it when runtime threads "
                            "(GPU models) wait for the GIL behind a busy event loop; see docs/pages/gpu.md")  # fmt: skip
    serve.add_argument("--drain-timeout-s", type=float, default=30.0, help="on shutdown/unload, how long in-flight requests may run (default 30)")
    serve.add_argument("--address-file", type=Path, help="once ready, write the bound host:port into this file (for scripts)")
    if serving:
        _add_reliability_flags(serve)
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log threshold (default info)")
    serve.add_argument("--trace-exporter", choices=("otlp-grpc", "otlp-http", "console", "none"), default="",
                       help="export OpenTelemetry traces (needs surge[tracing]); default: $OTEL_TRACES_EXPORTER, else none (tracing off)")
    serve.add_argument("--trace-endpoint", default="",
                       help="OTLP collector URL (default: $OTEL_EXPORTER_OTLP_ENDPOINT, else the exporter's localhost:4317 / :4318)")
    serve.add_argument("--trace-ratio", type=float, default=None,
                       help="share of new traces sampled, 0..1; a caller's sampled flag is followed (default: $OTEL_TRACES_SAMPLER_ARG, else 1)")
    serve.add_argument("--trace-service-name", default="",
                       help="service.name of the spans (default: $OTEL_SERVICE_NAME, else surge)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="N front-end processes sharing the gRPC and REST ports (SO_REUSEPORT) over one engine process per device "
                            "that owns the models (one batcher per model for all); default 1: one process, models in process "
                            "(docs/pages/scaling.md)")
    serve.add_argument("--engine-process", action="store_true",
                       help="run the models in an engine process even with --workers 1 (one front end over the engine; for comparisons)")
    serve.add_argument("--engine-arena-mb", type=int, default=512, metavar="MB",
                       help="with --workers: shared memory per front end and engine for request tensors, and as much for responses (pages are "
                            "used only once touched); a request that finds it full gets UNAVAILABLE (default 512)")
    serve.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"), help="event loop (default: uvloop when installed)")

    infer = sub.add_parser("infer", help="send one inference request and print the outputs")
    infer.add_argument("model", help="the model's name")
    infer.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="input from a .npy file (others get random data)")
    infer.add_argument("--version", default="", help="the model version (default: the one the server routes to)")
    infer.add_argument("--batch", type=int, default=1, help="rows of random data for batchable models (default 1)")
    _grpc_url_flag(infer)
    infer.add_argument("--timeout-s", type=float, default=30.0, help="the request's deadline in seconds (default 30)")
    infer.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")

    models = sub.add_parser("models", help="list the repository's models and their states")
    _grpc_url_flag(models)

    build = sub.add_parser("build-trt", help="build a TensorRT engine (model.plan) from an ONNX model (needs surge[tensorrt] and a GPU)")
    build.add_argument("onnx", type=Path, help="the ONNX model")
    build.add_argument("--output", type=Path, required=True, help="where to write the engine, e.g. models/NAME/1/model.plan")
    build.add_argument("--fp16", action="store_true", help="allow fp16 kernels")
    build.add_argument("--max-batch-size", type=int, default=64, help="largest batch (rows) the profile admits (default 64)")
    build.add_argument("--opt-batch-size", type=int, default=0, help="batch TensorRT tunes for (default: the max batch size)")
    build.add_argument("--workspace-bytes", type=int, default=0, help="builder workspace limit (default: TensorRT's)")
    build.add_argument("--instances", type=int, default=1, help="identical profiles, one per instance sharing a GPU (default 1)")
    top = sub.add_parser("top", help="live view of a server from its /metrics: rates, latency, errors, batch fill, queue")
    _metrics_url_flag(top)
    top.add_argument("--interval-s", type=float, default=2.0, help="seconds between refreshes (default 2)")
    top.add_argument("--once", action="store_true", help="print one view (after one interval) and exit")

    observability = sub.add_parser("observability", help="print where the Grafana dashboard and alert rules are, or copy them out")
    observability.add_argument("--out", type=Path, help="copy grafana-dashboard.json and prometheus-alerts.yaml into this folder")

    profile = sub.add_parser("profile", help="write a drift reference profile (drift_profile.json) from a data sample")
    profile.add_argument("model", type=Path, help="the model folder (profile goes into its latest version folder) or a model.onnx")
    profile.add_argument("--data", type=Path, required=True, help="input sample: .npy (rows x features) or .npz (one array per input name)")
    profile.add_argument("--input", help="input name for a .npy (default: the ONNX model's only input)")
    profile.add_argument("--outputs", type=Path, help="optional output sample (the model's predictions on --data): .npy or .npz")
    profile.add_argument("--output-name", help="output name for an --outputs .npy (default: the ONNX model's only output)")
    profile.add_argument("--bins", type=int, default=10, help="quantile bins per feature (default 10)")
    profile.add_argument("--max-categories", type=int, default=20,
                         help="a feature of integral values with at most this many distinct ones is categorical (default 20; 0: none)")
    profile.add_argument("--out", type=Path, help="where to write (default: drift_profile.json in the latest version folder)")

    drift = sub.add_parser("drift", help="print a model's drift gauges (PSI, KS, NaN and out-of-range ratios, alert) from /metrics")
    drift.add_argument("model", help="the model's name")
    drift.add_argument("--version", default="", help="one version (default: all)")
    _metrics_url_flag(drift)

    route = sub.add_parser("route", help="show or change a model's version routes (surge.v1.Admin; an admin call)")
    route.add_argument("model", help="the model's name")
    _grpc_url_flag(route)
    change = route.add_mutually_exclusive_group()
    change.add_argument("--weights", metavar="V=W,...", help="split requests naming no version, e.g. 1=90,2=10 ('' removes the split)")
    change.add_argument("--shadow", metavar="V[:FRACTION]", help="mirror FRACTION (default 1) of the routed requests to version V")
    change.add_argument("--no-shadow", action="store_true", help="stop mirroring")
    change.add_argument("--promote", type=int, metavar="V", help="send every request naming no version to V (removes the shadow)")
    change.add_argument("--rollback", action="store_true", help="undo the last route change")
    change.add_argument("--reset", action="store_true", help="drop the admin changes: config.toml's [routing] applies again")
    route.add_argument("--token", help="sent as 'authorization: Bearer TOKEN' (default: none; needed when the server requires one)")

    rollout = sub.add_parser("rollout", help="progressive rollout of a model to a new version, gated and rolled back by the server (an admin call)")
    rollout.add_argument("action", choices=("start", "status", "pause", "resume", "abort", "promote"))
    rollout.add_argument("model")
    rollout.add_argument("--to", type=int, help="start: the version rolled out (it must be serving)")
    rollout.add_argument("--steps", default="shadow,5,25,50,100", help="start: 'shadow' (first only) and rising percentages ending at 100 (default shadow,5,25,50,100)")
    rollout.add_argument("--window", default="5m", help="start: how long every gate must hold at a step, e.g. 5m, 30s (default 5m)")
    rollout.add_argument("--gate", action="append", default=[], metavar="GATE",
                         help="start: a gate, repeatable: p99<1.2x, p99<250ms, errors<0.5%%, agreement>99%%, max_diff<1e-3, psi<0.2, accuracy>0.98x, success>..., mae<...")
    rollout.add_argument("--min-samples", type=int, default=0, help="start: observations a gate needs before it can hold (default 100)")
    rollout.add_argument("--alpha", type=float, default=0.0, help="start: significance level of a breach (default 0.01)")
    rollout.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC host:port (default 127.0.0.1:8001)")
    rollout.add_argument("--token", help="sent as 'authorization: Bearer TOKEN' (when the server requires one)")

    ab = sub.add_parser("ab", help="compare a model's versions from /metrics: errors, latency, shadow agreement, outcomes, with significance tests")
    ab.add_argument("model", help="the model's name")
    _metrics_url_flag(ab)
    ab.add_argument("--baseline", default="", help="the version the others are tested against (default: the lowest version with traffic)")
    ab.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    ab.add_argument("--interval-s", type=float, default=0.0, help="scrape twice, this many seconds apart, and compare only that window (default 0: since the server started)")
    sub.add_parser("config-schema", help="print the JSON Schema of a model's config.toml (for editors that complete and check it)")
    sub.add_parser("bench", help="load-test a v2 server and gate on an SLO (surge bench --help; client only)", add_help=False)
    batch = sub.add_parser("batch", help="run a model (with its pipeline) over a file in-process: .npy/.npz/.parquet/.csv in, .npz/.parquet/.csv out")
    batch.add_argument("--model-repository", type=Path, required=True, help="the model repository folder")
    batch.add_argument("--model", required=True, help="the model's name (its folder)")
    batch.add_argument("--version", type=int, help="version (default: the highest)")
    batch.add_argument("--input", type=Path, required=True, help=".npy (one input), .npz (an array per input), .parquet or .csv (surge[parquet]), or a folder of JPEG files (one BYTES input)")
    batch.add_argument("--output", type=Path, required=True, help=".npz, .parquet or .csv; a rerun resumes from OUTPUT.parts/")
    batch.add_argument("--chunk-rows", type=int, default=None, help="rows read, run and written at a time (default: about 8 MiB of input, whole batches)")
    batch.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def _add_reliability_flags(serve: argparse.ArgumentParser) -> None:
    """Limits, TLS, auth and the Unix socket (defaults: ``codec.Limits``, docs/pages/reliability-and-security.md)."""
    from .edge.codec import DEFAULT_LIMITS as d

    serve.add_argument("--grpc-address", default="", metavar="unix:///PATH.sock", help="serve gRPC on a Unix socket (sidecars) instead of --host/--grpc-port (default: none)")
    serve.add_argument("--http-address", default="", metavar="unix:///PATH.sock", help="serve REST on a Unix socket instead of --host/--http-port (default: none; off beside a Unix gRPC socket)")
    serve.add_argument("--grpc-socket-mode", default="600", help="file mode of the Unix sockets (gRPC's and REST's), octal (default 600: owner only)")
    serve.add_argument("--tls-cert", type=Path, help="PEM server certificate (chain): gRPC over TLS")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle: require client certificates signed by it (mutual TLS)")
    serve.add_argument("--metrics-tls", action="store_true", help="serve /metrics over the same TLS as gRPC and REST (--tls-cert, --tls-key, --tls-client-ca)")
    serve.add_argument("--metrics-token-file", type=Path, help="file holding the bearer token every scrape must send (Prometheus: authorization.credentials_file)")
    serve.add_argument("--auth-tokens-file", type=Path, help="bearer tokens, one 'SCOPES TOKEN' per line (scopes: inference, admin); $SURGE_AUTH_TOKENS adds more")
    serve.add_argument("--disable-admin", action="store_true", help="admin RPCs (repository load/unload, surge.v1.Admin) answer UNIMPLEMENTED")
    serve.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes, help=f"largest request message (default {d.max_request_bytes})")
    serve.add_argument("--max-tensor-elements", type=int, default=d.max_tensor_elements, help=f"elements per input tensor (default {d.max_tensor_elements})")
    serve.add_argument("--max-request-elements", type=int, default=d.max_request_elements, help=f"elements over a request's inputs (default {d.max_request_elements})")
    serve.add_argument("--max-batch-rows", type=int, default=d.max_batch_rows, help="rows per request, server-wide (default 0: each model's max_batch_size)")
    serve.add_argument("--max-bytes-element", type=int, default=d.max_bytes_element, help=f"bytes per BYTES element (default {d.max_bytes_element})")
    serve.add_argument("--max-concurrent-streams", type=int, default=d.max_concurrent_streams,
                       help=f"concurrent RPCs per client connection (default {d.max_concurrent_streams})")
    serve.add_argument("--max-pending-calls", type=int, default=d.max_pending_calls,
                       help=f"calls received but not yet taken up by a stalled event loop, beyond which gRPC cancels them (default {d.max_pending_calls})")
    serve.add_argument("--max-shared-memory-regions", type=int, default=d.max_shared_memory_regions,
                       help=f"registered shared-memory regions, all callers together (default {d.max_shared_memory_regions})")
    serve.add_argument("--max-shared-memory-bytes", type=int, default=d.max_shared_memory_bytes,
                       help=f"bytes of registered shared-memory regions mapped at once (default {d.max_shared_memory_bytes})")


def _reliability_config(args: argparse.Namespace) -> dict[str, object]:
    """ServerConfig keyword arguments of the flags above; raises ConfigError for invalid values."""
    from .edge.codec import Limits
    from .errors import ConfigError

    try:
        limits = Limits(
            max_request_bytes=args.max_request_bytes, max_tensor_elements=args.max_tensor_elements, max_request_elements=args.max_request_elements,
            max_batch_rows=args.max_batch_rows, max_bytes_element=args.max_bytes_element, max_concurrent_streams=args.max_concurrent_streams,
            max_pending_calls=args.max_pending_calls, max_shared_memory_regions=args.max_shared_memory_regions,
            max_shared_memory_bytes=args.max_shared_memory_bytes,
        )
        mode = int(args.grpc_socket_mode, 8)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {
        "grpc_address": args.grpc_address, "http_address": args.http_address, "socket_mode": mode, "tls_cert_file": args.tls_cert, "tls_key_file": args.tls_key,
        "tls_client_ca_file": args.tls_client_ca, "auth_tokens_file": args.auth_tokens_file,
        "metrics_tls": args.metrics_tls, "metrics_token_file": args.metrics_token_file, "admin_enabled": not args.disable_admin,
        "limits": limits,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``surge`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:  # the load generator parses its own arguments and imports no server module
            from surge.clients.loadgen.cli import main as bench

            return bench(argv[1:])
        return _command(_parser(serving=argv[:1] == ["serve"]).parse_args(argv))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        command = argv[0] if argv else ""
        print(f"error: surge {command} needs surge[{extra}] ({exc.name} is not installed): pip install 'surge[{extra}]'", file=sys.stderr)
        return 2


#: The extra that installs each optional top-level module (``pip install surge`` is the client alone).
_EXTRA_OF = {
    "aiohttp": "server", "uvloop": "server", "prometheus_client": "server", "grpc_health": "server", "grpc_reflection": "server",
    "msgspec": "server", "onnxruntime": "onnx", "onnx": "onnx", "torch": "torch", "tensorrt": "tensorrt", "numba": "kernels",
    "hdrh": "bench", "matplotlib": "plot", "pyarrow": "parquet",
}


def _command(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "config-schema":
        import json

        from .config_schema import json_schema

        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.command == "build-trt":
        return _build_trt(args)
    if args.command == "observability":
        return _observability(args)
    if args.command == "profile":
        return _profile(args)
    if args.command == "drift":
        return _drift(args)
    if args.command == "ab":
        return _ab(args)
    if args.command == "batch":
        return _batch(args)
    if args.command == "top":
        from .commands.top import run

        with _scrape_errors():
            return run(args.metrics_url, args.interval_s, once=args.once)
    from surge.clients import InferenceServerError

    try:
        if args.command == "route":
            return _route(args)
        if args.command == "rollout":
            return _rollout(args)
        return _infer(args) if args.command == "infer" else _models(args)
    except InferenceServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _scrape_errors() -> Iterator[None]:
    """A metrics endpoint that cannot be read (nothing there, a gRPC port, not Prometheus text) is a CliError."""
    from .commands.top import ScrapeError

    try:
        yield
    except ScrapeError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:  # prometheus_client's parser: the page is not the text exposition format
        raise CliError(f"the metrics page is not Prometheus text: {exc}") from None


def _batch(args: argparse.Namespace) -> int:
    import asyncio

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    from .commands.batch import BatchJobError, run_batch_job

    try:
        summary = asyncio.run(run_batch_job(
            args.model_repository, args.model, args.input, args.output, chunk_rows=args.chunk_rows, version=args.version,
            progress=None if args.quiet else sys.stderr,
        ))
    except (BatchJobError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    resumed = f", {summary.chunks_skipped} resumed from an earlier run" if summary.chunks_skipped else ""
    print(f"{summary.rows} rows in {summary.chunks} chunks{resumed}, {summary.seconds:.2f} s ({summary.rows_per_s:,.0f} rows/s) -> {summary.output}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    from .app import ServerConfig, serve
    from .errors import ConfigError
    from .observability.tracing import TraceOptions

    repository = args.model_repository
    if repository is None:
        from .demo import default_location, write_demo_repository

        repository = write_demo_repository(default_location())
        logging.getLogger("surge.server").info("no --model-repository given: serving the demo repository at %s", repository)
    try:
        _check_repository(repository)  # before any port is bound
        config = ServerConfig(
            model_repository=repository.resolve(),
            host=args.host,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            http_port=args.http_port,
            model_control_mode=args.model_control_mode,
            load_models=tuple(args.load_model),
            poll_interval_s=args.repository_poll_s,
            strict_readiness=not args.no_strict_readiness,
            drain_timeout_s=args.drain_timeout_s,
            switch_interval_s=args.switch_interval_ms / 1e3,
            trace=TraceOptions(args.trace_exporter, args.trace_endpoint, args.trace_ratio, args.trace_service_name),
            **_reliability_config(args),  # type: ignore[arg-type]
        )
        if args.workers != 1 or args.engine_process:
            return _serve_workers(config, args)
        _run(serve(config, address_file=args.address_file), args.loop)
    except (ConfigError, OSError) as exc:
        logging.getLogger("surge.server").error("cannot start: %s", exc)
        return 2
    return 0


def _check_repository(repository: Path) -> None:
    """Raise ConfigError for a repository that is not a folder; log each layout mistake as a warning."""
    from .repository import layout_warnings

    for warning in layout_warnings(repository):
        logging.getLogger("surge.server").warning("%s", warning)


def _serve_workers(config: object, args: argparse.Namespace) -> int:
    """``surge serve --workers N``: the supervisor (``workers.py``); returns its exit code."""
    from .errors import ConfigError
    from .workers import supervise

    codes: list[int] = []

    async def main() -> None:
        codes.append(await supervise(config, args.workers, log_level=args.log_level, loop=args.loop, address_file=args.address_file,
                                     arena_bytes=args.engine_arena_mb * 2**20))

    try:
        if args.workers < 1:
            raise ConfigError(f"--workers must be 1 or more, got {args.workers}")
        if not 1 <= args.engine_arena_mb <= 1 << 20:
            raise ConfigError(f"--engine-arena-mb must be from 1 to 1048576, got {args.engine_arena_mb}")
        _run(main(), args.loop)
    except (ConfigError, OSError) as exc:
        logging.getLogger("surge.server").error("cannot start: %s", exc)
        return 2
    return codes[0] if codes else 0


def _build_trt(args: argparse.Namespace) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    from .errors import ConfigError
    from .runtimes.tensorrt_build import build_engine

    if not args.onnx.is_file():
        print(f"error: {args.onnx} is not a file", file=sys.stderr)
        return 2
    try:
        build_engine(
            args.onnx, args.output, fp16=args.fp16, max_batch_size=args.max_batch_size, opt_batch_size=args.opt_batch_size,
            workspace_bytes=args.workspace_bytes, instances=args.instances,
        )
    except ModuleNotFoundError as exc:
        if exc.name != "tensorrt":
            raise
        print("error: surge build-trt needs TensorRT: pip install 'surge[tensorrt]' on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


def _run(coro: object, loop: str) -> None:
    import asyncio
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed") from None
        else:
            uvloop.run(coro)  # type: ignore[arg-type]
            return
    asyncio.run(coro)  # type: ignore[arg-type]


def _random_input(datatype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    import numpy as np

    from surge.protos.datatypes import numpy_dtype

    if datatype == "BYTES":
        return np.array([f"surge-{i}".encode() for i in range(int(np.prod(shape)))], dtype=np.object_).reshape(shape)
    dtype = numpy_dtype(datatype)
    if dtype.kind == "f" or datatype == "BF16":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(np.bool_)
    return rng.integers(0, 100, shape).astype(dtype)


def _infer(args: argparse.Namespace) -> int:
    import numpy as np

    from surge.clients import InferenceClient

    given: dict[str, np.ndarray] = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep:
            raise CliError(f"--input {item!r}: expected NAME=FILE.npy")
        try:
            given[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:  # missing file, not a .npy, or a pickled object array
            print(f"error: --input {name}={path}: {exc}", file=sys.stderr)
            return 2
    rng = np.random.default_rng(args.seed)
    with InferenceClient(grpc_url(args.url), timeout_s=args.timeout_s) as client:
        metadata = client.model_metadata(args.model, args.version)
        inputs: dict[str, np.ndarray] = {}
        for tensor in metadata.inputs:
            if tensor.name in given:
                inputs[tensor.name] = given.pop(tensor.name)
                continue
            shape = list(tensor.shape)
            if shape and shape[0] == -1:
                shape[0] = args.batch
            inputs[tensor.name] = _random_input(tensor.datatype, [1 if d < 0 else d for d in shape], rng)
        if given:
            raise CliError(f"model {args.model} has no input(s) {sorted(given)}; its inputs: {[t.name for t in metadata.inputs]}")
        result = client.infer(args.model, inputs, version=args.version)
    print(f"model {result.model_name} version {result.model_version}" + (f" id {result.id}" if result.id else ""))
    with np.printoptions(precision=5, threshold=64, edgeitems=4, suppress=True):
        for name, array in result.outputs.items():
            print(f"{name} {array.dtype} {list(array.shape)}:\n{array}")
    return 0


def _observability(args: argparse.Namespace) -> int:
    from .observability import ALERT_RULES, DASHBOARD, resource

    for name in (DASHBOARD, ALERT_RULES):
        if args.out is None:
            print(resource(name))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / name).write_text(resource(name).read_text())
            print(args.out / name)
    return 0


def _load_named(path: Path, name: str | None, default_names: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """Arrays by tensor name from a .npz (its keys) or a .npy (named ``name`` or the model's only tensor)."""
    import numpy as np

    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        if name is None:
            if len(default_names) != 1:
                raise CliError(f"{path}: name the {what} it holds (--{'input' if what == 'input' else 'output-name'} NAME); the model has {list(default_names)}")
            name = default_names[0]
        return {name: np.load(path, allow_pickle=False)}
    except (OSError, ValueError) as exc:  # missing file, not a .npy/.npz, a pickled object array
        raise CliError(f"{path}: {exc}") from None


def _profile(args: argparse.Namespace) -> int:
    from .observability.drift import PROFILE_FILENAME, build_profile

    model: Path = args.model
    if model.is_dir():
        versions = sorted((p for p in model.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        if not versions:
            print(f"error: {model} has no numbered version folder", file=sys.stderr)
            return 2
        folder, onnx_file = versions[-1], versions[-1] / "model.onnx"
    else:
        folder, onnx_file = model.parent, model
    input_names: list[str] = []
    output_names: list[str] = []
    if onnx_file.is_file():
        import onnx

        graph = onnx.load(str(onnx_file), load_external_data=False).graph
        initializers = {i.name for i in graph.initializer}
        input_names = [i.name for i in graph.input if i.name not in initializers]
        output_names = [o.name for o in graph.output]
    tensors = _load_named(args.data, args.input, input_names, "input")
    if args.outputs is not None:
        tensors.update(_load_named(args.outputs, args.output_name, output_names, "output"))
    try:
        profile = build_profile(tensors, bins=args.bins, max_categories=args.max_categories)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or folder / PROFILE_FILENAME
    out.write_text(profile.to_json(), encoding="utf-8")
    print(f"wrote {out}: {len(profile.features)} features from {profile.rows} rows")
    return 0


def _drift(args: argparse.Namespace) -> int:
    from .observability.drift import drift_report
    from .commands.top import fetch_metrics

    with _scrape_errors():
        text = fetch_metrics(args.metrics_url)
    print(drift_report(text, args.model, args.version))
    return 0


def _version_number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_weights(text: str) -> dict[int, float]:
    """``--weights 1=90,2=10`` as {version: weight}; '' is no split. Raises CliError naming the bad part."""
    weights: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        version, sep, weight = item.partition("=")
        number, value = _version_number(version.strip()), _number(weight)
        if not sep or number is None or value is None or value < 0:
            raise CliError(f"--weights {text!r}: {item!r} is not VERSION=WEIGHT (a version number and a weight >= 0), e.g. 1=90,2=10")
        weights[number] = value
    return weights


def parse_shadow(text: str) -> tuple[int, float]:
    """``--shadow V[:FRACTION]`` as (version, fraction); raises CliError naming the bad part."""
    version, sep, fraction_text = text.partition(":")
    number, fraction = _version_number(version.strip()), _number(fraction_text) if sep else 1.0
    if number is None or fraction is None or not 0 < fraction <= 1:
        raise CliError(f"--shadow {text!r}: expected VERSION[:FRACTION] with a fraction in (0, 1], e.g. 2:0.1")
    return number, fraction


def _route(args: argparse.Namespace) -> int:
    from surge.clients import SurgeClient

    metadata = {"authorization": f"Bearer {args.token}"} if args.token else None
    weights = parse_weights(args.weights) if args.weights is not None else None
    shadow = parse_shadow(args.shadow) if args.shadow is not None else None
    with SurgeClient(grpc_url(args.url), metadata=metadata) as client:
        if weights is not None:
            routes = client.set_weights(args.model, weights)
        elif shadow is not None:
            routes = client.set_shadow(args.model, shadow[0], fraction=shadow[1])
        elif args.no_shadow:
            routes = client.remove_shadow(args.model)
        elif args.promote is not None:
            routes = client.promote(args.model, args.promote)
        elif args.rollback:
            routes = client.rollback(args.model)
        elif args.reset:
            routes = client.reset_routes(args.model)
        else:
            routes = client.get_routes(args.model)
    total = sum(w.weight for w in routes.weights)
    split = ", ".join(f"v{w.version} {100 * w.weight / total:.1f}%" for w in routes.weights) or "none (the highest serving version answers)"
    mirror = f"v{routes.shadow.version}, {100 * routes.shadow.fraction:.1f}% of routed requests" if routes.shadow.version else "none"
    print(f"model {routes.model} (routes from {routes.source}, change {routes.generation}, {routes.history} to roll back)")
    print(f"  serving: {', '.join(f'v{v}' for v in routes.serving_versions) or 'nothing'}")
    print(f"  split:   {split}")
    print(f"  shadow:  {mirror}")
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from surge.clients import SurgeClient

    metadata = {"authorization": f"Bearer {args.token}"} if args.token else None
    with SurgeClient(args.url, metadata=metadata) as client:
        if args.action == "start":
            if args.to is None:
                print("error: surge rollout start needs --to VERSION", file=sys.stderr)
                return 2
            r = client.start_rollout(args.model, args.to, steps=args.steps, window=args.window, gates=args.gate, min_samples=args.min_samples, alpha=args.alpha)
        else:
            r = {"status": client.rollout, "pause": client.pause_rollout, "resume": client.resume_rollout, "abort": client.abort_rollout,
                 "promote": client.promote_rollout}[args.action](args.model)
    print(format_rollout(r))
    return 0


def format_rollout(r: object) -> str:
    """A ``surge.v1.Rollout`` as ``surge rollout`` prints it."""
    steps = " -> ".join(f"[{s}]" if i == r.step and r.state in ("running", "paused") else s for i, s in enumerate(r.steps))  # type: ignore[attr-defined]
    lines = [
        f"model {r.model}: rollout v{r.from_version} -> v{r.to_version} {r.state.upper()} ({r.source})",  # type: ignore[attr-defined]
        f"  steps:  {steps}; window {r.window_s:g} s, {r.elapsed_s:.0f} s into this one",  # type: ignore[attr-defined]
        f"  status: {r.status}",  # type: ignore[attr-defined]
        f"  last decision: {r.reason}",  # type: ignore[attr-defined]
    ]
    if r.gate_status:  # type: ignore[attr-defined]
        lines.append(f"  {'GATE':<18} {'STATE':<9} {'VALUE':>12} {'CURRENT':>12} {'N':>7} {'P':>9}")
        for g in r.gate_status:  # type: ignore[attr-defined]
            value = f"{g.value:.4g}" if g.HasField("value") else "-"
            base = f"{g.baseline:.4g}" if g.HasField("baseline") else "-"
            p = f"{g.p:.3g}" if g.HasField("p") else "-"
            lines.append(f"  {g.gate:<18} {g.state:<9} {value:>12} {base:>12} {g.samples:>7} {p:>9}")
    elif r.gates:  # type: ignore[attr-defined]
        lines.append(f"  gates:  {', '.join(r.gates)} (no window looked at yet)")  # type: ignore[attr-defined]
    return "\n".join(lines)


def _ab(args: argparse.Namespace) -> int:
    import time

    from .commands.top import fetch_metrics
    from .traffic.ab import analyse, difference, format_report, parse_samples

    with _scrape_errors():
        samples = parse_samples(fetch_metrics(args.metrics_url))
        window = "since the server started"
        if args.interval_s > 0:
            time.sleep(args.interval_s)
            samples = difference(parse_samples(fetch_metrics(args.metrics_url)), samples)
            window = f"over the last {args.interval_s:g} s"
    report = analyse(samples, args.model, baseline=args.baseline, window=window)
    if not report.variants:
        print(f"error: /metrics has no requests of model {args.model!r}", file=sys.stderr)
        return 1
    print(format_report(report, args.alpha))
    return 0


def _models(args: argparse.Namespace) -> int:
    from surge.clients import InferenceClient

    with InferenceClient(grpc_url(args.url), timeout_s=10.0) as client:
        rows = client.repository_index()
    print(f"{'MODEL':<24} {'VERSION':<8} {'STATE':<12} REASON")
    for row in rows:
        print(f"{row.name:<24} {row.version or '-':<8} {row.state:<12} {row.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
