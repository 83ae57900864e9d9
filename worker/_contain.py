"""Containment, worker side: one function, applied once before the plugin's first byte runs.

``contain(policy)`` takes the policy the host sent (polyplug_isolated._sandbox
builds it) and applies, in this order, each step needing the previous:

1. namespaces: user (capabilities over nothing outside), pid (nothing outside
   can be named; the namespace's init takes every descendant with it), mount
   — see sandbox.h for the three processes this makes;
2. a fresh /proc of the new pid namespace (the host's entries are gone);
3. its own session (a signal to "my process group" reaches only itself);
4. no capabilities left, in any set, and securebits locked;
5. no_new_privs (also what lets an unprivileged process use 6 and 7);
6. Landlock: one domain (no ptrace of, signal to, or abstract socket of
   anyone outside it) with the Sandbox's filesystem view and TCP rules;
7. seccomp-bpf on every thread: the default denylist, plus the Sandbox's
   network and process-creation rules.

It must run while the process has a single thread: unsharing a user
namespace requires it, and Landlock only binds the calling thread and the
threads it creates later. A step the kernel refuses is reported (never
fatal): the host logs a warning and shows it in ``Runtime.sandbox_report()``.

A zygote (a template process that forks workers) calls it the same way, first
thing in each forked child, while that child has one thread: the child then
stays outside as the worker's stand-in (the host's child: it forwards the
host's signals and ends as the worker ended, so the host reads the worker's
own exit status), its child is the namespace's init, and the grandchild
returns from here as the worker.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Any

from polyplug_isolated.worker._serve_ffi import ffi, lib

ON = "on"
OFF = "off"


def _refused(err: int) -> str:
    err = abs(err)
    return f"unavailable: {errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


def contain(policy: dict[str, Any] | None, control_fd: int) -> dict[str, Any]:
    """Applies ``policy`` to this process; returns what took effect, for the host.

    Returns ``{"mechanisms": {name: "on" | "off" | "unavailable: why"},
    "pid": the worker's pid as the host sees it, "seconds": how long it took}``. The processes left
    outside keep ``control_fd`` open until the worker's exit status is
    theirs, so the host never sees the socket close before it can reap
    that status.
    """
    started = time.perf_counter()
    mechanisms: dict[str, str] = {}
    pid = os.getpid()
    if not policy:
        return {"mechanisms": mechanisms, "pid": pid, "seconds": 0.0}
    if policy.get("contain"):
        pid = _namespaces(mechanisms, control_fd)
        _capabilities(mechanisms)
    mechanisms["no_new_privs"] = _step(lib.ppw_sb_no_new_privs())
    _landlock(mechanisms, policy)
    _seccomp(mechanisms, policy)
    return {"mechanisms": mechanisms, "pid": pid, "seconds": time.perf_counter() - started}


def _step(err: int) -> str:
    return ON if err == 0 else _refused(err)


def _namespaces(mechanisms: dict[str, str], control_fd: int) -> int:
    outer = ffi.new("int *")
    error = ffi.new("int *")
    entered = lib.ppw_sb_enter_namespaces(control_fd, error, outer)
    err = error[0]
    mechanisms["user_namespace"] = ON if entered & lib.PPW_NS_USER else _refused(err)
    mechanisms["pid_namespace"] = ON if entered & lib.PPW_NS_PID else _refused(err or errno.EPERM)
    if entered & lib.PPW_NS_REAPER:
        mechanisms["pid_namespace"] += (
            "; a subreaper kills what it leaves when it ends, unless SIGKILLed first"
        )
    if entered & lib.PPW_NS_PID and entered & lib.PPW_NS_MOUNT:
        mechanisms["fresh_proc"] = _step(lib.ppw_sb_mount_proc())
    else:
        mechanisms["fresh_proc"] = _refused(err or errno.EPERM)
    try:
        os.setsid()
        mechanisms["own_session"] = ON
    except OSError as exc:
        mechanisms["own_session"] = _refused(exc.errno or errno.EPERM)
    return int(outer[0])


def _capabilities(mechanisms: dict[str, str]) -> None:
    mechanisms["capabilities"] = _step(lib.ppw_sb_drop_capabilities())


def _landlock(mechanisms: dict[str, str], policy: dict[str, Any]) -> None:
    files = policy.get("files")
    contain = bool(policy.get("contain"))
    no_tcp = not policy.get("network", True)
    if not (contain or files or no_tcp):
        return
    read_only = [ffi.new("char[]", os.fsencode(p)) for p in (files or {}).get("read_only", [])]
    writable = [ffi.new("char[]", os.fsencode(p)) for p in (files or {}).get("writable", [])]
    result = lib.ppw_sb_landlock(
        contain,
        files is not None,
        ffi.new("char *[]", read_only) if read_only else ffi.NULL,
        len(read_only),
        ffi.new("char *[]", writable) if writable else ffi.NULL,
        len(writable),
        no_tcp,
    )
    abi = lib.ppw_sb_landlock_abi()
    if contain:
        mechanisms["landlock"] = ON if result > 0 else _refused(result)
        if result > 0 and abi < 6:
            mechanisms["landlock_scopes"] = f"unavailable: Landlock ABI {abi} < 6 (Linux 6.12 adds scopes)"
        else:
            mechanisms["landlock_scopes"] = ON if result > 0 else _refused(result)
    if files is not None:
        mechanisms["files"] = ON if result > 0 else _refused(result)


def _seccomp(mechanisms: dict[str, str], policy: dict[str, Any]) -> None:
    no_network = not policy.get("network", True)
    no_spawn = not policy.get("spawn", True)
    state = _step(lib.ppw_sb_seccomp(no_network, no_spawn))
    if policy.get("contain"):
        mechanisms["seccomp"] = state
    if no_network:
        mechanisms["network"] = state
    if no_spawn:
        mechanisms["spawn"] = state
