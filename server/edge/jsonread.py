"""Client JSON, read one way everywhere: strict, depth-bounded, and in bounded steps.

Every JSON text a client sends (REST bodies, a load request's ``config`` override over REST or gRPC, the
override's parameter values) goes through ``JsonReader`` / ``read_json``:

- **strict** (RFC 8259): no ``NaN``/``Infinity`` literals, no trailing garbage, UTF-8 only, no number that
  overflows a double (``1e400``);
- **depth-bounded**: nesting deeper than ``MAX_DEPTH`` is InvalidInput before the parser sees it (a tensor's
  nested ``data`` needs its rank plus three levels; a Triton ModelConfig about six);
- **exact integers**: numbers parse as Python floats, except integers, which stay exact (a UINT64 value above
  2**63 too: such a text is parsed a second time in yajl's exact mode, which reads fractions as Decimal,
  turned into floats afterwards);
- **in bounded steps**: a text longer than ``CHUNK`` is parsed in ``CHUNK``-byte pieces (ijson's C backend,
  yajl), each a short call, so a large body parsed in a worker thread leaves the event loop's thread its turns
  at the GIL (one ``json.loads`` of a large body holds it for the whole parse). Pieces can arrive as they are
  inflated, so a compressed body is never held inflated in full. A text of one ``CHUNK`` or less, the common
  request, goes to the standard library's parser (a few times cheaper to start), after the same depth check
  and with the same strictness.

Errors are ``errors.InvalidInput`` naming what was read and the parser's reason.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, cast

import ijson

from ..errors import InvalidInput

__all__ = ["CHUNK", "MAX_DEPTH", "JsonReader", "read_json", "yield_gil"]

MAX_DEPTH = 100
"""Deepest nesting of arrays and objects accepted in client JSON."""
CHUNK = 1 << 16
"""Bytes parsed per step."""

def yield_gil() -> None:
    """Between two steps of a long job in a worker thread: release the GIL so a thread waiting for it (the event
    loop) takes it now, not after the interpreter's switch interval (5 ms) has passed."""
    time.sleep(0)


_KEEP = b'"[]{}'
_DROP = bytes(c for c in range(256) if c not in _KEEP)
_STRINGS = re.compile(rb'"[^"]*"')
_HUGE_NUMBER = re.compile(rb"[eE]\+?0*[1-9][0-9]{2}|[0-9]{300}")
_MARKS = (b'"', b"[", b"{", b"]", b"}", b"\\")


class _IntegerOverflow(Exception):
    """An integer beyond 64 bits in fast mode: the text must be parsed again in exact mode."""


class _DepthGuard:
    """The nesting depth of a JSON text read in pieces, without parsing it (``check`` each piece in order)."""

    __slots__ = ("_what", "_depth", "_in_string", "_tail")

    def __init__(self, what: str) -> None:
        self._what = what
        self._depth = 0
        self._in_string = False
        self._tail = b""  # an odd run of backslashes ending the last piece: the scan sees escape runs whole

    def check(self, piece: bytes) -> None:
        """Track the nesting depth of the structure (brackets outside strings); InvalidInput past MAX_DEPTH.

        Escaped backslashes, then escaped quotes are removed, then everything but quotes and brackets; whole
        strings go next, which leaves the structural brackets (and a string still open at the piece's end)."""
        if not self._tail and not any(mark in piece for mark in _MARKS):  # numbers and whitespace: nothing to track
            return
        text = self._tail + piece
        stripped = text.rstrip(b"\\") if piece else text
        self._tail = b"\\" if (len(text) - len(stripped)) % 2 else b""  # an even run is escaped backslashes only
        if b"\\" in stripped:
            stripped = stripped.replace(b"\\\\", b"").replace(b'\\"', b"")
        marks = stripped.translate(None, _DROP)
        if not marks:
            return
        if self._in_string:
            marks = b'"' + marks
        marks = _STRINGS.sub(b"", marks)
        open_at = marks.find(b'"')
        self._in_string = open_at >= 0
        if open_at >= 0:
            marks = marks[:open_at]
        opens = marks.count(b"[") + marks.count(b"{")
        depth = self._depth
        if depth + opens <= MAX_DEPTH:
            self._depth = max(depth + 2 * opens - len(marks), 0)
            return
        for mark in marks:
            depth = depth + 1 if mark in b"[{" else max(depth - 1, 0)
            if depth > MAX_DEPTH:
                raise InvalidInput(f"{self._what} nests arrays and objects deeper than {MAX_DEPTH} levels")
        self._depth = depth


class JsonReader:
    """Parses one JSON text fed in pieces (``feed``), returning its value from ``finish``.

    ``exact``: yajl's exact mode (integers of any size, fractions as Decimal); without it an integer beyond 64
    bits raises ``_IntegerOverflow`` (``read_json`` then parses again exactly)."""

    __slots__ = ("_what", "_out", "_parser", "_depth")

    def __init__(self, what: str, *, exact: bool = False) -> None:
        self._what = what
        self._out = ijson.sendable_list()
        self._parser = ijson.items_coro(self._out, "", use_float=not exact)
        self._depth = _DepthGuard(what)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parse the next piece of the text (any size: it is parsed ``CHUNK`` bytes at a time)."""
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            if start:
                yield_gil()
            piece = bytes(view[start:start + CHUNK])
            self._depth.check(piece)
            self._send(piece)

    def finish(self) -> Any:
        """The value of the whole text; InvalidInput when the text is incomplete or empty."""
        self._depth.check(b"")
        try:
            self._parser.close()
        except ijson.JSONError as exc:
            raise self._invalid(exc) from None
        if not self._out:
            raise InvalidInput(f"{self._what} is empty; it must be a JSON document")
        return self._out[0]

    def _send(self, piece: bytes) -> None:
        try:
            self._parser.send(piece)
        except ijson.JSONError as exc:
            raise self._invalid(exc) from None

    def _invalid(self, exc: Exception) -> Exception:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "integer overflow" in reason:
            return _IntegerOverflow()
        if reason.startswith("b'") or reason.startswith('b"'):  # yajl reports some errors as bytes
            reason = reason[2:].split("\\n")[0]
        if reason.startswith("lexical error") and any(word in str(exc) for word in ("NaN", "Infinity", "nan", "inf")):
            reason += ' (JSON has no NaN or Infinity: send the strings "NaN", "Infinity", "-Infinity", or binary data)'
        return InvalidInput(f"{self._what} is not valid JSON: {reason}")



def read_json(data: bytes | bytearray | memoryview | str | Iterable[bytes], what: str) -> Any:
    """The value of one client JSON text (bytes, str, or its pieces in order: a re-iterable, such as a list);
    raises InvalidInput."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    elif isinstance(data, list) and len(data) == 1:
        data = cast(bytes, data[0])
    if isinstance(data, bytes | bytearray | memoryview) and len(data) <= CHUNK:
        return _read_small(bytes(data), what)
    try:
        return _read(data, what, exact=False)
    except _IntegerOverflow:
        return _floats_for_decimals(_read(data, what, exact=True))


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} overflows a double")
    return value


def _read_small(data: bytes, what: str) -> Any:
    """One short text: the depth check, then the standard library's parser made as strict as yajl."""
    _DepthGuard(what).check(data)
    hooks: dict[str, Any] = {"parse_float": _finite} if _HUGE_NUMBER.search(data) else {}  # only such a number can overflow a double
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant, **hooks)
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} is not valid JSON: it is not UTF-8 text") from None
    except ValueError as exc:  # json.JSONDecodeError, or one of the hooks above
        reason = str(exc)
        if "is not JSON" in reason:
            reason += ' (JSON has no NaN or Infinity: send the strings "NaN", "Infinity", "-Infinity", or binary data)'
        raise InvalidInput(f"{what} is not valid JSON: {reason}") from None


def _read(data: bytes | bytearray | memoryview | Iterable[bytes], what: str, *, exact: bool) -> Any:
    reader = JsonReader(what, exact=exact)
    if isinstance(data, bytes | bytearray | memoryview):
        reader.feed(data)
    else:
        for index, piece in enumerate(data):
            if index:
                yield_gil()
            reader.feed(piece)
    return reader.finish()


def _floats_for_decimals(value: Any) -> Any:
    """Replace the Decimals of an exact-mode value by floats, in place, a bounded slice at a time."""
    if isinstance(value, Decimal):
        return float(value)
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        if isinstance(node, list):
            for start in range(0, len(node), CHUNK):
                part = node[start:start + CHUNK]
                types = set(map(type, part))
                if Decimal in types:
                    node[start:start + CHUNK] = part = [float(v) if type(v) is Decimal else v for v in part]
                if list in types or dict in types:
                    stack.extend(v for v in part if type(v) is list or type(v) is dict)
            continue
        for key, item in items:
            if type(item) is Decimal:
                node[key] = float(item)
            elif type(item) is list or type(item) is dict:
                stack.append(item)
    return value
