"""ONNX Runtime's CUDA and TensorRT execution providers with IOBinding: runs where onnxruntime-gpu and a GPU are.

Not run on our machines (no onnxruntime-gpu on any of them); these tests skip there, naming why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surge.server.config import parse_model_config
from surge.server.errors import ConfigError
from tests.models import write_add_model

pytestmark = pytest.mark.gpu

ort = pytest.importorskip("onnxruntime")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)", allow_module_level=True)

from surge.server.runtimes.onnx import OnnxRuntime  # noqa: E402


@pytest.fixture(scope="module")
def add_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("add") / "model.onnx"
    write_add_model(path, 2.0)
    return path


def _load(path: Path, config: dict) -> OnnxRuntime:
    runtime = OnnxRuntime()
    try:
        runtime.load(path, parse_model_config("m", config), 0)
    except ConfigError as exc:
        if "did not start" in str(exc):
            pytest.skip(str(exc))
        raise
    return runtime


@pytest.mark.parametrize("io_binding", ["auto", "off"])
def test_cuda_provider_matches_cpu(add_model: Path, io_binding: str) -> None:
    gpu = _load(add_model, {"instance_group": {"kind": "gpu", "gpus": [0]}, "parameters": {"io_binding": io_binding}})
    rng = np.random.default_rng(0)
    for rows in (1, 7, 64, 7):
        x = rng.standard_normal((rows, 4)).astype(np.float32)
        np.testing.assert_allclose(gpu.infer({"x": x}, ["y"])["y"], x + 2.0, rtol=1e-6)


def test_tensorrt_provider_with_profiles_from_the_config(add_model: Path, tmp_path: Path) -> None:
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no TensorrtExecutionProvider")
    config = {
        "max_batch_size": 16,
        "input": [{"name": "x", "datatype": "FP32", "dims": [4]}],
        "parameters": {"execution_providers": ["tensorrt", "cuda"], "tensorrt_engine_cache_path": str(tmp_path)},
    }
    runtime = _load(add_model, config)
    x = np.ones((16, 4), np.float32)
    np.testing.assert_allclose(runtime.infer({"x": x}, ["y"])["y"], x + 2.0)
