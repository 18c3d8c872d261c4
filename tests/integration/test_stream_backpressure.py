"""A ModelStreamInfer client that sends and never reads its answers is held back, not buffered: the stream holds
at most STREAM_MAX_ANSWERS answers, then stops reading, and HTTP/2 flow control stops the client's writes. The
server's RSS stays flat (``surge serve`` is a subprocess, so its RSS is its own) and other clients are served."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_overload import _rss_mb
from tests.models import write_python_model
from tests.process import SurgeProcess

MESSAGE_FLOATS = 4096  # 16 KiB per message, as in the attack that grew the server by 700 MB in 25 s
SEND_S = 10.0
RSS_GROWTH_MB = 60  # unbounded, 10 s of writes queued several hundred MB

_IDENT_PY = '''
class Model:
    def infer(self, inputs, output_names):
        return {"y": inputs["x"]}
'''


def write_ident_model(root: Path) -> Path:
    write_python_model(root / "ident_py", _IDENT_PY, inputs=[("x", "FP32", (-1,))], outputs=[("y", "FP32", (-1,))])
    return root


def _request(i: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="ident_py", id=str(i))
    request.inputs.add(name="x", datatype="FP32", shape=[MESSAGE_FLOATS])
    request.raw_input_contents.append(np.full(MESSAGE_FLOATS, i, np.float32).tobytes())
    return request


@pytest.mark.timeout(120)
async def test_a_stream_whose_client_never_reads_is_held_back(tmp_path):
    server = SurgeProcess(write_ident_model(tmp_path / "repo"), tmp_path / "server").start()
    try:
        own = [("grpc.use_local_subchannel_pool", 1)]  # the greedy client and the others on their own connections
        async with grpc.aio.insecure_channel(server.address, options=own) as greedy, grpc.aio.insecure_channel(server.address, options=own) as other:
            probe = pb_grpc.GRPCInferenceServiceStub(other)
            assert (await probe.ModelInfer(_request(-1), timeout=10)).raw_output_contents
            await asyncio.sleep(0.5)
            rss_before = _rss_mb(server.proc.pid)
            stream = pb_grpc.GRPCInferenceServiceStub(greedy).ModelStreamInfer(timeout=60)
            written = 0
            last_write = time.monotonic()
            probes: list[float] = []
            until = time.monotonic() + SEND_S
            reading = asyncio.Event()

            async def write() -> None:  # as fast as the stream takes them, never reading, until the reads start
                nonlocal written, last_write
                while not reading.is_set():
                    await stream.write(_request(written))
                    written += 1
                    last_write = time.monotonic()
                await stream.done_writing()

            async def serve_others() -> None:
                while time.monotonic() < until:
                    started = time.monotonic()
                    response = await probe.ModelInfer(_request(7), timeout=10)
                    probes.append(time.monotonic() - started)
                    assert np.frombuffer(response.raw_output_contents[0], np.float32)[0] == 7
                    await asyncio.sleep(0.1)

            writer = asyncio.create_task(write())
            await serve_others()
            held_s = time.monotonic() - last_write
            rss_after = _rss_mb(server.proc.pid)
            summary = (f"{written} messages written in {SEND_S:.0f} s, then held back for {held_s:.1f} s; server RSS {rss_before:.0f} -> "
                       f"{rss_after:.0f} MB; {len(probes)} calls of another client, slowest {max(probes) * 1e3:.0f} ms")
            print(summary)
            assert not writer.done() and held_s > 2.0, summary  # the stream stopped taking messages
            assert written * MESSAGE_FLOATS * 4 < 64 * 2**20, summary  # what it took is bounded: answers held + flow-control windows
            assert rss_after - rss_before < RSS_GROWTH_MB, summary
            assert len(probes) > 20 and max(probes) < 2.0, summary

            # once the client reads, every message is answered, the held answers first
            reading.set()
            ids = set()
            async for response in stream:
                assert not response.error_message, response.error_message
                ids.add(int(response.infer_response.id))
            await writer
            assert ids == set(range(written)), (len(ids), written)
    finally:
        server.stop_and_check()
