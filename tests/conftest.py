"""Shared test fixtures: built bundles, and a guard that fails any test that leaks.

The leak guard is autouse: after every test, no child process, /dev/shm entry
or file descriptor created during the test may survive it. It is the leak check
of the project's pytest plugin (polyplug_isolated.pytest_plugin, loaded through
its pytest11 entry point), whose ``isolated_runtime`` is also ``rt`` here.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from polyplug_isolated import guest_contract_id
from polyplug_isolated._fixtures import build_fixtures
from polyplug_isolated.pytest_plugin import leak_check

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


def settled(runtime) -> None:
    """Waits until the work a runtime's monitor does after each start is done: the next spare
    worker adopted and the next channel made. A runtime that outlives one test (a module
    fixture) must settle before the test's leak check counts its fds."""
    wait_until(lambda: runtime._zygote._spare is not None and runtime._channels._ready is not None)


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    """All fixture bundles, compiled once per session."""
    return build_fixtures()


@pytest.fixture
def bundle_dir(fixtures_root: Path):
    """``bundle_dir("adder")`` -> the built bundle directory."""
    return lambda name: fixtures_root / name


@pytest.fixture
def isolated_runtime_options():
    """Short load and drain timeouts for the plugin's ``isolated_runtime``."""
    return {"load_timeout": 5.0, "drain_timeout": 5.0}


@pytest.fixture
def rt(isolated_runtime):
    """A Runtime with short timeouts, closed and leak-checked at teardown."""
    return isolated_runtime


@pytest.fixture(autouse=True)
def no_leaks():
    """Fails the test if it left a worker process, a shared-memory entry or an fd behind."""
    with leak_check():
        yield
