"""ONNX Runtime backend: one ``InferenceSession`` per instance, configured from the model's ``[parameters]``.

Session options (all optional, under ``[parameters]`` in config.toml)::

    intra_op_threads = 1            # threads inside one operator (0: ORT's default, all cores)
    inter_op_threads = 1            # threads across operators (only with execution_mode = "parallel")
    execution_mode = "sequential"   # or "parallel"
    graph_optimization_level = "all"  # "disable" | "basic" | "extended" | "all"

Execution providers and their options (CUDA, TensorRT), and I/O binding, are described in
``onnx_providers.py``, which maps them from the config as plain data. The CUDA and TensorRT providers need
``onnxruntime-gpu``; asking for one that the installed onnxruntime does not have, or one that fails to start
(ORT would silently fall back to CPU), is a load error. GPU instances take their device id from
``instance_group.gpus`` (round-robin over instances). With a GPU provider active, each instance binds its
tensors with IOBinding: inputs are copied once into device buffers it reuses, outputs are allocated on the
device by ORT and copied back once (models with string tensors, which IOBinding cannot bind, use ``run``). ``InferenceSession.run`` and ``run_with_iobinding`` release the GIL, so
instances run in parallel in their executor threads.

Verified where: the CPU provider, and the IOBinding path forced onto the CPU (``io_binding = "on"``), run in
the test suite; the CUDA/TensorRT providers and the binding to "cuda" are written against ONNX Runtime's
documented API and run only in ``tests/gpu`` where onnxruntime-gpu and a GPU are present.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, TensorConfig
from ..errors import ConfigError, InvalidInput
from .base import Signature
from .onnx_providers import PROVIDER_KEYS, BindingPlan, binding_plan, check_active_providers, execution_providers

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
_OPT_LEVEL = ("disable", "basic", "extended", "all")
_SESSION_KEYS = frozenset({"intra_op_threads", "inter_op_threads", "execution_mode", "graph_optimization_level"})
_KNOWN = _SESSION_KEYS | PROVIDER_KEYS
#: Device input buffers kept per input (one per distinct shape, least recently used dropped first).
DEVICE_BUFFERS_PER_INPUT = 4


def session_options(config: ModelConfig, gpu_id: int) -> tuple[Any, list[Any]]:
    """Build (SessionOptions, providers) from the model's config; raises ConfigError naming the key."""
    import onnxruntime as ort

    parameters = config.parameters
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
    batching = config.dynamic_batching
    providers = execution_providers(
        parameters,
        kind=config.instance_group.kind,
        device_id=gpu_id,
        available=ort.get_available_providers(),
        inputs=config.inputs,
        max_batch_size=config.max_batch_size or 0,
        opt_batch_size=max(batching.preferred_batch_sizes, default=0) if batching else 0,
    )
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
        self._plan: BindingPlan | None = None
        self._binding: Any = None
        self._device_buffers: dict[str, collections.OrderedDict[tuple[Any, ...], Any]] = {}

    def load(self, model_path: Path, config: ModelConfig, instance_index: int) -> Signature:
        """Create the session (blocking; seconds for large models, minutes when TensorRT builds its engine)."""
        import onnxruntime as ort

        gpus = config.instance_group.gpus or (0,)
        gpu_id = gpus[instance_index % len(gpus)]
        opts, providers = session_options(config, gpu_id)
        self._session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        check_active_providers(providers, self._session.get_providers())
        signature = Signature(
            inputs=tuple(_tensor(n) for n in self._session.get_inputs()),
            outputs=tuple(_tensor(n) for n in self._session.get_outputs()),
        )
        self._string_inputs = frozenset(t.name for t in signature.inputs if t.datatype == "BYTES")
        mode = config.parameters.get("io_binding", "auto")
        self._plan = binding_plan(mode, self._session.get_providers(), gpu_id, signature.inputs, signature.outputs)
        if self._plan is not None:
            self._binding = self._session.io_binding()
            self._device_buffers = {t.name: collections.OrderedDict() for t in signature.inputs}
        return signature

    def infer(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the session; BYTES inputs (bytes elements) are handed to ORT as UTF-8 strings."""
        feed = dict(inputs)
        for name in self._string_inputs & feed.keys():
            feed[name] = _as_str_array(name, feed[name])
        if self._plan is not None:
            return self._infer_bound(self._plan, feed, output_names)
        results = self._session.run(list(output_names), feed)
        return dict(zip(output_names, results, strict=True))

    def _infer_bound(self, plan: BindingPlan, feed: dict[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run through IOBinding: one host-to-device copy per input, one device-to-host copy per output."""
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in feed.items():
            if name in self._device_buffers:
                binding.bind_ortvalue_input(name, self._device_input(plan, name, array))
            else:  # a name the model lacks: ORT's error names it
                binding.bind_cpu_input(name, array)
        for name in output_names:
            binding.bind_output(name, plan.device_type, plan.device_id)
        self._session.run_with_iobinding(binding)
        results = binding.copy_outputs_to_cpu()
        return dict(zip(output_names, results, strict=True))

    def _device_input(self, plan: BindingPlan, name: str, array: np.ndarray) -> Any:
        """The instance's device buffer for this input's shape and dtype, holding a copy of ``array``.

        Buffers are kept per distinct (shape, dtype), at most ``DEVICE_BUFFERS_PER_INPUT`` per input, so a
        steady stream of batches reuses device memory instead of allocating per request.
        """
        from onnxruntime import OrtValue

        buffers = self._device_buffers[name]
        key = (array.shape, array.dtype.str)
        value = buffers.get(key)
        if value is None:
            value = OrtValue.ortvalue_from_shape_and_type(list(array.shape), array.dtype.type, plan.device_type, plan.device_id)
            buffers[key] = value
            if len(buffers) > DEVICE_BUFFERS_PER_INPUT:
                buffers.popitem(last=False)
        else:
            buffers.move_to_end(key)
        value.update_inplace(array)  # the one host-to-device copy (update_inplace makes the array contiguous)
        return value

    def close(self) -> None:
        """Drop the session and its device buffers (ORT frees their memory with the objects)."""
        self._binding = None
        self._device_buffers = {}
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
