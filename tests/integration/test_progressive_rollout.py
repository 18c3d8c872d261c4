"""Progressive rollouts run by the server, over the wire, under steady load.

A closed loop of ``CONCURRENCY`` requests from our ``AsyncInferenceClient`` (no retries, each request its own
routing key) runs through every test. The model is a Python model ``y = x + 1``; version 1 serves, version 2
is a good copy, a slow one (sleeps), a wrong one (``y = x + 2``) or a failing one (raises when ``x[0] > 1``,
about 16% of the requests). Windows are seconds. Checked: a good version goes through every step to 100%;
a bad one is rolled back within one window of its first step, with no failed request except those the bad
version itself answered; a restarted server resumes at the same step; pause, resume, abort and promote work;
the state, the audit file and the metrics show each decision.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from surge.clients import AsyncInferenceClient, InferenceServerError, SurgeClient
from tests.integration.test_metrics import samples, value
from tests.models import ROLLOUT_VERSIONS, write_rollout_repository

CONCURRENCY = 8
WINDOW_S = 2.0
MIN_SAMPLES = 40

class Load:
    """A closed loop of requests; records (sent, answered, version) and every failure with its time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.answers: list[tuple[float, float, str]] = []
        self.failures: list[tuple[float, BaseException]] = []
        self._stop = asyncio.Event()
        self._run = secrets.token_hex(4)
        self._ids = itertools.count()
        self._rng = np.random.default_rng(0)
        self._tasks: list[asyncio.Task[None]] = []
        self._client: AsyncInferenceClient | None = None

    async def __aenter__(self) -> Load:
        self._client = AsyncInferenceClient(self.address, timeout_s=30.0, retries=0)
        await self._client.__aenter__()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(CONCURRENCY)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        assert self._client is not None
        await self._client.__aexit__(None, None, None)

    async def _worker(self) -> None:
        assert self._client is not None
        while not self._stop.is_set():
            x = self._rng.standard_normal((1, 4)).astype(np.float32)
            sent = time.monotonic()
            try:
                result = await self._client.infer("m", {"x": x}, request_id=f"{self._run}-{next(self._ids)}")
            except InferenceServerError as exc:
                self.failures.append((time.monotonic(), exc))
                continue
            self.answers.append((sent, time.monotonic(), result.model_version))


async def _until(admin: SurgeClient, predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        r = await asyncio.to_thread(admin.rollout, "m")
        if predicate(r):
            return r
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s; rollout now: state {r.state}, step {r.step}, status {r.status!r}, reason {r.reason!r}")
        await asyncio.sleep(0.05)


def _repository(root: Path, kind: str, extra_config: str = "") -> Path:
    return write_rollout_repository(root, kind, extra_config)


def _audit(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / ".surge" / "rollout-audit.jsonl").read_text().splitlines()]


async def _serve(start_server, root: Path):
    return await asyncio.to_thread(start_server, model_repository=root)


async def test_a_good_version_goes_from_shadow_to_100_percent_through_every_step(tmp_path: Path, start_server) -> None:
    root = _repository(tmp_path / "repository", "good")
    server = await _serve(start_server, root)
    admin = SurgeClient(server.address)
    async with Load(server.address) as load:
        r = await asyncio.to_thread(admin.start_rollout, "m", 2, steps="shadow,10,50,100", window=f"{WINDOW_S}s",
                                    gates=["p99<3x", "errors<1%", "agreement>99%", "max_diff<1e-6"], min_samples=2 * MIN_SAMPLES)
        assert (r.state, r.from_version, r.to_version, r.step) == ("running", 1, 2, 0)
        routes = await asyncio.to_thread(admin.get_routes, "m")
        assert routes.shadow.version == 2 and [(w.version, w.weight) for w in routes.weights] == [(1, 1.0)]
        seen_steps: set[int] = set()
        deadline = time.monotonic() + 90
        while (r := await asyncio.to_thread(admin.rollout, "m")).state == "running" and time.monotonic() < deadline:
            seen_steps.add(r.step)
            await asyncio.sleep(0.1)
        assert r.state == "completed", (r.state, r.status, r.reason)
        completed_at = time.monotonic()
        await asyncio.sleep(0.5)
    assert not load.failures, load.failures[:3]
    assert seen_steps == {0, 1, 2, 3}
    routes = admin.get_routes("m")
    assert [(w.version, w.weight) for w in routes.weights] == [(2, 1.0)] and not routes.shadow.version
    assert {v for sent, _, v in load.answers if sent > completed_at} == {"2"}
    decisions = [e["decision"] for e in _audit(root)]
    assert decisions == ["start", "advance", "advance", "advance", "complete"]
    assert all("every gate holds" in e["reasons"] for e in _audit(root)[1:])
    text = samples(server)
    assert value(text, "surge_rollout_decisions_total", model="m", decision="advance") == 3
    assert value(text, "surge_rollout_new_version_share", model="m", to_version="2") == 1.0
    assert value(text, "surge_rollout_state", model="m", to_version="2", state="completed") == 1.0
    assert value(text, "surge_rollout_step", model="m", from_version="1", to_version="2") == 4
    assert value(text, "surge_rollout_gate_value", model="m", gate="errors<1%") == 0.0
    assert value(text, "surge_rollout_gate_holds", model="m", gate="errors<1%") == 1.0
    admin.close()


@pytest.mark.parametrize(("kind", "steps", "gates"), [
    ("slow", "shadow,10,50,100", ["p99<1.5x", "errors<1%", "agreement>99%"]),
    ("wrong", "shadow,10,50,100", ["p99<3x", "errors<1%", "agreement>99%"]),
    ("failing", "20,50,100", ["p99<3x", "errors<1%"]),
])
async def test_a_bad_version_is_rolled_back_within_one_window(tmp_path: Path, start_server, kind: str, steps: str, gates: list[str]) -> None:
    assert kind in ROLLOUT_VERSIONS
    root = _repository(tmp_path / "repository", kind)
    server = await _serve(start_server, root)
    admin = SurgeClient(server.address)
    async with Load(server.address) as load:
        await asyncio.sleep(0.5)  # the current version's figures
        started = time.monotonic()
        await asyncio.to_thread(admin.start_rollout, "m", 2, steps=steps, window=f"{WINDOW_S}s", gates=gates, min_samples=MIN_SAMPLES)
        r = await _until(admin, lambda r: r.state != "running", 30, f"the {kind} version rolled back")
        decided = time.monotonic()
        await asyncio.sleep(1.0)  # load after the rollback
    assert r.state == "rolled_back" and r.step == 0, (r.state, r.step, r.reason)
    # within one window of the first step (plus the first look, which only marks the window's start, and a tick)
    assert decided - started < WINDOW_S + 1.5, (decided - started, r.reason)
    expected = {"slow": "p99<1.5x breached", "wrong": "agreement>99% breached", "failing": "errors<1% breached"}[kind]
    assert expected in r.reason
    routes = admin.get_routes("m")
    assert [(w.version, w.weight) for w in routes.weights] == [(1, 1.0)] and not routes.shadow.version
    assert {v for sent, _, v in load.answers if sent > decided + 0.2} == {"1"}
    if kind == "failing":  # its own share failed (each failure is version 2's, none after the rollback)...
        assert load.failures and all("version 2 failed to execute" in str(exc) for _, exc in load.failures)
        assert max(t for t, _ in load.failures) < decided + 0.2
        answered_by_2 = sum(v == "2" for _, _, v in load.answers)
        assert len(load.failures) < answered_by_2  # ...about 16% of what it took, never another version's requests
    else:
        assert not load.failures, load.failures[:3]  # shadow steps: the new version answered nobody
    audit = _audit(root)
    assert [e["decision"] for e in audit] == ["start", "rollback"]
    assert any(g["state"] == "breached" for g in audit[-1]["gates"])
    text = samples(server)
    assert value(text, "surge_rollout_decisions_total", model="m", decision="rollback") == 1
    admin.close()


async def test_a_restarted_server_resumes_the_rollout_at_the_same_step(tmp_path: Path, start_server) -> None:
    root = _repository(tmp_path / "repository", "good")
    server = await _serve(start_server, root)
    admin = SurgeClient(server.address)
    async with Load(server.address) as load:
        await asyncio.to_thread(admin.start_rollout, "m", 2, steps="shadow,30,100", window=f"{WINDOW_S}s",
                                gates=["errors<1%", "agreement>99%"], min_samples=MIN_SAMPLES)
        await _until(admin, lambda r: r.step == 1, 30, "step 2 (30%)")
    assert not load.failures
    admin.close()
    await asyncio.to_thread(server.stop)
    server = await _serve(start_server, root)
    admin = SurgeClient(server.address)
    r = admin.rollout("m")
    assert (r.state, r.step, r.steps[r.step]) == ("running", 1, "30")
    routes = admin.get_routes("m")
    assert dict((w.version, w.weight) for w in routes.weights) == {1: 70.0, 2: 30.0}
    async with Load(server.address) as load:
        r = await _until(admin, lambda r: r.state != "running", 40, "completion after the restart")
    assert r.state == "completed" and not load.failures
    assert [e["decision"] for e in _audit(root)] == ["start", "advance", "resume", "advance", "complete"]
    admin.close()


async def test_pause_resume_abort_and_promote(tmp_path: Path, start_server) -> None:
    root = _repository(tmp_path / "repository", "good")
    server = await _serve(start_server, root)
    admin = SurgeClient(server.address)
    async with Load(server.address) as load:
        await asyncio.to_thread(admin.start_rollout, "m", 2, steps="10,50,100", window=f"{WINDOW_S}s", gates=["errors<1%"], min_samples=MIN_SAMPLES)
        r = await asyncio.to_thread(admin.pause_rollout, "m")
        assert r.state == "paused"
        await asyncio.sleep(WINDOW_S * 2)
        r = admin.rollout("m")
        assert (r.state, r.step) == ("paused", 0)  # a paused rollout does not advance
        with pytest.raises(InferenceServerError, match="abort it or let it finish"):
            admin.start_rollout("m", 2, steps="100", window="1s")
        r = await asyncio.to_thread(admin.resume_rollout, "m")
        assert r.state == "running"
        await _until(admin, lambda r: r.step == 1, 30, "step 2 after resume")
        r = await asyncio.to_thread(admin.abort_rollout, "m")
        assert r.state == "aborted"
        routes = admin.get_routes("m")
        assert [(w.version, w.weight) for w in routes.weights] == [(1, 1.0)]
        aborted = time.monotonic()
        await asyncio.sleep(0.5)
        assert {v for sent, _, v in load.answers if sent > aborted + 0.1} == {"1"}
        # a new rollout, promoted by hand at its first step
        await asyncio.to_thread(admin.start_rollout, "m", 2, steps="shadow,50,100", window="60s", gates=["errors<1%"])
        r = await asyncio.to_thread(admin.promote_rollout, "m")
        assert r.state == "completed"
        promoted = time.monotonic()
        await asyncio.sleep(0.5)
    assert {v for sent, _, v in load.answers if sent > promoted + 0.1} == {"2"}
    assert not load.failures
    assert [e["decision"] for e in _audit(root)] == ["start", "pause", "resume", "advance", "abort", "start", "promote"]
    text = samples(server)  # the metrics show the latest rollout
    assert value(text, "surge_rollout_state", model="m", to_version="2", state="completed") == 1.0
    assert value(text, "surge_rollout_state", model="m", to_version="2", state="aborted") == 0.0
    assert value(text, "surge_rollout_decisions_total", model="m", decision="abort") == 1
    with pytest.raises(InferenceServerError, match="no running or paused rollout"):
        admin.pause_rollout("m")
    with pytest.raises(InferenceServerError, match="not serving"):
        admin.start_rollout("m", 7, steps="100", window="1s")
    with pytest.raises(InferenceServerError, match="unknown metric"):
        admin.start_rollout("m", 1, steps="100", window="1s", gates=["latency<2x"])
    for steps, window, message in ((["shadow"] * 100, "1s", "at most 32"), ("50,25,100", "1s", "rise strictly"), ("100", "forever", "duration")):
        with pytest.raises(InferenceServerError, match=message) as info:
            admin.start_rollout("m", 2, steps=steps, window=window)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    admin.close()


async def test_config_toml_starts_a_rollout(tmp_path: Path, start_server) -> None:
    root = _repository(tmp_path / "repository", "good", f'\n[rollout]\nto_version = 2\nsteps = ["shadow", 100]\nwindow = "{WINDOW_S}s"\n'
                                                         f'gates = ["errors<1%", "agreement>99%"]\nmin_samples = {MIN_SAMPLES}\n')
    server = await _serve(start_server, root)
    admin = SurgeClient(server.address)
    async with Load(server.address) as load:
        r = await _until(admin, lambda r: r.state != "running", 40, "the config's rollout completed")
    assert (r.state, r.source) == ("completed", "config") and not load.failures
    admin.close()


async def test_the_new_version_stopping_to_serve_rolls_back_at_once(tmp_path: Path, start_server) -> None:
    root = _repository(tmp_path / "repository", "good")
    server = await asyncio.to_thread(start_server, model_repository=root, model_control_mode="explicit", load_models=("m",))
    admin = SurgeClient(server.address)
    async with Load(server.address) as load, AsyncInferenceClient(server.address, timeout_s=60.0) as loader:
        await asyncio.to_thread(admin.start_rollout, "m", 2, steps="30,100", window="60s", gates=["errors<1%"])
        await asyncio.sleep(0.5)
        config = root / "m" / "config.toml"
        config.write_text(config.read_text().replace("specific = [1, 2]", "specific = [1]"))
        await loader.load_model("m")  # version 2 is drained and unloaded
        unloaded = time.monotonic()
        r = admin.rollout("m")
        await asyncio.sleep(0.5)
    assert r.state == "rolled_back" and "version 2 stopped serving" in r.reason
    assert not load.failures, load.failures[:3]  # in-flight requests of version 2 finished; new ones went to version 1
    assert {v for sent, _, v in load.answers if sent > unloaded} == {"1"}
    admin.close()


async def test_admin_route_changes_survive_a_restart(tmp_path: Path, start_server) -> None:
    root = _repository(tmp_path / "repository", "good")
    server = await _serve(start_server, root)
    with SurgeClient(server.address) as admin:
        admin.set_weights("m", {1: 80, 2: 20})
        admin.set_shadow("m", 2, fraction=0.5)
    saved = json.loads((root / ".surge" / "routes.json").read_text())
    assert saved["m"] == {"weights": [[1, 80.0], [2, 20.0]], "shadow_version": 2, "shadow_fraction": 0.5}
    await asyncio.to_thread(server.stop)
    server = await _serve(start_server, root)
    with SurgeClient(server.address) as admin:
        routes = admin.get_routes("m")
        assert routes.source == "admin" and dict((w.version, w.weight) for w in routes.weights) == {1: 80.0, 2: 20.0}
        assert (routes.shadow.version, routes.shadow.fraction) == (2, 0.5)
        admin.reset_routes("m")
    await asyncio.to_thread(server.stop)
    server = await _serve(start_server, root)
    with SurgeClient(server.address) as admin:
        assert admin.get_routes("m").source == "config"


async def test_rollout_calls_need_the_admin_scope_and_the_cli_drives_them(tmp_path: Path, start_server, capsys) -> None:
    from surge.server.cli import main

    root = _repository(tmp_path / "repository", "good")
    tokens = tmp_path / "tokens"
    tokens.write_text("inference inference-token-0123456789\nadmin admin-token-0123456789abcdef\n")
    server = await asyncio.to_thread(start_server, model_repository=root, auth_tokens_file=tokens)
    with SurgeClient(server.address, metadata={"authorization": "Bearer inference-token-0123456789"}) as client:
        with pytest.raises(InferenceServerError, match="needs the 'admin' scope"):
            client.start_rollout("m", 2, steps="100", window="1s")
    url = ["--url", server.address, "--token", "admin-token-0123456789abcdef"]
    code = await asyncio.to_thread(main, ["rollout", "start", "m", "--to", "2", "--steps", "shadow,50,100", "--window", "1m", "--gate", "p99<1.2x",
                                         "--gate", "errors<0.5%", "--gate", "agreement>99%", *url])
    out = capsys.readouterr().out
    assert code == 0 and "rollout v1 -> v2 RUNNING (admin)" in out and "[shadow] -> 50 -> 100" in out
    for action, state in (("pause", "PAUSED"), ("resume", "RUNNING"), ("status", "RUNNING"), ("abort", "ABORTED")):
        assert await asyncio.to_thread(main, ["rollout", action, "m", *url]) == 0
        assert f"v1 -> v2 {state}" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["rollout", "pause", "m", *url]) == 1
    assert "no running or paused rollout" in capsys.readouterr().err


async def test_one_controller_for_the_whole_server_under_workers(tmp_path: Path) -> None:
    """Two worker processes: the rollout calls land on either, the first worker decides, every worker follows each step."""
    from tests.process import SurgeProcess

    root = _repository(tmp_path / "repository", "good")
    server = await asyncio.to_thread(SurgeProcess(root, tmp_path / "server", "--workers", "2").start)
    try:
        admin = SurgeClient(server.address)
        async with Load(server.address) as load:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(admin.start_rollout, "m", 2, steps="shadow,50,100", window=f"{WINDOW_S}s",
                                    gates=["errors<1%", "agreement>99%"], min_samples=MIN_SAMPLES)
            states = [(await asyncio.to_thread(admin.rollout, "m")).state for _ in range(6)]  # each call may land on either worker
            assert set(states) <= {"running", "completed"}
            r = await _until(admin, lambda r: r.state != "running", 60, "completion under --workers")
            completed = time.monotonic()
            await asyncio.sleep(1.0)
        assert r.state == "completed", r.reason
        assert not load.failures, load.failures[:3]
        assert {v for sent, _, v in load.answers if sent > completed + 0.3} == {"2"}  # both workers route to v2
        assert [e["decision"] for e in _audit(root)] == ["start", "advance", "advance", "complete"]
        admin.close()
    finally:
        await asyncio.to_thread(server.stop)
