"""Fixtures for the tritonclient compatibility suite: Surge runs as a subprocess, Triton's own client talks to it.

This folder runs in its OWN pytest process (``python -m pytest tests/triton``; ``pytest.ini`` here makes it its
own rootdir, so ``tests/conftest.py`` is not loaded). It tests Triton's client alone against the server: never
import ``surge.protos``, ``surge.clients`` or ``surge.server.app``/``grpc_servicer`` here (they would import beside
tritonclient, see docs/pages/dependencies.md, but nothing here may lean on them); ``tests.models`` and
``surge.server.demo`` are fine (numpy and onnx only).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `import tests.models` also when pytest is not started from the repo root
    sys.path.insert(0, str(REPO_ROOT))

from tests.models import write_test_repository  # noqa: E402
from tests.process import SurgeProcess  # noqa: E402


def _assert_no_surge_protos() -> None:
    loaded = sorted(m for m in sys.modules if m.startswith(("surge.protos", "surge.clients", "surge.server.app", "surge.server.edge.grpc_servicer")))
    assert not loaded, f"the tritonclient suite must not import {loaded} (it tests Triton's client alone)"

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
