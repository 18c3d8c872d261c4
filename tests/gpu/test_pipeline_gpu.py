"""A pipeline model on a GPU torch instance: the CUDA kernels feed the model on the device, no host round trip.

Served outputs equal the CPU references followed by the same model on the CPU (GPU convolutions may use TF32, hence
the tolerance). Marked ``gpu``; skipped where numba.cuda cannot start. Run by bench/gpu/run.sh.
"""

from __future__ import annotations

import numpy as np
import pytest

from surge.clients import InferenceClient
from surge.kernels import image
from surge.server.app import ServerConfig
from tests.conftest import ServerThread

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")]

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CONFIG = """
backend = "torch"
max_batch_size = 16

[[input]]
name = "x"
datatype = "FP32"
dims = [3, 32, 32]

[[output]]
name = "scores"
datatype = "FP32"
dims = [10]

[instance_group]
kind = "{kind}"

[dynamic_batching]
max_queue_delay_s = 0.002

[parameters]
cuda_graphs = {graphs}

[[preprocess]]
op = "resize_crop_normalize"
input = "image"
output = "x"
resize = [36, 36]
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[[postprocess]]
op = "topk"
input = "scores"
output = "classes"
values_output = "top_scores"
k = 3
"""


@pytest.fixture(scope="module")
def gpu_pipeline(tmp_path_factory):
    import torch

    from surge.kernels import cuda as kc
    from tests.torch_models import TinyCNN, write_torch_model

    reason = kc.why_unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("gpu_pipeline_repo")
    model = TinyCNN()
    example = torch.zeros(2, 3, 32, 32)
    for name, graphs in (("cnn_graphs", "true"), ("cnn_eager", "false")):
        write_torch_model(root / name, model, example, kind="export", config=CONFIG.format(graphs=graphs, kind="gpu"))
    thread = ServerThread(ServerConfig(model_repository=root, grpc_port=0, metrics_port=0, http_port=0, strict_readiness=False)).start()
    yield thread, model
    thread.stop()


@pytest.mark.parametrize("name", ["cnn_graphs", "cnn_eager"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (3, 45, 61, 3), (16, 36, 36, 3)])
def test_gpu_pipeline_equals_cpu_references_and_model(gpu_pipeline, name: str, shape: tuple) -> None:
    import torch

    server, model = gpu_pipeline
    version = server.server.repository.get(name)
    assert all(inst.pipeline is not None and inst.pipeline.on_device for inst in version._instances), "preprocessing did not run on the GPU"
    images = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    with InferenceClient(server.address, timeout_s=60, retries=0) as client:
        result = client.infer(name, {"image": images})
    x = image.resize_crop_normalize_ref(images, (36, 36), (32, 32), MEAN, STD)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-2, atol=2e-3)
    order = np.argsort(-expected, axis=1, kind="stable")
    clear = (np.take_along_axis(expected, order[:, :1], 1) - np.take_along_axis(expected, order[:, 1:2], 1))[:, 0] > 1e-2
    np.testing.assert_array_equal(result["classes"][clear, 0], order[clear, 0])
