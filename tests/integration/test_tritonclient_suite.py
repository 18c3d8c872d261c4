"""Run the tritonclient compatibility suite (tests/triton) in its own pytest process.

The suite tests Triton's client alone (tests/triton/conftest.py keeps Surge's client out of it): this test only
launches it.
(tests/conftest.py keeps the main run from collecting tests/triton directly: ``collect_ignore``.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITE_TIMEOUT_S = 300


def _tritonclient_missing() -> str:
    """Why tritonclient[grpc] cannot be used ("" when it can); checked in a child so nothing is imported here."""
    probe = subprocess.run([sys.executable, "-c", "import tritonclient.grpc, tritonclient.grpc.aio"], capture_output=True, text=True, timeout=60)
    return "" if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["import failed"])[-1]


@pytest.mark.timeout(SUITE_TIMEOUT_S + 30)
def test_tritonclient_suite() -> None:
    missing = _tritonclient_missing()
    if missing:
        pytest.skip(f"tritonclient[grpc] is not importable ({missing}); install surge[dev]")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER")}
    cmd = [sys.executable, "-m", "pytest", "tests/triton", "-q", "-p", "no:cacheprovider"]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"`{' '.join(cmd)}` did not finish within {SUITE_TIMEOUT_S} s; its output so far:\n{out}", pytrace=False)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` exited with {proc.returncode}; its output:\n{output}", pytrace=False)
    assert " passed" in output, output
