"""``surge.server.runtimes.onnx_providers``: provider choice and options from config, binding plans (plain data).

These are the parts of ONNX Runtime on GPU that run without onnxruntime-gpu; ``tests/gpu/test_onnx_gpu.py``
runs the providers themselves where they exist.
"""

from __future__ import annotations

from typing import Any

import pytest

from surge.server.config import TensorConfig
from surge.server.errors import ConfigError
from surge.server.runtimes.onnx_providers import (
    BindingPlan,
    binding_plan,
    check_active_providers,
    execution_providers,
    provider_names,
    tensorrt_profile_options,
)

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_BUILD = (TRT, CUDA, CPU)
X = TensorConfig(name="x", datatype="FP32", dims=(16,))
S = TensorConfig(name="s", datatype="BYTES", dims=(1,))


def _providers(parameters: dict[str, Any], kind: str = "cpu", **kwargs: Any) -> list[Any]:
    return execution_providers(parameters, kind=kind, device_id=kwargs.pop("device_id", 0), available=kwargs.pop("available", GPU_BUILD), **kwargs)


@pytest.mark.parametrize(
    ("kind", "available", "expected"),
    [
        ("cpu", GPU_BUILD, ["cpu"]),
        ("gpu", GPU_BUILD, ["cuda", "cpu"]),
        ("gpu", (CPU,), ["cuda", "cpu"]),  # asked for a GPU: the availability check then fails loudly
        ("auto", GPU_BUILD, ["cuda", "cpu"]),
        ("auto", (CPU,), ["cpu"]),
    ],
)
def test_default_providers_follow_the_instance_kind(kind: str, available: tuple[str, ...], expected: list[str]) -> None:
    assert provider_names({}, kind, available) == expected


def test_explicit_providers_win_over_the_kind() -> None:
    assert provider_names({"execution_providers": ["tensorrt", "cuda", "cpu"]}, "cpu", GPU_BUILD) == ["tensorrt", "cuda", "cpu"]


@pytest.mark.parametrize(
    ("parameters", "kind", "message"),
    [
        ({"execution_providers": []}, "cpu", "expected a list of distinct names drawn from cpu, cuda, tensorrt, got []"),
        ({"execution_providers": ["rocm"]}, "cpu", "got ['rocm']"),
        ({"execution_providers": ["cuda", "cuda"]}, "cpu", "got ['cuda', 'cuda']"),
        ({"execution_providers": "cuda"}, "cpu", "got 'cuda'"),
        ({"execution_providers": ["cpu"]}, "gpu", "names no GPU provider, but instance_group.kind = \"gpu\""),
    ],
)
def test_bad_provider_lists_name_the_key(parameters: dict[str, Any], kind: str, message: str) -> None:
    with pytest.raises(ConfigError, match="parameters.execution_providers") as info:
        provider_names(parameters, kind, GPU_BUILD)
    assert message in str(info.value)


def test_cpu_only_is_a_bare_provider_name() -> None:
    assert _providers({}) == [CPU]


def test_cuda_options_map_to_ort_names_with_the_instance_device() -> None:
    parameters = {
        "execution_providers": ["cuda", "cpu"],
        "cuda_mem_limit_bytes": 2 << 30,
        "cuda_arena_extend_strategy": "same_as_requested",
        "cudnn_conv_algo_search": "heuristic",
        "cudnn_conv_use_max_workspace": True,
        "cuda_copy_in_default_stream": False,
        "cuda_tf32": False,
    }
    assert _providers(parameters, device_id=3) == [
        (
            CUDA,
            {
                "device_id": 3,
                "gpu_mem_limit": 2 << 30,
                "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_algo_search": "HEURISTIC",
                "cudnn_conv_use_max_workspace": True,
                "do_copy_in_default_stream": False,
                "use_tf32": False,
            },
        ),
        CPU,
    ]


def test_tensorrt_options_map_to_ort_names() -> None:
    parameters = {
        "execution_providers": ["tensorrt", "cuda"],
        "tensorrt_fp16": True,
        "tensorrt_workspace_bytes": 1 << 30,
        "tensorrt_engine_cache_path": "/var/cache/trt",
        "tensorrt_builder_optimization_level": 5,
        "tensorrt_min_subgraph_size": 3,
    }
    trt, cuda = _providers(parameters, device_id=1)
    assert trt == (
        TRT,
        {
            "device_id": 1,
            "trt_fp16_enable": True,
            "trt_max_workspace_size": 1 << 30,
            "trt_builder_optimization_level": 5,
            "trt_min_subgraph_size": 3,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": "/var/cache/trt",
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": "/var/cache/trt",
        },
    )
    assert cuda == (CUDA, {"device_id": 1})  # TensorRT options stay with the TensorRT provider


def test_zero_limits_mean_the_provider_default_and_are_omitted() -> None:
    parameters = {"execution_providers": ["tensorrt", "cuda"], "tensorrt_workspace_bytes": 0, "cuda_mem_limit_bytes": 0}
    assert _providers(parameters) == [(TRT, {"device_id": 0}), (CUDA, {"device_id": 0})]


def test_passthrough_tables_reach_the_provider_and_win() -> None:
    parameters = {
        "execution_providers": ["tensorrt", "cuda"],
        "tensorrt_fp16": True,
        "tensorrt_provider_options": {"trt_fp16_enable": False, "trt_cuda_graph_enable": True},
        "cuda_provider_options": {"enable_cuda_graph": "1"},
    }
    trt, cuda = _providers(parameters)
    assert trt[1]["trt_fp16_enable"] is False and trt[1]["trt_cuda_graph_enable"] is True
    assert cuda == (CUDA, {"device_id": 0, "enable_cuda_graph": "1"})


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"tensorrt_fp16": "yes"}, "parameters.tensorrt_fp16: expected true or false, got 'yes'"),
        ({"tensorrt_workspace_bytes": -1}, "parameters.tensorrt_workspace_bytes: expected an integer >= 0, got -1"),
        ({"cuda_mem_limit_bytes": 1.5}, "parameters.cuda_mem_limit_bytes: expected an integer >= 0, got 1.5"),
        ({"tensorrt_builder_optimization_level": 6}, "parameters.tensorrt_builder_optimization_level: expected an integer 0..5, got 6"),
        ({"cudnn_conv_algo_search": "EXHAUSTIVE"}, "parameters.cudnn_conv_algo_search: expected one of exhaustive, heuristic, default, got 'EXHAUSTIVE'"),
        ({"tensorrt_engine_cache_path": 1}, "parameters.tensorrt_engine_cache_path: expected a folder path (string), got 1"),
        ({"cuda_provider_options": {"x": [1]}}, "parameters.cuda_provider_options: expected a table of option = value"),
    ],
)
def test_bad_option_values_name_the_key(parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _providers({"execution_providers": ["tensorrt", "cuda"], **parameters})
    assert message in str(info.value)


def test_a_provider_missing_from_the_build_is_a_load_error_naming_what_exists() -> None:
    with pytest.raises(ConfigError) as info:
        _providers({}, kind="gpu", available=(CPU, "AzureExecutionProvider"))
    assert "'cuda' needs CUDAExecutionProvider, which this onnxruntime lacks (available: AzureExecutionProvider, CPUExecutionProvider" in str(info.value)
    assert "install onnxruntime-gpu" in str(info.value)


def test_tensorrt_profiles_cover_one_to_max_batch_rows() -> None:
    inputs = [X, TensorConfig(name="mask", datatype="INT64", dims=(4, 2))]
    assert tensorrt_profile_options(inputs, 64, 16) == {
        "trt_profile_min_shapes": "x:1x16,mask:1x4x2",
        "trt_profile_opt_shapes": "x:16x16,mask:16x4x2",
        "trt_profile_max_shapes": "x:64x16,mask:64x4x2",
    }
    assert tensorrt_profile_options([X], 8)["trt_profile_opt_shapes"] == "x:8x16"  # opt defaults to the max
    assert tensorrt_profile_options([X], 8, 32)["trt_profile_opt_shapes"] == "x:8x16"  # and never exceeds it


@pytest.mark.parametrize(
    ("inputs", "max_batch_size"),
    [
        ([X], 0),  # no batch dimension: nothing to pin
        ([], 8),  # signature not declared in the config
        ([TensorConfig(name="x", datatype="FP32", dims=(-1,))], 8),  # a variable non-batch dimension
        ([TensorConfig(name="a:b", datatype="FP32", dims=(2,))], 8),  # a name the option syntax cannot carry
    ],
)
def test_no_tensorrt_profiles_when_they_cannot_be_known(inputs: list[TensorConfig], max_batch_size: int) -> None:
    assert tensorrt_profile_options(inputs, max_batch_size) == {}


def test_tensorrt_provider_gets_profiles_from_the_config() -> None:
    (trt,) = _providers({"execution_providers": ["tensorrt"]}, inputs=[X], max_batch_size=32, opt_batch_size=8)
    assert trt[1]["trt_profile_opt_shapes"] == "x:8x16" and trt[1]["trt_profile_max_shapes"] == "x:32x16"


def test_a_gpu_provider_that_did_not_start_is_an_error() -> None:
    requested = [(CUDA, {"device_id": 0}), CPU]
    check_active_providers(requested, [CUDA, CPU])
    with pytest.raises(ConfigError, match="CUDAExecutionProvider did not start \\(the session runs on CPUExecutionProvider\\)"):
        check_active_providers(requested, [CPU])
    check_active_providers([CPU], [CPU])


def test_binding_plan_binds_to_the_instance_device() -> None:
    assert binding_plan("auto", [TRT, CUDA, CPU], 2, [X], [X]) == BindingPlan(device_type="cuda", device_id=2)


def test_string_tensors_are_not_bound() -> None:
    # ONNX Runtime: "Only binding non-string Tensors is currently supported" (seen with onnxruntime 1.32, CPU)
    assert binding_plan("auto", [CUDA, CPU], 0, [X, S], [X]) is None
    assert binding_plan("auto", [CUDA, CPU], 0, [X], [S]) is None
    with pytest.raises(ConfigError, match="parameters.io_binding = \"on\": tensors \\['s'\\] are strings"):
        binding_plan("on", [CPU], 0, [S], [X])


@pytest.mark.parametrize(
    ("mode", "active", "device"),
    [("auto", [CPU], None), ("off", [CUDA, CPU], None), ("on", [CPU], "cpu"), ("on", [CUDA, CPU], "cuda"), ("auto", [CUDA, CPU], "cuda")],
)
def test_binding_mode(mode: str, active: list[str], device: str | None) -> None:
    plan = binding_plan(mode, active, 0, [X], [X])
    assert (plan.device_type if plan else None) == device


def test_bad_binding_mode_names_the_key() -> None:
    with pytest.raises(ConfigError, match="parameters.io_binding: expected auto, on or off, got 'always'"):
        binding_plan("always", [CPU], 0, [X], [X])
