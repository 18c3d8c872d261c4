"""Large ModelInfer messages on the gRPC wire without copying tensor bytes on the event loop.

gRPC hands a request to its deserializer, and takes a response from its serializer, on the event loop. Protobuf
copies every ``bytes`` field when it parses and again when a field is read or appended, and serialising copies the
whole message once more: for a 256 MiB tensor that was seconds of loop time, during which no other call was served.

- ``parse_infer_request``: every request is scanned field by field at its top level (a handful of fields: the
  tensors are skipped by their length) into a ``WireRequest``: its ``raw_input_contents`` are ``memoryview`` slices
  of the received message (no copy; ``np.frombuffer`` reads them in place), its model name, version and id are
  read directly, and the rest (parameters, inputs, outputs: a few hundred bytes) is its ``head``. Protobuf parses
  a head the first time it is seen (a malformed message fails here, as protobuf's own parse would); a head seen
  before is known to parse, and the codec decodes a request whose head it has decoded before from a template
  (``codec.decode_request``) without touching protobuf. Anything the scan does not expect (another wire type, an
  unknown field, invalid UTF-8) goes to protobuf's own parser.
- ``assemble``: in a worker thread, a response's serialised header and its output arrays are written into one
  ``bytes`` object of the final size by ``memmove`` calls that release the GIL, so the loop keeps running; the
  gRPC serializer (``serialize``) then passes those bytes through. gRPC itself still copies a message once on the
  loop in each direction (its own receive and send buffers), which Surge cannot change.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from surge.protos import grpc_service_pb2 as pb
from surge.protos.datatypes import serialize_bytes_tensor

__all__ = ["LARGE_MESSAGE_BYTES", "MAX_HEAD_BYTES", "WireRequest", "assemble", "join", "parse_infer_request", "serialize"]

#: Messages from this size on take the paths above; below it protobuf's own C code is the faster choice.
LARGE_MESSAGE_BYTES = 1 << 20
#: A large request with more top-level fields than this (a legitimate one has a few per input) is parsed by
#: protobuf in one C call instead: the field-by-field scan runs Python code per field.
_MAX_SCANNED_FIELDS = 4096
_RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
_RAW_OUTPUT_TAG = b"\x32"  # ModelInferResponse.raw_output_contents (field 6, length-delimited)
_STREAM_RESPONSE_TAG = b"\x12"  # ModelStreamInferResponse.infer_response (field 2, length-delimited)

_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize  # (NULL, n): an uninitialised bytes object, to be filled
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_new_bytes.restype = ctypes.py_object
_bytes_address = ctypes.pythonapi.PyBytes_AsString
_bytes_address.argtypes = (ctypes.py_object,)
_bytes_address.restype = ctypes.c_void_p


#: ModelInferRequest's fields as single-byte tags (all length-delimited): model_name, model_version, id,
#: parameters, inputs, outputs, raw_input_contents.
_TAGS = {0x0A: 1, 0x12: 2, 0x1A: 3, 0x22: 4, 0x2A: 5, 0x32: 6, 0x3A: 7}
#: Heads protobuf has parsed without error (a bounded set: emptied when full, so hostile variety costs only parsing).
_known_heads: dict[bytes, None] = {}
_MAX_KNOWN_HEADS = 4096
#: Heads longer than this are parsed every time and never used as a template's key.
MAX_HEAD_BYTES = 4096


class WireRequest:
    """A received ModelInferRequest (``parse_infer_request``): ``model_name``, ``model_version``, ``id`` and
    ``raw_input_contents`` (memoryviews into the received message) as scanned; ``head`` the bytes of its other
    top-level fields as sent (None: not scanned that way, never a template's key). Every other attribute is the
    message's, parsed by protobuf from those fields at most once."""

    __slots__ = ("_message", "head", "id", "model_name", "model_version", "raw_input_contents")

    def __init__(self, model_name: str, model_version: str, id: str, raw: list[memoryview], head: bytes | None,
                 message: pb.ModelInferRequest | None) -> None:  # fmt: skip
        self.model_name = model_name
        self.model_version = model_version
        self.id = id
        self.raw_input_contents = raw
        self.head = head
        self._message = message  # None only with a head, which protobuf parsed before (``_known_heads``)

    def __getattr__(self, name: str) -> Any:
        message = self._message
        if message is None:
            message = self._message = pb.ModelInferRequest.FromString(self.head or b"")
            message.model_name, message.model_version, message.id = self.model_name, self.model_version, self.id
        return getattr(message, name)


def _varint(data: memoryview | bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def parse_infer_request(data: bytes) -> pb.ModelInferRequest | WireRequest:
    """A ModelInferRequest from its wire bytes; raises ValueError or protobuf's DecodeError for a malformed one."""
    request = _scan(data)
    if request is not None:
        return request
    if len(data) < LARGE_MESSAGE_BYTES:
        return pb.ModelInferRequest.FromString(data)
    return _scan_any(data)


def _scan(data: bytes) -> WireRequest | None:
    """The common shape: every top-level field one of ModelInferRequest's own. None: anything else (protobuf
    decides, and raises for a malformed message)."""
    view = memoryview(data)
    end = len(data)
    pos = count = 0
    strings = ["", "", ""]
    head: list[bytes] = []
    raw: list[memoryview] = []
    tags = _TAGS
    try:
        while pos < end:
            number = tags.get(data[pos])
            if number is None or count == _MAX_SCANNED_FIELDS:
                return None
            count += 1
            start = pos
            length = data[pos + 1]
            pos += 2
            if length >= 0x80:
                length, pos = _varint(data, pos - 1)
            stop = pos + length
            if stop > end:
                return None
            if number == 7:
                raw.append(view[pos:stop])
            elif number <= 3:
                strings[number - 1] = data[pos:stop].decode()  # every occurrence is valid UTF-8 (protobuf checks each)
            else:
                head.append(data[start:stop])
            pos = stop
    except (IndexError, ValueError):  # truncated, overlong, invalid UTF-8: protobuf's parse says how
        return None
    key = b"".join(head)
    message = None
    if key not in _known_heads:
        message = pb.ModelInferRequest.FromString(key)  # raises for a malformed head, as parsing the whole would
        message.model_name, message.model_version, message.id = strings
        if len(key) <= MAX_HEAD_BYTES:
            if len(_known_heads) >= _MAX_KNOWN_HEADS:
                _known_heads.clear()
            _known_heads[key] = None
    return WireRequest(strings[0], strings[1], strings[2], raw, key, message)


def _scan_any(data: bytes) -> WireRequest | pb.ModelInferRequest:
    """A large message with other wire types or unknown fields: every field scanned, the tensors kept in place."""
    view = memoryview(data)
    raw: list[memoryview] = []
    others: list[memoryview] = []
    pos, end, fields = 0, len(view), 0
    while pos < end:
        fields += 1
        if fields > _MAX_SCANNED_FIELDS:
            return pb.ModelInferRequest.FromString(data)
        start = pos
        key, pos = _varint(view, pos)
        wire_type = key & 7
        if wire_type == 0:
            _, pos = _varint(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = _varint(view, pos)
            if key >> 3 == _RAW_INPUT_FIELD:
                if pos + length > end:
                    raise ValueError("a raw_input_contents entry runs past the end of the message")
                raw.append(view[pos : pos + length])
                pos += length
                continue
            pos += length
        else:  # groups (deprecated) or an invalid wire type: protobuf decides
            return pb.ModelInferRequest.FromString(data)
        if pos > end:
            raise ValueError("a field runs past the end of the message")
        others.append(view[start:pos])
    message = pb.ModelInferRequest.FromString(b"".join(others))
    return WireRequest(message.model_name, message.model_version, message.id, raw, None, message)


def serialize(message: Any) -> bytes:
    """The gRPC response serializer of ModelInfer and ModelStreamInfer: bytes built by ``assemble`` pass as they are."""
    return message if message.__class__ is bytes else message.SerializeToString()


def _length_prefix(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _parts(header: bytes, arrays: Sequence[np.ndarray], stream: bool) -> tuple[list[bytes | np.ndarray], int]:
    parts: list[bytes | np.ndarray] = [header]
    for array in arrays:
        data = serialize_bytes_tensor(array) if array.dtype.kind in "OSUT" else np.ascontiguousarray(array)
        parts += (_RAW_OUTPUT_TAG + _length_prefix(data.nbytes if isinstance(data, np.ndarray) else len(data)), data)
    size = sum(p.nbytes if isinstance(p, np.ndarray) else len(p) for p in parts)
    if stream:
        parts.insert(0, _STREAM_RESPONSE_TAG + _length_prefix(size))
        size += len(parts[0])
    return parts, size


def join(header: bytes, arrays: Sequence[np.ndarray], *, stream: bool = False) -> bytes:
    """On the loop, for a small response: ``assemble``'s bytes by one ``bytes.join`` (the arrays' buffers are read in
    place: no ``tobytes``, no protobuf message, no second serialisation)."""
    # A contiguous array is a buffer bytes.join reads as it is (numpy's stubs do not declare it one: the casts).
    if len(arrays) == 1 and arrays[0].dtype.kind not in "OSUT":  # the common case, without the lists
        data = np.ascontiguousarray(arrays[0])
        raw = _RAW_OUTPUT_TAG + _length_prefix(data.nbytes)
        if stream:
            size = len(header) + len(raw) + data.nbytes
            return b"".join((_STREAM_RESPONSE_TAG + _length_prefix(size), header, raw, cast(bytes, data)))
        return b"".join((header, raw, cast(bytes, data)))
    return b"".join(cast(list[bytes], _parts(header, arrays, stream)[0]))


def assemble(header: bytes, arrays: Sequence[np.ndarray], *, stream: bool = False) -> bytes:
    """In a worker thread: the wire bytes of a ModelInferResponse whose serialised fields other than
    ``raw_output_contents`` are ``header`` and whose raw outputs are ``arrays`` (in order; numeric arrays already
    in their wire dtype, BYTES as object arrays). ``stream``: wrapped as a ModelStreamInferResponse."""
    parts, size = _parts(header, arrays, stream)
    out: bytes = _new_bytes(None, size)
    address = _bytes_address(out)
    for part in parts:
        if isinstance(part, np.ndarray):
            ctypes.memmove(address, part.ctypes.data, part.nbytes)  # ctypes lets go of the GIL for the copy
            address += part.nbytes
        else:
            ctypes.memmove(address, part, len(part))
            address += len(part)
    return out
