"""CUDA versions of the kernels (``numba.cuda``): device arrays in, device arrays out, on a caller's stream.

Same names and parameters as the CPU kernels in ``image`` and ``tabular``. Inputs may be Numba device arrays,
anything with ``__cuda_array_interface__`` (a torch CUDA tensor, a CuPy array: no copy), or host NumPy arrays
(copied to the device). Outputs are Numba device arrays; ``torch.as_tensor(out, device="cuda")`` or
``cupy.asarray(out)`` view them without a copy. The bilinear tables come from ``image.axis_table`` (the CPU's), cached
on each device per geometry. Arithmetic is float32 like the CPU kernels; the CUDA compiler may fuse a multiply and
an add (FMA), so results match the references to about 1e-5 relative rather than to the bit.

One thread per output element, grid-stride loops, 256 threads per block. Importing this module imports
``numba.cuda`` but compiles nothing: each kernel compiles on first launch (the server's warm-up launches them).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from numba import cuda, float32, float64, int64, uint64

from ._common import KernelInputError, channel_params, positive_size
from .image import _DEFAULT_SCALE, _crop_box, axis_table, letterbox_geometry
from .tabular import _boundaries, _depth, _params

__all__ = [
    "as_device", "bucketize", "center_crop", "hash_bucket", "is_available", "letterbox", "normalize", "one_hot",
    "resize", "resize_crop_normalize", "tabular_transform", "why_unavailable",
]

_THREADS = 256
_MAX_BLOCKS = 65535


def why_unavailable() -> str | None:
    """None when kernels can compile and run here (a GPU, its driver and libNVVM; or the simulator), else why not."""
    try:
        from numba.core import config

        if config.ENABLE_CUDASIM:
            return None
        if not cuda.is_available():
            return "numba.cuda sees no usable GPU or CUDA driver"
        from numba.cuda.cudadrv import nvvm

        if not nvvm.is_available():  # the driver runs kernels, but compiling them needs libNVVM (a CUDA toolkit)
            return "libNVVM not found: numba.cuda cannot compile kernels (set CUDA_HOME to a CUDA toolkit, or install one)"
    except Exception as exc:  # a broken driver or toolkit
        return f"numba.cuda cannot start: {type(exc).__name__}: {exc}"
    return None


def is_available() -> bool:
    """Whether the CUDA kernels can run here (see ``why_unavailable``)."""
    return why_unavailable() is None


def _blocks(total: int) -> int:
    return max(1, min(_MAX_BLOCKS, math.ceil(total / _THREADS)))


def as_device(array: Any, stream: Any = 0) -> Any:
    """A device array for ``array``: itself when already on the device, else a copy of the host array."""
    if isinstance(array, np.ndarray):
        return cuda.to_device(array, stream=stream)
    if hasattr(array, "copy_to_host"):  # already a Numba device array
        return array
    if hasattr(array, "__cuda_array_interface__"):
        return cuda.as_cuda_array(array)
    raise KernelInputError(f"expected a NumPy array or a CUDA array, got {type(array).__name__}")


def _image_batch(images: Any, stream: Any) -> tuple[Any, bool]:
    d = as_device(images, stream)
    if d.ndim not in (3, 4):
        raise KernelInputError(f"images: expected 3 or 4 dimensions (HWC or NHWC), got shape {d.shape}")
    if d.dtype not in (np.uint8, np.float32):
        raise KernelInputError(f"images: dtype {d.dtype} is not supported; expected uint8 or float32")
    if d.ndim == 3:
        return d.reshape((1, *d.shape)) if d.is_c_contiguous() else as_device(np.ascontiguousarray(d.copy_to_host())[None], stream), True
    return d, False


def _squeeze(out: Any, added: bool) -> Any:
    return out[0] if added else out


def _device_id() -> int:
    """The current device's id (cached device arrays belong to one GPU)."""
    try:
        return int(cuda.get_current_device().id)
    except AttributeError:  # the simulator has one pretend device
        return 0


def _device_table(n_in: int, n_out: int, start: int, count: int) -> tuple[Any, ...]:
    return _cached_table(n_in, n_out, start, count, _device_id())


@lru_cache(maxsize=256)
def _cached_table(n_in: int, n_out: int, start: int, count: int, device: int) -> tuple[Any, ...]:
    return tuple(cuda.to_device(np.ascontiguousarray(t[start : start + count])) for t in axis_table(n_in, n_out))


@lru_cache(maxsize=256)
def _device_vector(data: bytes, device: int) -> Any:
    """A float32 vector on the device, cached by its bytes (NaN-safe, unlike a tuple of floats)."""
    return cuda.to_device(np.frombuffer(data, dtype=np.float32).copy())


def _vec(name: str, value: object, n: int) -> Any:
    return _device_vector(channel_params(name, value, n).tobytes(), _device_id())


# -- image ---------------------------------------------------------------------------------------------


@cuda.jit
def _normalize_k(src, scale, mean, std, out):  # pragma: no cover - device code
    n, c, h, w = out.shape
    total = n * c * h * w
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        x = i % w
        t = i // w
        y = t % h
        t = t // h
        ch = t % c
        b = t // c
        out[b, ch, y, x] = (float32(src[b, y, x, ch]) * scale - mean[ch]) / std[ch]


def normalize(images: Any, mean: object, std: object, *, scale: float = _DEFAULT_SCALE, stream: Any = 0) -> Any:
    """uint8/float32 ``(N)HWC`` -> float32 ``(N)CHW`` on the device."""
    d, added = _image_batch(images, stream)
    n, h, w, c = d.shape
    mean_d, std_d = _vec("mean", mean, c), _vec("std", std, c)
    if np.any(channel_params("std", std, c) == 0):
        raise KernelInputError("std: must not contain 0")
    out = cuda.device_array((n, c, h, w), dtype=np.float32, stream=stream)
    _normalize_k[_blocks(out.size), _THREADS, stream](d, np.float32(scale), mean_d, std_d, out)
    return _squeeze(out, added)


@cuda.jit(device=True)
def _bilinear(src, b, ch, y, x, y0, y1, wy, vy, x0, x1, wx, vx):  # pragma: no cover - device code
    """One output value of a bilinear resize of ``src`` (NHWC), from the axis tables (shared by the resize kernels)."""
    ya, yb = y0[y], y1[y]
    xa, xb = x0[x], x1[x]
    upper = float32(src[b, ya, xa, ch]) * vx[x] + float32(src[b, ya, xb, ch]) * wx[x]
    lower = float32(src[b, yb, xa, ch]) * vx[x] + float32(src[b, yb, xb, ch]) * wx[x]
    return upper * vy[y] + lower * wy[y]


@cuda.jit
def _resize_k(src, y0, y1, wy, vy, x0, x1, wx, vx, out, top, left):  # pragma: no cover - device code
    n = src.shape[0]
    c = src.shape[3]
    oh = y0.shape[0]
    ow = x0.shape[0]
    total = n * oh * ow * c
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        ch = i % c
        t = i // c
        x = t % ow
        t = t // ow
        y = t % oh
        b = t // oh
        out[b, top + y, left + x, ch] = _bilinear(src, b, ch, y, x, y0, y1, wy, vy, x0, x1, wx, vx)


def resize(images: Any, size: object, *, stream: Any = 0) -> Any:
    """Bilinear resize on the device; float32 ``(N)HWC``."""
    d, added = _image_batch(images, stream)
    n, h, w, c = d.shape
    oh, ow = positive_size("size", size)
    out = cuda.device_array((n, oh, ow, c), dtype=np.float32, stream=stream)
    _resize_k[_blocks(out.size), _THREADS, stream](d, *_device_table(h, oh, 0, oh), *_device_table(w, ow, 0, ow), out, 0, 0)
    return _squeeze(out, added)


@cuda.jit
def _fill_k(out, value):  # pragma: no cover - device code
    n, h, w, c = out.shape
    for i in range(cuda.grid(1), n * h * w * c, cuda.gridsize(1)):
        ch = i % c
        t = i // c
        x = t % w
        t = t // w
        out[t // h, t % h, x, ch] = value


def letterbox(images: Any, size: object, *, pad_value: float = 0.0, stream: Any = 0) -> Any:
    """Aspect-preserving resize into ``size``, centred, padded with ``pad_value``; float32 ``(N)HWC``."""
    d, added = _image_batch(images, stream)
    n, h, w, c = d.shape
    oh, ow, nh, nw, top, left = letterbox_geometry(h, w, size)
    out = cuda.device_array((n, oh, ow, c), dtype=np.float32, stream=stream)
    _fill_k[_blocks(out.size), _THREADS, stream](out, np.float32(pad_value))
    _resize_k[_blocks(n * nh * nw * c), _THREADS, stream](d, *_device_table(h, nh, 0, nh), *_device_table(w, nw, 0, nw), out, top, left)
    return _squeeze(out, added)


@cuda.jit
def _crop_k(src, top, left, out):  # pragma: no cover - device code
    n, oh, ow, c = out.shape
    total = n * oh * ow * c
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        ch = i % c
        t = i // c
        x = t % ow
        t = t // ow
        y = t % oh
        b = t // oh
        out[b, y, x, ch] = src[b, top + y, left + x, ch]


def center_crop(images: Any, size: object, *, stream: Any = 0) -> Any:
    """The centred window on the device, same dtype."""
    d, added = _image_batch(images, stream)
    n, h, w, c = d.shape
    top, left, ch, cw = _crop_box(h, w, size)
    out = cuda.device_array((n, ch, cw, c), dtype=d.dtype, stream=stream)
    _crop_k[_blocks(out.size), _THREADS, stream](d, top, left, out)
    return _squeeze(out, added)


@cuda.jit
def _rcn_k(src, y0, y1, wy, vy, x0, x1, wx, vx, scale, mean, std, out):  # pragma: no cover - device code
    n, c, oh, ow = out.shape
    total = n * c * oh * ow
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        x = i % ow
        t = i // ow
        y = t % oh
        t = t // oh
        ch = t % c
        b = t // c
        out[b, ch, y, x] = (_bilinear(src, b, ch, y, x, y0, y1, wy, vy, x0, x1, wx, vx) * scale - mean[ch]) / std[ch]


def resize_crop_normalize(
    images: Any, resize_to: object, crop: object, mean: object, std: object, *, scale: float = _DEFAULT_SCALE, stream: Any = 0, out: Any = None
) -> Any:
    """Fused resize + center crop + normalize on the device: ``(N)HWC`` -> float32 ``(N)CHW``.

    ``out``: an optional preallocated float32 ``NCHW`` CUDA array (e.g. a torch tensor the model reads).
    """
    d, added = _image_batch(images, stream)
    n, h, w, c = d.shape
    rh, rw = positive_size("resize", resize_to)
    top, left, ch, cw = _crop_box(rh, rw, crop)
    if np.any(channel_params("std", std, c) == 0):
        raise KernelInputError("std: must not contain 0")
    if out is None:
        out = cuda.device_array((n, c, ch, cw), dtype=np.float32, stream=stream)
    else:
        out = cuda.as_cuda_array(out)
        if tuple(out.shape) != (n, c, ch, cw) or out.dtype != np.float32:
            raise KernelInputError(f"out: expected float32 {(n, c, ch, cw)}, got {out.dtype} {tuple(out.shape)}")
    _rcn_k[_blocks(out.size), _THREADS, stream](
        d, *_device_table(h, rh, top, ch), *_device_table(w, rw, left, cw), np.float32(scale), _vec("mean", mean, c), _vec("std", std, c), out
    )
    return _squeeze(out, added)


# -- tabular -------------------------------------------------------------------------------------------


def _table(name: str, x: Any, stream: Any) -> tuple[Any, bool]:
    d = as_device(x, stream)
    if d.ndim not in (1, 2):
        raise KernelInputError(f"{name}: expected 1 or 2 dimensions, got shape {d.shape}")
    if d.ndim == 1:
        return d.reshape((d.shape[0], 1)), True
    return d, False


@cuda.jit
def _transform_k(x, fill, low, high, mean, std, out):  # pragma: no cover - device code
    rows, features = out.shape
    for i in range(cuda.grid(1), rows * features, cuda.gridsize(1)):
        r = i // features
        f = i - r * features
        v = float32(x[r, f])
        if math.isnan(v):
            v = fill[f]
        if v < low[f]:
            v = low[f]
        elif v > high[f]:
            v = high[f]
        out[r, f] = (v - mean[f]) / std[f]


def tabular_transform(x: Any, *, fill: object = None, low: object = None, high: object = None, mean: object = None, std: object = None, stream: Any = 0) -> Any:
    """fill_missing -> clip -> standardize on the device; float32."""
    d, squeezed = _table("x", x, stream)
    params = [_device_vector(p.tobytes(), _device_id()) for p in _params(d.shape[1], fill, low, high, mean, std)]
    out = cuda.device_array(d.shape, dtype=np.float32, stream=stream)
    _transform_k[_blocks(out.size), _THREADS, stream](d, *params, out)
    return out.reshape((d.shape[0],)) if squeezed else out


@cuda.jit
def _bucketize_k(x, boundaries, out):  # pragma: no cover - device code
    rows, features = out.shape
    nb = boundaries.shape[0]
    for i in range(cuda.grid(1), rows * features, cuda.gridsize(1)):
        r = i // features
        f = i - r * features
        v = float64(x[r, f])
        if math.isnan(v):
            out[r, f] = nb
            continue
        lo = 0
        hi = nb
        while lo < hi:
            mid = (lo + hi) >> 1
            if boundaries[mid] <= v:
                lo = mid + 1
            else:
                hi = mid
        out[r, f] = lo


def bucketize(x: Any, boundaries: object, *, stream: Any = 0) -> Any:
    """Bucket indices (int64) on the device."""
    d, squeezed = _table("x", x, stream)
    b = cuda.to_device(_boundaries(boundaries), stream=stream)
    out = cuda.device_array(d.shape, dtype=np.int64, stream=stream)
    _bucketize_k[_blocks(out.size), _THREADS, stream](d, b, out)
    return out.reshape((d.shape[0],)) if squeezed else out


@cuda.jit
def _one_hot_k(ids, depth, out):  # pragma: no cover - device code
    rows, width = out.shape
    for i in range(cuda.grid(1), rows * width, cuda.gridsize(1)):
        r = i // width
        j = i - r * width
        f = j // depth
        out[r, j] = 1.0 if int64(ids[r, f]) == j - f * depth else 0.0


def one_hot(ids: Any, depth: int, *, stream: Any = 0) -> Any:
    """float32 ``(rows, features * depth)`` one-hot blocks on the device."""
    d, _ = _table("ids", ids, stream)
    if d.dtype.kind not in "ui":
        raise KernelInputError(f"ids: dtype {d.dtype} is not supported; expected int")
    depth = _depth("depth", depth)
    out = cuda.device_array((d.shape[0], d.shape[1] * depth), dtype=np.float32, stream=stream)
    _one_hot_k[_blocks(out.size), _THREADS, stream](d, depth, out)
    return out


@cuda.jit
def _hash_k(ids, seed, num_buckets, out):  # pragma: no cover - device code
    rows, features = out.shape
    for i in range(cuda.grid(1), rows * features, cuda.gridsize(1)):
        r = i // features
        f = i - r * features
        z = (uint64(int64(ids[r, f])) ^ seed) + uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
        z = z ^ (z >> uint64(31))
        out[r, f] = int64(z % num_buckets)


def hash_bucket(ids: Any, num_buckets: int, *, seed: int = 0, stream: Any = 0) -> Any:
    """int64 hash buckets on the device (the same splitmix64 as the CPU kernel)."""
    d, squeezed = _table("ids", ids, stream)
    if d.dtype.kind not in "ui":
        raise KernelInputError(f"ids: dtype {d.dtype} is not supported; expected int")
    n = _depth("num_buckets", num_buckets)
    out = cuda.device_array(d.shape, dtype=np.int64, stream=stream)
    _hash_k[_blocks(out.size), _THREADS, stream](d, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), np.uint64(n), out)
    return out.reshape((d.shape[0],)) if squeezed else out
