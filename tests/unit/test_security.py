"""security.py's pure parts: the scope table, token parsing, the token check, name and path confinement."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge.server import errors
from surge.server.edge.security import ADMIN, INFERENCE, OPEN, SecurityPolicy, TokenAuth, parse_tokens, scope_of
from surge.server.repository import check_model_name, confine

TOKEN = "a-token-of-enough-length"


@pytest.mark.parametrize(
    ("method", "scope"),
    [
        ("/inference.GRPCInferenceService/ModelInfer", INFERENCE),
        ("/inference.GRPCInferenceService/ModelStreamInfer", INFERENCE),
        ("/inference.GRPCInferenceService/RepositoryIndex", INFERENCE),
        ("/inference.GRPCInferenceService/RepositoryModelLoad", ADMIN),
        ("/inference.GRPCInferenceService/RepositoryModelUnload", ADMIN),
        ("/surge.v1.Admin/SetRouting", ADMIN),
        ("/surge.v1.Feedback/Send", INFERENCE),
        ("/grpc.health.v1.Health/Check", OPEN),
        ("/grpc.health.v1.Health/Watch", OPEN),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", OPEN),
        ("/some.Other/Method", INFERENCE),
    ],
)
def test_scope_of(method, scope):
    assert scope_of(method) == scope


def test_parse_tokens_file_and_env_formats():
    entries = parse_tokens(f"# comment\n\ninference {TOKEN}1\n admin,inference {TOKEN}2 ; admin {TOKEN}3", "src")
    assert entries == [(f"{TOKEN}1", {INFERENCE}), (f"{TOKEN}2", {ADMIN, INFERENCE}), (f"{TOKEN}3", {ADMIN})]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{TOKEN}", "entry 1: expected 'SCOPES TOKEN'"),
        (f"root {TOKEN}", "unknown scope(s) ['root']"),
        ("inference short", "at least 16 characters"),
        (f"inference {TOKEN} extra", "got 3 fields"),
    ],
)
def test_parse_tokens_errors_never_echo_the_token(text, message):
    with pytest.raises(errors.ConfigError) as info:
        parse_tokens(text, "tokens.txt")
    assert message in str(info.value) and "tokens.txt" in str(info.value)
    assert TOKEN not in str(info.value)


def test_token_check():
    auth = TokenAuth([(TOKEN, {INFERENCE})])
    auth.check(f"Bearer {TOKEN}", INFERENCE)
    auth.check(f"bearer  {TOKEN} ", INFERENCE)
    auth.check(None, OPEN)
    with pytest.raises(errors.PermissionDenied, match="needs the 'admin' scope"):
        auth.check(f"Bearer {TOKEN}", ADMIN)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", "Bearer ", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"):
        with pytest.raises(errors.Unauthenticated):
            auth.check(header, INFERENCE)


def test_tokens_from_file_and_environment(tmp_path: Path):
    assert TokenAuth.load(None, {}) is None
    file = tmp_path / "tokens"
    file.write_text(f"admin {TOKEN}\n")
    auth = TokenAuth.load(file, {"SURGE_AUTH_TOKENS": f"inference {TOKEN}-env"})
    assert auth is not None
    auth.check(f"Bearer {TOKEN}", ADMIN)
    auth.check(f"Bearer {TOKEN}-env", INFERENCE)
    file.write_text("# nothing\n")
    with pytest.raises(errors.ConfigError, match="holds no token"):
        TokenAuth.load(file, {})
    with pytest.raises(errors.ConfigError, match="cannot read"):
        TokenAuth.load(tmp_path / "missing", {})


def test_policy_admin_disabled_and_inactive():
    assert not SecurityPolicy().active
    policy = SecurityPolicy(admin_enabled=False)
    assert policy.active
    policy.authorize("/inference.GRPCInferenceService/ModelInfer", None)
    with pytest.raises(errors.Unsupported, match="admin RPCs are disabled"):
        policy.authorize("/inference.GRPCInferenceService/RepositoryModelLoad", None)


@pytest.mark.parametrize("name", ["", ".", "..", ".x", "a/b", "../a", "/abs", "a\\b", "a\0b", "x" * 256])
def test_check_model_name_refuses(name):
    with pytest.raises(errors.InvalidInput):
        check_model_name(name)


def test_confine(tmp_path: Path):
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (root / "link").symlink_to(tmp_path / "out")
    assert confine(root, root / "m", "m") == (root / "m").resolve()
    with pytest.raises(errors.ConfigError, match="resolves outside"):
        confine(root, root / "link", "link")
    with pytest.raises(errors.ConfigError, match="resolves outside"):
        confine(root, root / "m" / ".." / ".." / "out", "dots")
