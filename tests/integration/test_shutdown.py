"""Graceful shutdown of ``surge serve`` under load: SIGTERM mid-run, every request the server accepted gets
its answer (the server's own counts match the clients'), the others get UNAVAILABLE (retryable) and none is
CANCELLED (the server tells every connection GOAWAY before it answers anything more, so no client sends a call
on a closing connection), health watchers see NOT_SERVING and their stream ends, exit 0 within the drain
timeout; a second signal exits at once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_overload import _request, write_work_model
from tests.process import SurgeProcess

CLIENTS = 24
DRAIN_TIMEOUT_S = 5.0  # what SurgeProcess passes


@pytest.mark.timeout(120)
async def test_sigterm_under_load_answers_every_accepted_request(tmp_path):
    server = SurgeProcess(write_work_model(tmp_path / "repo"), tmp_path / "server").start()
    ok = 0
    queue_full = 0
    refused: list[str] = []
    other: list[str] = []
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal ok, queue_full
        async with grpc.aio.insecure_channel(server.address) as channel:  # one connection per client, like separate apps
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    response = await stub.ModelInfer(_request(0.02), timeout=20)
                    assert np.frombuffer(response.raw_output_contents[0], np.float32)[0] == np.float32(0.02)
                    ok += 1
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        other.append(f"{exc.code().name}: {exc.details()}")
                    elif "queue full" in (exc.details() or ""):
                        queue_full += 1
                    else:  # shutting down, or the connection is gone: never accepted
                        refused.append(exc.details() or "")
                    await asyncio.sleep(0.02)

    async with grpc.aio.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        await asyncio.sleep(1.5)
        assert ok > 0
        signalled = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        assert (await asyncio.wait_for(watch.read(), 10)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        code = await asyncio.to_thread(server.proc.wait, DRAIN_TIMEOUT_S + 10)
        exited_after = time.monotonic() - signalled
        await asyncio.sleep(0.3)  # clients see the closed server
        stop.set()
        await asyncio.gather(*clients)

    log = server.log()
    assert code == 0, log
    assert exited_after < DRAIN_TIMEOUT_S + 3, f"exited {exited_after:.1f} s after SIGTERM"
    assert not other, other[:5]
    assert refused, "no request was refused after SIGTERM"
    print(f"ok {ok}, queue full {queue_full}, refused {len(refused)}, exited after {exited_after:.2f} s")
    match = re.search(r"stopped: (\d+) requests answered, (\d+) failed", log)
    assert match, log
    answered, failed = int(match.group(1)), int(match.group(2))
    # every request that reached the model was answered, and its client got the answer (warm-up is not counted)
    assert answered == ok, f"server answered {answered}, clients got {ok}"
    assert failed == queue_full, f"server failed {failed} requests, clients saw {queue_full} queue-full rejections"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("round_", range(3))
async def test_sigterm_under_fast_closed_loop_clients_cancels_nothing(tmp_path, round_):
    """16 closed-loop clients, each on its own connection, each sending its next call as soon as the last one is
    answered (a fast model: many calls cross the wire at the instant of SIGTERM). Every call ends OK or UNAVAILABLE,
    never CANCELLED; the server answered exactly the clients' OKs and exits 0."""
    from tests.models import write_add_model

    write_add_model(tmp_path / "repo" / "adder" / "1" / "model.onnx", 1.0)
    server = SurgeProcess(tmp_path / "repo", tmp_path / "server").start()
    outcomes: dict[str, int] = {}
    last: list[str] = []
    stop = asyncio.Event()
    request = pb.ModelInferRequest(model_name="adder")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())

    async def client() -> None:
        outcome = ""
        async with grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    await stub.ModelInfer(request, timeout=20)
                    outcome = "OK"
                except grpc.aio.AioRpcError as exc:
                    outcome = exc.code().name
                    await asyncio.sleep(0.01)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        last.append(outcome)

    clients = [asyncio.create_task(client()) for _ in range(16)]
    await asyncio.sleep(2.0)
    assert outcomes.get("OK", 0) > 0, outcomes
    os.kill(server.proc.pid, signal.SIGTERM)
    code = await asyncio.to_thread(server.proc.wait, DRAIN_TIMEOUT_S + 10)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*clients)
    log = server.log()
    assert code == 0, log
    print(outcomes, sorted(last))
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
    match = re.search(r"stopped: (\d+) requests answered, (\d+) failed", log)
    assert match, log
    assert int(match.group(1)) == outcomes["OK"] and int(match.group(2)) == 0, (match.group(0), outcomes)


def test_a_second_signal_exits_at_once(tmp_path):
    server = SurgeProcess(write_work_model(tmp_path / "repo"), tmp_path / "server").start()
    import concurrent.futures

    from surge.clients import InferenceClient

    with InferenceClient(server.address, retries=0, timeout_s=30) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.infer, "work_py", {"delay_s": np.array([[20.0]], np.float32)})  # would hold the drain 5 s
        time.sleep(0.5)
        os.kill(server.proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert server.proc.poll() is None  # draining
        started = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        code = server.proc.wait(10)
        assert time.monotonic() - started < 4.0  # the drain would take 5 s (its timeout)
        assert code == 128 + signal.SIGTERM, server.log()
        assert "second SIGTERM while draining: exiting at once" in server.log()
        with pytest.raises(Exception):
            slow.result()
