"""Containment of workers, host side: the opt-in Sandbox, the policy sent to a worker, and the report.

Every worker is contained by default (``Runtime(containment=True)``); a
``Sandbox`` given to ``load_bundle`` restricts one bundle further. Both become
one policy value, sent in the load frame and applied once by the worker
(``polyplug_isolated.worker._contain.contain``) before the plugin's first
byte runs. The worker answers with what took effect (a ``contained`` frame,
sent before dlopen so that no plugin code can forge it), which
``Runtime.sandbox_report()`` shows; a mechanism the kernel refused is logged
once per runtime as a warning.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import ResourceLimits

_logger = logging.getLogger("polyplug_isolated")

ON = "on"
OFF = "off"

# Mechanism -> what it keeps a plugin from, and the kernel feature it needs.
MECHANISMS: dict[str, tuple[str, str]] = {
    "user_namespace": (
        "holds no capability over the host or other workers, even when the host runs as root",
        "user namespaces (CONFIG_USER_NS; unprivileged ones enabled)",
    ),
    "pid_namespace": (
        "cannot name, signal or trace any process outside; all it starts dies with it",
        "pid namespaces (CONFIG_PID_NS), plus a user namespace or CAP_SYS_ADMIN",
    ),
    "fresh_proc": (
        "sees in /proc only its own processes: not the host's environ, cmdline, fds or memory",
        "a mount namespace and a procfs mount of its pid namespace",
    ),
    "own_session": ("reaches only itself when it signals its process group", "setsid"),
    "capabilities": ("holds no capability, not even inside its namespaces", "capset, PR_CAPBSET_DROP"),
    "no_new_privs": ("cannot gain privileges through setuid or file capabilities", "PR_SET_NO_NEW_PRIVS"),
    "landlock": (
        "cannot ptrace or open /proc/<pid>/mem of any process outside its domain",
        "Landlock (Linux 5.13, lsm=landlock)",
    ),
    "landlock_scopes": (
        "cannot signal or reach abstract unix sockets outside its domain",
        "Landlock ABI 6 (Linux 6.12)",
    ),
    "seccomp": (
        "cannot ptrace, read or write other processes' memory, mount, unshare, load bpf or modules",
        "seccomp-bpf (Linux 3.5; TSYNC 3.17)",
    ),
    "files": ("sees only the paths its Sandbox lists", "Landlock filesystem rules (Linux 5.13)"),
    "network": ("cannot open sockets other than unix ones", "seccomp-bpf, Landlock ABI 4 for TCP"),
    "spawn": ("cannot fork or exec (threads are fine)", "seccomp-bpf"),
}
DEFAULT_MECHANISMS = tuple(name for name in MECHANISMS if name not in ("files", "network", "spawn"))

# What any worker reads to run at all, granted read-only under a Sandbox file view.
_SYSTEM_READ_ONLY = (
    "/usr",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/proc",
    "/sys/devices/system/cpu",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
)
_SYSTEM_WRITABLE = ("/dev/null",)


@dataclass(frozen=True)
class Sandbox:
    """Restrictions for one bundle's workers, on top of the default containment.

    ``load_bundle(path, sandbox=Sandbox(...))``; reloads and restarts keep it.

    Attributes:
        read_only: paths the plugin may read (and map executable); None leaves
            the filesystem as the default containment does (not restricted).
            With a list (even empty), the plugin sees only these, ``writable``,
            its bundle directory, its working directory and what any process
            needs to run (the Python installation, /usr, /lib, /proc of its own
            namespace, /dev/null...): ``SandboxReport.paths`` lists them all.
            Anything else fails with EACCES.
        writable: paths the plugin may read, write, create and delete under.
            Giving any restricts the filesystem as ``read_only`` does.
        network: whether it may open sockets other than unix ones. False (the
            default): socket() fails with EPERM, TCP bind/connect with EACCES.
        spawn: whether it may fork or exec. False (the default): fork, vfork,
            clone without CLONE_THREAD, execve and execveat fail with EPERM.
            Threads are unaffected.
        limits: resource limits for its workers (as ``load_bundle(limits=...)``,
            which it replaces; give one or the other).
    """

    read_only: tuple[str, ...] | None = None
    writable: tuple[str, ...] = ()
    network: bool = False
    spawn: bool = False
    limits: ResourceLimits | None = None

    def __post_init__(self) -> None:
        if self.read_only is not None:
            object.__setattr__(self, "read_only", _absolute(self.read_only, "read_only"))
        object.__setattr__(self, "writable", _absolute(self.writable, "writable"))

    @property
    def restricts_files(self) -> bool:
        return self.read_only is not None or bool(self.writable)


def _absolute(paths: Iterable[str | os.PathLike[str]], name: str) -> tuple[str, ...]:
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"Sandbox.{name} takes a sequence of paths, not one path: use ({paths!r},)")
    return tuple(os.path.abspath(os.fspath(path)) for path in paths)


def worker_policy(
    containment: bool, sandbox: Sandbox | None, bundle_dir: Path, cwd: str | None
) -> dict[str, Any] | None:
    """The policy a worker applies (the load frame's ``sandbox``); None: nothing to apply."""
    if not containment and sandbox is None:
        return None
    policy: dict[str, Any] = {"contain": containment, "files": None, "network": True, "spawn": True}
    if sandbox is not None:
        policy["network"] = sandbox.network
        policy["spawn"] = sandbox.spawn
        if sandbox.restricts_files:
            policy["files"] = {
                "read_only": [*_runtime_paths(bundle_dir, cwd), *(sandbox.read_only or ())],
                "writable": [*_SYSTEM_WRITABLE, *sandbox.writable],
            }
    return policy


def default_policy(containment: bool) -> dict[str, Any] | None:
    """The policy of a bundle loaded without a Sandbox: the one spare workers are contained with."""
    return worker_policy(containment, None, Path(), None)


def _runtime_paths(bundle_dir: Path, cwd: str | None) -> list[str]:
    """What the worker program itself reads after containment: Python, its packages, the bundle."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    here = str(Path(__file__).resolve().parent)
    worker = str(Path(__file__).resolve().parent.parent / "worker")
    search = [p for p in sys.path if p and os.path.isdir(p)]
    extra = [str(bundle_dir), *([cwd] if cwd else [])]
    return sorted({*_SYSTEM_READ_ONLY, *prefixes, here, worker, *search, *extra})


@dataclass(frozen=True)
class SandboxReport:
    """What contains one bundle's current worker, as the worker applied it.

    Attributes:
        bundle: the bundle's name.
        pid: the worker's pid.
        mechanisms: mechanism name -> "on", "off" (not asked for) or
            "unavailable: <why>" (asked for, refused by the kernel).
        paths: under a Sandbox file view, {"read_only": [...], "writable": [...]}:
            every path the plugin can reach; empty otherwise.
        seconds: how long the worker took to apply it (as it measured).
    """

    bundle: str
    pid: int | None
    mechanisms: Mapping[str, str]
    paths: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def in_force(self) -> frozenset[str]:
        """The mechanisms that took effect."""
        return frozenset(name for name, state in self.mechanisms.items() if state == ON)

    @property
    def missing(self) -> dict[str, str]:
        """Mechanisms asked for but refused, with the reason."""
        return {name: state for name, state in self.mechanisms.items() if state not in (ON, OFF)}

    def __str__(self) -> str:
        lines = [f"bundle {self.bundle!r} (worker {self.pid}, applied in {self.seconds * 1e3:.1f} ms):"]
        for name, state in self.mechanisms.items():
            what = f"the plugin {MECHANISMS[name][0]}" if state == ON else ""
            lines.append(f"  {name:16} {state:8} {what}".rstrip())
        return "\n".join(lines)


def read_report(
    bundle: str, pid: int | None, message: Mapping[str, Any], policy: Mapping[str, Any] | None
) -> SandboxReport:
    """The report in a worker's ``contained`` frame, shape-checked (the worker is untrusted)."""
    raw = message.get("mechanisms")
    mechanisms = {
        name: state
        for name, state in (raw.items() if isinstance(raw, dict) else ())
        if name in MECHANISMS and isinstance(state, str)
    }
    files = (policy or {}).get("files") or {}
    paths = {kind: tuple(files.get(kind, ())) for kind in ("read_only", "writable")} if files else {}
    seconds = message.get("seconds")
    seconds = float(seconds) if isinstance(seconds, (int, float)) and 0 <= seconds < 3600 else 0.0
    return SandboxReport(
        bundle, pid, {name: mechanisms.get(name, OFF) for name in MECHANISMS}, paths, seconds
    )


class RefusalLog:
    """Warns once per runtime about each mechanism the kernel refused, and why."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def note(self, report: SandboxReport) -> None:
        for name, why in report.missing.items():
            if (name, why) in self._seen:
                continue
            self._seen.add((name, why))
            what, needs = MECHANISMS[name]
            _logger.warning(
                "bundle %r: containment %s is unavailable (%s), so this does not hold: its plugin %s. "
                "It needs %s; Runtime.sandbox_report() shows what does hold",
                report.bundle,
                name,
                why.removeprefix("unavailable: "),
                what,
                needs,
            )
