"""examples/retrying_host.py under every fault kind, through the pytest plugin.

Each test arms one fault plan with ``@pytest.mark.faults`` (in every worker
the adder bundle gets, reloads included) and checks exactly what the host's
caller sees: a right answer, a retried crash, or the error the host lets
through.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from polyplug_isolated import (
    CallTimeout,
    Fault,
    FaultKind,
    PluginCallError,
    ResourceLimits,
    WorkerCrashed,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # plain `pytest` (unlike `python -m pytest`) does not add the checkout
    sys.path.insert(0, str(ROOT))

from examples.retrying_host import RetryingAdder  # noqa: E402

CALL_TIMEOUT = 0.5


@pytest.fixture
def isolated_runtime_options():
    return {"call_timeout": CALL_TIMEOUT, "load_timeout": 5.0, "drain_timeout": 5.0}


@pytest.fixture
def host(isolated_runtime, fixture_bundle):
    return RetryingAdder(isolated_runtime, fixture_bundle.path("adder"))


@pytest.mark.faults(Fault.crash(signal.SIGSEGV).on_call(2), bundle="adder")
def test_crash_is_retried_in_a_fresh_worker(host):
    # Worker 1 answers call 1 and dies on call 2; each fresh worker answers the
    # retry (its call 1) and dies on the next call (its call 2).
    assert [host.add(a, 40) for a in range(4)] == [40, 41, 42, 43]
    assert [crash.signal for crash in host.crashes] == [signal.SIGSEGV] * 3
    assert all(crash.exitcode is None and crash.bundle == "adder" for crash in host.crashes)


@pytest.mark.faults(Fault.exit(3), bundle="adder")
def test_exit_on_every_call_gives_up_after_the_attempts(host):
    with pytest.raises(WorkerCrashed) as caught:
        host.add(1, 2)
    assert (caught.value.signal, caught.value.exitcode) == (None, 3)
    assert [(c.signal, c.exitcode) for c in host.crashes] == [(None, 3)] * host.attempts
    assert caught.value is host.crashes[-1]


@pytest.mark.faults(Fault.hang().on_call(2), bundle="adder")
def test_hang_is_a_call_timeout_and_not_retried(host):
    assert host.add(1, 2) == 3
    with pytest.raises(CallTimeout, match=f"no answer within {CALL_TIMEOUT:g} s"):
        host.add(2, 2)
    assert host.crashes == []


@pytest.mark.faults(Fault.delay(ms=50), bundle="adder")
def test_delay_keeps_the_answer(host):
    started = time.monotonic()
    assert host.add(20, 22) == 42
    assert time.monotonic() - started >= 0.05
    assert host.crashes == []


@pytest.mark.faults(Fault.error(code=300, message="injected").every(2), bundle="adder")
def test_plugin_error_goes_to_the_caller_at_once(host):
    assert host.add(1, 1) == 2
    with pytest.raises(PluginCallError) as caught:
        host.add(2, 2)
    assert (caught.value.code, caught.value.message, caught.value.bundle) == (300, "injected", "adder")
    assert host.add(3, 3) == 6  # the same worker: an error is not a crash
    assert host.crashes == []


@pytest.mark.faults(Fault.corrupt().on_call(1), bundle="adder")
def test_corrupt_answer_reaches_the_caller_unchecked(host):
    assert host.add(1, 2) == 3 ^ 0xFFFFFFFF  # this host has no check of its own to catch it
    assert host.add(1, 2) == 3


@pytest.mark.faults(Fault.leak(mb=128), bundle="adder")
def test_leak_past_the_memory_limit_is_a_crash_retried(isolated_runtime, fixture_bundle):
    limits = ResourceLimits(address_space=1 << 30)
    host = RetryingAdder(isolated_runtime, fixture_bundle.path("adder"), limits=limits)
    assert [host.add(a, 40) for a in range(20)] == list(range(40, 60))
    assert host.crashes, "1 GiB at 128 MiB a call: some worker must have run out"
    for crash in host.crashes:
        assert crash.signal is signal.SIGABRT
        assert "limits.address_space=1073741824" in str(crash)


def test_every_fault_kind_has_a_test_here():
    marked = [
        fault.kind
        for test in globals().values()
        for mark in getattr(test, "pytestmark", [])
        if mark.name == "faults"
        for fault in mark.args
    ]
    assert sorted(set(marked), key=lambda kind: kind.value) == list(FaultKind)
