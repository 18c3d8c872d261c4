"""Security over the wire: TLS, mutual TLS (certificates made here with ``cryptography``), bearer tokens with
inference/admin scopes, admin RPCs disabled, repository loads confined to the root, the Unix socket, the bind."""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import ipaddress
import os
import stat
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc
from surge.server.app import ServerConfig
from surge.server.errors import ConfigError
from tests.models import write_add_model

X = np.zeros((1, 4), np.float32)


def _infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="adder")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(X.tobytes())
    return request


def _infer(stub: pb_grpc.GRPCInferenceServiceStub, metadata=None) -> np.ndarray:
    response = stub.ModelInfer(_infer_request(), timeout=10, metadata=metadata)
    return np.frombuffer(response.raw_output_contents[0], np.float32)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_add_model(tmp_path / "repo" / "adder" / "1" / "model.onnx", 1.0)
    return tmp_path / "repo"


# -- certificates ----------------------------------------------------------------------------------


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem(obj) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "private_bytes"):
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return obj.public_bytes(serialization.Encoding.PEM)


def _cert(subject: str, key, issuer_name=None, issuer_key=None, *, ca: bool = False, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, bytes | Path]:
    """A CA, a server certificate for 127.0.0.1, a client certificate from the CA and one from a stranger CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, stranger_key = _key(), _key()
    ca = _cert("surge test CA", ca_key, ca=True)
    stranger = _cert("stranger CA", stranger_key, ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    out: dict[str, bytes | Path] = {
        "ca": _pem(ca),
        "server_cert": _pem(_cert("127.0.0.1", server_key, ca.subject, ca_key, server=True)),
        "server_key": _pem(server_key),
        "client_cert": _pem(_cert("client", client_key, ca.subject, ca_key)),
        "client_key": _pem(client_key),
        "rogue_cert": _pem(_cert("rogue", rogue_key, stranger.subject, stranger_key)),
        "rogue_key": _pem(rogue_key),
    }
    for name in ("ca", "server_cert", "server_key"):
        (folder / f"{name}.pem").write_bytes(out[name])  # type: ignore[arg-type]
        out[f"{name}_file"] = folder / f"{name}.pem"
    return out


def _tls_stub(address: str, pki, cert: str | None = None):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"], private_key=pki[f"{cert}_key"] if cert else None, certificate_chain=pki[f"{cert}_cert"] if cert else None,
    )
    channel = grpc.secure_channel(address, credentials)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def test_tls_serves_encrypted_and_refuses_plaintext(repo, pki, start_server):
    server = start_server(model_repository=repo, tls_cert_file=pki["server_cert_file"], tls_key_file=pki["server_key_file"])
    channel, stub = _tls_stub(server.address, pki)
    with channel:
        assert _infer(stub)[0] == 1.0
    with grpc.insecure_channel(server.address) as plain:
        with pytest.raises(grpc.RpcError) as info:
            _infer(pb_grpc.GRPCInferenceServiceStub(plain))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_from_the_ca(repo, pki, start_server):
    server = start_server(
        model_repository=repo, tls_cert_file=pki["server_cert_file"], tls_key_file=pki["server_key_file"], tls_client_ca_file=pki["ca_file"],
    )
    channel, stub = _tls_stub(server.address, pki, cert="client")
    with channel:
        assert _infer(stub)[0] == 1.0
    for cert in (None, "rogue"):  # no certificate; a certificate from another CA
        channel, stub = _tls_stub(server.address, pki, cert=cert)
        with channel, pytest.raises(grpc.RpcError) as info:
            _infer(stub)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (cert, info.value.details())


def test_our_clients_speak_mutual_tls_with_a_token(repo, pki, tmp_path, start_server):
    import asyncio

    from surge.clients import AsyncInferenceClient, InferenceClient

    tokens = tmp_path / "tokens"
    tokens.write_text(f"inference {INFERENCE_TOKEN}\n")
    server = start_server(
        model_repository=repo, tls_cert_file=pki["server_cert_file"], tls_key_file=pki["server_key_file"],
        tls_client_ca_file=pki["ca_file"], auth_tokens_file=tokens,
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"], private_key=pki["client_key"], certificate_chain=pki["client_cert"])
    auth = {"authorization": f"Bearer {INFERENCE_TOKEN}"}
    with InferenceClient(server.address, retries=0, timeout_s=10, credentials=credentials, metadata=auth) as client:
        assert client.infer("adder", {"x": X})["y"][0, 0] == 1.0

    async def run() -> float:
        async with AsyncInferenceClient(server.address, retries=0, timeout_s=10, credentials=credentials, metadata=auth) as client:
            return float((await client.infer("adder", {"x": X}))["y"][0, 0])

    assert asyncio.run(run()) == 1.0


def test_tls_config_errors_name_the_problem(repo, pki):
    from surge.server.errors import ConfigError

    with pytest.raises(ConfigError, match="needs both"):
        ServerConfig(model_repository=repo, tls_cert_file=pki["server_cert_file"])
    with pytest.raises(ConfigError, match="mutual TLS"):
        ServerConfig(model_repository=repo, tls_client_ca_file=pki["ca_file"])


# -- bearer tokens and scopes ----------------------------------------------------------------------

INFERENCE_TOKEN = "inference-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
BOTH_TOKEN = "both-token-0123456789abcdef"


@pytest.fixture
def authed(repo, tmp_path, start_server):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# scopes token\ninference {INFERENCE_TOKEN}\nadmin {ADMIN_TOKEN}\ninference,admin {BOTH_TOKEN}\n")
    return start_server(model_repository=repo, model_control_mode="explicit", load_models=("adder",), auth_tokens_file=tokens)


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def test_tokens_unauthenticated_without_or_with_a_wrong_token(authed):
    with grpc.insecure_channel(authed.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for metadata in (None, _bearer("not-a-known-token-at-all"), (("authorization", INFERENCE_TOKEN),), _bearer(INFERENCE_TOKEN[:-1])):
            with pytest.raises(grpc.RpcError) as info:
                _infer(stub, metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
            assert INFERENCE_TOKEN not in info.value.details()
        with pytest.raises(grpc.RpcError) as info:  # streams too
            list(stub.ModelStreamInfer(iter([_infer_request()]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _infer(stub, _bearer(INFERENCE_TOKEN))[0] == 1.0
        answers = list(stub.ModelStreamInfer(iter([_infer_request()]), timeout=10, metadata=_bearer(INFERENCE_TOKEN)))
        assert len(answers) == 1 and not answers[0].error_message


def test_scopes_admin_rpcs_need_the_admin_scope(authed):
    with grpc.insecure_channel(authed.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        load = pb.RepositoryModelLoadRequest(model_name="adder")
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(load, timeout=30, metadata=_bearer(INFERENCE_TOKEN))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "RepositoryModelLoad needs the 'admin' scope" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="adder"), timeout=30, metadata=_bearer(INFERENCE_TOKEN))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stub.RepositoryModelLoad(load, timeout=30, metadata=_bearer(ADMIN_TOKEN))
        with pytest.raises(grpc.RpcError) as info:  # admin alone is not inference
            _infer(stub, _bearer(ADMIN_TOKEN))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stub.RepositoryModelLoad(load, timeout=30, metadata=_bearer(BOTH_TOKEN))
        assert _infer(stub, _bearer(BOTH_TOKEN))[0] == 1.0
        # health checks and reflection stay open so probes work
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_admin_rpcs_disabled_answer_unimplemented(repo, start_server):
    server = start_server(model_repository=repo, model_control_mode="explicit", load_models=("adder",), admin_enabled=False)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, request in (
            (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="adder")),
            (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="adder")),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "admin RPCs are disabled on this server" in info.value.details()
        assert _infer(stub)[0] == 1.0  # the model is still loaded and serving


# -- repository confinement ------------------------------------------------------------------------


def test_repository_load_is_confined_to_the_root(tmp_path, repo, start_server):
    outside = tmp_path / "outside"
    write_add_model(outside / "evil" / "1" / "model.onnx", 666.0)
    (repo / "escape").symlink_to(outside / "evil", target_is_directory=True)  # a model folder that is a symlink out
    write_add_model(repo / "fileescape" / "1" / "model.onnx", 2.0)
    (repo / "fileescape" / "1" / "model.onnx").unlink()
    (repo / "fileescape" / "1" / "model.onnx").symlink_to(outside / "evil" / "1" / "model.onnx")  # a version file that is
    server = start_server(model_repository=repo, model_control_mode="explicit", load_models=("adder",))
    invalid, failed = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        attempts = [
            ("../outside/evil", invalid, "not a folder name"),
            ("..", invalid, "not a folder name"),
            (str(outside / "evil"), invalid, "not a folder name"),  # absolute
            ("adder/../../outside/evil", invalid, "not a folder name"),
            ("..\\outside\\evil", invalid, "not a folder name"),
            ("adder\0", invalid, "not a folder name"),
            (".hidden", invalid, "not a folder name"),
            ("escape", failed, "resolves outside the model repository"),
            ("fileescape", failed, "resolves outside the model repository"),
        ]
        for name, code, text in attempts:
            with pytest.raises(grpc.RpcError) as info:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name), timeout=30)
            assert info.value.code() == code, (name, info.value.details())
            assert text in info.value.details(), (name, info.value.details())
        # a load request may not opt into pickle or point the model file outside its version folder
        for config, text in (
            ('{"parameters": {"allow_pickle": {"string_value": "true"}}}', "allow_pickle can only be set in the model's config.toml"),
            ('{"default_model_filename": "../../../outside/evil/1/model.onnx"}', "must be a file name inside the version folder"),
        ):
            request = pb.RepositoryModelLoadRequest(model_name="adder")
            request.parameters["config"].string_param = config
            with pytest.raises(grpc.RpcError) as info:
                stub.RepositoryModelLoad(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in info.value.details()
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        assert {m.name for m in index.models if m.state == "READY"} == {"adder"}
        assert _infer(stub)[0] == 1.0


# -- binding ---------------------------------------------------------------------------------------


def test_unix_socket_serving_with_mode_0600(repo, tmp_path, start_server):
    path = Path("/tmp") / f"surge-test-{os.getpid()}-{tmp_path.name[-12:]}.sock"  # AF_UNIX paths are short (108 bytes)
    try:
        server = start_server(model_repository=repo, grpc_address=f"unix://{path}")
        assert server.address == f"unix://{path}"
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with grpc.insecure_channel(server.address) as channel:
            assert _infer(pb_grpc.GRPCInferenceServiceStub(channel))[0] == 1.0
    finally:
        path.unlink(missing_ok=True)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (the standard library's client, pointed at a socket file)."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self._path))


def _unix_http(path: Path, method: str, target: str, body: dict | None = None, token: str = "") -> tuple[int, bytes]:
    connection = _UnixHTTPConnection(path)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request(method, target, body=json.dumps(body).encode() if body is not None else None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_rest_on_a_unix_socket_with_the_sockets_mode(repo, tmp_path, start_server):
    tag = f"{os.getpid()}-{tmp_path.name[-12:]}"
    grpc_socket, rest_socket = Path("/tmp") / f"surge-g-{tag}.sock", Path("/tmp") / f"surge-r-{tag}.sock"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"inference {INFERENCE_TOKEN}\n")
    try:
        rest_socket.touch()  # not a socket: the bind must fail rather than remove a file it does not own
        with pytest.raises(OSError):
            start_server(model_repository=repo, grpc_address=f"unix://{grpc_socket}", http_address=f"unix://{rest_socket}")
        rest_socket.unlink()
        server = start_server(model_repository=repo, grpc_address=f"unix://{grpc_socket}", http_address=f"unix://{rest_socket}",
                              socket_mode=0o660, auth_tokens_file=tokens)  # fmt: skip
        assert server.server.http_address == f"unix:{rest_socket}"
        assert stat.S_ISSOCK(rest_socket.stat().st_mode) and stat.S_IMODE(rest_socket.stat().st_mode) == 0o660
        assert stat.S_IMODE(grpc_socket.stat().st_mode) == 0o660
        infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}
        status, body = _unix_http(rest_socket, "POST", "/v2/models/adder/infer", infer, INFERENCE_TOKEN)
        assert status == 200 and json.loads(body)["outputs"][0]["data"][0] == 2.0, body
        assert _unix_http(rest_socket, "POST", "/v2/models/adder/infer", infer)[0] == 401  # the same token policy as gRPC
        assert _unix_http(rest_socket, "GET", "/v2/health/ready")[0] == 200
    finally:
        grpc_socket.unlink(missing_ok=True)
        rest_socket.unlink(missing_ok=True)


def test_rest_is_off_by_default_beside_a_unix_grpc_socket(repo, tmp_path, start_server):
    from surge.server.cli import _parser

    socket_path = Path("/tmp") / f"surge-g-{os.getpid()}-{tmp_path.name[-12:]}.sock"
    try:
        server = start_server(model_repository=repo, grpc_address=f"unix://{socket_path}", http_port=None)
        assert server.server.http_address == "" and server.server._rest is None
    finally:
        socket_path.unlink(missing_ok=True)
    assert ServerConfig(model_repository=repo, grpc_address="unix:///run/s.sock").http_port == -1
    assert ServerConfig(model_repository=repo).http_port == 8000
    assert ServerConfig(model_repository=repo, grpc_address="unix:///run/s.sock", http_port=9000).http_port == 9000  # asked for: on
    assert _parser().parse_args(["serve"]).http_port is None
    with pytest.raises(ConfigError, match="different sockets"):
        ServerConfig(model_repository=repo, grpc_address="unix:///run/s.sock", http_address="unix:///run/s.sock")
    with pytest.raises(ConfigError, match="--http-address must be unix:"):
        ServerConfig(model_repository=repo, http_address="0.0.0.0:8000")


def test_default_bind_is_loopback(repo):
    from surge.server.cli import _parser

    assert ServerConfig(model_repository=repo).host == "127.0.0.1"
    assert _parser().parse_args(["serve"]).host == "127.0.0.1"


def test_serve_flags_unix_socket_tokens_and_admin_switch(repo, tmp_path):
    from tests.process import SurgeProcess

    socket = Path("/tmp") / f"surge-cli-{os.getpid()}-{tmp_path.name[-12:]}.sock"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"inference,admin {BOTH_TOKEN}\n")
    server = SurgeProcess(
        repo, tmp_path / "server", "--grpc-address", f"unix://{socket}", "--auth-tokens-file", str(tokens), "--disable-admin",
        "--max-tensor-elements", "4", "--model-control-mode", "explicit", "--load-model", "adder",
    ).start()
    try:
        assert server.address == f"unix://{socket}" and stat.S_IMODE(socket.stat().st_mode) == 0o600
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert _infer(stub, _bearer(BOTH_TOKEN))[0] == 1.0
            with pytest.raises(grpc.RpcError) as info:
                _infer(stub)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="adder"), timeout=10, metadata=_bearer(BOTH_TOKEN))
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            big = _infer_request()
            big.inputs[0].shape[:] = [2, 4]
            big.raw_input_contents[0] = np.zeros((2, 4), np.float32).tobytes()
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(big, timeout=10, metadata=_bearer(BOTH_TOKEN))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_tensor_elements = 4" in info.value.details()
        server.stop_and_check()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
        socket.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-tensor-elements", "0"], "max_tensor_elements must be at least 1"),
        (["--grpc-address", "tcp://0.0.0.0:1"], "--grpc-address must be unix:"),
        (["--tls-cert", "/nonexistent.pem"], "needs both"),
        (["--auth-tokens-file", "/nonexistent-tokens"], "cannot read the auth tokens file"),
        (["--grpc-socket-mode", "rw"], "invalid literal"),
    ],
)
def test_serve_refuses_bad_reliability_flags(repo, flags, message):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(repo), "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0", *flags],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


# -- server paths stay on the server ---------------------------------------------------------------


def test_no_answer_carries_a_path_of_the_repository(tmp_path, start_server, caplog):
    """Load failures reach clients model-relative (the log keeps the full path): gRPC and REST, every kind of call."""
    import urllib.error
    import urllib.request

    from tests.models import write_test_repository

    repo = write_test_repository(tmp_path / "repository")
    (repo / "missing_file" / "1").mkdir(parents=True)
    (repo / "missing_file" / "config.toml").write_text('default_model_filename = "weights.onnx"\n')
    outside = tmp_path / "outside"
    write_add_model(outside / "1" / "model.onnx", 1.0)
    (repo / "escapes").mkdir()
    (repo / "escapes" / "1").symlink_to(outside / "1")
    server = start_server(model_repository=repo, model_control_mode="explicit", load_models=("broken", "missing_file"), strict_readiness=False)
    secrets = {str(repo), str(repo.resolve()), str(tmp_path.resolve())}
    answers: list[str] = []

    stub = pb_grpc.GRPCInferenceServiceStub(channel := grpc.insecure_channel(server.address))
    calls = [
        lambda: stub.ModelInfer(pb.ModelInferRequest(model_name="broken", inputs=[_infer_request().inputs[0]]), timeout=10),
        lambda: stub.ModelInfer(pb.ModelInferRequest(model_name="broken", model_version="1"), timeout=10),
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="broken"), timeout=10),
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="missing_file", version="1"), timeout=10),
        lambda: stub.ModelConfig(pb.ModelConfigRequest(name="broken"), timeout=10),
        lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken"), timeout=30),
        lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="missing_file"), timeout=30),
        lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="escapes"), timeout=30),
        lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="no_such_model"), timeout=30),
    ]
    with channel:
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            answers.append(info.value.details())
        assert not stub.ModelReady(pb.ModelReadyRequest(name="broken"), timeout=10).ready
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        reasons = {m.name: m.reason for m in index.models}
        answers += reasons.values()
    assert "broken/1/model.onnx" in reasons["broken"], reasons["broken"]  # the model-relative reason is still there
    assert "missing_file/1/weights.onnx does not exist" in reasons["missing_file"], reasons["missing_file"]
    assert "resolves outside the model repository" in reasons["escapes"], reasons["escapes"]

    for method, path, body in (
        ("POST", "/v2/models/broken/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
        ("GET", "/v2/models/broken", None),
        ("GET", "/v2/models/broken/ready", None),
        ("GET", "/v2/models/missing_file/versions/1", None),
        ("POST", "/v2/repository/index", {}),
        ("POST", "/v2/repository/models/broken/load", {}),
        ("POST", "/v2/repository/models/escapes/load", {}),
        ("POST", "/v2/repository/models/no_such_model/load", {}),
    ):
        request = urllib.request.Request(f"http://{server.server.http_address}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None)  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answers.append(response.read().decode())
        except urllib.error.HTTPError as exc:
            answers.append(exc.read().decode())
    assert len(answers) > 20 and all(answers[:9])
    leaks = [a for a in answers if any(s in a for s in secrets)]
    assert not leaks, leaks
    assert f"{repo}/broken/1/model.onnx" in caplog.text  # the operator's log has the full path


# -- the metrics endpoint --------------------------------------------------------------------------

SCRAPE_TOKEN = "scrape-token-0123456789abcdef"


def _scrape(url: str, context=None, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_metrics_over_tls_with_a_scrape_token(repo, pki, tmp_path, start_server):
    import ssl
    import urllib.error

    token_file = tmp_path / "scrape-token"
    token_file.write_text(SCRAPE_TOKEN + "\n")  # Prometheus' credentials_file: the token, a trailing newline is fine
    server = start_server(model_repository=repo, tls_cert_file=pki["server_cert_file"], tls_key_file=pki["server_key_file"],
                          metrics_tls=True, metrics_token_file=token_file)  # fmt: skip
    channel, stub = _tls_stub(server.address, pki)
    with channel:
        _infer(stub)
    url = f"https://{server.server.metrics_address}/metrics"
    trusted = ssl.create_default_context(cafile=str(pki["ca_file"]))
    status, _, body = _scrape(url, trusted, SCRAPE_TOKEN)
    assert status == 200 and b'surge_requests_total{model="adder",version="1",code="OK"} 1' in body, body[:300]
    for token in (None, "wrong-token-0123456789abcdef", SCRAPE_TOKEN[:-1]):
        status, headers, body = _scrape(url, trusted, token)
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer") and b"surge_requests_total" not in body, (token, status)
    assert _scrape(f"https://{server.server.metrics_address}/", trusted)[0] == 401  # every path
    with pytest.raises(urllib.error.URLError):  # the server's certificate is checked by scrapers that do not know its CA
        _scrape(url, ssl.create_default_context(), SCRAPE_TOKEN)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP gets no page
        _scrape(f"http://{server.server.metrics_address}/metrics", None, SCRAPE_TOKEN)


def test_metrics_token_alone_and_config_errors(repo, tmp_path, start_server):
    token_file = tmp_path / "scrape-token"
    token_file.write_text(SCRAPE_TOKEN)
    server = start_server(model_repository=repo, metrics_token_file=token_file)
    url = f"http://{server.server.metrics_address}/metrics"
    assert _scrape(url, token=SCRAPE_TOKEN)[0] == 200 and _scrape(url)[0] == 401
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        ServerConfig(model_repository=repo, metrics_token_file=short).metrics_protection()
    with pytest.raises(ConfigError, match="--metrics-tls"):
        ServerConfig(model_repository=repo, metrics_tls=True)


def test_serve_flags_protect_the_metrics_endpoint(repo, pki, tmp_path):
    import re
    import ssl

    from tests.process import SurgeProcess

    token_file = tmp_path / "scrape-token"
    token_file.write_text(SCRAPE_TOKEN)
    server = SurgeProcess(repo, tmp_path / "server", "--tls-cert", str(pki["server_cert_file"]), "--tls-key", str(pki["server_key_file"]),
                          "--metrics-tls", "--metrics-token-file", str(token_file)).start()  # fmt: skip
    try:
        found = re.search(r"metrics on https://(\S+)/metrics \(scrape token required\)", server.log())
        assert found, server.log()
        trusted = ssl.create_default_context(cafile=str(pki["ca_file"]))
        assert _scrape(f"https://{found.group(1)}/metrics", trusted, SCRAPE_TOKEN)[0] == 200
        assert _scrape(f"https://{found.group(1)}/metrics", trusted, "x" * 20)[0] == 401
    finally:
        assert server.stop() == 0



def test_the_workers_merged_page_over_tls_with_the_scrape_token(repo, pki, tmp_path):
    """Under --workers the whole server's page is served over TLS with the scrape token, and merges every worker's
    own page (served on 127.0.0.1 for the supervisor alone): it counts every worker's requests."""
    import re
    import ssl

    from tests.process import SurgeProcess

    token_file = tmp_path / "scrape-token"
    token_file.write_text(SCRAPE_TOKEN)
    server = SurgeProcess(repo, tmp_path / "server", "--workers", "2", "--log-level", "info", "--tls-cert", str(pki["server_cert_file"]),
                          "--tls-key", str(pki["server_key_file"]), "--metrics-tls", "--metrics-token-file", str(token_file)).start()  # fmt: skip
    try:
        found = re.search(r"metrics of all workers on https?://(\S+)/metrics", server.log())
        assert found, server.log()
        for _ in range(3):
            channel, stub = _tls_stub(server.address, pki)  # new connections: spread over the workers by the kernel
            with channel:
                _infer(stub)
        trusted = ssl.create_default_context(cafile=str(pki["ca_file"]))
        status, _, body = _scrape(f"https://{found.group(1)}/metrics", trusted, SCRAPE_TOKEN)
        assert status == 200 and b"\nsurge_workers 2\n" in body, body[:300]
        assert b'surge_requests_total{model="adder",version="1",code="OK"} 3\n' in body, server.log()[-3000:]
        assert "did not answer" not in server.log()  # every worker's page was read
        assert _scrape(f"https://{found.group(1)}/metrics", trusted, "x" * 20)[0] == 401
    finally:
        assert server.stop() == 0

def test_server_intervals_are_bounded(repo):
    for kwargs, message in (
        ({"poll_interval_s": 0.0}, "--repository-poll-s must be above 0 and at most 86400"),
        ({"poll_interval_s": float("nan")}, "--repository-poll-s"),
        ({"drain_timeout_s": 1e9}, "--drain-timeout-s must be from 0 to 3600"),
    ):
        with pytest.raises(ConfigError, match=message):
            ServerConfig(model_repository=repo, **kwargs)
