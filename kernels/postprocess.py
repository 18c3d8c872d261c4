"""Post-processing of a model's outputs (NumPy; cheap next to the model): softmax, top-k, argmax, threshold.

Each works along the last axis of a batched array and is its own reference.
"""

from __future__ import annotations

import numpy as np

from ._common import KernelInputError, check_array

__all__ = ["argmax", "softmax", "threshold", "topk"]


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (max-subtracted, float32 for float32 input)."""
    x = check_array("x", x, ndims=(1, 2, 3, 4), kinds="f")
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def argmax(x: np.ndarray) -> np.ndarray:
    """Index of the largest value on the last axis (int64; the first on ties)."""
    x = check_array("x", x, ndims=(1, 2, 3, 4), kinds="uif")
    return np.argmax(x, axis=-1).astype(np.int64)


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest values on the last axis, largest first, and their int64 indices (ties: lower index first)."""
    x = check_array("x", x, ndims=(1, 2, 3, 4), kinds="uif")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= x.shape[-1]:
        raise KernelInputError(f"k: expected an integer in 1..{x.shape[-1]} (the last axis), got {k!r}")
    order = np.argsort(-x if x.dtype.kind == "f" else -x.astype(np.int64), axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, order, axis=-1), order.astype(np.int64)


def threshold(x: np.ndarray, value: float) -> np.ndarray:
    """``x >= value`` as bool."""
    x = check_array("x", x, ndims=(1, 2, 3, 4), kinds="uif")
    return x >= value
