"""Triton's per-tensor request extensions, checked once for both edges (the REST edge passes the JSON
parameters on in the protocol message, so a REST and a gRPC request meet these same checks in ``codec``).

- **Classification** (implemented, Triton's semantics): a requested output with the ``classification``
  parameter (an integer k; 0 means the raw output) comes back as a BYTES tensor of the k highest values of
  each row, highest first, each written ``"<value>:<index>"`` or ``"<value>:<index>:<label>"``: the value as
  C's ``%f`` writes floats (``0.960938``) and integers as they are, the index into the row flattened
  (row-major), the label the index's line of the output's label file (``label_filename`` in the model's
  config.toml; an index past its end, or an empty line, has no label). The shape is ``[rows, min(k, n)]`` for
  a batched model and ``[min(k, n)]`` for one without a batch dimension, ``n`` being the values in a row.
  Ties keep the lower index first. Numeric outputs only (BOOL, BYTES and BF16 are INVALID_ARGUMENT).
- **Shared memory** (``shared_memory_region``, ``shared_memory_byte_size``, ``shared_memory_offset`` on an
  input or a requested output): the tensor is read from (or written into) a region the caller registered;
  ``shared_memory.py`` holds the regions and the checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from surge.protos import grpc_service_pb2 as pb

from ..errors import InvalidInput, Unsupported

if TYPE_CHECKING:
    from .shared_memory import RequestRegions

__all__ = ["CLASSIFICATION", "SHARED_MEMORY", "class_count", "classify", "in_shared_memory", "nonnegative_int", "shared_memory_inputs"]

CLASSIFICATION = "classification"
SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_NOT_CLASSIFIABLE = ("BOOL", "BYTES", "BF16")


def in_shared_memory(name: str, parameters: Mapping[str, pb.InferParameter], regions: RequestRegions | None, what: str = "input") -> bool:
    """Whether a tensor's parameters place it in shared memory; Unsupported when they do and the edge has no regions."""
    key = next((key for key in SHARED_MEMORY if key in parameters), None)
    if key is None:
        return False
    if regions is None:
        raise Unsupported(f"{what} '{name}' asks for shared memory ({key}), which this endpoint does not serve; send the tensor in the request")
    return True


def shared_memory_inputs(inputs: Sequence[pb.ModelInferRequest.InferInputTensor]) -> int:
    """How many inputs are in shared memory (they have no raw_input_contents entry)."""
    return sum(1 for t in inputs if t.parameters and any(key in t.parameters for key in SHARED_MEMORY))


def nonnegative_int(param: pb.InferParameter) -> int | None:
    """A parameter's value when it is a non-negative integer (int64 or uint64), else None."""
    which = param.WhichOneof("parameter_choice")
    value = getattr(param, which) if which in ("int64_param", "uint64_param") else None
    return value if value is not None and value >= 0 else None


def class_count(name: str, parameters: Mapping[str, pb.InferParameter], datatype: str) -> int:
    """A requested output's parameters: the classification count asked for (0: the raw output).

    Raises InvalidInput for a count that is not a non-negative integer or an output that is not numeric.
    """
    param = parameters.get(CLASSIFICATION)
    if param is None:
        return 0
    count = nonnegative_int(param)
    if count is None:
        which = param.WhichOneof("parameter_choice")
        shown = getattr(param, which) if which else "(unset)"
        raise InvalidInput(f"output '{name}': the classification parameter must be a non-negative integer (the number of classes), got {shown!r}")
    if count and datatype in _NOT_CLASSIFIABLE:
        raise InvalidInput(f"output '{name}' is {datatype}: classification needs a numeric output; request it without the classification parameter")
    return int(count)


def classify(array: np.ndarray, count: int, labels: Sequence[str], batched: bool) -> np.ndarray:
    """The top ``count`` entries of each row of ``array`` as ``value:index[:label]`` (a BYTES array of
    ``np.object_``): shape ``[rows, k]`` when ``batched`` (the first dimension is the batch), else ``[k]``."""
    rows = array.shape[0] if batched and array.ndim else 1
    flat = array.reshape(rows, -1)
    n = flat.shape[1]
    k = min(count, n)
    top = _top_indices(flat, k)
    as_text = "%f" if flat.dtype.kind == "f" else "%d"
    labelled = len(labels)
    texts = [
        (f"{as_text % v}:{i}:{labels[i]}" if i < labelled and labels[i] else f"{as_text % v}:{i}").encode()
        for v, i in zip(np.take_along_axis(flat, top, axis=1).ravel().tolist(), top.ravel().tolist())
    ]
    out = np.empty(len(texts), dtype=np.object_)
    out[:] = texts
    return out.reshape((rows, k) if batched and array.ndim else (k,))


#: Rows up to this many values are sorted whole (cheaper than partitioning at this size).
_SORT_WHOLE_ROWS = 256


def _top_indices(flat: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's ``k`` highest values, highest first, ties by lower index (``1 <= k <= n``).

    Long rows: O(n) per row (a partition, then a sort of the k candidates), as the output's own copy costs; a
    row whose k-th value ties with values the partition left out is sorted whole (exact ties are rare in scores).
    """
    n = flat.shape[1]
    if n <= _SORT_WHOLE_ROWS or 4 * k >= n:  # a stable sort of each reversed row, read from the end
        return np.asarray(n - 1 - np.argsort(flat[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :k])
    candidates = np.argpartition(flat, n - k, axis=1)[:, n - k :]
    values = np.take_along_axis(flat, candidates, axis=1)
    # ascending by value with ties by higher index, reversed: descending, ties by lower index
    order = np.lexsort((-candidates, values), axis=-1)[:, ::-1]
    top = np.take_along_axis(candidates, order, axis=1)
    kth = values.min(axis=1, keepdims=True)
    tied = ((flat == kth).sum(axis=1) > (values == kth).sum(axis=1)).nonzero()[0]
    for r in tied:  # the partition may have kept a higher index of a tie: the stable full sort decides
        top[r] = n - 1 - np.argsort(flat[r, ::-1], kind="stable")[::-1][:k]
    return top
