"""Both edges over one data plane (``server/dataplane.py``): big binary tensors of every datatype reach the model
and come back bit for bit on gRPC and on REST, REST's as views of the HTTP body; and a request the data plane
refuses gets the same message on either edge, with the status each edge's table gives its status name."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from surge.clients import InferenceClient
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from surge.protos.datatypes import (
    deserialize_bytes_tensor,
    numpy_dtype,
    serialize_bytes_tensor,
)

from tests.integration.test_rest import binary_request, http, split_binary
from tests.models import ONNX_DATATYPES

ROWS = 2
INPUT_BYTES = 1 << 19  # per numeric input: 13 inputs make a request of about 6.5 MiB


def big_inputs(seed: int) -> dict[str, np.ndarray]:
    """One input per datatype of identity_all: random bits for numbers (NaN payloads and subnormals included), random text."""
    rng = np.random.default_rng(seed)
    out = {}
    for dt in ONNX_DATATYPES:
        if dt == "BYTES":
            texts = [bytes(rng.integers(32, 127, int(n), dtype=np.uint8)) + "\u00e9".encode() * int(n % 3) for n in rng.integers(0, 4096, ROWS * 128)]
            out[dt] = np.array(texts, dtype=object).reshape(ROWS, 128)  # UTF-8 text: ONNX Runtime's string tensors require it
        elif dt == "BOOL":
            out[dt] = rng.integers(0, 2, (ROWS, INPUT_BYTES // ROWS)).astype(bool)
        else:
            dtype = numpy_dtype(dt)
            n = INPUT_BYTES // dtype.itemsize // ROWS
            out[dt] = np.frombuffer(rng.bytes(ROWS * n * dtype.itemsize), dtype).reshape(ROWS, n)
    return out


def wire_bytes(dt: str, array: np.ndarray) -> bytes:
    return serialize_bytes_tensor(array) if dt == "BYTES" else array.tobytes()


def rest_request(arrays: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    buffers = [wire_bytes(dt, a) for dt, a in arrays.items()]
    header = {
        "inputs": [{"name": f"in_{dt}", "datatype": dt, "shape": list(a.shape), "parameters": {"binary_data_size": len(b)}}
                   for (dt, a), b in zip(arrays.items(), buffers)],
        "outputs": [{"name": f"out_{dt}", "parameters": {"binary_data": True}} for dt in arrays],
    }  # fmt: skip
    return binary_request(header, *buffers)


def test_big_binary_tensors_of_every_datatype_round_trip_bit_exact_on_both_edges(server) -> None:
    arrays = big_inputs(7)
    body, headers = rest_request(arrays)
    reply = http(server.server.http_address, "POST", "/v2/models/identity_all/infer", body, headers)
    assert reply.status == 200, reply.body[:300]
    doc, raw = split_binary(reply)
    shapes = {o["name"]: o["shape"] for o in doc["outputs"]}
    with InferenceClient(server.address, timeout_s=60.0, retries=0) as client:
        result = client.infer("identity_all", {f"in_{dt}": a for dt, a in arrays.items()})
    for dt, sent in arrays.items():
        name = f"out_{dt}"
        assert shapes[name] == list(sent.shape)
        assert raw[name] == wire_bytes(dt, sent), f"REST {dt}"
        got = result[name]
        if dt == "BYTES":
            assert list(got.reshape(-1)) == list(sent.reshape(-1)), f"gRPC {dt}"
        else:
            assert got.dtype == sent.dtype and got.shape == sent.shape and got.tobytes() == sent.tobytes(), f"gRPC {dt}"
        if dt == "BYTES":
            assert list(deserialize_bytes_tensor(raw[name], sent.size)) == list(sent.reshape(-1))


def _root_buffer(array: np.ndarray) -> object:
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_rest_binary_inputs_reach_the_model_as_views_of_the_http_body(server, monkeypatch) -> None:
    """What the model version is asked to run on: numpy views whose memory is the request body (no copy into a
    message or a new array on the way from the socket to the batcher)."""
    version = server.server.repository.get("identity_all", "")
    seen: dict[str, np.ndarray] = {}
    execute = version.execute

    async def recording(inputs, *args, **kwargs):
        seen.update(inputs)
        return await execute(inputs, *args, **kwargs)

    monkeypatch.setattr(version, "execute", recording)
    body, headers = rest_request(big_inputs(11))
    reply = http(server.server.http_address, "POST", "/v2/models/identity_all/infer", body, headers)
    assert reply.status == 200, reply.body[:300]
    for dt in ONNX_DATATYPES:
        if dt == "BYTES":
            continue  # length-prefixed elements become Python bytes objects: a copy by nature
        array = seen[f"in_{dt}"]
        assert not array.flags.owndata, dt
        root = _root_buffer(array)
        assert isinstance(root, bytes) and len(root) == len(body), f"{dt}: {type(root).__name__}"


_REFUSED = [
    ("no_such_model", "FP32", [1, 16], 404, grpc.StatusCode.NOT_FOUND),
    ("mlp", "INT32", [1, 16], 400, grpc.StatusCode.INVALID_ARGUMENT),
    ("mlp", "FP32", [1, 15], 400, grpc.StatusCode.INVALID_ARGUMENT),
    ("mlp", "FP32", [10**6, 16], 400, grpc.StatusCode.INVALID_ARGUMENT),
]


@pytest.mark.parametrize(("model", "datatype", "shape", "http_status", "grpc_code"), _REFUSED)
def test_a_refused_request_gets_the_same_message_on_both_edges(server, model, datatype, shape, http_status, grpc_code) -> None:
    count = int(np.prod(shape)) if np.prod(shape) < 10**5 else 16
    raw = np.zeros(count, numpy_dtype(datatype)).tobytes()
    body, headers = binary_request(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}]}, raw
    )
    reply = http(server.server.http_address, "POST", f"/v2/models/{model}/infer", body, headers)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert (reply.status, caught.value.code()) == (http_status, grpc_code)
    assert json.loads(reply.body) == {"error": caught.value.details()}
