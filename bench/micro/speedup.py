"""Print the kernel-vs-reference table from a pytest-benchmark JSON of bench/micro/test_kernels.py.

    .venv/bin/python -m bench.micro.speedup /tmp/kernels.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def table(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    medians: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        medians[b["group"]][b["params"]["impl"]] = b["stats"]["median"]
    lines = ["| kernel | Numba median (ms) | NumPy reference median (ms) | speedup |", "|---|---:|---:|---:|"]
    for group, m in medians.items():
        if {"kernel", "reference"} <= set(m):
            lines.append(f"| {group} | {m['kernel'] * 1e3:.2f} | {m['reference'] * 1e3:.2f} | {m['reference'] / m['kernel']:.1f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
