"""Features built apart, working together over the wire: REST under the security policy (tokens, scopes, admin
switch, body limit, TLS and mutual TLS), REST under ``--workers`` (one shared port, whole-server statistics),
sibling forwarding with token auth on and with TLS, and route changes and feedback reports across workers."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from surge.clients import InferenceClient, SurgeClient
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from surge.server.edge.codec import Limits
from surge.server.demo import write_demo_repository
from tests.integration.test_rest import Reply, http
from tests.integration.test_security import ADMIN_TOKEN, BOTH_TOKEN, INFERENCE_TOKEN, pki, repo  # noqa: F401  (fixtures)
from tests.integration.test_workers import _from_log, _scrape, _workers
from tests.models import write_add_model
from tests.process import SurgeProcess

pytestmark = pytest.mark.timeout(120)

X = np.ones((1, 4), np.float32)
INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tokens(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokens"
    path.write_text(f"inference {INFERENCE_TOKEN}\nadmin {ADMIN_TOKEN}\ninference,admin {BOTH_TOKEN}\n")
    return path


# -- REST + security -------------------------------------------------------------------------------


def test_rest_answers_401_and_403_from_the_same_policy_as_grpc(repo, tmp_path, start_server):  # noqa: F811
    server = start_server(model_repository=repo, model_control_mode="explicit", load_models=("adder",), auth_tokens_file=_tokens(tmp_path))
    address = server.server.http_address
    missing = http(address, "POST", "/v2/models/adder/infer", INFER)
    assert missing.status == 401 and missing.headers["WWW-Authenticate"] == "Bearer" and "missing credentials" in missing.error
    wrong = http(address, "POST", "/v2/models/adder/infer", INFER, _bearer("not-a-token-0123456789"))
    assert wrong.status == 401 and wrong.headers["WWW-Authenticate"] == "Bearer" and "invalid bearer token" in wrong.error
    ok = http(address, "POST", "/v2/models/adder/infer", INFER, _bearer(INFERENCE_TOKEN))
    assert ok.status == 200 and ok.json()["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]
    assert http(address, "GET", "/v2/models/adder/stats", headers=_bearer(INFERENCE_TOKEN)).status == 200
    # scopes: an inference token cannot change the repository, an admin-only token cannot infer
    denied = http(address, "POST", "/v2/repository/models/adder/unload", {}, _bearer(INFERENCE_TOKEN))
    assert denied.status == 403 and "'admin' scope" in denied.error and "WWW-Authenticate" not in denied.headers
    assert http(address, "POST", "/v2/models/adder/infer", INFER, _bearer(ADMIN_TOKEN)).status == 403
    assert http(address, "POST", "/v2/repository/models/adder/load", {}, _bearer(BOTH_TOKEN)).status == 200
    # probes carry no token
    assert http(address, "GET", "/v2/health/ready").status == 200 and http(address, "GET", "/v2/health/live").status == 200


def test_rest_admin_switch_and_body_limit_follow_the_server_config(repo, start_server):  # noqa: F811
    server = start_server(model_repository=repo, admin_enabled=False, limits=Limits(max_request_bytes=2000))
    address = server.server.http_address
    refused = http(address, "POST", "/v2/repository/models/adder/unload", {})
    assert refused.status == 501 and "admin RPCs are disabled" in refused.error
    assert http(address, "POST", "/v2/models/adder/infer", INFER).status == 200  # no tokens: inference stays open
    big = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "parameters": {"pad": "p" * 3000}}
    too_large = http(address, "POST", "/v2/models/adder/infer", big)
    assert too_large.status == 413 and "limit of 2000 bytes" in too_large.error


def _https(address: str, path: str, context: ssl.SSLContext, body: dict | None = None) -> Reply:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"https://{address}{path}", data=data, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


def _client_context(pki, cert: str | None = None) -> ssl.SSLContext:  # noqa: F811
    context = ssl.create_default_context(cadata=pki["ca"].decode())
    if cert is not None:
        folder = Path(pki["ca_file"]).parent
        (folder / f"{cert}.pem").write_bytes(pki[f"{cert}_cert"] + pki[f"{cert}_key"])
        context.load_cert_chain(folder / f"{cert}.pem")
    return context


def test_rest_serves_https_and_mutual_tls_with_the_grpc_certificates(repo, pki, start_server):  # noqa: F811
    tls = start_server(model_repository=repo, tls_cert_file=pki["server_cert_file"], tls_key_file=pki["server_key_file"])
    address = tls.server.http_address
    reply = _https(address, "/v2/models/adder/infer", _client_context(pki), INFER)
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP on the TLS port: no answer
        http(address, "GET", "/v2/health/ready")

    mutual = start_server(
        model_repository=repo, tls_cert_file=pki["server_cert_file"], tls_key_file=pki["server_key_file"], tls_client_ca_file=pki["ca_file"],
    )
    address = mutual.server.http_address
    assert _https(address, "/v2/health/ready", _client_context(pki, "client")).status == 200
    for context in (_client_context(pki), _client_context(pki, "rogue")):  # no client certificate, or one the CA did not sign
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _https(address, "/v2/health/ready", context)


# -- workers with REST, tokens, routes and feedback ------------------------------------------------


def _add_repository(root: Path) -> Path:
    write_add_model(root / "add" / "1" / "model.onnx", 1.0)
    (root / "add" / "config.toml").write_text("max_batch_size = 8\n")
    return root


def test_workers_share_the_rest_port_and_forward_the_callers_token(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGE_AUTH_TOKENS", f"inference {INFERENCE_TOKEN};inference,admin {BOTH_TOKEN}")
    server = SurgeProcess(
        _add_repository(tmp_path / "repository"), tmp_path / "run", "--workers", "2", "--log-level", "info",
        "--model-control-mode", "explicit", "--load-model", "add",
    ).start()
    try:
        workers = _workers(Path(_from_log(server, r"state in (\S+)")))
        rest = set(re.findall(r"\[front end (\d)\]: REST v2 on http://(\S+)/v2", server.log()))
        assert {w for w, _ in rest} == {"0", "1"} and len({a for _, a in rest}) == 1, server.log()  # both workers, one port
        address = server.http_address
        assert address == next(iter(rest))[1] and address.rsplit(":", 1)[1] != "0"
        metadata = {"authorization": f"Bearer {INFERENCE_TOKEN}"}
        for index, count in ((0, 3), (1, 4)):  # traffic that certainly reaches each worker
            with InferenceClient(workers[index]["private"], timeout_s=30, retries=0, metadata=metadata) as client:
                for _ in range(count):
                    client.infer("add", {"x": X})
        for _ in range(5):  # new connections to the shared REST port
            assert http(address, "POST", "/v2/models/add/infer", INFER, _bearer(INFERENCE_TOKEN)).status == 200
        assert http(address, "POST", "/v2/models/add/infer", INFER).status == 401
        # statistics over REST and gRPC: the whole server's, which needs the siblings to accept the forwarded token
        stats = http(address, "GET", "/v2/models/add/stats", headers=_bearer(INFERENCE_TOKEN))
        assert stats.status == 200 and stats.json()["model_stats"][0]["inference_count"] == 12, stats.body
        for index in (0, 1):
            with InferenceClient(workers[index]["private"], timeout_s=30, retries=0, metadata=metadata) as client:
                assert client.model_statistics("add").model_stats[0].inference_count == 12
        metrics = _from_log(server, r"metrics of all workers on http://(\S+)/metrics")
        ok = ("surge_requests_total", frozenset({("model", "add"), ("version", "1"), ("code", "OK")}))
        assert _scrape(metrics)[ok] == 12
        # a repository call acts on the engine, so on every front end (the other one within a step of the engine's loop)
        with InferenceClient(server.address, timeout_s=30, retries=0, metadata={"authorization": f"Bearer {BOTH_TOKEN}"}) as admin:
            admin.unload_model("add")
        for index in (0, 1):
            with InferenceClient(workers[index]["private"], timeout_s=30, retries=0, metadata=metadata) as client:
                deadline = time.monotonic() + 5
                while client.is_model_ready("add"):
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
    finally:
        code = server.stop()
    assert code == 0, server.log()


def _routing_repository(root: Path, demo: Path) -> Path:
    for version, constant in ((1, 1.0), (2, 2.0)):
        write_add_model(root / "split" / str(version) / "model.onnx", constant)
    (root / "split" / "config.toml").write_text("max_batch_size = 8\n[version_policy]\nall = true\n[routing.weights]\n1 = 50\n2 = 50\n")
    write_demo_repository(demo)
    for version in (1, 2):
        (root / "clf" / str(version)).mkdir(parents=True)
        (root / "clf" / str(version) / "model.onnx").write_bytes((demo / "mlp" / "1" / "model.onnx").read_bytes())
    (root / "clf" / "config.toml").write_text("[version_policy]\nall = true\n[routing.weights]\n1 = 50\n2 = 50\n[feedback]\nmax_requests = 50\n")
    return root


def _versions(address: str, metadata: dict[str, str], n: int = 20) -> set[str]:
    with InferenceClient(address, timeout_s=30, retries=0, metadata=metadata) as client:
        return {client.infer("split", {"x": X}, parameters={"routing_key": f"k{i}"}).model_version for i in range(n)}


def _weights(routes) -> list[tuple[int, float]]:
    return [(w.version, w.weight) for w in routes.weights]


def test_workers_apply_route_changes_everywhere_and_join_feedback_across_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGE_AUTH_TOKENS", f"inference {INFERENCE_TOKEN};inference,admin {BOTH_TOKEN}")
    repository = _routing_repository(tmp_path / "repository", tmp_path / "demo")
    server = SurgeProcess(repository, tmp_path / "run", "--workers", "2", "--log-level", "info").start()
    user = {"authorization": f"Bearer {INFERENCE_TOKEN}"}
    operator = {"authorization": f"Bearer {BOTH_TOKEN}"}
    try:
        workers = _workers(Path(_from_log(server, r"state in (\S+)")))
        one, other = workers[0]["private"], workers[1]["private"]
        assert _versions(one, user) == _versions(other, user) == {"1", "2"}
        with SurgeClient(one, metadata=operator) as admin0, SurgeClient(other, metadata=operator) as admin1:
            # each change made through one worker governs the traffic of both
            assert _weights(admin0.promote("split", 2)) == [(2, 1.0)]
            assert _versions(one, user) == _versions(other, user) == {"2"}
            assert admin1.get_routes("split").source == "admin"
            assert _weights(admin1.rollback("split")) == [(1, 50.0), (2, 50.0)]
            assert _weights(admin0.get_routes("split")) == [(1, 50.0), (2, 50.0)]
            admin1.set_weights("split", {1: 1})
            assert _versions(one, user) == _versions(other, user) == {"1"}
            admin0.set_shadow("split", 2, fraction=0.5)
            assert admin1.get_routes("split").shadow.version == 2
            assert not admin1.remove_shadow("split").HasField("shadow") and not admin0.get_routes("split").HasField("shadow")
            assert admin0.reset_routes("split").source == admin1.get_routes("split").source == "config"
            assert admin0.get_routes("split").generation == admin1.get_routes("split").generation == 6
            with pytest.raises(Exception, match="not serving"):  # refused where it was called: applied nowhere
                admin1.promote("split", 9)
            assert admin0.get_routes("split").generation == 6
        # a user token may not change routes on any worker
        with SurgeClient(one, metadata=user) as admin, pytest.raises(Exception, match="'admin' scope"):
            admin.promote("split", 2)

        # feedback: each report lands on the worker that did NOT answer the request
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32).repeat(4, axis=1)
        answered = {}
        for i in range(10):
            worker = i % 2
            with InferenceClient(workers[worker]["private"], timeout_s=30, retries=0, metadata=user) as client:
                result = client.infer("clf", {"x": x}, request_id=f"req-{i}")
            answered[f"req-{i}"] = (worker, result.model_version, result["probabilities"].argmax(axis=1))
        for rid, (worker, version, predicted) in answered.items():
            with SurgeClient(workers[1 - worker]["private"], metadata=user) as reporter:
                response = reporter.report_outcome("clf", rid, labels=predicted.tolist())
            assert response.joined and response.model_version == version, rid
        with SurgeClient(server.address, metadata=user) as reporter:
            assert not reporter.report_outcome("clf", "never-sent", success=True).joined
            assert not reporter.report_outcome("clf", "req-0", success=True).joined  # one outcome per request, whole-server
        samples = _scrape(_from_log(server, r"metrics of all workers on http://(\S+)/metrics"))
        reports = {r: samples[("surge_feedback_reports_total", frozenset({("model", "clf"), ("result", r)}))] for r in ("joined", "unknown")}
        assert reports == {"joined": 10, "unknown": 2}  # a miss is counted once, by the worker the report reached
        for version in {v for _, v, _ in answered.values()}:
            rows = 3 * sum(v == version for _, v, _ in answered.values())
            labels = frozenset({("model", "clf"), ("version", version)})
            assert samples[("surge_feedback_labelled_rows_total", labels)] == samples[("surge_feedback_correct_rows_total", labels)] == rows
    finally:
        code = server.stop()
    assert code == 0, server.log()


def test_workers_refuse_a_unix_socket_grpc_address(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(_add_repository(tmp_path / "repository")), "--workers", "2",
         "--grpc-address", f"unix://{tmp_path}/surge.sock", "--metrics-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--grpc-address" in result.stderr and "Unix socket" in result.stderr and "--workers 1" in result.stderr


def test_workers_serve_tls_on_both_shared_ports_and_still_reach_their_siblings(tmp_path, pki):  # noqa: F811
    server = SurgeProcess(
        _add_repository(tmp_path / "repository"), tmp_path / "run", "--workers", "2", "--log-level", "info",
        "--tls-cert", str(pki["server_cert_file"]), "--tls-key", str(pki["server_key_file"]),
    ).start()
    try:
        assert re.search(r"REST v2 on https://", server.log())
        for _ in range(4):  # new connections: spread over the workers
            assert _https(server.http_address, "/v2/models/add/infer", _client_context(pki), INFER).status == 200
        credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"])
        with grpc.secure_channel(server.address, credentials) as channel:  # statistics summed over the private sockets
            stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(pb.ModelStatisticsRequest(name="add"), timeout=30)
        assert stats.model_stats[0].inference_count == 4
        assert _https(server.http_address, "/v2/models/add/stats", _client_context(pki)).json()["model_stats"][0]["inference_count"] == 4
    finally:
        code = server.stop()
    assert code == 0, server.log()
