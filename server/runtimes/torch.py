"""PyTorch backend: TorchScript archives and ``torch.export`` programs, on CPU or a chosen GPU, with CUDA graphs.

Model files (``default_model_filename`` picks one; the extension decides how it is read):

- ``model.pt``  TorchScript (``torch.jit.load``): no Python code runs at load.
- ``model.pt2`` a ``torch.export`` program (``torch.export.load(...).module()``).
- any other file is refused unless ``[parameters] allow_pickle = true``, which permits ``torch.load`` of a
  whole pickled module (arbitrary code execution: only for files you trust).

Inputs are passed positionally in the config's ``[[input]]`` order; a tensor, tuple/list of tensors, or
dict of tensors comes back and maps onto ``[[output]]`` (by position, or by name for a dict). TorchScript
files carry no tensor names, so the config must declare inputs and outputs.

Options (``[parameters]``)::

    precision = "fp32"        # "fp16" | "bf16": the module and its floating inputs run in that type
    cuda_graphs = true        # GPU instances: capture one CUDA graph per batch-size bucket at load
    graph_batch_sizes = []    # the buckets; default: the preferred batch sizes, else powers of two up to
                              # max_batch_size (max_batch_size itself always included)
    sequence_buckets = []     # for inputs whose last dimension is variable (token ids, masks): the longest one
                              # is the longest length accepted (longer -> INVALID_ARGUMENT); on a GPU each batch
                              # is zero-padded to the next bucket and graphs are captured per (batch, length)
    intra_op_threads = 0      # CPU: torch.set_num_threads (process-wide), 0 = leave torch's default
    allow_pickle = false

Placement: ``instance_group.kind = "gpu"`` puts instance i on ``cuda:gpus[i % len(gpus)]`` (``auto``: the GPU
when CUDA is available, else CPU). A GPU instance owns a CUDA stream and pinned host buffers reused
across batches; inputs go host->device and outputs device->host asynchronously on that stream, and the
instance's executor thread (never the event loop) waits for the stream. With CUDA graphs a batch is
padded up to the nearest captured bucket (padding rows zeroed), the graph is replayed, and the padding is
cut from the outputs; with ``sequence_buckets`` the variable last dimension is padded with zeros the same way
(the model must ignore zero padding, e.g. through an attention mask: zoo.py's BERT does). A batch of host arrays on a graph instance is staged through pinned buffers per bucket
(rows written and padding zeroed with numpy; whole-bucket copies in and out), so it costs four torch calls,
each of which lets go of the GIL (see ``_stage``); inputs already on the device (a GPU pipeline's) and outputs of
variable shape take the general path. Warm-up, including capture, finishes before the version reports READY.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..config import ModelConfig, TensorConfig
from ..errors import ConfigError, InvalidInput
from .base import Signature

__all__ = ["TorchRuntime", "bucket_for", "graph_buckets", "pad_length", "pad_rows"]

#: torch.export.load (and torch.jit.load) keep global state while deserialising, and a CUDA graph capture
#: must not overlap another capture: instances load and capture one at a time, process-wide.
_LOAD_LOCK = threading.Lock()
_KNOWN = {"precision", "cuda_graphs", "graph_batch_sizes", "intra_op_threads", "allow_pickle", "sequence_buckets"}
_PRECISIONS = ("fp32", "fp16", "bf16")


def graph_buckets(max_batch_size: int, preferred: Sequence[int] = (), explicit: Sequence[int] = ()) -> list[int]:
    """The batch sizes to capture CUDA graphs for: explicit ones, else preferred, else powers of two; max always in."""
    if max_batch_size <= 0:
        return [1]
    chosen = set(explicit) or set(preferred) or {1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size}
    bad = sorted(b for b in chosen if not 1 <= b <= max_batch_size)
    if bad:
        raise ConfigError(f"parameters.graph_batch_sizes: {bad} are outside 1..{max_batch_size} (max_batch_size)")
    return sorted(chosen | {max_batch_size})


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``rows`` rows (buckets sorted ascending; the last is max_batch_size)."""
    index = bisect.bisect_left(buckets, rows)
    if index == len(buckets):
        raise InvalidInput(f"batch of {rows} rows exceeds the largest captured batch size {buckets[-1]}")
    return buckets[index]


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``rows`` (returned unchanged when it has them already)."""
    if array.shape[0] == rows:
        return array
    padded = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    padded[: array.shape[0]] = array
    return padded


def pad_length(array: np.ndarray, length: int) -> np.ndarray:
    """``array`` with zeros appended along its last axis up to ``length`` (unchanged when it has that length)."""
    if array.shape[-1] == length:
        return array
    padded = np.zeros((*array.shape[:-1], length), dtype=array.dtype)
    padded[..., : array.shape[-1]] = array
    return padded


def _options(parameters: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(parameters) - _KNOWN)
    if unknown:
        raise ConfigError(f"parameters: unknown PyTorch option(s) {', '.join(unknown)}; valid: {', '.join(sorted(_KNOWN))}")
    precision = parameters.get("precision", "fp32")
    if precision not in _PRECISIONS:
        raise ConfigError(f"parameters.precision: expected one of {', '.join(_PRECISIONS)}, got {precision!r}")
    sizes = parameters.get("graph_batch_sizes", [])
    if not isinstance(sizes, list) or any(isinstance(s, bool) or not isinstance(s, int) for s in sizes):
        raise ConfigError(f"parameters.graph_batch_sizes: expected a list of integers, got {sizes!r}")
    lengths = parameters.get("sequence_buckets", [])
    if not isinstance(lengths, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in lengths):
        raise ConfigError(f"parameters.sequence_buckets: expected a list of integers >= 1, got {lengths!r}")
    threads = parameters.get("intra_op_threads", 0)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"parameters.intra_op_threads: expected an integer >= 0, got {threads!r}")
    for key in ("cuda_graphs", "allow_pickle"):
        if not isinstance(parameters.get(key, False), bool):
            raise ConfigError(f"parameters.{key}: expected true or false, got {parameters[key]!r}")
    return {
        "precision": precision,
        "cuda_graphs": parameters.get("cuda_graphs", True),
        "graph_batch_sizes": sizes,
        "intra_op_threads": threads,
        "allow_pickle": parameters.get("allow_pickle", False),
        "sequence_buckets": sorted(set(lengths)),
    }


class TorchRuntime:
    """A PyTorch module behind the Runtime interface (one per instance, driven from its executor thread)."""

    def __init__(self) -> None:
        self._module: Any = None
        self._device: Any = None
        self._stream: Any = None
        self._inputs: tuple[TensorConfig, ...] = ()
        self._outputs: tuple[TensorConfig, ...] = ()
        self._compute_dtype: Any = None
        #: (batch bucket, length bucket or 0) -> (graph, static inputs, static outputs)
        self._graphs: dict[tuple[int, int], tuple[Any, list[Any], list[Any]]] = {}
        self._buckets: list[int] = []
        self._lengths: list[int] = []  # sequence_buckets
        self._sequences: frozenset[str] = frozenset()  # the inputs they pad (variable last dimension)
        self._pinned: dict[str, Any] = {}
        #: bucket -> (pinned input views, pinned output views), each bucket rows long: whole-bucket copies
        self._staged: dict[int, tuple[list[Any], list[Any]]] = {}
        self._host_in: list[np.ndarray] = []  # numpy views of the pinned input buffers (max rows)
        self._host_out: list[np.ndarray] = []  # numpy views of the pinned output buffers (max rows)
        self._batched = False

    # -- load ------------------------------------------------------------------------------------

    def load(self, model_path: Path, config: ModelConfig, instance_index: int) -> Signature:
        """Read the module, place it, and (GPU) capture CUDA graphs; blocking, in the instance's thread."""
        import torch

        opts = _options(config.parameters)
        if not config.inputs or not config.outputs:
            raise ConfigError("a torch model must declare its [[input]] and [[output]] tensors in config.toml (TorchScript files carry no names)")
        self._device = _device(torch, config, instance_index)
        if self._device.type == "cpu" and opts["intra_op_threads"]:
            torch.set_num_threads(opts["intra_op_threads"])
        with _LOAD_LOCK:
            module = _read_module(torch, model_path, self._device, opts["allow_pickle"])
        self._compute_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[opts["precision"]]
        if self._compute_dtype is not None:
            module = module.to(self._compute_dtype)
        self._module = module
        self._inputs, self._outputs = config.inputs, config.outputs
        self._batched = bool(config.max_batch_size)
        self._lengths = opts["sequence_buckets"]
        if self._lengths:
            self._sequences = frozenset(t.name for t in config.inputs if t.dims and t.dims[-1] == -1)
            if not self._sequences or any(d < 0 for t in config.inputs for d in (t.dims[:-1] if t.name in self._sequences else t.dims)):
                raise ConfigError("parameters.sequence_buckets: needs inputs whose last dimension, and only that one, is variable (-1)")
        batch = (-1,) if self._batched else ()
        signature = Signature(
            inputs=tuple(TensorConfig(name=t.name, datatype=t.datatype, dims=batch + t.dims, optional=t.optional) for t in config.inputs),
            outputs=tuple(TensorConfig(name=t.name, datatype=t.datatype, dims=batch + t.dims) for t in config.outputs),
        )
        if self._device.type == "cuda":
            self._stream = torch.cuda.Stream(device=self._device)
            fixed = all(d > 0 for t in config.inputs for d in self._static_dims(t, 1)) and all(t.datatype not in ("BYTES", "BF16") for t in config.inputs)
            max_rows = config.max_batch_size or 1
            if fixed and not self._lengths:
                self._pinned = {
                    t.name: torch.empty((max_rows, *t.dims), dtype=_torch_dtype(torch, t.datatype), pin_memory=True) for t in config.inputs
                }
            if opts["cuda_graphs"] and fixed:
                preferred = config.dynamic_batching.preferred_batch_sizes if config.dynamic_batching else ()
                self._buckets = graph_buckets(config.max_batch_size or 0, preferred, opts["graph_batch_sizes"])
                with _LOAD_LOCK:
                    for bucket in self._buckets:
                        for length in self._lengths or [0]:
                            self._graphs[(bucket, length)] = self._capture(torch, bucket, length)
                if not self._lengths:
                    self._stage(torch, max_rows)
        return signature

    def _static_dims(self, tensor: TensorConfig, length: int) -> tuple[int, ...]:
        """An input's dims with the sequence length made ``length`` (sequence inputs only)."""
        return (*tensor.dims[:-1], length) if tensor.name in self._sequences else tensor.dims

    def _fit_lengths(self, inputs: Mapping[str, np.ndarray], pad: bool) -> tuple[Mapping[str, np.ndarray], int]:
        """Check the sequence inputs' length against the largest bucket; with ``pad``, zero-pad them to their bucket."""
        length = max(inputs[name].shape[-1] for name in self._sequences)
        if length > self._lengths[-1]:
            raise InvalidInput(f"input(s) {sorted(self._sequences)}: length {length} exceeds the longest accepted, {self._lengths[-1]} (parameters.sequence_buckets)")
        if not pad:
            return inputs, 0
        bucket = self._lengths[bisect.bisect_left(self._lengths, length)]
        return {n: pad_length(a, bucket) if n in self._sequences else a for n, a in inputs.items()}, bucket

    def _stage(self, torch: Any, max_rows: int) -> None:
        """Pinned output buffers and per-bucket views, so that a batch of host arrays costs four torch calls (copy
        in, replay, copy out, synchronise): each torch call lets go of the GIL, and getting it back behind a busy
        event loop can take a switch interval. Only for batched models whose outputs have fixed shapes that the
        graphs produce exactly (anything else keeps the general path)."""
        if not self._batched or any(t.datatype in ("BYTES", "BF16") or any(d <= 0 for d in t.dims) for t in self._outputs):
            return
        if any(tuple(o.shape) != (bucket, *t.dims) for (bucket, _), (_, _, outs) in self._graphs.items() for o, t in zip(outs, self._outputs)):
            return
        pinned_in = [self._pinned[t.name] for t in self._inputs]
        pinned_out = [torch.empty((max_rows, *t.dims), dtype=_torch_dtype(torch, t.datatype), pin_memory=True) for t in self._outputs]
        self._host_in = [b.numpy() for b in pinned_in]
        self._host_out = [b.numpy() for b in pinned_out]
        self._staged = {bucket: ([b[:bucket] for b in pinned_in], [b[:bucket] for b in pinned_out]) for bucket, _ in self._graphs}

    def _capture(self, torch: Any, rows: int, length: int) -> tuple[Any, list[Any], list[Any]]:
        static = [
            torch.zeros(((rows,) if self._batched else ()) + self._static_dims(t, length), dtype=_torch_dtype(torch, t.datatype), device=self._device)
            for t in self._inputs
        ]
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            for _ in range(3):  # warm-up on the side stream before capture (cuDNN/cuBLAS choose their kernels)
                self._forward(torch, static)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads (instances of other models, serving) may keep using CUDA meanwhile
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                outputs = self._forward(torch, static)
        self._stream.synchronize()
        return graph, static, outputs

    # -- execution -------------------------------------------------------------------------------

    def _forward(self, torch: Any, tensors: list[Any]) -> list[Any]:
        args = [t.to(self._compute_dtype) if self._compute_dtype is not None and t.is_floating_point() else t for t in tensors]
        result = self._module(*args)
        if isinstance(result, Mapping):
            missing = [t.name for t in self._outputs if t.name not in result]
            if missing:
                raise RuntimeError(f"the module returned a dict without output(s) {missing}")
            values = [result[t.name] for t in self._outputs]
        elif isinstance(result, tuple | list):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(self._outputs):
            raise RuntimeError(f"the module returned {len(values)} tensors but config.toml declares {len(self._outputs)} outputs")
        return [
            v.to(_torch_dtype(torch, t.datatype)) if v.dtype != _torch_dtype(torch, t.datatype) else v for v, t in zip(values, self._outputs)
        ]

    def infer(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one batch (in the instance's executor thread; on a GPU, waits for the instance's stream)."""
        import torch

        with torch.inference_mode():
            if self._device.type == "cpu":
                if self._lengths:
                    self._fit_lengths(inputs, pad=False)
                tensors = [_to_torch(torch, inputs[t.name]) for t in self._inputs]
                outputs = self._forward(torch, tensors)
                return {t.name: _to_numpy(torch, o) for t, o in zip(self._outputs, outputs) if t.name in output_names}
            return self._infer_cuda(torch, inputs, output_names)

    def _infer_cuda(self, torch: Any, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        rows = next(iter(inputs.values())).shape[0] if self._batched and inputs else 1
        length = 0
        if self._lengths:
            inputs, length = self._fit_lengths(inputs, pad=True)
        if self._staged and not any(isinstance(a, torch.Tensor) for a in inputs.values()):
            return self._infer_staged(torch, inputs, output_names, rows)
        with torch.cuda.stream(self._stream):
            staged = []
            for t in self._inputs:
                array = inputs[t.name]
                if isinstance(array, torch.Tensor):  # already on this device and stream (a GPU pipeline's output)
                    staged.append(array)
                    continue
                pinned = self._pinned.get(t.name)
                if pinned is not None:
                    host = pinned[:rows] if self._batched else pinned[0]
                    host.numpy()[...] = array  # one host copy into page-locked memory
                else:
                    host = _to_torch(torch, array)
                staged.append(host)
            if self._graphs:
                bucket = bucket_for(rows, self._buckets) if self._batched else self._buckets[0]
                graph, static, static_out = self._graphs[(bucket, length)]
                for dst, src in zip(static, staged):
                    target = dst[:rows] if self._batched else dst
                    target.copy_(src, non_blocking=True)
                    if self._batched and rows < bucket:
                        dst[rows:].zero_()
                graph.replay()
                results = [o[:rows] if self._batched else o for o in static_out]
            else:
                device_inputs = [h.to(self._device, non_blocking=True) for h in staged]
                results = self._forward(torch, device_inputs)
            wanted = [(t.name, r) for t, r in zip(self._outputs, results) if t.name in output_names]
            host_outputs = [(name, r.to("cpu", non_blocking=True)) for name, r in wanted]
        self._stream.synchronize()  # this instance's thread waits; the event loop never does
        return {name: _to_numpy(torch, h) for name, h in host_outputs}

    def _infer_staged(self, torch: Any, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], rows: int) -> dict[str, np.ndarray]:
        """Host arrays through a CUDA graph: rows into the pinned buffers (padding zeroed) with numpy, the whole bucket
        in, replay, the whole bucket out, synchronise, the rows copied out of the pinned buffer (reused next batch)."""
        bucket = bucket_for(rows, self._buckets)
        graph, static, static_out = self._graphs[(bucket, 0)]
        host_in, host_out = self._staged[bucket]
        for t, view in zip(self._inputs, self._host_in):
            view[:rows] = inputs[t.name]
            if rows < bucket:
                view[rows:bucket] = 0
        with torch.cuda.stream(self._stream):
            for dst, src in zip(static, host_in):
                dst.copy_(src, non_blocking=True)
            graph.replay()
            for dst, src in zip(host_out, static_out):
                dst.copy_(src, non_blocking=True)
        self._stream.synchronize()  # this instance's thread waits; the event loop never does
        return {t.name: view[:rows].copy() for t, view in zip(self._outputs, self._host_out) if t.name in output_names}

    def close(self) -> None:
        """Drop the module, graphs and buffers."""
        self._graphs.clear()
        self._staged.clear()
        self._pinned.clear()
        self._module = None


def _device(torch: Any, config: ModelConfig, instance_index: int) -> Any:
    kind = config.instance_group.kind
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("instance_group.kind = \"gpu\" but torch sees no CUDA device here (use kind = \"cpu\" or \"auto\")")
    gpus = config.instance_group.gpus or (0,)
    gpu = gpus[instance_index % len(gpus)]
    if gpu >= torch.cuda.device_count():
        raise ConfigError(f"instance_group.gpus: GPU {gpu} does not exist (this machine has {torch.cuda.device_count()})")
    return torch.device("cuda", gpu)


def _read_module(torch: Any, path: Path, device: Any, allow_pickle: bool) -> Any:
    if path.suffix == ".pt":
        module = torch.jit.load(str(path), map_location=device)
    elif path.suffix == ".pt2":
        return torch.export.load(str(path)).module().to(device)  # exported graphs are in inference form already
    elif allow_pickle:
        module = torch.load(str(path), map_location=device, weights_only=False)
    else:
        raise ConfigError(
            f"{path.name}: torch models are TorchScript (.pt) or torch.export programs (.pt2); loading a pickled module "
            "runs arbitrary code, so it needs [parameters] allow_pickle = true"
        )
    if hasattr(module, "eval"):
        module.eval()
    return module


def _torch_dtype(torch: Any, datatype: str) -> Any:
    dtypes = {
        "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8, "INT16": torch.int16, "INT32": torch.int32,
        "INT64": torch.int64, "FP16": torch.float16, "FP32": torch.float32, "FP64": torch.float64, "BF16": torch.bfloat16,
        "UINT16": torch.uint16, "UINT32": torch.uint32, "UINT64": torch.uint64,
    }
    if datatype not in dtypes:
        raise ConfigError(f"datatype {datatype} has no torch tensor type (BYTES cannot feed a torch model)")
    return dtypes[datatype]


def _to_torch(torch: Any, array: np.ndarray) -> Any:
    if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16 is not a numpy type torch knows: reinterpret the bits
        return torch.from_numpy(np.array(array.view(np.uint16))).view(torch.bfloat16)
    # torch.from_numpy warns on read-only arrays (request bytes are read-only): copy only then.
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _to_numpy(torch: Any, tensor: Any) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        from ml_dtypes import bfloat16

        return cast(np.ndarray, tensor.view(torch.int16).numpy().view(bfloat16))
    return cast(np.ndarray, tensor.numpy())
