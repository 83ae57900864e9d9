"""Fault injection: each fault kind, executed in the real worker, seen as the documented error."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import ADD, CRASH, MUL, SUB, as_u32, pair, u32

from polyplug_isolated import (
    CallTimeout,
    Fault,
    FaultKind,
    InitFailed,
    PluginCallError,
    ResourceLimits,
    Runtime,
    WorkerCrashed,
)


def adder(rt, bundle_dir, **options):
    bundle = rt.load_bundle(bundle_dir("adder"), **options)
    return bundle, rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL, signal.SIGBUS])
def test_crash_on_the_nth_call(rt, bundle_dir, sig):
    bundle, add = adder(rt, bundle_dir)
    bundle.inject(Fault.crash(sig).on_call(3))
    assert [as_u32(add.call(1, pair(i, 1), 4)) for i in range(2)] == [1, 2]
    with pytest.raises(WorkerCrashed) as caught:
        add.call(1, pair(2, 1), 4)
    assert caught.value.signal is sig
    [record] = bundle.fault_log()
    assert (record.fault.kind, record.call, record.contract, record.function) == (
        FaultKind.CRASH,
        3,
        "test.add",
        1,
    )


def test_exit_with_a_code(rt, bundle_dir):
    bundle, add = adder(rt, bundle_dir)
    bundle.inject(Fault.exit(7))
    with pytest.raises(WorkerCrashed) as caught:
        add.call(0, pair(1, 1), 4)
    assert (caught.value.signal, caught.value.exitcode) == (None, 7)


def test_hang_ends_in_the_call_timeout(rt, bundle_dir):
    bundle, add = adder(rt, bundle_dir)
    bundle.inject(Fault.hang().on_call(1))
    with pytest.raises(CallTimeout):
        add.call(0, pair(1, 1), 4, timeout=0.3)


def test_delay_slows_the_call_and_keeps_its_answer(rt, bundle_dir):
    bundle, add = adder(rt, bundle_dir)
    bundle.inject(Fault.delay(ms=50))
    started = time.monotonic()
    assert as_u32(add.call(0, pair(20, 22), 4)) == 42
    assert time.monotonic() - started >= 0.05


def test_error_every_nth_call_of_one_function_only(rt, bundle_dir):
    bundle, add = adder(rt, bundle_dir)
    bundle.inject(Fault.error(code=300, message="injected").every(2).only(contract="test.add", function=0))
    outcomes = []
    for i in range(6):
        as_u32(add.call(1, pair(i, i), 4))  # function 1: never faulted
        try:
            outcomes.append(as_u32(add.call(0, pair(i, 1), 4)))
        except PluginCallError as exc:
            outcomes.append((exc.code, exc.message))
    assert outcomes == [1, (300, "injected"), 3, (300, "injected"), 5, (300, "injected")]
    assert [r.call for r in bundle.fault_log()] == [2, 4, 6]


def test_a_fault_for_another_contract_never_fires(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("multi"))
    bundle.inject(Fault.error().only(contract="test.mul"))
    sub = rt.resolve_guest_contract(rt.find_guest_contract(SUB, 1))
    mul = rt.resolve_guest_contract(rt.find_guest_contract(MUL, 1))
    assert as_u32(sub.call(0, pair(5, 3), 4)) == 2
    with pytest.raises(PluginCallError):
        mul.call(0, pair(5, 3), 4)


def test_corrupt_inverts_the_answer(rt, bundle_dir):
    bundle, add = adder(rt, bundle_dir)
    bundle.inject(Fault.corrupt().first(1))
    assert as_u32(add.call(0, pair(1, 2), 4)) == 3 ^ 0xFFFFFFFF
    assert as_u32(add.call(0, pair(1, 2), 4)) == 3  # first(1): once only


def test_leak_until_the_address_space_limit(rt, bundle_dir):
    bundle, add = adder(rt, bundle_dir, limits=ResourceLimits(address_space=1 << 30))
    bundle.inject(Fault.leak(mb=64))
    with pytest.raises(WorkerCrashed, match="limits.address_space"):
        for i in range(64):
            add.call(0, pair(i, 1), 4)
    assert len(bundle.fault_log()) > 1


def test_faults_compose_in_order(rt, bundle_dir):
    bundle, add = adder(rt, bundle_dir)
    bundle.inject(Fault.delay(ms=1), Fault.error(code=9, message="after the delay").on_call(2))
    assert as_u32(add.call(0, pair(1, 1), 4)) == 2
    with pytest.raises(PluginCallError, match="after the delay"):
        add.call(0, pair(1, 1), 4)
    assert [r.fault.kind for r in bundle.fault_log()] == [FaultKind.DELAY, FaultKind.DELAY, FaultKind.ERROR]


def test_clear_faults_disarms(rt, bundle_dir):
    bundle, add = adder(rt, bundle_dir)
    bundle.inject(Fault.error())
    with pytest.raises(PluginCallError):
        add.call(0, pair(1, 1), 4)
    bundle.clear_faults()
    assert as_u32(add.call(0, pair(1, 1), 4)) == 2


def test_after_fires_once_the_time_has_passed(rt, bundle_dir):
    bundle, add = adder(rt, bundle_dir)
    bundle.inject(Fault.error(message="late").after(0.2))
    assert as_u32(add.call(0, pair(1, 1), 4)) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            add.call(0, pair(1, 1), 4)
        except PluginCallError as exc:
            assert exc.message == "late"
            return
    pytest.fail("the fault never fired")


def failing_calls(bundle_dir, seed: int, calls: int = 300) -> list[int]:
    with Runtime() as rt:
        rt.load_bundle(bundle_dir("crasher"))
        bundle = rt.bundles[0]
        bundle.inject(Fault.error(code=5).with_probability(0.3, seed=seed))
        crasher = rt.resolve_guest_contract(rt.find_guest_contract(CRASH, 1))
        failed = []
        for i in range(calls):
            try:
                crasher.call(4, u32(i), 4)
            except PluginCallError:
                failed.append(i)
        assert [r.call - 1 for r in bundle.fault_log()] == failed
        return failed


def test_the_same_seed_gives_the_same_faults(bundle_dir):
    first, again, other = (failing_calls(bundle_dir, seed) for seed in (7, 7, 8))
    assert first == again
    assert first != other
    assert 40 < len(first) < 140  # about 30% of 300


def test_load_time_faults_act_on_polyplug_init(bundle_dir):
    with Runtime() as rt:
        with pytest.raises(InitFailed, match="SIGSEGV"):
            rt.load_bundle(bundle_dir("adder"), faults=[Fault.crash().during_init()])
        with pytest.raises(InitFailed, match="polyplug_init failed: injected init failure"):
            rt.load_bundle(bundle_dir("adder"), faults=[Fault.fail_init()])
        started = time.monotonic()
        rt.load_bundle(bundle_dir("adder"), faults=[Fault.slow_start(ms=200)])
        assert time.monotonic() - started >= 0.2
        assert rt.live_worker_count() == 1


def test_call_faults_given_at_load_are_armed_from_the_first_call(bundle_dir):
    with Runtime() as rt:
        bundle, add = adder(rt, bundle_dir, faults=[Fault.error(code=4).on_call(1)])
        with pytest.raises(PluginCallError):
            add.call(0, pair(1, 1), 4)
        assert as_u32(add.call(0, pair(1, 1), 4)) == 2
        assert len(bundle.fault_log()) == 1


def test_fault_values_are_checked():
    with pytest.raises(ValueError):
        Fault.error(code=0)
    with pytest.raises(ValueError):
        Fault.crash().on_call(0)
    with pytest.raises(ValueError):
        Fault.delay(ms=1).with_probability(1.5)
    with pytest.raises(ValueError):
        Fault.exit(300)
