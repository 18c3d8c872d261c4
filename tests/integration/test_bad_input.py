"""Every malformed request we could think of, over the wire: each gets its documented status and a message
naming the problem, and the server answers the next good request correctly.

The session server (tests/models.py repository, default limits) takes most kinds; the size limits run
against a server started with small limits; requests during reloads against an explicit-mode server.
"""

from __future__ import annotations

import concurrent.futures
import struct
import threading

import grpc
import numpy as np
import pytest

from surge.clients import InferenceClient, InferenceServerError
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from surge.server.edge.codec import Limits

GOOD_X = np.ones((1, 16), dtype=np.float32)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _request(model: str = "mlp", *tensors: tuple[str, str, list[int], bytes], **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    for name, datatype, shape, data in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)
    return request


def _x(shape=(1, 16), datatype="FP32", data: bytes | None = None, name="x") -> tuple[str, str, list[int], bytes]:
    return name, datatype, list(shape), np.ones(shape, np.float32).tobytes() if data is None else data


def _typed(model: str, name: str, datatype: str, shape: list[int], field: str, values: list) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def _with_param(key: str, **value) -> pb.ModelInferRequest:
    request = _request("mlp", _x())
    request.parameters[key].CopyFrom(pb.InferParameter(**value))
    return request


def _bytes_tensor(data: bytes, count: int = 2) -> pb.ModelInferRequest:
    return _request("identity_all", ("in_BYTES", "BYTES", [1, count], data))


def _prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _duplicate() -> pb.ModelInferRequest:
    return _request("mlp", _x(), _x())


def _raw_count_mismatch() -> pb.ModelInferRequest:
    request = _request("mlp", _x())
    request.raw_input_contents.append(b"\0" * 64)
    return request


def _no_data() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    return request


def _raw_and_typed() -> pb.ModelInferRequest:
    request = _request("mlp", _x())
    request.inputs[0].contents.fp32_contents.extend([2.0] * 16)
    return request


def _unknown_output() -> pb.ModelInferRequest:
    request = _request("mlp", _x())
    request.outputs.add(name="logits")
    return request


#: (kind, request factory, status, text the message must contain)
CASES = [
    ("unknown model", lambda: _request("no_such_model", _x()), NOT_FOUND, "no_such_model"),
    ("empty model name", lambda: _request("", _x()), NOT_FOUND, "model '' is not in the repository"),
    ("unknown version", lambda: _request("mlp", _x(), model_version="9"), NOT_FOUND, "no version 9"),
    ("non-numeric version", lambda: _request("mlp", _x(), model_version="latest"), INVALID, "positive integer, got 'latest'"),
    ("negative version", lambda: _request("mlp", _x(), model_version="-1"), INVALID, "positive integer, got '-1'"),
    ("superscript-digit version", lambda: _request("mlp", _x(), model_version="\u00b2"), INVALID, "(ASCII digits only)"),
    ("Arabic-Indic-digit version", lambda: _request("mlp", _x(), model_version="\u0661"), INVALID, "(ASCII digits only)"),
    ("version of 40 digits", lambda: _request("mlp", _x(), model_version="1" * 40), INVALID, "positive integer"),
    ("raw and typed contents for one input", _raw_and_typed, INVALID, "input 'x' has both raw_input_contents and contents"),
    ("model failed to load", lambda: _request("broken", _x()), grpc.StatusCode.UNAVAILABLE, "broken"),
    ("missing input", lambda: _request("mlp"), INVALID, "missing input(s) ['x']"),
    ("extra input", lambda: _request("mlp", _x(), _x(name="z")), INVALID, "unexpected input 'z'"),
    ("duplicate input", _duplicate, INVALID, "input 'x' appears twice"),
    ("wrong datatype", lambda: _request("mlp", _x(datatype="INT32")), INVALID, "datatype INT32 but model 'mlp' expects FP32"),
    ("empty datatype", lambda: _request("mlp", _x(datatype="")), INVALID, "datatype (empty)"),
    ("unknown datatype", lambda: _request("mlp", _x(datatype="FP8")), INVALID, "datatype FP8"),
    ("wrong rank", lambda: _request("mlp", _x(shape=(16,))), INVALID, "has shape [16] but model 'mlp' expects [-1, 16]"),
    ("wrong inner dim", lambda: _request("mlp", _x(shape=(1, 15))), INVALID, "has shape [1, 15]"),
    ("negative dim", lambda: _request("mlp", ("x", "FP32", [-1, 16], b"")), INVALID, "has shape [-1, 16]"),
    ("zero rows", lambda: _request("mlp", ("x", "FP32", [0, 16], b"")), INVALID, "batch size 0"),
    ("batch above max_batch_size", lambda: _request("mlp", _x(shape=(65, 16))), INVALID, "batch size 65"),
    ("claims 10**12 elements", lambda: _request("identity", ("input", "FP32", [1, 10**12], b"\0" * 64)), EXHAUSTED, "max_tensor_elements"),
    ("raw bytes short", lambda: _request("mlp", _x(data=GOOD_X.tobytes()[:-4])), INVALID, "has 60 bytes of raw data but shape [1, 16] of FP32 needs 64"),
    ("raw bytes long", lambda: _request("mlp", _x(data=GOOD_X.tobytes() + b"\0")), INVALID, "has 65 bytes of raw data"),
    ("raw entries != inputs", _raw_count_mismatch, INVALID, "1 inputs but 2 raw_input_contents"),
    ("no data at all", _no_data, INVALID, "input 'x' has no data"),
    ("typed contents: wrong count", lambda: _typed("mlp", "x", "FP32", [1, 16], "fp32_contents", [1.0] * 15), INVALID, "15 values in contents.fp32_contents"),
    ("typed contents: wrong field", lambda: _typed("mlp", "x", "FP32", [1, 16], "int_contents", [1] * 16), INVALID, "0 values in contents.fp32_contents"),
    ("typed contents: value overflows", lambda: _typed("identity_all", "in_INT8", "INT8", [1, 1], "int_contents", [300]), INVALID, "does not fit INT8"),
    ("BYTES: length prefix past the end", lambda: _bytes_tensor(_prefixed(b"ab") + struct.pack("<I", 1000) + b"xy"), INVALID, "claims 1000 bytes"),
    ("BYTES: truncated prefix", lambda: _bytes_tensor(_prefixed(b"ab") + b"\x01\x00"), INVALID, "ends inside the length prefix"),
    ("BYTES: trailing garbage", lambda: _bytes_tensor(_prefixed(b"ab", b"cd") + b"\xff\xfe"), INVALID, "2 bytes after its 2 elements"),
    ("BYTES: too few bytes for the count", lambda: _bytes_tensor(b"\0\0", count=5), INVALID, "cannot hold 5 elements"),
    ("unknown output", _unknown_output, INVALID, "unknown output 'logits'"),
    ("priority: wrong type", lambda: _with_param("priority", string_param="high"), INVALID, "parameter 'priority' must be a non-negative integer"),
    ("priority: negative", lambda: _with_param("priority", int64_param=-1), INVALID, "parameter 'priority'"),
    ("priority: above the levels", lambda: _request("mlp_batched", _x(), parameters={"priority": pb.InferParameter(int64_param=7)}), INVALID, "priority 7 is out of range"),
    ("timeout: negative", lambda: _with_param("timeout", int64_param=-5), INVALID, "parameter 'timeout' must be a non-negative number"),
    ("timeout: a string", lambda: _with_param("timeout", string_param="soon"), INVALID, "parameter 'timeout'"),
    ("timeout: NaN", lambda: _with_param("timeout", double_param=float("nan")), INVALID, "parameter 'timeout' must be a non-negative number"),
    ("timeout: infinity", lambda: _with_param("timeout", double_param=float("inf")), INVALID, "(finite), got inf"),
    ("no batch dim: wrong shape", lambda: _request("nobatch", ("x", "FP32", [1, 2, 3], np.ones((1, 2, 3), np.float32).tobytes())), INVALID, "expects [2, 3]"),
]


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_at_least_thirty_kinds():
    assert len(CASES) + len(LIMIT_CASES) + len(UNDECODABLE) >= 30


@pytest.mark.parametrize(("kind", "make", "code", "text"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_then_good_request(stub, client, kind, make, code, text):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(make(), timeout=10)
    assert info.value.code() == code, f"{kind}: {info.value.code()} {info.value.details()}"
    assert text in info.value.details(), info.value.details()
    assert client.infer("mlp", {"x": GOOD_X})["probabilities"].shape == (1, 4)


@pytest.mark.parametrize("version", ["\u00b2", "\u0661", "\uff11", "1\u0662"])
def test_unicode_digit_versions_are_invalid_on_every_model_rpc(stub, version):
    """Versions are ASCII digits: "²" (which int() refuses) and "١" (which int() reads as 1) are INVALID_ARGUMENT on
    every RPC that names a version, never INTERNAL and never version 1."""
    for call, message in (
        (stub.ModelReady, pb.ModelReadyRequest(name="mlp", version=version)),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="mlp", version=version)),
        (stub.ModelConfig, pb.ModelConfigRequest(name="mlp", version=version)),
        (stub.ModelStatistics, pb.ModelStatisticsRequest(name="mlp", version=version)),
        (stub.ModelInfer, _request("mlp", _x(), model_version=version)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(message, timeout=10)
        assert info.value.code() == INVALID, (call, info.value.details())
        assert "ASCII digits only" in info.value.details()
    assert stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="1"), timeout=10).ready


#: Bytes that are not a ModelInferRequest (or have invalid UTF-8 in a string field): sent with an identity serializer.
UNDECODABLE = [
    ("invalid UTF-8 model name", b"\x0a\x03\xff\xfe\xfd"),  # field 1 (model_name), length 3, not UTF-8
    ("garbage bytes", b"\xff\xff\xff\xff\xff\xff\xff"),
    ("truncated message", b"\x0a\x40mlp"),  # model_name claims 64 bytes, has 3
    ("invalid UTF-8 input name", b"\x2a\x04\x0a\x02\xc3\x28"),  # inputs[0].name = 0xC3 0x28
]


@pytest.mark.parametrize(("kind", "payload"), UNDECODABLE, ids=[c[0] for c in UNDECODABLE])
def test_undecodable_message_then_good_request(server, client, kind, payload):
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(payload, timeout=10)
    # grpc.aio would answer UNKNOWN (a deserializer's exception); Surge's deserializers answer INVALID_ARGUMENT
    assert info.value.code() == INVALID, info.value.details()
    assert "the ModelInfer request is not a valid protobuf message" in info.value.details()
    assert client.infer("mlp", {"x": GOOD_X})["probabilities"].shape == (1, 4)


LIMITS = Limits(max_request_bytes=64 * 1024, max_tensor_elements=1000, max_request_elements=1500, max_batch_rows=4, max_bytes_element=100)

#: Against a server started with LIMITS.
LIMIT_CASES = [
    ("message above max_request_bytes", lambda: _request("identity", ("input", "FP32", [1, 20000], b"\0" * 80000)), EXHAUSTED, "larger than max"),
    ("tensor above max_tensor_elements", lambda: _request("identity", ("input", "FP32", [1, 1001], b"\0" * 4004)), EXHAUSTED, "max_tensor_elements = 1000"),
    (
        "request above max_request_elements",
        lambda: _request("identity_all", ("in_FP32", "FP32", [1, 800], b"\0" * 3200), ("in_INT32", "INT32", [1, 800], b"\0" * 3200)),
        EXHAUSTED, "max_request_elements = 1500",
    ),
    ("rows above max_batch_rows", lambda: _request("mlp", _x(shape=(5, 16))), EXHAUSTED, "max_batch_rows = 4"),
    ("BYTES element above max_bytes_element", lambda: _bytes_tensor(_prefixed(b"a", b"b" * 101)), EXHAUSTED, "above the limit of 100"),
    (
        "typed BYTES element above max_bytes_element",
        lambda: _typed("identity_all", "in_BYTES", "BYTES", [1, 1], "bytes_contents", [b"z" * 101]), EXHAUSTED, "max_bytes_element = 100",
    ),
]


@pytest.fixture(scope="module")
def limited(test_repository):
    from tests.conftest import ServerThread
    from surge.server.app import ServerConfig

    thread = ServerThread(ServerConfig(model_repository=test_repository, grpc_port=0, metrics_port=0, http_port=0, strict_readiness=False, limits=LIMITS)).start()
    yield thread
    thread.stop()


@pytest.mark.parametrize(("kind", "make", "code", "text"), LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_limit_breach_then_good_request(limited, kind, make, code, text):
    with grpc.insecure_channel(limited.address) as channel, InferenceClient(limited.address, retries=0) as client:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(make(), timeout=10)
        assert info.value.code() == code, info.value.details()
        assert text in info.value.details(), info.value.details()
        assert client.infer("mlp", {"x": np.ones((4, 16), np.float32)})["probabilities"].shape == (4, 4)


def test_bad_requests_in_a_stream_are_answered_and_the_stream_goes_on(stub):
    requests = [
        pb.ModelInferRequest(model_name="no_such_model", id="bad-1"),
        _request("mlp", _x(shape=(1, 15)), id="bad-2"),
        _request("mlp", _x(), id="good"),
    ]
    answers = {a.infer_response.id: a for a in stub.ModelStreamInfer(iter(requests), timeout=30)}
    # Triton's plain message (no status prefix); the status name in the surge_status_code parameter
    assert answers["bad-1"].error_message.startswith("model 'no_such_model'")
    assert answers["bad-2"].error_message.startswith("input 'x' has shape [1, 15]")
    codes = {rid: a.infer_response.parameters["surge_status_code"].string_param for rid, a in answers.items() if rid != "good"}
    assert codes == {"bad-1": "NOT_FOUND", "bad-2": "INVALID_ARGUMENT"}
    assert answers["good"].error_message == "" and answers["good"].infer_response.outputs[0].shape == [1, 4]
    assert "surge_status_code" not in answers["good"].infer_response.parameters
    # every response is its request's last (one response per request): Triton's flag, errors included
    assert all(a.infer_response.parameters["triton_final_response"].bool_param for a in answers.values())


@pytest.mark.parametrize("method", ["/surge.v1.Feedback/ReportOutcome", "/surge.v1.Admin/GetRoutes"])
def test_undecodable_message_to_surge_services_is_invalid_argument(server, client, method):
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x0a\x03\xff\xfe\xfd", timeout=10)  # field 1, a string, not UTF-8
    assert info.value.code() == INVALID, info.value.details()
    assert "request is not a valid protobuf message" in info.value.details()
    assert client.infer("mlp", {"x": GOOD_X})["probabilities"].shape == (1, 4)


def test_undecodable_message_in_a_stream_is_answered_and_the_stream_goes_on(server):
    good = _request("mlp", _x(), id="good").SerializeToString()
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer", request_serializer=None,
                                     response_deserializer=pb.ModelStreamInferResponse.FromString)
        answers = list(call(iter([b"\xff\xff\xff", good]), timeout=30))
    assert len(answers) == 2
    undecodable = [a for a in answers if a.error_message.startswith("the ModelStreamInfer request is not a valid protobuf message")]
    assert len(undecodable) == 1 and undecodable[0].infer_response.parameters["surge_status_code"].string_param == "INVALID_ARGUMENT"
    assert any(a.infer_response.id == "good" and not a.error_message for a in answers)


def test_requests_during_reloads_get_ok_or_unavailable(tmp_path, start_server):
    """Explicit mode: while the model reloads over and over, every request is answered OK (old or new version) or
    UNAVAILABLE (retryable); none gets another status."""
    from tests.models import write_add_model

    write_add_model(tmp_path / "repo" / "adder" / "1" / "model.onnx", 1.0)
    server = start_server(model_repository=tmp_path / "repo", model_control_mode="explicit", load_models=("adder",))
    stop = threading.Event()
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def hammer() -> None:
        with InferenceClient(server.address, retries=0, timeout_s=30) as c:
            while not stop.is_set():
                try:
                    y = c.infer("adder", {"x": np.zeros((1, 4), np.float32)})["y"]
                    assert np.all(y == 1.0)
                    code = "OK"
                except InferenceServerError as exc:
                    code = exc.code.name if exc.code else "?"
                with lock:
                    outcomes[code] = outcomes.get(code, 0) + 1

    with InferenceClient(server.address, retries=0, timeout_s=60) as admin, concurrent.futures.ThreadPoolExecutor(3) as pool:
        workers = [pool.submit(hammer) for _ in range(3)]
        for _ in range(4):
            admin.load_model("adder")
        admin.unload_model("adder")
        admin.load_model("adder")
        stop.set()
        for w in workers:
            w.result()
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
    assert outcomes.get("OK", 0) > 0, outcomes


def test_requests_each_with_a_head_of_their_own_are_answered_and_what_is_remembered_stays_bounded(server, stub):
    """The edge remembers request heads protobuf parsed (``wire._known_heads``) and each version remembers decoded
    heads (``codec`` templates); a client making every request different (a parameter that changes each time) is
    answered correctly throughout and grows neither beyond its bound. A known head with wrong tensor bytes is refused
    as the full decode refuses it."""
    from surge.server.edge import codec, wire

    count = wire._MAX_KNOWN_HEADS + 100
    x = np.arange(16, dtype=np.float32).reshape(1, 16)

    def requests():
        for i in range(count):
            request = _request("mlp", _x(data=x.tobytes()), id=str(i))
            request.parameters["client_tag"].string_param = f"tag-{i}"
            yield request

    answers = list(stub.ModelStreamInfer(requests(), timeout=120))
    assert len(answers) == count and not [a.error_message for a in answers if a.error_message]
    outputs = {a.infer_response.raw_output_contents[0] for a in answers}
    assert len(outputs) == 1  # every request decoded to the same tensor, whichever way it was decoded
    assert 0 < len(wire._known_heads) <= wire._MAX_KNOWN_HEADS
    spec = server.server.repository.get("mlp", "").codec_spec
    assert spec is not None and 0 < len(spec.templates) <= codec._MAX_TEMPLATES

    known = _request("mlp", _x(data=x.tobytes()))
    stub.ModelInfer(known, timeout=10)  # its head is remembered now
    short = _request("mlp", _x(data=x.tobytes()[:-4]))
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(short, timeout=10)
    assert error.value.code() == INVALID and "has 60 bytes of raw data but shape [1, 16] of FP32 needs 64 bytes" in error.value.details()
    assert stub.ModelInfer(known, timeout=10).raw_output_contents[0] in outputs
