"""Progressive rollouts, the pure part: a declared plan, its gates, and the verdict of one window's figures.

Everything here is a function of its arguments (no clock, no I/O), so it is tested as a table
(``tests/unit/test_rollout_plan.py``); the controller (``rollout.py``) feeds it the figures of the window.

- **Steps**: ``shadow`` (the new version answers nothing; every routed request is mirrored to it and
  compared) or a percentage ``0 < p <= 100`` of the requests naming no version (a weighted, sticky split:
  ``routing.py``). ``100`` sends every such request to the new version.
- **Gates** (``parse_gate``), each ``METRIC OP BOUND`` where BOUND is absolute (``250ms``, ``0.5%``,
  ``0.01``) or relative to the current version (``1.2x``):

  ============  =========================================  ==============================================
  metric        value over the window                      a breach is significant when
  ============  =========================================  ==============================================
  p99           the new version's p99 latency (histogram;  relative: Mann-Whitney U on the two histograms,
                in shadow steps the shadow's execution     new slower, p < alpha; absolute: more than 1%
                time against the primary's on the same     of its requests above the bound, one-sided
                requests)                                  binomial z-test
  errors        error rate (non-OK answers; in shadow      relative: two-proportion z-test; absolute:
                steps failed shadow requests)              one-sided binomial z-test against the bound
  agreement     share of compared requests whose outputs   one-sided binomial z-test against the bound
                all agreed (shadow steps only)
  max_diff      largest absolute output difference seen    an observation above the bound is a fact: no
                (shadow steps only)                        test needed
  psi           the new version's largest feature PSI      a completed drift window above the bound
                (``[drift]`` configured)                   (PSI is itself a window statistic)
  accuracy,     outcome feedback of the new version        two-proportion z-test (accuracy, success) or
  success, mae  (``[feedback]``; split steps only)         Welch's z (mae) against the current version,
                                                           or one-sided z against an absolute bound
  ============  =========================================  ==============================================

  The tests are ``ab.py``'s (``surge ab``). A gate **holds** when it has at least ``min_samples``
  observations (of both versions where it compares them) and its value is within the bound; it is
  **waiting** with fewer; it is **breached** when the value is beyond the bound *and* the test says so at
  ``alpha``; otherwise (beyond the bound, not significant yet) it
  is **unsure** and the step neither advances nor rolls back until more data decides. Relative gates
  do not apply to the 100% step (the current version answers nothing there to compare with).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .ab import Variant, mann_whitney_binned, two_proportion_z, welch_z

__all__ = [
    "GATE_METRICS", "Figures", "Gate", "GateResult", "Plan", "check_gates", "parse_duration", "parse_gate", "parse_steps", "verdict",
]

#: metric -> (higher is better, unit shown, steps it applies to: "shadow", "split" or "any")
GATE_METRICS: dict[str, tuple[bool, str, str]] = {
    "p99": (False, "s", "any"),
    "errors": (False, "ratio", "any"),
    "agreement": (True, "ratio", "shadow"),
    "max_diff": (False, "", "shadow"),
    "psi": (False, "", "any"),
    "accuracy": (True, "ratio", "split"),
    "success": (True, "ratio", "split"),
    "mae": (False, "", "split"),
}
_GATE_RE = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*(x|%|ms|us|s)?\s*$")
_DURATION_RE = re.compile(r"^\s*([0-9.]+)\s*(ms|s|m|h)?\s*$")
#: Bounds of a plan (a request declaring more is refused, not truncated).
MAX_STEPS, MAX_GATES, MAX_WINDOW_S = 32, 32, 7 * 86400.0


def parse_duration(text: str) -> float:
    """``"5m"``, ``"30s"``, ``"1.5"`` (seconds), ``"500ms"``, ``"1h"`` -> seconds (> 0). Raises ValueError."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise ValueError(f"duration {text!r}: expected a number with an optional unit ms, s, m or h, e.g. 5m or 30s")
    seconds = float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    if not 0 < seconds <= MAX_WINDOW_S:
        raise ValueError(f"duration {text!r}: must be > 0 and at most {MAX_WINDOW_S / 86400:g} days")
    return seconds


def parse_steps(steps: Sequence[str] | str) -> tuple[str, ...]:
    """``"shadow,5,25,50,100"`` (or a list) -> ("shadow", "5", "25", "50", "100"). Raises ValueError.

    Percentages rise strictly, the last is 100; ``shadow`` may only come first.
    """
    items = [str(s).strip() for s in (steps.split(",") if isinstance(steps, str) else steps) if str(s).strip()]
    if len(items) > MAX_STEPS:
        raise ValueError(f"steps: at most {MAX_STEPS}, got {len(items)}")
    out: list[str] = []
    last = 0.0
    for i, item in enumerate(str(s) for s in items):
        if item == "shadow":
            if i != 0:
                raise ValueError(f"steps {','.join(map(str, items))}: 'shadow' can only be the first step")
            out.append(item)
            continue
        try:
            pct = float(item.rstrip("%"))
        except ValueError:
            raise ValueError(f"steps: {item!r} is neither 'shadow' nor a percentage (0 < p <= 100)") from None
        if not 0 < pct <= 100 or pct <= last:
            raise ValueError(f"steps {','.join(map(str, items))}: percentages must rise strictly within (0, 100]")
        last = pct
        out.append(f"{pct:g}")
    if not out or out[-1] != "100":
        raise ValueError(f"steps {','.join(map(str, items)) or '(none)'}: the last step must be 100, e.g. shadow,5,25,50,100")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Gate:
    """One gate: ``metric op bound`` (``relative``: the bound is a multiple of the current version's value)."""

    metric: str
    op: str
    bound: float
    relative: bool = False
    text: str = ""

    @property
    def higher_is_better(self) -> bool:
        return GATE_METRICS[self.metric][0]

    def within(self, value: float) -> bool:
        """Whether ``value`` (or the ratio, for a relative gate) is within the bound."""
        return {"<": value < self.bound, "<=": value <= self.bound, ">": value > self.bound, ">=": value >= self.bound}[self.op] or value == self.bound


def parse_gate(text: str) -> Gate:
    """``"p99<1.2x"``, ``"p99<250ms"``, ``"errors<0.5%"``, ``"agreement>99%"``, ``"max_diff<1e-3"``, ``"psi<0.2"``,
    ``"accuracy>0.98x"`` -> Gate. Raises ValueError naming what is wrong."""
    m = _GATE_RE.match(text) if len(text) <= 64 else None
    if not m:
        raise ValueError(f"gate {text!r}: expected METRIC<BOUND or METRIC>BOUND, e.g. 'p99<1.2x', 'errors<0.5%', 'agreement>99%'")
    metric, op, number, unit = m.group(1), m.group(2), m.group(3), m.group(4) or ""
    if metric not in GATE_METRICS:
        raise ValueError(f"gate {text!r}: unknown metric {metric!r}; one of {', '.join(GATE_METRICS)}")
    try:
        bound = float(number)
    except ValueError:
        raise ValueError(f"gate {text!r}: {number!r} is not a number") from None
    if not math.isfinite(bound) or bound < 0:
        raise ValueError(f"gate {text!r}: the bound must be a finite number >= 0")
    higher_better, kind, _ = GATE_METRICS[metric]
    if (op[0] == ">") != higher_better:
        raise ValueError(f"gate {text!r}: {metric} must stay {'above' if higher_better else 'below'} its bound ({metric}{'>' if higher_better else '<'}...)")
    relative = unit == "x"
    if unit == "%":
        if kind != "ratio":
            raise ValueError(f"gate {text!r}: {metric} is not a ratio; '%' does not apply")
        bound /= 100.0
    elif unit in ("ms", "us", "s"):
        if kind != "s":
            raise ValueError(f"gate {text!r}: {metric} is not a duration; '{unit}' does not apply")
        bound *= {"ms": 1e-3, "us": 1e-6, "s": 1.0}[unit]
    elif unit == "" and kind == "s":
        raise ValueError(f"gate {text!r}: give p99 a unit (ms, us, s) or a multiple of the current version (x)")
    if kind == "ratio" and not relative and bound > 1.0:
        raise ValueError(f"gate {text!r}: a rate bound is at most 100%")
    return Gate(metric, op, bound, relative, text.strip())


@dataclass(frozen=True, slots=True)
class Plan:
    """A declared rollout of ``model`` from version ``from_version`` to ``to_version``."""

    model: str
    from_version: int
    to_version: int
    steps: tuple[str, ...]
    window_s: float
    gates: tuple[Gate, ...]
    min_samples: int = 100
    alpha: float = 0.01

    def __post_init__(self) -> None:
        if self.from_version < 1 or self.to_version < 1 or self.from_version == self.to_version:
            raise ValueError(f"rollout of {self.model}: needs two different versions >= 1, got {self.from_version} -> {self.to_version}")
        if not 0 < self.window_s <= MAX_WINDOW_S or self.min_samples < 1 or not 0 < self.alpha < 1:
            raise ValueError(f"rollout of {self.model}: 0 < window <= {MAX_WINDOW_S / 86400:g} days, min_samples >= 1 and 0 < alpha < 1 required")
        if len(self.gates) > MAX_GATES:
            raise ValueError(f"rollout of {self.model}: at most {MAX_GATES} gates, got {len(self.gates)}")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "from_version": self.from_version, "to_version": self.to_version, "steps": list(self.steps),
                "window_s": self.window_s, "gates": [g.text for g in self.gates], "min_samples": self.min_samples, "alpha": self.alpha}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(str(data["model"]), int(data["from_version"]), int(data["to_version"]), parse_steps(data["steps"]), float(data["window_s"]),
                   tuple(parse_gate(g) for g in data["gates"]), int(data["min_samples"]), float(data["alpha"]))


@dataclass(slots=True)
class Figures:
    """What one window shows of the two versions (built by the controller from the server's metrics).

    In a shadow step ``base`` and ``new`` are the primary's and the shadow's executions of the same
    requests (latency histograms, failures); in a split step, the requests each version answered.
    """

    base: Variant
    new: Variant
    shadow_compared: int = 0
    shadow_agreed: int = 0
    max_diff: float | None = None
    psi: float | None = None
    base_psi: float | None = None
    drift_windows: int = 0


@dataclass(slots=True)
class GateResult:
    """One gate's state over the window: "holds", "waiting", "unsure" or "breached" ("n/a": not in this step)."""

    gate: str
    state: str
    value: float | None = None
    baseline: float | None = None
    samples: int = 0
    p: float | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _one_sided(z: float) -> float:
    """Upper-tail p of a standard normal z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _rate_vs_bound(x: int, n: int, bound: float, *, above_is_bad: bool) -> float:
    """One-sided p that the true rate is beyond ``bound`` given ``x`` of ``n`` (normal approximation; 0 or 1 at a 0/1 bound)."""
    if n == 0:
        return 1.0
    rate = x / n
    se = math.sqrt(bound * (1 - bound) / n)
    if se == 0:
        return 0.0 if (rate > bound if above_is_bad else rate < bound) else 1.0
    z = (rate - bound) / se
    return _one_sided(z if above_is_bad else -z)


def _above(v: Variant, bound_s: float) -> int:
    """Requests of ``v`` slower than ``bound_s`` (whole buckets above it, the straddling one pro rata)."""
    count, lower = 0.0, 0.0
    for le, c in zip(v.latency_les, v.latency_counts):
        if lower >= bound_s:
            count += c
        elif le > bound_s and c:
            count += c * ((le - bound_s) / (le - lower) if math.isfinite(le) else 1.0)
        lower = le if math.isfinite(le) else lower
    return int(round(count))


def check_gates(gates: Sequence[Gate], step: str, fig: Figures, *, min_samples: int, alpha: float) -> list[GateResult]:
    """Each gate's state over the window's figures (see the module docstring)."""
    return [_check(g, step, fig, min_samples, alpha) for g in gates]


def _check(g: Gate, step: str, fig: Figures, min_samples: int, alpha: float) -> GateResult:
    shadow = step == "shadow"
    where = GATE_METRICS[g.metric][2]
    if (where == "shadow" and not shadow) or (where == "split" and shadow):
        return GateResult(g.text, "n/a", detail=f"checked in {where} steps only")
    if g.relative and step == "100":
        return GateResult(g.text, "n/a", detail="relative gates are checked while the current version still answers (steps below 100%)")
    base, new = fig.base, fig.new
    value: float | None
    baseline: float | None = None
    samples = new.requests
    p = 1.0
    if g.metric == "p99":
        samples = sum(new.latency_counts)
        value = new.percentile_s(0.99)
        if g.relative:
            baseline = base.percentile_s(0.99)
            if samples and sum(base.latency_counts) and base.latency_les == new.latency_les:
                effect, _, p_two = mann_whitney_binned(base.latency_counts, new.latency_counts)
                p = p_two if effect > 0.5 else 1.0
            samples = min(samples, sum(base.latency_counts))
        else:
            p = _rate_vs_bound(_above(new, g.bound), sum(new.latency_counts), 0.01, above_is_bad=True)
    elif g.metric == "errors":
        value = new.error_rate
        if g.relative:
            baseline = base.error_rate
            _, p_two = two_proportion_z(base.errors, base.requests, new.errors, new.requests)
            p = p_two if value > baseline else 1.0
            samples = min(samples, base.requests)
        else:
            p = _rate_vs_bound(new.errors, new.requests, g.bound, above_is_bad=True)
    elif g.metric == "agreement":
        samples = fig.shadow_compared
        value = fig.shadow_agreed / samples if samples else None
        p = _rate_vs_bound(fig.shadow_agreed, samples, g.bound, above_is_bad=False)
    elif g.metric == "max_diff":
        samples = fig.shadow_compared
        value = fig.max_diff if samples else None
        p = 0.0
    elif g.metric == "psi":
        samples = fig.drift_windows * min_samples  # a completed drift window is enough data
        value, baseline = fig.psi, fig.base_psi if g.relative else None
        p = 0.0
    else:  # outcome quality
        value, baseline, samples, p = _quality(g, base, new)
    if value is None or (g.relative and baseline is None):
        return GateResult(g.text, "waiting", value, baseline, samples, None, f"{samples} of {min_samples} observations" if value is None else "no figure of the current version yet")
    if samples < min_samples:
        return GateResult(g.text, "waiting", value, baseline, samples, None, f"{samples} of {min_samples} observations")
    within = _within(g, value, baseline)
    if not within and p < alpha:
        return GateResult(g.text, "breached", value, baseline, samples, p, f"{_show(g, value, baseline)} (p = {p:.3g} < {alpha:g})")
    if within:
        return GateResult(g.text, "holds", value, baseline, samples, p)
    return GateResult(g.text, "unsure", value, baseline, samples, p, f"{_show(g, value, baseline)} but not significant yet (p = {p:.3g})")


def _within(g: Gate, value: float, baseline: float | None) -> bool:
    if not g.relative:
        return g.within(value)
    if baseline is None:
        return True
    if baseline == 0:
        return value == 0 or g.higher_is_better
    return g.within(value / baseline)


def _show(g: Gate, value: float, baseline: float | None) -> str:
    unit = GATE_METRICS[g.metric][1]
    fmt: Callable[[float], str] = (lambda x: f"{x * 1e3:.3g} ms") if unit == "s" else (lambda x: f"{100 * x:.3g}%") if unit == "ratio" else (lambda x: f"{x:.4g}")
    if g.relative and baseline:
        return f"{g.metric} {fmt(value)} = {value / baseline:.3g}x the current {fmt(baseline)}, bound {g.text}"
    return f"{g.metric} {fmt(value)}, bound {g.text}"


def _quality(g: Gate, base: Variant, new: Variant) -> tuple[float | None, float | None, int, float]:
    if g.metric == "mae":
        n, nb = new.valued, base.valued
        value = new.abs_error / n if n else None
        baseline = base.abs_error / nb if nb else None
        z, p_two = welch_z(base.abs_error, base.sq_abs_error, nb, new.abs_error, new.sq_abs_error, n)
        if g.relative:
            return value, baseline, min(n, nb), p_two if z > 0 else 1.0
        se = math.sqrt(max(new.sq_abs_error - n * (value or 0) ** 2, 0.0) / max(n - 1, 1) / max(n, 1))
        return value, None, n, (_one_sided(((value or 0) - g.bound) / se) if se else (0.0 if (value or 0) > g.bound else 1.0))
    x, n, xb, nb = (new.correct, new.labelled, base.correct, base.labelled) if g.metric == "accuracy" else (new.successes, new.flags, base.successes, base.flags)
    value = x / n if n else None
    baseline = xb / nb if nb else None
    if g.relative:
        z, p_two = two_proportion_z(xb, nb, x, n)
        return value, baseline, min(n, nb), p_two if z < 0 else 1.0
    return value, None, n, _rate_vs_bound(x, n, g.bound, above_is_bad=False)


def verdict(results: Sequence[GateResult]) -> tuple[str, str]:
    """(decision, reasons) of one look at a window: "breach", "hold" (every gate holds), "waiting" or "unsure"."""
    live = [r for r in results if r.state != "n/a"]
    breached = [r for r in live if r.state == "breached"]
    if breached:
        return "breach", "; ".join(f"{r.gate} breached: {r.detail}" for r in breached)
    waiting = [r for r in live if r.state == "waiting"]
    unsure = [r for r in live if r.state == "unsure"]
    if unsure:
        return "unsure", "; ".join(f"{r.gate}: {r.detail}" for r in unsure)
    if waiting:
        return "waiting", "waiting for data: " + "; ".join(f"{r.gate} {r.detail}" for r in waiting)
    return "hold", "every gate holds: " + ", ".join(f"{r.gate} ({_value_text(r)})" for r in live) if live else "no gate applies to this step"


def _value_text(r: GateResult) -> str:
    if r.value is None:
        return "-"
    return f"{r.value:.4g}" + (f" vs {r.baseline:.4g}" if r.baseline is not None else "") + f", n={r.samples}"
