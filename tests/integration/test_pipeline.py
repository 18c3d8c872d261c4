"""Pipeline models over the wire equal the NumPy references followed by the model in-process (ONNX Runtime)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from surge.clients import AsyncInferenceClient, InferenceClient, InvalidArgumentError
from surge.kernels import image, tabular
from surge.server.app import ServerConfig
from surge.server.demo import write_demo_repository, write_onnx_model
from tests.conftest import ServerThread

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TABULAR_CONFIG = """\
max_batch_size = 16
[dynamic_batching]
max_queue_delay_s = 0.002
[[preprocess]]
op = "tabular_transform"
input = "features"
output = "x"
fill = 0.0
low = -2.5
high = 2.5
mean = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8]
std = 1.5
[[postprocess]]
op = "argmax"
input = "probabilities"
output = "label"
[[postprocess]]
op = "threshold"
input = "probabilities"
output = "confident"
value = 0.4
"""
CROP_CONFIG = """\
max_batch_size = 4
[[preprocess]]
op = "center_crop"
input = "image"
output = "pixels"
"""
BROKEN_CONFIG = """\
max_batch_size = 4
[[preprocess]]
op = "standardize"
input = "features"
output = "x"
mean = 0.0
std = 0.0
"""


def _write_crop_model(folder: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["pixels"], ["out"])], "crop",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, ["batch", 8, 8, 3])],
    )
    write_onnx_model(folder / "1" / "model.onnx", graph)
    (folder / "config.toml").write_text(CROP_CONFIG)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_demo_repository(tmp_path_factory.mktemp("pipeline-repo"))
    for name, config in (("tabular", TABULAR_CONFIG), ("broken_pipeline", BROKEN_CONFIG)):
        (root / name / "1").mkdir(parents=True)
        shutil.copy(root / "mlp" / "1" / "model.onnx", root / name / "1" / "model.onnx")
        (root / name / "config.toml").write_text(config)
    _write_crop_model(root / "crop")
    return root


@pytest.fixture(scope="module")
def pipeline_server(repo: Path) -> Iterator[ServerThread]:
    thread = ServerThread(ServerConfig(model_repository=repo, grpc_port=0, metrics_port=0, http_port=0, strict_readiness=False)).start()
    yield thread
    thread.stop()


def _session(repo: Path, model: str):
    import onnxruntime as ort

    return ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def _classifier_reference(session, images: np.ndarray) -> dict[str, np.ndarray]:
    x = image.resize_crop_normalize_ref(images, (36, 36), (32, 32), MEAN, STD)
    (p,) = session.run(["probabilities"], {"input": x})
    order = np.argsort(-p, axis=1, kind="stable")[:, :3]
    return {"probabilities": p, "classes": order, "scores": np.take_along_axis(p, order, axis=1)}


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 7, 5, 3), (3, 50, 41, 3), (1, 36, 36, 3)])
def test_classifier_equals_references_then_model(pipeline_server: ServerThread, repo: Path, shape: tuple) -> None:
    images = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    expected = _classifier_reference(_session(repo, "classifier"), images)
    with InferenceClient(pipeline_server.address, timeout_s=30, retries=0) as client:
        result = client.infer("classifier", {"image": images})
    np.testing.assert_array_equal(result["classes"], expected["classes"])
    np.testing.assert_allclose(result["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["scores"], expected["scores"], rtol=1e-5, atol=1e-6)


async def test_concurrent_requests_are_batched_through_the_pipeline(pipeline_server: ServerThread, repo: Path) -> None:
    rng = np.random.default_rng(7)
    batches = [rng.integers(0, 256, (int(rng.integers(1, 4)), 24, 30, 3), dtype=np.uint8) for _ in range(12)]
    async with AsyncInferenceClient(pipeline_server.address, timeout_s=30, retries=0) as client:
        results = await asyncio.gather(*(client.infer("classifier", {"image": b}, outputs=["classes", "scores"]) for b in batches))
        stats = await client.model_statistics("classifier")
    session = _session(repo, "classifier")
    for images, result in zip(batches, results):
        expected = _classifier_reference(session, images)
        np.testing.assert_array_equal(result["classes"], expected["classes"])
        np.testing.assert_allclose(result["scores"], expected["scores"], rtol=1e-5, atol=1e-6)
        assert set(result.outputs) == {"classes", "scores"}
    (model_stats,) = stats.model_stats
    assert model_stats.inference_count >= sum(len(b) for b in batches)


def test_tabular_pipeline_equals_references_then_model(pipeline_server: ServerThread, repo: Path) -> None:
    rng = np.random.default_rng(3)
    features = (rng.standard_normal((9, 16)) * 2).astype(np.float32)
    features[rng.random(features.shape) < 0.15] = np.nan
    mean = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8]
    x = tabular.tabular_transform_ref(features, fill=0.0, low=-2.5, high=2.5, mean=mean, std=1.5)
    (p,) = _session(repo, "tabular").run(["probabilities"], {"x": x})
    with InferenceClient(pipeline_server.address, timeout_s=30, retries=0) as client:
        result = client.infer("tabular", {"features": features})
    np.testing.assert_allclose(result["probabilities"], p, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result["label"], np.argmax(p, axis=1)[:, None])
    np.testing.assert_array_equal(result["confident"], p >= 0.4)


def test_metadata_and_config_show_the_pipeline_signature(pipeline_server: ServerThread) -> None:
    with InferenceClient(pipeline_server.address, timeout_s=30, retries=0) as client:
        meta = client.model_metadata("classifier")
        config = client.model_config("classifier")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "UINT8", [-1, -1, -1, 3])]
    assert {(t.name, t.datatype, tuple(t.shape)) for t in meta.outputs} == {
        ("probabilities", "FP32", (-1, 10)), ("classes", "INT64", (-1, 3)), ("scores", "FP32", (-1, 3)),
    }
    assert [(t.name, list(t.dims)) for t in config.input] == [("image", [-1, -1, 3])]
    assert '"op": "resize_crop_normalize"' in config.parameters["surge_preprocess"].string_value
    assert '"op": "topk"' in config.parameters["surge_postprocess"].string_value


def test_a_kernel_rejecting_a_batch_is_invalid_argument_and_serving_goes_on(pipeline_server: ServerThread) -> None:
    with InferenceClient(pipeline_server.address, timeout_s=30, retries=0) as client:
        with pytest.raises(InvalidArgumentError, match=r"preprocess\[0\] \(center_crop\) on input 'image': center crop of 8x8 does not fit in an image of 4x9"):
            client.infer("crop", {"image": np.zeros((1, 4, 9, 3), np.uint8)})
        big = np.arange(2 * 10 * 12 * 3, dtype=np.uint8).reshape(2, 10, 12, 3)
        np.testing.assert_array_equal(client.infer("crop", {"image": big})["out"], big[:, 1:9, 2:10])


def test_an_invalid_pipeline_leaves_the_model_unavailable_with_the_reason(pipeline_server: ServerThread) -> None:
    with InferenceClient(pipeline_server.address, timeout_s=30, retries=0) as client:
        index = {m.name: (m.state, m.reason) for m in client.repository_index()}
        assert client.is_model_ready("classifier")
    state, reason = index["broken_pipeline"]
    assert state == "UNAVAILABLE" and "preprocess[0].std: must not contain 0" in reason


def test_a_torch_pipeline_model_on_cpu(start_server, tmp_path: Path) -> None:
    """The same config as the GPU test (tests/gpu/test_pipeline_gpu.py) with a CPU instance: the host path."""
    import torch

    from tests.gpu.test_pipeline_gpu import CONFIG
    from tests.torch_models import TinyCNN, write_torch_model

    model = TinyCNN()
    write_torch_model(tmp_path / "cnn", model, torch.zeros(2, 3, 32, 32), kind="export", config=CONFIG.format(graphs="false", kind="cpu"))
    server = start_server(model_repository=tmp_path)
    images = np.random.default_rng(1).integers(0, 256, (5, 40, 33, 3), dtype=np.uint8)
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        result = client.infer("cnn", {"image": images})
    with torch.inference_mode():
        expected = model(torch.from_numpy(image.resize_crop_normalize_ref(images, (36, 36), (32, 32), MEAN, STD))).numpy()
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result["classes"], np.argsort(-expected, axis=1, kind="stable")[:, :3])


def test_a_model_without_batch_dimension(start_server, tmp_path: Path) -> None:
    """max_batch_size = 0: the steps see one item (the kernels get a batch of one and give it back without it)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "chw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 5])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4, 5])],
    )
    write_onnx_model(tmp_path / "chw" / "1" / "model.onnx", graph)
    (tmp_path / "chw" / "config.toml").write_text(
        'max_batch_size = 0\n[[preprocess]]\nop = "normalize"\ninput = "image"\noutput = "x"\nmean = [0.1, 0.2, 0.3]\nstd = 0.5\n'
        '[[postprocess]]\nop = "argmax"\ninput = "y"\noutput = "best"\n'
    )
    server = start_server(model_repository=tmp_path)
    img = np.random.default_rng(2).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        meta = client.model_metadata("chw")
        result = client.infer("chw", {"image": img})
    assert [(t.name, list(t.shape)) for t in meta.inputs] == [("image", [4, 5, 3])]
    expected = image.normalize_ref(img, [0.1, 0.2, 0.3], 0.5)
    np.testing.assert_allclose(result["y"], expected, rtol=1e-6)
    np.testing.assert_array_equal(result["best"], np.argmax(expected, axis=-1)[..., None])


_NO_JIT_AFTER_READY = """
import asyncio, sys
from pathlib import Path
import numpy as np
from surge.kernels import image
from surge.server.config import load_model_config
from surge.server.execution.model import ModelVersion, State
from surge.server.execution.stats import Stamps, now_ns

async def main(repo):
    version = ModelVersion(load_model_config(repo / "classifier"), 1, repo / "classifier" / "1" / "model.onnx")
    await version.load()
    assert version.state == State.READY, version.reason
    twins = (image._rcn_ser, image._rcn_par)
    compiled = [len(k.signatures) for k in twins]
    assert all(compiled), compiled  # the warm-up ran both the serial and the parallel twin
    for rows in (1, 3, 32):
        images = np.random.default_rng(rows).integers(0, 256, (rows, 50, 41, 3), dtype=np.uint8)
        stamps = Stamps(now_ns())
        await version.execute({"image": images}, rows, ["classes"], stamps, None)
    assert [len(k.signatures) for k in twins] == compiled, "a request compiled a kernel after READY"
    await version.aclose()
    print("no JIT after READY")

asyncio.run(main(Path(sys.argv[1])))
"""


def test_warm_up_compiles_the_kernels_before_ready(repo: Path) -> None:
    """In a fresh process (nothing compiled yet): READY means every kernel a request will use is compiled already."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _NO_JIT_AFTER_READY, str(repo)], capture_output=True, text=True, timeout=110,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no JIT after READY" in proc.stdout
