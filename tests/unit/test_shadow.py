"""shadow.compare: exact for integer and class outputs, allclose for floats, argmax for score vectors, differences;
and the sender's budget (drops when saturated) with a real event loop and a version-like object that sleeps."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from surge.server.config import ShadowConfig
from surge.server.traffic.shadow import ShadowSender, compare


@pytest.mark.parametrize(
    ("primary", "shadow", "agree", "argmax", "max_abs"),
    [
        (np.array([[1, 2]], np.int64), np.array([[1, 2]], np.int64), True, None, 0.0),
        (np.array([[1, 2]], np.int64), np.array([[1, 3]], np.int64), False, None, 1.0),
        (np.array([True, False]), np.array([True, True]), False, None, 1.0),
        (np.array([[0.1, 0.9]], np.float32), np.array([[0.1, 0.9 + 1e-7]], np.float32), True, True, pytest.approx(1.2e-7, abs=1e-7)),
        (np.array([[0.1, 0.9]], np.float32), np.array([[0.2, 0.8]], np.float32), False, True, pytest.approx(0.1)),
        (np.array([[0.6, 0.4]], np.float32), np.array([[0.4, 0.6]], np.float32), False, False, pytest.approx(0.2)),
        (np.array([1.0, np.nan]), np.array([1.0, np.nan]), True, None, 0.0),  # NaN where both have NaN agrees
        (np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0]), False, None, None),  # shape mismatch
        (np.array([b"a", b"b"], dtype=object), np.array([b"a", b"b"], dtype=object), True, None, None),
        (np.array([b"a", b"b"], dtype=object), np.array([b"a", b"c"], dtype=object), False, None, None),
    ],
)
def test_compare_table(primary: np.ndarray, shadow: np.ndarray, agree: bool, argmax: bool | None, max_abs: float | None) -> None:
    result = compare({"out": primary}, {"out": shadow}, rtol=1e-5, atol=1e-6).outputs["out"]
    assert result.agree is agree
    assert result.argmax_agree is argmax
    assert result.max_abs == max_abs


def test_request_agrees_only_when_every_output_does() -> None:
    same = np.ones((2, 3), np.float32)
    assert compare({"a": same, "b": same}, {"a": same, "b": same}, rtol=0, atol=0).agree
    assert not compare({"a": same, "b": same}, {"a": same, "b": same + 1}, rtol=0, atol=0).agree
    assert not compare({"a": same}, {}, rtol=0, atol=0).agree  # the shadow lacks an output


def test_tolerances_are_honoured() -> None:
    p, s = np.array([1.0]), np.array([1.01])
    assert not compare({"y": p}, {"y": s}, rtol=1e-5, atol=1e-6).agree
    assert compare({"y": p}, {"y": s}, rtol=0.02, atol=0.0).agree
    assert compare({"y": p}, {"y": s}, rtol=0.0, atol=0.02).agree


class SleepyVersion:
    """A version-like object whose execute sleeps: what the sender calls on a real ModelVersion."""

    version_str = "2"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.running = 0
        self.peak = 0

    async def execute(self, inputs, rows, output_names, stamps, deadline):
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(self.delay_s)
        self.running -= 1
        return {"y": inputs["x"]}


async def test_sender_budget_bounds_concurrency_and_queue_and_counts_drops() -> None:
    version = SleepyVersion(0.05)
    with ThreadPoolExecutor(1) as pool:
        sender = ShadowSender("m", version, ShadowConfig(version=2, max_concurrency=2, max_queue=3), pool)
        x = {"x": np.ones((1, 2), np.float32)}
        jobs = [sender.offer("1", x, 1, ("y",), f"r{i}") for i in range(10)]
        assert sum(j is not None for j in jobs) == 5  # 2 running + 3 waiting
        assert sender.pending() == 5
        for job in jobs:
            if job is not None:
                job.primary_done({"y": np.ones((1, 2), np.float32)}, 1000)
        for _ in range(200):
            if sender.pending() == 0:
                break
            await asyncio.sleep(0.01)
        pool.submit(lambda: None).result()  # the comparisons ran
        stats = sender.pairs[("1", "2")]
        assert version.peak == 2
        assert stats.outcomes == {"compared": 5, "dropped": 5, "shadow_failed": 0, "primary_failed": 0, "compare_failed": 0}
        assert stats.agreed == 5


async def test_a_failed_primary_is_not_compared() -> None:
    with ThreadPoolExecutor(1) as pool:
        sender = ShadowSender("m", SleepyVersion(0.0), ShadowConfig(version=2), pool)
        job = sender.offer("1", {"x": np.ones((1, 2), np.float32)}, 1, ("y",), "r")
        assert job is not None
        job.primary_done(None)
        for _ in range(100):
            if sender.pending() == 0:
                break
            await asyncio.sleep(0.01)
        assert sender.pairs[("1", "2")].outcomes["primary_failed"] == 1
        assert sender.pairs[("1", "2")].outcomes["compared"] == 0


class _Uncomparable:
    """An output element whose comparison raises (what a broken custom BYTES payload can do)."""

    def __eq__(self, other: object) -> bool:
        raise TypeError("cannot compare")

    __hash__ = object.__hash__


async def test_a_comparison_that_raises_is_counted_as_compare_failed(caplog: pytest.LogCaptureFixture) -> None:
    with ThreadPoolExecutor(1) as pool:
        sender = ShadowSender("m", SleepyVersion(0.0), ShadowConfig(version=2), pool)
        odd = np.array([_Uncomparable()], dtype=object)
        job = sender.offer("1", {"x": odd}, 1, ("y",), "r")
        assert job is not None
        job.primary_done({"y": np.array([_Uncomparable()], dtype=object)}, 1000)
        for _ in range(100):
            if sender.pending() == 0:
                break
            await asyncio.sleep(0.01)
        outcomes = sender.pairs[("1", "2")].outcomes
        assert outcomes["compare_failed"] == 1 and outcomes["compared"] == 0
    assert "shadow comparison of m failed" in caplog.text


async def test_large_answers_are_compared_in_the_thread_small_ones_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from surge.server.traffic import shadow as shadow_module

    seen: list[str] = []
    real_compare = shadow_module.compare

    def observed(primary, shadow, *, rtol, atol):  # the real comparison, noting which thread ran it
        seen.append(threading.current_thread().name)
        return real_compare(primary, shadow, rtol=rtol, atol=atol)

    monkeypatch.setattr(shadow_module, "compare", observed)
    with ThreadPoolExecutor(1, thread_name_prefix="compare") as pool:
        sender = ShadowSender("m", SleepyVersion(0.0), ShadowConfig(version=2), pool)
        for cols in (4, 5000):
            x = {"x": np.ones((1, cols), np.float32)}
            job = sender.offer("1", x, 1, ("y",), "r")
            assert job is not None
            job.primary_done({"y": x["x"].copy()}, 1)
            for _ in range(200):
                if sender.pending() == 0:
                    break
                await asyncio.sleep(0.01)
        assert sender.pairs[("1", "2")].agreed == 2
    assert seen[0] == threading.current_thread().name and seen[1].startswith("compare")
