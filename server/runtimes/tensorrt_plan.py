"""Native TensorRT, the pure part: engine I/O to a signature, optimization profiles to instances and batches.

TensorRT cannot be installed on our development machines, so everything that decides (which tensors, which
datatypes, which profile an instance owns, which profile a batch runs with, how large buffers must be, what
``surge build-trt`` asks the builder for) lives here as functions over plain data, unit-tested without it.
``tensorrt.py`` reads the engine into these types and does what they say.

Optimization profiles: an engine with dynamic input shapes carries one or more profiles, each a [min, max]
range (and an opt point) per input dimension. TensorRT requires each execution context in concurrent use to
have its own profile, so the instances sharing a GPU split the profiles between them (instance r of k owns
profiles r, r+k, r+2k, ...); a batch runs with the tightest owned profile whose ranges contain its shapes.
The model's largest batch is the largest row count every instance covers without a gap from 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import TensorConfig
from ..errors import ConfigError, InvalidInput

__all__ = [
    "TRT_DATATYPES",
    "IOTensor",
    "Profile",
    "assign_profiles",
    "batch_coverage",
    "build_profile_shapes",
    "buffer_shapes",
    "engine_signature",
    "select_profile",
]

Shape = tuple[int, ...]

#: TensorRT ``DataType`` member names -> Open Inference Protocol datatypes (FP8, FP4, INT4 have no wire type).
TRT_DATATYPES = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "BF16": "BF16",
    "INT8": "INT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "UINT8": "UINT8",
}


@dataclass(frozen=True, slots=True)
class IOTensor:
    """One I/O tensor of an engine, as ``ICudaEngine`` describes it by name."""

    name: str
    is_input: bool
    """``get_tensor_mode(name) == TensorIOMode.INPUT``."""
    dtype: str
    """``get_tensor_dtype(name).name``: "FLOAT", "HALF", ..."""
    shape: Shape
    """``get_tensor_shape(name)``: -1 for a dimension that is dynamic."""
    on_host: bool = False
    """``get_tensor_location(name) == TensorLocation.HOST``."""
    shape_tensor: bool = False
    """``is_shape_inference_io(name)``: a shape tensor, whose values (not data) set shapes."""


@dataclass(frozen=True, slots=True)
class Profile:
    """One optimization profile: per input, the (min, opt, max) shapes from ``get_tensor_profile_shape``."""

    index: int
    shapes: Mapping[str, tuple[Shape, Shape, Shape]]

    def batch_range(self) -> tuple[int, int]:
        """The leading-dimension rows every input accepts in this profile: (lowest, highest)."""
        lows = [s[0][0] for s in self.shapes.values() if s[0]]
        highs = [s[2][0] for s in self.shapes.values() if s[2]]
        return (max(lows, default=1), min(highs, default=0))

    def accepts(self, shapes: Mapping[str, Shape]) -> bool:
        """Whether every given input shape lies within this profile's [min, max] dimension by dimension."""
        for name, shape in shapes.items():
            bounds = self.shapes.get(name)
            if bounds is None:
                continue  # a static input: the engine checks its shape
            low, _, high = bounds
            if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
                return False
        return True

    def describe(self) -> str:
        """``profile 0: x [1, 16]..[64, 16]`` for error messages."""
        ranges = ", ".join(f"{name} {list(low)}..{list(high)}" for name, (low, _, high) in self.shapes.items())
        return f"profile {self.index}: {ranges or 'static shapes'}"


def engine_signature(tensors: Sequence[IOTensor]) -> tuple[tuple[TensorConfig, ...], tuple[TensorConfig, ...]]:
    """(inputs, outputs) as TensorConfig (full shapes, -1 dynamic); raises ConfigError naming an unservable tensor."""
    inputs: list[TensorConfig] = []
    outputs: list[TensorConfig] = []
    for t in tensors:
        kind = "input" if t.is_input else "output"
        if t.shape_tensor:
            raise ConfigError(f"engine {kind} {t.name!r} is a shape tensor; Surge serves data tensors only")
        if t.on_host:
            raise ConfigError(f"engine {kind} {t.name!r} lives in host memory (TensorLocation.HOST); Surge binds device tensors only")
        datatype = TRT_DATATYPES.get(t.dtype)
        if datatype is None:
            raise ConfigError(f"engine {kind} {t.name!r} has TensorRT type {t.dtype}, which has no protocol datatype (supported: {', '.join(TRT_DATATYPES)})")
        if any(d < -1 or d == 0 for d in t.shape):
            raise ConfigError(f"engine {kind} {t.name!r} has shape {list(t.shape)}, which Surge cannot serve")
        (inputs if t.is_input else outputs).append(TensorConfig(name=t.name, datatype=datatype, dims=tuple(t.shape)))
    if not inputs or not outputs:
        raise ConfigError(f"the engine has {len(inputs)} input(s) and {len(outputs)} output(s); Surge needs at least one of each")
    return tuple(inputs), tuple(outputs)


def assign_profiles(num_profiles: int, dynamic: bool, devices: Sequence[int], instance_index: int) -> tuple[int, ...]:
    """The profile indices instance ``instance_index`` owns, given every instance's GPU (``devices``).

    Static engines: every instance uses profile 0 (contexts may share it). Dynamic engines: the k instances on
    one GPU take profiles round-robin, so no two run with the same profile; fewer profiles than k is an error.
    """
    if not dynamic:
        return (0,)
    device = devices[instance_index]
    peers = [i for i, d in enumerate(devices) if d == device]
    k, rank = len(peers), peers.index(instance_index)
    if num_profiles < k:
        raise ConfigError(
            f"the engine has {num_profiles} optimization profile(s) but {k} instances share GPU {device}; TensorRT needs "
            f"its own profile for each execution context running at once: rebuild with `surge build-trt --instances {k}` "
            "or lower instance_group.count"
        )
    return tuple(range(rank, num_profiles, k))


def batch_coverage(profiles: Sequence[Profile], owned: Sequence[int]) -> int:
    """The largest n such that every batch of 1..n rows falls in one of the ``owned`` profiles (0: not even 1 row)."""
    ranges = sorted(profiles[i].batch_range() for i in owned)
    covered = 0
    for low, high in ranges:
        if low > covered + 1:
            break
        covered = max(covered, high)
    return covered


def select_profile(profiles: Sequence[Profile], owned: Sequence[int], shapes: Mapping[str, Shape], current: int | None = None) -> int:
    """The owned profile to run these input shapes with: the current one if it accepts them, else the tightest.

    Tightest = the smallest highest batch, then the lowest index. Staying on the current profile avoids
    TensorRT's profile switch. Raises InvalidInput naming the shapes and this instance's profiles.
    """
    if current is not None and profiles[current].accepts(shapes):
        return current
    fitting = [i for i in owned if profiles[i].accepts(shapes)]
    if not fitting:
        wanted = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        offered = "; ".join(profiles[i].describe() for i in owned)
        raise InvalidInput(f"input shapes {wanted} fit none of the engine's optimization profiles for this instance ({offered})")
    return min(fitting, key=lambda i: (profiles[i].batch_range()[1], i))


def buffer_shapes(profiles: Sequence[Profile], owned: Sequence[int], inputs: Sequence[TensorConfig]) -> dict[str, Shape]:
    """Per input, the largest shape any owned profile admits (dimension by dimension): what a buffer must hold.

    Static inputs (no -1) keep their shape. Raises ConfigError when a dynamic input has no profile bounds.
    """
    result: dict[str, Shape] = {}
    for t in inputs:
        if all(d > 0 for d in t.dims):
            result[t.name] = tuple(t.dims)
            continue
        highs = [profiles[i].shapes[t.name][2] for i in owned if t.name in profiles[i].shapes]
        if not highs:
            raise ConfigError(f"engine input {t.name!r} is dynamic {list(t.dims)} but no optimization profile bounds it")
        result[t.name] = tuple(max(dims) for dims in zip(*highs))
    return result


def build_profile_shapes(inputs: Mapping[str, Shape], max_batch_size: int, opt_batch_size: int = 0) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) per dynamic network input for ``surge build-trt``: rows 1 / opt / max_batch_size.

    ``inputs`` are the ONNX network's input shapes (-1 dynamic). Only a dynamic leading (batch) dimension
    is supported; inputs without dynamic dimensions need no profile. Raises ConfigError naming the input.
    """
    if max_batch_size < 1:
        raise ConfigError(f"--max-batch-size: expected an integer >= 1, got {max_batch_size}")
    opt = opt_batch_size or max_batch_size
    if not 1 <= opt <= max_batch_size:
        raise ConfigError(f"--opt-batch-size: expected 1..{max_batch_size} (the max batch size), got {opt}")
    result: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, shape in inputs.items():
        if all(d > 0 for d in shape):
            continue
        inner = tuple(shape[1:])
        if not shape or shape[0] != -1 or any(d <= 0 for d in inner):
            raise ConfigError(
                f"network input {name!r} has shape {list(shape)}: surge build-trt supports a dynamic first (batch) "
                "dimension only; export the model with fixed sizes for the others"
            )
        result[name] = ((1, *inner), (opt, *inner), (max_batch_size, *inner))
    return result
