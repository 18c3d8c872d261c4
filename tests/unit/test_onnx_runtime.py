"""``OnnxRuntime`` on the CPU provider: the IOBinding path (forced with ``io_binding = "on"``) against plain ``run``.

With a GPU provider the same calls bind to "cuda" (``tests/gpu/test_onnx_gpu.py``); here they bind to "cpu",
which runs every IOBinding call the runtime makes (device buffers updated in place, outputs copied back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surge.protos.datatypes import numpy_dtype
from surge.server.config import parse_model_config
from surge.server.errors import ConfigError
from surge.server.runtimes.onnx import DEVICE_BUFFERS_PER_INPUT, OnnxRuntime
from tests.models import ONNX_DATATYPES, write_add_model, write_identity_all

pytest.importorskip("onnxruntime")


def _load(path: Path, **parameters: Any) -> OnnxRuntime:
    runtime = OnnxRuntime()
    runtime.load(path, parse_model_config("m", {"parameters": parameters}), 0)
    return runtime


@pytest.fixture(scope="module")
def add_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("add") / "model.onnx"
    write_add_model(path, 2.0)
    return path


def test_bound_and_unbound_runs_agree_across_shapes(add_model: Path) -> None:
    bound, plain = _load(add_model, io_binding="on"), _load(add_model, io_binding="off")
    rng = np.random.default_rng(0)
    # more distinct shapes than buffers kept per input, then back to the first: evicted buffers are rebuilt
    for rows in [*range(1, DEVICE_BUFFERS_PER_INPUT + 3), 1, 2]:
        x = rng.standard_normal((rows, 4)).astype(np.float32)
        got, want = bound.infer({"x": x}, ["y"]), plain.infer({"x": x}, ["y"])
        np.testing.assert_array_equal(got["y"], want["y"])
        np.testing.assert_allclose(got["y"], x + 2.0)


def test_bound_outputs_do_not_change_when_the_buffer_is_reused(add_model: Path) -> None:
    runtime = _load(add_model, io_binding="on")
    first = runtime.infer({"x": np.zeros((2, 4), np.float32)}, ["y"])["y"]
    runtime.infer({"x": np.ones((2, 4), np.float32)}, ["y"])
    np.testing.assert_array_equal(first, np.full((2, 4), 2.0, np.float32))


def test_bound_non_contiguous_input(add_model: Path) -> None:
    runtime = _load(add_model, io_binding="on")
    x = np.arange(32, dtype=np.float32).reshape(4, 8)[:, ::2]
    np.testing.assert_array_equal(runtime.infer({"x": x}, ["y"])["y"], x + 2.0)


def _identity_inputs(datatypes: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {f"in_{dt}": np.arange(4).reshape(2, 2).astype(numpy_dtype(dt)) for dt in datatypes}


def test_bound_run_carries_every_fixed_width_datatype(tmp_path: Path) -> None:
    datatypes = tuple(dt for dt in ONNX_DATATYPES if dt != "BYTES")
    write_identity_all(tmp_path, datatypes)
    runtime = _load(tmp_path / "1" / "model.onnx", io_binding="on")
    inputs = _identity_inputs(datatypes)
    outputs = runtime.infer(inputs, [f"out_{dt}" for dt in datatypes])
    for dt in datatypes:
        assert outputs[f"out_{dt}"].dtype == inputs[f"in_{dt}"].dtype
        np.testing.assert_array_equal(outputs[f"out_{dt}"], inputs[f"in_{dt}"])
    subset = runtime.infer(inputs, ["out_INT8", "out_FP32"])
    assert list(subset) == ["out_INT8", "out_FP32"]


def test_string_models_run_unbound_in_auto_mode(tmp_path: Path) -> None:
    write_identity_all(tmp_path)
    runtime = OnnxRuntime()
    runtime.load(tmp_path / "1" / "model.onnx", parse_model_config("m", {}), 0)
    with pytest.raises(ConfigError, match="IOBinding cannot bind"):
        _load(tmp_path / "1" / "model.onnx", io_binding="on")


def test_gpu_instances_need_onnxruntime_gpu_here(add_model: Path) -> None:
    runtime = OnnxRuntime()
    config = parse_model_config("m", {"instance_group": {"kind": "gpu", "gpus": [0]}})
    with pytest.raises(ConfigError, match="'cuda' needs CUDAExecutionProvider, which this onnxruntime lacks"):
        runtime.load(add_model, config, 0)


def test_auto_instances_fall_to_cpu_without_cuda(add_model: Path) -> None:
    runtime = OnnxRuntime()
    runtime.load(add_model, parse_model_config("m", {"instance_group": {"kind": "auto"}}), 0)
    np.testing.assert_array_equal(runtime.infer({"x": np.zeros((1, 4), np.float32)}, ["y"])["y"], np.full((1, 4), 2.0, np.float32))


def test_unknown_parameter_lists_the_valid_ones(add_model: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(add_model, tensorrt_fp32=True)
    message = str(info.value)
    assert message.startswith("parameters: unknown ONNX Runtime option(s) tensorrt_fp32; valid: ")
    assert "tensorrt_fp16" in message and "io_binding" in message and "cuda_mem_limit_bytes" in message
