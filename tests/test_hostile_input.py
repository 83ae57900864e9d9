"""Hostile input from plugins and from the file system: the host stays bounded, prompt and typed.

Each case once broke the runtime (issue 10): output with no newline grew the
host without bound and starved every other worker's crash detection; a plugin
ignoring SIGUSR2 stretched timeouts by ``close_grace``; FIFO, device, huge and
deeply nested manifests blocked or crashed ``load_bundle``; bad ``file`` keys
and EMFILE raised untyped errors; a huge ``out_size`` was allocated before it
was refused; oversized registrations were reported as a crash.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytest
from conftest import as_u32, u32, wait_until

from polyplug_isolated import (
    BundleState,
    InitFailed,
    Runtime,
    WorkerCrashed,
    guest_contract_id,
)
from polyplug_isolated._monitor import OUTPUT_LINE_CAP

UNRULY = guest_contract_id("test.unruly", 1)
OVERSIZED = guest_contract_id("test.oversized", 1)
SPEW, DEAF_HANG, PING = 0, 1, 2


def unruly(rt: Runtime, bundle_dir):
    rt.load_bundle(bundle_dir("unruly"))
    return rt.resolve_guest_contract(rt.find_guest_contract(UNRULY, 1))


def run_in_thread(target) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, errors


# ---- item 1: output with no newline ---------------------------------------------------


class _Lengths(logging.Handler):
    """Collects the length of every output line the monitor hands on."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lengths: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lengths.append(len(record.args[0]))


def test_output_without_newline_is_cut_and_never_starves_other_workers(rt, bundle_dir):
    spewer = unruly(rt, bundle_dir)
    adder = rt.load_bundle(bundle_dir("adder"))
    handler = _Lengths()
    log = logging.getLogger("polyplug_isolated.bundle.unruly")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        thread, errors = run_in_thread(lambda: spewer.call(SPEW, b"", 4))
        # 8 MiB of one endless line reach the host in bounded pieces...
        wait_until(lambda: sum(handler.lengths) >= 8 << 20, timeout=30)
        assert max(handler.lengths) <= OUTPUT_LINE_CAP
        # ...and, while it keeps spewing, another worker's death is noticed at once.
        os.kill(adder.pid, signal.SIGKILL)
        wait_until(lambda: adder.state is BundleState.CRASHED, timeout=5)
        os.kill(spewer.bundle.pid, signal.SIGKILL)
        thread.join(10)
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    assert not thread.is_alive()
    assert [type(e) for e in errors] == [WorkerCrashed]


# ---- item 12: oversized registrations ------------------------------------------------------------------


def test_twenty_thousand_contracts_load_and_answer(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("oversized"), env={"OVERSIZED_CONTRACTS": "20000"})
    assert len(bundle.contracts) == 20_001
    last = rt.resolve_guest_contract(rt.find_guest_contract(20_000, 1))
    assert last.name == "test.many.19999"
    assert as_u32(last.call(0, u32(41), 4)) == 42
    own = rt.resolve_guest_contract(rt.find_guest_contract(OVERSIZED, 1))
    assert as_u32(own.call(0, u32(1), 4)) == 2


def test_a_one_mib_contract_name_loads(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("oversized"), env={"OVERSIZED_NAME_BYTES": str(1 << 20)})
    names = sorted(len(c.name) for c in bundle.contracts)
    assert names == [len("test.oversized"), 1 << 20]
    huge = rt.resolve_guest_contract(rt.find_guest_contract(0xB16, 1))
    assert as_u32(huge.call(0, u32(7), 4)) == 8


def test_registrations_beyond_the_handshake_cap_are_refused_not_called_a_crash(rt, bundle_dir):
    with pytest.raises(InitFailed) as caught:
        rt.load_bundle(bundle_dir("oversized"), env={"OVERSIZED_NAME_BYTES": str(80 << 20)})
    message = str(caught.value)
    assert "registrations" in message and "crash" not in message and "SIGKILL" not in message
    assert rt.bundles == []
