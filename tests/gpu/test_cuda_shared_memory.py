"""CUDA shared memory over the wire: a client exports device memory (cudaIpcGetMemHandle, with CuPy), registers it,
and the server (another process: a handle cannot be opened by the process that exported it) reads the input from it
and writes the output into it. Runs where CuPy and a GPU are present."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from tests.models import write_test_repository
from tests.process import SurgeProcess

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy", reason="CuPy is not installed")


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    work: Path = tmp_path_factory.mktemp("cuda-shm")
    server = SurgeProcess(write_test_repository(work / "repository"), work).start()
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)
    server.stop_and_check()


def test_identity_through_cuda_regions(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert "cuda_shared_memory" in stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).extensions
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    device = cupy.zeros(2 * x.size, dtype=cupy.float32)  # input, then output
    device[: x.size] = cupy.asarray(x.ravel())
    handle = cupy.cuda.runtime.ipcGetMemHandle(device.data.ptr)
    stub.CudaSharedMemoryRegister(pb.CudaSharedMemoryRegisterRequest(name="d", raw_handle=bytes(handle), device_id=0, byte_size=device.nbytes), timeout=30)
    assert stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest(name="d"), timeout=10).regions["d"].byte_size == device.nbytes
    request = pb.ModelInferRequest(model_name="identity")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 16])
    tensor.parameters["shared_memory_region"].string_param = "d"
    tensor.parameters["shared_memory_byte_size"].int64_param = x.nbytes
    out = request.outputs.add(name="output")
    out.parameters["shared_memory_region"].string_param = "d"
    out.parameters["shared_memory_byte_size"].int64_param = x.nbytes
    out.parameters["shared_memory_offset"].int64_param = x.nbytes
    response = stub.ModelInfer(request, timeout=30)
    assert list(response.outputs[0].shape) == [2, 16]
    assert cupy.asnumpy(device[x.size :]).reshape(2, 16).tolist() == x.tolist()
    stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest(name="d"), timeout=10)
    assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest(), timeout=10).regions
