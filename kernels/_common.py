"""Input validation shared by the kernels: clear errors for a wrong dtype, rank or parameter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["KernelInputError", "as_batch", "check_array", "channel_params", "positive_size", "use_parallel"]

#: Outputs with fewer elements run the serial twin of a kernel: a parallel launch costs tens of microseconds
#: (more on a busy machine), which a small batch does not win back.
PARALLEL_MIN_ELEMENTS = 1 << 16


def use_parallel(elements: int) -> bool:
    """Whether a kernel producing ``elements`` output values runs its parallel (``prange``) version."""
    return elements >= PARALLEL_MIN_ELEMENTS


class KernelInputError(ValueError):
    """A kernel was given an input it cannot process (dtype, rank, shape, parameter); the message says which."""


def check_array(name: str, value: object, *, ndims: Sequence[int], kinds: str) -> np.ndarray:
    """``value`` as an ndarray of one of the dtype ``kinds`` (``"u"`` unsigned, ``"i"``, ``"f"``, ``"b"``) and ranks."""
    if not isinstance(value, np.ndarray):
        raise KernelInputError(f"{name}: expected a numpy array, got {type(value).__name__}")
    if value.dtype.kind not in kinds:
        wanted = {"u": "unsigned int", "i": "int", "f": "float", "b": "bool"}
        raise KernelInputError(f"{name}: dtype {value.dtype} is not supported; expected {' or '.join(wanted[k] for k in kinds)}")
    if value.ndim not in ndims:
        raise KernelInputError(f"{name}: expected {' or '.join(str(n) for n in ndims)} dimensions, got shape {value.shape}")
    if value.size == 0 and value.ndim and value.shape[0] != 0:
        raise KernelInputError(f"{name}: has an empty dimension, shape {value.shape}")
    return value


def as_batch(name: str, images: object) -> tuple[np.ndarray, bool]:
    """An ``HWC`` image or ``NHWC`` batch as ``NHWC`` (and whether a batch dimension was added)."""
    array = check_array(name, images, ndims=(3, 4), kinds="uif")
    if array.dtype.kind == "f" and array.dtype != np.float32:
        raise KernelInputError(f"{name}: float images must be float32, got {array.dtype}")
    if array.dtype.kind in "ui" and array.dtype != np.uint8:
        raise KernelInputError(f"{name}: integer images must be uint8, got {array.dtype}")
    return (array[None], True) if array.ndim == 3 else (array, False)


def channel_params(name: str, value: object, channels: int) -> np.ndarray:
    """A per-channel (or per-feature) float32 parameter vector of length ``channels`` (a scalar is broadcast)."""
    if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.shape == (channels,) and value.flags.c_contiguous:
        array = value  # prepared once (a pipeline step's parameters): no conversion per call
    else:
        array = np.asarray(value, dtype=np.float32)
    if array.ndim == 0:
        array = np.full(channels, array, dtype=np.float32)
    if array.shape != (channels,):
        raise KernelInputError(f"{name}: expected {channels} values (one per channel/feature), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise KernelInputError(f"{name}: values must be finite, got {array.tolist()}")
    return np.ascontiguousarray(array)


def positive_size(name: str, value: object) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair, both >= 1."""
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)  # type: ignore[arg-type]
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in pair):
        raise KernelInputError(f"{name}: expected an integer >= 1 or [height, width], got {value!r}")
    return int(pair[0]), int(pair[1])
