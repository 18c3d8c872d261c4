"""Surge through Triton's own Python client (tritonclient[grpc] 2.41, sync and asyncio), server in a subprocess.

Runs in its own pytest process (see conftest.py): never import surge.protos / surge.clients here.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
aioclient = pytest.importorskip("tritonclient.grpc.aio", reason="tritonclient[grpc] is not installed")
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype  # noqa: E402

from tests.models import MLP_LABELS, ONNX_DATATYPES, top_k_classes  # noqa: E402

INVALID = "StatusCode.INVALID_ARGUMENT"
NOT_FOUND = "StatusCode.NOT_FOUND"
UNAVAILABLE = "StatusCode.UNAVAILABLE"


# -- helpers -------------------------------------------------------------------------------------


def make_input(name: str, array: np.ndarray, datatype: str | None = None):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def aio_input(name: str, array: np.ndarray, datatype: str | None = None):
    tensor = aioclient.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def expect_error(call, status: str | None, *fragments: str) -> InferenceServerException:
    """Run ``call``; it must raise InferenceServerException with ``status`` and every fragment in the message."""
    with pytest.raises(InferenceServerException) as info:
        call()
    err = info.value
    assert err.status() == status, f"expected {status}, got {err.status()}: {err.message()}"
    for fragment in fragments:
        assert fragment in err.message(), f"{fragment!r} not in error message {err.message()!r}"
    return err


def mlp_rows(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)


def infer_mlp(client, x: np.ndarray, **kwargs):
    return client.infer("mlp", [make_input("x", x)], **kwargs)


@pytest.fixture(scope="module")
def mlp_reference(test_repository: Path):
    """The same mlp .onnx run in-process with onnxruntime: x -> probabilities."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(test_repository / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["probabilities"], {"x": x})[0]


def stats_of(client, name: str, version: str = "") -> dict[str, dict]:
    """ModelStatistics as JSON, by version string (uint64 fields arrive as JSON strings; absent = 0)."""
    response = client.get_inference_statistics(name, version, as_json=True)
    return {s["version"]: s for s in response.get("model_stats", [])}


def count(stats: dict, *path: str) -> int:
    node = stats
    for key in path:
        node = node.get(key, {})
    return int(node or 0)


# -- health, metadata, config --------------------------------------------------------------------


def test_live_ready_and_server_metadata(client) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    metadata = client.get_server_metadata()
    assert metadata.name == "surge"
    assert metadata.version
    extensions = set(metadata.extensions)
    # perf_analyzer reads ModelStatistics only when "statistics" is advertised; model_analyzer needs model_repository.
    assert {"statistics", "model_repository", "model_configuration"} <= extensions
    assert "system_shared_memory" in extensions  # cuda_shared_memory only where CUDA IPC handles can be opened (test_shared_memory.py)
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == "surge" and set(as_json["extensions"]) == extensions


def test_model_metadata_batch_dimension(client) -> None:
    mlp = client.get_model_metadata("mlp")
    assert mlp.name == "mlp"
    assert list(mlp.versions) == ["1"]
    assert mlp.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in mlp.inputs] == [("x", "FP32", [-1, 16])]
    assert [(t.name, t.datatype, list(t.shape)) for t in mlp.outputs] == [("probabilities", "FP32", [-1, 4])]

    nobatch = client.get_model_metadata("nobatch", as_json=True)
    assert nobatch["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["2", "3"]}]  # no leading -1
    assert nobatch["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["2", "3"]}]

    assert list(client.get_model_metadata("versioned").versions) == ["1", "2"]
    assert client.get_model_metadata("versioned", "1").name == "versioned"
    echo = client.get_model_metadata("echo_py")
    assert {t.name: t.datatype for t in echo.inputs} == {"x": "FP32", "b": "BF16"}


def test_model_config(client) -> None:
    config = client.get_model_config("mlp").config
    assert config.name == "mlp"
    assert config.max_batch_size == 64
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [16])]
    assert not config.HasField("dynamic_batching")

    as_json = client.get_model_config("mlp", as_json=True)["config"]
    assert as_json["name"] == "mlp" and as_json["max_batch_size"] == 64
    assert as_json["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["16"]}]
    assert as_json["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert "dynamic_batching" not in as_json

    slow = client.get_model_config("slow_py", as_json=True)["config"]
    assert "dynamic_batching" in slow  # present (perf_analyzer checks presence) ...
    assert slow["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 2
    assert client.get_model_config("slow_py").config.HasField("dynamic_batching")

    nobatch = client.get_model_config("nobatch", as_json=True)["config"]
    assert nobatch.get("max_batch_size", 0) == 0
    versioned = client.get_model_config("versioned", as_json=True)["config"]
    assert "all" in versioned["version_policy"]
    assert client.get_model_config("versioned", "2").config.name == "versioned"
    expect_error(lambda: client.get_model_config("nosuch"), NOT_FOUND, "nosuch")
    expect_error(lambda: client.get_model_metadata("nosuch"), NOT_FOUND, "nosuch")
    expect_error(lambda: client.get_model_metadata("mlp", "9"), NOT_FOUND, "9")


def test_model_ready(client) -> None:
    assert client.is_model_ready("mlp") is True
    assert client.is_model_ready("versioned", "1") is True
    assert client.is_model_ready("versioned", "2") is True
    assert client.is_model_ready("versioned", "3") is False
    assert client.is_model_ready("broken") is False
    assert client.is_model_ready("nosuch") is False


def test_repository_index(client) -> None:
    rows = client.get_model_repository_index(as_json=True)["models"]
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    assert {"mlp", "identity", "identity_all", "nobatch", "versioned", "echo_py", "slow_py", "broken"} <= set(by_name)
    assert [r["state"] for r in by_name["mlp"]] == ["READY"]
    assert sorted((r["version"], r["state"]) for r in by_name["versioned"]) == [("1", "READY"), ("2", "READY")]
    (broken,) = by_name["broken"]
    assert broken["state"] == "UNAVAILABLE" and broken["reason"]
    proto = client.get_model_repository_index()
    assert len(proto.models) == len(rows)


# -- inference -----------------------------------------------------------------------------------


def test_infer_mlp_matches_onnxruntime(client, mlp_reference) -> None:
    for rows, seed in ((1, 1), (5, 2), (64, 3)):
        x = mlp_rows(rows, seed)
        result = infer_mlp(client, x)
        got = result.as_numpy("probabilities")
        assert got.dtype == np.float32 and got.shape == (rows, 4)
        np.testing.assert_allclose(got, mlp_reference(x), rtol=1e-5, atol=1e-7)
        response = result.get_response()
        assert response.model_name == "mlp" and response.model_version == "1"


def test_request_id_and_requested_outputs(client) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    inputs = [make_input("x", x), make_input("b", b, "BF16")]

    result = client.infer("echo_py", inputs, request_id="req-42", outputs=[grpcclient.InferRequestedOutput("y")])
    response = result.get_response()
    assert response.id == "req-42"
    assert [o.name for o in response.outputs] == ["y"]
    assert len(response.raw_output_contents) == 1
    np.testing.assert_array_equal(result.as_numpy("y"), x)
    assert result.as_numpy("b_out") is None

    both = client.infer("echo_py", inputs, outputs=[grpcclient.InferRequestedOutput("b_out"), grpcclient.InferRequestedOutput("y")])
    assert [o.name for o in both.get_response().outputs] == ["b_out", "y"]  # in the order requested
    assert both.get_response().id == ""
    everything = client.infer("echo_py", inputs)
    assert sorted(o.name for o in everything.get_response().outputs) == ["b_out", "y"]
    assert len(everything.get_response().raw_output_contents) == 2  # one raw entry per output (C++ client relies on it)


def _sample(datatype: str) -> np.ndarray:
    """A [2, 3] array with the datatype's edge values (bit patterns must survive the round trip)."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        # ONNX Runtime string tensors hold UTF-8 (non-UTF-8 is rejected: test_bytes_must_be_utf8_for_onnx)
        return np.array([[b"", b"surge", b"\x00nul\x00"], ["h\u00e9llo \u2603".encode(), b"x" * 1000, b"\x00"]], dtype=np.object_)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)
    info = np.finfo(dtype)
    return np.array([[np.inf, -np.inf, np.nan], [info.max, info.smallest_subnormal, -0.0]], dtype=dtype)


@pytest.mark.parametrize("datatype", ONNX_DATATYPES)
def test_identity_all_datatype_round_trip(client, datatype: str) -> None:
    """All 13 inputs go in (the model needs them all); only out_<datatype> is requested and compared bit-exactly."""
    inputs = [make_input(f"in_{dt}", _sample(dt), dt) for dt in ONNX_DATATYPES]
    result = client.infer("identity_all", inputs, outputs=[grpcclient.InferRequestedOutput(f"out_{datatype}")])
    (output,) = result.get_response().outputs
    assert (output.name, output.datatype, list(output.shape)) == (f"out_{datatype}", datatype, [2, 3])
    got = result.as_numpy(f"out_{datatype}")
    sent = _sample(datatype)
    if datatype == "BYTES":
        assert got.dtype == np.object_
        assert got.tolist() == sent.tolist()
    else:
        assert got.dtype == sent.dtype
        assert got.tobytes() == sent.tobytes()


def _large(datatype: str) -> np.ndarray:
    """A [2, n] array of the datatype's values over 1 MiB (the edge's large-message path: views in, assembled out)."""
    rng = np.random.default_rng(7)
    if datatype == "BYTES":  # the size counts the element references too
        return np.array([f"{i}:{'x' * (i % 17)}".encode() for i in range(2 * 80_000)], dtype=np.object_).reshape(2, -1)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    n = (3 << 19) // dtype.itemsize  # 1.5 MiB per row
    if datatype == "BOOL":
        return rng.integers(0, 2, size=(2, n)).astype(bool)
    return rng.integers(0, 256, size=(2, n * dtype.itemsize), dtype=np.uint8).view(dtype)  # every bit pattern


def _check_bit_exact(result, datatype: str, sent: np.ndarray) -> None:
    got = result.as_numpy(f"out_{datatype}")
    assert got.shape == sent.shape
    if datatype == "BYTES":
        assert got.tolist() == sent.tolist()
    else:
        assert got.dtype == sent.dtype and got.tobytes() == sent.tobytes()


@pytest.mark.parametrize("datatype", ONNX_DATATYPES)
def test_identity_all_large_round_trip_unary_and_streamed(client, datatype: str) -> None:
    """A tensor over 1 MiB of every datatype, bit-exact both ways, over ModelInfer and over ModelStreamInfer."""
    sent = _large(datatype)
    inputs = [make_input(f"in_{dt}", sent if dt == datatype else _sample(dt)[:, :1], dt) for dt in ONNX_DATATYPES]
    outputs = [grpcclient.InferRequestedOutput(f"out_{datatype}")]
    _check_bit_exact(client.infer("identity_all", inputs, outputs=outputs, request_id="u"), datatype, sent)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("identity_all", inputs, outputs=outputs, request_id="s")
        small = [make_input(f"in_{dt}", _sample(dt), dt) for dt in ONNX_DATATYPES]
        client.async_stream_infer("identity_all", small, outputs=outputs, request_id="small")
        answers = {}
        for _ in range(2):
            result, error = responses.get(timeout=60)
            assert error is None, error
            answers[result.get_response().id] = result
    finally:
        client.stop_stream()
    _check_bit_exact(answers["s"], datatype, sent)
    _check_bit_exact(answers["small"], datatype, _sample(datatype))


def test_bytes_must_be_utf8_for_onnx(client) -> None:
    inputs = [make_input(f"in_{dt}", _sample(dt), dt) for dt in ONNX_DATATYPES if dt != "BYTES"]
    inputs.append(make_input("in_BYTES", np.array([[b"ok", b"\xff\xfe", b"ok"]] * 2, dtype=np.object_), "BYTES"))
    expect_error(lambda: client.infer("identity_all", inputs), INVALID, "'in_BYTES'", "UTF-8")


def test_identity_all_every_output_at_once(client) -> None:
    inputs = [make_input(f"in_{dt}", _sample(dt), dt) for dt in ONNX_DATATYPES]
    result = client.infer("identity_all", inputs)
    assert {o.name for o in result.get_response().outputs} == {f"out_{dt}" for dt in ONNX_DATATYPES}
    for dt in ONNX_DATATYPES:
        got, sent = result.as_numpy(f"out_{dt}"), _sample(dt)
        assert got.tolist() == sent.tolist() if dt == "BYTES" else got.tobytes() == sent.tobytes(), dt


def test_bf16_round_trip_through_echo_py(client) -> None:
    """tritonclient 2.41 supports BF16 with np.float32 arrays: it sends the high 16 bits (truncation), returns float32."""
    b = np.array([[1.5, -2.25, 3e5, np.inf], [-np.inf, 0.0, 1.0 / 3.0, -7.0]], dtype=np.float32)
    x = np.ones((2, 4), dtype=np.float32)
    result = client.infer("echo_py", [make_input("x", x), make_input("b", b, "BF16")])
    outputs = {o.name: o.datatype for o in result.get_response().outputs}
    assert outputs == {"y": "FP32", "b_out": "BF16"}
    got = result.as_numpy("b_out")
    assert got.dtype == np.float32 and got.shape == (2, 4)
    truncated = (b.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    assert got.tobytes() == truncated.tobytes()


def test_nobatch_and_versions(client) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(client.infer("nobatch", [make_input("x", x)]).as_numpy("y"), x + 1)
    v = np.ones((3, 4), dtype=np.float32)
    for version in ("1", "2"):
        result = client.infer("versioned", [make_input("x", v)], model_version=version)
        assert result.get_response().model_version == version
        np.testing.assert_array_equal(result.as_numpy("y"), v + int(version))
    latest = client.infer("versioned", [make_input("x", v)])
    assert latest.get_response().model_version == "2"  # no version: the highest one, as Triton
    np.testing.assert_array_equal(latest.as_numpy("y"), v + 2)


def test_large_message_over_4mib(client) -> None:
    """Both sides must lift gRPC's 4 MiB default (tritonclient uses INT32_MAX): 2 x 1M FP32 = 8 MB each way."""
    x = np.random.default_rng(0).standard_normal((2, 1_000_000)).astype(np.float32)
    result = client.infer("identity", [make_input("input", x)])
    assert result.as_numpy("output").tobytes() == x.tobytes()


# -- Triton's classification extension; shared memory (not yet) ------------------------------------


def test_classification_top_k_with_labels(client, mlp_reference) -> None:
    """InferRequestedOutput(class_count=k): a BYTES [rows, k] tensor of "value:index[:label]", as from Triton."""
    assert "classification" in client.get_server_metadata().extensions
    x = mlp_rows(5, 21)
    result = client.infer("mlp_labelled", [make_input("x", x)], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=3)])
    out = result.get_output("probabilities")
    assert (out.datatype, list(out.shape)) == ("BYTES", [5, 3])
    assert result.as_numpy("probabilities").tolist() == top_k_classes(mlp_reference(x), 3, MLP_LABELS)
    # no label file, more classes asked than there are, and beside a raw output
    result = client.infer("mlp", [make_input("x", x)], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=10)])
    assert result.as_numpy("probabilities").tolist() == top_k_classes(mlp_reference(x), 4)
    config = client.get_model_config("mlp_labelled", as_json=True)["config"]
    assert config["output"][0]["label_filename"] == "labels.txt"


def test_classification_without_batch_dimension(client) -> None:
    a = np.array([[0.5, -1.0, 2.0], [4.0, 0.0, 1.0]], np.float32)  # nobatch: a + 1
    result = client.infer("nobatch", [make_input("x", a)], outputs=[grpcclient.InferRequestedOutput("y", class_count=2)])
    assert result.get_output("y").shape == [2]
    assert result.as_numpy("y").tolist() == top_k_classes((a + 1).reshape(1, -1), 2)[0]


def test_unknown_shared_memory_regions_are_invalid(client, mlp_reference) -> None:
    x = make_input("x", mlp_rows(1))
    in_shm = grpcclient.InferInput("x", [1, 16], "FP32")
    in_shm.set_shared_memory("region", 64)
    expect_error(lambda: client.infer("mlp", [in_shm]), INVALID, "input 'x': no shared memory region named 'region'")
    out_shm = grpcclient.InferRequestedOutput("probabilities")
    out_shm.set_shared_memory("region", 16)
    expect_error(lambda: client.infer("mlp", [x], outputs=[out_shm]), INVALID, "output 'probabilities': no shared memory region named 'region'")
    negative = grpcclient.InferRequestedOutput("probabilities", class_count=-1)
    expect_error(lambda: client.infer("mlp", [x], outputs=[negative]), INVALID, "classification parameter must be a non-negative integer")
    np.testing.assert_allclose(infer_mlp(client, mlp_rows(1)).as_numpy("probabilities"), mlp_reference(mlp_rows(1)), rtol=1e-5, atol=1e-7)


def test_request_parameters_accepted(client, mlp_reference) -> None:
    """priority (uint64_param), timeout (int64 µs) and custom str/int/bool parameters are accepted.

    (tritonclient 2.41 refuses float parameters client-side; newer clients send them as double_param.)
    """
    x = mlp_rows(2, 4)
    result = infer_mlp(
        client, x, priority=1, timeout=30_000_000, client_timeout=30.0,
        parameters={"custom_str": "a", "custom_int": 3, "custom_bool": True},
    )  # fmt: skip
    np.testing.assert_allclose(result.as_numpy("probabilities"), mlp_reference(x), rtol=1e-5, atol=1e-7)


# -- bad requests --------------------------------------------------------------------------------


def test_bad_requests_then_good(client, mlp_reference) -> None:
    x = mlp_rows(1)
    expect_error(lambda: client.infer("nosuch", [make_input("x", x)]), NOT_FOUND, "nosuch")
    expect_error(lambda: infer_mlp(client, x, model_version="7"), NOT_FOUND, "7")
    expect_error(lambda: client.infer("mlp", [make_input("x", x.astype(np.float64))]), INVALID, "'x'", "FP64", "FP32")
    expect_error(lambda: infer_mlp(client, mlp_rows(1)[:, :15].copy()), INVALID, "'x'", "shape")
    expect_error(lambda: infer_mlp(client, x.reshape(1, 1, 16)), INVALID, "'x'", "shape")
    expect_error(lambda: infer_mlp(client, mlp_rows(65)), INVALID, "'x'", "65")  # over max_batch_size 64
    expect_error(lambda: client.infer("mlp", [make_input("x", x), make_input("extra", x)]), INVALID, "'extra'")
    expect_error(
        lambda: client.infer("echo_py", [make_input("x", np.ones((1, 2), np.float32))]), INVALID, "'b'"
    )  # missing input
    expect_error(lambda: client.infer("mlp", []), INVALID, "'x'")
    expect_error(
        lambda: infer_mlp(client, x, outputs=[grpcclient.InferRequestedOutput("nope")]), INVALID, "'nope'"
    )  # unknown output
    expect_error(lambda: client.infer("nobatch", [make_input("x", np.ones((1, 2, 3), np.float32))]), INVALID, "'x'", "shape")
    # shape says 2 rows, raw bytes hold 1: caught on the byte count
    lying = make_input("x", x)
    lying.set_shape([2, 16])
    expect_error(lambda: client.infer("mlp", [lying]), INVALID, "'x'", "bytes")
    # an unavailable model and a failing runtime
    expect_error(lambda: client.infer("broken", [make_input("x", x)]), UNAVAILABLE, "broken")
    err = expect_error(lambda: client.infer("failing_py", [make_input("x", np.array([[-1.0]], np.float32))]), "StatusCode.INTERNAL")
    assert "secret" not in err.message(), "runtime internals leaked to the client"

    result = infer_mlp(client, x)  # the server is still fine
    np.testing.assert_allclose(result.as_numpy("probabilities"), mlp_reference(x), rtol=1e-5, atol=1e-7)


def test_repository_control_rejected_in_mode_none(client) -> None:
    expect_error(lambda: client.load_model("mlp"), "StatusCode.UNAVAILABLE", "explicit model load / unload is not allowed if polling is enabled")
    expect_error(lambda: client.unload_model("mlp"), "StatusCode.UNAVAILABLE", "explicit model load / unload is not allowed if polling is enabled")
    assert client.is_model_ready("mlp") is True


# -- streaming -----------------------------------------------------------------------------------


def test_stream_good_and_bad_requests(client, mlp_reference) -> None:
    responses: queue.Queue = queue.Queue()

    def callback(sink: queue.Queue, result, error) -> None:
        sink.put((result, error))

    def collect(n: int) -> list:
        return [responses.get(timeout=30) for _ in range(n)]

    good = {f"g{i}": mlp_rows(i + 1, 10 + i) for i in range(3)}
    client.start_stream(callback=partial(callback, responses))
    try:
        client.async_stream_infer("mlp", [make_input("x", good["g0"])], request_id="g0")
        client.async_stream_infer("nosuch", [make_input("x", good["g0"])], request_id="bad-model")
        client.async_stream_infer("mlp", [make_input("x", good["g1"])], request_id="g1")
        client.async_stream_infer("mlp", [make_input("x", mlp_rows(1)[:, :8].copy())], request_id="bad-shape")
        client.async_stream_infer("mlp", [make_input("x", good["g2"])], request_id="g2")
        first = collect(5)

        results = {r.get_response().id: r for r, e in first if e is None}
        errors = sorted(e.message() for r, e in first if e is not None)
        assert sorted(results) == ["g0", "g1", "g2"], errors
        for rid, r in results.items():
            np.testing.assert_allclose(r.as_numpy("probabilities"), mlp_reference(good[rid]), rtol=1e-5, atol=1e-7)
        assert len(errors) == 2
        assert any("nosuch" in m for m in errors), errors
        assert any("'x'" in m and "shape" in m for m in errors), errors

        # the stream is still open: later requests succeed
        later = mlp_rows(4, 99)
        client.async_stream_infer("mlp", [make_input("x", later)], request_id="after-errors")
        ((result, error),) = collect(1)
        assert error is None, error
        assert result.get_response().id == "after-errors"
        np.testing.assert_allclose(result.as_numpy("probabilities"), mlp_reference(later), rtol=1e-5, atol=1e-7)
    finally:
        client.stop_stream()
    assert responses.empty()


@pytest.mark.parametrize("empty_final", [False, True], ids=["plain", "enable_empty_final_response"])
def test_stream_final_response_flag(client, mlp_reference, empty_final: bool) -> None:
    """The loop Triton's docs and users write: read responses until one carries triton_final_response. Every Surge
    model answers once per request (non-decoupled, in Triton's terms), so that one response is final and has the
    outputs, with or without enable_empty_final_response (Triton sends an empty final response only for decoupled
    models). Errors come as Triton writes them: the plain message, no status prefix."""
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        xs = {f"r{i}": mlp_rows(i + 1, 40 + i) for i in range(3)}
        for rid, x in xs.items():
            client.async_stream_infer("mlp", [make_input("x", x)], request_id=rid, enable_empty_final_response=empty_final)
        client.async_stream_infer("mlp", [make_input("x", mlp_rows(1)[:, :8].copy())], request_id="bad", enable_empty_final_response=empty_final)
        finals: dict[str, object] = {}
        errors = []
        while len(finals) + len(errors) < len(xs) + 1:  # waits for the flag: it would hang here without it
            result, error = responses.get(timeout=30)
            if error is not None:
                errors.append(error)
                continue
            response = result.get_response()
            assert response.parameters["triton_final_response"].bool_param, response
            assert response.id not in finals, f"a second response for {response.id}"
            finals[response.id] = result
        assert sorted(finals) == sorted(xs)
        for rid, result in finals.items():
            np.testing.assert_allclose(result.as_numpy("probabilities"), mlp_reference(xs[rid]), rtol=1e-5, atol=1e-7)
        (error,) = errors
        assert error.message().startswith("input 'x' has shape [1, 8]"), error.message()
    finally:
        client.stop_stream()
    assert responses.empty()  # no extra (empty) responses followed


# -- statistics ----------------------------------------------------------------------------------


def test_inference_statistics(client) -> None:
    before = stats_of(client, "mlp")["1"]
    for rows in (1, 2, 3):
        infer_mlp(client, mlp_rows(rows))
    with pytest.raises(InferenceServerException):
        infer_mlp(client, mlp_rows(1)[:, :3].copy())
    after = stats_of(client, "mlp")["1"]

    assert after["name"] == "mlp" and after["version"] == "1"
    assert count(after, "inference_count") - count(before, "inference_count") == 6
    assert count(after, "execution_count") - count(before, "execution_count") == 3
    for stage in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert count(after, "inference_stats", stage, "count") - count(before, "inference_stats", stage, "count") == 3, stage
    assert count(after, "inference_stats", "success", "ns") > count(before, "inference_stats", "success", "ns")
    assert count(after, "inference_stats", "fail", "count") - count(before, "inference_stats", "fail", "count") == 1
    assert count(after, "last_inference") > 0

    # versioned: "" = every version (perf_analyzer picks the one whose queue.count moved)
    v_before = stats_of(client, "versioned")
    assert sorted(v_before) == ["1", "2"]
    client.infer("versioned", [make_input("x", np.ones((2, 4), np.float32))], model_version="1")
    v_after = stats_of(client, "versioned")
    assert count(v_after["1"], "inference_stats", "queue", "count") == count(v_before["1"], "inference_stats", "queue", "count") + 1
    assert count(v_after["2"], "inference_stats", "queue", "count") == count(v_before["2"], "inference_stats", "queue", "count")
    assert sorted(stats_of(client, "versioned", "2")) == ["2"]

    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {"mlp", "versioned", "identity_all"} <= {s["name"] for s in everything}
    assert all(s["version"].isdigit() for s in everything), [s["version"] for s in everything]
    proto = client.get_inference_statistics("mlp")
    assert proto.model_stats[0].inference_stats.success.count >= 3

    expect_error(lambda: client.get_inference_statistics("nosuch"), NOT_FOUND, "nosuch")
    expect_error(lambda: client.get_inference_statistics("mlp", "7"), NOT_FOUND, "7")


# -- explicit model control ----------------------------------------------------------------------


def test_explicit_mode_initial_state(explicit_client) -> None:
    assert explicit_client.is_server_ready() is True
    assert explicit_client.is_model_ready("identity") is True  # --load-model identity
    assert explicit_client.is_model_ready("mlp") is False
    rows = {r["name"]: r for r in explicit_client.get_model_repository_index(as_json=True)["models"]}
    assert "mlp" in rows and rows["mlp"].get("state") != "READY"  # listed although not loaded
    assert rows["identity"]["state"] == "READY"


def test_explicit_load_infer_unload(explicit_client, mlp_reference) -> None:
    c = explicit_client
    x = mlp_rows(3, 5)
    expect_error(lambda: infer_mlp(c, x), UNAVAILABLE, "mlp")  # in the repository, not loaded
    c.load_model("mlp")
    assert c.is_model_ready("mlp") is True
    np.testing.assert_allclose(infer_mlp(c, x).as_numpy("probabilities"), mlp_reference(x), rtol=1e-5, atol=1e-7)

    c.unload_model("mlp")
    assert c.is_model_ready("mlp") is False
    expect_error(lambda: infer_mlp(c, x), UNAVAILABLE, "mlp")
    assert c.is_model_ready("identity") is True  # others untouched

    c.load_model("mlp")  # and back
    np.testing.assert_allclose(infer_mlp(c, x).as_numpy("probabilities"), mlp_reference(x), rtol=1e-5, atol=1e-7)
    c.unload_model("mlp")


def _threads(pid: int) -> int:
    return int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Threads:")).split()[1])


def test_load_config_past_a_bound_is_refused_naming_key_and_bound(explicit_client, explicit_server) -> None:
    """model_analyzer's way with values no machine can serve: refused before anything is built, the server unharmed."""
    c = explicit_client
    c.load_model("mlp")
    threads = _threads(explicit_server.proc.pid)
    for config, fragments in (
        ({"parameters": {"intra_op_threads": {"string_value": "10000"}}}, ("parameters.intra_op_threads", "(4 per core")),
        ({"instance_group": [{"count": 10000, "kind": "KIND_CPU"}]}, ("instance_group.count", "(4 per core")),
        ({"dynamic_batching": {"max_queue_delay_microseconds": str(2**62)}}, ("dynamic_batching.max_queue_delay_s", "from 0 to 10 (seconds)")),
        ({"optimization": {"priority": "PRIORITY_MAX"}}, ("'optimization'", "which Surge does not apply")),
    ):
        expect_error(lambda: c.load_model("mlp", config=json.dumps(config)), INVALID, *fragments)
    assert _threads(explicit_server.proc.pid) <= threads + 2
    x = mlp_rows(2)
    assert infer_mlp(c, x).as_numpy("probabilities").shape == (2, 4)  # the served version is untouched
    c.unload_model("mlp")


def test_load_errors_carry_no_server_path(explicit_client, explicit_server) -> None:
    root = str(explicit_server.repository)
    err = expect_error(lambda: explicit_client.load_model("broken"), "StatusCode.UNAVAILABLE", "broken/1/model.onnx")
    assert root not in err.message()
    index = explicit_client.get_model_repository_index(as_json=True)["models"]
    assert all(root not in m.get("reason", "") for m in index) and any("broken/1/model.onnx" in m.get("reason", "") for m in index)
    explicit_client.unload_model("broken")


def test_explicit_load_with_config_override(explicit_client, mlp_reference) -> None:
    """model_analyzer's way: RepositoryModelLoad with parameters["config"] = Triton ModelConfig JSON."""
    c = explicit_client
    override = {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 500, "preferred_batch_size": [2, 4]}}
    c.load_model("mlp", config=json.dumps(override))
    try:
        config = c.get_model_config("mlp", as_json=True)["config"]
        assert config["max_batch_size"] == 4
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "500"
        assert config["dynamic_batching"]["preferred_batch_size"] == [2, 4]
        assert config["input"][0]["name"] == "x"  # the rest comes from the repository
        assert [list(t.shape) for t in c.get_model_metadata("mlp").inputs] == [[-1, 16]]

        x = mlp_rows(4, 6)
        np.testing.assert_allclose(infer_mlp(c, x).as_numpy("probabilities"), mlp_reference(x), rtol=1e-5, atol=1e-7)
        expect_error(lambda: infer_mlp(c, mlp_rows(5)), INVALID, "'x'")  # over the new max_batch_size

        c.load_model("mlp")  # reload without config: the repository's config again
        config = c.get_model_config("mlp", as_json=True)["config"]
        assert config["max_batch_size"] == 64
        assert "dynamic_batching" not in config
        infer_mlp(c, mlp_rows(5))
    finally:
        c.unload_model("mlp")


def test_explicit_load_errors(explicit_client) -> None:
    c = explicit_client
    for call in (
        lambda: c.load_model("nosuch"),
        lambda: c.load_model("mlp", config="{not json"),
        lambda: c.load_model("mlp", config=json.dumps({"name": "other", "max_batch_size": 4})),
        lambda: c.load_model("broken"),
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() in (NOT_FOUND, INVALID, UNAVAILABLE, "StatusCode.INTERNAL"), info.value
    expect_error(lambda: c.load_model("mlp", config="{not json"), INVALID, "JSON")
    assert c.is_model_ready("mlp") is False
    assert c.is_model_ready("identity") is True
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(c.infer("identity", [make_input("input", x)]).as_numpy("output"), x)


def test_explicit_failed_reload_is_an_error_and_old_version_keeps_serving(explicit_client) -> None:
    c = explicit_client
    c.load_model("mlp")
    try:
        # max_batch_size 0 contradicts the model file's batch dimension: this load must fail
        with pytest.raises(InferenceServerException) as info:
            c.load_model("mlp", config=json.dumps({"max_batch_size": 0}))
        assert info.value.status() in (INVALID, UNAVAILABLE) and "mlp" in info.value.message()
        assert c.is_model_ready("mlp") is True  # ... and the previous instance keeps serving
        assert c.get_model_config("mlp", as_json=True)["config"]["max_batch_size"] == 64
    finally:
        c.unload_model("mlp")


# -- asyncio client ------------------------------------------------------------------------------


async def test_aio_metadata_and_concurrent_infer(surge_server, mlp_reference) -> None:
    async with aioclient.InferenceServerClient(surge_server.address) as c:
        assert await c.is_server_live() is True
        assert await c.is_server_ready() is True
        assert await c.is_model_ready("mlp") is True
        assert "statistics" in (await c.get_server_metadata()).extensions
        assert [list(t.shape) for t in (await c.get_model_metadata("mlp")).inputs] == [[-1, 16]]
        assert (await c.get_model_config("mlp", as_json=True))["config"]["max_batch_size"] == 64

        xs = [mlp_rows(1 + i % 4, 100 + i) for i in range(16)]
        results = await asyncio.gather(*(c.infer("mlp", [aio_input("x", x)], request_id=f"r{i}") for i, x in enumerate(xs)))
        for i, (x, result) in enumerate(zip(xs, results)):
            assert result.get_response().id == f"r{i}"
            np.testing.assert_allclose(result.as_numpy("probabilities"), mlp_reference(x), rtol=1e-5, atol=1e-7)

        with pytest.raises(InferenceServerException) as info:
            await c.infer("mlp", [aio_input("x", np.ones((1, 3), np.float32))])
        assert info.value.status() == INVALID and "'x'" in info.value.message()


async def test_aio_stream_infer(surge_server, mlp_reference) -> None:
    xs = {"a": mlp_rows(2, 7), "c": mlp_rows(3, 8)}

    async def requests():
        yield {"model_name": "mlp", "inputs": [aio_input("x", xs["a"])], "request_id": "a"}
        yield {"model_name": "nosuch", "inputs": [aio_input("x", xs["a"])], "request_id": "b"}
        yield {"model_name": "mlp", "inputs": [aio_input("x", xs["c"])], "request_id": "c"}

    async with aioclient.InferenceServerClient(surge_server.address) as c:
        stream = c.stream_infer(requests())
        results, errors = {}, []
        async for result, error in stream:
            if error is not None:
                errors.append(error.message())
            else:
                results[result.get_response().id] = result.as_numpy("probabilities")
            if len(results) + len(errors) == 3:
                break
        stream.cancel()
    assert sorted(results) == ["a", "c"] and len(errors) == 1 and "nosuch" in errors[0]
    for rid, got in results.items():
        np.testing.assert_allclose(got, mlp_reference(xs[rid]), rtol=1e-5, atol=1e-7)


async def test_aio_queue_full_is_unavailable(surge_server) -> None:
    """slow_py: 1 instance, max_queue_size 2. Six concurrent 0.5 s requests: some are rejected with UNAVAILABLE."""
    async with aioclient.InferenceServerClient(surge_server.address) as c:
        delay = np.array([[0.5]], dtype=np.float32)
        outcomes = await asyncio.gather(
            *(c.infer("slow_py", [aio_input("delay_s", delay)]) for _ in range(6)), return_exceptions=True
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        assert failures, "no request was rejected although the queue holds 2"
        for failure in failures:
            assert isinstance(failure, InferenceServerException), repr(failure)
            assert failure.status() == UNAVAILABLE, f"{failure.status()}: {failure.message()}"
        successes = [o for o in outcomes if not isinstance(o, BaseException)]
        assert 1 <= len(successes) <= 3 + 1
        # after the burst the model serves again
        result = await c.infer("slow_py", [aio_input("delay_s", np.array([[0.0]], np.float32))])
        assert result.as_numpy("delay_s_out").tolist() == [[0.0]]


async def test_aio_2000_concurrent_calls_on_one_client_all_succeed(surge_server) -> None:
    """More calls at once than the server's stream cap per connection (1024): tritonclient's channel queues the
    rest on its side (the server advertises the cap it enforces), so none is refused."""
    x = mlp_rows(1, 5)
    async with aioclient.InferenceServerClient(surge_server.address) as c:
        await c.infer("mlp", [aio_input("x", x)])  # a warm channel
        for _ in range(2):
            outcomes = await asyncio.gather(*(c.infer("mlp", [aio_input("x", x)]) for _ in range(2000)), return_exceptions=True)
            failures = [f"{o.status()}: {o.message()}" if isinstance(o, InferenceServerException) else repr(o) for o in outcomes if isinstance(o, BaseException)]
            assert not failures, (len(failures), failures[:3])


def test_no_surge_protos_imported() -> None:
    loaded = sorted(m for m in sys.modules if m.startswith(("surge.protos", "surge.clients", "surge.server.app", "surge.server.edge.grpc_servicer")))
    assert not loaded
