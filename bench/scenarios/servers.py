"""Start a server pinned to one CPU, wait until its models are ready, stop it; and Surge's statistics.

Every target speaks ``inference.GRPCInferenceService``, so readiness (ModelReady) and Surge's
ModelStatistics are asked with our generated stubs (``surge.protos``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc

SERVER_CPU = "0"
GENERATOR_CPU = "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: str, cmd: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpu, *cmd]


@contextlib.contextmanager
def running(cmd: Sequence[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
            address: str | None = None, address_file: Path | None = None, models: Sequence[str] = (),
            timeout_s: float = 120.0) -> Iterator[str]:  # fmt: skip
    """Run ``cmd`` on the server CPU until the block ends; yields its address once ``models`` are ready.

    The address is given, or read from ``address_file`` once the server writes it.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    with open(log, "wb") as out:
        proc = subprocess.Popen(pinned(SERVER_CPU, cmd), stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=cwd,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while address is None:
            if address_file is not None and address_file.is_file() and address_file.read_text().strip():
                address = address_file.read_text().strip()
            else:
                _check_alive(proc, log, deadline)
                time.sleep(0.05)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for model in models:
                while not _model_ready(stub, model):
                    _check_alive(proc, log, deadline)
                    time.sleep(0.1)
        yield address
    finally:
        _stop(proc)


def _check_alive(proc: subprocess.Popen, log: Path, deadline: float) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{proc.args} exited with {proc.returncode} before it was ready; log {log}:\n{_tail(log)}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"{proc.args} was not ready in time; log {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _model_ready(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> bool:
    """Ready; or raise at once when the repository index says the model failed (UNAVAILABLE with a reason)."""
    try:
        if stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=2).ready:
            return True
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=2)
    except grpc.RpcError:
        return False
    for entry in index.models:
        if entry.name == model and entry.state == "UNAVAILABLE" and entry.reason not in ("", "not loaded"):
            raise RuntimeError(f"model {model} failed to load: {entry.reason}")
    return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (MLServer's workers too), then SIGKILL after 15 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def surge_statistics(address: str, model: str) -> dict:
    """Surge's cumulative counters for one model: rows, executions, and {batch size: (executions, compute ns)}."""
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10)
    rows = executions = 0
    batches: dict[int, list[int]] = {}
    for stats in response.model_stats:
        rows += stats.inference_count
        executions += stats.execution_count
        for b in stats.batch_stats:
            entry = batches.setdefault(b.batch_size, [0, 0])
            entry[0] += b.compute_infer.count
            entry[1] += b.compute_infer.ns
    return {"rows": rows, "executions": executions, "batches": batches}


def formed_batches(before: dict, after: dict) -> dict:
    """What Surge did between two snapshots: mean rows per execution, the batch size that carried the most rows
    (common_batch) and its mean compute time, and the executions per size (sizes above 1% of executions)."""
    executions = after["executions"] - before["executions"]
    rows = after["rows"] - before["rows"]
    delta = {size: (count - before["batches"].get(size, [0, 0])[0], ns - before["batches"].get(size, [0, 0])[1])
             for size, (count, ns) in after["batches"].items()}  # fmt: skip
    delta = {size: v for size, v in sorted(delta.items()) if v[0] > 0}
    if not executions or not delta:
        return {}
    common = max(delta, key=lambda size: delta[size][0] * size)
    count, ns = delta[common]
    sizes = {str(size): n for size, (n, _) in delta.items() if n >= 0.01 * executions}
    return {"mean_batch": rows / executions, "common_batch": common, "common_compute_ms": ns / count / 1e6, "sizes": sizes}
