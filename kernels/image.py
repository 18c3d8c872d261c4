"""Image kernels: uint8 ``HWC`` images (or ``NHWC`` batches) to the float ``NCHW`` tensors vision models take.

    normalize(images, mean, std, scale=1/255)      uint8/float32 NHWC -> float32 NCHW, (x * scale - mean[c]) / std[c]
    resize(images, size)                           bilinear, half-pixel centres (OpenCV / PIL / torchvision
                                                   ``antialias=False`` convention), -> float32 NHWC
    center_crop(images, size)                      -> same dtype NHWC, the centred (h, w) window
    letterbox(images, size, pad_value=0.0)         aspect-preserving bilinear resize into (h, w), centred, padded
    resize_crop_normalize(images, resize, crop, mean, std, scale=1/255)
                                                   the three above fused into one pass (no intermediate arrays)

Each kernel is a row function (one output row) driven by a parallel loop (``prange`` over batch x rows) for
large outputs and by a serial twin for small ones (``_common.PARALLEL_MIN_ELEMENTS``). Each has a ``*_ref`` NumPy reference with the same arithmetic (float32, same operation order), so kernel and
reference agree to the last bit or nearly (tests allow 1e-5). A 3-D input gives a 3-D output (no batch dimension).
The bilinear source coordinates come from ``axis_table``, shared by kernels and references.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _common
from ._common import KernelInputError, as_batch, channel_params, positive_size

__all__ = [
    "axis_table",
    "center_crop", "center_crop_ref",
    "letterbox", "letterbox_geometry", "letterbox_ref",
    "normalize", "normalize_ref",
    "resize", "resize_ref",
    "resize_crop_normalize", "resize_crop_normalize_ref",
]

_DEFAULT_SCALE = 1.0 / 255.0


def axis_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling along one axis: (lower index, upper index, upper weight, lower weight) per output position."""
    s = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    s = np.maximum(s, 0.0)
    i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (s - i0).astype(np.float32)
    return i0, i1, w, np.float32(1.0) - w


def _out(batch: np.ndarray, added: bool) -> np.ndarray:
    return batch[0] if added else batch


# -- normalize ---------------------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _normalize_row(src, b, y, scale, mean, std, out):  # pragma: no cover - compiled
    for x in range(src.shape[2]):
        for ch in range(src.shape[3]):
            out[b, ch, y, x] = (np.float32(src[b, y, x, ch]) * scale - mean[ch]) / std[ch]


@njit(nogil=True, cache=True, parallel=True)
def _normalize_par(src, scale, mean, std, out):  # pragma: no cover - compiled
    h = src.shape[1]
    for job in prange(src.shape[0] * h):
        _normalize_row(src, job // h, job % h, scale, mean, std, out)


@njit(nogil=True, cache=True)
def _normalize_ser(src, scale, mean, std, out):  # pragma: no cover - compiled
    h = src.shape[1]
    for job in range(src.shape[0] * h):
        _normalize_row(src, job // h, job % h, scale, mean, std, out)


def normalize(images: np.ndarray, mean: object, std: object, *, scale: float = _DEFAULT_SCALE) -> np.ndarray:
    """uint8 or float32 ``(N)HWC`` -> float32 ``(N)CHW``: ``(x * scale - mean[c]) / std[c]``."""
    batch, added = as_batch("images", images)
    mean_a, std_a = _mean_std(mean, std, batch.shape[3])
    n, h, w, c = batch.shape
    out = np.empty((n, c, h, w), dtype=np.float32)
    (_normalize_par if _common.use_parallel(out.size) else _normalize_ser)(batch, np.float32(scale), mean_a, std_a, out)
    return _out(out, added)


def normalize_ref(images: np.ndarray, mean: object, std: object, *, scale: float = _DEFAULT_SCALE) -> np.ndarray:
    """NumPy reference of ``normalize``."""
    batch, added = as_batch("images", images)
    mean_a, std_a = _mean_std(mean, std, batch.shape[3])
    y = (batch.astype(np.float32) * np.float32(scale) - mean_a) / std_a
    return _out(np.ascontiguousarray(y.transpose(0, 3, 1, 2)), added)


def _mean_std(mean: object, std: object, channels: int) -> tuple[np.ndarray, np.ndarray]:
    mean_a = channel_params("mean", mean, channels)
    std_a = channel_params("std", std, channels)
    if np.any(std_a == 0):
        raise KernelInputError(f"std: must not contain 0, got {std_a.tolist()}")
    return mean_a, std_a


# -- resize ------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _resize_row(src, b, y, y0, y1, wy, vy, x0, x1, wx, vx, out, top, left):  # pragma: no cover - compiled
    ya, yb, fy, gy = y0[y], y1[y], wy[y], vy[y]
    for x in range(x0.shape[0]):
        xa, xb, fx, gx = x0[x], x1[x], wx[x], vx[x]
        for ch in range(src.shape[3]):
            upper = np.float32(src[b, ya, xa, ch]) * gx + np.float32(src[b, ya, xb, ch]) * fx
            lower = np.float32(src[b, yb, xa, ch]) * gx + np.float32(src[b, yb, xb, ch]) * fx
            out[b, top + y, left + x, ch] = upper * gy + lower * fy


@njit(nogil=True, cache=True, parallel=True)
def _resize_par(src, y0, y1, wy, vy, x0, x1, wx, vx, out, top, left):  # pragma: no cover - compiled
    oh = y0.shape[0]
    for job in prange(src.shape[0] * oh):
        _resize_row(src, job // oh, job % oh, y0, y1, wy, vy, x0, x1, wx, vx, out, top, left)


@njit(nogil=True, cache=True)
def _resize_ser(src, y0, y1, wy, vy, x0, x1, wx, vx, out, top, left):  # pragma: no cover - compiled
    oh = y0.shape[0]
    for job in range(src.shape[0] * oh):
        _resize_row(src, job // oh, job % oh, y0, y1, wy, vy, x0, x1, wx, vx, out, top, left)


def _resize_kernel(src, y0, y1, wy, vy, x0, x1, wx, vx, out, top, left) -> None:
    (_resize_par if _common.use_parallel(src.shape[0] * y0.shape[0] * x0.shape[0] * src.shape[3]) else _resize_ser)(
        src, y0, y1, wy, vy, x0, x1, wx, vx, out, top, left
    )


def resize(images: np.ndarray, size: object) -> np.ndarray:
    """Bilinear resize of ``(N)HWC`` to ``size = (height, width)``; float32 out."""
    batch, added = as_batch("images", images)
    oh, ow = positive_size("size", size)
    n, h, w, c = batch.shape
    out = np.empty((n, oh, ow, c), dtype=np.float32)
    _resize_kernel(batch, *axis_table(h, oh), *axis_table(w, ow), out, 0, 0)
    return _out(out, added)


def _resize_np(batch: np.ndarray, ytab: tuple, xtab: tuple) -> np.ndarray:
    y0, y1, wy, vy = ytab
    x0, x1, wx, vx = xtab
    s = batch.astype(np.float32)
    ra, rb = s[:, y0], s[:, y1]
    gx, fx = vx[None, None, :, None], wx[None, None, :, None]
    upper = ra[:, :, x0] * gx + ra[:, :, x1] * fx
    lower = rb[:, :, x0] * gx + rb[:, :, x1] * fx
    return upper * vy[None, :, None, None] + lower * wy[None, :, None, None]


def resize_ref(images: np.ndarray, size: object) -> np.ndarray:
    """NumPy reference of ``resize``."""
    batch, added = as_batch("images", images)
    oh, ow = positive_size("size", size)
    return _out(_resize_np(batch, axis_table(batch.shape[1], oh), axis_table(batch.shape[2], ow)), added)


# -- center crop -------------------------------------------------------------------------------------


def _crop_box(h: int, w: int, size: object) -> tuple[int, int, int, int]:
    ch, cw = positive_size("size", size)
    if ch > h or cw > w:
        raise KernelInputError(f"center crop of {ch}x{cw} does not fit in an image of {h}x{w}")
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@njit(nogil=True, cache=True, parallel=True)
def _crop_par(src, top, left, out):  # pragma: no cover - compiled
    oh, ow = out.shape[1], out.shape[2]
    for job in prange(out.shape[0] * oh):
        b, y = job // oh, job % oh
        out[b, y] = src[b, top + y, left : left + ow]  # a row slice copies faster than an element loop


@njit(nogil=True, cache=True)
def _crop_ser(src, top, left, out):  # pragma: no cover - compiled
    oh, ow = out.shape[1], out.shape[2]
    for job in range(out.shape[0] * oh):
        b, y = job // oh, job % oh
        out[b, y] = src[b, top + y, left : left + ow]


def center_crop(images: np.ndarray, size: object) -> np.ndarray:
    """The centred ``size = (height, width)`` window of ``(N)HWC`` (offsets rounded down), same dtype."""
    batch, added = as_batch("images", images)
    top, left, ch, cw = _crop_box(batch.shape[1], batch.shape[2], size)
    out = np.empty((batch.shape[0], ch, cw, batch.shape[3]), dtype=batch.dtype)
    (_crop_par if _common.use_parallel(out.size) else _crop_ser)(batch, top, left, out)
    return _out(out, added)


def center_crop_ref(images: np.ndarray, size: object) -> np.ndarray:
    """NumPy reference of ``center_crop``."""
    batch, added = as_batch("images", images)
    top, left, ch, cw = _crop_box(batch.shape[1], batch.shape[2], size)
    return _out(batch[:, top : top + ch, left : left + cw].copy(), added)


# -- letterbox ---------------------------------------------------------------------------------------


def letterbox_geometry(h: int, w: int, size: object) -> tuple[int, int, int, int, int, int]:
    """(out_h, out_w, resized_h, resized_w, top, left): the image keeps its aspect ratio and is centred."""
    oh, ow = positive_size("size", size)
    scale = min(oh / h, ow / w)
    nh = min(oh, max(1, int(round(h * scale))))
    nw = min(ow, max(1, int(round(w * scale))))
    return oh, ow, nh, nw, (oh - nh) // 2, (ow - nw) // 2


def letterbox(images: np.ndarray, size: object, *, pad_value: float = 0.0) -> np.ndarray:
    """Aspect-preserving bilinear resize of ``(N)HWC`` into ``size``, centred, the rest ``pad_value``; float32."""
    batch, added = as_batch("images", images)
    n, h, w, c = batch.shape
    oh, ow, nh, nw, top, left = letterbox_geometry(h, w, size)
    out = np.full((n, oh, ow, c), np.float32(pad_value), dtype=np.float32)
    _resize_kernel(batch, *axis_table(h, nh), *axis_table(w, nw), out, top, left)
    return _out(out, added)


def letterbox_ref(images: np.ndarray, size: object, *, pad_value: float = 0.0) -> np.ndarray:
    """NumPy reference of ``letterbox``."""
    batch, added = as_batch("images", images)
    n, h, w, c = batch.shape
    oh, ow, nh, nw, top, left = letterbox_geometry(h, w, size)
    out = np.full((n, oh, ow, c), np.float32(pad_value), dtype=np.float32)
    out[:, top : top + nh, left : left + nw] = _resize_np(batch, axis_table(h, nh), axis_table(w, nw))
    return _out(out, added)


# -- fused resize + center crop + normalize ----------------------------------------------------------


@njit(nogil=True, cache=True)
def _rcn_row(src, b, y, y0, y1, wy, vy, x0, x1, wx, vx, scale, mean, std, out):  # pragma: no cover - compiled
    ya, yb, fy, gy = y0[y], y1[y], wy[y], vy[y]
    for x in range(x0.shape[0]):
        xa, xb, fx, gx = x0[x], x1[x], wx[x], vx[x]
        for ch in range(src.shape[3]):
            upper = np.float32(src[b, ya, xa, ch]) * gx + np.float32(src[b, ya, xb, ch]) * fx
            lower = np.float32(src[b, yb, xa, ch]) * gx + np.float32(src[b, yb, xb, ch]) * fx
            out[b, ch, y, x] = ((upper * gy + lower * fy) * scale - mean[ch]) / std[ch]


@njit(nogil=True, cache=True, parallel=True)
def _rcn_par(src, y0, y1, wy, vy, x0, x1, wx, vx, scale, mean, std, out):  # pragma: no cover - compiled
    oh = y0.shape[0]
    for job in prange(src.shape[0] * oh):
        _rcn_row(src, job // oh, job % oh, y0, y1, wy, vy, x0, x1, wx, vx, scale, mean, std, out)


@njit(nogil=True, cache=True)
def _rcn_ser(src, y0, y1, wy, vy, x0, x1, wx, vx, scale, mean, std, out):  # pragma: no cover - compiled
    oh = y0.shape[0]
    for job in range(src.shape[0] * oh):
        _rcn_row(src, job // oh, job % oh, y0, y1, wy, vy, x0, x1, wx, vx, scale, mean, std, out)


def _fused_tables(h: int, w: int, resize_to: object, crop: object) -> tuple[tuple, tuple]:
    rh, rw = positive_size("resize", resize_to)
    top, left, ch, cw = _crop_box(rh, rw, crop)
    ytab = tuple(t[top : top + ch] for t in axis_table(h, rh))
    xtab = tuple(t[left : left + cw] for t in axis_table(w, rw))
    return ytab, xtab


def resize_crop_normalize(
    images: np.ndarray, resize_to: object, crop: object, mean: object, std: object, *, scale: float = _DEFAULT_SCALE
) -> np.ndarray:
    """``normalize(center_crop(resize(images, resize_to), crop), mean, std)`` in one pass: ``(N)HWC`` -> float32 ``(N)CHW``."""
    batch, added = as_batch("images", images)
    n, h, w, c = batch.shape
    mean_a, std_a = _mean_std(mean, std, c)
    ytab, xtab = _fused_tables(h, w, resize_to, crop)
    out = np.empty((n, c, ytab[0].shape[0], xtab[0].shape[0]), dtype=np.float32)
    (_rcn_par if _common.use_parallel(out.size) else _rcn_ser)(batch, *ytab, *xtab, np.float32(scale), mean_a, std_a, out)
    return _out(out, added)


def resize_crop_normalize_ref(
    images: np.ndarray, resize_to: object, crop: object, mean: object, std: object, *, scale: float = _DEFAULT_SCALE
) -> np.ndarray:
    """NumPy reference of ``resize_crop_normalize``: the three references one after the other."""
    resized = resize_ref(images, resize_to)
    return normalize_ref(center_crop_ref(resized, crop), mean, std, scale=scale)
