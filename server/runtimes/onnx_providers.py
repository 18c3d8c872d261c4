"""ONNX Runtime on GPU, the pure part: which execution providers, with which options, and the I/O binding plan.

Everything here works on plain data (the model's ``[parameters]``, its instance group, the provider names
ONNX Runtime reports) and imports no onnxruntime, so it is unit-tested on machines without onnxruntime-gpu.
``onnx.py`` feeds the result to ``InferenceSession`` and follows the plan.

Provider options are ONNX Runtime's documented names (CUDA and TensorRT execution provider pages); Python
passes them as strings (``str(value)``), booleans as True/False as those pages ask. Keys under
``[parameters]``::

    execution_providers = ["tensorrt", "cuda", "cpu"]  # preference order; default from instance_group.kind
    io_binding = "auto"                    # "auto": on when a GPU provider is active; "on"; "off" (never for string tensors)
    # CUDA execution provider
    cuda_mem_limit_bytes = 0               # gpu_mem_limit: the provider's arena limit (0: no limit)
    cuda_arena_extend_strategy = "next_power_of_two"   # or "same_as_requested"
    cudnn_conv_algo_search = "exhaustive"  # or "heuristic", "default"
    cudnn_conv_use_max_workspace = true
    cuda_copy_in_default_stream = true     # do_copy_in_default_stream
    cuda_tf32 = true                       # use_tf32
    # TensorRT execution provider
    tensorrt_fp16 = false                  # trt_fp16_enable
    tensorrt_workspace_bytes = 0           # trt_max_workspace_size (0: the provider's default)
    tensorrt_engine_cache_path = ""        # engine and timing caches in this folder ("" = no cache)
    tensorrt_builder_optimization_level = 3  # trt_builder_optimization_level, 0..5
    tensorrt_min_subgraph_size = 1         # trt_min_subgraph_size
    # anything else, passed through as given (wins over the keys above)
    [parameters.cuda_provider_options]
    [parameters.tensorrt_provider_options]

When the config declares every input with fixed dims besides the batch dimension, the TensorRT provider gets
explicit optimization profiles (``trt_profile_{min,opt,max}_shapes``) covering 1..max_batch_size rows, so its
engine is built once instead of being rebuilt as warm-up meets larger batches.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import TensorConfig
from ..errors import ConfigError

__all__ = [
    "GPU_PROVIDERS",
    "PROVIDER_KEYS",
    "PROVIDERS",
    "BindingPlan",
    "binding_plan",
    "check_active_providers",
    "execution_providers",
    "provider_names",
    "tensorrt_profile_options",
]

#: Short names in ``execution_providers`` -> ONNX Runtime's provider names.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
#: Providers that execute on a CUDA device (inputs and outputs can be bound to it).
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})

_BOOL = "bool"
_INT = "int"
#: [parameters] key -> (provider, option name, kind or choices {our value: ORT's value}).
_OPTIONS: dict[str, tuple[str, str, Any]] = {
    "cuda_mem_limit_bytes": ("cuda", "gpu_mem_limit", _INT),
    "cuda_arena_extend_strategy": ("cuda", "arena_extend_strategy", {"next_power_of_two": "kNextPowerOfTwo", "same_as_requested": "kSameAsRequested"}),
    "cudnn_conv_algo_search": ("cuda", "cudnn_conv_algo_search", {"exhaustive": "EXHAUSTIVE", "heuristic": "HEURISTIC", "default": "DEFAULT"}),
    "cudnn_conv_use_max_workspace": ("cuda", "cudnn_conv_use_max_workspace", _BOOL),
    "cuda_copy_in_default_stream": ("cuda", "do_copy_in_default_stream", _BOOL),
    "cuda_tf32": ("cuda", "use_tf32", _BOOL),
    "tensorrt_fp16": ("tensorrt", "trt_fp16_enable", _BOOL),
    "tensorrt_workspace_bytes": ("tensorrt", "trt_max_workspace_size", _INT),
    "tensorrt_builder_optimization_level": ("tensorrt", "trt_builder_optimization_level", range(6)),
    "tensorrt_min_subgraph_size": ("tensorrt", "trt_min_subgraph_size", _INT),
}
_PASSTHROUGH = {"cuda": "cuda_provider_options", "tensorrt": "tensorrt_provider_options"}
#: Every [parameters] key this module reads (onnx.py adds the session's own).
PROVIDER_KEYS = frozenset({*_OPTIONS, *_PASSTHROUGH.values(), "execution_providers", "io_binding", "tensorrt_engine_cache_path"})


def provider_names(parameters: Mapping[str, Any], kind: str, available: Collection[str]) -> list[str]:
    """The short provider names to ask for, in preference order.

    ``execution_providers`` when given (with ``instance_group.kind = "gpu"`` it must name a GPU provider);
    otherwise from the kind: ``cpu`` -> ["cpu"], ``gpu`` -> ["cuda", "cpu"], ``auto`` -> ["cuda", "cpu"] when
    ``available`` (ONNX Runtime's provider names) has CUDA, else ["cpu"]. Raises ConfigError.
    """
    names = parameters.get("execution_providers")
    if names is None:
        if kind == "gpu" or (kind == "auto" and PROVIDERS["cuda"] in available):
            return ["cuda", "cpu"]
        return ["cpu"]
    if not isinstance(names, list) or not names or any(n not in PROVIDERS for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"parameters.execution_providers: expected a list of distinct names drawn from {', '.join(PROVIDERS)}, got {names!r}")
    if kind == "gpu" and not any(PROVIDERS[n] in GPU_PROVIDERS for n in names):
        raise ConfigError(f"parameters.execution_providers: {names!r} names no GPU provider, but instance_group.kind = \"gpu\"; add \"cuda\" or \"tensorrt\"")
    return list(names)


def execution_providers(
    parameters: Mapping[str, Any],
    *,
    kind: str,
    device_id: int,
    available: Collection[str],
    inputs: Sequence[TensorConfig] = (),
    max_batch_size: int = 0,
    opt_batch_size: int = 0,
) -> list[str | tuple[str, dict[str, Any]]]:
    """The ``providers`` argument of ``InferenceSession`` for one instance on GPU ``device_id``.

    ``available`` is ``onnxruntime.get_available_providers()``; ``inputs``/``max_batch_size``/``opt_batch_size``
    (the config's, possibly empty) give the TensorRT provider explicit optimization profiles. Raises
    ConfigError naming the key when a value is invalid or a provider is not in this onnxruntime build.
    """
    names = provider_names(parameters, kind, available)
    options: dict[str, dict[str, Any]] = {"cuda": {}, "tensorrt": {}}
    for key, (provider, option, spec) in _OPTIONS.items():
        if key in parameters:
            value = _value(key, parameters[key], spec)
            if not (option in ("trt_max_workspace_size", "gpu_mem_limit") and value == 0):  # 0 = the provider's default
                options[provider][option] = value
    cache = parameters.get("tensorrt_engine_cache_path", "")
    if not isinstance(cache, str):
        raise ConfigError(f"parameters.tensorrt_engine_cache_path: expected a folder path (string), got {cache!r}")
    if cache:
        options["tensorrt"].update(
            trt_engine_cache_enable=True, trt_engine_cache_path=cache, trt_timing_cache_enable=True, trt_timing_cache_path=cache
        )
    options["tensorrt"].update(tensorrt_profile_options(inputs, max_batch_size, opt_batch_size))
    for provider, key in _PASSTHROUGH.items():
        extra = parameters.get(key, {})
        if not isinstance(extra, Mapping) or any(not isinstance(v, str | int | float | bool) for v in extra.values()):
            raise ConfigError(f"parameters.{key}: expected a table of option = value (strings, numbers, booleans), got {extra!r}")
        options[provider].update(extra)
    providers: list[str | tuple[str, dict[str, Any]]] = []
    for name in names:
        provider = PROVIDERS[name]
        if provider not in available:
            raise ConfigError(
                f"parameters.execution_providers: {name!r} needs {provider}, which this onnxruntime lacks "
                f"(available: {', '.join(sorted(available))}; install onnxruntime-gpu, not onnxruntime, for cuda/tensorrt)"
            )
        if name == "cpu":
            providers.append(provider)
        else:
            providers.append((provider, {"device_id": device_id, **options[name]}))
    return providers


def tensorrt_profile_options(inputs: Sequence[TensorConfig], max_batch_size: int, opt_batch_size: int = 0) -> dict[str, str]:
    """TensorRT provider options pinning one optimization profile to 1..max_batch_size rows, or {} when unknowable.

    Needs a batch dimension and every input declared with fixed dims besides it (the provider's
    ``trt_profile_*_shapes`` must cover every dynamic input): ``{"trt_profile_min_shapes": "x:1x16", ...}``.
    ``opt_batch_size`` (0: max_batch_size) is the batch TensorRT tunes its kernels for.
    """
    if max_batch_size <= 0 or not inputs:
        return {}
    if any(d <= 0 for t in inputs for d in t.dims) or any(c in t.name for t in inputs for c in ":,"):
        return {}  # a variable non-batch dimension, or a name the option's "name:AxB,..." syntax cannot carry
    opt = min(opt_batch_size or max_batch_size, max_batch_size)

    def shapes(rows: int) -> str:
        return ",".join(f"{t.name}:{'x'.join(str(d) for d in (rows, *t.dims))}" for t in inputs)

    return {"trt_profile_min_shapes": shapes(1), "trt_profile_opt_shapes": shapes(opt), "trt_profile_max_shapes": shapes(max_batch_size)}


def check_active_providers(requested: Sequence[str | tuple[str, Any]], active: Sequence[str]) -> None:
    """Raise ConfigError when a requested GPU provider is not among the session's active ones.

    ONNX Runtime's Python API falls back to the CPU provider when a GPU provider fails to start (missing CUDA
    or cuDNN libraries, no device); serving on CPU what was configured for a GPU is an error here, not a warning.
    """
    names = [p if isinstance(p, str) else p[0] for p in requested]
    missing = [n for n in names if n in GPU_PROVIDERS and n not in active]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} did not start (the session runs on {', '.join(active) or 'nothing'}); "
            "ONNX Runtime's log above says why (CUDA/cuDNN libraries, driver, device id)"
        )


@dataclass(frozen=True, slots=True)
class BindingPlan:
    """How one instance binds its tensors with ONNX Runtime's IOBinding.

    Every input is copied once into a buffer on the device that the instance reuses (an OrtValue updated
    in place); every output is bound to the device (ORT allocates it there) and copied to the host once
    after the run.
    """

    device_type: str
    """"cuda" when a GPU provider is active; "cpu" when binding was forced on a CPU session."""
    device_id: int
    """The instance's GPU (from instance_group.gpus)."""


def binding_plan(
    mode: str, active: Sequence[str], device_id: int, inputs: Sequence[TensorConfig], outputs: Sequence[TensorConfig]
) -> BindingPlan | None:
    """The instance's binding plan, or None to call ``session.run``.

    None for mode "off", for "auto" with no GPU provider active, and for models with string (BYTES) tensors,
    which ONNX Runtime's IOBinding cannot bind ("Only binding non-string Tensors is currently supported").
    ``active`` is ``session.get_providers()``; ``inputs``/``outputs`` the signature read from the model.
    Raises ConfigError for an unknown mode, or for "on" with string tensors.
    """
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"parameters.io_binding: expected auto, on or off, got {mode!r}")
    on_gpu = any(p in GPU_PROVIDERS for p in active)
    if mode == "off" or (mode == "auto" and not on_gpu):
        return None
    strings = [t.name for t in (*inputs, *outputs) if t.datatype == "BYTES"]
    if strings:
        if mode == "on":
            raise ConfigError(f"parameters.io_binding = \"on\": tensors {strings} are strings, which ONNX Runtime's IOBinding cannot bind; use \"auto\" or \"off\"")
        return None
    return BindingPlan(device_type="cuda" if on_gpu else "cpu", device_id=device_id)


def _value(key: str, value: Any, spec: Any) -> Any:
    if spec is _BOOL:
        if not isinstance(value, bool):
            raise ConfigError(f"parameters.{key}: expected true or false, got {value!r}")
        return value
    if spec is _INT:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"parameters.{key}: expected an integer >= 0, got {value!r}")
        return value
    if isinstance(spec, range):
        if isinstance(value, bool) or value not in spec:
            raise ConfigError(f"parameters.{key}: expected an integer {spec.start}..{spec.stop - 1}, got {value!r}")
        return value
    if value not in spec:
        raise ConfigError(f"parameters.{key}: expected one of {', '.join(spec)}, got {value!r}")
    return spec[value]
