"""Where a comparison's processes run: every thread of a worker on the CPUs a floor would use.

No dependency beyond the standard library, so the tests can place a worker too.
"""

from __future__ import annotations

import contextlib
import os


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus``, also those started while it pins.

    A worker may still be starting its parked threads: a thread cloned after
    the listing by a thread not yet pinned would keep the old CPUs (and one
    quick run in five measured wait=block colocated, 2.8 us instead of ~60).
    Passes repeat until one finds no new thread; every later thread is cloned
    by a pinned one and inherits the pin.
    """
    done: set[str] = set()
    while fresh := set(os.listdir(f"/proc/{pid}/task")) - done:
        for tid in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(tid), cpus)
        done |= fresh
