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
from typing import Any

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

    def stop(self) -> dict[str, Any]:
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


def run_delay_ns(pids: list[int]) -> int:
    """Time every thread of ``pids`` spent runnable but waiting for a CPU (schedstat, ns)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # gone: nothing of it can wait any more
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a thread that just ended
    return total


# A round is disturbed when, over its wall time, the measured processes waited
# for a CPU more than WAIT_LIMIT of the time (someone else had it), or the
# hypervisor stole more than STEAL_LIMIT of a core, or other processes used
# more than FOREIGN_LIMIT cores. The tick-based signals (10 ms) need a few
# ticks before they count: a stray tick over a short round means nothing.
# The measured processes wait on each other too: on a quiet 2-core machine the
# spinning host and worker threads of a wait=auto round spent 9-25% of it
# runnable but waiting (10 quick runs), so only half a round spent waiting is
# read as a CPU shortage; another process taking a core shows as foreign CPU.
WAIT_LIMIT = 0.5
STEAL_LIMIT = 0.05
FOREIGN_LIMIT = 0.3
MIN_TICKS = 3


class RoundMeter:
    """``LoadMeter`` plus the run-queue wait of the processes a round measures."""

    def __init__(self) -> None:
        self._load = LoadMeter()
        self.pids: list[int] = [os.getpid()]

    def start(self) -> None:
        self._delay = run_delay_ns(self.pids)
        self._load.start()

    def stop(self) -> dict[str, Any]:
        load = self._load.stop()
        waited = (run_delay_ns(self.pids) - self._delay) / 1e9
        load["wait_frac"] = waited / max(load["wall_s"], 1e-6)
        reasons = []
        if load["wait_frac"] > WAIT_LIMIT:
            reasons.append(f"measured processes waited for a CPU {100 * load['wait_frac']:.0f}% of the time")
        if load["steal_ticks"] >= MIN_TICKS and load["steal_cores"] > STEAL_LIMIT:
            reasons.append(f"steal {load['steal_cores']:.2f} cores")
        if load["foreign_ticks"] >= MIN_TICKS and load["foreign_cores"] > FOREIGN_LIMIT:
            reasons.append(f"other processes used {load['foreign_cores']:.2f} cores")
        load["disturbed"] = "; ".join(reasons)
        return load
