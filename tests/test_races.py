"""Racing lifecycles and a misbehaving host: close during load, racing loads and unloads,
reloads under batched calls, fork(), a Runtime dropped without close().

Each case once broke the runtime (issue 10). Every test runs under the
autouse leak guard: no worker, segment name or fd may outlive it.
"""

from __future__ import annotations

import gc
import os
import struct
import threading
import weakref

import psutil
import pytest
from conftest import ADD, as_u32, pair, wait_until

from polyplug_isolated import (
    BundleState,
    BundleUnavailable,
    Fault,
    LifecycleConflict,
    LoaderError,
    Runtime,
    _lifetime,
)

SLOW_START_MS = 1000  # long enough for the racing call to arrive while a start is under way


@pytest.fixture
def isolated_runtime_options():
    """No spare: a worker that starts is a new child of the host, which ``workers()`` sees."""
    return {"load_timeout": 5.0, "drain_timeout": 5.0, "spare_worker": False}


def workers() -> set[int]:
    """The host's worker processes: its children but the runtimes' zygotes, which fork them."""
    zygotes = {runtime._zygote.pid for runtime in list(_lifetime._live)}
    return {child.pid for child in psutil.Process().children()} - zygotes


def in_thread(target):
    """Starts ``target`` in a thread; returns (thread, outcome list: the result or the exception)."""
    outcome: list[object] = []

    def body() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


# ---- item 2: close() racing load_bundle --------------------------------------------------------


def test_close_during_a_load_ends_the_load_with_a_loader_error(bundle_dir):
    rt = Runtime(load_timeout=30.0, spare_worker=False)
    before = workers()
    thread, outcome = in_thread(lambda: rt.load_bundle(bundle_dir("init_hang")))
    wait_until(lambda: len(workers() - before) == 1)  # its worker runs polyplug_init, which hangs
    rt.close()
    thread.join(10)
    assert not thread.is_alive(), "the load never returned"
    [error] = outcome
    assert isinstance(error, LoaderError) and "closed" in str(error), error
    assert rt.bundles == []


def test_close_during_a_reload_leaves_no_worker(bundle_dir):
    rt = Runtime(spare_worker=False)
    rt.load_bundle(bundle_dir("adder"), faults=[Fault.slow_start(SLOW_START_MS)])
    before = workers()
    thread, outcome = in_thread(lambda: rt.reload_bundle(bundle_dir("adder")))
    wait_until(lambda: len(workers() - before) == 1)
    rt.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert rt.bundles == []


# ---- item 3: racing lifecycle calls on one bundle ------------------------------------------------


def test_unload_during_a_reload_gets_a_clear_error_and_leaves_no_orphan(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("adder"), faults=[Fault.slow_start(SLOW_START_MS)])
    before = workers()
    thread, outcome = in_thread(lambda: rt.reload_bundle(bundle_dir("adder")))
    wait_until(lambda: len(workers() - before) == 1)  # the new worker is starting
    with pytest.raises(LifecycleConflict, match="'adder'.*reload"):
        rt.unload_bundle(bundle.id)
    thread.join(20)
    assert outcome == [bundle]
    assert bundle.state is BundleState.READY and rt.bundles == [bundle]
    wait_until(lambda: workers() == {bundle.pid})  # the old worker unloads after the reload returned
    rt.unload_bundle(bundle.id)
    assert bundle.state is BundleState.UNLOADED
    assert not rt.find_guest_contract(ADD, 1).found
    assert workers() == set()


def test_a_load_while_another_thread_loads_the_bundle_gets_a_clear_error_and_one_worker(rt, bundle_dir):
    thread, outcome = in_thread(
        lambda: rt.load_bundle(bundle_dir("adder"), faults=[Fault.slow_start(SLOW_START_MS)])
    )
    wait_until(lambda: len(workers()) == 1)  # the first load's worker is starting
    with pytest.raises(LifecycleConflict, match="'adder' is being loaded by another thread"):
        rt.load_bundle(bundle_dir("adder"))
    thread.join(20)
    [bundle] = outcome
    assert rt.bundles == [bundle] and workers() == {bundle.pid}
    assert len(rt.find_all_by_contract(ADD, 1)) == 1


def test_a_reload_of_a_bundle_not_loaded_loads_it_through_load_manifest(bundle_dir):
    """Serialising must not bypass load_manifest, where subclasses (the pytest plugin) hook loads."""

    class Counting(Runtime):
        loads = 0

        def load_manifest(self, manifest, options=None):
            Counting.loads += 1
            return super().load_manifest(manifest, options)

    with Counting() as rt:
        bundle = rt.reload_bundle(bundle_dir("adder"))
        assert Counting.loads == 1 and rt.bundles == [bundle]


# ---- item 4: a reload under batched calls -------------------------------------------------------------


def test_reloads_lose_no_batched_call_spanning_several_batches(bundle_dir):
    # 256-byte slots: 20 adds per batch, so each call_packed below takes 50 batches.
    with Runtime(payload_capacity=256) as rt:
        rt.load_bundle(bundle_dir("adder"))
        add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
        records = b"".join(pair(i, 1) for i in range(1000))
        expected = b"".join(struct.pack("<I", i + 1) for i in range(1000))
        stop = threading.Event()
        calls = [0]

        def hammer():
            while not stop.is_set():
                assert add.call_packed(1, records, 8, 4) == expected
                assert add.call_many(1, [pair(i, 1) for i in range(100)], 4)[-1] == struct.pack("<I", 100)
                calls[0] += 1

        thread, outcome = in_thread(hammer)
        try:
            for _ in range(15):
                seen = calls[0]
                # a batch is under way at each switch
                wait_until(lambda seen=seen: calls[0] > seen or outcome)
                rt.reload_bundle(bundle_dir("adder"))
        finally:
            stop.set()
            thread.join(20)
        assert outcome == [None], outcome


# ---- item 5: fork() in the host -----------------------------------------------------------------------


def in_child(job) -> str:
    """Runs ``job`` in a fork() child; returns what it returned (a str) or its error's repr."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and never return into pytest
        try:
            os.close(read)
            try:
                answer = str(job())
            except BaseException as exc:  # reported to the parent
                answer = f"{type(exc).__name__}: {exc}"
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode()
    wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid)
    return answer


def test_a_fork_child_cannot_call_or_close_the_parents_workers(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("adder"))
    add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
    assert as_u32(add.call(1, pair(1, 2), 4)) == 3
    pid = bundle.pid

    called = in_child(lambda: add.call(1, pair(1, 2), 4))
    assert called.startswith("BundleUnavailable") and "fork" in called, called
    batched = in_child(lambda: add.call_many(1, [pair(1, 2)] * 3, 4))
    assert batched.startswith("BundleUnavailable") and "fork" in batched, batched
    loaded = in_child(lambda: rt.load_bundle(bundle_dir("multi")))
    assert loaded.startswith("LoaderError") and "fork" in loaded, loaded
    closed = in_child(lambda: (rt.close(), rt.close(), "closed")[-1])
    assert closed == "closed"

    def own_runtime():  # what the message advises: a Runtime of the child's own works
        with Runtime() as mine:
            mine.load_bundle(bundle_dir("adder"))
            return as_u32(
                mine.resolve_guest_contract(mine.find_guest_contract(ADD, 1)).call(1, pair(2, 2), 4)
            )

    assert in_child(own_runtime) == "4"

    assert bundle.pid == pid and bundle.state is BundleState.READY
    assert as_u32(add.call(1, pair(40, 2), 4)) == 42
    assert rt.live_worker_count() == 1


# ---- item 7: a Runtime dropped without close() ------------------------------------------------------


def test_a_runtime_dropped_without_close_is_reclaimed(bundle_dir):
    rt = Runtime()
    rt.load_bundle(bundle_dir("adder"))
    add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
    assert as_u32(add.call(1, pair(1, 2), 4)) == 3
    pid = add.bundle.pid
    threads = {t for t in threading.enumerate() if t.name.startswith("polyplug")}
    assert threads
    dropped = weakref.ref(rt)
    del rt
    gc.collect()
    assert dropped() is None
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")
    wait_until(lambda: not any(t.is_alive() for t in threads))
    with pytest.raises(BundleUnavailable):  # a contract kept past its runtime says so
        add.call(1, pair(1, 2), 4)
