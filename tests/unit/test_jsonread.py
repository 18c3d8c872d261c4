"""jsonread: strict, depth-bounded client JSON, the same value whatever the pieces it arrives in."""

from __future__ import annotations

import json

import pytest

from surge.server.edge.jsonread import CHUNK, MAX_DEPTH, JsonReader, read_json
from surge.server.errors import InvalidInput


def pieces(text: bytes, size: int):
    reader = JsonReader("the text")
    for start in range(0, len(text), size):
        reader.feed(text[start:start + size])
    return reader.finish()


TEXTS = [
    b"[" * MAX_DEPTH + b"]" * MAX_DEPTH,
    b'["[[[[' + b"[" * 300 + b'", 1]',  # brackets in a string do not nest
    b'["\\\\", [[1]]]',  # an escaped backslash ends before the quote
    b'["\\"[[[[' + b"[" * 300 + b'"]',  # an escaped quote does not end the string
    b'{"a": "\\\\\\"' + b"{" * 300 + b'"}',
    b"[" + b'"a\\"[",' * 300 + b"1]",
    json.dumps({"inputs": [{"name": "x", "data": [[1.5, -2], [3, 4e-3]]}], "id": "\u00e9\\[{"}).encode(),
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, CHUNK])
@pytest.mark.parametrize("text", TEXTS)
def test_any_split_gives_the_value_json_loads_gives(text, size):
    assert pieces(text, size) == json.loads(text)


@pytest.mark.parametrize("size", [1, 5, CHUNK])
@pytest.mark.parametrize("text", [b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), b"[" * 10_000_000, b'{"a": ' * 200 + b"1" + b"}" * 200])
def test_nesting_past_the_bound_is_invalid_input_before_parsing(text, size):
    if len(text) > 10**6 and size < CHUNK:
        text = text[:10_000]
    with pytest.raises(InvalidInput, match=f"deeper than {MAX_DEPTH} levels"):
        pieces(text, size)


@pytest.mark.parametrize("padding", [0, CHUNK + 1], ids=["short text", "long text"])  # the standard library's parser, ijson's
@pytest.mark.parametrize(
    "text",
    [b'{"a": 1}{}', b"", b'{"a": NaN}', b"[-Infinity]", b'"\xff"', b"[1e400]", b"[1" + b"0" * 400 + b".5]", b"[1,]", b'"' + b"\\" * 1001 + b'"'],
)
def test_what_strict_json_refuses_is_invalid_input(text, padding):
    with pytest.raises(InvalidInput, match="the text is not valid JSON") as info:
        read_json(b" " * padding + text, "the text")
    if b"Infinity" in text or b"NaN" in text:
        assert "send the strings" in str(info.value)


def test_a_short_text_is_checked_for_depth_too():
    with pytest.raises(InvalidInput, match="deeper than"):
        read_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "the text")
    assert read_json(b'{"x": [1.5, 2], "big": 18446744073709551615}', "the text") == {"x": [1.5, 2], "big": 2**64 - 1}


def test_integers_stay_exact_beyond_64_bits_and_fractions_stay_floats():
    value = read_json([b'{"u": [18446744073709551615, 1', b'], "f": [0.25, {"g": 1.5}], "big": 1' + b"0" * 30 + b"}"], "the text")
    assert value == {"u": [2**64 - 1, 1], "f": [0.25, {"g": 1.5}], "big": 10**30}
    assert type(value["f"][0]) is float and type(value["f"][1]["g"]) is float
    assert read_json("[1, 2.5]", "a str") == [1, 2.5]
