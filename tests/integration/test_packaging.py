"""``pip install surge`` is the client alone: the built wheel in a fresh venv, no extras, against a real server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT_DEPS = {"grpcio", "protobuf", "numpy", "ml-dtypes"}
SERVER_ONLY = {"aiohttp", "uvloop", "prometheus-client", "grpcio-health-checking", "grpcio-reflection", "msgspec", "onnxruntime", "numba", "torch"}


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable: the client's dependencies cannot be installed into a fresh venv")
    work = tmp_path_factory.mktemp("packaging")
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True).stdout
    source = work / "src"
    for name in filter(None, tracked.decode().split("\0")):  # what a clean checkout has, no build outputs
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(source)], check=True, timeout=120)
    (wheel,) = (work / "dist").glob("surge-*.whl")
    venv.create(work / "venv", with_pip=True)
    python = work / "venv" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], check=True, timeout=300)
    return work / "venv" / "bin"


def _installed(bin_dir: Path) -> set[str]:
    out = subprocess.run([bin_dir / "python", "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"], capture_output=True, text=True, check=True).stdout
    return {line.split("==")[0].lower().replace("_", "-") for line in out.splitlines()}


def test_the_client_installs_alone(client_venv: Path) -> None:
    installed = _installed(client_venv)
    assert CLIENT_DEPS <= installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    subprocess.run([client_venv / "python", "-c", "from surge.clients import InferenceClient, AsyncInferenceClient"], check=True, timeout=60)
    typed = subprocess.run([client_venv / "python", "-c", "import importlib.resources as r; print(r.files('surge.clients').joinpath('py.typed').is_file())"],
                           capture_output=True, text=True, check=True, timeout=60).stdout
    assert typed.strip() == "True"


def test_client_commands_work_and_server_commands_name_their_extra(client_venv: Path, server, tmp_path: Path) -> None:
    models = subprocess.run([client_venv / "surge", "models", "--url", server.address], capture_output=True, text=True, timeout=60)
    assert models.returncode == 0 and "mlp" in models.stdout, models.stdout + models.stderr
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((1, 16), np.float32))
    infer = subprocess.run([client_venv / "surge", "infer", "mlp", "--input", f"x={tmp_path / 'x.npy'}", "--url", server.address], capture_output=True, text=True, timeout=60)
    assert infer.returncode == 0 and "probabilities" in infer.stdout, infer.stdout + infer.stderr
    for argv, extra in ((["serve"], "server"), (["config-schema"], "server"), (["bench", "mlp", "--url", server.address], "bench")):
        run = subprocess.run([client_venv / "surge", *argv], capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, run.stdout + run.stderr
        assert run.stderr.strip().count("\n") == 0 and f"pip install 'surge[{extra}]'" in run.stderr, run.stderr
