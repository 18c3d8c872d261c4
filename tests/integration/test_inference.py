"""Inference over the wire with our clients: results equal to ONNX Runtime in-process, every datatype, streaming."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest

from surge.clients import AsyncInferenceClient, InferenceServerError, InferRequest
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from surge.protos.datatypes import numpy_dtype
from tests.models import ONNX_DATATYPES


def _reference(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_mlp_matches_onnxruntime_in_process(client, test_repository, rows):
    x = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)
    result = client.infer("mlp", {"x": x}, request_id=f"req-{rows}")
    (expected,) = _reference(test_repository / "mlp" / "1" / "model.onnx", {"x": x})
    assert result.model_name == "mlp" and result.model_version == "1" and result.id == f"req-{rows}"
    np.testing.assert_allclose(result["probabilities"], expected, rtol=1e-6, atol=1e-7)
    assert result["probabilities"].shape == (rows, 4)


def _sample(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        items = [b"", b"surge", "\u00e9t\u00e9".encode(), b"x" * 300]
        return np.array([items[i % len(items)] for i in range(int(np.prod(shape)))], dtype=np.object_).reshape(shape)
    dtype = numpy_dtype(datatype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def test_every_onnx_datatype_round_trips(client):
    rng = np.random.default_rng(0)
    inputs = {f"in_{dt}": _sample(dt, (3, 5), rng) for dt in ONNX_DATATYPES}
    result = client.infer("identity_all", inputs)
    for dt in ONNX_DATATYPES:
        got, sent = result[f"out_{dt}"], inputs[f"in_{dt}"]
        assert got.shape == sent.shape, dt
        if dt == "BYTES":
            assert got.tolist() == sent.tolist()
        else:
            assert got.dtype == sent.dtype, dt
            np.testing.assert_array_equal(got, sent, err_msg=dt)


def test_bf16_round_trips_through_the_python_backend(client):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    b = np.array([[1.5, -2.0, 3.25]], dtype=ml_dtypes.bfloat16)
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    result = client.infer("echo_py", {"x": x, "b": b})
    assert result["b_out"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(result["b_out"].astype(np.float32), b.astype(np.float32))


def test_typed_contents_are_accepted(server):
    import grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="nobatch", id="typed")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
        tensor.contents.fp32_contents.extend([0, 1, 2, 3, 4, 5])
        response = stub.ModelInfer(request, timeout=10)
    assert response.id == "typed" and len(response.raw_output_contents) == 1
    y = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(y, np.arange(6, dtype=np.float32).reshape(2, 3) + 1)


def test_requested_outputs_filter_and_unknown_triton_parameters(client):
    rng = np.random.default_rng(1)
    inputs = {f"in_{dt}": _sample(dt, (1, 2), rng) for dt in ONNX_DATATYPES}
    result = client.infer(
        "identity_all", inputs, outputs=["out_INT8", "out_FP64"],
        parameters={"triton_enable_empty_final_response": True, "triton_future_knob": "x", "custom": 1.5},
    )
    assert list(result.outputs) == ["out_INT8", "out_FP64"]


def test_large_message_beyond_grpc_default_4mib(client):
    x = np.random.default_rng(2).standard_normal((2, 1_500_000)).astype(np.float32)  # 12 MB each way
    result = client.infer("identity", {"input": x})
    np.testing.assert_array_equal(result["output"], x)


def test_explicit_version_and_latest(client):
    x = np.zeros((2, 4), dtype=np.float32)
    assert client.infer("versioned", {"x": x}, version="1")["y"][0, 0] == 1.0
    assert client.infer("versioned", {"x": x}, version="2")["y"][0, 0] == 2.0
    latest = client.infer("versioned", {"x": x})
    assert latest.model_version == "2" and latest["y"][0, 0] == 2.0


def test_stream_mixes_good_and_bad_requests_and_stays_open(client):
    x = np.ones((1, 16), dtype=np.float32)
    requests = [
        InferRequest(model="mlp", inputs={"x": x}, request_id="good-1"),
        InferRequest(model="nope", inputs={"x": x}, request_id="bad-model"),
        InferRequest(model="mlp", inputs={"x": np.ones((1, 15), dtype=np.float32)}, request_id="bad-shape"),
        InferRequest(model="mlp", inputs={"x": x}, request_id="good-2"),
    ]
    results = {}
    for item in client.stream_infer(requests):
        key = item.request_id if isinstance(item, InferenceServerError) else item.id
        results[key] = item
    assert set(results) == {"good-1", "bad-model", "bad-shape", "good-2"}
    assert results["good-1"]["probabilities"].shape == (1, 4)
    assert results["good-2"]["probabilities"].shape == (1, 4)
    assert isinstance(results["bad-model"], InferenceServerError) and "nope" in results["bad-model"].message
    assert isinstance(results["bad-shape"], InferenceServerError) and "'x'" in results["bad-shape"].message


async def test_async_client_concurrent_requests(server):
    async with AsyncInferenceClient(server.address, timeout_s=30.0) as client:
        xs = [np.full((1, 16), i, dtype=np.float32) for i in range(32)]
        results = await asyncio.gather(*(client.infer("mlp", {"x": x}, request_id=str(i)) for i, x in enumerate(xs)))
        reference = await asyncio.gather(*(client.infer("mlp", {"x": x}) for x in xs))
    for i, (a, b) in enumerate(zip(results, reference)):
        assert a.id == str(i)
        np.testing.assert_array_equal(a["probabilities"], b["probabilities"])


def test_stream_with_triton_grpc_error_header_ends_with_the_status(server):
    import grpc

    good = pb.ModelInferRequest(model_name="nobatch", id="good")
    good.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    good.raw_input_contents.append(np.zeros((2, 3), np.float32).tobytes())
    bad = pb.ModelInferRequest(model_name="no_such_model", id="bad")
    import threading

    answered = threading.Event()

    def requests():
        yield good
        answered.wait(10)  # requests in a stream run concurrently: send the bad one after the good one is answered
        yield bad

    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        responses = stub.ModelStreamInfer(requests(), metadata=(("triton_grpc_error", "true"),), timeout=10)
        first = next(responses)
        answered.set()
        assert first.infer_response.id == "good" and not first.error_message
        with pytest.raises(grpc.RpcError) as info:
            next(responses)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "no_such_model" in info.value.details()
