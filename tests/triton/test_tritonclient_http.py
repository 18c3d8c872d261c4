"""Surge's REST v2 through Triton's own HTTP client (tritonclient[http] 2.41: sync, gevent async, asyncio).

Runs in its own pytest process (see conftest.py): never import surge.protos / surge.clients here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
aiohttpclient = pytest.importorskip("tritonclient.http.aio", reason="tritonclient[http] is not installed")
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

from tests.models import MLP_LABELS, ONNX_DATATYPES, top_k_classes, write_test_repository  # noqa: E402
from tests.process import SurgeProcess  # noqa: E402


@pytest.fixture(scope="module")
def http_client(surge_server: SurgeProcess) -> Iterator[object]:
    assert surge_server.http_address, surge_server.log()
    c = httpclient.InferenceServerClient(surge_server.http_address, concurrency=4)
    yield c
    c.close()


@pytest.fixture(scope="module")
def explicit_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Its own explicit-mode server (the gRPC suite's explicit server has its own expectations)."""
    repository = write_test_repository(tmp_path_factory.mktemp("http-explicit-repository"))
    server = SurgeProcess(repository, tmp_path_factory.mktemp("http-explicit"), "--model-control-mode", "explicit", "--load-model", "identity").start()
    c = httpclient.InferenceServerClient(server.http_address)
    yield c
    c.close()
    server.stop_and_check()


@pytest.fixture(scope="module")
def mlp_reference(test_repository: Path):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(test_repository / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["probabilities"], {"x": x})[0]


def make_input(name: str, array: np.ndarray, datatype: str | None = None, *, binary: bool = True):
    tensor = httpclient.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def mlp_rows(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)


def expect_error(call, status: str, *fragments: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == status, f"expected HTTP {status}, got {info.value.status()}: {info.value.message()}"
    for fragment in fragments:
        assert fragment in info.value.message(), info.value.message()


def test_health_and_server_metadata(http_client) -> None:
    assert http_client.is_server_live() and http_client.is_server_ready()
    metadata = http_client.get_server_metadata()
    assert metadata["name"] == "surge" and "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_config_and_readiness(http_client) -> None:
    metadata = http_client.get_model_metadata("mlp")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    config = http_client.get_model_config("mlp_batched")
    assert config["max_batch_size"] == 64 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 20000
    assert http_client.is_model_ready("mlp") and http_client.is_model_ready("versioned", "2")
    assert not http_client.is_model_ready("broken") and not http_client.is_model_ready("nope")
    expect_error(lambda: http_client.get_model_metadata("nope"), "404", "not in the repository")


def test_infer_binary_and_json_match_onnxruntime(http_client, mlp_reference) -> None:
    x = mlp_rows(5)
    expected = mlp_reference(x)
    binary = http_client.infer("mlp", [make_input("x", x)])  # binary in, binary_data_output for all
    np.testing.assert_allclose(binary.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)
    as_json = http_client.infer(
        "mlp", [make_input("x", x, binary=False)], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)], request_id="r-1"
    )
    np.testing.assert_allclose(as_json.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)
    response = as_json.get_response()
    assert response["id"] == "r-1" and "data" in response["outputs"][0]


@pytest.mark.parametrize("datatype", ONNX_DATATYPES)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_identity_all_datatype_round_trip(http_client, datatype: str, binary: bool) -> None:
    rng = np.random.default_rng(1)

    def array_of(dt: str) -> np.ndarray:
        if dt == "BYTES":
            return np.array([[b"ab", b""], ["\u00e9t\u00e9".encode(), b"z"]], dtype=np.object_)
        if dt == "BOOL":
            return np.array([[True, False], [False, True]])
        if dt.startswith("FP"):
            return rng.standard_normal((2, 2)).astype({"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[dt])
        info = np.iinfo(np.dtype(dt.lower()))
        return np.array([[info.min, info.max], [0, 1]], dtype=np.dtype(dt.lower()))

    arrays = {dt: array_of(dt) for dt in ONNX_DATATYPES}
    inputs = [make_input(f"in_{dt}", a, dt, binary=binary) for dt, a in arrays.items()]
    outputs = [httpclient.InferRequestedOutput(f"out_{datatype}", binary_data=binary)]
    result = http_client.infer("identity_all", inputs, outputs=outputs)
    got = result.as_numpy(f"out_{datatype}")
    expected = arrays[datatype]
    if datatype == "BYTES" and not binary:  # JSON strings come back as str
        got = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(got)
    np.testing.assert_array_equal(got, expected)


def test_bf16_round_trip_through_echo_py(http_client) -> None:
    metadata = http_client.get_model_metadata("echo_py")
    names = {t["name"]: t for t in metadata["inputs"]}
    assert names["b"]["datatype"] == "BF16"
    x = np.ones((1, 4), np.float32)
    b = np.array([[1.5, -2.0, 0.25, 8.0]], np.float32)
    inputs = [make_input("x", x), make_input("b", b, "BF16")]
    result = http_client.infer("echo_py", inputs)
    np.testing.assert_array_equal(result.as_numpy("b_out").astype(np.float32), b)


def test_versions_priority_timeout_and_compression(http_client) -> None:
    x = np.zeros((1, 4), np.float32)
    for version in ("1", "2"):
        result = http_client.infer("versioned", [make_input("x", x)], model_version=version)
        assert result.get_response()["model_version"] == version
        np.testing.assert_array_equal(result.as_numpy("y"), x + int(version))
    x16 = mlp_rows(2)
    result = http_client.infer(
        "mlp_batched", [make_input("x", x16)], priority=1, timeout=10_000_000,
        request_compression_algorithm="gzip", response_compression_algorithm="gzip",
    )  # fmt: skip
    assert result.as_numpy("probabilities").shape == (2, 4)
    expect_error(lambda: http_client.infer("mlp_batched", [make_input("x", x16)], priority=5), "400", "priority 5")


def test_large_request_over_4mib(http_client) -> None:
    x = np.arange(8 * 1024 * 160, dtype=np.float32).reshape(8, -1)  # 5 MiB through identity (FP32 [-1, -1])
    result = http_client.infer("identity", [make_input("input", x)])
    np.testing.assert_array_equal(result.as_numpy("output"), x)


def test_errors_carry_the_http_status_and_the_servers_message(http_client) -> None:
    expect_error(lambda: http_client.infer("nope", [make_input("x", mlp_rows(1))]), "404", "not in the repository")
    expect_error(lambda: http_client.infer("mlp", [make_input("x", np.zeros((1, 15), np.float32))]), "400", "expects [-1, 16]")
    expect_error(lambda: http_client.infer("mlp", [make_input("x", np.zeros((1, 16), np.float64))]), "400", "FP64 but model 'mlp' expects FP32")
    expect_error(lambda: http_client.infer("broken", [make_input("x", mlp_rows(1))]), "503", "not ready")
    expect_error(lambda: http_client.infer("failing_py", [make_input("x", -np.ones((1, 1), np.float32))]), "500", "request id")
    expect_error(lambda: http_client.get_system_shared_memory_status("nope"), "400", "no system shared memory region named 'nope'")
    expect_error(lambda: http_client.load_model("mlp"), "503", "explicit model load / unload is not allowed if polling is enabled", "model-control-mode")
    assert http_client.infer("mlp", [make_input("x", mlp_rows(1))]).as_numpy("probabilities").shape == (1, 4)  # still serving


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_top_k_with_labels(http_client, mlp_reference, binary: bool) -> None:
    """The same classification as over gRPC: BYTES [rows, k] of "value:index[:label]", binary or JSON."""
    assert "classification" in http_client.get_server_metadata()["extensions"]
    x = mlp_rows(4, 31)
    wanted = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
    result = http_client.infer("mlp_labelled", [make_input("x", x)], outputs=[wanted])
    out = result.get_output("probabilities")
    assert (out["datatype"], out["shape"]) == ("BYTES", [4, 2])
    got = result.as_numpy("probabilities").tolist()
    expected = top_k_classes(mlp_reference(x), 2, MLP_LABELS)
    assert got == (expected if binary else [[v.decode() for v in row] for row in expected])


def test_unknown_shared_memory_regions_are_400_as_over_grpc(http_client) -> None:
    in_shm = httpclient.InferInput("x", [1, 16], "FP32")
    in_shm.set_shared_memory("region", 64)
    expect_error(lambda: http_client.infer("mlp", [in_shm]), "400", "input 'x': no shared memory region named 'region'")
    out_shm = httpclient.InferRequestedOutput("probabilities")
    out_shm.set_shared_memory("region", 16)
    expect_error(lambda: http_client.infer("mlp", [make_input("x", mlp_rows(1))], outputs=[out_shm]), "400", "output 'probabilities': no shared memory region")


def test_statistics_and_repository_index(http_client) -> None:
    before = http_client.get_inference_statistics("mlp")["model_stats"][0]["inference_count"]
    http_client.infer("mlp", [make_input("x", mlp_rows(3))])
    stats = http_client.get_inference_statistics("mlp", "1")["model_stats"]
    assert [s["version"] for s in stats] == ["1"] and stats[0]["inference_count"] == before + 3  # numbers, as Triton writes them
    assert stats[0]["inference_stats"]["success"]["count"] >= 1
    assert {s["name"] for s in http_client.get_inference_statistics()["model_stats"]} >= {"mlp", "identity"}
    index = http_client.get_model_repository_index()
    assert {"name": "mlp", "version": "1", "state": "READY", "reason": ""} in index


def test_gevent_async_infer(http_client, mlp_reference) -> None:
    xs = [mlp_rows(2, seed) for seed in range(6)]
    pending = [http_client.async_infer("mlp", [make_input("x", x)]) for x in xs]
    for x, request in zip(xs, pending):
        np.testing.assert_allclose(request.get_result().as_numpy("probabilities"), mlp_reference(x), rtol=1e-5, atol=1e-6)


async def test_asyncio_client(surge_server: SurgeProcess, mlp_reference) -> None:
    import asyncio

    async with aiohttpclient.InferenceServerClient(surge_server.http_address) as client:
        assert await client.is_server_ready()
        xs = [mlp_rows(1, seed) for seed in range(8)]

        async def one(x: np.ndarray) -> np.ndarray:
            tensor = aiohttpclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            return (await client.infer("mlp", [tensor])).as_numpy("probabilities")

        for x, got in zip(xs, await asyncio.gather(*(one(x) for x in xs))):
            np.testing.assert_allclose(got, mlp_reference(x), rtol=1e-5, atol=1e-6)
        with pytest.raises(InferenceServerException) as info:
            await client.get_model_metadata("nope")
        assert info.value.status() == "404"


def test_explicit_load_with_config_and_unload(explicit_http, mlp_reference) -> None:
    assert explicit_http.is_model_ready("identity") and not explicit_http.is_model_ready("mlp")
    explicit_http.load_model("mlp", config=json.dumps({"max_batch_size": 4}))
    assert explicit_http.is_model_ready("mlp") and explicit_http.get_model_config("mlp")["max_batch_size"] == 4
    x = mlp_rows(4)
    np.testing.assert_allclose(explicit_http.infer("mlp", [make_input("x", x)]).as_numpy("probabilities"), mlp_reference(x), rtol=1e-5, atol=1e-6)
    expect_error(lambda: explicit_http.infer("mlp", [make_input("x", mlp_rows(5))]), "400", "1 to 4 rows")
    expect_error(lambda: explicit_http.load_model("mlp", config="{oops"), "400", "not valid JSON")
    expect_error(lambda: explicit_http.load_model("nope"), "404")
    explicit_http.unload_model("mlp")
    assert not explicit_http.is_model_ready("mlp")
    expect_error(lambda: explicit_http.infer("mlp", [make_input("x", x)]), "503")


def test_non_finite_floats_through_tritonclient_http(http_client):
    """Non-finite outputs asked for as JSON come back as floats through ``as_numpy`` (Surge writes them as the
    strings "NaN"/"Infinity"/"-Infinity", which strict JSON parsers read); the binary extension carries them as
    they are; a JSON input with tritonclient's bare NaN is a 400 that says what to send instead."""
    x = np.array([[np.nan, np.inf, -np.inf, 1.5]], dtype=np.float32)
    out = httpclient.InferRequestedOutput("output", binary_data=False)
    result = http_client.infer("identity", [make_input("input", x)], outputs=[out])
    got = result.as_numpy("output")
    assert np.isnan(got[0, 0]) and got[0, 1] == np.inf and got[0, 2] == -np.inf and got[0, 3] == 1.5
    got = http_client.infer("identity", [make_input("input", x)]).as_numpy("output")  # binary both ways
    assert np.isnan(got[0, 0]) and got[0, 1] == np.inf and got[0, 2] == -np.inf
    expect_error(lambda: http_client.infer("identity", [make_input("input", x, binary=False)]), "400", "JSON has no NaN or Infinity", "binary data")
