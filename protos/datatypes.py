"""Tensor wire facts shared by the server and the client: datatype strings, numpy dtypes, BYTES framing.

The Open Inference Protocol names tensor types with strings (``"FP32"``, ``"BYTES"``, ...). Raw tensor
contents are the flattened row-major little-endian bytes of the array; a BYTES tensor is a sequence of
elements, each a 4-byte little-endian length followed by that many bytes (Triton's binary form). Typed
``contents`` use one repeated field per family of types (``CONTENTS_FIELD``); FP16 and BF16 have no typed
field and travel raw only.

This module is hand-written (not generated) and imports only numpy (and ml_dtypes, on the first BF16 tensor): both
``surge.server`` and ``surge.clients`` use it, so the two sides agree by construction.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

__all__ = [
    "CONTENTS_FIELD",
    "DATATYPES",
    "ElementTooLarge",
    "datatype_of",
    "deserialize_bytes_tensor",
    "itemsize_of",
    "numpy_dtype",
    "serialize_bytes_tensor",
]

_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

#: Every datatype string of the protocol (BF16 is recognised even where ml_dtypes is missing).
DATATYPES: frozenset[str] = frozenset([*_NUMPY, "BF16"])

#: The typed ``InferTensorContents`` field for each datatype that has one.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_DATATYPE_OF_KIND: dict[tuple[str, int], str] = {(dt.kind, dt.itemsize): name for name, dt in _NUMPY.items() if name != "BYTES"}
_U32 = struct.Struct("<I")


@functools.cache
def _bfloat16() -> np.dtype:
    """ml_dtypes' bfloat16, imported on first use: the import costs about a second, and only BF16 tensors need it."""
    try:
        from ml_dtypes import bfloat16
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError("BF16 tensors need the ml_dtypes package (pip install ml_dtypes)") from None
    dtype: np.dtype = np.dtype(bfloat16)
    return dtype


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a datatype string; raises KeyError for an unknown one, ValueError for BF16 without ml_dtypes."""
    try:
        return _NUMPY[datatype]
    except KeyError:
        if datatype == "BF16":
            return _bfloat16()
        raise


def itemsize_of(datatype: str) -> int:
    """Bytes per element in raw form (0 for BYTES, whose elements vary in length)."""
    return 2 if datatype == "BF16" else (0 if datatype == "BYTES" else _NUMPY[datatype].itemsize)


def datatype_of(dtype: np.dtype) -> str:
    """The datatype string for a numpy dtype: object, str and bytes arrays are BYTES; raises ValueError otherwise."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSUT":
        return "BYTES"
    if dtype.kind == "V" and dtype.name == "bfloat16":  # an ml_dtypes array exists, so ml_dtypes is imported
        return "BF16"
    name = _DATATYPE_OF_KIND.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Encode a BYTES tensor in Triton's raw form: per element, a 4-byte little-endian length, then the bytes.

    Elements may be ``bytes`` or ``str`` (UTF-8 encoded); the array is read in row-major order.
    """
    parts: list[bytes] = []
    for item in np.asarray(array, dtype=np.object_).reshape(-1):
        if isinstance(item, str):
            data = item.encode("utf-8")
        elif isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
        else:
            raise TypeError(f"BYTES elements must be bytes or str, got {type(item).__name__}")
        parts.append(_U32.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


class ElementTooLarge(ValueError):
    """A BYTES element is longer than the ``max_element_bytes`` the caller allows."""


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int, max_element_bytes: int = 0) -> np.ndarray:
    """Decode ``count`` length-prefixed elements into a 1-D object array of ``bytes``.

    Raises ValueError naming the problem when the buffer is truncated or has bytes left over, and
    ElementTooLarge (before copying it) for an element longer than ``max_element_bytes`` (0: no limit).
    """
    view = memoryview(buffer)
    total = len(view)
    if count * 4 > total:  # checked before allocating: a claimed shape must not cost memory
        raise ValueError(f"BYTES data of {total} bytes cannot hold {count} elements (each needs a 4-byte length)")
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        if offset + 4 > total:
            raise ValueError(f"BYTES data ends inside the length prefix of element {i} (of {count})")
        (length,) = _U32.unpack_from(view, offset)
        offset += 4
        if max_element_bytes and length > max_element_bytes:
            raise ElementTooLarge(f"BYTES element {i} has {length} bytes, above the limit of {max_element_bytes}")
        if offset + length > total:
            raise ValueError(f"BYTES element {i} claims {length} bytes but only {total - offset} remain")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != total:
        raise ValueError(f"BYTES data has {total - offset} bytes after its {count} elements")
    return out
