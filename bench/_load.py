"""What else ran on the machine during a step: CPU used by other processes, and steal time.

On a 2-core guest one busy foreign process is enough to put the host and the
worker on one core, where every spin hand-off becomes a context switch; the
bench records this per step so a slow row can be told apart from a slow
library. Linux /proc only, clock-tick resolution (10 ms): a hint, not a
measurement.
"""

from __future__ import annotations

import os
import time

_TICK = os.sysconf("SC_CLK_TCK")


def _machine() -> tuple[int, int]:
    """(busy ticks of all CPUs, steal ticks) from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


def _ticks(pid: int | str) -> tuple[int, int]:
    """(utime + stime + cutime + cstime, parent pid) of one process, or (0, -1) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0, -1
    return sum(int(v) for v in fields[11:15]), int(fields[1])


def _tree() -> int:
    """Ticks used by this process and every descendant, live or reaped."""
    me = os.getpid()
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            used, ppid = _ticks(entry)
            if ppid >= 0:
                parents[int(entry)] = ppid
                ticks[int(entry)] = used
    total = ticks.get(me, 0)
    for pid in parents:
        ancestor = parents[pid]
        for _ in range(64):
            if ancestor == me:
                total += ticks[pid]
                break
            if ancestor not in parents:
                break
            ancestor = parents[ancestor]
    return total


class LoadMeter:
    """Brackets one step: ``start()``, run it, ``stop()`` -> foreign and steal CPU in cores."""

    def start(self) -> None:
        self._wall = time.monotonic()
        self._busy, self._steal = _machine()
        self._mine = _tree()

    def stop(self) -> dict:
        wall = time.monotonic() - self._wall
        busy, steal = _machine()
        mine = _tree()
        ticks = max(wall, 1e-3) * _TICK
        foreign = max(0, (busy - self._busy) - (mine - self._mine))
        return {
            "wall_s": wall,
            "foreign_cores": foreign / ticks,
            "foreign_ticks": foreign,
            "steal_cores": (steal - self._steal) / ticks,
            "steal_ticks": steal - self._steal,
        }
