"""``surge serve`` as a real subprocess for tests (the CLI, SIGTERM, perf_analyzer, the tritonclient suite).

Imports no protobuf code (``surge.protos``), so the tritonclient suite, which runs in its own process, can use it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class SurgeProcess:
    """``surge serve`` in a subprocess on an ephemeral port; ``address`` once it is ready."""

    def __init__(self, repository: Path, workdir: Path, *extra_args: str, env: dict[str, str] | None = None) -> None:
        """``env``: variables added to the server's environment."""
        self.repository = repository
        self.env = env or {}
        self.workdir = workdir
        self.extra_args = extra_args
        self.address_file = workdir / "address"
        self.log_file = workdir / "server.log"
        self.address = ""
        self.http_address = ""
        """The REST endpoint's ``host:port`` (from the server's info log; "" when REST is off or --log-level hides info)."""
        self.metrics_address = ""
        """The metrics endpoint's ``host:port``, likewise."""
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        """The server's output so far."""
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
            "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
            "--address-file", str(self.address_file),
            "--no-strict-readiness",
            "--drain-timeout-s", "5",
            *self.extra_args,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
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
        rest = re.search(r"REST v2 on https?://(\S+)/v2", self.log())  # logged before the address file is written
        self.http_address = rest.group(1) if rest else ""
        metrics = re.search(r"metrics on https?://(\S+)/metrics", self.log())
        self.metrics_address = metrics.group(1) if metrics else ""
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
        """Stop with SIGTERM and fail unless it exits 0."""
        code = self.stop()
        assert code == 0, f"surge serve exited with {code} after SIGTERM; its log:\n{self.log()}"
