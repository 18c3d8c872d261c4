"""Version routing over the wire: config splits, stickiness, explicit versions, the admin service and ``surge route``,
shadow comparison metrics and the disagreement log, a saturated shadow, outcome feedback, ``surge ab``, config reload."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from surge.clients import InferenceClient, InferRequest, InvalidArgumentError, NotFoundError, SurgeClient
from surge.server.cli import main
from surge.server.demo import write_demo_repository
from tests.integration.test_metrics import samples, value
from tests.models import write_add_model

_SLOW_PY = '''
import time

class Model:
    def infer(self, inputs, output_names):
        if inputs["x"].any():  # warm-up sends zeros: only real requests are slow
            time.sleep({delay})
        return {{"y": inputs["x"] + 1.0}}
'''
_PY_CONFIG = """
backend = "python"
max_batch_size = 4
[version_policy]
all = true
[[input]]
name = "x"
datatype = "FP32"
dims = [4]
[[output]]
name = "y"
datatype = "FP32"
dims = [4]
[routing.weights]
1 = 1
[routing.shadow]
version = 2
max_concurrency = 1
max_queue = 1
"""


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    for version, constant in ((1, 1.0), (2, 2.0)):
        write_add_model(root / "split" / str(version) / "model.onnx", constant)
    (root / "split" / "config.toml").write_text("max_batch_size = 8\n[version_policy]\nall = true\n[routing.weights]\n1 = 50\n2 = 50\n")
    write_add_model(root / "plain" / "1" / "model.onnx", 1.0)
    for version, constant in ((1, 1.0), (2, 1.0), (3, 1.5)):  # v2 is an exact copy of v1, v3 a perturbed one
        write_add_model(root / "shadowed" / str(version) / "model.onnx", constant)
    (root / "shadowed" / "config.toml").write_text(
        "max_batch_size = 8\n[version_policy]\nall = true\n[routing.weights]\n1 = 1\n"
        '[routing.shadow]\nversion = 2\nlog_path = "disagreements.jsonl"\nlog_max_bytes = 3000\nlog_inputs = true\n'
    )
    write_demo_repository(tmp_path / "demo")
    for version in (1, 2):
        (root / "clf" / str(version)).mkdir(parents=True)
        (root / "clf" / str(version) / "model.onnx").write_bytes((tmp_path / "demo" / "mlp" / "1" / "model.onnx").read_bytes())
    (root / "clf" / "config.toml").write_text("[version_policy]\nall = true\n[routing.weights]\n1 = 50\n2 = 50\n[feedback]\nmax_requests = 50\n")
    for version, delay in ((1, 0.0), (2, 1.0)):
        (root / "slowshadow" / str(version)).mkdir(parents=True)
        (root / "slowshadow" / str(version) / "model.py").write_text(_SLOW_PY.format(delay=delay))
    (root / "slowshadow" / "config.toml").write_text(_PY_CONFIG)
    return root


def _x(rows: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


def _wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_split_sticky_keys_explicit_versions_and_model_version(repository: Path, start_server) -> None:
    server = start_server(model_repository=repository, model_control_mode="explicit", load_models=("split", "plain"))
    # a model without [routing] or [feedback] is not in the route table: its requests take the fast path
    assert set(server.server.traffic.table) == {"split"}
    with InferenceClient(server.address, timeout_s=30.0, retries=0) as client:
        assert client.infer("plain", {"x": _x()}).model_version == "1"
        x = _x()
        seen: dict[str, str] = {}
        for i in range(60):
            result = client.infer("split", {"x": x}, parameters={"routing_key": f"user-{i}"})
            # model_version says who answered, and that version's model computed the answer (y = x + version)
            np.testing.assert_allclose(result["y"], x + float(result.model_version))
            seen[f"user-{i}"] = result.model_version
        assert set(seen.values()) == {"1", "2"}
        for key, version in list(seen.items())[:20]:  # a key keeps its version
            assert client.infer("split", {"x": x}, parameters={"routing_key": key}).model_version == version
        # the metadata key routes the same way as the parameter
        for key, version in list(seen.items())[:10]:
            with InferenceClient(server.address, timeout_s=30.0, retries=0, metadata={"x-surge-routing-key": key}) as keyed:
                assert keyed.infer("split", {"x": x}).model_version == version
        # without a key the request id is the key
        by_id = {client.infer("split", {"x": x}, request_id=f"user-{i}").model_version for i in range(5)}
        assert by_id == {seen[f"user-{i}"] for i in range(5)}
        # an explicit version bypasses the split
        for i in range(10):
            assert client.infer("split", {"x": x}, version="2", parameters={"routing_key": f"user-{i}"}).model_version == "2"
        with pytest.raises(NotFoundError):
            client.infer("split", {"x": x}, version="7")


def test_streamed_requests_are_routed_like_unary_ones(repository: Path, start_server) -> None:
    server = start_server(model_repository=repository, model_control_mode="explicit", load_models=("split",))
    x = _x()
    with InferenceClient(server.address, timeout_s=30.0, retries=0) as client:
        unary = {f"s{i}": client.infer("split", {"x": x}, request_id=f"s{i}").model_version for i in range(30)}
        streamed = {r.id: r.model_version for r in client.stream_infer(InferRequest("split", {"x": x}, request_id=f"s{i}") for i in range(30))}
    assert streamed == unary and set(unary.values()) == {"1", "2"}


def test_admin_weights_promote_rollback_reset_and_cli(repository: Path, start_server, capsys) -> None:
    server = start_server(model_repository=repository, model_control_mode="explicit", load_models=("split", "clf"))
    with InferenceClient(server.address, timeout_s=30.0, retries=0) as client, SurgeClient(server.address) as admin:
        routes = admin.get_routes("split")
        assert routes.source == "config" and [(w.version, w.weight) for w in routes.weights] == [(1, 50.0), (2, 50.0)]
        assert list(routes.serving_versions) == [1, 2]
        routes = admin.promote("split", 2)
        assert routes.source == "admin" and [(w.version, w.weight) for w in routes.weights] == [(2, 1.0)]
        assert {client.infer("split", {"x": _x()}, parameters={"routing_key": f"k{i}"}).model_version for i in range(20)} == {"2"}
        routes = admin.rollback("split")
        assert [(w.version, w.weight) for w in routes.weights] == [(1, 50.0), (2, 50.0)]
        assert {client.infer("split", {"x": _x()}, parameters={"routing_key": f"k{i}"}).model_version for i in range(40)} == {"1", "2"}
        admin.set_weights("split", {1: 1})
        assert {client.infer("split", {"x": _x()}, parameters={"routing_key": f"k{i}"}).model_version for i in range(20)} == {"1"}
        assert admin.reset_routes("split").source == "config"
        # removing the split leaves the model without routes: off the route table (the fast path), latest version answers
        assert "split" in server.server.traffic.table
        assert list(admin.set_weights("split", {}).weights) == []
        assert "split" not in server.server.traffic.table
        assert {client.infer("split", {"x": _x()}, parameters={"routing_key": f"k{i}"}).model_version for i in range(10)} == {"2"}
        admin.rollback("split")
        assert "split" in server.server.traffic.table
        # errors: unknown model, a version that does not serve, bad weights, nothing to roll back
        with pytest.raises(NotFoundError):
            admin.get_routes("nope")
        with pytest.raises(InvalidArgumentError, match="none of versions \\[9\\] is serving"):
            admin.set_weights("split", {9: 1})
        with pytest.raises(InvalidArgumentError, match="not serving"):
            admin.set_shadow("split", 9)
        with pytest.raises(InvalidArgumentError):
            admin.set_weights("split", {1: -1})
        with pytest.raises(InvalidArgumentError, match="no earlier routes"):
            admin.rollback("clf")
        # the CLI is a thin wrapper over the same service
        assert main(["route", "split", "--url", server.address, "--weights", "1=90,2=10"]) == 0
        out = capsys.readouterr().out
        assert "v1 90.0%, v2 10.0%" in out and "routes from admin" in out
        assert main(["route", "split", "--url", server.address, "--shadow", "2:0.5"]) == 0
        assert "v2, 50.0% of routed requests" in capsys.readouterr().out
        assert main(["route", "split", "--url", server.address]) == 0
        assert "v1 90.0%, v2 10.0%" in capsys.readouterr().out
        assert main(["route", "split", "--url", server.address, "--promote", "9"]) == 1
        assert "not serving" in capsys.readouterr().err
        found = samples(server)
        assert value(found, "surge_route_weight", model="split", version="1") == pytest.approx(0.9)
        assert value(found, "surge_route_changes_total", model="split") >= 5


def test_shadow_agreement_metrics_and_disagreement_log(repository: Path, start_server) -> None:
    server = start_server(model_repository=repository, model_control_mode="explicit", load_models=("shadowed",))
    pair = {"model": "shadowed", "primary": "1", "shadow": "2"}
    with InferenceClient(server.address, timeout_s=30.0, retries=0) as client, SurgeClient(server.address) as admin:
        for i in range(30):
            assert client.infer("shadowed", {"x": _x(2, i)}, request_id=f"r{i}").model_version == "1"  # the shadow never answers
        _wait_for(lambda: value(samples(server), "surge_shadow_requests_total", **pair, outcome="compared") == 30)
        assert samples(server)[("surge_shadow_requests_total", frozenset({**pair, "outcome": "compare_failed"}.items()))] == 0  # exported: an alert reads it
        found = samples(server)
        assert value(found, "surge_shadow_agreed_total", **pair) == 30  # an identical copy agrees on every request
        assert value(found, "surge_shadow_max_abs_difference", **pair, output="y") == 0.0
        assert value(found, "surge_shadow_latency_seconds_count", **pair, role="shadow") == 30
        assert value(found, "surge_shadow_latency_seconds_count", **pair, role="primary") == 30
        sums = {role: value(found, "surge_shadow_latency_seconds_sum", **pair, role=role) for role in ("primary", "shadow")}
        assert sums["primary"] > 0 and sums["shadow"] > 0
        assert ("surge_shadow_mean_latency_difference_seconds", frozenset(pair.items())) in found
        assert value(found, "surge_shadow_mean_latency_difference_seconds", **pair) == pytest.approx((sums["shadow"] - sums["primary"]) / 30, abs=1e-6)
        # a perturbed copy (y = x + 1.5 instead of x + 1) disagrees, with the difference it has
        admin.set_shadow("shadowed", 3)
        perturbed = {"model": "shadowed", "primary": "1", "shadow": "3"}
        for i in range(30):
            client.infer("shadowed", {"x": _x(2, i)}, request_id=f"p{i}")
        _wait_for(lambda: value(samples(server), "surge_shadow_requests_total", **perturbed, outcome="compared") == 30)
        found = samples(server)
        assert value(found, "surge_shadow_agreed_total", **perturbed) == 0
        assert value(found, "surge_shadow_max_abs_difference", **perturbed, output="y") == pytest.approx(0.5, abs=1e-5)
        assert value(found, "surge_shadow_mean_abs_difference", **perturbed, output="y") == pytest.approx(0.5, abs=1e-5)
        # the log holds whole JSON lines of disagreements, inputs included (log_inputs), and stops at log_max_bytes
        log = repository / "shadowed" / "disagreements.jsonl"
        lines = log.read_text().splitlines()
        assert 1 <= len(lines) < 30 and log.stat().st_size <= 3000
        record = json.loads(lines[0])
        assert record["primary_version"] == "1" and record["shadow_version"] == "3" and record["request_id"].startswith("p")
        assert record["outputs"]["y"]["agree"] is False and "inputs" in record
        assert value(found, "surge_shadow_log_lines_total", **perturbed, result="written") == len(lines)
        assert value(found, "surge_shadow_log_lines_total", **perturbed, result="skipped") == 30 - len(lines)
        admin.remove_shadow("shadowed")
        client.infer("shadowed", {"x": _x()})
        time.sleep(0.2)
        assert value(samples(server), "surge_shadow_requests_total", **perturbed, outcome="compared") == 30


def test_a_saturated_shadow_drops_and_never_delays_the_primary(repository: Path, start_server) -> None:
    server = start_server(model_repository=repository, model_control_mode="explicit", load_models=("slowshadow",))
    pair = {"model": "slowshadow", "primary": "1", "shadow": "2"}
    with InferenceClient(server.address, timeout_s=30.0, retries=0) as client:
        started = time.perf_counter()
        for i in range(20):
            assert client.infer("slowshadow", {"x": _x()}).model_version == "1"
        elapsed = time.perf_counter() - started
        # the shadow takes 1 s per request with a budget of 1 running + 1 waiting: had the primaries waited for
        # it, 20 would take 20 s; and every request beyond what the shadow could take in that time was dropped
        assert elapsed < 10.0, elapsed
        found = samples(server)
        assert value(found, "surge_shadow_requests_total", **pair, outcome="dropped") >= 20 - 3 - int(elapsed), elapsed
        _wait_for(lambda: value(samples(server), "surge_shadow_requests_total", **pair, outcome="compared") >= 2)


def test_outcome_feedback_joins_with_the_answering_version(repository: Path, start_server, capsys) -> None:
    server = start_server(model_repository=repository, model_control_mode="explicit", load_models=("clf", "split"))
    with InferenceClient(server.address, timeout_s=30.0, retries=0) as client, SurgeClient(server.address) as admin:
        answered: dict[str, tuple[str, np.ndarray]] = {}
        for i in range(40):
            result = client.infer("clf", {"x": _x(3, i).repeat(4, axis=1)}, request_id=f"req-{i}")
            answered[f"req-{i}"] = (result.model_version, result["probabilities"].argmax(axis=1))
        assert {v for v, _ in answered.values()} == {"1", "2"}
        correct = {"1": 0, "2": 0}
        labelled = {"1": 0, "2": 0}
        for i, (rid, (version, predicted)) in enumerate(answered.items()):
            labels = predicted if i % 2 else (predicted + 1) % 4  # half right, half wrong
            response = admin.report_outcome("clf", rid, labels=labels.tolist())
            assert response.joined and response.model_version == version
            correct[version] += int((labels == predicted).sum())
            labelled[version] += 3
        assert not admin.report_outcome("clf", "never-sent", labels=[0]).joined
        assert not admin.report_outcome("clf", "req-0", labels=[0, 0, 0]).joined  # one outcome per request
        client.infer("clf", {"x": _x(3).repeat(4, axis=1)}, request_id="wrong-rows")
        with pytest.raises(InvalidArgumentError, match="3 rows"):
            admin.report_outcome("clf", "wrong-rows", labels=[1])
        assert admin.report_outcome("clf", "wrong-rows", success=True).joined
        with pytest.raises(InvalidArgumentError, match="feedback"):
            admin.report_outcome("split", "x", success=True)
        found = samples(server)
        for version in ("1", "2"):
            assert value(found, "surge_feedback_labelled_rows_total", model="clf", version=version) == labelled[version]
            assert value(found, "surge_feedback_correct_rows_total", model="clf", version=version) == correct[version]
        assert value(found, "surge_feedback_reports_total", model="clf", result="joined") == 41
        assert value(found, "surge_feedback_reports_total", model="clf", result="unknown") == 2
        assert value(found, "surge_feedback_join_ratio", model="clf") == pytest.approx(41 / 43)
        # the index is bounded (max_requests = 50): older ids are forgotten, and counted
        for i in range(60):
            client.infer("clf", {"x": _x(1, i).repeat(4, axis=1)}, request_id=f"late-{i}")
        found = samples(server)
        assert value(found, "surge_feedback_index_requests", model="clf") == 50
        assert value(found, "surge_feedback_evicted_total", model="clf") == 10
        assert not admin.report_outcome("clf", "late-0", success=True).joined
        # surge ab reads it all back, with the tests named
        assert main(["ab", "clf", "--url", server.server.metrics_address]) == 0
        out = capsys.readouterr().out
        assert "two-proportion z-test" in out and "Mann-Whitney U" in out and "v2 accuracy" in out


def test_config_reload_replaces_admin_routes_only_when_routing_changed(repository: Path, start_server) -> None:
    server = start_server(model_repository=repository, model_control_mode="explicit", load_models=("split",))
    with InferenceClient(server.address, timeout_s=30.0, retries=0) as client, SurgeClient(server.address) as admin:
        admin.promote("split", 1)
        client.load_model("split")  # a reload that leaves [routing] as it was keeps the admin's routes
        routes = admin.get_routes("split")
        assert routes.source == "admin" and [(w.version, w.weight) for w in routes.weights] == [(1, 1.0)]
        (repository / "split" / "config.toml").write_text("max_batch_size = 8\n[version_policy]\nall = true\n[routing.weights]\n2 = 1\n")
        client.load_model("split")  # the file's routing changed: it wins
        routes = admin.get_routes("split")
        assert routes.source == "config" and [(w.version, w.weight) for w in routes.weights] == [(2, 1.0)]
        assert {client.infer("split", {"x": _x()}, parameters={"routing_key": f"k{i}"}).model_version for i in range(20)} == {"2"}
        assert admin.rollback("split").source == "admin"  # and the admin routes are one rollback away


def test_poll_mode_picks_up_an_edited_routing_table(repository: Path, start_server) -> None:
    server = start_server(model_repository=repository, model_control_mode="poll", poll_interval_s=3600.0)
    with InferenceClient(server.address, timeout_s=30.0, retries=0) as client, SurgeClient(server.address) as admin:
        assert [(w.version, w.weight) for w in admin.get_routes("split").weights] == [(1, 50.0), (2, 50.0)]
        (repository / "split" / "config.toml").write_text("max_batch_size = 8\n[version_policy]\nall = true\n[routing.weights]\n1 = 1\n")
        server.call(server.server.repository.poll_once())  # what the poll loop does every poll_interval_s
        assert [(w.version, w.weight) for w in admin.get_routes("split").weights] == [(1, 1.0)]
        assert {client.infer("split", {"x": _x()}, parameters={"routing_key": f"k{i}"}).model_version for i in range(20)} == {"1"}


def test_admin_service_is_served_with_reflection(repository: Path, start_server) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = start_server(model_repository=repository, model_control_mode="explicit", load_models=("split",))
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"surge.v1.Admin", "surge.v1.Feedback", "inference.GRPCInferenceService"} <= names
