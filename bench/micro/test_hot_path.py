"""Micro-benchmarks of the per-request hot path (pytest-benchmark; not part of the test suite).

    .venv/bin/python -m pytest bench/micro --benchmark-only --benchmark-autosave

Covers: decoding a 1x3x224x224 FP32 request (zero-copy), encoding its response, and the batcher's
per-request overhead (submit -> dispatch -> resolve) with no runtime behind it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from surge.protos import grpc_service_pb2 as pb
from surge.server.edge import codec
from surge.server.execution.batching import BatchRequest, DynamicBatcher, SchedulerPolicy
from surge.server.config import TensorConfig, parse_model_config

IMAGE = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)


@pytest.fixture(scope="module")
def spec():
    config = parse_model_config("resnet", {"max_batch_size": 8}).with_signature(
        (TensorConfig(name="input", datatype="FP32", dims=(3, 224, 224)),),
        (TensorConfig(name="scores", datatype="FP32", dims=(1000,)),),
        8,
    )
    return codec.model_spec(config)


@pytest.fixture(scope="module")
def request_message():
    request = pb.ModelInferRequest(model_name="resnet", id="bench")
    request.inputs.add(name="input", datatype="FP32", shape=IMAGE.shape)
    request.raw_input_contents.append(IMAGE.tobytes())
    return pb.ModelInferRequest.FromString(request.SerializeToString())


def test_decode_image_request(benchmark, request_message, spec):
    decoded = benchmark(codec.decode_request, request_message, spec)
    assert decoded.inputs["input"].shape == IMAGE.shape


def test_decode_tiny_request(benchmark):
    """A 16-float request (the benchmark's ``tiny``): the decode's fixed cost, no payload to speak of."""
    config = parse_model_config("tiny", {"max_batch_size": 64}).with_signature(
        (TensorConfig(name="x", datatype="FP32", dims=(16,)),), (TensorConfig(name="y", datatype="FP32", dims=(16,)),), 64
    )
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones(16, np.float32).tobytes())
    message = pb.ModelInferRequest.FromString(request.SerializeToString())
    decoded = benchmark(codec.decode_request, message, codec.model_spec(config))
    assert decoded.inputs["x"].shape == (1, 16) and decoded.rows == 1


def test_encode_scores_response(benchmark, request_message, spec):
    outputs = {"scores": np.zeros((1, 1000), np.float32)}
    response = benchmark(codec.encode_response, request_message, spec, "1", outputs, ("scores",))
    assert len(response.raw_output_contents) == 1


def test_batcher_overhead_per_request(benchmark):
    """Submit 64 single-row requests through a batcher whose 'instance' answers at once."""
    loop = asyncio.new_event_loop()
    x = {"x": np.zeros((1, 16), np.float32)}

    def dispatch(batch):
        for r in batch:
            r.future.set_result(None)
        loop.call_soon(batcher.release_slot)

    batcher = DynamicBatcher(SchedulerPolicy(batching=True, max_batch_size=64), slots=1, dispatch=dispatch, call_later=loop.call_later)

    async def burst() -> None:
        futures = []
        for _ in range(64):
            future = loop.create_future()
            batcher.submit(BatchRequest(x, 1, ("y",), None, future))
            futures.append(future)
        await asyncio.gather(*futures)

    benchmark(lambda: loop.run_until_complete(burst()))
    loop.close()


def test_batcher_overhead_per_request_slo_mode(benchmark):
    """Bursts of 8 single-row requests through a batcher in SLO mode (the cost model, in-server count and timer rules
    on every arrival) whose 'instance' answers at once; one benchmark round = one burst (divide by 8)."""
    loop = asyncio.new_event_loop()
    x = {"x": np.zeros((1, 16), np.float32)}
    in_server = [0]

    def dispatch(batch):
        for r in batch:
            r.future.set_result(None)
        loop.call_soon(batcher.release_slot)

    policy = SchedulerPolicy(batching=True, max_batch_size=64, latency_slo_s=0.01, preferred_batch_sizes=(16, 32, 64))
    batcher = DynamicBatcher(policy, slots=1, dispatch=dispatch, in_server=lambda: in_server[0], call_later=loop.call_later)
    for rows, seconds in ((1, 1e-4), (8, 3e-4), (64, 1e-3)):
        batcher.cost.observe(rows, seconds)

    async def burst() -> None:
        futures = []
        for _ in range(8):
            future = loop.create_future()
            in_server[0] += 1
            batcher.submit(BatchRequest(x, 1, ("y",), None, future))
            futures.append(future)
        await asyncio.gather(*futures)
        in_server[0] -= 8

    benchmark(lambda: loop.run_until_complete(burst()))
    loop.close()


def test_onnxruntime_run_tiny_warm(benchmark, tmp_path):
    """ONNX Runtime's own call on the benchmark's ``tiny`` model (one thread), warm: the floor of a runtime call,
    to set against what the same call costs per request at concurrency 1 (``floor:model`` in bench.scenarios.ab)."""
    ort = pytest.importorskip("onnxruntime")
    from bench.models import ORT_THREADS, write_onnx_files

    path = write_onnx_files(tmp_path)["tiny"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = ORT_THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.ones((1, 16), np.float32)
    (y,) = benchmark(session.run, None, {"x": x})
    assert y.shape == (1, 16)
