"""The command line as a careless user meets it: every mistake is one line on stderr and exit code 2.

Each case runs ``surge`` as a real process (``python -m surge.server.cli``); the servers are real too.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from surge.server.cli import _parser
from tests.process import SurgeProcess

pytestmark = pytest.mark.timeout(180)

SUBCOMMANDS = sorted(_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def _surge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "surge.server.cli", *args], capture_output=True, text=True, timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, test_repository: Path):
    server = SurgeProcess(test_repository, tmp_path_factory.mktemp("cli")).start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture
def refused_port() -> int:
    """A port with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command: str) -> None:
    result = _surge(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ") and not result.stderr


def test_every_flag_says_what_it_does_and_its_default() -> None:
    missing = []
    for name, sub in _parser()._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
        for action in sub._actions:
            if not action.option_strings or action.help == "==SUPPRESS==" or action.dest == "help":
                continue
            flag = f"surge {name} {action.option_strings[0]}"
            if not action.help:
                missing.append(f"{flag}: no help")
            elif action.nargs != 0 and not action.required and action.default not in (None, []) and "default" not in action.help:
                missing.append(f"{flag}: help does not give the default {action.default!r}")
    assert not missing, "\n".join(missing)


def test_version() -> None:
    result = _surge("--version")
    assert result.returncode == 0 and result.stdout.startswith("surge ") and result.stdout.split()[1][0].isdigit()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("route", "m", "--weights", "1=abc"), ("--weights", "1=abc", "e.g. 1=90,2=10")),
        (("route", "m", "--weights", "x=1"), ("--weights", "x=1")),
        (("route", "m", "--weights", "1=nan"), ("--weights",)),
        (("route", "m", "--weights", "1=-5"), ("--weights",)),
        (("route", "m", "--shadow", "3:abc"), ("--shadow", "3:abc")),
        (("route", "m", "--shadow", "3:1.5"), ("--shadow", "(0, 1]")),
        (("route", "m", "--shadow", "²"), ("--shadow",)),
        (("infer",), ("surge infer", "model")),
        (("infer", "m", "--batch", "two"), ("--batch", "two")),
        (("no-such-command",), ("invalid choice",)),
        (("route", "m", "--url", "https://127.0.0.1:8001"), ("https://",)),
    ],
)
def test_usage_mistakes_are_one_line(args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    _one_line_error(_surge(*args), *fragments)


@pytest.mark.parametrize("command", [("top", "--once", "--interval-s", "0.1"), ("ab", "mlp"), ("drift", "mlp")])
def test_metrics_readers_pointed_at_nothing(command: tuple[str, ...], refused_port: int) -> None:
    _one_line_error(_surge(*command, "--metrics-url", f"127.0.0.1:{refused_port}"), "cannot reach", "is the server running?")


@pytest.mark.parametrize("command", [("top", "--once", "--interval-s", "0.1"), ("ab", "mlp"), ("drift", "mlp")])
def test_metrics_readers_pointed_at_the_grpc_port(command: tuple[str, ...], served) -> None:
    """``--url`` (the older spelling) still reaches these commands; a gRPC port gets a hint, not a traceback."""
    _one_line_error(_surge(*command, "--url", served.address), "is it the gRPC port?", "--metrics-url")


def test_metrics_url_accepts_an_http_prefix(served) -> None:
    result = _surge("top", "--once", "--interval-s", "0.1", "--metrics-url", f"http://{served.metrics_address}/metrics")
    assert result.returncode == 0, result.stderr
    assert "mlp" in result.stdout


def test_grpc_url_accepts_an_http_prefix(served) -> None:
    result = _surge("models", "--url", f"http://{served.address}")
    assert result.returncode == 0, result.stderr
    assert "mlp" in result.stdout


def test_top_prints_when_piped(served) -> None:
    """No terminal: plain text without clear-screen escapes (``--once`` not given: stopped by the timeout)."""
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        subprocess.run([sys.executable, "-m", "surge.server.cli", "top", "--metrics-url", served.metrics_address, "--interval-s", "0.2"],
                       capture_output=True, text=True, timeout=4)  # fmt: skip
    out = stopped.value.stdout
    out = out.decode() if isinstance(out, bytes) else (out or "")
    assert "surge top" in out and "\x1b[" not in out


def _serve(repository: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``surge serve`` that stops at once: the gRPC port is taken, so any warning comes before the bind error."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        return _surge("serve", "--model-repository", str(repository), "--grpc-port", str(port), "--http-port", "-1", "--metrics-port", "-1", *extra)


def test_serve_rejects_a_file_as_repository_before_binding(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = _serve(tmp_path / "file")
    assert result.returncode == 2 and "is not a directory" in result.stderr and "cannot bind" not in result.stderr


def test_serve_warns_about_an_empty_repository(tmp_path: Path) -> None:
    assert "has no model folders" in _serve(tmp_path).stderr


def test_serve_warns_about_a_model_folder_given_as_repository(tmp_path: Path) -> None:
    (tmp_path / "mlp" / "1").mkdir(parents=True)
    (tmp_path / "mlp" / "config.toml").write_text('backend = "onnxruntime"\n')
    assert "looks like a model folder" in _serve(tmp_path / "mlp").stderr


def test_serve_warns_about_a_model_file_outside_a_version_folder(tmp_path: Path) -> None:
    (tmp_path / "mlp").mkdir()
    (tmp_path / "mlp" / "model.onnx").write_bytes(b"")
    assert "move it to mlp/1/model.onnx" in _serve(tmp_path).stderr


def test_serve_warns_about_a_queue_delay_in_the_wrong_unit(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.toml").write_text("max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_s = 5\n")
    from tests.models import write_add_model

    write_add_model(tmp_path / "m" / "1" / "model.onnx", 1.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    line = ""
    with subprocess.Popen([sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(tmp_path), "--grpc-port", str(free),
                           "--http-port", "-1", "--metrics-port", "-1"], stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
        try:
            for line in proc.stderr:  # type: ignore[union-attr]
                if "max_queue_delay_s" in line or "ready" in line.lower():
                    break
        finally:
            proc.kill()
    assert "max_queue_delay_s = 5 s (5000 ms)" in line and "unit mistake" in line
