"""Triton's system shared-memory extension through tritonclient (gRPC and HTTP) and its ``utils.shared_memory``.

Regions are POSIX shared memory the test creates (``create_shared_memory_region``), registered with the server,
named by inputs and requested outputs; the server reads inputs from them and writes outputs into them.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")


def _pkg_resources_shim() -> None:
    """tritonclient 2.41's ``utils.shared_memory`` finds its libcshm.so with ``pkg_resources.resource_filename``, which
    setuptools 81+ no longer ships: give it that one function (the library's own file, found the same way)."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        module = types.ModuleType("pkg_resources")

        def resource_filename(package: str, name: str) -> str:
            spec = importlib.util.find_spec(package)
            return str(Path(next(iter(spec.submodule_search_locations))) / name)

        module.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = module


_pkg_resources_shim()
shm = pytest.importorskip("tritonclient.utils.shared_memory", reason="tritonclient's shared memory utilities are not installed")
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size  # noqa: E402

from tests.models import ONNX_DATATYPES, write_test_repository  # noqa: E402
from tests.process import SurgeProcess  # noqa: E402

INVALID = "StatusCode.INVALID_ARGUMENT"
EXHAUSTED = "StatusCode.RESOURCE_EXHAUSTED"


def expect_error(call, status: str, *fragments: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == status, f"expected {status}, got {info.value.status()}: {info.value.message()}"
    for fragment in fragments:
        assert fragment in info.value.message(), f"{fragment!r} not in {info.value.message()!r}"


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if datatype == "BYTES":
        return np.array([f"v{i}-{'x' * (i % 5)}".encode() for i in range(int(np.prod(shape)))], dtype=np.object_).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return rng.standard_normal(shape).astype(dtype)
    dtype = np.dtype(datatype.lower())
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def nbytes(array: np.ndarray) -> int:
    return serialized_byte_size(serialize_byte_tensor(array)) if array.dtype == np.object_ else array.nbytes


class Regions:
    """POSIX regions created for one test, each registered with the server; all destroyed at the end."""

    def __init__(self, client) -> None:
        self.client = client
        self.handles: dict[str, object] = {}

    def create(self, byte_size: int, register: bool = True) -> tuple[str, str, object]:
        name = f"r-{uuid.uuid4().hex[:12]}"
        key = f"/surge-test-{name}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        self.handles[name] = handle
        if register:
            self.client.register_system_shared_memory(name, key, byte_size)
        return name, key, handle

    def close(self) -> None:
        for name, handle in self.handles.items():
            try:
                self.client.unregister_system_shared_memory(name)
            finally:
                shm.destroy_shared_memory_region(handle)


@pytest.fixture
def grpc_regions(client) -> Iterator[Regions]:
    regions = Regions(client)
    yield regions
    regions.close()


@pytest.fixture(scope="module")
def http(surge_server: SurgeProcess) -> Iterator[object]:
    c = httpclient.InferenceServerClient(surge_server.http_address, concurrency=2)
    yield c
    c.close()


@pytest.fixture
def http_regions(http) -> Iterator[Regions]:
    regions = Regions(http)
    yield regions
    regions.close()


def identity_all_request(module, regions: Regions, shape: tuple[int, ...], outputs_in_memory: bool):
    """Every identity_all input in its own region; each output in its own region too, or in the response."""
    inputs, outputs, expected = [], [], {}
    for i, dt in enumerate(ONNX_DATATYPES):
        array = sample(dt, shape, i)
        expected[dt] = array
        name, _, handle = regions.create(nbytes(array))
        shm.set_shared_memory_region(handle, [serialize_byte_tensor(array) if dt == "BYTES" else array])  # as tritonclient wants BYTES
        tensor = module.InferInput(f"in_{dt}", list(shape), dt)
        tensor.set_shared_memory(name, nbytes(array))
        inputs.append(tensor)
        out = module.InferRequestedOutput(f"out_{dt}")
        if outputs_in_memory:
            out_name, _, out_handle = regions.create(nbytes(array) + 64)
            out.set_shared_memory(out_name, nbytes(array) + 64)
            expected[dt] = (array, out_handle)
        outputs.append(out)
    return inputs, outputs, expected


def check_outputs(result, expected: dict, outputs_in_memory: bool, http_result: bool = False) -> None:
    for dt in ONNX_DATATYPES:
        if not outputs_in_memory:
            got = result.as_numpy(f"out_{dt}")
            sent = expected[dt]
        else:
            sent, handle = expected[dt]
            output = result.get_output(f"out_{dt}")
            shape = output["shape"] if http_result else list(output.shape)
            assert shape == list(sent.shape)
            got = shm.get_contents_as_numpy(handle, sent.dtype, shape)
        assert got.tolist() == sent.tolist() if dt == "BYTES" else got.tobytes() == sent.tobytes(), dt


def test_advertised_over_both_edges(client, http) -> None:
    assert "system_shared_memory" in client.get_server_metadata().extensions
    assert "system_shared_memory" in http.get_server_metadata()["extensions"]


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (8, 17)])
@pytest.mark.parametrize("outputs_in_memory", [False, True], ids=["outputs-in-response", "outputs-in-memory"])
def test_grpc_round_trip_every_datatype(client, grpc_regions: Regions, shape, outputs_in_memory: bool) -> None:
    inputs, outputs, expected = identity_all_request(grpcclient, grpc_regions, shape, outputs_in_memory)
    result = client.infer("identity_all", inputs, outputs=outputs)
    check_outputs(result, expected, outputs_in_memory)
    if outputs_in_memory:  # Triton's form: metadata and the region's parameters, no data
        out = result.get_response().outputs[0]
        assert out.parameters["shared_memory_region"].string_param and not result.get_response().raw_output_contents[0]


@pytest.mark.parametrize("shape", [(1, 4), (3, 5)])
@pytest.mark.parametrize("outputs_in_memory", [False, True], ids=["outputs-in-response", "outputs-in-memory"])
def test_http_round_trip_every_datatype(http, http_regions: Regions, shape, outputs_in_memory: bool) -> None:
    inputs, outputs, expected = identity_all_request(httpclient, http_regions, shape, outputs_in_memory)
    result = http.infer("identity_all", inputs, outputs=outputs)
    check_outputs(result, expected, outputs_in_memory, http_result=True)
    if outputs_in_memory:
        out = result.get_output("out_FP32")
        assert "data" not in out and out["parameters"]["shared_memory_region"]


def test_offsets_and_mixed_inputs(client, grpc_regions: Regions) -> None:
    """One region holds an input at an offset and the output after it; the other input travels in the request."""
    x = sample("FP32", (2, 16), 3)
    name, _, handle = grpc_regions.create(4096 + 2 * x.nbytes)
    shm.set_shared_memory_region(handle, [x], offset=4096 + 8)
    in_x = grpcclient.InferInput("x", [2, 16], "FP32")
    in_x.set_shared_memory(name, x.nbytes, offset=4096 + 8)
    probabilities = grpcclient.InferRequestedOutput("probabilities")
    probabilities.set_shared_memory(name, 32, offset=8)
    result = client.infer("mlp", [in_x], outputs=[probabilities])
    expected = client.infer("mlp", [grpcclient.InferInput("x", [2, 16], "FP32").set_data_from_numpy(x)]).as_numpy("probabilities")
    got = shm.get_contents_as_numpy(handle, np.float32, [2, 4], offset=8)
    np.testing.assert_array_equal(got, expected)
    assert result.get_output("probabilities").shape == [2, 4]


def test_status_and_unregister(client, http, grpc_regions: Regions) -> None:
    name, key, _ = grpc_regions.create(256)
    status = client.get_system_shared_memory_status(name)
    assert (status.regions[name].key, status.regions[name].byte_size) == (key, 256)
    assert {"name": name, "key": key, "offset": 0, "byte_size": 256} in http.get_system_shared_memory_status()
    http.unregister_system_shared_memory(name)
    expect_error(lambda: client.get_system_shared_memory_status(name), INVALID, "no system shared memory region")
    assert name not in client.get_system_shared_memory_status().regions
    client.unregister_system_shared_memory(name)  # unknown: no error, as Triton


def _fp32_input(name: str, region: str, byte_size: int, offset: int = 0, shape=(1, 16)):
    tensor = grpcclient.InferInput(name, list(shape), "FP32")
    tensor.set_shared_memory(region, byte_size, offset)
    return tensor


def test_bad_regions_at_inference(client, grpc_regions: Regions) -> None:
    name, _, handle = grpc_regions.create(64)
    shm.set_shared_memory_region(handle, [np.ones((1, 16), np.float32)])
    expect_error(lambda: client.infer("mlp", [_fp32_input("x", "no-such-region", 64)]), INVALID, "no shared memory region named 'no-such-region'")
    expect_error(lambda: client.infer("mlp", [_fp32_input("x", name, 64, offset=4)]), INVALID, "past the end of region")
    expect_error(lambda: client.infer("mlp", [_fp32_input("x", name, 128)]), INVALID, "past the end of region")
    expect_error(lambda: client.infer("mlp", [_fp32_input("x", name, 32)]), INVALID, "shared_memory_byte_size is 32", "needs 64 bytes")
    expect_error(lambda: client.infer("mlp", [_fp32_input("x", name, 64, shape=(2, 16))]), INVALID, "shape [2, 16] of FP32 needs 128 bytes")
    small_out = grpcclient.InferRequestedOutput("probabilities")
    small_out.set_shared_memory(name, 8)
    expect_error(lambda: client.infer("mlp", [_fp32_input("x", name, 64)], outputs=[small_out]), INVALID, "output 'probabilities' has 16 bytes", "8")
    assert client.infer("mlp", [_fp32_input("x", name, 64)]).as_numpy("probabilities").shape == (1, 4)  # still serving


def test_bad_registrations(client, http, grpc_regions: Regions) -> None:
    name, key, _ = grpc_regions.create(128)
    expect_error(lambda: client.register_system_shared_memory(name, key, 128), INVALID, "already registered")
    expect_error(lambda: client.register_system_shared_memory("other", key, 256), INVALID, "past the end of key")
    expect_error(lambda: client.register_system_shared_memory("other", key, 64, offset=100), INVALID, "past the end of key")
    expect_error(lambda: client.register_system_shared_memory("other", "/surge-test-missing", 8), INVALID, "cannot open shared memory key")
    expect_error(lambda: client.register_system_shared_memory("other", "/../etc/passwd", 8), INVALID, "not a POSIX shared memory name")
    expect_error(lambda: client.register_system_shared_memory("other", key, 0), INVALID, "byte_size must be positive")
    expect_error(lambda: client.register_system_shared_memory("", key, 8), INVALID, "needs a name")
    with pytest.raises(InferenceServerException) as info:
        http.register_system_shared_memory("other", "/surge-test-missing", 8)
    assert "400" in str(info.value.status()) and "cannot open" in info.value.message() and "/dev/shm" not in info.value.message()
    assert "other" not in client.get_system_shared_memory_status().regions


def test_unregister_in_use_waits_for_the_request(client, grpc_regions: Regions) -> None:
    """The region disappears at once, but the request using it still reads its input and writes its output."""
    name, _, handle = grpc_regions.create(8)
    shm.set_shared_memory_region(handle, [np.array([[2.0]], np.float32)])  # slow_py sleeps delay_s seconds
    delay = _fp32_input("delay_s", name, 4, shape=(1, 1))
    out = grpcclient.InferRequestedOutput("delay_s_out")
    out.set_shared_memory(name, 4, offset=4)
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(client.infer("slow_py", [delay], outputs=[out], client_timeout=30)))
    thread.start()
    threading.Event().wait(0.5)
    client.unregister_system_shared_memory(name)
    assert not done, "the request finished before the region was unregistered: nothing was in use"
    assert name not in client.get_system_shared_memory_status().regions
    expect_error(lambda: client.infer("slow_py", [_fp32_input("delay_s", name, 4, shape=(1, 1))]), INVALID, "no shared memory region")
    thread.join(30)
    assert done, "the request using the unregistered region did not finish"
    assert shm.get_contents_as_numpy(handle, np.float32, [1, 1], offset=4).tolist() == [[2.0]]


# -- token scope ---------------------------------------------------------------------------------

TOKEN_A, TOKEN_B = "a" * 20, "b" * 20


@pytest.fixture(scope="module")
def scoped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SurgeProcess]:
    work = tmp_path_factory.mktemp("scoped")
    tokens = work / "tokens"
    tokens.write_text(f"inference {TOKEN_A}\ninference {TOKEN_B}\n")
    server = SurgeProcess(write_test_repository(work / "repository"), work, "--auth-tokens-file", str(tokens)).start()
    yield server
    server.stop_and_check()


def test_a_region_belongs_to_the_token_that_registered_it(scoped_server: SurgeProcess) -> None:
    a, b = ({"authorization": f"Bearer {t}"} for t in (TOKEN_A, TOKEN_B))
    client = grpcclient.InferenceServerClient(scoped_server.address)
    x = np.ones((1, 16), np.float32)
    handle = shm.create_shared_memory_region("mine", "/surge-test-scoped", 64)
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("mine", "/surge-test-scoped", 64, headers=a)
        assert "mine" in client.get_system_shared_memory_status(headers=a).regions
        assert "mine" not in client.get_system_shared_memory_status(headers=b).regions
        expect_error(lambda: client.infer("mlp", [_fp32_input("x", "mine", 64)], headers=b), INVALID, "no shared memory region named 'mine'")
        client.unregister_system_shared_memory(headers=b)  # B's "all" is B's own: A's region stays
        assert client.infer("mlp", [_fp32_input("x", "mine", 64)], headers=a).as_numpy("probabilities").shape == (1, 4)
        client.register_system_shared_memory("mine", "/surge-test-scoped", 64, headers=b)  # names are per caller
        client.unregister_system_shared_memory(headers=a)
        assert "mine" in client.get_system_shared_memory_status(headers=b).regions
        client.unregister_system_shared_memory(headers=b)
    finally:
        shm.destroy_shared_memory_region(handle)
        client.close()


# -- bounds --------------------------------------------------------------------------------------


def test_region_and_byte_caps(tmp_path: Path) -> None:
    server = SurgeProcess(
        write_test_repository(tmp_path / "repository"), tmp_path, "--max-shared-memory-regions", "2", "--max-shared-memory-bytes", "4096"
    ).start()
    client = grpcclient.InferenceServerClient(server.address)
    regions = Regions(client)
    try:
        regions.create(1024)
        name, key, _ = regions.create(1024)
        _, big_key, _ = regions.create(4096, register=False)
        expect_error(lambda: client.register_system_shared_memory("third", key, 512), EXHAUSTED, "regions, its limit")
        client.unregister_system_shared_memory(name)
        expect_error(lambda: client.register_system_shared_memory("big", big_key, 4096), EXHAUSTED, "above the server's limit of 4096")
        client.register_system_shared_memory("third", key, 512)
        client.unregister_system_shared_memory()
    finally:
        regions.close()
        client.close()
        server.stop_and_check()
