"""Surge's one exposition writer (Prometheus text 0.0.4 and OpenMetrics 1.0) and its one histogram class.

Everything a Surge ``/metrics`` page holds is written here: Surge's own families (``metrics.py``, written line by
line from counter snapshots), the families of prometheus_client collectors (process, platform, GC, GPU, routing,
shadow, feedback, rollouts: ``Writer.families``), and the ``--workers`` supervisor's merged page (``page_merge``).
prometheus_client still does the content negotiation (``choose_encoder``) and the parsing in tests; its encoders
are not used, so every value is formatted by ``number`` alone.

Numbers: whole values are written as plain integers (``85899345920``, not prometheus_client's
``8.589934592e+10``): both are valid exposition, but perf_analyzer reads Triton's ``nv_gpu_*`` gauges with the
regex ``\\d+\\.?\\d*``, which stops at an exponent. Other finite values are Python's shortest round-trip repr.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.utils import floatToGoString

__all__ = ["Histogram", "Writer", "bucket_les", "label_value", "labels", "number"]

_EXACT = 2.0**53  # whole floats below this are exact integers


def number(value: float) -> str:
    """A sample value as exposition text: plain digits for whole numbers, ``+Inf``/``-Inf``/``NaN``, else repr."""
    if isinstance(value, int):
        return str(int(value))  # bools too
    if value.is_integer() and -_EXACT < value < _EXACT:
        return str(int(value))
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"


def bucket_les(bounds: Iterable[float]) -> tuple[str, ...]:
    """The ``le`` label values of histogram buckets (canonical, as OpenMetrics wants them), ``+Inf`` last."""
    return (*(str(floatToGoString(b)) for b in bounds), "+Inf")


def label_value(value: str) -> str:
    """A label value escaped for the exposition formats (backslash, newline, double quote)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(names: Sequence[str], values: Sequence[str]) -> str:
    """``name="value",...`` (no braces)."""
    return ",".join(f'{n}="{label_value(v)}"' for n, v in zip(names, values))


class Histogram:
    """Per-bucket counts and a sum, in integer units (ns, rows). Written on the event loop only, so it needs no lock.

    ``observe`` is one ``bisect`` and two integer additions (about 0.25 us; prometheus_client's ``Histogram.observe``
    scans the buckets and takes two locks, about 3 us with 70 buckets).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[int]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0

    def observe(self, value: int) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # bisect_left: a value equal to a bound is in that bucket (le)
        self.sum += value


def _help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


class Writer:
    """Lines of one page in one format. ``text()`` ends an OpenMetrics page with its ``# EOF``."""

    __slots__ = ("openmetrics", "out", "w")

    def __init__(self, *, openmetrics: bool) -> None:
        self.openmetrics = openmetrics
        self.out: list[str] = []
        self.w = self.out.append
        """Append raw text (whole lines, each ending with a newline)."""

    def header(self, name: str, kind: str, help_text: str, unit: str = "") -> None:
        """``# HELP`` and ``# TYPE`` of a family; ``name`` is the sample name (a counter's ends with ``_total``,
        dropped from the family name in OpenMetrics)."""
        family = name[: -len("_total")] if self.openmetrics and kind == "counter" and name.endswith("_total") else name
        self.w(f"# HELP {family} {_help(help_text, self.openmetrics)}\n# TYPE {family} {kind}\n")
        if unit and self.openmetrics:
            self.w(f"# UNIT {family} {unit}\n")

    def sample(self, name: str, label_text: str, value: float) -> None:
        """One sample line; ``label_text`` as ``labels`` writes it ("" for none)."""
        self.w(f"{name}{{{label_text}}} {number(value)}\n" if label_text else f"{name} {number(value)}\n")

    def histogram(self, name: str, label_text: str, les: Sequence[str], counts: Sequence[int], total: float,
                  exemplars: dict[int, tuple[str, int, float]] | None = None) -> None:  # fmt: skip
        """A histogram's ``_bucket`` (cumulative), ``_count`` and ``_sum`` lines from per-bucket ``counts``.
        ``exemplars`` (OpenMetrics only): bucket index -> (trace id, value in ns, epoch seconds)."""
        w, prefix = self.w, f"{label_text}," if label_text else ""
        running = 0
        for i, (le, count) in enumerate(zip(les, counts)):
            running += count
            ex = exemplars.get(i) if exemplars else None
            tail = f' # {{trace_id="{ex[0]}"}} {number(ex[1] / 1e9)} {ex[2]:.3f}' if ex is not None else ""
            w(f'{name}_bucket{{{prefix}le="{le}"}} {running}{tail}\n')
        braces = f"{{{label_text}}}" if label_text else ""
        w(f"{name}_count{braces} {running}\n{name}_sum{braces} {number(total)}\n")

    def families(self, metrics: Iterable[Any]) -> None:
        """prometheus_client ``Metric`` families (what collectors yield), as prometheus_client's encoder of this
        format lays them out, with values written by ``number``."""
        for metric in metrics:
            name, kind = metric.name, metric.type
            if not self.openmetrics:
                name, kind = {
                    "counter": (f"{name}_total", kind), "info": (f"{name}_info", "gauge"), "stateset": (name, "gauge"),
                    "gaugehistogram": (name, "histogram"), "unknown": (name, "untyped"),
                }.get(kind, (name, kind))  # fmt: skip
            self.w(f"# HELP {name} {_help(metric.documentation, self.openmetrics)}\n# TYPE {name} {kind}\n")
            if self.openmetrics and metric.unit:
                self.w(f"# UNIT {name} {metric.unit}\n")
            late: dict[str, list[Any]] = {}
            for s in metric.samples:
                suffix = s.name[len(metric.name):]
                if not self.openmetrics and suffix in ("_created", "_gsum", "_gcount"):
                    late.setdefault(suffix, []).append(s)  # OpenMetrics-only samples: a gauge of their own in text 0.0.4
                else:
                    self._sample(s)
            for suffix, samples in sorted(late.items()):
                self.w(f"# HELP {metric.name}{suffix} {_help(metric.documentation, False)}\n# TYPE {metric.name}{suffix} gauge\n")
                for s in samples:
                    self._sample(s)

    def _sample(self, s: Any) -> None:
        label_text = labels(tuple(s.labels), tuple(s.labels.values()))
        line = f"{s.name}{{{label_text}}} {number(s.value)}" if label_text else f"{s.name} {number(s.value)}"
        if s.timestamp is not None:
            line += f" {s.timestamp}" if self.openmetrics else f" {int(float(s.timestamp) * 1000):d}"
        if self.openmetrics and s.exemplar is not None:
            ex = s.exemplar
            line += f" # {{{labels(tuple(ex.labels), tuple(ex.labels.values()))}}} {number(ex.value)}" + (f" {ex.timestamp}" if ex.timestamp is not None else "")
        self.w(line + "\n")

    def text(self) -> str:
        """The page written so far (with ``# EOF`` for OpenMetrics)."""
        return "".join(self.out) + ("# EOF\n" if self.openmetrics else "")
