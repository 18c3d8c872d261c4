"""HTTP/JSON bodies <-> the protocol messages the gRPC edge already serves: the REST edge's only translation.

The REST edge (``rest.py``) does not validate tensors against models, batch or count statistics itself: it
turns each HTTP request into the same ``inference.*`` request message a gRPC client would send and hands
it to the servicer, so every check (``codec``), every limit, the batcher and the statistics are the ones
gRPC requests go through. This module is that translation, both ways, and nothing else:

- **Inference requests** (the Open Inference Protocol's JSON, plus Triton's binary tensor data extension):
  a JSON header, optionally followed by binary tensor data when ``Inference-Header-Content-Length`` gives
  the header's size. An input with the ``binary_data_size`` parameter takes that many bytes of the binary
  section, in input order; one with ``data`` gives its values as a (flat or nested) JSON list. Every input
  becomes one ``raw_input_contents`` entry (little-endian, row-major; BYTES length-prefixed), so ``codec``
  decodes both kinds the same way. JSON values are checked against the datatype here (kind and range)
  because only here are they still JSON.
- **Inference responses**: each output goes back as JSON ``data`` or, when asked for (the output's
  ``binary_data`` parameter, else the request's ``binary_data_output``), as binary data after the JSON
  header with ``binary_data_size`` in its parameters; BF16 always goes binary (JSON has no such number).
- **Other responses**: protobuf messages as JSON with their proto field names, defaults included and
  64-bit integers as JSON numbers (protobuf's own JSON mapping writes them as strings; Triton's HTTP
  endpoint writes numbers, and tools read numbers).

Errors are the protocol-neutral ``errors.InvalidInput``; the edge maps them. Tensor parameters of Triton's
extensions (classification, shared memory) are passed on in the message: ``codec`` checks them for both edges.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from surge.protos import grpc_service_pb2 as pb
from surge.protos.datatypes import DATATYPES, deserialize_bytes_tensor, numpy_dtype, serialize_bytes_tensor

from ..errors import InvalidInput
from .codec import parameter_value
from .extensions import SHARED_MEMORY

__all__ = [
    "HEADER_LENGTH", "InferRequest", "decode_infer_request", "encode_infer_response", "index_ready", "json_dumps", "load_parameters", "message_to_json",
]

#: Triton's binary tensor data extension: the size of the JSON header when binary data follows it.
HEADER_LENGTH = "Inference-Header-Content-Length"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True)
class InferRequest:
    """A decoded HTTP inference request: the protocol message, and which outputs go back as binary data."""

    message: pb.ModelInferRequest
    binary_default: bool = False
    """The request's ``binary_data_output`` parameter: outputs without their own ``binary_data`` go binary."""
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    """Outputs that set ``binary_data`` themselves."""

    def binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_default)


def json_body(data: bytes | memoryview, what: str) -> dict[str, Any]:
    """A request body that must be one JSON object; InvalidInput naming ``what`` otherwise."""
    return _json_object(data, what)


def _json_object(data: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        value = json.loads(bytes(data))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8 JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
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


def decode_infer_request(body: bytes, header_length: str | None, model_name: str, model_version: str) -> InferRequest:
    """Build the ``ModelInferRequest`` for an HTTP inference request; raises InvalidInput.

    ``body``: the whole (decompressed) request body; ``header_length``: the ``Inference-Header-Content-Length``
    header (None: the body is all JSON).
    """
    json_end = _header_length(header_length, len(body))
    doc = _json_object(memoryview(body)[:json_end], "the inference request")
    message = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    request = InferRequest(message)
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
    binary = memoryview(body)[json_end:]
    offset = 0
    for index, tensor in enumerate(inputs):
        offset = _add_input(message, tensor, index, binary, offset)
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


def _add_input(message: pb.ModelInferRequest, tensor: Any, index: int, binary: memoryview, offset: int) -> int:
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
        added = message.inputs.add(name=name, datatype=datatype, shape=shape)
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
    else:
        raise InvalidInput(f"input '{name}' has no data: give 'data' or the binary_data_size parameter")
    message.inputs.add(name=name, datatype=datatype, shape=shape)
    message.raw_input_contents.append(bytes(raw))  # the protobuf field owns a copy (see rest.py on the cost)
    return offset


def _flatten(values: Any) -> list[Any]:
    """A nested JSON list, flattened row-major (strings are leaves)."""
    out: list[Any] = []
    stack = [iter(values)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _json_tensor_bytes(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """One JSON ``data`` list as raw little-endian bytes of ``datatype``, checked element by element."""
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a JSON list, got {type(data).__name__}")
    count = math.prod(shape)
    values = _flatten(data)
    if len(values) != count:
        raise InvalidInput(f"input '{name}' has {len(values)} values in 'data' but shape {shape} needs {count}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise InvalidInput(f"input '{name}' is BYTES: its JSON 'data' must be strings (send other bytes as binary data)")
        array = np.empty(count, dtype=np.object_)
        array[:] = [v.encode("utf-8") for v in values]
        serialized: bytes = serialize_bytes_tensor(array)
        return serialized
    if datatype == "BF16":
        raise InvalidInput(f"input '{name}' is BF16, which has no JSON form: send it as binary data (binary_data_size)")
    dtype = numpy_dtype(datatype)
    if dtype.kind == "b":
        if not all(isinstance(v, bool) for v in values):
            raise InvalidInput(f"input '{name}' is BOOL: its 'data' must be true/false values")
        return np.array(values, dtype=dtype).tobytes()
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise InvalidInput(f"input '{name}' is {datatype}: its 'data' must be numbers")
    if dtype.kind in "iu":
        if not all(isinstance(v, int) for v in values):
            raise InvalidInput(f"input '{name}' is {datatype}: its 'data' must be integers")
        info = np.iinfo(dtype)
        if values and (min(values) < info.min or max(values) > info.max):
            raise InvalidInput(f"input '{name}': a value in 'data' does not fit {datatype} ({info.min}..{info.max})")
    return np.array(values, dtype=dtype).tobytes()


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


def encode_infer_response(response: pb.ModelInferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """The HTTP body for an inference response, and the JSON header's length when binary data follows it (else None).

    Raises InvalidInput when a BYTES output asked for as JSON is not UTF-8 text.
    """
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    raw = response.raw_output_contents
    for index, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}
        data = raw[index]
        if "shared_memory_region" in tensor.parameters:  # written into the caller's region: no data here (as Triton)
            entry["parameters"] = {k: parameter_value(v) for k, v in tensor.parameters.items()}
        elif tensor.datatype == "BF16" or request.binary(tensor.name):
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = _json_values(tensor.name, tensor.datatype, data, math.prod(shape))
        outputs.append(entry)
    doc["outputs"] = outputs
    header = json_dumps(doc)
    if not chunks:
        return header, None
    return b"".join((header, *chunks)), len(header)


def _json_values(name: str, datatype: str, data: bytes, count: int) -> list[Any]:
    if datatype == "BYTES":
        try:
            return [v.decode("utf-8") for v in deserialize_bytes_tensor(data, count)]
        except UnicodeDecodeError:
            raise InvalidInput(f"output '{name}' holds bytes that are not UTF-8 text; ask for it as binary data (binary_data: true)") from None
    values: list[Any] = np.frombuffer(data, dtype=numpy_dtype(datatype)).tolist()
    return values


def json_dumps(doc: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(doc, separators=(",", ":")).encode()


def index_ready(body: bytes) -> bool:
    """The ``ready`` flag of a repository index request body (``{"ready": true}``)."""
    ready = _json_object(body, "the repository index request").get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput(f"'ready' must be true or false, got {ready!r}")
    return ready


def load_parameters(body: bytes) -> dict[str, pb.ModelRepositoryParameter]:
    """The parameters of a repository load request body (``{"parameters": {"config": "<JSON>", ...}}``; may be empty).

    ``config`` may also be given as a JSON object (convenient with curl); it is passed on as its JSON text.
    """
    if not body.strip():
        return {}
    doc = _json_object(body, "the load request")
    out: dict[str, pb.ModelRepositoryParameter] = {}
    for key, value in _object(doc.get("parameters"), "'parameters'").items():
        if key == "config" and isinstance(value, dict):
            value = json.dumps(value)
        if isinstance(value, bool):
            out[key] = pb.ModelRepositoryParameter(bool_param=value)
        elif isinstance(value, int):
            out[key] = pb.ModelRepositoryParameter(int64_param=value)
        elif isinstance(value, str):
            out[key] = pb.ModelRepositoryParameter(string_param=value)
        else:
            raise InvalidInput(f"load parameter '{key}' must be a string, integer or boolean, got {type(value).__name__}")
    return out


def message_to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton's HTTP endpoint writes it: proto field names, defaults, 64-bit integers as numbers."""
    doc: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _int64_as_numbers(message.DESCRIPTOR, doc)
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
