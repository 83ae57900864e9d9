"""Unload drains: calls in flight finish, new calls are refused, then the worker exits 0."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import SLOW, as_u32, u32, wait_until
from polyplug_isolated.bench._scale import copies  # the bench's own copies of a fixture

from polyplug_isolated import BundleState, BundleUnavailable, Runtime, WorkerCrashed


def slow_contract(rt, bundle_dir):
    rt.load_bundle(bundle_dir("slow"))
    return rt.resolve_guest_contract(rt.find_guest_contract(SLOW, 1))


def test_unload_lets_calls_in_flight_finish_and_refuses_new_ones(rt, bundle_dir):
    slow = slow_contract(rt, bundle_dir)
    bundle = slow.bundle
    worker = bundle.proxy.process
    results: dict[int, object] = {}

    def call(ms: int):
        try:
            results[ms] = as_u32(slow.call(0, u32(ms), 4))
        except Exception as exc:
            results[ms] = exc

    in_flight = [threading.Thread(target=call, args=(ms,)) for ms in (101, 102, 103, 104)]
    for thread in in_flight:
        thread.start()
    wait_until(lambda: bundle.inflight == 4)

    def late_call():
        wait_until(lambda: bundle.state in (BundleState.DRAINING, BundleState.UNLOADED))
        call(1)

    late = threading.Thread(target=late_call)
    late.start()
    rt.unload_bundle(bundle.id)
    for thread in [*in_flight, late]:
        thread.join(10)

    assert {ms: results[ms] for ms in (101, 102, 103, 104)} == {101: 101, 102: 102, 103: 103, 104: 104}
    assert isinstance(results[1], BundleUnavailable)
    assert worker.returncode == 0
    assert bundle.state is BundleState.UNLOADED


def test_a_drain_past_the_timeout_kills_the_worker_and_says_so(bundle_dir):
    with Runtime(drain_timeout=0.3) as rt:
        slow = slow_contract(rt, bundle_dir)
        outcome: list[BaseException] = []

        def stuck_call():
            try:
                slow.call(0, u32(60_000), 4)
            except WorkerCrashed as exc:
                outcome.append(exc)

        caller = threading.Thread(target=stuck_call)
        caller.start()
        wait_until(lambda: slow.bundle.inflight == 1)
        rt.unload_bundle(slow.bundle.id)
        caller.join(10)
        assert slow.bundle.state is BundleState.UNLOADED
        [crash] = outcome
        assert "drain timeout" in str(crash)


def test_calls_on_a_draining_bundle_fail_at_once(rt, bundle_dir):
    slow = slow_contract(rt, bundle_dir)
    worker = slow.bundle.proxy.process
    outcomes: dict[str, object] = {}

    def record(name, fn, *args):
        try:
            outcomes[name] = fn(*args)
        except Exception as exc:
            outcomes[name] = exc

    # The blocking call keeps DRAINING observable; it must still be answered.
    blocker = threading.Thread(target=record, args=("blocker", slow.call, 0, u32(2000), 4))
    blocker.start()
    wait_until(lambda: slow.bundle.inflight == 1)
    unloader = threading.Thread(target=record, args=("unload", rt.unload_bundle, slow.bundle.id))
    unloader.start()
    wait_until(lambda: slow.bundle.state is BundleState.DRAINING)
    with pytest.raises(BundleUnavailable, match="DRAINING"):
        slow.call(1, u32(1), 4)
    blocker.join(10)
    unloader.join(10)
    assert not blocker.is_alive() and not unloader.is_alive()
    assert outcomes["blocker"] == u32(2000)  # the call in flight finished with its answer
    assert outcomes["unload"] is None  # the unload itself succeeded
    assert slow.bundle.state is BundleState.UNLOADED
    assert worker.returncode == 0  # a drained worker exits cleanly


def test_close_tells_every_idle_worker_to_unload_and_each_dlcloses_and_exits_0(bundle_dir, tmp_path):
    """close() has the monitor tell the idle workers at once; one never told would hold close() for
    its close_grace, then be sent SIGTERM."""
    rt = Runtime(close_grace=5.0)
    processes = [rt.load_bundle(path).proxy.process for path in copies(bundle_dir("adder"), tmp_path, 12)]
    started = time.monotonic()
    rt.close()
    assert time.monotonic() - started < 4.0
    assert [process.returncode for process in processes] == [0] * 12
