"""A plugin that crashes, aborts, exits or hangs becomes an exception; the host lives on."""

from __future__ import annotations

import signal
import threading

import pytest
from conftest import ADD, CRASH, SLOW, as_u32, pair, u32, wait_until

from polyplug_isolated import (
    BundleState,
    BundleUnavailable,
    CallTimeout,
    Runtime,
    WorkerCrashed,
)

# what goes wrong -> (crasher function, expected signal, expected exit code, the output's
# report of it: the signal's name, or none of them for a plain exit)
REPORTS = ("Segmentation fault", "Aborted")
CRASH_CASES = {
    "segfault": (0, signal.SIGSEGV, None, "Segmentation fault"),
    "abort": (1, signal.SIGABRT, None, "Aborted"),
    "exit": (2, None, 3, None),
}


def contract(rt, bundle_dir, name, contract_id):
    rt.load_bundle(bundle_dir(name))
    return rt.resolve_guest_contract(rt.find_guest_contract(contract_id, 1))


@pytest.mark.parametrize("case", sorted(CRASH_CASES))
def test_crash_in_a_call_is_worker_crashed_and_the_host_lives_on(rt, bundle_dir, case):
    function, sig, exitcode, output = CRASH_CASES[case]
    adder = contract(rt, bundle_dir, "adder", ADD)
    crasher = contract(rt, bundle_dir, "crasher", CRASH)
    with pytest.raises(WorkerCrashed) as caught:
        crasher.call(function, b"", 0)
    crash = caught.value
    assert (crash.signal, crash.exitcode) == (sig, exitcode)
    assert crash.bundle == "crasher" and crash.function == function
    for report in REPORTS:
        assert (report in crash.stderr_tail) == (report == output), (report, crash.stderr_tail)
    assert "outcome is unknown" in str(crash)
    assert crasher.bundle.state is BundleState.CRASHED
    assert as_u32(adder.call(0, pair(2, 2), 4)) == 4  # the other bundle never noticed
    with pytest.raises(BundleUnavailable, match="CRASHED: its worker .* is not restarted"):
        crasher.call(4, u32(1), 4)


def test_a_crashed_bundle_can_be_unloaded_and_loaded_again(rt, bundle_dir):
    crasher = contract(rt, bundle_dir, "crasher", CRASH)
    with pytest.raises(WorkerCrashed):
        crasher.call(0, b"", 0)
    rt.unload_bundle(crasher.bundle.id)
    assert rt.live_worker_count() == 0
    again = contract(rt, bundle_dir, "crasher", CRASH)
    assert as_u32(again.call(4, u32(9), 4)) == 10


def test_reload_brings_a_crashed_bundle_back(rt, bundle_dir):
    crasher = contract(rt, bundle_dir, "crasher", CRASH)
    with pytest.raises(WorkerCrashed):
        crasher.call(1, b"", 0)
    rt.reload_bundle(bundle_dir("crasher"))
    assert crasher.bundle.state is BundleState.READY
    assert as_u32(crasher.call(4, u32(1), 4)) == 2


def test_every_caller_waiting_on_a_dying_worker_gets_worker_crashed(rt, bundle_dir):
    slow = contract(rt, bundle_dir, "slow", SLOW)
    errors: list[BaseException] = []
    started = threading.Barrier(5)

    def wait_on_slow():
        started.wait()
        try:
            slow.call(0, u32(60_000), 4)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wait_on_slow) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    wait_until(lambda: slow.bundle.inflight == 4)
    slow.bundle.proxy.process.signal(signal.SIGKILL)
    for thread in threads:
        thread.join(10)
    assert len(errors) == 4
    assert all(isinstance(e, WorkerCrashed) and e.signal is signal.SIGKILL for e in errors)


def test_a_hung_call_times_out_and_the_worker_is_killed(rt, bundle_dir):
    slow = contract(rt, bundle_dir, "slow", SLOW)
    with pytest.raises(CallTimeout, match="no answer within 0.2 s") as caught:
        slow.call(0, u32(60_000), 4, timeout=0.2)
    assert isinstance(caught.value, TimeoutError)
    wait_until(lambda: slow.bundle.state is BundleState.CRASHED)
    assert "timed out" in slow.bundle.crash.death.kill_reason


def test_runtime_call_timeout_is_the_default(bundle_dir):
    with Runtime(call_timeout=0.2) as rt:
        slow = contract(rt, bundle_dir, "slow", SLOW)
        assert as_u32(slow.call(0, u32(1), 4)) == 1
        with pytest.raises(CallTimeout):
            slow.call(0, u32(60_000), 4)
