"""The PyTorch runtime end to end over the wire on CPU: TorchScript and torch.export programs, batched."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from surge.clients import AsyncInferenceClient, InferenceClient  # noqa: E402
from tests.torch_models import TinyCNN, make_mlp, write_torch_model  # noqa: E402

MLP_CONFIG = """
backend = "torch"
max_batch_size = 64

[[input]]
name = "x"
datatype = "FP32"
dims = [256]

[[output]]
name = "y"
datatype = "FP32"
dims = [16]

[dynamic_batching]
max_queue_delay_s = 0.010

[parameters]
intra_op_threads = 1
"""
CNN_CONFIG = """
backend = "torch"
max_batch_size = 8

[[input]]
name = "image"
datatype = "FP32"
dims = [3, 32, 32]

[[output]]
name = "scores"
datatype = "FP32"
dims = [10]

[parameters]
precision = "bf16"
"""


@pytest.fixture(scope="module")
def torch_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_repo")
    mlp = make_mlp()
    write_torch_model(root / "mlp_script", mlp, torch.zeros(2, 256), kind="script", config=MLP_CONFIG)
    write_torch_model(root / "mlp_export", mlp, torch.zeros(2, 256), kind="export", config=MLP_CONFIG)
    write_torch_model(root / "cnn_bf16", TinyCNN(), torch.zeros(2, 3, 32, 32), kind="script", config=CNN_CONFIG)
    pickled = root / "pickled" / "1"
    pickled.mkdir(parents=True)
    torch.save(mlp, pickled / "model.pth")
    (root / "pickled" / "config.toml").write_text('default_model_filename = "model.pth"\n' + MLP_CONFIG)
    return root, mlp


@pytest.fixture(scope="module")
def torch_server(torch_repo):
    from tests.conftest import ServerThread
    from surge.server.app import ServerConfig

    root, _ = torch_repo
    thread = ServerThread(ServerConfig(model_repository=root, grpc_port=0, metrics_port=0, http_port=0, strict_readiness=False)).start()
    yield thread
    thread.stop()


@pytest.mark.parametrize("model", ["mlp_script", "mlp_export"])
def test_torch_model_matches_in_process_torch(torch_server, torch_repo, model):
    _, mlp = torch_repo
    x = np.random.default_rng(0).standard_normal((5, 256)).astype(np.float32)
    with InferenceClient(torch_server.address, timeout_s=30) as client:
        metadata = client.model_metadata(model)
        assert metadata.platform == "pytorch_libtorch" and [list(t.shape) for t in metadata.inputs] == [[-1, 256]]
        y = client.infer(model, {"x": x})["y"]
    with torch.inference_mode():
        expected = mlp(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


async def test_torch_model_batches_concurrent_requests(torch_server, torch_repo):
    _, mlp = torch_repo
    xs = [np.random.default_rng(i).standard_normal((1, 256)).astype(np.float32) for i in range(24)]
    async with AsyncInferenceClient(torch_server.address, timeout_s=30) as client:
        results = await asyncio.gather(*(client.infer("mlp_export", {"x": x}) for x in xs))
        stats = (await client.model_statistics("mlp_export")).model_stats[0]
    with torch.inference_mode():
        for x, r in zip(xs, results):
            np.testing.assert_allclose(r["y"], mlp(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    assert stats.execution_count < stats.inference_count


def test_bf16_precision_runs_the_cnn_in_bfloat16(torch_server):
    images = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with InferenceClient(torch_server.address, timeout_s=30) as client:
        scores = client.infer("cnn_bf16", {"image": images})["scores"]
    reference = TinyCNN().eval()
    with torch.inference_mode():
        expected = reference(torch.from_numpy(images)).numpy()
    assert scores.dtype == np.float32 and scores.shape == (3, 10)
    np.testing.assert_allclose(scores, expected, rtol=0.1, atol=0.05)  # bfloat16 keeps ~3 significant digits


def test_pickled_module_is_refused_without_opt_in(torch_server):
    with InferenceClient(torch_server.address, timeout_s=30) as client:
        (row,) = [m for m in client.repository_index() if m.name == "pickled"]
    assert row.state == "UNAVAILABLE" and "allow_pickle" in row.reason
