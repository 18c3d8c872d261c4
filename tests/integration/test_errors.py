"""Bad requests get the right status and a message naming the problem; the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import numpy as np
import pytest

from surge.clients import InferenceClient, InferenceServerError
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc

GOOD_X = np.ones((1, 16), dtype=np.float32)


def _raw_request(**overrides) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(GOOD_X.tobytes())
    for key, value in overrides.items():
        setattr(request, key, value)
    return request


def _wrong_bytes() -> pb.ModelInferRequest:
    request = _raw_request()
    request.raw_input_contents[0] = GOOD_X.tobytes()[:-4]
    return request


def _missing_input() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="mlp")


def _extra_input() -> pb.ModelInferRequest:
    request = _raw_request()
    request.inputs.add(name="z", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(GOOD_X.tobytes())
    return request


def _wrong_datatype() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="INT32", shape=[1, 16])
    request.raw_input_contents.append(GOOD_X.astype(np.int32).tobytes())
    return request


def _wrong_shape() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 15])
    request.raw_input_contents.append(np.ones((1, 15), np.float32).tobytes())
    return request


def _too_many_rows() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[65, 16])
    request.raw_input_contents.append(np.ones((65, 16), np.float32).tobytes())
    return request


def _huge_claimed_shape() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 10**12])
    request.raw_input_contents.append(b"\0" * 64)
    return request


def _unknown_output() -> pb.ModelInferRequest:
    request = _raw_request()
    request.outputs.add(name="logits")
    return request


CASES = [
    ("unknown model", lambda: _raw_request(model_name="no_such_model"), grpc.StatusCode.NOT_FOUND, "no_such_model"),
    ("unknown version", lambda: _raw_request(model_version="9"), grpc.StatusCode.NOT_FOUND, "version 9"),
    ("non-numeric version", lambda: _raw_request(model_version="latest"), grpc.StatusCode.INVALID_ARGUMENT, "'latest'"),
    ("missing input", _missing_input, grpc.StatusCode.INVALID_ARGUMENT, "missing input(s) ['x']"),
    ("extra input", _extra_input, grpc.StatusCode.INVALID_ARGUMENT, "unexpected input 'z'"),
    ("wrong datatype", _wrong_datatype, grpc.StatusCode.INVALID_ARGUMENT, "input 'x' has datatype INT32 but model 'mlp' expects FP32"),
    ("wrong shape", _wrong_shape, grpc.StatusCode.INVALID_ARGUMENT, "input 'x' has shape [1, 15] but model 'mlp' expects [-1, 16]"),
    ("byte length", _wrong_bytes, grpc.StatusCode.INVALID_ARGUMENT, "input 'x' has 60 bytes of raw data but shape [1, 16] of FP32 needs 64 bytes"),
    ("batch too large", _too_many_rows, grpc.StatusCode.INVALID_ARGUMENT, "batch size 65"),
    ("huge claimed shape", _huge_claimed_shape, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_tensor_elements = 16777216"),
    ("unknown output", _unknown_output, grpc.StatusCode.INVALID_ARGUMENT, "unknown output 'logits'"),
    ("model failed to load", lambda: _raw_request(model_name="broken"), grpc.StatusCode.UNAVAILABLE, "broken"),
]


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize(("case", "make", "code", "text"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_status_and_message_then_server_still_serves(stub, client, case, make, code, text):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(make(), timeout=10)
    assert info.value.code() == code, info.value.details()
    assert text in info.value.details()
    assert client.infer("mlp", {"x": GOOD_X})["probabilities"].shape == (1, 4)


def test_runtime_error_is_internal_with_request_id_and_no_internals(client):
    with pytest.raises(InferenceServerError) as info:
        client.infer("failing_py", {"x": np.array([[-1.0]], np.float32)}, request_id="rid-42")
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "rid-42" in info.value.message and "secret" not in info.value.message
    assert client.infer("failing_py", {"x": np.array([[1.0]], np.float32)})["y"][0, 0] == 1.0


def test_not_built_rpcs_answer_unimplemented(stub):
    for call, request in (
        (stub.LogSettings, pb.LogSettingsRequest()),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "not implemented" in info.value.details()


def test_cuda_shared_memory_without_a_gpu_is_unimplemented_with_the_reason(stub):
    from surge.server.edge.shared_memory import SharedMemoryRegistry

    if SharedMemoryRegistry.cuda_usable():
        pytest.skip("this machine can open CUDA IPC handles (tests/gpu covers it)")
    assert "cuda_shared_memory" not in stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).extensions
    assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest(), timeout=10).regions
    with pytest.raises(grpc.RpcError) as info:
        stub.CudaSharedMemoryRegister(pb.CudaSharedMemoryRegisterRequest(name="r", raw_handle=bytes(64), byte_size=64), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED and "needs CuPy and a GPU" in info.value.details()


def test_repository_changes_refused_in_control_mode_none(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # as Triton answers (model_analyzer recognises it)
    assert "explicit model load / unload is not allowed if polling is enabled" in info.value.details() and "--model-control-mode explicit" in info.value.details()


def test_deadline_passed_while_queued_is_dropped_before_compute(server):
    """slow_py has one instance: a request queued behind a 1.5 s one, with a 0.3 s deadline, never runs."""
    with InferenceClient(server.address, retries=0) as client, concurrent.futures.ThreadPoolExecutor(2) as pool:
        before = _executions(client, "slow_py")
        blocker = pool.submit(client.infer, "slow_py", {"delay_s": np.array([[1.5]], np.float32)}, timeout_s=30)
        time.sleep(0.3)
        with pytest.raises(InferenceServerError) as info:
            client.infer("slow_py", {"delay_s": np.array([[0.0]], np.float32)}, timeout_s=0.3)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        blocker.result()
        time.sleep(0.2)
        assert _executions(client, "slow_py") == before + 1  # the expired request cost no compute


def test_queue_full_is_unavailable_at_once(server):
    """slow_py allows 2 waiting requests behind its single instance: the 4th concurrent one is rejected."""
    with InferenceClient(server.address, retries=0) as client, concurrent.futures.ThreadPoolExecutor(4) as pool:
        slow = {"delay_s": np.array([[1.0]], np.float32)}
        running = [pool.submit(client.infer, "slow_py", slow, timeout_s=30) for _ in range(3)]
        time.sleep(0.4)
        started = time.monotonic()
        with pytest.raises(InferenceServerError) as info:
            client.infer("slow_py", slow, timeout_s=30)
        assert time.monotonic() - started < 0.5
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and "queue full" in info.value.message
        assert all(f.result().outputs for f in running)


def _executions(client: InferenceClient, model: str) -> int:
    return sum(s.execution_count for s in client.model_statistics(model).model_stats)
