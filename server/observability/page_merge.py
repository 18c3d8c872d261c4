"""One ``/metrics`` page from several workers' pages (``surge serve --workers``; the rules are in workers.py's
docstring): a line-level reader of Surge's own exposition, the merge, and the writer back to text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .exposition import number

__all__ = ["MIN_GAUGES", "SUMMED_GAUGES", "Family", "format_page", "merge_families", "parse_page"]

#: Gauges that are amounts: the whole server's value is the sum over workers. Other gauges: the maximum.
SUMMED_GAUGES = frozenset({
    "surge_queue_depth", "surge_inflight_requests",
    "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
})  # fmt: skip
#: Gauges whose whole-server value is the minimum over workers.
MIN_GAUGES = frozenset({"process_start_time_seconds"})
_SUMMED_TYPES = frozenset({"counter", "histogram", "gaugehistogram", "summary"})


# -- metrics across workers -----------------------------------------------------------------------


@dataclass
class Family:
    """One metric family of an exposition page: its header lines (HELP, TYPE, UNIT) and samples by series."""

    name: str
    type: str = "unknown"
    header: list[str] = field(default_factory=list)
    samples: dict[str, float] = field(default_factory=dict)
    """``name{labels}`` (as the exporter wrote it) -> value."""


def parse_page(text: str) -> dict[str, Family]:
    """A Prometheus text (0.0.4) or OpenMetrics page as families, in page order.

    A line-level reader, not a full parser: the pages come from Surge's own workers (``metrics.render``), whose
    lines are ``# HELP``/``# TYPE``/``# UNIT`` headers and ``series value`` samples without timestamps or
    exemplars, every sample after its family's headers. Cheap: see the module docstring for the figures.
    """
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text.splitlines():
        if not line:
            continue
        if line[0] == "#":
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE", "UNIT"):
                current = families.get(parts[2])
                if current is None:
                    current = families[parts[2]] = Family(parts[2])
                current.header.append(line)
                if parts[1] == "TYPE" and len(parts) == 4:
                    current.type = parts[3]
            continue  # "# EOF" and comments
        series, _, value = line.rpartition(" ")
        if current is None:
            current = families[series] = Family(series)
        current.samples[series] = float(value)
    return families


def merge_families(pages: Iterable[dict[str, Family]], retired: dict[str, Family] | None = None) -> dict[str, Family]:
    """Merge the pages of several workers into the whole server's (rules in the module docstring).

    ``retired``: counter and histogram families of workers that died (added to the sums, never to gauges).
    """
    merged: dict[str, Family] = {}

    def add(family: Family, only_summed: bool) -> None:
        summed = family.type in _SUMMED_TYPES
        if only_summed and not summed:
            return
        target = merged.get(family.name)
        if target is None:
            target = merged[family.name] = Family(family.name, family.type, list(family.header))
        values = target.samples
        for series, value in family.samples.items():
            old = values.get(series)
            if old is None:
                values[series] = value
            elif summed:
                values[series] = min(old, value) if series.split("{", 1)[0].endswith("_created") else old + value
            elif family.name in SUMMED_GAUGES:
                values[series] = old + value
            elif family.name in MIN_GAUGES:
                values[series] = min(old, value)
            else:
                values[series] = max(old, value)

    for page in pages:
        for family in page.values():
            add(family, only_summed=False)
    for family in (retired or {}).values():
        add(family, only_summed=True)
    return merged


def format_page(families: Iterable[Family], *, openmetrics: bool) -> str:
    """Families back to exposition text (the format their headers were written in), values written as
    ``exposition.number`` writes them (whole numbers in plain digits: perf_analyzer reads GPU gauges that way)."""
    out: list[str] = []
    for family in families:
        out.extend(family.header)
        out.extend(f"{series} {number(value)}" for series, value in family.samples.items())
    if openmetrics:
        out.append("# EOF")
    return "\n".join(out) + "\n"
