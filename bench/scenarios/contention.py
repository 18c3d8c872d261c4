"""Foreign CPU load: what processes outside this benchmark used while a cell was measured.

On a shared 2-core box another job (a test suite, another benchmark) silently halves a server's rate. The
meter takes all CPUs' busy time from /proc/stat and subtracts this process tree's own CPU time (this
process, its reaped children, and every live descendant with its reaped children); the rest, per second of
wall time, is the foreign load in cores. Cells above ``BUSY_CORES`` are measured again after the box is idle.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

BUSY_CORES = 0.15
_TICK = os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + steal) / _TICK  # not irq/softirq: our own loopback traffic is handled there


def _ours_s() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime
    mine = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return total + sum(times[pid] for pid in mine if pid != os.getpid())


class Meter:
    """``with Meter() as m: ...`` then ``m.foreign_cores``: foreign CPU per wall second over the block."""

    def __enter__(self) -> Meter:
        self._busy, self._ours, self._wall = _busy_s(), _ours_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        foreign = (_busy_s() - self._busy) - (_ours_s() - self._ours)
        self.foreign_cores = max(0.0, foreign / wall) if wall > 0 else 0.0


def wait_idle(timeout_s: float, log, window_s: float = 2.0) -> float:  # type: ignore[no-untyped-def]
    """Wait until the foreign load over ``window_s`` is below BUSY_CORES (or ``timeout_s`` passes); returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        with Meter() as m:
            time.sleep(window_s)
        if m.foreign_cores < BUSY_CORES or time.monotonic() > deadline:
            return m.foreign_cores
        log(f"  the box is busy with other work ({m.foreign_cores:.2f} cores): waiting")
