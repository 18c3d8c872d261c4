"""MLServer side by side: its own venv, its settings for one configuration, and the command that serves it.

The venv (``.cache/bench/mlserver-venv``) holds MLServer 1.7, onnxruntime and ``uvloop==0.21.0``
(MLServer's worker crashes with uvloop 0.23). It serves the benchmark's ONNX files through
``mlserver_onnx/onnx_runtime.py`` (an ``MLModel``, one ORT thread). Configurations: ``parallel_workers``
0 (inference in the server process) or 1 (one worker process), adaptive batching off or on (the same
``max_batch_size`` and delay as Surge's batcher).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.models import BATCHING, MAX_BATCH_SIZE

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / ".cache" / "bench" / "mlserver-venv"
RUNTIME_DIR = Path(__file__).resolve().parent / "mlserver_onnx"
PACKAGES = ("mlserver==1.7.1", "onnxruntime", "uvloop==0.21.0")


@dataclass(frozen=True)
class MLServerConfig:
    parallel_workers: int
    adaptive_batching: bool

    @property
    def label(self) -> str:
        return f"mlserver pw={self.parallel_workers} ab={'on' if self.adaptive_batching else 'off'}"


CONFIGS = tuple(MLServerConfig(pw, ab) for pw in (0, 1) for ab in (False, True))


def ensure_venv(python: str = "python3") -> Path:
    """Create the venv on first use (about 30 s with a warm pip cache); returns its ``mlserver`` script."""
    stamp = VENV / "bench-packages.txt"
    wanted = "\n".join(PACKAGES)
    if not (stamp.is_file() and stamp.read_text() == wanted):
        subprocess.run([python, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *PACKAGES], check=True)
        stamp.write_text(wanted)
    return VENV / "bin" / "mlserver"


def version() -> str:
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", "import mlserver, uvloop; print(mlserver.__version__, uvloop.__version__)"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return f"mlserver {out[0]}, uvloop {out[1]}"


def write_settings(folder: Path, config: MLServerConfig, onnx_files: dict[str, Path], ports: dict[str, int]) -> Path:
    """settings.json and one model-settings.json per model under ``folder``; returns the folder to serve."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": ports["http"],
        "grpc_port": ports["grpc"],
        "metrics_port": ports["metrics"],
        "parallel_workers": config.parallel_workers,
        "grpc_max_message_length": 2**31 - 1,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, path in onnx_files.items():
        model = {"name": name, "implementation": "onnx_runtime.OnnxModel", "parameters": {"uri": str(path.resolve()), "version": "1"}}
        if config.adaptive_batching:
            model |= {"max_batch_size": MAX_BATCH_SIZE, "max_batch_time": BATCHING["max_queue_delay_s"]}
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "model-settings.json").write_text(json.dumps(model, indent=2))
    return folder


def command(folder: Path) -> tuple[list[str], dict[str, str]]:
    """``mlserver start FOLDER`` and its environment (the runtime module on PYTHONPATH, workers included)."""
    return [str(VENV / "bin" / "mlserver"), "start", str(folder.resolve())], {"PYTHONPATH": str(RUNTIME_DIR)}
