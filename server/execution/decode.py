"""The ``decode_jpeg`` pipeline step: one JPEG per row of a BYTES input -> uint8 ``HWC`` images of any size.

On the CPU the rows are decoded with Pillow (``pip install 'surge[images]'``); on a GPU instance of the torch
runtime with torchvision present, the whole batch is decoded on the device by nvJPEG
(``torchvision.io.decode_jpeg(..., device="cuda")``) and the images stay there for the CUDA kernels. Only JPEG is
accepted (Pillow's format check), every image is converted to RGB (``channels = 3``) or grey (``channels = 1``),
and an image whose header declares more than ``max_pixels`` pixels is rejected before it is decoded. Memory: a
batch holds its decoded images until the next step has run, at most max_batch_size x max_pixels x channels bytes
(lower ``max_pixels`` for large batches of large photos).

A row that is not a decodable JPEG does not fail the batch: ``RowsRejected`` names each bad row, the requests
that sent them get INVALID_ARGUMENT, and the batch runs again without them (``_Instance.run_batch``).

The images of one batch may differ in size: the next step (resize, centre crop, letterbox, fused
resize-crop-normalise) runs once per group of equally sized images and writes one output batch.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["DEFAULT_MAX_PIXELS", "JpegDecoder", "encode_jpeg", "group_by_shape"]

log = logging.getLogger("surge.pipeline")

#: Larger images are rejected from their header (a decompression bomb costs nothing): 8192 x 8192 by default.
DEFAULT_MAX_PIXELS = 8192 * 8192
_MODES = {1: "L", 3: "RGB"}


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ConfigError(f"the decode_jpeg step needs Pillow on the CPU: pip install 'surge[images]' ({exc})") from None
    return Image


class JpegDecoder:
    """Decodes the rows of one batch; ``cpu`` returns numpy images, ``cuda`` torch CUDA tensors (both HWC uint8)."""

    def __init__(self, channels: int, max_pixels: int) -> None:
        self.channels = channels
        self.max_pixels = max_pixels
        self._image = _pillow()

    def _open(self, data: object) -> tuple[Any, str | None]:
        """(a Pillow image with its header read, None) or (None, why the row is unusable)."""
        if not isinstance(data, bytes | bytearray | memoryview) or not len(data):
            return None, "empty; expected the bytes of one JPEG image"
        try:
            image = self._image.open(io.BytesIO(data))
        except Exception as exc:  # Pillow raises several types for garbage
            return None, f"not a JPEG image ({type(exc).__name__})"
        if image.format != "JPEG":
            return None, f"a {image.format} image; only JPEG is accepted"
        w, h = image.size
        if w * h > self.max_pixels:
            return None, f"{w} x {h} pixels exceeds max_pixels = {self.max_pixels}"
        return image, None

    def cpu(self, rows: np.ndarray, reject: Callable[[dict[int, str]], Exception]) -> list[np.ndarray]:
        """Decode every row with Pillow; raises ``reject(reasons)`` naming each bad row."""
        images: list[np.ndarray] = []
        reasons: dict[int, str] = {}
        mode = _MODES[self.channels]
        for i, data in enumerate(rows.reshape(-1)):
            image, why = self._open(data)
            if image is not None:
                try:
                    array = np.asarray(image.convert(mode))
                except Exception as exc:  # truncated or corrupt scan data
                    why = f"a corrupt JPEG image ({type(exc).__name__})"
                else:
                    images.append(array if array.ndim == 3 else array[..., None])
                    continue
            reasons[i] = why or "unreadable"
        if reasons:
            raise reject(reasons)
        return images

    def cuda(self, rows: np.ndarray, device: Any, reject: Callable[[dict[int, str]], Exception]) -> list[Any]:
        """Decode the batch on ``device`` with nvJPEG (torchvision), headers checked with Pillow first."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        reasons: dict[int, str] = {}
        for i, data in enumerate(rows.reshape(-1)):
            image, why = self._open(data)
            if image is None:
                reasons[i] = why or "unreadable"
        if reasons:
            raise reject(reasons)
        tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in rows.reshape(-1)]
        mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
        try:
            images = decode_jpeg(tensors, mode=mode, device=device)
        except RuntimeError:  # a corrupt scan somewhere in the batch: find the rows one by one
            for i, t in enumerate(tensors):
                try:
                    decode_jpeg(t, mode=mode, device=device)
                except RuntimeError as exc:
                    reasons[i] = f"a corrupt JPEG image ({type(exc).__name__})"
            if reasons:
                raise reject(reasons) from None
            raise
        return [image.permute(1, 2, 0) for image in images]  # CHW -> HWC views; grouping copies them contiguous

    def sample(self, height: int, width: int) -> bytes:
        """A valid JPEG of the given size (warm-up batches)."""
        return encode_jpeg(np.full((height, width, self.channels), 128, dtype=np.uint8))


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """uint8 ``HWC`` (C = 1 or 3) -> JPEG bytes, with Pillow."""
    buffer = io.BytesIO()
    _pillow().fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def group_by_shape(images: Sequence[Any]) -> list[tuple[tuple[int, ...], list[int]]]:
    """(shape, indices) of each group of equally shaped images, in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    return list(groups.items())
