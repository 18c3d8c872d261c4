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


# The core floors (pyproject.toml), with tritonclient 2.51 (protobuf < 5): Surge's generated code from grpcio-tools
# 1.62.3 imports on protobuf 4.25 to 7.x, so the client installs beside any tritonclient >= 2.42 (grpcio 1.67:
# tritonclient 2.51's own generated code needs it, whatever its metadata says).
FLOORS = ["grpcio==1.67.0", "protobuf==4.25.1", "numpy==1.26.4", "ml_dtypes==0.4.0", "tritonclient[grpc]==2.51.0"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
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
    (built,) = (work / "dist").glob("surge-*.whl")
    return built


def _venv(where: Path, *requirements: str) -> Path:
    venv.create(where, with_pip=True)
    subprocess.run([where / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements], check=True, timeout=600)
    return where / "bin"


@pytest.fixture(scope="module")
def client_venv(wheel: Path) -> Path:
    return _venv(wheel.parent.parent / "venv", str(wheel))


@pytest.fixture(scope="module")
def floors_venv(wheel: Path) -> Path:
    return _venv(wheel.parent.parent / "floors", str(wheel), *FLOORS)


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


# One process: tritonclient's generated code in protobuf's default pool, Surge's in its own (surge.protos.pool).
_BOTH = """
import sys, numpy as np, google.protobuf, grpc
import tritonclient.grpc as triton
from surge.clients import InferenceClient
from surge.protos import grpc_service_pb2 as pb
from tritonclient.grpc import service_pb2 as tpb
x = np.arange(16, dtype=np.float32).reshape(1, 16)
with InferenceClient(sys.argv[1]) as ours:
    mine = ours.infer("mlp", {"x": x})["probabilities"]
tx = triton.InferInput("x", [1, 16], "FP32")
tx.set_data_from_numpy(x)
theirs = triton.InferenceServerClient(sys.argv[1]).infer("mlp", [tx]).as_numpy("probabilities")
assert np.array_equal(mine, theirs), (mine, theirs)
request = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[x.tobytes()])
assert tpb.ModelInferRequest.FromString(request.SerializeToString()).raw_input_contents[0] == x.tobytes()
print(google.protobuf.__version__, grpc.__version__, triton.__name__)
"""


def _both_in_one_process(python: Path, address: str) -> str:
    run = subprocess.run([python, "-W", "error", "-c", _BOTH, address], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_the_client_runs_at_its_floors_beside_tritonclient(floors_venv: Path, server) -> None:
    """The oldest grpcio and protobuf the client declares, with a tritonclient that pins protobuf < 5."""
    versions = {name: version for name, _, version in (line.partition("==") for line in FLOORS)}
    assert _both_in_one_process(floors_venv / "python", server.address).split()[:2] == [versions["protobuf"], versions["grpcio"]]
    models = subprocess.run([floors_venv / "surge", "models", "--url", server.address], capture_output=True, text=True, timeout=60, check=False)
    assert models.returncode == 0 and "mlp" in models.stdout, models.stdout + models.stderr


def test_tritonclient_and_surge_protos_share_a_process(server) -> None:
    """This environment's versions (protobuf 7 with tritonclient 2.41), both import orders."""
    _both_in_one_process(Path(sys.executable), server.address)
    reverse = _BOTH.replace("import tritonclient.grpc as triton\n", "").replace("from surge.clients import InferenceClient\n", "from surge.clients import InferenceClient\nimport tritonclient.grpc as triton\n")
    run = subprocess.run([sys.executable, "-W", "error", "-c", reverse, server.address], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
