"""The PyTorch runtime on a CUDA GPU: CUDA graphs per bucket, padding cut from outputs, fp16, over the wire.

Marked ``gpu``: skipped with a reason where torch sees no CUDA device (CI, the dev box); run by bench/gpu/run.sh.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from surge.clients import AsyncInferenceClient, InferenceClient
from surge.server.app import ServerConfig
from tests.conftest import ServerThread

pytestmark = pytest.mark.gpu

GPU_MLP_CONFIG = """
backend = "torch"
max_batch_size = 256

[[input]]
name = "x"
datatype = "FP32"
dims = [256]

[[output]]
name = "y"
datatype = "FP32"
dims = [16]

[instance_group]
kind = "gpu"
count = {count}

[dynamic_batching]
max_queue_delay_s = 0.002

[parameters]
precision = "{precision}"
cuda_graphs = {graphs}
"""


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory):
    import torch

    from tests.torch_models import make_mlp, write_torch_model

    root = tmp_path_factory.mktemp("gpu_repo")
    mlp = make_mlp()
    example = torch.zeros(2, 256)
    write_torch_model(root / "mlp_graphs", mlp, example, kind="export", config=GPU_MLP_CONFIG.format(count=2, precision="fp32", graphs="true"))
    write_torch_model(root / "mlp_eager", mlp, example, kind="script", config=GPU_MLP_CONFIG.format(count=1, precision="fp32", graphs="false"))
    write_torch_model(root / "mlp_fp16", mlp, example, kind="export", config=GPU_MLP_CONFIG.format(count=1, precision="fp16", graphs="true"))
    thread = ServerThread(ServerConfig(model_repository=root, grpc_port=0, metrics_port=0, http_port=0)).start()
    yield thread, mlp
    thread.stop()


def _reference(mlp, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return mlp(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("rows", [1, 3, 64, 100, 256])
@pytest.mark.parametrize("model", ["mlp_graphs", "mlp_eager"])
def test_gpu_outputs_match_cpu_reference_at_every_bucket_and_between(gpu_server, model, rows):
    server, mlp = gpu_server
    x = np.random.default_rng(rows).standard_normal((rows, 256)).astype(np.float32)
    with InferenceClient(server.address, timeout_s=60) as client:
        y = client.infer(model, {"x": x})["y"]
    assert y.shape == (rows, 16)  # padding rows of the bucket are cut
    np.testing.assert_allclose(y, _reference(mlp, x), rtol=2e-3, atol=2e-3)  # TF32/cuBLAS vs CPU


def test_fp16_precision_on_gpu(gpu_server):
    server, mlp = gpu_server
    x = np.random.default_rng(9).standard_normal((8, 256)).astype(np.float32)
    with InferenceClient(server.address, timeout_s=60) as client:
        y = client.infer("mlp_fp16", {"x": x})["y"]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, _reference(mlp, x), rtol=0.05, atol=0.05)


async def test_concurrent_requests_batch_on_two_gpu_instances(gpu_server):
    server, mlp = gpu_server
    xs = [np.random.default_rng(100 + i).standard_normal((1 + i % 5, 256)).astype(np.float32) for i in range(64)]
    async with AsyncInferenceClient(server.address, timeout_s=60) as client:
        results = await asyncio.gather(*(client.infer("mlp_graphs", {"x": x}) for x in xs))
        stats = (await client.model_statistics("mlp_graphs")).model_stats[0]
    for x, r in zip(xs, results):
        np.testing.assert_allclose(r["y"], _reference(mlp, x), rtol=2e-3, atol=2e-3)
    assert stats.execution_count < stats.inference_count


def _runtime(tmp_path, config: str):
    import torch

    from surge.server.config import load_model_config
    from surge.server.runtimes.torch import TorchRuntime
    from tests.torch_models import make_mlp, write_torch_model

    mlp = make_mlp()
    write_torch_model(tmp_path / "m", mlp, torch.zeros(2, 256), kind="export", config=config)
    runtime = TorchRuntime()
    runtime.load(tmp_path / "m" / "1" / "model.pt2", load_model_config(tmp_path / "m"), 0)
    return runtime, mlp


def test_staged_path_pads_with_zeros_and_returns_its_own_arrays(tmp_path):
    """Host arrays go through pinned buffers reused by every batch: rows left from a larger batch must not leak
    into a smaller one, and the arrays returned must not change when the next batch reuses the buffers."""
    runtime, mlp = _runtime(tmp_path, GPU_MLP_CONFIG.format(count=1, precision="fp32", graphs="true"))
    assert runtime._staged, "a batched fixed-shape model with CUDA graphs takes the staged path"
    previous = []
    for rows in (256, 100, 64, 3, 1, 3):
        x = np.random.default_rng(rows).standard_normal((rows, 256)).astype(np.float32)
        y = runtime.infer({"x": x}, ["y"])["y"]
        assert y.shape == (rows, 16)
        np.testing.assert_allclose(y, _reference(mlp, x), rtol=2e-3, atol=2e-3)
        previous.append((y.copy(), y))
    for kept, returned in previous:
        np.testing.assert_array_equal(kept, returned)
    runtime.close()


def test_outputs_shaped_unlike_the_config_keep_the_general_path(tmp_path):
    config = GPU_MLP_CONFIG.format(count=1, precision="fp32", graphs="true").replace("dims = [16]", "dims = [4, 4]")
    runtime, _ = _runtime(tmp_path, config)
    assert runtime._graphs and not runtime._staged
    y = runtime.infer({"x": np.ones((3, 256), np.float32)}, ["y"])["y"]
    assert y.shape == (3, 16)  # what the module returned: the server's output check reports the mismatch
    runtime.close()
