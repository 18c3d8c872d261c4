"""HTTP/JSON bodies <-> the data plane's arguments and answers: the REST edge's only translation.

The REST edge (``rest.py``) does not validate tensors against models, batch or count statistics itself: it
describes each HTTP inference request in the protocol's ``ModelInferRequest`` shape (its tensors' bytes beside
it, as views of the body) and hands it to the data plane (``server/dataplane.py``), so every check (``codec``),
every limit, the batcher and the statistics are the ones gRPC requests go through. This module is that
translation, both ways, and nothing else:

- **Inference requests** (the Open Inference Protocol's JSON, plus Triton's binary tensor data extension):
  a JSON header, optionally followed by binary tensor data when ``Inference-Header-Content-Length`` gives
  the header's size. An input with the ``binary_data_size`` parameter takes that many bytes of the binary
  section, in input order; one with ``data`` gives its values as a (flat or nested) JSON list. Every input
  becomes one ``raw_input_contents`` entry (little-endian, row-major; BYTES length-prefixed), so ``codec``
  decodes both kinds the same way. JSON values are checked against the datatype here (kind and range)
  because only here are they still JSON.
- **Inference responses** (from the output arrays, never through protobuf): each output goes back as JSON ``data`` or, when asked for (the output's
  ``binary_data`` parameter, else the request's ``binary_data_output``), as binary data after the JSON
  header with ``binary_data_size`` in its parameters; BF16 always goes binary (JSON has no such number).
- **Model configuration and statistics**: Triton's protobuf messages as JSON with their proto field names, defaults included and
  64-bit integers as JSON numbers (protobuf's own JSON mapping writes them as strings; Triton's HTTP
  endpoint writes numbers, and tools read numbers).

Errors are the protocol-neutral ``errors.InvalidInput``; the edge maps them. Tensor parameters of Triton's
extensions (classification, shared memory) are passed on in the message: ``codec`` checks them for both edges.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, cast

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from surge.protos import grpc_service_pb2 as pb
from surge.protos.datatypes import DATATYPES, deserialize_bytes_tensor, numpy_dtype, serialize_bytes_tensor

from ..errors import InvalidInput
from .codec import parameter_value
from .extensions import SHARED_MEMORY
from .jsonread import read_json, yield_gil

__all__ = [
    "HEADER_LENGTH", "InferRequest", "RestInferRequest", "decode_infer_request", "encode_infer_response", "index_ready", "json_dumps", "load_parameters", "message_to_json",
    "optional_object",
]

#: Triton's binary tensor data extension: the size of the JSON header when binary data follows it.
HEADER_LENGTH = "Inference-Header-Content-Length"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class RestInferRequest:
    """What ``DataPlane.infer`` gets from this edge: the ``ModelInferRequest``'s metadata (inputs without
    contents, parameters, outputs, id) and, beside it, each input's bytes as a buffer (a view of the HTTP body, or
    the array built from JSON ``data``), so no tensor is copied into the message and out again (``codec`` reads
    ``raw_input_contents`` with ``np.frombuffer``). Every other attribute is the message's."""

    __slots__ = ("message", "raw_input_contents")

    def __init__(self, message: pb.ModelInferRequest) -> None:
        self.message = message
        self.raw_input_contents: list[memoryview | bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)


@dataclass(slots=True)
class InferRequest:
    """A decoded HTTP inference request: what the data plane receives, and which outputs go back as binary data."""

    message: RestInferRequest
    binary_default: bool = False
    """The request's ``binary_data_output`` parameter: outputs without their own ``binary_data`` go binary."""
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    """Outputs that set ``binary_data`` themselves."""

    def binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_default)


def json_body(data: bytes | memoryview | Iterable[bytes], what: str) -> dict[str, Any]:
    """A request body that must be one JSON object; InvalidInput naming ``what`` otherwise."""
    return _json_object(data, what)


def _json_object(data: bytes | bytearray | memoryview | Iterable[bytes], what: str) -> dict[str, Any]:
    value = read_json(data, what)
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _header_length(value: str | None, body_size: int) -> int:
    if value is None:
        return body_size
    try:
        length = int(value)
    except ValueError:
        raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if not 0 < length <= body_size:
        raise InvalidInput(f"{HEADER_LENGTH} is {length} but the request body has {body_size} bytes; it must be 1..{body_size}")
    return length


def decode_infer_request(
    body: bytes | bytearray | memoryview | Iterable[bytes], header_length: str | None, model_name: str, model_version: str
) -> InferRequest:
    """Build the request the data plane runs for an HTTP inference request; raises InvalidInput or Unsupported.

    ``body``: the whole (decompressed) request body, or, when it is all JSON, its pieces in order (parsed as
    they come); ``header_length``: the ``Inference-Header-Content-Length`` header (None: the body is all JSON).
    Meant for a worker thread: every step over the body's size is a bounded one (``jsonread``, ``_leaves``).
    """
    if header_length is None:
        doc = _json_object(body, "the inference request")
        binary = memoryview(b"")
    else:
        if not isinstance(body, bytes | bytearray | memoryview):
            body = b"".join(body)
        view = memoryview(body)
        json_end = _header_length(header_length, len(view))
        doc = _json_object(view[:json_end], "the inference request")
        binary = view[json_end:]
    message = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    request = InferRequest(RestInferRequest(message))
    request_id = doc.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise InvalidInput(f"'id' must be a string, got {type(request_id).__name__}")
        message.id = request_id
    parameters = _object(doc.get("parameters"), "'parameters'")
    for key, value in parameters.items():
        if key == "binary_data_output":
            if not isinstance(value, bool):
                raise InvalidInput(f"parameter 'binary_data_output' must be true or false, got {value!r}")
            request.binary_default = value
        else:
            _set_parameter(message.parameters[key], value, f"parameter '{key}'")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("the inference request needs 'inputs': a non-empty list of tensors")
    offset = 0
    for index, tensor in enumerate(inputs):
        offset = _add_input(request.message, tensor, index, binary, offset)
    if offset != len(binary):
        raise InvalidInput(
            f"the request has {len(binary)} bytes of binary tensor data but its inputs' binary_data_size add up to {offset}"
        )
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects")
        for index, out in enumerate(outputs):
            _add_output(request, out, index)
    return request


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _set_parameter(target: pb.InferParameter, value: Any, what: str) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            target.int64_param = value
        elif 0 <= value < 2**64:
            target.uint64_param = value
        else:
            raise InvalidInput(f"{what} is {value}, which does not fit 64 bits")
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        raise InvalidInput(f"{what} must be a boolean, number or string, got {type(value).__name__}")


def _add_input(message: RestInferRequest, tensor: Any, index: int, binary: memoryview, offset: int) -> int:
    """Append one input (its metadata and raw contents); returns the new offset into the binary section."""
    if not isinstance(tensor, dict):
        raise InvalidInput(f"inputs[{index}] must be a JSON object with name, datatype, shape and data")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}] needs a 'name' (a non-empty string)")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(f"input '{name}' has datatype {datatype!r}; the datatypes are {sorted(DATATYPES)}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _INT64_MAX for d in shape):
        raise InvalidInput(f"input '{name}' needs a 'shape': a list of non-negative integers, got {shape!r}")
    parameters = _object(tensor.get("parameters"), f"input '{name}' parameters")
    if any(key in parameters for key in SHARED_MEMORY):  # no data here: the parameters go on, codec answers them as for gRPC
        added = message.message.inputs.add(name=name, datatype=datatype, shape=shape)
        for key, value in parameters.items():
            _set_parameter(added.parameters[key], value, f"input '{name}' parameter '{key}'")
        return offset
    size = parameters.get("binary_data_size")
    data = tensor.get("data")
    if size is not None:
        if data is not None:
            raise InvalidInput(f"input '{name}' has both 'data' and the binary_data_size parameter; send one")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}")
        end = offset + size
        if end > len(binary):
            raise InvalidInput(
                f"input '{name}' has binary_data_size {size} but only {len(binary) - offset} bytes of binary data are left in the request"
            )
        raw: bytes | memoryview = binary[offset:end]
        offset = end
    elif data is not None:
        raw = _json_tensor_bytes(name, datatype, shape, data)
        tensor["data"] = None  # its values are in ``raw`` now: free them before the next input's
    else:
        raise InvalidInput(f"input '{name}' has no data: give 'data' or the binary_data_size parameter")
    message.message.inputs.add(name=name, datatype=datatype, shape=shape)
    message.raw_input_contents.append(raw)
    return offset


STEP = 1 << 15
"""JSON values converted per step (each step a short call, so a worker thread leaves the event loop its turns)."""

_NONFINITE_IN = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


_NONES = [None] * STEP


def _leaves(values: list[Any]) -> Iterator[list[Any]]:
    """The leaves of a flat or nested JSON list in row-major order, in slices of about ``STEP`` values.

    Consumes ``values``: each slice's entries are set to None once the caller has taken it, so the parsed numbers
    are freed a step at a time (freeing a list of millions at once holds the GIL for a long time)."""
    stack: list[tuple[list[Any], int]] = [(values, 0)]
    while stack:
        current, start = stack.pop()
        while start < len(current):
            part = current[start:start + STEP]
            types = set(map(type, part))
            if list not in types:
                yield part
                current[start:start + len(part)] = _NONES[:len(part)]
                start += len(part)
                continue
            if types == {list}:  # rows: flatten about STEP values' worth of them in one step, then go on inside
                rows = part[: max(1, STEP // max(len(part[0]), 1))]
                flat = list(chain.from_iterable(rows))
                current[start:start + len(rows)] = _NONES[:len(rows)]
                stack.append((current, start + len(rows)))
                stack.append((flat, 0))
                break
            first = next(i for i, v in enumerate(part) if type(v) is list)  # leaves and lists mixed
            if first:
                yield part[:first]
                current[start:start + first] = _NONES[:first]
                start += first
                continue
            stack.append((current, start + 1))
            stack.append((part[0], 0))
            break


def _json_tensor_bytes(name: str, datatype: str, shape: list[int], data: Any) -> bytes | memoryview:
    """One JSON ``data`` list as raw little-endian bytes of ``datatype``, checked (kind and range) step by step."""
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a JSON list, got {type(data).__name__}")
    if datatype == "BF16":
        raise InvalidInput(f"input '{name}' is BF16, which has no JSON form: send it as binary data (binary_data_size)")
    count = math.prod(shape)
    leaves = _leaves(data)
    if datatype == "BYTES":
        parts: list[bytes] = []
        filled = 0
        for part in leaves:
            filled += len(part)
            if filled > count:
                break
            if set(map(type, part)) - {str}:
                raise InvalidInput(f"input '{name}' is BYTES: its JSON 'data' must be strings (send other bytes as binary data)")
            array = np.empty(len(part), dtype=np.object_)
            array[:] = part
            parts.append(serialize_bytes_tensor(array))
        _check_count(name, shape, count, filled, leaves)
        return b"".join(parts)
    dtype = numpy_dtype(datatype)
    convert = _BOOLS if dtype.kind == "b" else _integers if dtype.kind in "iu" else _floats
    chunks: list[np.ndarray] = []  # not one array of the shape's size: the shape is not checked against the limits yet
    filled = 0
    for part in leaves:
        filled += len(part)
        if filled > count:
            break
        if chunks:
            yield_gil()
        try:
            chunks.append(np.asarray(convert(name, datatype, dtype, part), dtype=dtype))
        except OverflowError:  # an integer beyond what a double holds
            raise InvalidInput(f"input '{name}': a value in 'data' is beyond the range of {datatype}") from None
    _check_count(name, shape, count, filled, leaves)
    out = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.empty(0, dtype=dtype)
    return memoryview(out).cast("B")  # type: ignore[arg-type]  # numpy declares __buffer__ for 3.12+ only


def _check_count(name: str, shape: list[int], count: int, filled: int, rest: Iterator[list[Any]]) -> None:
    if filled != count:
        total = filled + sum(map(len, rest))
        raise InvalidInput(f"input '{name}' has {total} values in 'data' but shape {shape} needs {count}")


def _BOOLS(name: str, datatype: str, dtype: np.dtype, part: list[Any]) -> list[Any]:
    if set(map(type, part)) - {bool}:
        raise InvalidInput(f"input '{name}' is BOOL: its 'data' must be true/false values")
    return part


def _integers(name: str, datatype: str, dtype: np.dtype, part: list[Any]) -> list[Any]:
    types = set(map(type, part))
    if types - {int}:
        kind = "integers" if types <= {int, float} else "numbers"
        raise InvalidInput(f"input '{name}' is {datatype}: its 'data' must be {kind}")
    info = np.iinfo(dtype)
    if part and (min(part) < info.min or max(part) > info.max):
        raise InvalidInput(f"input '{name}': a value in 'data' does not fit {datatype} ({info.min}..{info.max})")
    return part


_FINITE_MAX = {"FP16": 65504.0, "FP32": float(np.finfo(np.float32).max), "FP64": math.inf}


def _floats(name: str, datatype: str, dtype: np.dtype, part: list[Any]) -> list[Any]:
    types = set(map(type, part))
    if str in types:  # the non-finite values as this edge writes them (see _json_data)
        part = [_nonfinite(name, datatype, v) if type(v) is str else v for v in part]
        types.discard(str)
    if types - {int, float}:
        raise InvalidInput(f"input '{name}' is {datatype}: its 'data' must be numbers")
    finite_max = _FINITE_MAX[datatype]
    try:
        beyond = part and (max(part) > finite_max or min(part) < -finite_max)
    except OverflowError:  # an integer too large for a float comparison
        beyond = True
    if beyond:  # find the value (infinities came from the strings above, and are allowed)
        values = [v for v in part if (abs(v) > finite_max if isinstance(v, int) else not math.isinf(v) and abs(v) > finite_max)]
        if values:
            value = values[0]
            shown = f"{value:g}" if isinstance(value, float) else f"{value:.3g}" if abs(value) < 1e300 else "an integer of " + str(len(str(value))) + " digits"
            raise InvalidInput(
                f"input '{name}': the value {shown} in 'data' is beyond the range of {datatype} (±{finite_max:g}); send it as FP64 or as binary data"
            )
    return part


def _nonfinite(name: str, datatype: str, value: str) -> float:
    try:
        return _NONFINITE_IN[value]
    except KeyError:
        raise InvalidInput(
            f"input '{name}' is {datatype}: its 'data' must be numbers (or the strings \"NaN\", \"Infinity\", \"-Infinity\"), got {value[:40]!r}"
        ) from None


def _add_output(request: InferRequest, out: Any, index: int) -> None:
    if not isinstance(out, dict) or not isinstance(out.get("name"), str):
        raise InvalidInput(f"outputs[{index}] must be a JSON object with a 'name'")
    name = out["name"]
    parameters = _object(out.get("parameters"), f"output '{name}' parameters")
    wanted = parameters.get("binary_data")
    if wanted is not None:
        if not isinstance(wanted, bool):
            raise InvalidInput(f"output '{name}': binary_data must be true or false, got {wanted!r}")
        request.binary_outputs[name] = wanted
    added = request.message.outputs.add(name=name)
    for key, value in parameters.items():  # classification, shared memory, ...: codec checks them as for gRPC
        if key != "binary_data":
            _set_parameter(added.parameters[key], value, f"output '{name}' parameter '{key}'")


def encode_infer_response(response: pb.ModelInferResponse, arrays: Sequence[np.ndarray], request: InferRequest) -> tuple[bytes, int | None]:
    """The HTTP body for an inference response, and the JSON header's length when binary data follows it (else None).

    ``response`` and ``arrays``: what ``codec.encode_outputs`` gives (the outputs' names, datatypes, shapes and
    parameters; one array per output). A binary output's bytes are read from its array where they lie and copied
    once, into the body; each JSON ``data`` list is written ``STEP`` values at a time (so a worker thread leaves the
    event loop its turns); non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``,
    which strict JSON parsers read (bare ``NaN`` is not JSON) and numpy turns back into floats.
    Raises InvalidInput when a BYTES output asked for as JSON is not UTF-8 text.
    """
    head = json_dumps({"model_name": response.model_name, "model_version": response.model_version, **({"id": response.id} if response.id else {})})
    outputs: list[bytes] = []
    chunks: list[bytes | memoryview] = []
    for tensor, array in zip(response.outputs, arrays):
        shape = list(tensor.shape)
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}
        if "shared_memory_region" in tensor.parameters:  # written into the caller's region: no data here (as Triton)
            entry["parameters"] = {k: parameter_value(v) for k, v in tensor.parameters.items()}
            outputs.append(json_dumps(entry))
        elif tensor.datatype == "BF16" or request.binary(tensor.name):
            data = _raw_bytes(tensor.datatype, array)
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
            outputs.append(json_dumps(entry))
        else:
            outputs.append(json_dumps(entry)[:-1] + b',"data":' + _json_data(tensor.name, tensor.datatype, array, math.prod(shape)) + b"}")
    header = b"".join((head[:-1], b',"outputs":[', b",".join(outputs), b"]}"))
    if not chunks:
        return header, None
    return b"".join((header, *chunks)), len(header)


def _raw_bytes(datatype: str, array: np.ndarray) -> bytes | memoryview:
    """An output's wire bytes: a view of a numeric array's memory (row-major; copied only when it is not contiguous),
    or a BYTES array's length-prefixed elements."""
    if datatype == "BYTES":
        prefixed: bytes = serialize_bytes_tensor(array)
        return prefixed
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


_NONFINITE_OUT = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _json_data(name: str, datatype: str, array: np.ndarray, count: int) -> bytes:
    """One output's values as a flat JSON array (its text), ``STEP`` values per step."""
    if datatype == "BYTES":
        try:
            values: Any = [v.decode("utf-8") for v in deserialize_bytes_tensor(serialize_bytes_tensor(array), count)]
        except UnicodeDecodeError:
            raise InvalidInput(f"output '{name}' holds bytes that are not UTF-8 text; ask for it as binary data (binary_data: true)") from None
    else:
        values = array.reshape(-1)
    floats = datatype in ("FP16", "FP32", "FP64")
    parts: list[str] = []
    for start in range(0, len(values), STEP):
        if start:
            yield_gil()
        part = values[start:start + STEP]
        if floats and not np.isfinite(part).all():
            items = [v if math.isfinite(v) else _NONFINITE_OUT.get(v, "NaN") for v in part.tolist()]
        else:
            items = part if isinstance(part, list) else part.tolist()
        parts.append(json.dumps(items, separators=(",", ":"), allow_nan=False)[1:-1])
    return ("[" + ",".join(filter(None, parts)) + "]").encode()


def json_dumps(doc: Any) -> bytes:
    """Compact UTF-8 JSON (strict: a non-finite float is an error, never a bare ``NaN``)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def index_ready(body: bytes | Iterable[bytes]) -> bool:
    """The ``ready`` flag of a repository index request body (``{"ready": true}``; may be empty)."""
    ready = optional_object(body, "the repository index request").get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput(f"'ready' must be true or false, got {ready!r}")
    return ready


def optional_object(body: bytes | Iterable[bytes], what: str) -> dict[str, Any]:
    """A JSON object body, or {} for an empty or blank one."""
    pieces = [body] if isinstance(body, bytes | bytearray | memoryview) else body
    if not any(bytes(piece).strip() for piece in pieces):
        return {}
    return _json_object(cast("Iterable[bytes]", pieces), what)


def load_parameters(body: bytes | Iterable[bytes]) -> dict[str, str | int | bool]:
    """The parameters of a repository load request body (``{"parameters": {"config": "<JSON>", ...}}``; may be empty).

    ``config`` may also be given as a JSON object (convenient with curl); it is passed on as its JSON text.
    """
    doc = optional_object(body, "the load request")
    out: dict[str, str | int | bool] = {}
    for key, value in _object(doc.get("parameters"), "'parameters'").items():
        if key == "config" and isinstance(value, dict):
            value = json_dumps(value).decode()
        if isinstance(value, bool | str) or (isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX):
            out[key] = value
        else:
            raise InvalidInput(f"load parameter '{key}' must be a string, 64-bit integer or boolean, got {type(value).__name__}")
    return out


def message_to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton's HTTP endpoint writes it: proto field names, defaults, 64-bit integers as numbers."""
    doc: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _int64_as_numbers(message.DESCRIPTOR, doc)  # type: ignore[arg-type]  # upb's Descriptor is the same class at run time
    return doc


_INT64_TYPES = frozenset((FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64))


def _int64_as_numbers(descriptor: Descriptor, doc: Mapping[str, Any]) -> None:
    for name, value in doc.items():
        fd = descriptor.fields_by_name.get(name)
        if fd is None:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            items = list(value.items())
            if value_fd.message_type is not None:
                for _, item in items:
                    _int64_as_numbers(value_fd.message_type, item)
            elif value_fd.type in _INT64_TYPES:
                for key, item in items:
                    value[key] = int(item)
        elif fd.message_type is not None:
            for item in value if isinstance(value, list) else (value,):
                _int64_as_numbers(fd.message_type, item)
        elif fd.type in _INT64_TYPES:
            doc[name] = [int(v) for v in value] if isinstance(value, list) else int(value)  # type: ignore[index]
