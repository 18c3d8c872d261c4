"""Fixtures for the tritonclient compatibility suite: Surge runs as a subprocess, Triton's own client talks to it.

This folder runs in its OWN pytest process (``python -m pytest tests/triton``; ``pytest.ini`` here makes it its
own rootdir, so ``tests/conftest.py`` is not loaded). tritonclient's generated protobuf code registers the
``inference.*`` messages in protobuf's default descriptor pool, and so does ``surge.protos``: one process cannot
import both. Never import ``surge.protos``, ``surge.clients`` or ``surge.server.app``/``grpc_servicer`` here;
``tests.models`` and ``surge.server.demo`` are fine (numpy and onnx only).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `import tests.models` also when pytest is not started from the repo root
    sys.path.insert(0, str(REPO_ROOT))

from tests.models import write_test_repository  # noqa: E402

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def _assert_no_surge_protos() -> None:
    loaded = sorted(m for m in sys.modules if m.startswith(("surge.protos", "surge.clients", "surge.server.app", "surge.server.grpc_servicer")))
    assert not loaded, f"the tritonclient suite must not import {loaded} (duplicate protobuf symbols)"


class SurgeProcess:
    """``surge serve`` in a subprocess on an ephemeral port; ``address`` once it is ready."""

    def __init__(self, repository: Path, workdir: Path, *extra_args: str) -> None:
        self.repository = repository
        self.workdir = workdir
        self.extra_args = extra_args
        self.address_file = workdir / "address"
        self.log_file = workdir / "server.log"
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server log)"

    def start(self) -> SurgeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.address_file.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "surge.server.cli", "serve",
            "--model-repository", str(self.repository),
            "--grpc-port", "0", "--metrics-port", "0",
            "--address-file", str(self.address_file),
            "--no-strict-readiness",
            "--drain-timeout-s", "5",
            *self.extra_args,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.address_file.exists():
            code = self.proc.poll()
            if code is not None:
                pytest.fail(f"surge serve exited with code {code} before it was ready; its log:\n{self.log()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"surge serve was not ready within {START_TIMEOUT_S:.0f} s; its log:\n{self.log()}")
            time.sleep(0.05)
        self.address = self.address_file.read_text().strip()
        return self

    def stop(self) -> int:
        """SIGTERM, wait; returns the exit code (kills it and fails if it does not stop in time)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"surge serve did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; its log:\n{self.log()}")

    def stop_and_check(self) -> None:
        code = self.stop()
        assert code == 0, f"surge serve exited with {code} after SIGTERM; its log:\n{self.log()}"


@pytest.fixture(scope="session")
def test_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def surge_server(test_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SurgeProcess]:
    """One server (control mode none) on the full test repository for the whole session."""
    server = SurgeProcess(test_repository, tmp_path_factory.mktemp("server")).start()
    yield server
    server.stop_and_check()


@pytest.fixture(scope="session")
def explicit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SurgeProcess]:
    """A second server in explicit control mode on its own repository; only ``identity`` is loaded at start."""
    repository = write_test_repository(tmp_path_factory.mktemp("explicit-repository"))
    server = SurgeProcess(
        repository, tmp_path_factory.mktemp("explicit-server"), "--model-control-mode", "explicit", "--load-model", "identity"
    ).start()
    yield server
    server.stop_and_check()


@pytest.fixture(scope="session")
def client(surge_server: SurgeProcess) -> Iterator[object]:
    """tritonclient.grpc.InferenceServerClient (sync) on the session server."""
    import tritonclient.grpc

    c = tritonclient.grpc.InferenceServerClient(surge_server.address)
    yield c
    c.close()
    _assert_no_surge_protos()


@pytest.fixture(scope="session")
def explicit_client(explicit_server: SurgeProcess) -> Iterator[object]:
    import tritonclient.grpc

    c = tritonclient.grpc.InferenceServerClient(explicit_server.address)
    yield c
    c.close()
