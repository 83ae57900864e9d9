"""Calls run concurrently, each host thread on a worker thread of its own.

Against the ``threads`` fixture: ``tid`` answers the worker thread's id,
``count`` a ``__thread`` counter, ``sleep_ms`` sleeps, ``process_threads``
counts the worker's threads. Every test runs real workers under the leak guard.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ADD, CRASH, as_u32, pair, u32, wait_until
from polyplug_isolated._channel_ffi import lib
from polyplug_isolated.bench._placement import pin_process

from polyplug_isolated import CallTimeout, Fault, Runtime, WorkerCrashed, guest_contract_id
from polyplug_isolated._channel import ChannelFailure

THREADS = guest_contract_id("test.threads", 1)
TID, COUNT, SLEEP_MS, PROCESS_THREADS = range(4)


def threads_contract(rt, bundle_dir):
    rt.load_bundle(bundle_dir("threads"))
    return rt.resolve_guest_contract(rt.find_guest_contract(THREADS, 1))


def ask(contract, fn: int, args: bytes = b"", **options) -> int:
    return as_u32(contract.call(fn, args, 4, **options))


def on_threads(count: int, work):
    """Runs ``work(i)`` on ``count`` fresh threads released together; returns results in order."""
    start = threading.Barrier(count)

    def run(i: int):
        start.wait()
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_calls_from_different_threads_run_at_the_same_time(rt, bundle_dir):
    contract = threads_contract(rt, bundle_dir)
    on_threads(8, lambda i: ask(contract, TID))  # every thread has its worker thread
    began = time.monotonic()
    tids = on_threads(8, lambda i: ask(contract, SLEEP_MS, u32(200)))
    elapsed = time.monotonic() - began
    assert len(set(tids)) == 8
    # One call at a time would take 8 x 200 ms; at once, about 200 ms. The
    # bound is far from both, for a busy machine.
    assert elapsed < 8 * 0.2 * 0.6


def test_one_host_thread_always_runs_on_the_same_worker_thread(rt, bundle_dir):
    contract = threads_contract(rt, bundle_dir)

    def calls(i: int) -> tuple[set[int], list[int]]:
        tids = {ask(contract, TID) for _ in range(50)}
        counts = [ask(contract, COUNT) for _ in range(20)]
        return tids, counts

    seen = on_threads(4, calls)
    for tids, counts in seen:
        assert len(tids) == 1
        assert counts == list(range(1, 21))  # its own __thread counter, nobody else's
    assert len({next(iter(tids)) for tids, _ in seen}) == 4
    assert os.getpid() not in {next(iter(tids)) for tids, _ in seen}


def test_typed_and_batched_calls_run_on_the_calling_threads_worker_thread(rt, bundle_dir):
    contract = threads_contract(rt, bundle_dir)
    own = ask(contract, TID)
    assert {as_u32(out) for out in contract.call_many(SLEEP_MS, [u32(0)] * 5, 4)} == {own}
    assert ask(contract, TID, timeout=5.0) == own  # the full path, same lease


def test_a_host_thread_that_exits_frees_its_worker_thread(rt, bundle_dir):
    contract = threads_contract(rt, bundle_dir)
    main_tid = ask(contract, TID)
    wait_until(lambda: ask(contract, PROCESS_THREADS) == ask(contract, PROCESS_THREADS))
    before = ask(contract, PROCESS_THREADS)
    first: list[int] = []
    worker = threading.Thread(target=lambda: first.extend([ask(contract, TID), ask(contract, COUNT)]))
    worker.start()
    worker.join()
    # The thread's worker thread retires (a spare is started in its place, so
    # the worker's thread count goes back to what it was).
    wait_until(lambda: ask(contract, PROCESS_THREADS) == before)
    later: list[int] = []
    other = threading.Thread(target=lambda: later.extend([ask(contract, TID), ask(contract, COUNT)]))
    other.start()
    other.join()
    assert first[1] == later[1] == 1  # a fresh thread-local counter: not the exited thread's thread
    assert later[0] not in (first[0], main_tid)
    assert ask(contract, TID) == main_tid


def test_a_call_back_travels_on_the_calling_threads_slot(rt, bundle_dir):
    """The worker thread asks its host thread for a call back; the host replies on the same slot."""
    contract = threads_contract(rt, bundle_dir)
    own = ask(contract, TID)
    channel = contract.bundle.proxy.channel
    with pytest.raises(ChannelFailure) as caught:
        channel.call(0, lib.PP_FN_CALL_BACK_PROBE, b"", 0, 5.0)
    failure = caught.value
    # The host serves call backs (issue 12): an empty one is not a request it can read.
    assert (failure.status, failure.code) == (lib.PP_CALL_PLUGIN_ERROR, 1)
    assert "a call back this host cannot read" in failure.message
    assert ask(contract, TID) == own  # the slot and its thread go on serving this thread


def test_a_worker_thread_idle_past_thread_idle_timeout_retires(bundle_dir):
    with Runtime(thread_idle_timeout=0.2, load_timeout=5.0) as rt:
        contract = threads_contract(rt, bundle_dir)
        first = ask(contract, TID)
        assert [ask(contract, COUNT), ask(contract, COUNT)] == [1, 2]
        serving = host_tid(contract.bundle.worker_pid, first)
        wait_until(lambda: not os.path.exists(serving))  # it left, with nothing in flight
        assert ask(contract, COUNT) == 1  # the next call brought a fresh thread: fresh thread-locals
        assert ask(contract, TID) != first


def cpu_ns_and_sleeps(pid: int) -> tuple[int, int]:
    """CPU time (ns, schedstat) and voluntary context switches (sleeps) of every thread of ``pid``."""
    cpu = sleeps = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            cpu += int(f.read().split()[0])
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            sleeps += int(next(line for line in f if line.startswith("voluntary_ctxt_switches")).split()[1])
    return cpu, sleeps


def test_a_worker_thread_called_after_its_spin_window_stops_spinning_until_calls_come_quickly(rt, bundle_dir):
    """wait=auto: a spin nobody ends only takes a CPU from the threads that have work (a host
    calling many bundles in turn spreads its calls that way); a call soon after brings it back."""
    bundle = rt.load_bundle(bundle_dir("adder"))
    contract = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
    window = rt.config.spin_ns

    def call_after(pause_ns: int, calls: int) -> None:
        for _ in range(calls):
            until = time.perf_counter_ns() + pause_ns
            while time.perf_counter_ns() < until:  # pacing the calls, not waiting for anything
                pass
            assert as_u32(contract.call(0, pair(2, 3), 4)) == 5

    call_after(8 * window, 4)
    cpu_before, _ = cpu_ns_and_sleeps(bundle.worker_pid)
    call_after(8 * window, 100)
    cpu_after, _ = cpu_ns_and_sleeps(bundle.worker_pid)
    # A spin after each call would take a whole window each: 100 of them (~5 ms); a wake-up and
    # the call take a fraction of one (~1-2 ms for the 100 here).
    assert cpu_after - cpu_before < 60 * window, f"{(cpu_after - cpu_before) / 1e6:.2f} ms of CPU"
    _, sleeps_before = cpu_ns_and_sleeps(bundle.worker_pid)
    call_after(0, 2000)
    _, sleeps_after = cpu_ns_and_sleeps(bundle.worker_pid)
    # Spinning again: it does not sleep between these calls.
    assert sleeps_after - sleeps_before < 200, f"{sleeps_after - sleeps_before} sleeps in 2,000 calls"


def test_past_max_threads_calls_wait_for_an_idle_worker_thread(bundle_dir):
    with Runtime(max_threads=2, load_timeout=5.0) as rt:
        contract = threads_contract(rt, bundle_dir)
        base = ask(contract, PROCESS_THREADS)
        results = on_threads(6, lambda i: [ask(contract, COUNT) > 0 for _ in range(200)])
        assert all(all(answers) for answers in results)
        assert ask(contract, PROCESS_THREADS) <= base + 1  # at most 2 slot threads (main's is one)


def test_max_threads_must_fit_the_slots():
    with pytest.raises(ValueError, match="max_threads must be between 1 and slots"):
        Runtime(slots=4, max_threads=5)


def host_tid(pid: int, tid: int) -> str:
    """The /proc path of worker thread ``tid`` as its worker (in its own pid namespace) sees it.

    Counting the worker's threads instead would race the parked threads it starts and retires.
    """
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as status:
            nspid = next(line for line in status if line.startswith("NSpid:")).split()
        if int(nspid[-1]) == tid:
            return f"/proc/{pid}/task/{task}"
    raise AssertionError(f"worker {pid} has no thread {tid}")


def start_sleepers(contract, count: int, ms: int, **options):
    """``count`` threads each in a ``sleep_ms(ms)`` call; returns (threads, outcomes)."""
    outcomes: list[object] = [None] * count

    def sleeper(i: int) -> None:
        try:
            outcomes[i] = ask(contract, SLEEP_MS, u32(ms), **options)
        except Exception as exc:  # the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=sleeper, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    wait_until(lambda: contract.bundle.inflight == count)
    return threads, outcomes


def test_a_crash_wakes_every_call_in_flight_at_once(rt, bundle_dir):
    contract = threads_contract(rt, bundle_dir)
    threads, outcomes = start_sleepers(contract, 8, 30_000)
    began = time.monotonic()
    os.kill(contract.bundle.pid, signal.SIGSEGV)
    for thread in threads:
        thread.join(20)
    assert time.monotonic() - began < 10  # not after the 30 s calls
    assert all(isinstance(outcome, WorkerCrashed) for outcome in outcomes), outcomes


def test_a_crash_report_names_the_crashing_threads_call(rt, bundle_dir):
    """Another thread's call, started and ended while the crashing call is delayed, is not named."""
    rt.load_bundle(bundle_dir("crasher"), faults=[Fault.delay(300).only(function=0)])
    crasher = rt.resolve_guest_contract(rt.find_guest_contract(CRASH, 1))
    crashed: list[WorkerCrashed] = []

    def segfault() -> None:
        try:
            crasher.call(0, b"", 0)
        except WorkerCrashed as exc:
            crashed.append(exc)

    thread = threading.Thread(target=segfault)
    thread.start()
    wait_until(lambda: crasher.bundle.inflight == 1)  # in its delay, before the segfault
    assert as_u32(crasher.call(4, u32(1), 4)) == 2  # ping, on this thread's worker thread
    thread.join()
    assert "during a call: contract index 0, function 0" in crashed[0].stderr_tail


def test_a_timeout_kills_the_worker_and_names_itself_in_the_others_errors(rt, bundle_dir):
    contract = threads_contract(rt, bundle_dir)
    threads, outcomes = start_sleepers(contract, 7, 30_000)
    with pytest.raises(CallTimeout):
        ask(contract, SLEEP_MS, u32(30_000), timeout=0.5)
    for thread in threads:
        thread.join(20)
    assert all(isinstance(outcome, WorkerCrashed) for outcome in outcomes), outcomes
    for outcome in outcomes:
        assert "killed after a call to test.threads@1 function 2 timed out (0.5 s)" in str(outcome)


def test_unload_drains_every_threads_call(rt, bundle_dir):
    contract = threads_contract(rt, bundle_dir)
    threads, outcomes = start_sleepers(contract, 8, 300)
    rt.unload_bundle(contract.bundle.id)
    assert all(isinstance(outcome, int) for outcome in outcomes), outcomes
    assert len(set(outcomes)) == 8
    for thread in threads:
        thread.join()


def test_after_a_reload_each_threads_next_call_goes_to_the_new_worker(rt, bundle_dir):
    contract = threads_contract(rt, bundle_dir)
    before = on_threads(3, lambda i: (ask(contract, COUNT), ask(contract, COUNT)))
    assert before == [(1, 2)] * 3
    gate = threading.Event()
    reloaded = threading.Event()
    outcomes: list[tuple[int, int]] = []

    def caller() -> None:
        ask(contract, COUNT)
        gate.set()
        reloaded.wait()
        outcomes.append((ask(contract, COUNT), contract.bundle.pid))

    thread = threading.Thread(target=caller)
    thread.start()
    gate.wait()
    rt.reload_bundle(bundle_dir("threads"))
    reloaded.set()
    thread.join()
    assert outcomes == [(1, contract.bundle.pid)]  # a fresh worker thread in the new worker


INTERRUPTED = """
    import os, sys, threading
    from polyplug_isolated import Runtime, guest_contract_id

    with Runtime(drain_timeout=0.5, close_grace=0.5) as rt:
        rt.load_bundle(sys.argv[1])
        threads = rt.resolve_guest_contract(rt.find_guest_contract(guest_contract_id("test.threads", 1), 1))
        threads.call(0, b"", 4)

        def announce():  # once the call below is in flight, the parent sends SIGINT
            while threads.bundle.inflight == 0:
                pass
            print("in call", flush=True)

        threading.Thread(target=announce).start()
        try:
            threads.call(2, (60_000).to_bytes(4, "little"), 4)  # a minute, no timeout
            print("returned", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print("next call", int.from_bytes(threads.call(1, b"", 4), "little"), flush=True)
"""


def test_ctrl_c_interrupts_a_call_blocked_in_a_worker(bundle_dir, tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(INTERRUPTED))
    host = subprocess.Popen(
        [sys.executable, str(script), str(bundle_dir("threads"))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert host.stdout.readline() == "in call\n"
        host.send_signal(signal.SIGINT)
        out, _ = host.communicate(timeout=30)  # the call alone would take 60 s
    finally:
        host.kill()
        host.wait()
    # The next call runs on a fresh worker thread (the old one still sleeps).
    assert out == "interrupted\nnext call 1\n"
    assert host.returncode == 0


def allowed_cpus(pid: int) -> set[frozenset[int]]:
    """The CPU sets the threads of ``pid`` may run on (one entry per distinct set)."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to step aside to")
def test_a_worker_pinned_from_outside_stays_pinned_when_it_meets_its_caller(rt, bundle_dir):
    """A spinning worker thread that keeps meeting its host thread on one CPU
    steps aside, within the CPUs it is allowed now: a pin set from outside
    (taskset, a benchmark placing its sides) is kept."""
    contract = threads_contract(rt, bundle_dir)
    ask(contract, TID)
    cpu = min(os.sched_getaffinity(0))
    everywhere = os.sched_getaffinity(0)
    pid = contract.bundle.worker_pid
    os.sched_setaffinity(0, {cpu})
    try:
        pin_process(pid, {cpu})
        for _ in range(2_000):  # far more meetings on one CPU than the worker tolerates before stepping aside
            ask(contract, TID)
    finally:
        os.sched_setaffinity(0, everywhere)
    assert allowed_cpus(pid) == {frozenset({cpu})}


PAYLOAD = guest_contract_id("test.payload", 1)
CPU = 2  # payload's cpu(any) -> u32: where the call runs; its args are not read
LARGE = bytes(lib.PP_NEAR_BYTES)  # calls that move this much, in a row, run on their caller's CPU


def payload_contract(rt, bundle_dir):
    rt.load_bundle(bundle_dir("payload"))
    return rt.resolve_guest_contract(rt.find_guest_contract(PAYLOAD, 1))


def cpu_of_call(contract, args: bytes) -> int:
    return as_u32(contract.call(CPU, args, 4))


def cpu_of_large_calls(contract, cpu: int) -> int:
    """Two large calls in a row from this thread pinned to ``cpu``: where the second ran."""
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        cpu_of_call(contract, LARGE)
        return cpu_of_call(contract, LARGE)
    finally:
        os.sched_setaffinity(0, everywhere)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to choose from")
def test_large_calls_run_on_the_callers_cpu_and_a_small_one_frees_the_worker_thread(rt, bundle_dir):
    payload = payload_contract(rt, bundle_dir)
    everywhere = os.sched_getaffinity(0)
    pid = payload.bundle.worker_pid
    for cpu in sorted(everywhere) * 3:
        assert cpu_of_large_calls(payload, cpu) == cpu
        assert frozenset({cpu}) in allowed_cpus(pid)  # it waits there for the next large call
    cpu_of_call(payload, b"")  # a small call: the thread may go anywhere again
    assert allowed_cpus(pid) == {frozenset(everywhere)}
    cpu_of_call(payload, LARGE)  # one large call after small ones stays where it is
    assert allowed_cpus(pid) == {frozenset(everywhere)}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin apart")
def test_large_calls_stay_within_a_pin_from_outside(rt, bundle_dir):
    """The worker thread only comes to its caller's CPU where the CPUs it is
    allowed at that moment let it: a pin set from outside (taskset, before or
    while it waits near its caller) is kept, by the large calls and after them."""
    payload = payload_contract(rt, bundle_dir)
    mine, other = sorted(os.sched_getaffinity(0))[:2]
    pid = payload.bundle.worker_pid
    pin_process(pid, {other})
    assert cpu_of_large_calls(payload, mine) == other
    assert allowed_cpus(pid) == {frozenset({other})}
    pin_process(pid, os.sched_getaffinity(0))
    assert cpu_of_large_calls(payload, mine) == mine  # came near
    pin_process(pid, {other})  # while it waits near its caller
    cpu_of_call(payload, b"")
    assert cpu_of_large_calls(payload, mine) == other
    assert allowed_cpus(pid) == {frozenset({other})}
