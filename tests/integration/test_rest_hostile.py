"""Hostile and careless REST requests over the wire: nesting, content codings, bombs, numbers JSON cannot hold,
Unicode digits, tokens before bodies, slow and idle connections. Each gets its 4xx (never a 500), and the
server keeps serving."""

from __future__ import annotations

import gzip
import json
import socket
import time
import urllib.parse
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from surge.server.edge.jsonread import MAX_DEPTH
from surge.server.edge.rest import RestEndpoint
from tests.integration.test_rest import assert_serving, http, infer_body
from tests.models import ONNX_DATATYPES
from tests.process import SurgeProcess

X = {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}
TOKEN = "admin-and-inference-token-0123456789"


def _strict_json(body: bytes):
    """Parse as a strict client does (orjson, JavaScript): bare NaN/Infinity are errors."""

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(body, parse_constant=refuse)


@pytest.fixture(scope="module")
def rest(server) -> str:
    return server.server.http_address


@pytest.fixture
def admin(test_repository, start_server):
    return start_server(model_repository=test_repository, model_control_mode="explicit", load_models=("mlp",), strict_readiness=False)


def _identity_all(datatype: str, data: list, **extra) -> dict:
    """A request for identity_all (every input needed): ``data`` for ``datatype``, zeros for the others."""
    count = len(data)
    filler = {"BYTES": "", "BOOL": False}
    inputs = [
        {"name": f"in_{dt}", "datatype": dt, "shape": [1, count], "data": data if dt == datatype else [filler.get(dt, 0)] * count}
        for dt in ONNX_DATATYPES
    ]
    return infer_body(inputs, outputs=[{"name": f"out_{datatype}"}], **extra)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- nesting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deeply_nested_json_is_400_on_every_route_and_invalid_argument_over_grpc(rest, admin, depth):
    deep = _nested(depth)
    deep_data = {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": "@"}
    body = json.dumps(infer_body([deep_data])).replace('"@"', deep).encode()
    reply = http(rest, "POST", "/v2/models/mlp/infer", body)
    assert reply.status == 400 and f"deeper than {MAX_DEPTH} levels" in reply.error, reply.body
    address = admin.server.http_address
    for path, text in (
        ("/v2/repository/index", '{"ready": ' + deep + "}"),
        ("/v2/repository/models/mlp/load", '{"parameters": {"config": ' + '{"a":' * depth + "1" + "}" * depth + "}}"),
        ("/v2/repository/models/mlp/load", json.dumps({"parameters": {"config": '{"parameters": ' + deep + "}"}})),
        ("/v2/repository/models/mlp/load", json.dumps({"parameters": {"config": json.dumps({"parameters": {"p": {"string_value": deep}}})}})),
    ):
        reply = http(address, "POST", path, text.encode())
        if "string_value" in text:  # a parameter's value that does not parse as (bounded) JSON stays a string
            assert reply.status in (200, 400), reply.body
            continue
        assert reply.status == 400 and f"deeper than {MAX_DEPTH} levels" in reply.error, (path, reply.body)
    with grpc.insecure_channel(admin.address) as channel:
        request = pb.RepositoryModelLoadRequest(model_name="mlp")
        request.parameters["config"].string_param = '{"input": ' + deep + "}"
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "deeper than" in info.value.details()
    assert http(address, "POST", "/v2/models/mlp/infer", infer_body([X])).status == 200
    assert_serving(rest)


def test_nesting_within_the_bound_and_brackets_inside_strings_are_fine(rest):
    # a [1, 16] tensor given as nested lists, and an id full of brackets (strings do not nest)
    body = infer_body([{**X, "data": [[0.5] * 16]}], id="[" * 5000 + "{" * 5000 + '\\"' * 10)
    reply = http(rest, "POST", "/v2/models/mlp/infer", body)
    assert reply.status == 200, reply.body


# -- content codings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "body", "status", "fragment"),
    [
        ("gzip", b'{"inputs": []} this is not gzip', 400, "not valid gzip data"),
        ("gzip", gzip.compress(json.dumps(infer_body([X])).encode())[:-12], 400, "incomplete"),
        ("gzip", gzip.compress(json.dumps(infer_body([X])).encode()) + b"trailing", 400, "after the end"),
        ("deflate", b"\x78\x9c not deflate", 400, "not valid deflate data"),
        ("br", b"anything", 415, "Content-Encoding 'br' is not supported"),
    ],
)
def test_a_body_that_is_not_what_its_content_encoding_says_is_4xx(rest, encoding, body, status, fragment):
    reply = http(rest, "POST", "/v2/models/mlp/infer", body, {"Content-Encoding": encoding})
    assert reply.status == status and fragment in reply.error, reply.body
    assert_serving(rest)


@pytest.mark.parametrize("raw", [False, True])
def test_deflate_zlib_wrapped_or_raw_is_accepted(rest, raw):
    compressor = zlib.compressobj(wbits=-15 if raw else 15)
    body = compressor.compress(json.dumps(infer_body([X])).encode()) + compressor.flush()
    reply = http(rest, "POST", "/v2/models/mlp/infer", body, {"Content-Encoding": "deflate"})
    assert reply.status == 200, reply.body


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_gzip_bomb_is_413_without_inflating_past_the_limit(test_repository, tmp_path):
    """256 MiB of zeros in 256 KiB of gzip against a 16 MiB limit: refused once 16 MiB are out, so the server's peak
    memory grows by about the limit, not by the bomb."""
    limit = 16 * 2**20
    proc = SurgeProcess(test_repository, tmp_path / "server", "--max-request-bytes", str(limit)).start()
    try:
        address = proc.http_address
        assert_serving(address)
        compressor = zlib.compressobj(wbits=31)
        spaces = b" " * 2**20  # JSON whitespace: the parser reads on, the inflater hits the limit
        bomb = compressor.compress(b'{"inputs": ') + b"".join(compressor.compress(spaces) for _ in range(256)) + compressor.flush()
        assert len(bomb) < 2**20
        before = _peak_rss_mb(proc.proc.pid)
        reply = http(address, "POST", "/v2/models/mlp/infer", bomb, {"Content-Encoding": "gzip"})
        assert reply.status == 413 and f"inflates past the server's limit of {limit} bytes" in reply.error, reply.body
        grown = _peak_rss_mb(proc.proc.pid) - before
        assert grown < 3 * limit / 2**20, f"peak RSS grew by {grown:.0f} MB for a bomb refused at {limit >> 20} MiB"
        assert_serving(address)
    finally:
        proc.stop_and_check()


# -- numbers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("FP32", 1e39), ("FP32", -3.5e38), ("FP16", 65520.0), ("FP16", -1e5)],
)
def test_json_floats_beyond_the_datatype_are_400_naming_the_input(rest, datatype, value):
    body = _identity_all(datatype, [1.0, value])
    reply = http(rest, "POST", "/v2/models/identity_all/infer", body)
    assert reply.status == 400, reply.body
    assert f"input 'in_{datatype}'" in reply.error and f"beyond the range of {datatype}" in reply.error and "binary data" in reply.error


def test_json_numbers_that_overflow_a_double_are_400(rest):
    body = json.dumps(_identity_all("FP64", ["@"])).replace('"@"', "1e400").encode()
    reply = http(rest, "POST", "/v2/models/identity_all/infer", body)
    assert reply.status == 400 and "not valid JSON" in reply.error and "overflow" in reply.error, reply.body


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_non_finite_outputs_are_strings_a_strict_parser_reads(rest, datatype):
    values = ["NaN", "Infinity", "-Infinity", 1.5]
    body = _identity_all(datatype, values)
    reply = http(rest, "POST", "/v2/models/identity_all/infer", body)
    assert reply.status == 200, reply.body
    doc = _strict_json(reply.body)
    data = doc["outputs"][0]["data"]
    assert data == values
    back = np.array(data, dtype=np.float32)  # what tritonclient's as_numpy does with them
    assert np.isnan(back[0]) and back[1] == np.inf and back[2] == -np.inf and back[3] == 1.5
    # the binary extension carries them as they are
    binary = _identity_all(datatype, values, parameters={"binary_data_output": True})
    reply = http(rest, "POST", "/v2/models/identity_all/infer", binary)
    length = int(reply.headers["Inference-Header-Content-Length"])
    raw = np.frombuffer(reply.body[length:], dtype={"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[datatype])
    assert np.isnan(raw[0]) and raw[1] == np.inf and raw[2] == -np.inf


def test_strings_other_than_the_non_finite_names_are_400(rest):
    body = _identity_all("FP32", ["1.5"])
    reply = http(rest, "POST", "/v2/models/identity_all/infer", body)
    assert reply.status == 400 and "must be numbers" in reply.error and "'1.5'" in reply.error


def test_uint64_beyond_int64_round_trips_as_json(rest):
    values = [2**64 - 1, 2**63, 0]
    body = _identity_all("UINT64", values, parameters={"tag": 0.25})  # a fraction elsewhere in the text too
    reply = http(rest, "POST", "/v2/models/identity_all/infer", body)
    assert reply.status == 200, reply.body
    assert _strict_json(reply.body)["outputs"][0]["data"] == values


# -- versions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["\u00b2", "\u0661", "\uff11"])
def test_unicode_digit_versions_are_400_on_every_rest_route(rest, version):
    quoted = urllib.parse.quote(version)
    for method, suffix, body in (("GET", "", None), ("GET", "/ready", None), ("GET", "/config", None), ("GET", "/stats", None),
                                 ("POST", "/infer", infer_body([X]))):  # fmt: skip
        reply = http(rest, method, f"/v2/models/mlp/versions/{quoted}{suffix}", body)
        assert reply.status == 400 and "ASCII digits only" in reply.error, (suffix, reply.status, reply.body)
    assert http(rest, "GET", "/v2/models/mlp/versions/1/ready").status == 200


# -- tokens before bodies ----------------------------------------------------------------------------


@pytest.fixture
def authed(test_repository, tmp_path, start_server):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"inference,admin {TOKEN}\n")
    return start_server(
        model_repository=test_repository, model_control_mode="explicit", load_models=("mlp",), strict_readiness=False, auth_tokens_file=tokens,
    )


def _send(address: str, head: bytes, wait_s: float = 5.0) -> bytes:
    """Send a request head (a body is announced but never sent); the server's answer, read until it closes or ``wait_s``."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(head)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b'"}' in chunks[-1]:
                    break
        except TimeoutError:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize(
    "path",
    ["/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer", "/v2/repository/index", "/v2/repository/models/mlp/load",
     "/v2/repository/models/mlp/unload", "/v2/systemsharedmemory/region/r/register", "/v2/logging"],
)  # fmt: skip
def test_a_missing_token_is_401_before_any_body_is_read(authed, path):
    address = authed.server.http_address
    started = time.monotonic()
    # 30 MB announced, none sent: the answer cannot depend on the body
    answer = _send(address, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 30000000\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert time.monotonic() - started < 4.0, "the server waited for the body"
    assert b"WWW-Authenticate: Bearer" in answer
    for body in (b"{oops", _nested(100_000).encode()):  # a bad or deeply nested body is never parsed without a token
        reply = http(address, "POST", path, body)
        assert reply.status == 401, (path, reply.status, reply.body)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert http(address, "POST", "/v2/models/mlp/infer", infer_body([X]), auth).status == 200


# -- slow and idle connections -----------------------------------------------------------------------


@pytest.fixture
def short_timeouts(server):
    endpoint = RestEndpoint(server.server.dataplane, "127.0.0.1", 0, max_request_bytes=1 << 20, idle_timeout_s=1.0, body_timeout_s=2.0)
    address = server.call(endpoint.start())
    yield address
    server.call(endpoint.aclose())


def _connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _closed_after(sock: socket.socket, wait_s: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``wait_s`` (and what it sent first)."""
    sock.settimeout(wait_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def test_slow_headers_slow_bodies_and_idle_connections_are_closed_in_bounded_time(short_timeouts):
    address = short_timeouts
    head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    slow_heads = [_connect(address) for _ in range(200)]
    for sock in slow_heads:
        sock.sendall(head[: len(head) // 2])  # half a request head, then silence
    trickling = [_connect(address) for _ in range(5)]
    stalled_body = _connect(address)
    stalled_body.sendall(head + b"Content-Length: 1000\r\n\r\n" + b'{"inputs": ')
    trickled_body = _connect(address)
    trickled_body.sendall(head + b"Content-Length: 1000\r\n\r\n")
    idle = _connect(address)
    idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    # a head trickled a byte at a time still has to be complete within the idle timeout of connecting
    for index in range(12):
        for sock in trickling:
            try:
                sock.sendall(head[index:index + 1])
            except OSError:
                pass
        try:
            trickled_body.sendall(b" ")
        except OSError:
            pass
        time.sleep(0.25)
    assert_serving(address)  # the server keeps serving while all of them are held
    for sock in slow_heads + trickling + [idle]:
        closed, _ = _closed_after(sock, 3.0)
        assert closed, "a slow or idle connection was not closed"
    closed, answer = _closed_after(stalled_body, 3.0)
    assert closed and answer.startswith(b"HTTP/1.1 408"), answer[:200]
    closed, answer = _closed_after(trickled_body, 3.0)
    assert closed and answer.startswith(b"HTTP/1.1 408") and b"did not arrive in time" in answer, answer[:200]
    assert time.monotonic() - started < 8.0
    for sock in slow_heads + trickling + [stalled_body, trickled_body, idle]:
        sock.close()
    assert_serving(address)


def test_a_json_shape_claiming_10_to_the_12_elements_costs_nothing(rest):
    body = infer_body([{"name": "input", "datatype": "FP32", "shape": [1, 10**12], "data": [1.0, 2.0]}])
    reply = http(rest, "POST", "/v2/models/identity/infer", body)
    assert reply.status == 400 and "has 2 values in 'data' but shape [1, 1000000000000] needs 1000000000000" in reply.error, reply.body
    assert_serving(rest)
