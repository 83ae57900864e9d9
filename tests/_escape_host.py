"""A host process for one escape attempt, run by test_containment.py in a subprocess.

An escape that works may kill its host, so each attempt gets a host of its
own (and may run as another user). Usage::

    python _escape_host.py SCENARIO[_without_namespaces] FIXTURES_ROOT CONTAINMENT(0|1) [LOCK_PATH]

It prints one JSON object: what the plugin managed and what the host saw.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import struct
import sys
import time
from pathlib import Path

from polyplug_isolated import Runtime, WorkerCrashed, guest_contract_id

ESCAPE = guest_contract_id("test.escape", 1)
ADD = guest_contract_id("test.add", 1)
OUTCOME = 8 + 1024
SECRET = b"host secret 8c1f"


def target(pid: int = 0, length: int = 0, addr: int = 0, name: bytes = b"") -> bytes:
    return struct.pack("<IIQ64s", pid, length, addr, name)


def outcome(data: bytes) -> dict[str, object]:
    err, length = struct.unpack_from("<iI", data)
    return {"err": err, "data": data[8 : 8 + length].decode("latin-1")}


def attempt(contract, function: int, args: bytes) -> dict[str, object]:
    try:
        return outcome(contract.call(function, args, OUTCOME, timeout=20.0))
    except WorkerCrashed as crash:
        return {"worker_died": str(crash.signal or crash.exitcode)}


ESCAPE_PIDS: list[int | None] = []  # the escape bundle's workers, as the host sees them


def escape(rt: Runtime, fixtures: Path, **options):
    ESCAPE_PIDS.append(rt.load_bundle(fixtures / "escape", **options).pid)
    return rt.resolve_guest_contract(rt.find_guest_contract(ESCAPE, 1))


def run(
    scenario: str, fixtures: Path, containment: bool, lock: str | None, from_spare: bool = False
) -> dict[str, object]:
    result: dict[str, object] = {}
    with Runtime(containment=containment, load_timeout=20.0, prestart=from_spare) as rt:
        if from_spare:  # the first load has the next worker forked and contained ahead
            rt.load_bundle(fixtures / "adder")
            deadline = time.monotonic() + 10
            while rt._zygote._pending is None and rt._zygote._spare is None and time.monotonic() < deadline:
                time.sleep(0.001)  # asked for (or already adopted) by the monitor
            with rt._zygote._lock:
                rt._zygote._collect_spare()
                result["spare"] = rt._zygote._spare[0].pid if rt._zygote._spare else None
        if scenario == "kill_parent":
            attacker = escape(rt, fixtures)
            result["getppid"] = attempt(attacker, 0, target())
            result["host_pid"] = attempt(attacker, 1, target(pid=os.getpid()))
        elif scenario == "proc_mem":
            buffer = ctypes.create_string_buffer(SECRET)
            address = ctypes.addressof(buffer)
            attacker = escape(rt, fixtures)
            result["peek"] = attempt(attacker, 2, target(os.getpid(), len(SECRET), address))
            result["poke"] = attempt(attacker, 3, target(os.getpid(), 5, address, b"PWNED"))
            result["host_buffer"] = buffer.value.decode("latin-1")
        elif scenario == "environ":
            attacker = escape(rt, fixtures, inherit_env=False)
            for name, pid in (("host", os.getpid()), ("parent", 0), ("init", 1)):
                result[name] = attempt(attacker, 4, target(pid, name=b"environ"))
            result["host_cmdline"] = attempt(attacker, 4, target(os.getpid(), name=b"cmdline"))
        elif scenario == "scribble":
            victim = rt.load_bundle(fixtures / "adder")
            add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
            report = rt.sandbox_report().get("adder")
            victim_pid = report.pid if report else victim.pid
            attacker = escape(rt, fixtures)
            result["scribble"] = attempt(attacker, 5, target(victim_pid))
            try:
                result["victim_answer"] = struct.unpack("<I", add.call(0, struct.pack("<II", 2, 3), 4))[0]
            except Exception as exc:
                result["victim_answer"] = f"{type(exc).__name__}: {exc}"
        elif scenario == "fallback":
            # Run on a kernel (or in a container) that refuses namespaces: this
            # host forbids them to itself and so to its workers.
            attacker = escape(rt, fixtures)
            report = rt.sandbox_report()["escape"]
            result["mechanisms"] = dict(report.mechanisms)
            result["host_pid"] = attempt(attacker, 1, target(pid=os.getpid()))
            buffer = ctypes.create_string_buffer(SECRET)
            result["peek"] = attempt(attacker, 2, target(os.getpid(), len(SECRET), ctypes.addressof(buffer)))
            result["environ"] = attempt(attacker, 4, target(os.getpid(), name=b"environ"))
            result["cmdline"] = attempt(attacker, 4, target(os.getpid(), name=b"cmdline"))
        elif scenario.startswith("daemon_"):
            bundle = rt.load_bundle(fixtures / "daemon", env={"POLYPLUG_TEST_DAEMON_LOCK": lock})
            print(json.dumps({"loaded": bundle.name}), flush=True)
            sys.stdin.readline()  # the test sees the daemon run, then lets this host go on
            if scenario == "daemon_unload":
                rt.unload_bundle(bundle.id)
                print(json.dumps({"unloaded": True}), flush=True)
                sys.stdin.readline()  # the test checks the lock now, with this host alive
            elif scenario == "daemon_host_exit":
                os._exit(0)  # no close(): the host just ends
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
    result["escape_pids"] = ESCAPE_PIDS
    return result


def refuse_namespaces() -> None:
    """Forbids unshare() to this process and its children, as some containers do."""
    from polyplug_isolated.worker._serve_ffi import lib

    if lib.ppw_sb_no_new_privs() != 0 or lib.ppw_sb_seccomp(0, 0) != 0:
        raise SystemExit("cannot install a seccomp filter in the host")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # to stderr
    name, root, contained = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
    if name == "fallback" or name.endswith("_without_namespaces"):
        refuse_namespaces()
        name = name.removesuffix("_without_namespaces")
    from_spare = name.endswith("_from_spare")
    name = name.removesuffix("_from_spare")
    lock = sys.argv[4] if len(sys.argv) > 4 else None
    print(json.dumps(run(name, root, contained, lock, from_spare)), flush=True)
