"""Soak: millions of calls with periodic crashes, restarts and reloads; host resources stay flat.

Not part of the default run (marked ``soak``): ``python -m pytest -m soak -s``.
``POLYPLUG_SOAK_CALLS`` sets the number of calls (default 10 million).
"""

from __future__ import annotations

import os
import queue
import signal

import psutil
import pytest
from conftest import as_u32, pair

from polyplug_isolated import (
    BundleEventKind,
    BundleUnavailable,
    Fault,
    RestartPolicy,
    Runtime,
    WorkerCrashed,
    guest_contract_id,
)

PROBE = guest_contract_id("test.probe", 1)
ROUND = 200_000  # calls between two incidents


def resources() -> dict[str, int]:
    me = psutil.Process()
    return {
        "rss_mib": me.memory_info().rss >> 20,
        "fds": me.num_fds(),
        "shm_entries": len(os.listdir("/dev/shm")),
        "threads": me.num_threads(),
    }


@pytest.mark.soak
def test_soak_calls_crashes_reloads(bundle_dir):
    calls = int(os.environ.get("POLYPLUG_SOAK_CALLS", 10_000_000))
    events: queue.Queue = queue.Queue()
    versions = [bundle_dir("probe_v1"), bundle_dir("probe_v2")]
    policy = RestartPolicy(max_restarts=1_000_000, backoff=0.001, max_backoff=0.01, window=1.0)
    with Runtime(restart=policy, on_event=events.put, prestart=True) as rt:
        bundle = rt.load_bundle(versions[0])
        probe = rt.resolve_guest_contract(rt.find_guest_contract(PROBE, 1))
        args = pair(20, 22)
        warm = [probe.call(1, args, 4) for _ in range(ROUND)]
        assert set(warm) == {(42).to_bytes(4, "little")}
        start = resources()
        done = crashes = reloads = 0
        for round_number in range(max(1, calls // ROUND)):
            for _ in range(ROUND):
                if probe.call(1, args, 4) != b"*\x00\x00\x00":
                    pytest.fail("a wrong answer")
            done += ROUND
            if round_number % 2:
                bundle.inject(Fault.crash(signal.SIGKILL).on_call(1))
                with pytest.raises(WorkerCrashed):
                    probe.call(1, args, 4)
                while events.get(timeout=30).kind is not BundleEventKind.RESTARTED:
                    pass
                crashes += 1
            else:
                rt.reload_bundle(versions[round_number // 2 % 2])
                reloads += 1
            try:
                assert as_u32(probe.call(1, args, 4)) == 42
            except BundleUnavailable:
                pytest.fail("the bundle did not come back")
        end = resources()
    print(f"\nsoak: {done:,} calls, {crashes} crashes + restarts, {reloads} reloads")
    print(f"soak: host resources at start {start}, at end {end}")
    assert end["fds"] <= start["fds"] and end["shm_entries"] <= start["shm_entries"]
    assert end["threads"] <= start["threads"]
    assert end["rss_mib"] <= start["rss_mib"] + 20
