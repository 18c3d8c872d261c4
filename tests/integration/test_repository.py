"""Repository control over the wire: load, unload, reload while serving, config overrides, poll mode."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from surge.clients import InferenceClient, InferenceServerError
from surge.server import config as config_module
from tests.models import write_add_model, write_test_repository


@pytest.fixture
def repo(tmp_path):
    return write_test_repository(tmp_path / "repo")


def _index(client):
    return {(m.name, m.version): (m.state, m.reason) for m in client.repository_index()}


def test_explicit_mode_load_infer_unload(start_server, repo):
    server = start_server(model_repository=repo, model_control_mode="explicit", load_models=("mlp",))
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        index = _index(client)
        assert index[("mlp", "1")] == ("READY", "")
        assert index[("nobatch", "")] == ("UNAVAILABLE", "not loaded")
        assert not client.is_model_ready("nobatch")

        client.load_model("nobatch")
        assert client.is_model_ready("nobatch")
        y = client.infer("nobatch", {"x": np.zeros((2, 3), np.float32)})["y"]
        np.testing.assert_array_equal(y, np.ones((2, 3), np.float32))

        client.unload_model("nobatch")
        assert not client.is_model_ready("nobatch")
        assert _index(client)[("nobatch", "")] == ("UNAVAILABLE", "unloaded")
        with pytest.raises(InferenceServerError) as info:
            client.infer("nobatch", {"x": np.zeros((2, 3), np.float32)})
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert client.is_server_ready()  # an unloaded model is not wanted: readiness holds

        with pytest.raises(InferenceServerError) as info:
            client.load_model("no_such_model")
        assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_load_with_triton_config_override(start_server, repo):
    server = start_server(model_repository=repo, model_control_mode="explicit")
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        override = {"max_batch_size": 4, "instance_group": [{"count": 2, "kind": "KIND_CPU"}], "dynamic_batching": {"max_queue_delay_microseconds": 500}}
        client.load_model("mlp", config=json.dumps(override))
        config = client.model_config("mlp")
        assert config.max_batch_size == 4 and config.instance_group[0].count == 2
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 500
        with pytest.raises(InferenceServerError) as info:
            client.infer("mlp", {"x": np.zeros((5, 16), np.float32)})
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "1 to 4 rows" in info.value.message

        with pytest.raises(InferenceServerError) as info:
            client.load_model("mlp", config=json.dumps({"max_batch_size": "many"}))
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert client.is_model_ready("mlp")  # a rejected reload leaves the served version alone


def test_reload_while_serving_drops_no_request(start_server, repo):
    server = start_server(model_repository=repo, model_control_mode="explicit", load_models=("versioned",))
    stop = threading.Event()
    seen_versions: set[str] = set()
    failures: list[BaseException] = []

    def hammer() -> int:
        count = 0
        with InferenceClient(server.address, timeout_s=30, retries=0) as client:
            while not stop.is_set():
                try:
                    result = client.infer("versioned", {"x": np.zeros((1, 4), np.float32)})
                    seen_versions.add(result.model_version)
                    assert result["y"][0, 0] == float(result.model_version)
                    count += 1
                except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                    failures.append(exc)
                    return count
        return count

    with concurrent.futures.ThreadPoolExecutor(3) as pool, InferenceClient(server.address, timeout_s=30) as admin:
        workers = [pool.submit(hammer) for _ in range(3)]
        write_add_model(repo / "versioned" / "3" / "model.onnx", 3.0)
        for _ in range(3):
            admin.load_model("versioned")
        (repo / "versioned" / "config.toml").write_text("max_batch_size = 16\n\n[version_policy]\nlatest = 1\n")
        admin.load_model("versioned")
        assert [m.version for m in admin.repository_index() if m.name == "versioned"] == ["3"]
        stop.set()
        served = sum(w.result() for w in workers)
    assert not failures, failures[:3]
    assert served > 0 and "3" in seen_versions


def test_failed_reload_keeps_the_old_version_serving(start_server, repo):
    server = start_server(model_repository=repo, model_control_mode="explicit", load_models=("nobatch",))
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        (repo / "nobatch" / "1" / "model.onnx").write_bytes(b"corrupted")
        with pytest.raises(InferenceServerError) as info:
            client.load_model("nobatch")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and "previous version keeps serving" in info.value.message
        write_add_model(repo / "nobatch" / "1" / "model.onnx", 1.0, batch=False)
        with pytest.raises(InferenceServerError) as info:
            client.load_model("nobatch", config=json.dumps({"max_batch_size": 8}))  # the model has no batch dimension
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_size = 8" in info.value.message
        assert client.model_config("nobatch").max_batch_size == 0
        y = client.infer("nobatch", {"x": np.zeros((2, 3), np.float32)})["y"]
        np.testing.assert_array_equal(y, np.ones((2, 3), np.float32))


def test_poll_mode_applies_new_changed_and_removed_models(start_server, repo, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    shutil.copytree(repo / "nobatch", small / "nobatch")
    server = start_server(model_repository=small, model_control_mode="poll", poll_interval_s=3600)
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        assert {m.name for m in client.repository_index()} == {"nobatch"}
        shutil.copytree(repo / "mlp", small / "mlp")
        write_add_model(small / "nobatch" / "1" / "model.onnx", 10.0, batch=False)
        server.call(server.server.repository.poll_once())
        assert client.is_model_ready("mlp")
        y = client.infer("nobatch", {"x": np.zeros((2, 3), np.float32)})["y"]
        assert y[0, 0] == 10.0
        shutil.rmtree(small / "mlp")
        server.call(server.server.repository.poll_once())
        assert {m.name for m in client.repository_index()} == {"nobatch"}


def test_a_model_that_fails_to_load_does_not_stop_the_others(client):
    index = _index(client)
    (state, reason), = [v for (name, _), v in index.items() if name == "broken"]
    assert state == "UNAVAILABLE" and reason
    assert index[("mlp", "1")] == ("READY", "")


def test_strict_readiness_reflects_failed_models(start_server, repo):
    server = start_server(model_repository=repo, strict_readiness=True)
    with InferenceClient(server.address, timeout_s=30) as client:
        assert client.is_server_live() and not client.is_server_ready()


def test_a_tensorrt_model_without_tensorrt_is_unavailable_with_the_reason(start_server, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed: tests/gpu/test_tensorrt.py serves real engines")
    repo = tmp_path / "repo"
    (repo / "engine" / "1").mkdir(parents=True)
    (repo / "engine" / "1" / "model.plan").write_bytes(b"not an engine")
    write_add_model(repo / "plain" / "1" / "model.onnx", 1.0)
    server = start_server(model_repository=repo, strict_readiness=False)
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        index = _index(client)
        assert index[("engine", "1")] == (
            "UNAVAILABLE",
            "the tensorrt backend needs the tensorrt package: pip install 'surge[tensorrt,torch]' on a machine with an NVIDIA GPU",
        )
        assert index[("plain", "1")] == ("READY", "")


def _rest(address: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{address}{path}", data=json.dumps(body).encode() if body is not None else None, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


#: (Triton ModelConfig JSON a load request sends, the key the error names, the bound it names)
UNBOUNDED_OVERRIDES = [
    ({"parameters": {"intra_op_threads": {"string_value": "10000"}}}, "parameters.intra_op_threads", f"to {config_module.MAX_THREADS} (4 per core"),
    ({"instance_group": [{"count": 100000, "kind": "KIND_CPU"}]}, "instance_group.count", f"to {config_module.MAX_INSTANCES} (4 per core"),
    ({"dynamic_batching": {"max_queue_delay_microseconds": str(2**62)}}, "dynamic_batching.max_queue_delay_s", "from 0 to 10 (seconds)"),
    ({"dynamic_batching": {"default_queue_policy": {"max_queue_size": 2**30}}}, "dynamic_batching.max_queue_size", f"to {config_module.MAX_QUEUE_SIZE}"),
    ({"max_batch_size": 2**30}, "max_batch_size", f"to {config_module.MAX_BATCH_SIZE}"),
    ({"model_warmup": [], "max_batch_size": 4}, "'model_warmup'", "which Surge does not apply"),
    ({"dynamic_batching": {"no_such_knob": 1}}, "no_such_knob", "not a valid Triton ModelConfig"),
]


def test_load_overrides_past_a_bound_are_refused_naming_the_key_and_bound(start_server, repo):
    server = start_server(model_repository=repo, model_control_mode="explicit", load_models=("mlp",))
    threads = threading.active_count()
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        for override, key, bound in UNBOUNDED_OVERRIDES:
            with pytest.raises(InferenceServerError) as info:
                client.load_model("mlp", config=json.dumps(override))
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, override
            assert key in info.value.message and bound in info.value.message, info.value.message
            status, body = _rest(server.server.http_address, "POST", "/v2/repository/models/mlp/load", {"parameters": {"config": override}})
            assert status == 400 and key in body["error"] and bound in body["error"], (status, body)
        assert threading.active_count() <= threads + 2  # nothing was built from a refused config
        assert client.is_model_ready("mlp")  # the served version is untouched
        np.testing.assert_array_equal(client.infer("mlp", {"x": np.zeros((2, 16), np.float32)})["probabilities"].shape, (2, 4))
        # at the bounds themselves a load is accepted
        at_bound = {"instance_group": [{"count": 2, "kind": "KIND_CPU"}], "parameters": {"intra_op_threads": {"string_value": str(config_module.MAX_THREADS)}},
                    "dynamic_batching": {"max_queue_delay_microseconds": "10000000"}}  # fmt: skip
        client.load_model("mlp", config=json.dumps(at_bound))
        assert client.model_config("mlp").dynamic_batching.max_queue_delay_microseconds == 10_000_000


def test_a_broken_config_edit_in_poll_mode_shows_in_the_index_and_is_logged_once(start_server, repo, tmp_path, caplog):
    small = tmp_path / "small"
    small.mkdir()
    shutil.copytree(repo / "mlp", small / "mlp")
    server = start_server(model_repository=small, model_control_mode="poll", poll_interval_s=3600)
    poll = server.server.repository.poll_once
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        assert _index(client)[("mlp", "1")] == ("READY", "")
        (small / "mlp" / "config.toml").write_text("[dynamic_batching]\nmax_queue_delay_s = 4.6e12\n")
        caplog.clear()
        for _ in range(3):  # the file changed once: one reload, one log line, however many polls follow
            server.call(poll())
        logged = [r for r in caplog.records if "max_queue_delay_s" in r.getMessage()]
        assert len(logged) == 1, [r.getMessage() for r in logged]

        state, reason = _index(client)[("mlp", "1")]
        assert state == "READY" and "the last load failed, this version keeps serving" in reason
        assert "dynamic_batching.max_queue_delay_s: expected a number from 0 to 10 (seconds)" in reason, reason
        status, rows = _rest(server.server.http_address, "POST", "/v2/repository/index", {})
        assert status == 200 and reason in [row.get("reason") for row in rows], rows
        cli = subprocess.run([sys.executable, "-m", "surge.server.cli", "models", "--url", server.address], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and "max_queue_delay_s" in cli.stdout, cli.stdout + cli.stderr
        assert client.infer("mlp", {"x": np.zeros((1, 16), np.float32)})["probabilities"].shape == (1, 4)  # the old config keeps serving

        (small / "mlp" / "config.toml").write_text("[dynamic_batching]\nmax_queue_delay_s = 0.001\n")  # fixed: applied, the reason clears
        server.call(poll())
        assert _index(client)[("mlp", "1")] == ("READY", "")
        assert client.model_config("mlp").dynamic_batching.max_queue_delay_microseconds == 1000

        shutil.copytree(repo / "nobatch", small / "fresh")  # a new model whose config is broken from the start
        (small / "fresh" / "config.toml").write_text("max_batch_size = -3\n")
        caplog.clear()
        for _ in range(3):
            server.call(poll())
        assert len([r for r in caplog.records if "max_batch_size" in r.getMessage()]) == 1
        state, reason = _index(client)[("fresh", "")]
        assert state == "UNAVAILABLE" and "max_batch_size: expected an integer from 0 to" in reason, reason


def test_a_models_own_config_round_trips_through_a_load_request(start_server, repo):
    """model_analyzer reads ModelConfig, edits it and sends all of it back: every field Surge reports is one it applies."""
    from google.protobuf import json_format

    server = start_server(model_repository=repo, model_control_mode="explicit", load_models=("mlp_batched", "nobatch"))
    with InferenceClient(server.address, timeout_s=30, retries=0) as client:
        for name in ("mlp_batched", "nobatch"):
            config = client.model_config(name)
            for as_json in (json_format.MessageToJson(config, preserving_proto_field_name=True), json_format.MessageToJson(config)):
                client.load_model(name, config=as_json)
                assert client.model_config(name) == config
