"""A scripted rollout and rollback under continuous load, with not one failed request.

Closed loop, 16 requests in flight from our ``AsyncInferenceClient`` (no retries: any failure would show),
each with its own request id (the routing key). While it runs: pin the model to v1, load v2 (an exact
copy) beside it, shadow it, split 10% -> 50% -> promote to 100%, unload v1; then roll back the other way
(load v1, 50%, promote v1, unload v2); finally shadow a perturbed copy (v3). Checked: zero failed requests;
in the split phases the observed shares match the weights (one chi-square test at 1% over the three split
phases, counting only requests sent after the change was acknowledged and answered before the next one
began; 100% phases must be exact); the shadow agrees on 100%
of compared requests for the copy and on none for the perturbed copy.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import shutil
import time
from pathlib import Path

import numpy as np

from surge.clients import AsyncInferenceClient, SurgeClient
from tests.integration.test_metrics import samples, value
from tests.models import write_add_model

CONCURRENCY = 16
#: Each phase lasts at least MIN_PHASE_S and until MIN_PHASE_REQUESTS were answered in it (at most MAX_PHASE_S):
#: a fast machine spends ~1 s per phase, a loaded one waits for enough requests to test.
MIN_PHASE_S, MAX_PHASE_S, MIN_PHASE_REQUESTS = 1.0, 8.0, 300
#: chi-square critical values at 1% significance, by degrees of freedom
CHI2_1PCT = {1: 6.635, 2: 9.210, 3: 11.345, 4: 13.277, 5: 15.086}


def _config(versions: list[int]) -> str:
    return f"max_batch_size = 8\n[version_policy]\nspecific = {versions}\n"


async def test_rollout_and_rollback_under_load_with_no_failed_request(tmp_path: Path, start_server) -> None:
    root = tmp_path / "repository"
    model = root / "rollout"
    write_add_model(model / "1" / "model.onnx", 1.0)
    (model / "config.toml").write_text(_config([1]))
    server = await asyncio.to_thread(start_server, model_repository=root, model_control_mode="explicit", load_models=("rollout",))
    admin = SurgeClient(server.address)
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    # request ids are the routing keys; a fresh key space per run makes each run an independent draw (with ids
    # 0, 1, 2, ... every run would test nearly the same keys, and an unlucky range would fail every time)
    run = secrets.token_hex(4)
    ids = itertools.count()
    answers: list[tuple[float, float, str]] = []  # (sent, answered, version) per request
    failures: list[BaseException] = []
    stop = asyncio.Event()
    marks: list[tuple[str, float, float]] = []  # (phase, acknowledged, ended)

    async def worker(client: AsyncInferenceClient) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                result = await client.infer("rollout", {"x": x}, request_id=f"{run}-{next(ids)}")
            except Exception as exc:  # noqa: BLE001 - every failure is the test's finding
                failures.append(exc)
                continue
            answers.append((sent, time.monotonic(), result.model_version))

    async def step(name: str, action, *args) -> None:
        await asyncio.to_thread(action, *args)
        start = time.monotonic()
        await asyncio.sleep(MIN_PHASE_S)
        while time.monotonic() - start < MAX_PHASE_S and sum(sent >= start for sent, _, _ in answers[-MIN_PHASE_REQUESTS:]) < MIN_PHASE_REQUESTS:
            await asyncio.sleep(0.1)
        marks.append((name, start, time.monotonic()))

    async def reload(versions: list[int]) -> None:
        (model / "config.toml").write_text(_config(versions))
        await loader.load_model("rollout")

    async with AsyncInferenceClient(server.address, timeout_s=30.0, retries=0) as client, AsyncInferenceClient(server.address, timeout_s=60.0) as loader:
        workers = [asyncio.create_task(worker(client)) for _ in range(CONCURRENCY)]
        try:
            await step("v1 pinned", admin.set_weights, "rollout", {1: 1})
            shutil.copytree(model / "1", model / "2")  # v2: an exact copy of v1
            await reload([1, 2])
            await step("v2 loaded, v1 pinned", lambda: None)
            await step("v2 shadowed", admin.set_shadow, "rollout", 2)
            await step("10%", admin.set_weights, "rollout", {1: 0.9, 2: 0.1})
            await step("50%", admin.set_weights, "rollout", {1: 0.5, 2: 0.5})
            await step("v2 promoted", admin.promote, "rollout", 2)
            await reload([2])
            await step("v1 unloaded", lambda: None)
            # the rollback, the other way
            await reload([1, 2])
            await step("back to 50%", admin.set_weights, "rollout", {1: 0.5, 2: 0.5})
            await step("v1 promoted", admin.promote, "rollout", 1)
            await reload([1])
            await step("v2 unloaded", lambda: None)
            # a perturbed copy as the shadow: agreement drops
            write_add_model(model / "3" / "model.onnx", 1.01)
            await reload([1, 3])
            await step("perturbed v3 shadowed", admin.set_shadow, "rollout", 3)
        finally:
            stop.set()
            await asyncio.gather(*workers)
    admin.close()

    assert failures == [], f"{len(failures)} failed requests, first: {failures[0]!r}"
    expected = {
        "v1 pinned": {"1": 1.0}, "v2 loaded, v1 pinned": {"1": 1.0}, "v2 shadowed": {"1": 1.0}, "10%": {"1": 0.9, "2": 0.1},
        "50%": {"1": 0.5, "2": 0.5}, "v2 promoted": {"2": 1.0}, "v1 unloaded": {"2": 1.0}, "back to 50%": {"1": 0.5, "2": 0.5},
        "v1 promoted": {"1": 1.0}, "v2 unloaded": {"1": 1.0}, "perturbed v3 shadowed": {"1": 1.0},
    }
    report = []
    chi2_total, dof = 0.0, 0
    for name, start, end in marks:
        counts: dict[str, int] = {}
        for sent, answered, version in answers:
            if sent >= start and answered <= end:
                counts[version] = counts.get(version, 0) + 1
        total = sum(counts.values())
        shares = expected[name]
        assert total >= 50, f"phase {name!r}: only {total} requests in {end - start:.1f} s"
        assert set(counts) <= set(shares), f"phase {name!r}: versions {counts} but routes {shares}"
        chi2 = sum((counts.get(v, 0) - total * p) ** 2 / (total * p) for v, p in shares.items())
        report.append(f"{name}: {counts} chi2={chi2:.2f}")
        if len(shares) > 1:
            chi2_total, dof = chi2_total + chi2, dof + len(shares) - 1
    # one test at 1% over every split phase (a sum of independent chi-square statistics is chi-square with the
    # summed degrees of freedom), so the run as a whole has a 1% chance of failing when the router is right
    assert chi2_total < CHI2_1PCT[dof], f"shares do not match the weights: chi2 {chi2_total:.2f} on {dof} df (keys {run}-N)\n" + "\n".join(report)
    found = samples(server)
    copy = {"model": "rollout", "primary": "1", "shadow": "2"}
    compared = value(found, "surge_shadow_requests_total", **copy, outcome="compared")
    assert compared >= 50, report  # the shadowed phases ran
    assert value(found, "surge_shadow_agreed_total", **copy) == compared  # an identical copy: 100% agreement
    perturbed = {"model": "rollout", "primary": "1", "shadow": "3"}
    compared_3 = value(found, "surge_shadow_requests_total", **perturbed, outcome="compared")
    assert compared_3 >= 20
    assert value(found, "surge_shadow_agreed_total", **perturbed) / compared_3 < 0.5  # measurably lower: here none agree
    assert value(found, "surge_shadow_max_abs_difference", **perturbed, output="y") > 0.005
