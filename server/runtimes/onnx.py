"""ONNX Runtime backend: one ``InferenceSession`` per instance, configured from the model's ``[parameters]``.

Options (all optional, under ``[parameters]`` in config.toml)::

    intra_op_threads = 1            # threads inside one operator (0: ORT's default, all cores)
    inter_op_threads = 1            # threads across operators (only with execution_mode = "parallel")
    execution_mode = "sequential"   # or "parallel"
    graph_optimization_level = "all"  # "disable" | "basic" | "extended" | "all"
    execution_providers = ["cpu"]   # in order of preference: "tensorrt", "cuda", "cpu"
    tensorrt_fp16 = false           # TensorRT provider: build fp16 engines
    tensorrt_engine_cache_path = "" # TensorRT provider: where built engines are cached ("" = no cache)
    tensorrt_workspace_bytes = 0    # TensorRT provider: max workspace (0: provider default)

The CUDA and TensorRT providers need ``onnxruntime-gpu``; asking for one that the installed onnxruntime
does not have is a load error naming what is available. GPU instances take their device id from
``instance_group.gpus`` (round-robin over instances). ``InferenceSession.run`` releases the GIL, so
instances run in parallel in their executor threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, TensorConfig
from ..errors import ConfigError, InvalidInput
from .base import Signature

__all__ = ["OnnxRuntime", "session_options"]

#: ONNX Runtime's type strings -> Open Inference Protocol datatypes.
_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}
_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_OPT_LEVEL = ("disable", "basic", "extended", "all")
_KNOWN = {
    "intra_op_threads",
    "inter_op_threads",
    "execution_mode",
    "graph_optimization_level",
    "execution_providers",
    "tensorrt_fp16",
    "tensorrt_engine_cache_path",
    "tensorrt_workspace_bytes",
}


def session_options(parameters: Mapping[str, Any], gpu_id: int) -> tuple[Any, list[Any]]:
    """Build (SessionOptions, providers) from the model's ``[parameters]``; raises ConfigError naming the key."""
    import onnxruntime as ort

    unknown = sorted(set(parameters) - _KNOWN)
    if unknown:
        raise ConfigError(f"parameters: unknown ONNX Runtime option(s) {', '.join(unknown)}; valid: {', '.join(sorted(_KNOWN))}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _int(parameters, "intra_op_threads", 1)
    opts.inter_op_num_threads = _int(parameters, "inter_op_threads", 1)
    mode = parameters.get("execution_mode", "sequential")
    if mode not in ("sequential", "parallel"):
        raise ConfigError(f"parameters.execution_mode: expected sequential or parallel, got {mode!r}")
    opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    level = parameters.get("graph_optimization_level", "all")
    if level not in _OPT_LEVEL:
        raise ConfigError(f"parameters.graph_optimization_level: expected one of {', '.join(_OPT_LEVEL)}, got {level!r}")
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    names = parameters.get("execution_providers", ["cpu"])
    if not isinstance(names, list) or not names or any(n not in _PROVIDER for n in names):
        raise ConfigError(f"parameters.execution_providers: expected a list drawn from {', '.join(_PROVIDER)}, got {names!r}")
    available = set(ort.get_available_providers())
    providers: list[Any] = []
    for name in names:
        provider = _PROVIDER[name]
        if provider not in available:
            raise ConfigError(
                f"parameters.execution_providers: {name!r} needs {provider}, which this onnxruntime lacks "
                f"(available: {', '.join(sorted(available))}; install onnxruntime-gpu for cuda/tensorrt)"
            )
        if name == "cuda":
            providers.append((provider, {"device_id": gpu_id}))
        elif name == "tensorrt":
            trt: dict[str, Any] = {"device_id": gpu_id, "trt_fp16_enable": bool(parameters.get("tensorrt_fp16", False))}
            cache = parameters.get("tensorrt_engine_cache_path", "")
            if cache:
                trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache))
            workspace = _int(parameters, "tensorrt_workspace_bytes", 0)
            if workspace:
                trt["trt_max_workspace_size"] = workspace
            providers.append((provider, trt))
        else:
            providers.append(provider)
    return opts, providers


def _int(parameters: Mapping[str, Any], key: str, default: int) -> int:
    value = parameters.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"parameters.{key}: expected an integer >= 0, got {value!r}")
    return value


def _tensor(node: Any) -> TensorConfig:
    datatype = _DATATYPE.get(node.type)
    if datatype is None:
        raise ConfigError(f"tensor {node.name!r} has type {node.type}, which Surge cannot serve (sequences and maps are not tensors)")
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (node.shape or ()))
    return TensorConfig(name=node.name, datatype=datatype, dims=dims)


class OnnxRuntime:
    """An ONNX Runtime ``InferenceSession`` behind the Runtime interface."""

    def __init__(self) -> None:
        self._session: Any = None
        self._string_inputs: frozenset[str] = frozenset()

    def load(self, model_path: Path, config: ModelConfig, instance_index: int) -> Signature:
        """Create the session (blocking; seconds for large models)."""
        import onnxruntime as ort

        gpus = config.instance_group.gpus or (0,)
        opts, providers = session_options(config.parameters, gpus[instance_index % len(gpus)])
        self._session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        signature = Signature(
            inputs=tuple(_tensor(n) for n in self._session.get_inputs()),
            outputs=tuple(_tensor(n) for n in self._session.get_outputs()),
        )
        self._string_inputs = frozenset(t.name for t in signature.inputs if t.datatype == "BYTES")
        return signature

    def infer(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the session; BYTES inputs (bytes elements) are handed to ORT as UTF-8 strings."""
        feed = dict(inputs)
        for name in self._string_inputs & feed.keys():
            feed[name] = _as_str_array(name, feed[name])
        results = self._session.run(list(output_names), feed)
        return dict(zip(output_names, results, strict=True))

    def close(self) -> None:
        """Drop the session (ORT frees its memory with the object)."""
        self._session = None


def _as_str_array(name: str, array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.object_)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input {name!r}: element {i} is not valid UTF-8, which ONNX Runtime string tensors require") from None
        flat_out[i] = item
    return out
