"""Protocol messages <-> numpy: the only place tensors are decoded, validated and encoded.

``decode_request`` turns a ``ModelInferRequest`` into ``dict[str, np.ndarray]`` with zero copies for raw
inputs (``np.frombuffer`` over ``raw_input_contents``), after validating names, datatypes, shapes, batch
rows and byte sizes against the model's signature once. Every mismatch is an ``InvalidInput`` naming the
tensor and what was expected; sizes are checked against the received bytes before anything is allocated,
so a request claiming a huge shape costs nothing. ``encode_response`` writes each output as one
``raw_output_contents`` entry (Triton's clients index it per output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surge.protos import grpc_service_pb2 as pb
from surge.protos.datatypes import CONTENTS_FIELD, ElementTooLarge, deserialize_bytes_tensor, itemsize_of, numpy_dtype, serialize_bytes_tensor

from ..config import ModelConfig, TensorConfig
from ..errors import InvalidInput, LimitExceeded, Unsupported
from . import extensions
from .shared_memory import RequestRegions, Target, write_output
from .wire import MAX_HEAD_BYTES, WireRequest

__all__ = [
    "DEFAULT_LIMITS", "DecodedRequest", "Limits", "decode_request", "encode_header", "encode_outputs", "encode_response", "parameter_value",
    "with_raw_outputs",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Server-wide request limits (``surge serve`` flags), checked before anything is allocated.

    A breach is RESOURCE_EXHAUSTED naming the limit and its value. ``max_request_bytes`` is enforced by
    gRPC itself while receiving (its message: "Received message larger than max (N vs. M)").
    """

    max_request_bytes: int = 256 * 2**20
    """Largest request message (``--max-request-bytes``); also the largest ModelStreamInfer message."""
    max_tensor_elements: int = 2**24
    """Elements in one input tensor (``--max-tensor-elements``)."""
    max_request_elements: int = 2**25
    """Elements over all inputs of one request (``--max-request-elements``)."""
    max_batch_rows: int = 0
    """Rows per request, server-wide (``--max-batch-rows``); 0: each model's ``max_batch_size`` only."""
    max_bytes_element: int = 16 * 2**20
    """Bytes in one BYTES element (``--max-bytes-element``)."""
    max_concurrent_streams: int = 1024
    """HTTP/2 streams (concurrent RPCs) per client connection (``--max-concurrent-streams``), advertised to the client
    in the server's first SETTINGS frame; gRPC clients hold further calls in their own queue until a stream ends."""
    max_pending_calls: int = 4096
    """Calls received but not yet taken up by the event loop (it stalled), all connections together
    (``--max-pending-calls``); gRPC cancels calls beyond it (CANCELLED). Keep it above ``max_concurrent_streams``:
    then one connection's overflow is refused per stream (UNAVAILABLE, retryable) before gRPC cancels anything."""
    max_shared_memory_regions: int = 256
    """Registered shared-memory regions, all callers together (``--max-shared-memory-regions``)."""
    max_shared_memory_bytes: int = 64 * 2**30
    """Bytes of registered shared-memory regions mapped at once (``--max-shared-memory-bytes``)."""

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_tensor_elements", "max_request_elements", "max_bytes_element", "max_concurrent_streams", "max_pending_calls",
                     "max_shared_memory_regions", "max_shared_memory_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_request_bytes > 2**31 - 1:
            raise ValueError(f"max_request_bytes must be at most 2**31-1 (gRPC's limit), got {self.max_request_bytes}")
        if self.max_batch_rows < 0:
            raise ValueError(f"max_batch_rows must be 0 (no server-wide cap) or positive, got {self.max_batch_rows}")


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class _TensorSpec:
    name: str
    datatype: str
    dtype: np.dtype | None  # None for BF16 without ml_dtypes
    itemsize: int
    dims: tuple[int, ...]
    optional: bool
    labels: tuple[str, ...] = ()  # outputs: the classification labels (its label file's lines)


@dataclass(slots=True)
class _ModelSpec:
    name: str
    max_batch_size: int
    inputs: dict[str, _TensorSpec]
    required: frozenset[str]
    outputs: dict[str, _TensorSpec]
    output_names: tuple[str, ...]
    skeletons: dict[str, _Skeleton] = field(default_factory=dict)
    """Response skeletons by version string (``encode_header``), built on first use."""
    templates: dict[bytes, _Template] = field(default_factory=dict)
    """Decoded requests by their head's bytes (``decode_request``), remembered as they are first decoded."""


#: Templates remembered per loaded version (emptied when full: a client sending endless variety is decoded in full).
_MAX_TEMPLATES = 256


class _Template:
    """What decoding a request with a given head (``wire.WireRequest.head``: its parameters, inputs and outputs as
    sent) produced, for the limits it was checked against: per input its name, dtype, shape and byte count (-1:
    BYTES, decoded each time), and the rest of the DecodedRequest. A request whose head is a template's key is
    decoded as array views over its raw tensors and nothing else; any mismatch takes the full decode, which names
    the problem."""

    __slots__ = ("classes", "inputs", "limits", "output_names", "priority", "rows", "timeout_s")

    def __init__(self, spec: _ModelSpec, decoded: DecodedRequest, limits: Limits) -> None:
        self.limits = limits
        self.inputs = tuple(
            (name, spec.inputs[name], array.shape, -1 if spec.inputs[name].datatype == "BYTES" else array.nbytes) for name, array in decoded.inputs.items()
        )
        self.output_names = decoded.output_names
        self.rows = decoded.rows
        self.priority = decoded.priority
        self.timeout_s = decoded.timeout_s
        self.classes = decoded.classes

    def decode(self, raw: list[memoryview]) -> DecodedRequest | None:
        if len(raw) != len(self.inputs):
            return None
        inputs: dict[str, np.ndarray] = {}
        for (name, ts, shape, nbytes), data in zip(self.inputs, raw):
            if nbytes < 0:
                inputs[name] = _from_raw(ts, shape, data, self.limits.max_bytes_element)
            elif len(data) != nbytes:
                return None
            else:
                inputs[name] = np.ndarray(shape, ts.dtype, data)  # a view of the received bytes (read-only, as they are)
        return DecodedRequest(inputs, self.output_names, self.rows, self.priority, self.timeout_s, self.classes)


#: Shapes remembered per output by a skeleton (a model with free dims sees many; beyond this they are built each time).
_MAX_SHAPES = 1024


class _Skeleton:
    """The serialised fields of one model version's responses that do not change per request: model name and version,
    and per output its name and datatype; an output entry with its shape is built once per shape seen."""

    __slots__ = ("_entries", "_named", "head")

    def __init__(self, spec: _ModelSpec, version: str) -> None:
        self.head = _field(1, spec.name.encode()) + _field(2, version.encode())
        self._named = {name: _field(1, name.encode()) + _field(2, ts.datatype.encode()) for name, ts in spec.outputs.items()}
        self._entries: dict[tuple[str, tuple[int, ...]], bytes] = {}

    def output(self, name: str, shape: tuple[int, ...]) -> bytes:
        """The ``outputs`` entry (field 5) of output ``name`` with ``shape``."""
        key = (name, shape)
        entry = self._entries.get(key)
        if entry is None:
            dims = b"".join(map(_varint, shape))
            entry = _field(5, self._named[name] + (_field(3, dims) if dims else b""))
            if len(self._entries) < _MAX_SHAPES:
                self._entries[key] = entry
        return entry


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (number < 16)."""
    return bytes((number << 3 | 2,)) + _varint(len(data)) + data


@dataclass(slots=True)
class DecodedRequest:
    """A validated request: inputs by name, the outputs to compute, and the batch rows."""

    inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    rows: int
    priority: int = 0
    """Triton's ``priority`` parameter (0: the model's default level)."""
    timeout_s: float | None = None
    """Triton's ``timeout`` parameter (given in µs), in seconds; it may only shorten the queue policy's."""
    classes: dict[str, int] | None = None
    """Outputs asked for as classifications (Triton's extension, ``extensions.py``): output name -> classes per row."""
    targets: dict[str, Target] | None = None
    """Outputs to write into registered shared memory (``shared_memory.py``): output name -> where."""


def _tensor_spec(t: TensorConfig) -> _TensorSpec:
    try:
        dtype: np.dtype | None = numpy_dtype(t.datatype)
    except ValueError:  # BF16 without ml_dtypes
        dtype = None
    return _TensorSpec(t.name, t.datatype, dtype, itemsize_of(t.datatype), t.dims, t.optional, t.labels)


def model_spec(config: ModelConfig) -> _ModelSpec:
    """The lookup tables decode/encode use for one completed config (built once per loaded version)."""
    inputs = {t.name: _tensor_spec(t) for t in config.inputs}
    outputs = {t.name: _tensor_spec(t) for t in config.outputs}
    return _ModelSpec(
        name=config.name,
        max_batch_size=config.max_batch_size or 0,
        inputs=inputs,
        required=frozenset(n for n, s in inputs.items() if not s.optional),
        outputs=outputs,
        output_names=tuple(outputs),
    )


def decode_request(
    request: pb.ModelInferRequest | WireRequest, spec: _ModelSpec, limits: Limits = DEFAULT_LIMITS, regions: RequestRegions | None = None
) -> DecodedRequest:
    """Validate and decode a request's inputs; raises InvalidInput, LimitExceeded (or Unsupported for BF16 without ml_dtypes).

    ``regions``: the request's access to registered shared memory (None: a tensor in shared memory is UNIMPLEMENTED).

    A request from the gRPC edge (``wire.WireRequest``) whose head was decoded before for this version is decoded
    from that template; otherwise in full, and the result becomes a template when it depends on the head alone (every
    input in ``raw_input_contents``, no shared memory).
    """
    if isinstance(request, WireRequest):
        template = spec.templates.get(request.head) if request.head is not None else None
        if template is not None and template.limits is limits:
            decoded = template.decode(request.raw_input_contents)
            if decoded is not None:
                return decoded
        decoded = _decode(request, spec, limits, regions)
        # a template only where the head decides everything: every input raw (an input in shared memory has no raw
        # entry, one in typed contents has its data in the head) and no output written into shared memory
        if (
            request.head is not None and len(request.head) <= MAX_HEAD_BYTES and len(request.raw_input_contents) == len(decoded.inputs)
            and decoded.targets is None
        ):  # fmt: skip
            if len(spec.templates) >= _MAX_TEMPLATES:
                spec.templates.clear()
            spec.templates[request.head] = _Template(spec, decoded, limits)
        return decoded
    return _decode(request, spec, limits, regions)


def _decode(
    request: pb.ModelInferRequest | WireRequest, spec: _ModelSpec, limits: Limits, regions: RequestRegions | None
) -> DecodedRequest:
    raw = request.raw_input_contents
    n_inputs = len(request.inputs)
    if raw and len(raw) != n_inputs:
        in_memory = extensions.shared_memory_inputs(request.inputs)  # an input in shared memory has no raw entry
        if not in_memory:
            raise InvalidInput(f"request has {n_inputs} inputs but {len(raw)} raw_input_contents entries; send one per input, in order")
        if len(raw) != n_inputs - in_memory:
            raise InvalidInput(
                f"request has {n_inputs} inputs ({in_memory} in shared memory) but {len(raw)} raw_input_contents entries; "
                "send one per input not in shared memory, in order"
            )
    inputs: dict[str, np.ndarray] = {}
    rows = -1
    elements = 0
    index = -1
    for tensor in request.inputs:
        name = tensor.name
        ts = spec.inputs.get(name)
        if ts is None:
            raise InvalidInput(f"unexpected input '{name}' for model '{spec.name}'; its inputs are {sorted(spec.inputs)}")
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears twice in the request")
        in_memory = bool(tensor.parameters) and extensions.in_shared_memory(name, tensor.parameters, regions)
        if tensor.datatype != ts.datatype:
            raise InvalidInput(f"input '{name}' has datatype {tensor.datatype or '(empty)'} but model '{spec.name}' expects {ts.datatype}")
        shape = tuple(tensor.shape)
        tensor_rows = _check_shape(spec, ts, shape)
        if rows < 0:
            rows = tensor_rows
        elif tensor_rows != rows:
            raise InvalidInput(f"input '{name}' has {tensor_rows} rows but an earlier input has {rows}; all inputs need the same batch size")
        count = math.prod(shape)
        elements += count
        if count > limits.max_tensor_elements or elements > limits.max_request_elements or (limits.max_batch_rows and tensor_rows > limits.max_batch_rows):
            _limit_breach(name, shape, count, elements, tensor_rows, spec, limits)
        if ts.dtype is None:
            raise Unsupported(f"input '{name}' is BF16, which needs the ml_dtypes package on the server")
        if in_memory:
            inputs[name] = regions.input(name, tensor.parameters, ts.datatype, ts.dtype, ts.itemsize, shape, limits.max_bytes_element)  # type: ignore[union-attr]
        elif raw:
            if tensor.HasField("contents"):  # Triton refuses this too: which one would the model see?
                raise InvalidInput(f"input '{name}' has both raw_input_contents and contents; send its data in one of them")
            index += 1
            inputs[name] = _from_raw(ts, shape, raw[index], limits.max_bytes_element)
        else:
            inputs[name] = _from_contents(ts, shape, tensor, limits.max_bytes_element)
    missing = spec.required - inputs.keys()
    if missing:
        raise InvalidInput(f"missing input(s) {sorted(missing)} for model '{spec.name}'; it needs {sorted(spec.required)}")
    output_names, classes, targets = _requested_outputs(request, spec, regions)
    decoded = DecodedRequest(inputs, output_names, max(rows, 1), classes=classes, targets=targets)
    if request.parameters:
        _read_parameters(request, decoded)
    return decoded


def _limit_breach(name: str, shape: tuple[int, ...], count: int, elements: int, rows: int, spec: _ModelSpec, limits: Limits) -> None:
    if count > limits.max_tensor_elements:
        raise LimitExceeded(
            f"input '{name}' has shape {list(shape)} = {count} elements, above the server's max_tensor_elements = {limits.max_tensor_elements}"
        )
    if elements > limits.max_request_elements:
        raise LimitExceeded(
            f"the request's inputs have {elements} elements (so far, at input '{name}'), above the server's max_request_elements = {limits.max_request_elements}"
        )
    raise LimitExceeded(f"input '{name}' has batch size {rows}, above the server's max_batch_rows = {limits.max_batch_rows}")


def _read_parameters(request: pb.ModelInferRequest | WireRequest, decoded: DecodedRequest) -> None:
    params = request.parameters
    if "priority" in params:
        priority = parameter_value(params["priority"])
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise InvalidInput(f"parameter 'priority' must be a non-negative integer, got {priority!r}")
        decoded.priority = priority
    if "timeout" in params:
        timeout_us = parameter_value(params["timeout"])
        if isinstance(timeout_us, bool) or not isinstance(timeout_us, int | float) or not 0 <= timeout_us < math.inf:
            raise InvalidInput(f"parameter 'timeout' must be a non-negative number of microseconds (finite), got {timeout_us!r}")
        decoded.timeout_s = timeout_us / 1e6 if timeout_us else None


def _check_shape(spec: _ModelSpec, ts: _TensorSpec, shape: tuple[int, ...]) -> int:
    batched = spec.max_batch_size > 0
    inner = shape[1:] if batched else shape
    if len(inner) != len(ts.dims) or (batched and not shape) or any(d < 0 for d in shape):
        raise InvalidInput(f"input '{ts.name}' has shape {list(shape)} but model '{spec.name}' expects {_expected_shape(spec, ts)}")
    for got, want in zip(inner, ts.dims):
        if want != -1 and got != want:
            raise InvalidInput(f"input '{ts.name}' has shape {list(shape)} but model '{spec.name}' expects {_expected_shape(spec, ts)}")
    if not batched:
        return 1
    rows = shape[0]
    if rows < 1 or rows > spec.max_batch_size:
        raise InvalidInput(f"input '{ts.name}' has batch size {rows} but model '{spec.name}' accepts 1 to {spec.max_batch_size} rows per request (max_batch_size)")
    return rows


def _expected_shape(spec: _ModelSpec, ts: _TensorSpec) -> str:
    """The shape a model accepts for an input, as an error message shows it (built only on the error path)."""
    batched = spec.max_batch_size > 0
    if not ts.dims:
        return "[-1]" if batched else "[]"
    return ("[-1, " if batched else "[") + ", ".join(map(str, ts.dims)) + "]"


def _from_raw(ts: _TensorSpec, shape: tuple[int, ...], data: bytes | memoryview, max_bytes_element: int) -> np.ndarray:
    count = math.prod(shape)
    if ts.datatype == "BYTES":
        try:
            return deserialize_bytes_tensor(data, count, max_bytes_element).reshape(shape)
        except ElementTooLarge as exc:
            raise LimitExceeded(f"input '{ts.name}': {exc} (the server's max_bytes_element)") from None
        except ValueError as exc:
            raise InvalidInput(f"input '{ts.name}': {exc}") from None
    expected = count * ts.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"input '{ts.name}' has {len(data)} bytes of raw data but shape {list(shape)} of {ts.datatype} needs {expected} bytes"
        )
    return np.frombuffer(data, dtype=ts.dtype).reshape(shape)


def _from_contents(ts: _TensorSpec, shape: tuple[int, ...], tensor: Any, max_bytes_element: int) -> np.ndarray:
    field = CONTENTS_FIELD.get(ts.datatype)
    if field is None:
        raise InvalidInput(f"input '{ts.name}' is {ts.datatype}, which must be sent in raw_input_contents (it has no typed contents field)")
    if not tensor.HasField("contents"):
        raise InvalidInput(f"input '{ts.name}' has no data: set raw_input_contents or contents.{field}")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"input '{ts.name}' has {len(values)} values in contents.{field} but shape {list(shape)} needs {count}")
    if ts.datatype == "BYTES":
        longest = max(map(len, values), default=0)
        if longest > max_bytes_element:
            raise LimitExceeded(f"input '{ts.name}': a BYTES element has {longest} bytes, above the server's max_bytes_element = {max_bytes_element}")
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        # list(): numpy wraps out-of-range values from protobuf's container silently, but raises for a list
        return np.array(list(values), dtype=ts.dtype).reshape(shape)
    except OverflowError:
        raise InvalidInput(f"input '{ts.name}': a value in contents.{field} does not fit {ts.datatype}") from None


def _requested_outputs(
    request: pb.ModelInferRequest | WireRequest, spec: _ModelSpec, regions: RequestRegions | None
) -> tuple[tuple[str, ...], dict[str, int] | None, dict[str, Target] | None]:
    """The outputs to compute, those asked for as classifications (name -> classes per row; None: none), and those
    to write into shared memory (name -> where; None: none)."""
    if not request.outputs:
        return spec.output_names, None, None
    names: list[str] = []
    classes: dict[str, int] | None = None
    targets: dict[str, Target] | None = None
    for out in request.outputs:
        ts = spec.outputs.get(out.name)
        if ts is None:
            raise InvalidInput(f"unknown output '{out.name}' requested from model '{spec.name}'; its outputs are {list(spec.output_names)}")
        if out.parameters:
            if extensions.in_shared_memory(out.name, out.parameters, regions, "output"):
                targets = targets or {}
                targets[out.name] = regions.output(out.name, out.parameters)  # type: ignore[union-attr]
            count = extensions.class_count(out.name, out.parameters, ts.datatype)
            if count:
                classes = classes or {}
                classes[out.name] = count
        if out.name not in names:
            names.append(out.name)
    return tuple(names), classes, targets


def encode_outputs(
    request: pb.ModelInferRequest, spec: _ModelSpec, version: str, outputs: dict[str, np.ndarray], output_names: tuple[str, ...],
    classes: dict[str, int] | None = None, targets: dict[str, Target] | None = None,
) -> tuple[pb.ModelInferResponse, list[np.ndarray]]:
    """The response without its ``raw_output_contents``, and the arrays that go there (one per output, in the order
    requested; numeric ones in their wire dtype, BYTES ones as they came; a classification as its BYTES strings; an
    output written into shared memory (``targets``) as an empty array, its response entry carrying the region)."""
    response = pb.ModelInferResponse(model_name=spec.name, model_version=version, id=request.id)
    arrays = []
    for name in output_names:
        ts = spec.outputs[name]
        array = outputs[name]
        datatype = ts.datatype
        if classes is not None and name in classes:
            array = extensions.classify(array, classes[name], ts.labels, spec.max_batch_size > 0)
            datatype = "BYTES"
        elif datatype != "BYTES" and array.dtype != ts.dtype:  # the execution path's output check makes this rare
            array = array.astype(ts.dtype)
        added = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if targets is not None and name in targets:
            target = targets[name]
            write_output(name, target, array, datatype)
            params = added.parameters
            params["shared_memory_region"].string_param = target.region.name
            params["shared_memory_byte_size"].int64_param = target.byte_size
            if target.offset:
                params["shared_memory_offset"].int64_param = target.offset
            array = _NO_DATA  # an empty raw entry keeps the other outputs' indices as Triton's
        arrays.append(array)
    return response, arrays


_NO_DATA = np.empty(0, np.uint8)


def encode_response(
    request: pb.ModelInferRequest, spec: _ModelSpec, version: str, outputs: dict[str, np.ndarray], output_names: tuple[str, ...],
    classes: dict[str, int] | None = None, targets: dict[str, Target] | None = None,
) -> pb.ModelInferResponse:
    """Build the response: one ``raw_output_contents`` entry per output, in the order requested.

    ``classes``: outputs asked for as classifications (``DecodedRequest.classes``), sent as BYTES ``value:index[:label]``.
    ``targets``: outputs written into shared memory (``DecodedRequest.targets``): the response carries their name,
    datatype, shape and shared-memory parameters, and an empty raw entry (so the others' indices stay as Triton's).
    """
    return with_raw_outputs(*encode_outputs(request, spec, version, outputs, output_names, classes, targets))


def encode_header(
    request_id: str, spec: _ModelSpec, version: str, outputs: dict[str, np.ndarray], output_names: tuple[str, ...],
    classes: dict[str, int] | None = None, targets: dict[str, Target] | None = None, parameters: bytes = b"",
) -> tuple[bytes, list[np.ndarray]]:
    """``encode_outputs`` as wire bytes: the serialised ModelInferResponse without its ``raw_output_contents``, and the
    arrays that go there (``wire.join`` or ``wire.assemble`` append them). ``parameters``: serialised ``parameters``
    entries to add (e.g. the stream's final flag). Without classifications or shared-memory outputs the header is
    put together from the version's precomputed skeleton (no protobuf message is built)."""
    if classes is not None or targets is not None:
        response, arrays = encode_outputs(pb.ModelInferRequest(id=request_id), spec, version, outputs, output_names, classes, targets)
        return response.SerializeToString() + parameters, arrays
    skeleton = spec.skeletons.get(version)
    if skeleton is None:
        skeleton = spec.skeletons[version] = _Skeleton(spec, version)
    parts = [skeleton.head, _field(3, request_id.encode()) if request_id else b"", parameters]
    arrays = []
    for name in output_names:
        ts = spec.outputs[name]
        array = outputs[name]
        if ts.datatype != "BYTES" and array.dtype != ts.dtype:  # the execution path's output check makes this rare
            array = array.astype(ts.dtype)
        parts.append(skeleton.output(name, array.shape))
        arrays.append(array)
    return b"".join(parts), arrays


def with_raw_outputs(response: pb.ModelInferResponse, arrays: list[np.ndarray]) -> pb.ModelInferResponse:
    """``encode_outputs``' response with its arrays copied into ``raw_output_contents``."""
    response.raw_output_contents.extend(
        serialize_bytes_tensor(a) if t.datatype == "BYTES" else a.tobytes() for a, t in zip(arrays, response.outputs)
    )
    return response


def parameter_value(param: pb.InferParameter) -> bool | int | float | str | None:
    """The Python value of an InferParameter (None when unset)."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)
