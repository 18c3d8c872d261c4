"""Triton's perf_analyzer (the C++ load generator, unmodified) against a ``surge serve`` subprocess.

perf_analyzer calls ServerMetadata, ModelMetadata, ModelConfig, then ModelInfer / ModelStreamInfer under load
and ModelStatistics around every measurement window (PROTOCOL.md §2.7); any incompatibility makes it exit 99.
Needs ``bench/perf_analyzer/setup.sh`` (cached under .cache/perf_analyzer); skipped otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.models import write_test_repository
from tests.process import SurgeProcess

pytestmark = pytest.mark.perf_analyzer

REPO_ROOT = Path(__file__).resolve().parents[2]
BINARY = REPO_ROOT / ".cache" / "perf_analyzer" / "bin" / "perf_analyzer"
RUN_SH = REPO_ROOT / "bench" / "perf_analyzer" / "run.sh"
RUN_TIMEOUT_S = 90
#: Settings that keep one run to ~5-15 s on a noisy 2-core box (see bench/perf_analyzer/README.md).
COMMON = ["-i", "grpc", "--concurrency-range", "1:2", "-s", "20", "-r", "8", "--measurement-interval", "1000"]
BAD_LINE = re.compile(r"error|fail|unstable|missing statistics|abort|exception", re.IGNORECASE)
# A noisy shared machine can keep a window from stabilising: a measurement-quality note, not a protocol problem.
NOISE_LINE = re.compile(r"Failed to obtain stable measurement")


@pytest.fixture(scope="module")
def surge_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``surge serve`` (subprocess, ephemeral port) on the test repository; SIGTERM at the end must exit 0."""
    if not os.access(BINARY, os.X_OK):
        pytest.skip(f"perf_analyzer is not set up ({BINARY} missing); run bench/perf_analyzer/setup.sh")
    work = tmp_path_factory.mktemp("perf-analyzer")
    server = SurgeProcess(write_test_repository(work / "repository"), work, "--log-level", "warning").start()
    try:
        yield server.address
    finally:
        server.stop_and_check()


def run_perf_analyzer(*args: str) -> str:
    cmd = ["bash", str(RUN_SH), *args]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} ran over {RUN_TIMEOUT_S} s; output so far:\n{exc.stdout}\n{exc.stderr}", pytrace=False)
    output = proc.stdout + proc.stderr
    print(f"$ {' '.join(cmd)}\n{output}")  # shown with -rP / -s, and on failure
    if proc.returncode != 0:
        pytest.fail(f"perf_analyzer exited with {proc.returncode}:\n{output}", pytrace=False)
    bad = [line for line in output.splitlines() if BAD_LINE.search(line) and not NOISE_LINE.search(line)]
    assert not bad, f"perf_analyzer reported problems: {bad}\n{output}"
    assert "Throughput:" in output, output
    for concurrency in (1, 2):
        assert f"Concurrency: {concurrency}, throughput:" in output, output
    assert "Server:" in output and "Successful request count:" in output, f"no server-side statistics:\n{output}"
    return output


def server_counts(output: str) -> list[tuple[int, int]]:
    """(inference count, execution count) of every measured concurrency level (from ModelStatistics)."""
    inferences = [int(n) for n in re.findall(r"Inference count: (\d+)", output)]
    executions = [int(n) for n in re.findall(r"Execution count: (\d+)", output)]
    assert len(inferences) == len(executions) == 2, output
    return list(zip(inferences, executions))


@pytest.mark.parametrize(
    "model, extra",
    [
        pytest.param("mlp", ["--shape", "x:16"], id="mlp-sync"),
        pytest.param("mlp", ["--shape", "x:16", "--streaming"], id="mlp-streaming"),
        pytest.param("versioned", [], id="versioned-no-version"),  # stats for every version; PA picks the active one
    ],
)
def test_perf_analyzer_batch_1(surge_address: str, model: str, extra: list[str]) -> None:
    output = run_perf_analyzer("-m", model, "-u", surge_address, *COMMON, *extra)
    for inferences, executions in server_counts(output):
        # the window's two statistics reads can split a request from its execution: allow the in-flight ones
        assert executions > 0 and abs(inferences - executions) <= 2, output


def test_perf_analyzer_batch_4(surge_address: str) -> None:
    output = run_perf_analyzer("-m", "mlp", "-u", surge_address, *COMMON, "--shape", "x:16", "-b", "4")
    assert "Batch size: 4" in output
    for inferences, executions in server_counts(output):
        assert executions > 0 and abs(inferences - 4 * executions) <= 8, output  # every request carries 4 rows
