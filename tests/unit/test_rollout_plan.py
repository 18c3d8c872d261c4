"""Rollout plans and gates (``traffic/rollout_plan.py``): parsing, and each gate's state on hand-built figures."""

from __future__ import annotations

import pytest

from surge.server.traffic.ab import Variant
from surge.server.traffic.rollout_plan import Figures, Plan, check_gates, parse_duration, parse_gate, parse_steps, verdict

LES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, float("inf")]


def _variant(version: str, requests: int = 0, errors: int = 0, latency: list[int] | None = None, **kw) -> Variant:
    v = Variant(version, requests=requests, errors=errors, **kw)
    if latency is not None:
        v.latency_les, v.latency_counts = list(LES), list(latency)
    return v


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300.0), ("30s", 30.0), ("2", 2.0), ("500ms", 0.5), ("1h", 3600.0), ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", "0", "m", "8d", "9" * 400, "100000h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_steps() -> None:
    assert parse_steps("shadow,5,25,50,100") == ("shadow", "5", "25", "50", "100")
    assert parse_steps(["10%", "100"]) == ("10", "100")
    assert parse_steps("100") == ("100",)


@pytest.mark.parametrize(("steps", "message"), [
    ("5,shadow,100", "only be the first"), ("5,5,100", "rise strictly"), ("50,25,100", "rise strictly"), ("shadow,50", "last step must be 100"),
    ("", "last step must be 100"), ("shadow,abc,100", "neither"), ("0,100", "rise strictly"), ("50,150", "rise strictly"),
    (",".join(str(i) for i in range(1, 101)), "at most 32"),
])
def test_bad_steps(steps: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_steps(steps)


@pytest.mark.parametrize(("text", "metric", "op", "bound", "relative"), [
    ("p99<1.2x", "p99", "<", 1.2, True), ("p99<250ms", "p99", "<", 0.25, False), ("errors<0.5%", "errors", "<", 0.005, False),
    ("agreement>99%", "agreement", ">", 0.99, False), ("max_diff<1e-3", "max_diff", "<", 1e-3, False), ("psi < 0.2", "psi", "<", 0.2, False),
    ("accuracy>=0.98x", "accuracy", ">=", 0.98, True), ("mae<1.1x", "mae", "<", 1.1, True), ("errors<2x", "errors", "<", 2.0, True),
])
def test_gates(text: str, metric: str, op: str, bound: float, relative: bool) -> None:
    g = parse_gate(text)
    assert (g.metric, g.op, g.relative) == (metric, op, relative)
    assert g.bound == pytest.approx(bound)


@pytest.mark.parametrize(("text", "message"), [
    ("latency<2x", "unknown metric"), ("p99>1.2x", "must stay below"), ("agreement<99%", "must stay above"), ("p99<5", "give p99 a unit"),
    ("errors<5ms", "not a duration"), ("psi<20%", "not a ratio"), ("errors<150%", "at most 100%"), ("p99", "expected METRIC"),
    ("errors<" + "1" * 100 + "%", "expected METRIC"),
])
def test_bad_gates(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_gate(text)


def test_plan_round_trips_through_json() -> None:
    plan = Plan("m", 1, 2, parse_steps("shadow,50,100"), 5.0, (parse_gate("p99<1.2x"), parse_gate("errors<1%")), 50, 0.05)
    assert Plan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="two different versions"):
        Plan("m", 2, 2, ("100",), 5.0, ())
    with pytest.raises(ValueError, match="at most 32 gates"):
        Plan("m", 1, 2, ("100",), 5.0, (parse_gate("errors<1%"),) * 33)


def _check(gate: str, fig: Figures, step: str = "10", min_samples: int = 100) -> tuple[str, str]:
    (result,) = check_gates([parse_gate(gate)], step, fig, min_samples=min_samples, alpha=0.01)
    return result.state, result.detail


def test_error_gate_waits_holds_breaches_and_is_unsure() -> None:
    base = _variant("1", 1000, 0)
    assert _check("errors<1%", Figures(base, _variant("2", 50, 0)))[0] == "waiting"
    assert _check("errors<1%", Figures(base, _variant("2", 500, 2)))[0] == "holds"
    assert _check("errors<1%", Figures(base, _variant("2", 50, 10)))[0] == "waiting"  # a breach needs min_samples too
    state, detail = _check("errors<1%", Figures(base, _variant("2", 100, 20)))
    assert state == "breached" and "p = " in detail
    assert _check("errors<1%", Figures(base, _variant("2", 200, 3)))[0] == "unsure"  # 1.5%: beyond the bound, not significant
    assert _check("errors<2x", Figures(_variant("1", 1000, 10), _variant("2", 1000, 60)))[0] == "breached"
    assert _check("errors<2x", Figures(_variant("1", 1000, 10), _variant("2", 1000, 12)))[0] == "holds"


def test_latency_gates() -> None:
    fast = [0, 900, 100, 0, 0, 0, 0]
    slow = [0, 0, 0, 0, 50, 950, 0]
    base = _variant("1", 1000, latency=fast)
    assert _check("p99<1.5x", Figures(base, _variant("2", 1000, latency=fast)))[0] == "holds"
    state, detail = _check("p99<1.5x", Figures(base, _variant("2", 1000, latency=slow)))
    assert state == "breached" and "x the current" in detail
    assert _check("p99<10ms", Figures(base, _variant("2", 1000, latency=slow)))[0] == "breached"
    assert _check("p99<10ms", Figures(base, _variant("2", 1000, latency=fast)))[0] == "holds"
    assert _check("p99<1.5x", Figures(_variant("1"), _variant("2", 1000, latency=fast)))[0] == "waiting"  # no figure of the current version
    assert _check("p99<1.5x", Figures(base, _variant("2", 1000, latency=slow)), step="100")[0] == "n/a"  # nothing to compare with at 100%
    assert _check("p99<10ms", Figures(base, _variant("2", 1000, latency=slow)), step="100")[0] == "breached"


def test_shadow_gates_only_in_shadow_steps() -> None:
    fig = Figures(_variant("1", 500), _variant("2", 500), shadow_compared=500, shadow_agreed=0, max_diff=1.0)
    assert _check("agreement>99%", fig, step="10")[0] == "n/a"
    assert _check("agreement>99%", fig, step="shadow")[0] == "breached"
    assert _check("max_diff<1e-3", fig, step="shadow")[0] == "breached"
    good = Figures(_variant("1", 500), _variant("2", 500), shadow_compared=500, shadow_agreed=500, max_diff=0.0)
    assert _check("agreement>99%", good, step="shadow")[0] == "holds"
    assert _check("max_diff<1e-3", good, step="shadow")[0] == "holds"
    assert _check("accuracy>0.98x", good, step="shadow")[0] == "n/a"


def test_quality_and_drift_gates() -> None:
    base = _variant("1", 1000, labelled=1000, correct=900)
    assert _check("accuracy>0.98x", Figures(base, _variant("2", 1000, labelled=1000, correct=700)))[0] == "breached"
    assert _check("accuracy>0.98x", Figures(base, _variant("2", 1000, labelled=1000, correct=895)))[0] == "holds"
    assert _check("accuracy>0.98x", Figures(base, _variant("2", 1000, labelled=20, correct=19)))[0] == "waiting"
    assert _check("psi<0.2", Figures(base, _variant("2", 100), psi=0.5, drift_windows=1))[0] == "breached"
    assert _check("psi<0.2", Figures(base, _variant("2", 100), psi=0.05, drift_windows=1))[0] == "holds"
    assert _check("psi<0.2", Figures(base, _variant("2", 100), psi=None))[0] == "waiting"


def test_verdict() -> None:
    fig = Figures(_variant("1", 1000), _variant("2", 1000, 0), shadow_compared=0)
    gates = [parse_gate("errors<1%"), parse_gate("agreement>99%")]
    decision, reasons = verdict(check_gates(gates, "10", fig, min_samples=100, alpha=0.01))
    assert decision == "hold" and "every gate holds" in reasons
    decision, reasons = verdict(check_gates(gates, "shadow", fig, min_samples=100, alpha=0.01))
    assert decision == "waiting" and reasons.startswith("waiting for data")
    bad = Figures(_variant("1", 1000), _variant("2", 1000, 100))
    decision, reasons = verdict(check_gates(gates, "10", bad, min_samples=100, alpha=0.01))
    assert decision == "breach" and "errors<1% breached" in reasons


def test_config_rollout_table() -> None:
    from surge.server.config import ConfigError, parse_model_config

    config = parse_model_config("m", {"rollout": {"to_version": 3, "steps": ["shadow", 5, 100], "window": "90s", "gates": ["p99<1.2x", "errors<0.5%"]}})
    assert config.rollout is not None
    assert (config.rollout.to_version, config.rollout.steps, config.rollout.window_s) == (3, ("shadow", "5", "100"), 90.0)
    assert (config.rollout.gates, config.rollout.min_samples, config.rollout.alpha) == (("p99<1.2x", "errors<0.5%"), 100, 0.01)
    assert parse_model_config("m", {}).rollout is None
    for table, message in (
        ({}, "rollout.to_version: required"), ({"to_version": 2, "steps": "5,shadow,100"}, "rollout: steps"),
        ({"to_version": 2, "gates": ["latency<2x"]}, "unknown metric"), ({"to_version": 2, "window": "soon"}, "rollout: duration"),
        ({"to_version": 2, "alpha": 1.5}, "rollout.alpha"), ({"to_version": 2, "windw": "5m"}, r"unknown key\(s\) windw"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_model_config("m", {"rollout": table})
