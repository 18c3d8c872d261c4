"""The built-in demo model repository, generated in code (onnx helper API, seeded weights, no downloads).

    mlp        FP32 x[batch, 16] -> Gemm(16x32) -> Relu -> Gemm(32x4) -> Softmax -> probabilities[batch, 4]
    identity   FP32 input[batch, n] -> output[batch, n] (any row length n)
    classifier a pipeline model: UINT8 image[batch, H, W, 3] (any H, W) -> [[preprocess]] resize to 36x36, centre
               crop 32x32, normalise (Numba kernel) -> ONNX Conv(3->8) -> Relu -> GlobalAveragePool -> Gemm(8x10)
               -> Softmax -> [[postprocess]] top-3 -> classes[batch, 3] (INT64), scores[batch, 3], probabilities

``surge serve`` with no ``--model-repository`` serves this repository from the user's cache folder,
writing it on first use. Tests and benchmarks build their repositories with the same helpers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CLASSIFIER_CONFIG", "MLP_INPUT_FEATURES", "classifier_graph", "default_location", "mlp_weights", "write_demo_repository", "write_onnx_model"]

MLP_INPUT_FEATURES = 16
MLP_HIDDEN = 32
MLP_CLASSES = 4
_OPSET = 17
_IR_VERSION = 8  # readable by every onnxruntime >= 1.10

_MLP_CONFIG = """\
# Demo: a small classifier with a dynamic batch dimension.
max_batch_size = 64

[[input]]
name = "x"
datatype = "FP32"
dims = [16]

[[output]]
name = "probabilities"
datatype = "FP32"
dims = [4]

[instance_group]
count = 1

[parameters]
intra_op_threads = 1
"""

_IDENTITY_CONFIG = """\
# Demo: returns its input; rows of any length.
max_batch_size = 8
"""


CLASSIFIER_CONFIG = """\
# Demo: a pipeline model. Clients send uint8 HWC images of any size; the server resizes, crops and normalises
# them (Numba kernels, batched), runs the ONNX classifier and returns the top 3 classes with their scores.
max_batch_size = 32

[dynamic_batching]
max_queue_delay_s = 0.001

[[preprocess]]
op = "resize_crop_normalize"
input = "image"
output = "input"
resize = [36, 36]
crop = [32, 32]
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[[postprocess]]
op = "topk"
input = "probabilities"
output = "classes"
values_output = "scores"
k = 3

[parameters]
intra_op_threads = 1
"""


def default_location() -> Path:
    """Where ``surge serve`` keeps the demo repository: ``$XDG_CACHE_HOME/surge/demo-repository``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "surge" / "demo-repository"


def mlp_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The demo MLP's weights (seeded, so every machine serves the same model)."""
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((MLP_INPUT_FEATURES, MLP_HIDDEN)).astype(np.float32) / np.float32(4.0),
        "b1": rng.standard_normal(MLP_HIDDEN).astype(np.float32) / np.float32(10.0),
        "w2": rng.standard_normal((MLP_HIDDEN, MLP_CLASSES)).astype(np.float32) / np.float32(4.0),
        "b2": rng.standard_normal(MLP_CLASSES).astype(np.float32) / np.float32(10.0),
    }


def write_onnx_model(path: Path, graph: Any) -> None:
    """Serialise an onnx GraphProto as a model file (fixed opset and IR version), creating folders."""
    from onnx import checker, helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="surge")
    model.ir_version = _IR_VERSION
    checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def _mlp_graph(seed: int) -> object:
    from onnx import TensorProto, helper, numpy_helper

    w = mlp_weights(seed)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    return helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", MLP_INPUT_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", MLP_CLASSES])],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()],
    )


def _identity_graph() -> object:
    from onnx import TensorProto, helper

    return helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "n"])],
    )


def classifier_graph(seed: int = 0) -> object:
    """The demo classifier: FP32 input[batch, 3, 32, 32] -> probabilities[batch, 10] (seeded weights)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "conv_w": (rng.standard_normal((8, 3, 3, 3)) / 3.0).astype(np.float32),
        "conv_b": (rng.standard_normal(8) / 10.0).astype(np.float32),
        "fc_w": (rng.standard_normal((8, 10)) / 2.0).astype(np.float32),
        "fc_b": (rng.standard_normal(10) / 10.0).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    return helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )


def write_demo_repository(root: Path, *, seed: int = 0) -> Path:
    """Write (or complete) the demo repository under ``root``; returns ``root``. Needs the onnx package."""
    models: dict[str, tuple[str, Callable[[], object]]] = {
        "mlp": (_MLP_CONFIG, lambda: _mlp_graph(seed)),
        "identity": (_IDENTITY_CONFIG, _identity_graph),
        "classifier": (CLASSIFIER_CONFIG, lambda: classifier_graph(seed)),
    }
    for name, (config, graph) in models.items():
        folder = root / name
        model_file = folder / "1" / "model.onnx"
        if not model_file.is_file():
            write_onnx_model(model_file, graph())
        config_file = folder / "config.toml"
        if not config_file.is_file():
            config_file.write_text(config, encoding="utf-8")
    return root
