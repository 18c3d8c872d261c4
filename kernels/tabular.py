"""Tabular kernels over ``(rows, features)`` arrays (a 1-D array is one feature column of ``rows``).

    standardize(x, mean, std)            (x - mean[f]) / std[f], float32 out; NaN stays NaN
    clip(x, low, high)                   per-feature (or scalar) bounds, float32 out; NaN stays NaN
    fill_missing(x, values)              NaN -> values[f], float32 out
    bucketize(x, boundaries)             bucket index, int64: boundaries[i-1] <= x < boundaries[i] -> i
                                         (``np.searchsorted(boundaries, x, side="right")``; NaN -> len(boundaries))
    one_hot(ids, depth)                  int ids (rows, features) -> float32 (rows, features * depth);
                                         ids outside [0, depth) give an all-zero block (an unseen category)
    hash_bucket(ids, num_buckets, seed)  int ids -> int64 in [0, num_buckets): splitmix64(id ^ seed) % num_buckets
    tabular_transform(x, fill, low, high, mean, std)
                                         fill_missing -> clip -> standardize fused into one pass

Each is a row function driven by a parallel loop (``prange`` over rows) for large inputs and by a serial twin for
small ones (``_common.PARALLEL_MIN_ELEMENTS``); each has a ``*_ref`` NumPy reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _common
from ._common import KernelInputError, channel_params, check_array

__all__ = [
    "bucketize", "bucketize_ref",
    "clip", "clip_ref",
    "fill_missing", "fill_missing_ref",
    "hash_bucket", "hash_bucket_ref",
    "one_hot", "one_hot_ref",
    "standardize", "standardize_ref",
    "tabular_transform", "tabular_transform_ref",
]


def _table(name: str, x: object, kinds: str = "uif") -> tuple[np.ndarray, bool]:
    array = check_array(name, x, ndims=(1, 2), kinds=kinds)
    return (array[:, None], True) if array.ndim == 1 else (array, False)


def _shape(out: np.ndarray, squeezed: bool) -> np.ndarray:
    return out[:, 0] if squeezed else out


# -- standardize / clip / fill / fused ---------------------------------------------------------------


@njit(nogil=True, cache=True)
def _transform_row(x, fill, low, high, mean, std, out, r):  # pragma: no cover - compiled
    for f in range(x.shape[1]):
        v = np.float32(x[r, f])
        if np.isnan(v):
            v = fill[f]
        if v < low[f]:
            v = low[f]
        elif v > high[f]:
            v = high[f]
        out[r, f] = (v - mean[f]) / std[f]


@njit(nogil=True, cache=True, parallel=True)
def _transform_par(x, fill, low, high, mean, std, out):  # pragma: no cover - compiled
    for r in prange(x.shape[0]):
        _transform_row(x, fill, low, high, mean, std, out, r)


@njit(nogil=True, cache=True)
def _transform_ser(x, fill, low, high, mean, std, out):  # pragma: no cover - compiled
    for r in range(x.shape[0]):
        _transform_row(x, fill, low, high, mean, std, out, r)


def _params(features: int, fill: object, low: object, high: object, mean: object, std: object) -> tuple[np.ndarray, ...]:
    fill_a = channel_params("fill", fill, features) if fill is not None else np.full(features, np.nan, dtype=np.float32)
    low_a = channel_params("low", low, features) if low is not None else np.full(features, -np.inf, dtype=np.float32)
    high_a = channel_params("high", high, features) if high is not None else np.full(features, np.inf, dtype=np.float32)
    mean_a = channel_params("mean", mean, features) if mean is not None else np.zeros(features, dtype=np.float32)
    std_a = channel_params("std", std, features) if std is not None else np.ones(features, dtype=np.float32)
    if np.any(low_a > high_a):
        raise KernelInputError(f"clip: low {low_a.tolist()} exceeds high {high_a.tolist()}")
    if np.any(std_a == 0):
        raise KernelInputError(f"std: must not contain 0, got {std_a.tolist()}")
    return fill_a, low_a, high_a, mean_a, std_a


def tabular_transform(x: np.ndarray, *, fill: object = None, low: object = None, high: object = None, mean: object = None, std: object = None) -> np.ndarray:
    """Fill NaN with ``fill``, clip to [``low``, ``high``], standardise with ``mean``/``std``, in one pass; float32.

    Each parameter is per feature (or a scalar); an omitted one is the identity of its step.
    """
    batch, squeezed = _table("x", x, "uif")
    params = _params(batch.shape[1], fill, low, high, mean, std)
    out = np.empty(batch.shape, dtype=np.float32)
    (_transform_par if _common.use_parallel(out.size) else _transform_ser)(batch, *params, out)
    return _shape(out, squeezed)


def tabular_transform_ref(x: np.ndarray, *, fill: object = None, low: object = None, high: object = None, mean: object = None, std: object = None) -> np.ndarray:
    """NumPy reference of ``tabular_transform``."""
    batch, squeezed = _table("x", x, "uif")
    fill_a, low_a, high_a, mean_a, std_a = _params(batch.shape[1], fill, low, high, mean, std)
    v = batch.astype(np.float32)
    v = np.where(np.isnan(v), fill_a, v)
    v = np.where(v < low_a, low_a, np.where(v > high_a, high_a, v))
    return _shape((v - mean_a) / std_a, squeezed)


def standardize(x: np.ndarray, mean: object, std: object) -> np.ndarray:
    """``(x - mean[f]) / std[f]`` as float32 (stored training statistics)."""
    return tabular_transform(x, mean=mean, std=std)


def standardize_ref(x: np.ndarray, mean: object, std: object) -> np.ndarray:
    """NumPy reference of ``standardize``."""
    return tabular_transform_ref(x, mean=mean, std=std)


def clip(x: np.ndarray, low: object, high: object) -> np.ndarray:
    """``x`` clipped to [``low[f]``, ``high[f]``] as float32."""
    return tabular_transform(x, low=low, high=high)


def clip_ref(x: np.ndarray, low: object, high: object) -> np.ndarray:
    """NumPy reference of ``clip``."""
    return tabular_transform_ref(x, low=low, high=high)


def fill_missing(x: np.ndarray, values: object) -> np.ndarray:
    """NaN replaced by ``values[f]``, as float32."""
    return tabular_transform(x, fill=values)


def fill_missing_ref(x: np.ndarray, values: object) -> np.ndarray:
    """NumPy reference of ``fill_missing``."""
    return tabular_transform_ref(x, fill=values)


# -- bucketize -----------------------------------------------------------------------------------------


def _boundaries(boundaries: object) -> np.ndarray:
    b = np.asarray(boundaries, dtype=np.float64)
    if b.ndim != 1 or b.size == 0 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
        raise KernelInputError(f"boundaries: expected a non-empty, strictly increasing list of finite numbers, got {np.asarray(boundaries).tolist()}")
    return b


@njit(nogil=True, cache=True)
def _bucketize_row(x, boundaries, out, r):  # pragma: no cover - compiled
    nb = boundaries.shape[0]
    for f in range(x.shape[1]):
        v = np.float64(x[r, f])
        if np.isnan(v):
            out[r, f] = nb
            continue
        lo, hi = 0, nb  # first boundary > v (binary search)
        while lo < hi:
            mid = (lo + hi) >> 1
            if boundaries[mid] <= v:
                lo = mid + 1
            else:
                hi = mid
        out[r, f] = lo


@njit(nogil=True, cache=True, parallel=True)
def _bucketize_par(x, boundaries, out):  # pragma: no cover - compiled
    for r in prange(x.shape[0]):
        _bucketize_row(x, boundaries, out, r)


@njit(nogil=True, cache=True)
def _bucketize_ser(x, boundaries, out):  # pragma: no cover - compiled
    for r in range(x.shape[0]):
        _bucketize_row(x, boundaries, out, r)


def bucketize(x: np.ndarray, boundaries: object) -> np.ndarray:
    """Bucket index per value (int64): ``i`` with ``boundaries[i-1] <= x < boundaries[i]``; NaN -> ``len(boundaries)``."""
    batch, squeezed = _table("x", x, "uif")
    b = _boundaries(boundaries)
    out = np.empty(batch.shape, dtype=np.int64)
    (_bucketize_par if _common.use_parallel(out.size) else _bucketize_ser)(batch, b, out)
    return _shape(out, squeezed)


def bucketize_ref(x: np.ndarray, boundaries: object) -> np.ndarray:
    """NumPy reference of ``bucketize``."""
    batch, squeezed = _table("x", x, "uif")
    b = _boundaries(boundaries)
    return _shape(np.searchsorted(b, batch.astype(np.float64), side="right").astype(np.int64), squeezed)


# -- one-hot / hashing ---------------------------------------------------------------------------------


def _depth(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise KernelInputError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


@njit(nogil=True, cache=True)
def _one_hot_row(ids, depth, out, r):  # pragma: no cover - compiled
    for j in range(out.shape[1]):
        out[r, j] = 0.0
    for f in range(ids.shape[1]):
        v = ids[r, f]
        if v >= 0 and v < depth:
            out[r, f * depth + v] = 1.0


@njit(nogil=True, cache=True, parallel=True)
def _one_hot_par(ids, depth, out):  # pragma: no cover - compiled
    for r in prange(ids.shape[0]):
        _one_hot_row(ids, depth, out, r)


@njit(nogil=True, cache=True)
def _one_hot_ser(ids, depth, out):  # pragma: no cover - compiled
    for r in range(ids.shape[0]):
        _one_hot_row(ids, depth, out, r)


def one_hot(ids: np.ndarray, depth: int) -> np.ndarray:
    """Integer ids ``(rows, features)`` -> float32 ``(rows, features * depth)``; ids outside [0, depth) -> zeros."""
    batch, _ = _table("ids", ids, "ui")
    depth = _depth("depth", depth)
    out = np.empty((batch.shape[0], batch.shape[1] * depth), dtype=np.float32)
    (_one_hot_par if _common.use_parallel(out.size) else _one_hot_ser)(batch, depth, out)
    return out


def one_hot_ref(ids: np.ndarray, depth: int) -> np.ndarray:
    """NumPy reference of ``one_hot``."""
    batch, _ = _table("ids", ids, "ui")
    depth = _depth("depth", depth)
    hot = batch.astype(np.int64)[:, :, None] == np.arange(depth)[None, None, :]
    return hot.reshape(batch.shape[0], -1).astype(np.float32)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(nogil=True, cache=True)
def _hash_row(ids, seed, num_buckets, out, r):  # pragma: no cover - compiled
    golden = np.uint64(0x9E3779B97F4A7C15)
    m1 = np.uint64(0xBF58476D1CE4E5B9)
    m2 = np.uint64(0x94D049BB133111EB)
    for f in range(ids.shape[1]):
        z = (np.uint64(np.int64(ids[r, f])) ^ seed) + golden
        z = (z ^ (z >> np.uint64(30))) * m1
        z = (z ^ (z >> np.uint64(27))) * m2
        z = z ^ (z >> np.uint64(31))
        out[r, f] = np.int64(z % num_buckets)


@njit(nogil=True, cache=True, parallel=True)
def _hash_par(ids, seed, num_buckets, out):  # pragma: no cover - compiled
    for r in prange(ids.shape[0]):
        _hash_row(ids, seed, num_buckets, out, r)


@njit(nogil=True, cache=True)
def _hash_ser(ids, seed, num_buckets, out):  # pragma: no cover - compiled
    for r in range(ids.shape[0]):
        _hash_row(ids, seed, num_buckets, out, r)


def hash_bucket(ids: np.ndarray, num_buckets: int, *, seed: int = 0) -> np.ndarray:
    """Integer ids -> int64 bucket in [0, num_buckets): ``splitmix64(id ^ seed) % num_buckets`` (stable across runs)."""
    batch, squeezed = _table("ids", ids, "ui")
    n = _depth("num_buckets", num_buckets)
    out = np.empty(batch.shape, dtype=np.int64)
    (_hash_par if _common.use_parallel(out.size) else _hash_ser)(batch, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), np.uint64(n), out)
    return _shape(out, squeezed)


def hash_bucket_ref(ids: np.ndarray, num_buckets: int, *, seed: int = 0) -> np.ndarray:
    """NumPy reference of ``hash_bucket``."""
    batch, squeezed = _table("ids", ids, "ui")
    n = _depth("num_buckets", num_buckets)
    z = (batch.astype(np.int64).view(np.uint64) ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return _shape((z % np.uint64(n)).astype(np.int64), squeezed)
