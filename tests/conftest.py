"""Shared test fixtures: built bundles, and a guard that fails any test that leaks.

The leak guard is autouse: after every test, no child process, /dev/shm entry
or file descriptor created during the test may survive it.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from pathlib import Path

import psutil
import pytest

from polyplug_isolated import Runtime, guest_contract_id
from polyplug_isolated._fixtures import build_fixtures

ADD = guest_contract_id("test.add", 1)
CRASH = guest_contract_id("test.crash", 1)
SLOW = guest_contract_id("test.slow", 1)
MUL = guest_contract_id("test.mul", 1)
SUB = guest_contract_id("test.sub", 1)


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def pair(a: int, b: int) -> bytes:
    return struct.pack("<II", a, b)


def as_u32(data: bytes) -> int:
    return struct.unpack("<I", data)[0]


def wait_until(predicate, timeout: float = 10.0) -> None:
    """Waits for observable state another process or thread changes; fails after ``timeout``.

    For state with no event to wait on (a C in-flight counter, a state the
    monitor thread sets): it re-checks every millisecond, it never guesses
    how long something takes.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout} s")
        time.sleep(0.001)


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    """All fixture bundles, compiled once per session."""
    return build_fixtures()


@pytest.fixture
def bundle_dir(fixtures_root: Path):
    """``bundle_dir("adder")`` -> the built bundle directory."""
    return lambda name: fixtures_root / name


@pytest.fixture
def rt():
    """A Runtime with short timeouts, closed at teardown."""
    with Runtime(load_timeout=5.0, drain_timeout=5.0) as runtime:
        yield runtime


def _snapshot() -> tuple[set[int], set[str], dict[str, str]]:
    me = psutil.Process()
    children = {child.pid for child in me.children(recursive=True)}
    shm = set(os.listdir("/dev/shm"))
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd listdir itself used, already closed
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return children, shm, fds


@pytest.fixture(autouse=True)
def no_leaks():
    """Fails the test if it left a worker process, a shared-memory entry or an fd behind."""
    children, shm, fds = _snapshot()
    yield
    after_children, after_shm, after_fds = _snapshot()
    leaked_children = after_children - children
    leaked_shm = after_shm - shm
    leaked_fds = {fd: target for fd, target in after_fds.items() if fds.get(fd) != target}
    problems = []
    if leaked_children:
        described = [
            f"{pid}: {' '.join(psutil.Process(pid).cmdline())}"
            for pid in leaked_children
            if psutil.pid_exists(pid)
        ]
        problems.append(f"child processes still running: {described or sorted(leaked_children)}")
    if leaked_shm:
        problems.append(f"/dev/shm entries left: {sorted(leaked_shm)}")
    if leaked_fds:
        problems.append(f"file descriptors left open: {leaked_fds}")
    if problems:
        pytest.fail("leak check: " + "; ".join(problems))
