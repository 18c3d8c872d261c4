"""Shared fixtures: a real Surge server on 127.0.0.1 (ephemeral port) in a background thread, real clients."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from surge.server.app import Server, ServerConfig
from tests.models import write_test_repository

collect_ignore = ["triton"]  # tests/triton runs in its own process (tritonclient vs surge.protos); see tests/integration/test_tritonclient_suite.py


class ServerThread:
    """A Surge server running its own event loop in a thread, so sync and async clients can both call it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.server = Server(config)
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="surge-test-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.address = self._loop.run_until_complete(self.server.start())
        except BaseException as exc:  # surfaced in start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def start(self) -> ServerThread:
        self._thread.start()
        self._started.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def call(self, coro, timeout_s: float = 60.0):
        """Run a coroutine on the server's loop (e.g. ``repository.poll_once()``) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def stop(self) -> None:
        if self._loop.is_running():
            self.call(self.server.stop(1.0))
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


@pytest.fixture(scope="session", autouse=True)
def _default_ports_held() -> Iterator[None]:
    """Hold Triton's default ports (REST 8000, gRPC 8001, metrics 8002) for the whole run, so a test or helper that
    forgets to ask for an ephemeral port fails every time, not only when a developer's own server is running
    (CI once failed that way). A port something else already holds has the same effect."""
    held = []
    for port in (8000, 8001, 8002):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            held.append(sock)
        except OSError:
            sock.close()
    yield
    for sock in held:
        sock.close()


@pytest.fixture(scope="session")
def test_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def server(test_repository: Path) -> Iterator[ServerThread]:
    """One server for the whole session, serving the test repository (control mode none)."""
    thread = ServerThread(ServerConfig(model_repository=test_repository, grpc_port=0, metrics_port=0, http_port=0, strict_readiness=False)).start()
    yield thread
    thread.stop()


@pytest.fixture
def start_server(tmp_path: Path):
    """Start extra servers with their own config; each is stopped at the end of the test."""
    started: list[ServerThread] = []

    def start(**kwargs) -> ServerThread:
        kwargs.setdefault("grpc_port", 0)
        kwargs.setdefault("metrics_port", 0)
        kwargs.setdefault("http_port", 0)
        thread = ServerThread(ServerConfig(**kwargs)).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()


@pytest.fixture
def client(server: ServerThread):
    from surge.clients import InferenceClient

    with InferenceClient(server.address, timeout_s=30.0, retries=0) as c:
        yield c


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip with a reason where no CUDA GPU (or no torch) is present; they never fail for it."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch

        reason = None if torch.cuda.is_available() else "no CUDA GPU visible to torch on this machine"
    except ImportError:
        reason = "torch is not installed"
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))
