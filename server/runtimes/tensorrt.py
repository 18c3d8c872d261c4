"""Native TensorRT backend (``backend = "tensorrt"``, ``surge[tensorrt]``): a serialized engine, ``model.plan``.

Per model version and GPU the engine is deserialized once and shared; each instance gets its own execution
context, its own CUDA stream and its own buffers, and takes the GPU from ``instance_group.gpus``
(round-robin). Tensors are bound by name with the TensorRT 10 API (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); the signature is read
from the engine. Optimization profiles are split between the instances sharing a GPU and a batch runs with
the tightest profile that fits it (``tensorrt_plan.py``, which also derives the model's largest batch from
the profiles).

One batch: inputs are copied into the instance's pinned host staging buffers, then asynchronously to its
device buffers on its stream; the engine is enqueued on the same stream; outputs are copied back to pinned
memory asynchronously; the instance's executor thread waits for the stream (never the event loop), then
copies the outputs out of the staging buffers (they are reused by the next batch).

Memory comes from PyTorch (``torch.empty`` on the device and ``pin_memory=True`` on the host) rather than
cuda-python: PyTorch is on every GPU machine we use and in ``Dockerfile.gpu``, its caching allocator and
streams are what the PyTorch runtime uses too, and buffers are plain bytes, so no dtype needs to exist in
torch (BF16 travels as bytes). Buffers are sized once, at load, for the largest shapes the instance's
profiles admit.

Verified where: the pure logic (``tensorrt_plan.py``) runs in the unit tests, and ``DeviceStaging`` (the
torch part) in ``tests/gpu`` on a CUDA machine. The TensorRT calls are written against TensorRT 10's
documented Python API and are NOT executed anywhere we can run: TensorRT is installable on none of our
machines. ``tests/gpu/test_tensorrt.py`` runs them wherever ``tensorrt`` imports and a GPU is present.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from surge.protos.datatypes import numpy_dtype

from ..config import ModelConfig
from ..errors import ConfigError
from .base import Signature
from .tensorrt_plan import IOTensor, Profile, assign_profiles, batch_coverage, buffer_shapes, engine_signature, select_profile

__all__ = ["DeviceStaging", "TensorRTRuntime"]

log = logging.getLogger("surge.tensorrt")


class DeviceStaging:
    """One tensor's byte buffers: pinned host staging and device memory, both ``nbytes`` long (torch-allocated).

    Call ``upload``/``start_download`` inside ``torch.cuda.stream(stream)`` so the copies go on that stream,
    and ``read`` only after the stream has been synchronized.
    """

    def __init__(self, torch: Any, nbytes: int, device: int) -> None:
        self._host = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
        self._host_np: np.ndarray = self._host.numpy()
        self._device = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=f"cuda:{device}")
        self.nbytes = nbytes

    @property
    def address(self) -> int:
        """The device buffer's address (what ``set_tensor_address`` takes; torch allocations are 512-byte aligned)."""
        return int(self._device.data_ptr())

    def upload(self, array: np.ndarray) -> None:
        """Copy ``array`` (any layout) into the pinned buffer, then enqueue the host-to-device copy."""
        n = array.nbytes
        if n > self.nbytes:
            raise ValueError(f"{n} bytes do not fit the {self.nbytes}-byte buffer")
        np.copyto(self._host_np[:n].view(array.dtype).reshape(array.shape), array, casting="no")
        self._device[:n].copy_(self._host[:n], non_blocking=True)

    def start_download(self, nbytes: int) -> None:
        """Enqueue the device-to-host copy of the first ``nbytes``."""
        self._host[:nbytes].copy_(self._device[:nbytes], non_blocking=True)

    def read(self, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
        """A new array with the downloaded contents (after the stream is synchronized)."""
        n = math.prod(shape) * dtype.itemsize
        return self._host_np[:n].view(dtype).reshape(tuple(shape)).copy()


class _EngineCache:
    """Deserialized engines shared by the instances of one model file on one GPU, reference-counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], list[Any]] = {}  # key -> [runtime, engine, references]

    def acquire(self, trt: Any, path: Path, device: int) -> tuple[tuple[Any, ...], Any]:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, device)
        with self._lock:  # instances load in parallel threads: deserialize once
            entry = self._entries.get(key)
            if entry is None:
                runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
                engine = runtime.deserialize_cuda_engine(path.read_bytes())
                if engine is None:
                    raise ConfigError(
                        f"{path.name} is not an engine TensorRT {trt.__version__} can load (engines are tied to the TensorRT "
                        "version and GPU that built them: rebuild it with `surge build-trt` on this machine)"
                    )
                entry = self._entries[key] = [runtime, engine, 0]
            entry[2] += 1
            return key, entry[1]

    def release(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry[2] -= 1
                if entry[2] <= 0:
                    del self._entries[key]


_ENGINES = _EngineCache()


class TensorRTRuntime:
    """A TensorRT execution context behind the Runtime interface (one per instance)."""

    def __init__(self) -> None:
        self._torch: Any = None
        self._engine_key: tuple[Any, ...] | None = None
        self._context: Any = None
        self._stream: Any = None
        self._device = 0
        self._profiles: list[Profile] = []
        self._owned: tuple[int, ...] = (0,)
        self._current: int | None = None
        self._dynamic = False
        self._dynamic_inputs: frozenset[str] = frozenset()
        self._buffers: dict[str, DeviceStaging] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._output_names: tuple[str, ...] = ()

    def load(self, model_path: Path, config: ModelConfig, instance_index: int) -> Signature:
        """Deserialize (or share) the engine, create this instance's context, stream and buffers."""
        try:
            import tensorrt as trt
            import torch
        except ModuleNotFoundError as exc:
            raise ConfigError(f"the tensorrt backend needs the {exc.name} package: pip install 'surge[tensorrt,torch]' on a machine with an NVIDIA GPU") from None
        if not torch.cuda.is_available():
            raise ConfigError("the tensorrt backend needs a CUDA GPU, and torch sees none")
        gpus = config.instance_group.gpus or (0,)
        devices = [gpus[i % len(gpus)] for i in range(config.instance_group.count)]
        self._torch, self._device = torch, devices[instance_index]
        torch.cuda.set_device(self._device)  # this executor thread runs every later call of the instance
        self._engine_key, engine = _ENGINES.acquire(trt, model_path, self._device)
        tensors = [_describe(trt, engine, engine.get_tensor_name(i)) for i in range(engine.num_io_tensors)]
        inputs, outputs = engine_signature(tensors)
        self._output_names = tuple(t.name for t in outputs)
        self._dtypes = {t.name: numpy_dtype(t.datatype) for t in (*inputs, *outputs)}
        self._dynamic = any(-1 in t.dims for t in inputs)
        dynamic_inputs = [t.name for t in inputs if -1 in t.dims]
        self._dynamic_inputs = frozenset(dynamic_inputs)
        self._profiles = [
            Profile(p, {name: _profile_shapes(engine.get_tensor_profile_shape(name, p)) for name in dynamic_inputs})
            for p in range(engine.num_optimization_profiles)
        ]
        count = engine.num_optimization_profiles
        self._owned = assign_profiles(count, self._dynamic, devices, instance_index)
        max_rows = None
        if self._dynamic and all(t.dims and t.dims[0] == -1 for t in (*inputs, *outputs)):
            # the model's largest batch is what every instance covers (each owns different profiles)
            max_rows = min(batch_coverage(self._profiles, assign_profiles(count, True, devices, i)) for i in range(len(devices)))
            if max_rows == 0:
                offered = "; ".join(p.describe() for p in self._profiles)
                raise ConfigError(f"an instance of this engine has no optimization profile for a batch of 1 row ({offered})")
        self._context = engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self._device)
        self._allocate(buffer_shapes(self._profiles, self._owned, inputs))
        return Signature(inputs=inputs, outputs=outputs, max_batch_size=max_rows)

    def _allocate(self, input_shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Size every buffer for the largest shapes the owned profiles admit (outputs: as the engine infers them)."""
        largest: dict[str, tuple[int, ...]] = dict(input_shapes)
        for p in self._owned if self._dynamic else ():
            self._use_profile(p)
            for name in self._dynamic_inputs:
                self._set_input_shape(name, self._profiles[p].shapes[name][2])
            for name in self._output_names:
                shape = self._output_shape(name)
                largest[name] = tuple(max(a, b) for a, b in zip(largest.get(name, shape), shape))
        if not self._dynamic:  # static engine: the output shapes are the engine's own
            largest.update({name: self._output_shape(name) for name in self._output_names})
        self._stream.synchronize()
        self._buffers = {name: DeviceStaging(self._torch, math.prod(shape) * self._dtypes[name].itemsize, self._device) for name, shape in largest.items()}

    def infer(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one batch on the instance's stream; blocks the calling (executor) thread until it is done."""
        torch, context = self._torch, self._context
        shapes = {name: tuple(array.shape) for name, array in inputs.items()}
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            if self._dynamic:
                self._use_profile(select_profile(self._profiles, self._owned, shapes, self._current))
            for name, array in inputs.items():
                buffer = self._buffers[name]
                buffer.upload(np.asarray(array, dtype=self._dtypes[name]))
                if name in self._dynamic_inputs:
                    self._set_input_shape(name, shapes[name])
                context.set_tensor_address(name, buffer.address)
            out_shapes = {name: self._output_shape(name) for name in self._output_names}
            for name in self._output_names:  # every output needs an address, requested or not
                context.set_tensor_address(name, self._buffers[name].address)
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            for name in output_names:
                self._buffers[name].start_download(math.prod(out_shapes[name]) * self._dtypes[name].itemsize)
        self._stream.synchronize()
        return {name: self._buffers[name].read(self._dtypes[name], out_shapes[name]) for name in output_names}

    def _use_profile(self, index: int) -> None:
        if index != self._current:
            if not self._context.set_optimization_profile_async(index, self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT refused optimization profile {index}")
            self._current = index

    def _set_input_shape(self, name: str, shape: Sequence[int]) -> None:
        if not self._context.set_input_shape(name, tuple(shape)):
            raise RuntimeError(f"TensorRT refused shape {list(shape)} for input {name!r} in profile {self._current}")

    def _output_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self._context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise ConfigError(f"engine output {name!r} has a data-dependent shape {list(shape)}; Surge needs output shapes known from input shapes")
        return shape

    def close(self) -> None:
        """Free the context, stream and buffers; the shared engine goes with its last instance."""
        self._context = None
        self._buffers = {}
        self._stream = None
        if self._engine_key is not None:
            _ENGINES.release(self._engine_key)
            self._engine_key = None


def _profile_shapes(dims: Sequence[Any]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    low, opt, high = (tuple(int(d) for d in shape) for shape in dims)  # get_tensor_profile_shape: [min, opt, max]
    return low, opt, high


def _describe(trt: Any, engine: Any, name: str) -> IOTensor:
    return IOTensor(
        name=name,
        is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
        dtype=engine.get_tensor_dtype(name).name,
        shape=tuple(engine.get_tensor_shape(name)),
        on_host=engine.get_tensor_location(name) == trt.TensorLocation.HOST,
        shape_tensor=bool(engine.is_shape_inference_io(name)),
    )
