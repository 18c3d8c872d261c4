"""Micro-benchmarks of the gRPC edge's encode and decode, before and after side by side (pytest-benchmark).

    .venv/bin/python -m pytest bench/micro/test_wire_paths.py --benchmark-only --benchmark-group-by=group

Each group times the earlier way (``before``: kept here, as the edge did it) against the edge's own function
(``after``) in the same run:

- ``tiny-response``: a 1x16 FP32 answer as ModelStreamInferResponse bytes: a protobuf message per request
  (``encode_response``, the final flag, wrapped, serialised) against the version's skeleton (``encode_header``
  + ``wire.join``).
- ``16MiB-output-on-loop``: the event loop's share of a 16 MiB FP32 answer: ``tobytes`` + ``raw_output_contents``
  append + serialisation against the header from the skeleton (the output's bytes are written by
  ``wire.assemble`` in a worker thread; ``16MiB-output-assembly`` times that thread's work alone).
- ``16MiB-input``: a received 16 MiB FP32 request to a decoded array: protobuf's parse and ``raw_input_contents``
  read (each read copies) against ``wire.parse_infer_request`` (views over the received bytes).
- ``tiny-request``: a received 1x16 FP32 request (as perf_analyzer sends it) to a decoded array: protobuf's parse
  and the codec's full decode against ``wire.parse_infer_request``'s scan and the version's template for a head
  it has decoded before.
"""

from __future__ import annotations

import numpy as np
import pytest

from surge.protos import grpc_service_pb2 as pb
from surge.server.config import TensorConfig, parse_model_config
from surge.server.edge import codec, stream, wire

MIB = 1 << 20
BIG = np.random.default_rng(0).standard_normal((4, 4 * MIB // 16)).astype(np.float32)  # 16 MiB


def _spec(features: int) -> codec._ModelSpec:
    config = parse_model_config("m", {"max_batch_size": 64}).with_signature(
        (TensorConfig(name="x", datatype="FP32", dims=(-1,)),), (TensorConfig(name="y", datatype="FP32", dims=(-1,)),), 64
    )
    return codec.model_spec(config)


def _before_stream_answer(request: pb.ModelInferRequest, spec: codec._ModelSpec, outputs: dict[str, np.ndarray]) -> bytes:
    response = codec.encode_response(request, spec, "1", outputs, ("y",))
    response.parameters[stream.FINAL_RESPONSE].bool_param = True
    return pb.ModelStreamInferResponse(infer_response=response).SerializeToString()


def _after_stream_answer(request: pb.ModelInferRequest, spec: codec._ModelSpec, outputs: dict[str, np.ndarray]) -> bytes:
    return wire.join(*codec.encode_header(request.id, spec, "1", outputs, ("y",), parameters=stream.FINAL_PARAMETER), stream=True)


@pytest.mark.benchmark(group="tiny-response")
@pytest.mark.parametrize("way", ["before", "after"])
def test_tiny_stream_answer(benchmark, way: str) -> None:
    spec, request = _spec(16), pb.ModelInferRequest(id="42")
    outputs = {"y": np.ones((1, 16), np.float32)}
    fn = _before_stream_answer if way == "before" else _after_stream_answer
    built = benchmark(fn, request, spec, outputs)
    assert built == _before_stream_answer(request, spec, outputs)


def _before_big_output(spec: codec._ModelSpec) -> bytes:
    return codec.encode_response(pb.ModelInferRequest(id="r"), spec, "1", {"y": BIG}, ("y",)).SerializeToString()


def _after_big_output_on_loop(spec: codec._ModelSpec) -> tuple[bytes, list[np.ndarray]]:
    return codec.encode_header("r", spec, "1", {"y": BIG}, ("y",))


@pytest.mark.benchmark(group="16MiB-output-on-loop")
@pytest.mark.parametrize("way", ["before", "after"])
def test_16mib_output_on_the_loop(benchmark, way: str) -> None:
    spec = _spec(BIG.shape[1])
    if way == "before":
        benchmark(_before_big_output, spec)
    else:
        header, arrays = benchmark(_after_big_output_on_loop, spec)
        assert wire.assemble(header, arrays) == _before_big_output(spec)


@pytest.mark.benchmark(group="16MiB-output-assembly")
def test_16mib_output_assembly_in_its_thread(benchmark) -> None:
    header, arrays = _after_big_output_on_loop(_spec(BIG.shape[1]))
    benchmark(wire.assemble, header, arrays)


def _received_big_request() -> bytes:
    request = pb.ModelInferRequest(model_name="m", id="r")
    request.inputs.add(name="x", datatype="FP32", shape=BIG.shape)
    request.raw_input_contents.append(BIG.tobytes())
    return request.SerializeToString()


@pytest.mark.benchmark(group="16MiB-input")
@pytest.mark.parametrize("way", ["before", "after"])
def test_16mib_input_decode(benchmark, way: str) -> None:
    spec, received = _spec(BIG.shape[1]), _received_big_request()
    parse = pb.ModelInferRequest.FromString if way == "before" else wire.parse_infer_request
    decoded = benchmark(lambda: codec.decode_request(parse(received), spec))
    assert decoded.inputs["x"].tobytes() == BIG.tobytes()
    assert np.shares_memory(decoded.inputs["x"], np.frombuffer(received, np.uint8)) == (way == "after")


def _received_tiny_request() -> bytes:
    """What perf_analyzer sends for ``tiny``: model name, one 1x16 FP32 input described and in raw contents."""
    request = pb.ModelInferRequest(model_name="tiny", id="7")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.arange(16, dtype=np.float32).tobytes())
    return request.SerializeToString()


@pytest.mark.benchmark(group="tiny-request")
@pytest.mark.parametrize("way", ["before", "after"])
def test_tiny_request_decode(benchmark, way: str) -> None:
    spec, received = _spec(16), _received_tiny_request()
    parse = pb.ModelInferRequest.FromString if way == "before" else wire.parse_infer_request
    decoded = benchmark(lambda: codec.decode_request(parse(received), spec))
    assert decoded.inputs["x"].tolist() == [list(range(16))]
    if way == "after":  # the head was decoded once, then every request came from the version's template
        assert len(spec.templates) == 1
