"""Comparing a model's versions from the server's ``/metrics``, with significance tests: ``surge ab MODEL`` prints
it, and the rollout controller's gates (rollout.py, rollout_plan.py) decide on the same statistics.

Per version (variant): requests, error rate, latency percentiles, its current route share, shadow
agreement (when it is someone's shadow) and outcome-feedback quality. Each variant is then tested
against a baseline (``--baseline``, default the lowest version with traffic):

- **Error rate**: two-proportion z-test (pooled proportion, two-sided). Errors are answered requests
  with a status other than OK, less CANCELLED (the client went away).
- **Latency**: Mann-Whitney U test on the two ``surge_request_duration_seconds`` histograms. Requests
  are ranked by bucket (a bucket is a tie group, midranks with the tie-corrected variance, normal
  approximation); this is exact for the binned data, so it detects shifts bigger than a bucket
  (about 1.26x with the default buckets) and reports P(variant slower) = U / (n1 n2) as the effect.
- **Accuracy** (labels) and **success rate** (flags) from outcome feedback: two-proportion z-tests.
- **Mean absolute error** (number outcomes): Welch's t statistic from the sums and sums of squares,
  with a normal approximation (fine from a few dozen rows per variant).

Counters are cumulative since the server started; ``--interval-s N`` scrapes twice, N seconds apart, and
tests only what happened in between. p-values are two-sided; a difference is called significant when
p < ``--alpha`` (default 0.05), with no correction for testing several metrics or variants at once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Report", "Test", "Variant", "analyse", "format_report", "mann_whitney_binned", "parse_samples", "two_proportion_z", "welch_z"]

_IGNORED_CODES = {"OK", "CANCELLED"}


def _p_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """z and two-sided p for H0: p1 == p2 (pooled). Returns (0, 1) when it cannot be computed."""
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / se
    return z, _p_two_sided(z)


def mann_whitney_binned(a: Sequence[int], b: Sequence[int]) -> tuple[float, float, float]:
    """Mann-Whitney U between two samples given as counts per ordered bin (the same bins).

    Returns (P(b > a) + P(tie) / 2, z, two-sided p); (0.5, 0, 1) when a sample is empty or all values tie.
    """
    n1, n2 = sum(a), sum(b)
    if n1 == 0 or n2 == 0:
        return 0.5, 0.0, 1.0
    n = n1 + n2
    below = 0
    rank_sum_b = 0.0
    ties = 0.0
    for ca, cb in zip(a, b):
        t = ca + cb
        if t:
            midrank = below + (t + 1) / 2
            rank_sum_b += cb * midrank
            ties += t**3 - t
            below += t
    u_b = rank_sum_b - n2 * (n2 + 1) / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    effect = u_b / (n1 * n2)
    if var <= 0:
        return effect, 0.0, 1.0
    z = (u_b - n1 * n2 / 2) / math.sqrt(var)
    return effect, z, _p_two_sided(z)


def welch_z(sum1: float, sq1: float, n1: int, sum2: float, sq2: float, n2: int) -> tuple[float, float]:
    """Welch's statistic for H0: mean1 == mean2 from sums and sums of squares (normal approximation)."""
    if n1 < 2 or n2 < 2:
        return 0.0, 1.0
    m1, m2 = sum1 / n1, sum2 / n2
    v1 = max(sq1 - n1 * m1 * m1, 0.0) / (n1 - 1)
    v2 = max(sq2 - n2 * m2 * m2, 0.0) / (n2 - 1)
    se = math.sqrt(v1 / n1 + v2 / n2)
    if se == 0:
        return 0.0, 1.0
    z = (m2 - m1) / se
    return z, _p_two_sided(z)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def difference(after: Samples, before: Samples) -> Samples:
    """Counters over an interval: ``after - before`` (gauges, e.g. route weights, keep their latest value)."""
    return {k: (v - before.get(k, 0.0) if not k[0].startswith(("surge_route_weight", "surge_shadow_max", "surge_shadow_mean", "surge_feedback_accuracy",
                                                                     "surge_feedback_mean", "surge_feedback_success_rate", "surge_feedback_join_ratio"))
                else v) for k, v in after.items()}


@dataclass(slots=True)
class Variant:
    """One version's figures."""

    version: str
    share: float | None = None
    requests: int = 0
    errors: int = 0
    latency_les: list[float] = field(default_factory=list)
    latency_counts: list[int] = field(default_factory=list)  # per bucket (not cumulative)
    labelled: int = 0
    correct: int = 0
    valued: int = 0
    abs_error: float = 0.0
    sq_abs_error: float = 0.0
    flags: int = 0
    successes: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def percentile_s(self, q: float) -> float | None:
        """Latency percentile (seconds) by linear interpolation inside the bucket; None without data."""
        total = sum(self.latency_counts)
        if not total:
            return None
        rank = q * total
        running = 0
        lower = 0.0
        for le, count in zip(self.latency_les, self.latency_counts):
            if count and running + count >= rank:
                if math.isinf(le):
                    return lower
                return lower + (le - lower) * (rank - running) / count
            running += count
            lower = le if not math.isinf(le) else lower
        return lower


@dataclass(slots=True)
class Test:
    """One significance test of a variant against the baseline."""

    metric: str
    version: str
    baseline_value: float
    value: float
    statistic: float
    p: float
    test: str
    effect: str = ""

    def significant(self, alpha: float) -> bool:
        return self.p < alpha


@dataclass(slots=True)
class ShadowPair:
    """Shadow comparison of one (primary, shadow) pair."""

    primary: str
    shadow: str
    compared: int
    agreed: int
    dropped: int
    failed: int
    argmax: dict[str, tuple[int, int]]
    max_abs: dict[str, float]
    primary_mean_s: float | None
    shadow_mean_s: float | None


@dataclass(slots=True)
class Report:
    """Everything ``surge ab`` prints."""

    model: str
    baseline: str
    variants: list[Variant]
    tests: list[Test]
    shadows: list[ShadowPair]
    join_ratio: float | None
    window: str


def _by_model(samples: Samples, name: str, model: str) -> Iterable[tuple[dict[str, str], float]]:
    for key, value in samples.items():
        if key[0] == name:
            labels = dict(key[1])
            if labels.get("model") == model:
                yield labels, value


def analyse(samples: Samples, model: str, *, baseline: str = "", window: str = "since the server started") -> Report:
    """Build the report of ``model``'s versions from parsed samples (``parse_samples``, maybe ``difference``)."""
    variants: dict[str, Variant] = {}

    def variant(version: str) -> Variant:
        if version not in variants:
            variants[version] = Variant(version)
        return variants[version]

    for labels, value in _by_model(samples, "surge_requests_total", model):
        v = variant(labels["version"])
        v.requests += int(value)
        if labels.get("code") not in _IGNORED_CODES:
            v.errors += int(value)
    cumulative: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for labels, value in _by_model(samples, "surge_request_duration_seconds_bucket", model):
        cumulative[labels["version"]].append((float(labels["le"]), value))
    for version, points in cumulative.items():
        points.sort()
        v = variant(version)
        v.latency_les = [le for le, _ in points]
        previous = 0.0
        v.latency_counts = []
        for _, c in points:
            v.latency_counts.append(max(int(round(c - previous)), 0))
            previous = c
    for labels, value in _by_model(samples, "surge_route_weight", model):
        variant(labels["version"]).share = value
    for metric, attribute in (("surge_feedback_labelled_rows_total", "labelled"), ("surge_feedback_correct_rows_total", "correct"),
                              ("surge_feedback_valued_rows_total", "valued"), ("surge_feedback_abs_error_total", "abs_error"),
                              ("surge_feedback_squared_abs_error_total", "sq_abs_error"), ("surge_feedback_flags_total", "flags"),
                              ("surge_feedback_successes_total", "successes")):
        for labels, value in _by_model(samples, metric, model):
            v = variant(labels["version"])
            setattr(v, attribute, type(getattr(v, attribute))(value))
    used = [v for v in variants.values() if v.requests or v.share is not None or v.labelled or v.valued or v.flags]  # not shadow-only versions
    ordered = sorted(used, key=lambda v: int(v.version) if v.version.isdigit() else 0)
    with_traffic = [v for v in ordered if v.requests]
    base = variants.get(baseline) if baseline else (with_traffic[0] if with_traffic else (ordered[0] if ordered else None))
    tests: list[Test] = []
    if base is not None:
        for v in ordered:
            if v is not base:
                tests.extend(_tests(base, v))
    joined = sum(value for labels, value in _by_model(samples, "surge_feedback_reports_total", model) if labels.get("result") == "joined")
    received = sum(value for _, value in _by_model(samples, "surge_feedback_reports_total", model))
    return Report(model, base.version if base else "", ordered, tests, _shadows(samples, model), joined / received if received else None, window)


def _tests(base: Variant, v: Variant) -> list[Test]:
    tests = []
    if base.requests and v.requests:
        z, p = two_proportion_z(base.errors, base.requests, v.errors, v.requests)
        tests.append(Test("error rate", v.version, base.error_rate, v.error_rate, z, p, "two-proportion z-test"))
    if sum(base.latency_counts) and sum(v.latency_counts) and base.latency_les == v.latency_les:
        effect, z, p = mann_whitney_binned(base.latency_counts, v.latency_counts)
        tests.append(Test("latency", v.version, base.percentile_s(0.5) or 0.0, v.percentile_s(0.5) or 0.0, z, p,
                          "Mann-Whitney U on histogram buckets", f"P(v{v.version} slower) = {effect:.3f}"))
    if base.labelled and v.labelled:
        z, p = two_proportion_z(base.correct, base.labelled, v.correct, v.labelled)
        tests.append(Test("accuracy", v.version, base.correct / base.labelled, v.correct / v.labelled, z, p, "two-proportion z-test"))
    if base.flags and v.flags:
        z, p = two_proportion_z(base.successes, base.flags, v.successes, v.flags)
        tests.append(Test("success rate", v.version, base.successes / base.flags, v.successes / v.flags, z, p, "two-proportion z-test"))
    if base.valued and v.valued:
        z, p = welch_z(base.abs_error, base.sq_abs_error, base.valued, v.abs_error, v.sq_abs_error, v.valued)
        tests.append(Test("mean abs error", v.version, base.abs_error / base.valued, v.abs_error / v.valued, z, p, "Welch z-test (normal approx.)"))
    return tests


def _shadows(samples: Samples, model: str) -> list[ShadowPair]:
    pairs: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    argmax: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    max_abs: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (name, label_items), value in samples.items():
        if not name.startswith("surge_shadow_"):
            continue
        labels = dict(label_items)
        if labels.get("model") != model or "primary" not in labels:
            continue
        key = (labels["primary"], labels["shadow"])
        p = pairs[key]
        if name == "surge_shadow_requests_total":
            p[labels["outcome"]] += value
        elif name == "surge_shadow_agreed_total":
            p["agreed"] += value
        elif name == "surge_shadow_argmax_compared_total":
            argmax[key][labels["output"]][1] += int(value)
        elif name == "surge_shadow_argmax_agreed_total":
            argmax[key][labels["output"]][0] += int(value)
        elif name == "surge_shadow_max_abs_difference":
            max_abs[key][labels["output"]] = value
        elif name in ("surge_shadow_latency_seconds_sum", "surge_shadow_latency_seconds_count"):
            p[f"{labels['role']}_{name.rsplit('_', 1)[1]}"] += value
    out = []
    for (primary, shadow), p in sorted(pairs.items()):
        out.append(ShadowPair(
            primary, shadow, int(p["compared"]), int(p["agreed"]), int(p["dropped"]), int(p["shadow_failed"]),
            {o: (a, c) for o, (a, c) in argmax[(primary, shadow)].items()}, max_abs[(primary, shadow)],
            p["primary_sum"] / p["primary_count"] if p["primary_count"] else None, p["shadow_sum"] / p["shadow_count"] if p["shadow_count"] else None,
        ))
    return out


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def format_report(report: Report, alpha: float = 0.05) -> str:
    """The report as text tables."""
    lines = [f"model {report.model}: versions compared {report.window}", ""]
    lines.append(f"{'VERSION':<8} {'SHARE':>7} {'REQUESTS':>9} {'ERRORS':>7} {'ERR%':>7} {'P50 ms':>8} {'P90 ms':>8} {'P99 ms':>8} "
                 f"{'ACCURACY':>9} {'MAE':>9} {'SUCCESS':>8}")
    for v in report.variants:
        lines.append(
            f"{v.version:<8} {_pct(v.share):>7} {v.requests:>9} {v.errors:>7} {_pct(v.error_rate if v.requests else None):>7} "
            f"{_ms(v.percentile_s(0.5)):>8} {_ms(v.percentile_s(0.9)):>8} {_ms(v.percentile_s(0.99)):>8} "
            f"{_pct(v.correct / v.labelled if v.labelled else None):>9} {(f'{v.abs_error / v.valued:.4g}' if v.valued else '-'):>9} "
            f"{_pct(v.successes / v.flags if v.flags else None):>8}"
        )
    if report.join_ratio is not None:
        lines.append(f"outcome reports joined with the answering version: {_pct(report.join_ratio)}")
    if report.tests:
        lines += ["", f"significance against version {report.baseline} (two-sided, alpha {alpha}):"]
        for t in report.tests:
            fmt = _ms if t.metric == "latency" else (lambda x: f"{x:.4g}") if t.metric == "mean abs error" else _pct
            what = "p50 " if t.metric == "latency" else ""
            verdict = "SIGNIFICANT" if t.significant(alpha) else "not significant"
            extra = f", {t.effect}" if t.effect else ""
            lines.append(f"  v{t.version} {t.metric}: {what}{fmt(t.baseline_value)} -> {fmt(t.value)}{' ms' if t.metric == 'latency' else ''}; "
                         f"{t.test}: z = {t.statistic:.2f}, p = {t.p:.3g}{extra} -> {verdict}")
    elif len(report.variants) < 2:
        lines += ["", "only one version has data: nothing to compare"]
    if report.shadows:
        lines += ["", "shadow comparisons (primary -> shadow):"]
        for s in report.shadows:
            agreement = _pct(s.agreed / s.compared if s.compared else None)
            argmax = ", ".join(f"argmax agreement {o} {_pct(a / c if c else None)}" for o, (a, c) in sorted(s.argmax.items()))
            diffs = ", ".join(f"max |diff| {o} {d:.3g}" for o, d in sorted(s.max_abs.items()))
            lines.append(f"  v{s.primary} -> v{s.shadow}: {s.compared} compared, agreement {agreement}" + (f", {argmax}" if argmax else "")
                         + (f", {diffs}" if diffs else "") + f"; mean latency {_ms(s.primary_mean_s)} ms vs {_ms(s.shadow_mean_s)} ms; "
                         f"{s.dropped} dropped, {s.failed} failed")
    return "\n".join(lines)
