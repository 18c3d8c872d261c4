"""``surge bench --plot FILE.png``: latency percentiles over time, and latency against throughput for a sweep.

Needs matplotlib (``pip install 'surge[plot]'``); drawn with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from surge.clients.loadgen.results import level_key  # noqa: E402

__all__ = ["write_plot"]


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Top: p50/p99/max per second of each level's window, levels one after another. Bottom (a sweep of 2 or
    more levels): p50, p99 and p99.9 against achieved infer/s, one point per level."""
    levels = report["levels"]
    sweep = len(levels) > 1
    fig, axes = plt.subplots(2 if sweep else 1, 1, figsize=(10, 8 if sweep else 4.5), squeeze=False)
    ax = axes[0][0]
    offset = 0
    for level in levels:
        points = [p for p in level["timeline"] if p["p50_ms"] is not None]
        if not points:
            continue
        t = [offset + p["t_s"] for p in points]
        for key, style in (("p50_ms", "-"), ("p99_ms", "--"), ("max_ms", ":")):
            ax.plot(t, [p[key] for p in points], style, label=f"{level_key(level['load'])} {key[:-3]}")
        offset = t[-1] + 1
    ax.set_xlabel("seconds of measurement (levels one after another)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"surge bench {report['target']['url']} ({report['started_at']})")
    ax.legend(fontsize="small", ncol=3)
    ax.grid(True, which="both", alpha=0.3)
    if sweep:
        ax = axes[1][0]
        x = [level["infer_per_s"] for level in levels]
        for key in ("p50", "p99", "p99.9"):
            ax.plot(x, [level["latency_ms"][key] for level in levels], "o-", label=key)
        for level, xi in zip(levels, x):
            ax.annotate(level_key(level["load"]), (xi, level["latency_ms"]["p99"]), fontsize="small", xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("throughput (infer/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
