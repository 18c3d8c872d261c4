"""Native TensorRT on a GPU: the torch staging buffers (torch + CUDA), and engines built and served (+ TensorRT).

On our GPU machines (PyTorch CUDA, no TensorRT) only ``DeviceStaging`` runs; the engine tests skip, naming why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surge.protos.datatypes import numpy_dtype
from tests.models import write_add_model

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch", reason="PyTorch is not installed (the tensorrt backend allocates with it)")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device visible to PyTorch", allow_module_level=True)

from surge.server.runtimes.tensorrt import DeviceStaging  # noqa: E402


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "BF16", "INT64", "INT8", "UINT8", "BOOL", "INT32"])
def test_device_staging_round_trips_through_the_gpu(datatype: str) -> None:
    dtype = numpy_dtype(datatype)
    rng = np.random.default_rng(0)
    full = (rng.standard_normal((8, 6)) * 50).astype(np.float32).astype(dtype)
    stream = torch.cuda.Stream()
    buffer = DeviceStaging(torch, full.nbytes, torch.cuda.current_device())
    assert buffer.address % 256 == 0  # TensorRT's alignment requirement for tensor addresses
    for array in (full, full[:3], full[:, ::2], full[:0]):  # whole, a prefix, non-contiguous, empty
        with torch.cuda.stream(stream):
            buffer.upload(array)
            buffer.start_download(array.nbytes)
        stream.synchronize()
        got = buffer.read(dtype, array.shape)
        assert got.dtype == dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)


def test_device_staging_results_are_copies() -> None:
    stream = torch.cuda.Stream()
    buffer = DeviceStaging(torch, 16, torch.cuda.current_device())
    with torch.cuda.stream(stream):
        buffer.upload(np.arange(4, dtype=np.float32))
        buffer.start_download(16)
    stream.synchronize()
    first = buffer.read(np.dtype(np.float32), (4,))
    with torch.cuda.stream(stream):
        buffer.upload(np.zeros(4, dtype=np.float32))
        buffer.start_download(16)
    stream.synchronize()
    np.testing.assert_array_equal(first, np.arange(4, dtype=np.float32))


def test_device_staging_rejects_an_oversized_array() -> None:
    buffer = DeviceStaging(torch, 8, torch.cuda.current_device())
    with pytest.raises(ValueError, match="16 bytes do not fit the 8-byte buffer"):
        buffer.upload(np.zeros(4, dtype=np.float32))


# -- engines (need TensorRT) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'surge[tensorrt]')")
    from surge.server.runtimes.tensorrt_build import build_engine

    root = tmp_path_factory.mktemp("trt")
    write_add_model(root / "model.onnx", 1.0)
    return build_engine(root / "model.onnx", root / "repo" / "add" / "1" / "model.plan", max_batch_size=8, instances=2)


def test_an_engine_is_served_by_two_instances(engine: Path, start_server) -> None:
    from surge.clients import InferenceClient, InferenceServerError

    repo = engine.parents[2]
    (repo / "add" / "config.toml").write_text('[instance_group]\ncount = 2\nkind = "gpu"\n\n[dynamic_batching]\nmax_queue_delay_s = 0.002\n')
    server = start_server(model_repository=repo)
    with InferenceClient(server.address, timeout_s=60, retries=0) as client:
        assert client.model_config("add").max_batch_size == 8  # from the engine's profiles
        for rows in (1, 3, 8):
            x = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
            np.testing.assert_allclose(client.infer("add", {"x": x})["y"], x + 1.0, rtol=1e-6)
        with pytest.raises(InferenceServerError):
            client.infer("add", {"x": np.zeros((9, 4), np.float32)})


def test_too_few_profiles_for_the_instances_is_a_load_error(engine: Path, start_server) -> None:
    from surge.clients import InferenceClient

    repo = engine.parents[2]
    (repo / "add" / "config.toml").write_text('[instance_group]\ncount = 3\nkind = "gpu"\n')
    server = start_server(model_repository=repo, strict_readiness=False)
    with InferenceClient(server.address, timeout_s=60, retries=0) as client:
        (row,) = [r for r in client.repository_index() if r.name == "add"]
        assert row.state == "UNAVAILABLE" and "2 optimization profile(s) but 3 instances share GPU 0" in row.reason
