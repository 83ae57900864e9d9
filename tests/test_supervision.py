"""RestartPolicy: crashed bundles come back, within an intensity budget, with backoff."""

from __future__ import annotations

import os
import queue
import signal
import time

import pytest
from conftest import CRASH, SLOW, as_u32, u32, wait_until

from polyplug_isolated import (
    BundleEventKind,
    BundleState,
    BundleUnavailable,
    CallTimeout,
    RestartPolicy,
    Runtime,
    WorkerCrashed,
)
from polyplug_isolated._supervisor import Supervisor

FAST = RestartPolicy(max_restarts=2, backoff=0.01, window=60.0)


class Events:
    """on_event sink that tests wait on: no sleeps, a deadline per event."""

    def __init__(self):
        self.seen = queue.Queue()

    def __call__(self, event):
        self.seen.put(event)

    def next(self, kind: BundleEventKind, timeout: float = 10.0):
        while True:
            event = self.seen.get(timeout=timeout)
            if event.kind is kind:
                return event


def crasher_of(rt, bundle_dir):
    rt.load_bundle(bundle_dir("crasher"))
    return rt.resolve_guest_contract(rt.find_guest_contract(CRASH, 1))


def test_a_crashed_bundle_is_restarted_and_its_handles_keep_working(bundle_dir):
    events = Events()
    with Runtime(restart=FAST, on_event=events) as rt:
        crasher = crasher_of(rt, bundle_dir)
        handle = rt.find_guest_contract(CRASH, 1)
        first_pid = crasher.bundle.pid
        with pytest.raises(WorkerCrashed):
            crasher.call(0, b"", 0)
        assert events.next(BundleEventKind.CRASHED).detail.startswith("was killed by SIGSEGV")
        events.next(BundleEventKind.RESTARTING)
        restarted = events.next(BundleEventKind.RESTARTED)
        assert restarted.restarts == 1 and crasher.bundle.restarts == 1
        assert crasher.bundle.state is BundleState.READY
        assert crasher.bundle.pid not in (None, first_pid)
        assert rt.find_guest_contract(CRASH, 1) == handle  # re-resolved transparently
        assert as_u32(crasher.call(4, u32(1), 4)) == 2
        assert as_u32(rt.resolve_guest_contract(handle).call(4, u32(2), 4)) == 3


def test_the_policy_gives_up_after_its_budget(bundle_dir):
    events = Events()
    with Runtime(restart=RestartPolicy(max_restarts=1, backoff=0.01), on_event=events) as rt:
        crasher = crasher_of(rt, bundle_dir)
        with pytest.raises(WorkerCrashed):
            crasher.call(1, b"", 0)
        events.next(BundleEventKind.RESTARTED)
        with pytest.raises(WorkerCrashed):
            crasher.call(2, b"", 0)
        gave_up = events.next(BundleEventKind.GAVE_UP)
        assert "gave up after 1 restarts within 60 s" in gave_up.detail
        assert crasher.bundle.state is BundleState.CRASHED
        with pytest.raises(BundleUnavailable, match="gave up"):
            crasher.call(4, u32(1), 4)


def test_a_hang_killed_by_its_timeout_is_restarted(bundle_dir):
    events = Events()
    with Runtime(restart=FAST, on_event=events) as rt:
        rt.load_bundle(bundle_dir("slow"))
        slow = rt.resolve_guest_contract(rt.find_guest_contract(SLOW, 1))
        with pytest.raises(CallTimeout):
            slow.call(0, u32(60_000), 4, timeout=0.2)
        assert "timed out" in events.next(BundleEventKind.CRASHED).detail
        events.next(BundleEventKind.RESTARTED)
        assert as_u32(slow.call(1, u32(7), 4)) == 8


def test_calls_wait_out_a_pending_restart_up_to_their_timeout(bundle_dir):
    events = Events()
    slow_restart = RestartPolicy(max_restarts=1, backoff=30.0, jitter=0.0)
    with Runtime(restart=slow_restart, on_event=events) as rt:
        crasher = crasher_of(rt, bundle_dir)
        with pytest.raises(WorkerCrashed):
            crasher.call(0, b"", 0)
        events.next(BundleEventKind.RESTARTING)
        assert crasher.bundle.restart_pending and crasher.bundle.proxy is None  # 30 s away
        started = time.monotonic()
        with pytest.raises(BundleUnavailable, match="a restart is scheduled"):
            crasher.call(4, u32(1), 4, timeout=0.2)
        assert time.monotonic() - started >= 0.2  # it waited its whole timeout, not less
        assert crasher.bundle.restart_pending  # and the restart is still coming
        rt.unload_bundle(crasher.bundle.id)  # cancels the pending restart
        assert crasher.bundle.state is BundleState.UNLOADED


def test_a_call_made_during_a_restart_is_answered_by_the_new_worker(bundle_dir):
    events = Events()
    with Runtime(restart=RestartPolicy(max_restarts=1, backoff=0.3, jitter=0.0), on_event=events) as rt:
        crasher = crasher_of(rt, bundle_dir)
        with pytest.raises(WorkerCrashed):
            crasher.call(0, b"", 0)
        events.next(BundleEventKind.RESTARTING)
        assert as_u32(crasher.call(4, u32(1), 4)) == 2  # waits for the restart, then runs there
        assert crasher.bundle.restarts == 1


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 0.1), (1, 0.2), (2, 0.4), (5, 2.0), (10, 2.0)],
)
def test_backoff_doubles_up_to_its_cap(attempt, expected):
    policy = RestartPolicy(max_restarts=20, backoff=0.1, max_backoff=2.0, jitter=0.5)
    no_jitter = Supervisor(policy, restart=None, report=None, rng=lambda: 0.0)
    full_jitter = Supervisor(policy, restart=None, report=None, rng=lambda: 1.0)
    assert no_jitter.delay(attempt) == pytest.approx(expected)
    assert full_jitter.delay(attempt) == pytest.approx(expected / 2)


def test_policy_values_are_checked():
    with pytest.raises(ValueError):
        RestartPolicy(max_restarts=-1)
    with pytest.raises(ValueError):
        RestartPolicy(window=0)
    with pytest.raises(ValueError):
        RestartPolicy(jitter=2)


def test_a_restart_hanging_in_init_holds_back_no_other_restart_nor_close(bundle_dir, tmp_path):
    """Each restart runs on a thread of its own; close() kills a restart's worker that is still
    starting, as it does a load's, instead of waiting out its load_timeout (30 s here)."""
    gate = tmp_path / "hang"  # init_hang hangs in polyplug_init only while this file exists
    events = Events()
    policy = RestartPolicy(max_restarts=1, backoff=0.0, jitter=0.0)
    with Runtime(restart=policy, on_event=events, load_timeout=30.0) as rt:
        hanging = rt.load_bundle(bundle_dir("init_hang"), env={"POLYPLUG_TEST_HANG_IF": str(gate)})
        crasher = crasher_of(rt, bundle_dir)
        gate.touch()
        os.kill(hanging.pid, signal.SIGKILL)
        events.next(BundleEventKind.RESTARTING)
        wait_until(lambda: hanging.state is BundleState.RESTARTING)  # its new worker hangs in init
        with pytest.raises(WorkerCrashed):
            crasher.call(0, b"", 0)
        restarted = events.next(BundleEventKind.RESTARTED)
        assert restarted.bundle_name == crasher.bundle.name
        assert hanging.state is BundleState.RESTARTING
        started = time.monotonic()
    assert time.monotonic() - started < 10  # close() did not wait out the hanging init
    assert hanging.state is BundleState.UNLOADED
    while not events.seen.empty():  # a restart close() cut short is no failure
        assert events.seen.get().kind is not BundleEventKind.RESTART_FAILED
