"""The demo: load a bundle, call it, crash another and survive, reload, report."""

from __future__ import annotations

import signal
import struct
import time
from collections.abc import Callable

from ._fixtures import fixture_path
from ._ids import guest_contract_id
from ._runtime import Runtime
from .errors import WorkerCrashed

ADD = guest_contract_id("test.add", 1)
CRASH = guest_contract_id("test.crash", 1)
CALLS = 20_000


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def run_demo(out: Callable[[str], object] = print) -> int:
    """Runs the demo, printing each step and a report; returns an exit status."""
    adder_dir, crasher_dir = fixture_path("adder"), fixture_path("crasher")
    report: list[tuple[str, str]] = []
    with Runtime() as rt:
        started = time.perf_counter()
        adder = rt.load_bundle(adder_dir)
        report.append(("load adder (zygote start, fork, dlopen, init)", _ms(time.perf_counter() - started)))
        add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
        (total,) = struct.unpack("<I", add.call(1, struct.pack("<II", 2, 3), 4))
        out(f"adder (pid {adder.pid}): add_primitive(2, 3) = {total}")

        args = struct.pack("<II", 20, 22)
        started = time.perf_counter()
        for _ in range(CALLS):
            add.call(1, args, 4)
        per_call = (time.perf_counter() - started) / CALLS
        report.append((f"isolated call round trip (mean of {CALLS})", f"{per_call * 1e6:.2f} us"))

        crasher = rt.load_bundle(crasher_dir)
        crash = rt.resolve_guest_contract(rt.find_guest_contract(CRASH, 1))
        (pong,) = struct.unpack("<I", crash.call(4, struct.pack("<I", 41), 4))
        out(f"crasher (pid {crasher.pid}): ping(41) = {pong}")
        started = time.perf_counter()
        try:
            crash.call(0, b"", 0)
        except WorkerCrashed as exc:
            detected = time.perf_counter() - started
            name = signal.Signals(exc.signal).name if exc.signal else f"exit {exc.exitcode}"
            out(f"crasher segfaulted in its worker: WorkerCrashed({name}); the host lives on")
            report.append(("crash -> WorkerCrashed in the caller", _ms(detected)))
        else:
            out("crasher did not crash: something is wrong")
            return 1
        (total,) = struct.unpack("<I", add.call(1, struct.pack("<II", 40, 2), 4))
        out(f"adder still answers after the crash: add_primitive(40, 2) = {total}")

        started = time.perf_counter()
        rt.reload_bundle(crasher_dir)
        report.append(("reload crasher (worker forked by the zygote)", _ms(time.perf_counter() - started)))
        (pong,) = struct.unpack("<I", crash.call(4, struct.pack("<I", 1), 4))
        out(f"crasher reloaded (pid {crasher.pid}), same handle: ping(1) = {pong}")

        started = time.perf_counter()
        rt.unload_bundle(adder.id)
        report.append(("unload adder (drain, dlclose, exit 0)", _ms(time.perf_counter() - started)))
    report.append(("workers left after close", str(rt.live_worker_count())))
    out("\nreport")
    width = max(len(label) for label, _ in report)
    for label, value in report:
        out(f"  {label:<{width}}  {value}")
    return 0
