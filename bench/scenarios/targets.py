"""The servers under test, each a context manager yielding its gRPC address once every model is ready.

    floor()                         bench/peers/floor_server.py (grpc.aio + uvloop, precomputed answers)
    surge(repository, source)       ``surge serve`` on a repository; ``source`` is the working tree or a git revision
    mlserver(config, onnx_files)    MLServer 1.7 in its own venv (bench/peers/mlserver.py)

Every server runs on the server CPU (``servers.SERVER_CPU``); logs go to ``.cache/bench/logs/``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.models import MODELS
from bench.peers import mlserver as mls

from .servers import free_port, running

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = REPO_ROOT / ".cache" / "bench"
LOGS = CACHE / "logs"


@contextlib.contextmanager
def floor(work: str = "none") -> Iterator[str]:
    """The gRPC floor (``work``: bench/peers/floor_server.py's --work: none, hop, model or batch)."""
    address_file = CACHE / "run" / "floor.address"
    address_file.parent.mkdir(parents=True, exist_ok=True)
    address_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.peers.floor_server", "--address-file", str(address_file), "--work", work]
    with running(cmd, log=LOGS / "floor.log", cwd=REPO_ROOT, address_file=address_file, models=list(MODELS)) as address:
        yield address


def surge_source(revision: str | None) -> tuple[str, dict[str, str]]:
    """Which Surge serves: the working tree (None), or ``revision`` exported under .cache/bench/surge-src and
    put first on PYTHONPATH as the ``surge`` namespace. Returns (description, environment)."""
    head = _git("rev-parse", "--short", "HEAD")
    if revision is None:
        dirty = " + uncommitted changes" if _git("status", "--porcelain", "--", "server", "protos", "clients") else ""
        return f"working tree ({head}{dirty})", {}
    sha = _git("rev-parse", "--short", revision)
    root = CACHE / "surge-src" / sha
    if not (root / "surge").is_dir():
        (root / "src").mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "server", "protos", "clients", "kernels"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root / "src")], input=archive, check=True)
        (root / "surge").mkdir()
        for folder in ("server", "protos", "clients", "kernels"):
            (root / "surge" / folder).symlink_to(root / "src" / folder)
    return f"git {sha}", {"PYTHONPATH": str(root)}


@contextlib.contextmanager
def surge(repository: Path, env: dict[str, str], label: str, models: tuple[str, ...] = tuple(MODELS), metrics_port: int = 0) -> Iterator[str]:
    """``metrics_port``: 0 picks a free port nobody reads; give one to scrape ``/metrics`` there."""
    address_file = CACHE / "run" / f"{label}.address"
    address_file.parent.mkdir(parents=True, exist_ok=True)
    address_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(repository), "--grpc-port", "0", "--http-port", "-1",
           "--address-file", str(address_file), "--log-level", "warning", "--drain-timeout-s", "2",
           "--metrics-port", str(metrics_port or free_port())]  # fmt: skip
    with running(cmd, log=LOGS / f"{label}.log", env=env, cwd=REPO_ROOT, address_file=address_file, models=models, timeout_s=60) as address:
        yield address


@contextlib.contextmanager
def mlserver(config: mls.MLServerConfig, onnx_files: dict[str, Path]) -> Iterator[str]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    slug = f"pw{config.parallel_workers}-ab{int(config.adaptive_batching)}"
    folder = mls.write_settings(CACHE / "mlserver" / slug, config, onnx_files, ports)
    cmd, env = mls.command(folder)
    with running(cmd, log=LOGS / f"mlserver-{slug}.log", env=env, cwd=folder, address=f"127.0.0.1:{ports['grpc']}", models=list(onnx_files)) as address:
        yield address


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
