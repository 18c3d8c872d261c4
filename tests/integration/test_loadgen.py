"""``surge bench`` against a real Surge server on loopback: counts against the server's ModelStatistics, per-version
breakdown, open-loop rate accuracy, the SLO gate's exit codes (the CLI in a subprocess), the pinned JSON schema,
--compare and --plot, several processes, and that the generator imports no server module or model runtime."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from surge.clients.loadgen.cli import main as bench
from tests.conftest import ServerThread

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    """``surge bench ARGS`` through the console entry point (surge.server.cli), as a subprocess."""
    cmd = [sys.executable, "-m", "surge.server.cli", "bench", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def run_json(tmp_path: Path, *args: str, name: str = "run.json") -> dict:
    out = tmp_path / name
    code = bench([*args, "--json", str(out), "--quiet", "--no-progress"])
    assert code == 0
    return json.loads(out.read_text())


def test_counts_match_the_servers_statistics(server: ServerThread, tmp_path: Path) -> None:
    report = run_json(tmp_path, "mlp", "--url", server.address, "--requests", "300", "--warmup-s", "0", "--concurrency", "4",
                      "--rows", "3", "--server-stats")  # fmt: skip
    (level,) = report["levels"]
    assert level["requests"] == level["ok"] == 300 and level["errors"] == {}
    assert level["rows_per_s"] == pytest.approx(3 * level["infer_per_s"])
    (model,) = level["by_model"]
    assert (model["model"], model["served_version"], model["ok"], model["rows"]) == ("mlp", "1", 300, 900)
    (stats,) = level["server"]  # snapshots before the first request and after the last: exact
    assert (stats["model"], stats["version"], stats["success"], stats["fail"]) == ("mlp", "1", 300, 0)
    assert stats["inference_count"] == 900 and stats["execution_count"] == 300  # mlp has no dynamic batching
    assert all(stats["mean_ms"][k] > 0 for k in ("total", "queue", "compute_input", "compute_infer", "compute_output"))
    lat = level["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert sum(t["ok"] for t in level["timeline"]) == 300


def test_mix_routing_keys_deadlines_and_versions(server: ServerThread, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((8, 4), np.float32))
    (tmp_path / "mix.toml").write_text("""
[[request]]
model = "versioned"
version = "1"
weight = 1
rows = 2
deadline_ms = 5000
routing_keys = 3

[[request]]
model = "versioned"
version = "2"
weight = 3
[request.inputs.x]
npy = "x.npy"
""")
    report = run_json(tmp_path, "--scenario", str(tmp_path / "mix.toml"), "--url", server.address, "--requests", "400",
                      "--warmup-s", "0", "--concurrency", "2", "--server-stats")  # fmt: skip
    (level,) = report["levels"]
    assert level["ok"] == 400
    served = {(m["requested_version"], m["served_version"]): m for m in level["by_model"]}
    assert set(served) == {("1", "1"), ("2", "2")}
    assert 0.6 < served[("2", "2")]["ok"] / 400 < 0.9  # weights 1:3 over the first 400 of the mix
    assert served[("1", "1")]["rows"] == 2 * served[("1", "1")]["ok"]
    server_side = {s["version"]: s for s in level["server"]}
    assert {v: s["success"] for v, s in server_side.items()} == {"1": served[("1", "1")]["ok"], "2": served[("2", "2")]["ok"]}
    assert server_side["1"]["inference_count"] == served[("1", "1")]["rows"]
    assert report["scenario"]["requests"][0]["routing_keys"] == ["key-0", "key-1", "key-2"]


def test_open_loop_rate_is_accurate(server: ServerThread, tmp_path: Path) -> None:
    out = tmp_path / "rate.json"
    proc = subprocess.run([sys.executable, "-m", "surge.clients.loadgen", "mlp", "--url", server.address, "--rate", "200", "--arrival", "constant",
                           "--duration-s", "5", "--warmup-s", "1", "--json", str(out), "--quiet"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (level,) = json.loads(out.read_text())["levels"]
    assert level["load"] == {"mode": "open", "concurrency": None, "rate": 200.0, "arrival": "constant"}
    assert level["infer_per_s"] == pytest.approx(200.0, rel=0.02)  # answers completed inside the 5 s window
    assert level["requests"] == 1000  # constant arrivals: exactly rate x window requests belong to the window
    assert level["send_lag_ms"]["p50"] < 5.0  # the schedule was kept (latency still counts from each slot)
    per_second = [t["ok"] for t in level["timeline"] if 0 <= t["t_s"] < 5]
    assert len(per_second) == 5 and all(120 <= n <= 280 for n in per_second), per_second


def test_poisson_arrivals_average_the_rate(server: ServerThread, tmp_path: Path) -> None:
    report = run_json(tmp_path, "mlp", "--url", server.address, "--rate", "200", "--duration-s", "5", "--warmup-s", "0.5", "--seed", "3")
    (level,) = report["levels"]
    assert level["load"]["arrival"] == "poisson"
    # a Poisson count over 5 s at 200/s is 1000 +- 32 (one sd); 4 sd either way
    assert 870 <= level["requests"] <= 1130
    assert level["infer_per_s"] == pytest.approx(200.0, rel=0.15)


def test_slo_gate_exit_codes(server: ServerThread, tmp_path: Path) -> None:
    common = ["--url", server.address, "--requests", "100", "--warmup-s", "0", "--concurrency", "2"]
    passed = run_cli("mlp", *common, "--slo", "p99<60s,errors<0.1%,infer/s>1")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "SLO passed" in passed.stdout
    missed = run_cli("mlp", *common, "--slo", "p50<1us")
    assert missed.returncode == 1, missed.stdout + missed.stderr
    assert "SLO MISSED: c2 p50<1us" in missed.stdout
    # failing_py raises on negative inputs: random normal inputs fail about half the time, as INTERNAL
    failing = run_cli("failing_py", *common, "--slo", "errors<0.1%", "--json", str(tmp_path / "f.json"))
    assert failing.returncode == 1, failing.stdout + failing.stderr
    (level,) = json.loads((tmp_path / "f.json").read_text())["levels"]
    assert set(level["errors"]) == {"INTERNAL"} and 10 < level["errors"]["INTERNAL"] < 90 and level["requests"] == 100
    assert "errors: INTERNAL" in failing.stdout
    bad = run_cli("mlp", *common, "--slo", "p99<<3")
    assert bad.returncode == 2 and "SLO" in bad.stderr
    assert run_cli("no_such_model", *common).returncode == 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: connection refused
        unreachable = run_cli("mlp", "--url", closed, "--requests", "5")
    assert unreachable.returncode == 3 and "error" in unreachable.stderr


def test_deadlines_count_as_errors_by_status(server: ServerThread, tmp_path: Path) -> None:
    np.save(tmp_path / "delay.npy", np.full((4, 1), 0.2, np.float32))  # slow_py sleeps 0.2 s per request
    report = run_json(tmp_path, "slow_py", "--url", server.address, "--input", f"delay_s={tmp_path / 'delay.npy'}", "--deadline-ms", "20",
                      "--requests", "3", "--warmup-s", "0", "--concurrency", "1")  # fmt: skip
    (level,) = report["levels"]
    assert level["errors"] == {"DEADLINE_EXCEEDED": 3} and level["ok"] == 0 and level["error_rate"] == 1.0
    assert level["latency_ms"]["p99"] is None


#: The JSON report's keys. Changing them breaks dashboards and CI scripts that read it: bump results.SCHEMA and
#: update this on purpose.
SCHEMA_KEYS = {
    "": ["command", "git_revision", "levels", "machine", "scenario", "schema", "settings", "slo", "started_at", "surge", "target"],
    "surge": ["git_revision", "version"],
    "target": ["server", "server_version", "url"],
    "machine": ["cpu", "cpu_count", "cpus_usable", "grpcio", "hostname", "numpy", "platform", "python"],
    "settings": ["arrival", "connections", "duration_s", "loop", "processes", "requests", "server_stats", "warmup_s"],
    "scenario": ["requests", "seed", "variants"],
    "scenario.requests[]": ["deadline_ms", "inputs", "model", "outputs", "parameters", "routing_keys", "rows", "version", "weight"],
    "levels[]": ["by_model", "error_rate", "errors", "generator", "histogram_hdr", "infer_per_s", "latency_ms", "load", "ok",
                 "requests", "rows_per_s", "send_lag_ms", "server", "timeline", "window_s"],
    "levels[].load": ["arrival", "concurrency", "mode", "rate"],
    "levels[].latency_ms": ["max", "mean", "min", "p50", "p90", "p99", "p99.9"],
    "levels[].by_model[]": ["latency_ms", "model", "ok", "requested_version", "rows", "served_version"],
    "levels[].timeline[]": ["errors", "max_ms", "ok", "p50_ms", "p99_ms", "t_s"],
    "levels[].server[]": ["execution_count", "fail", "inference_count", "mean_ms", "model", "success", "version"],
    "levels[].server[].mean_ms": ["compute_infer", "compute_input", "compute_output", "queue", "total"],
    "levels[].generator": ["cpu_cores", "processes"],
    "slo": ["checks", "passed", "spec"],
    "slo.checks[]": ["check", "level", "passed", "value"],
}  # fmt: skip


def key_paths(value: object, path: str = "") -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if isinstance(value, dict):
        found[path] = sorted(value)
        for key, item in value.items():
            if key in ("parameters", "errors", "histogram_hdr") or (path == "scenario.requests[]" and key == "inputs"):
                continue  # free-form maps
            found.update(key_paths(item, f"{path}.{key}" if path else key))
    elif isinstance(value, list) and value:
        for item in value:
            found.update(key_paths(item, f"{path}[]"))
    return found


def test_json_schema_is_pinned(server: ServerThread, tmp_path: Path) -> None:
    report = run_json(tmp_path, "mlp", "--url", server.address, "--requests", "50", "--warmup-s", "0", "--server-stats", "--slo", "p99<60s")
    assert report["schema"] == "surge.bench/1"
    found = {path: keys for path, keys in key_paths(report).items() if path in SCHEMA_KEYS or path.count(".") < 2}
    found.pop("levels[].send_lag_ms", None)  # null in closed loop; a latency summary in open loop
    assert found == SCHEMA_KEYS
    assert report["command"][:3] == ["surge", "bench", "mlp"] and report["target"]["server"] == "surge"
    from hdrh.histogram import HdrHistogram

    assert HdrHistogram.decode(report["levels"][0]["histogram_hdr"].encode()).get_total_count() == 50
    assert report["slo"]["passed"] is True


def test_sweep_compare_and_plot(server: ServerThread, tmp_path: Path) -> None:
    common = ["mlp", "--url", server.address, "--concurrency", "1,4", "--duration-s", "1", "--warmup-s", "0.2"]
    first = run_json(tmp_path, *common, name="old.json")
    assert [lv["load"]["concurrency"] for lv in first["levels"]] == [1, 4]
    proc = run_cli(*common, "--compare", str(tmp_path / "old.json"), "--plot", str(tmp_path / "p.png"))
    assert proc.returncode == 0, proc.stderr
    assert "compared with" in proc.stdout
    for key in ("c1", "c4"):
        assert any(line.split()[:2] == [key, "infer/s"] for line in proc.stdout.splitlines()), proc.stdout
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_several_processes_share_the_load(server: ServerThread, tmp_path: Path) -> None:
    report = run_json(tmp_path, "mlp", "--url", server.address, "--requests", "200", "--warmup-s", "0", "--concurrency", "4",
                      "--processes", "2", "--connections", "2", "--server-stats")  # fmt: skip
    (level,) = report["levels"]
    assert level["ok"] == 200 and level["generator"]["processes"] == 2
    assert level["server"][0]["success"] == 200


def test_bench_imports_no_server_module_or_runtime() -> None:
    """The console entry dispatches ``bench`` before the server's CLI does anything: only surge.server (empty) and
    surge.server.cli are imported, and no model runtime, over a whole run (here against nothing: exit 3)."""
    code = """
import sys
from surge.server.cli import main
code = main(["bench", "mlp", "--url", "127.0.0.1:1", "--requests", "1", "--no-progress"])
import surge.clients.loadgen.engine, surge.clients.loadgen.results, surge.clients.loadgen.scenario
bad = sorted(m for m in sys.modules if (m.startswith("surge.server") and m not in ("surge.server", "surge.server.cli"))
             or m.split(".")[0] in ("onnxruntime", "onnx", "torch", "tensorrt", "numba"))
print(code, bad)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "3 []", proc.stdout + proc.stderr


def test_open_loop_drain_cancels_what_is_left(server: ServerThread, tmp_path: Path) -> None:
    """slow_py serves one request per 0.5 s and queues 2: at 10/s most requests are refused (UNAVAILABLE) and
    those still outstanding 0.2 s after the window are cancelled by the generator; every request is counted once."""
    np.save(tmp_path / "delay.npy", np.full((4, 1), 0.5, np.float32))
    report = run_json(tmp_path, "slow_py", "--url", server.address, "--input", f"delay_s={tmp_path / 'delay.npy'}", "--rate", "10",
                      "--arrival", "constant", "--duration-s", "1", "--warmup-s", "0", "--drain-s", "0.2")  # fmt: skip
    (level,) = report["levels"]
    assert level["requests"] == 10 and level["ok"] + sum(level["errors"].values()) == 10
    assert level["errors"].get("UNAVAILABLE", 0) >= 3 and level["errors"].get("CANCELLED", 0) >= 1, level["errors"]
    assert level["ok"] <= 3
