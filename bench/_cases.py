"""The measurements themselves: floors, baselines, isolated calls, batches, threads, payloads, Pipe, idle."""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util
import itertools
import json
import multiprocessing
import os
import statistics
import struct
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _measure, _rounds

ROOT = Path(__file__).resolve().parent.parent
ARGS = struct.pack("<II", 2, 3)
EXPECTED = struct.pack("<I", 5)
ADD_PRIMITIVE = 1
ECHO = 0
KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Plan:
    """How much to measure; ``quick`` is the CI smoke size."""

    quick: bool
    latency_n: int
    warmup: int
    throughput_n: int
    block_n: int
    pipe_n: int
    thread_counts: tuple[int, ...]
    thread_total: int
    packed_records: int
    list_records: int
    payload: tuple[tuple[int, int], ...]  # (size, calls)
    floor_spin_n: int
    floor_sem_n: int
    idle_settle_s: float
    idle_window_s: float
    budget_s: float  # the longest any one timing loop may run
    round_n: int  # calls per side per round of an interleaved comparison
    block_round_n: int  # the same for wait=block and its floor
    batch_round_repeats: int  # batches per side per round of the rate targets
    rounds: _rounds.RoundPlan

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                quick=True,
                latency_n=20_000,
                warmup=2_000,
                throughput_n=20_000,
                block_n=2_000,
                pipe_n=2_000,
                thread_counts=(1, 2, 4, 8),
                thread_total=8_000,
                packed_records=100_000,
                list_records=10_000,
                payload=((8, 5_000), (4 * KiB, 2_000), (MiB, 100)),
                floor_spin_n=50_000,
                floor_sem_n=2_000,
                idle_settle_s=0.5,
                idle_window_s=1.0,
                budget_s=0.4,
                round_n=5_000,
                block_round_n=300,
                batch_round_repeats=3,
                rounds=_rounds.RoundPlan(rounds=9, min_clean=6, max_rounds=18),
            )
        return cls(
            quick=False,
            latency_n=300_000,
            warmup=20_000,
            throughput_n=300_000,
            block_n=50_000,
            pipe_n=30_000,
            thread_counts=(1, 2, 4, 8),
            thread_total=200_000,
            packed_records=100_000,
            list_records=10_000,
            payload=(
                (8, 100_000),
                (64, 100_000),
                (512, 100_000),
                (4 * KiB, 50_000),
                (32 * KiB, 20_000),
                (256 * KiB, 3_000),
                (MiB, 1_000),
            ),
            floor_spin_n=500_000,
            floor_sem_n=50_000,
            idle_settle_s=0.5,
            idle_window_s=2.0,
            budget_s=4.0,
            round_n=40_000,
            block_round_n=4_000,
            batch_round_repeats=20,
            rounds=_rounds.RoundPlan(rounds=21, min_clean=14, max_rounds=42),
        )


@dataclass
class Case:
    """One row: a latency histogram (of batches of ``per`` calls) and a throughput."""

    name: str
    label: str
    group: str
    kind: str  # "latency": ratio of p50s; "throughput": ratio of calls/s
    hist: object
    calls_per_s: float
    baseline: str
    per: int = 1
    note: str = ""
    diagnostic: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        return _measure.summarize(self.hist, self.per)


def size_label(size: int) -> str:
    if size >= MiB and size % MiB == 0:
        return f"{size // MiB} MiB"
    if size >= KiB and size % KiB == 0:
        return f"{size // KiB} KiB"
    return f"{size} B"


def polyplug_available() -> bool:
    return all(importlib.util.find_spec(name) for name in ("polyplug", "polyplug_loaders_native"))


# ---- floors -----------------------------------------------------------------

FLOOR_LABELS = {
    "spin": "C floor: spin (atomics + pause)",
    "sem": "C floor: sem_t",
    "sem-1cpu": "C floor: sem_t, one CPU (diag)",
}


def floor_case(floor, mode: str, plan: Plan) -> Case:
    rounds = plan.floor_spin_n if mode == "spin" else plan.floor_sem_n
    samples, summary = floor.run(mode, rounds, max(100, rounds // 20), plan.budget_s)
    return Case(
        name=f"floor.{mode}",
        label=FLOOR_LABELS[mode],
        group="floor",
        kind="latency",
        hist=_measure.histogram_of(samples),
        calls_per_s=summary["rounds"] * 1e9 / summary["wall_ns"],
        baseline="inproc",
        diagnostic=mode == "sem-1cpu",
    )


# ---- in-process baselines (subprocesses) -------------------------------------


def _inproc(request: dict[str, Any], plan: Plan) -> dict[str, Any]:
    request = {**request, "budget_s": plan.budget_s}
    proc = subprocess.run(
        [sys.executable, "-m", f"{__package__}._inproc"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench._inproc {request['mode']} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout)


def inproc_payload(bundle: Path, plan: Plan) -> list[Case]:
    answer = _inproc({"mode": "cffi-payload", "bundle": str(bundle), "sizes": list(plan.payload)}, plan)
    out = []
    for size, _ in plan.payload:
        case = answer["cases"][str(size)]
        out.append(
            Case(
                name=f"payload.inproc.{size}",
                label=f"echo {size_label(size)}, in-process",
                group="payload",
                kind="latency",
                hist=_measure.decode(case["hist"]),
                calls_per_s=case["calls_per_s"],
                baseline="inproc",
                extra={"size": size},
            )
        )
    return out


class BaselineServer:
    """A ``bench._inproc`` subprocess answering one round of one side per request.

    Started inside ``pinned()``, it runs on the measuring CPU like the bench's
    own side; between requests it sleeps on its stdin.
    """

    def __init__(self, mode: str, bundle: Path, plan: Plan) -> None:
        self.mode = mode
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._inproc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        self.sides = self._ask({"mode": mode, "bundle": str(bundle), "budget_s": plan.budget_s})["ready"]

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(30)
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"bench._inproc {self.mode} exited with {self.proc.returncode}:\n{stderr}")
        return json.loads(line)

    def side(self, name: str, n: int, warmup: int) -> _rounds.Side:
        def measure() -> tuple[float, Any]:
            answer = self._ask({"side": name, "n": n, "warmup": warmup})
            return answer["p50_ns"], _measure.decode(answer["hist"])

        return _rounds.Side(name, measure)

    def calls_per_s(self, name: str, n: int) -> float:
        return self._ask({"side": name, "n": n, "kind": "throughput"})["calls_per_s"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def local_side(name: str, fn: Callable[[], object], n: int, warmup: int) -> _rounds.Side:
    """A side measured in this process: one round of ``n`` timed calls of ``fn``."""

    def measure() -> tuple[float, Any]:
        samples = _measure.time_each(fn, n, warmup)
        return float(statistics.median(samples)), _measure.histogram_of(samples)

    return _rounds.Side(name, measure)


def rate_side(name: str, fn: Callable[[], object], repeats: int, records: int) -> _rounds.Side:
    """A batch side: one round times ``repeats`` batches; its value is records per second."""

    def measure() -> tuple[float, Any]:
        samples = _measure.time_each(fn, repeats, 1)
        return records * len(samples) * 1e9 / max(sum(samples), 1), _measure.histogram_of(samples)

    return _rounds.Side(name, measure)


def floor_side(floor: Any, mode: str, n: int, budget_s: float, cpus: set[int]) -> _rounds.Side:
    """One round of the C floor binary (a fresh pair of processes each round), started on ``cpus``."""

    def measure() -> tuple[float, Any]:
        pinned = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cpus)
        try:
            samples, _ = floor.run(mode, n, max(100, n // 20), budget_s)
        finally:
            os.sched_setaffinity(0, pinned)
        return float(statistics.median(samples)), _measure.histogram_of(samples)

    return _rounds.Side(f"floor.{mode}", measure)


# ---- multiprocessing.Pipe --------------------------------------------------------


def pipe_round_trip(plan: Plan, pinned=contextlib.nullcontext) -> Case:
    """The child starts unpinned (like a worker); the round trips are timed inside ``pinned()``."""
    parent, child = multiprocessing.Pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", f"{__package__}._echo", str(child.fileno())],
        cwd=ROOT,
        pass_fds=(child.fileno(),),
    )
    child.close()
    try:
        message = ARGS
        send, recv = parent.send_bytes, parent.recv_bytes

        def round_trip() -> bytes:
            send(message)
            return recv()

        if round_trip() != message:
            raise RuntimeError("the Pipe echo child answered something else")
        with pinned():
            samples = _measure.time_each(round_trip, plan.pipe_n, max(100, plan.pipe_n // 20))
            calls_per_s = _measure.throughput(round_trip, plan.pipe_n)
    finally:
        with contextlib.suppress(OSError):
            parent.send_bytes(b"")
        parent.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return Case(
        name="pipe",
        label="multiprocessing.Pipe, 8 B",
        group="pipe",
        kind="latency",
        hist=_measure.histogram_of(samples),
        calls_per_s=calls_per_s,
        baseline="inproc",
        note="send_bytes + recv_bytes to an echoing child",
    )


# ---- the isolated runtime --------------------------------------------------------


def contract_of(rt, name: str):
    from polyplug_isolated import guest_contract_id

    return rt.resolve_guest_contract(rt.find_guest_contract(guest_contract_id(name, 1), 1))


def switches(pid: int) -> int:
    """Context switches (voluntary + involuntary) of every thread of ``pid`` so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:
            continue  # a thread that just ended
    return total


def timed_with_switches(contract, fn, n: int, warmup: int) -> tuple[array, dict]:
    """``time_each``, plus how often the worker and this process switched context per call.

    About 0 per call: both sides stayed on their cores (spin hand-offs); about
    1 or more: the worker slept or was preempted on nearly every call.
    """
    _measure.warm(fn, warmup)
    pid = contract.bundle.worker_pid
    worker_before, host_before = switches(pid), switches(os.getpid())
    samples = _measure.time_each(fn, n, 0)
    calls = max(len(samples), 1)
    return samples, {
        "worker_switches_per_call": (switches(pid) - worker_before) / calls,
        "host_switches_per_call": (switches(os.getpid()) - host_before) / calls,
    }


def isolated_single(contract, wait: str, plan: Plan) -> Case:
    call = functools.partial(contract.call, ADD_PRIMITIVE, ARGS, 4)
    if call() != EXPECTED:
        raise RuntimeError(f"isolated add_primitive(2, 3) is not 5 (wait={wait})")
    n = plan.block_n if wait == "block" else plan.latency_n
    warmup = max(100, n // 20) if wait == "block" else plan.warmup
    samples, placement = timed_with_switches(contract, call, n, warmup)
    calls_per_s = _measure.throughput(call, n)
    return Case(
        name=f"isolated.{wait}",
        label=f"isolated, wait={wait}",
        group="isolated",
        kind="latency",
        hist=_measure.histogram_of(samples),
        calls_per_s=calls_per_s,
        baseline="inproc",
        note="GuestContract.call(1, args, 4) -> bytes",
        extra=placement,
    )


def raw_call(contract: Any) -> Callable[[], int]:
    """The one cffi call ``GuestContract.call`` makes (``pp_call_small``): an int, no Python wrapper."""
    from polyplug_isolated._channel_ffi import lib

    proxy, _, index = contract.route()
    proxy.channel.cache_lease(-1.0)  # pp_call_small serves the calling thread's slot (thread mirroring)
    call = functools.partial(
        lib.pp_call_small, proxy.channel.conn, index, ADD_PRIMITIVE, ARGS, len(ARGS), 4, -1.0
    )
    if call() != 5:
        raise RuntimeError("pp_call_small changed: add_primitive(2, 3) did not answer 5")
    return call


def typed_calls(rt: Any) -> tuple[Callable[[], int], Callable[[], int]]:
    """``add_primitive(2, 3)`` through the typed proxy from api.toml: positional, and with keywords."""
    add = rt.contract("test.add")
    positional = functools.partial(add.add_primitive, 2, 3)
    keywords = functools.partial(add.add_primitive, a=2, b=3)
    if positional() != 5 or keywords() != 5:
        raise RuntimeError("the typed add_primitive(2, 3) is not 5")
    return positional, keywords


def packed_call(contract: Any, plan: Plan) -> Callable[[], bytes]:
    """``call_packed`` of ``plan.packed_records`` (a, b) records, checked once."""
    records = plan.packed_records
    packed = array("I", [2, 3]) * records
    call = functools.partial(contract.call_packed, ADD_PRIMITIVE, packed, 8, 4)
    out = call()
    if len(out) != 4 * records or out[:4] != EXPECTED or out[-4:] != EXPECTED:
        raise RuntimeError("call_packed answered wrongly")
    return call


def many_call(contract: Any, plan: Plan) -> Callable[[], list[bytes]]:
    """``call_many`` of ``plan.list_records`` tuples (Struct.pack of each included), checked once."""
    records = plan.list_records
    pairs = [(i, i + 1) for i in range(records)]
    pack = struct.Struct("<II").pack
    call_many = contract.call_many

    def call() -> list[bytes]:
        return call_many(ADD_PRIMITIVE, itertools.starmap(pack, pairs), 4)

    outs = call()
    if len(outs) != records or outs[-1] != struct.pack("<I", 2 * records - 1):
        raise RuntimeError("call_many answered wrongly")
    return call


def threads(contract, count: int, plan: Plan) -> list[Case]:
    n_each = max(1, plan.thread_total // count)

    def make_fn():
        return functools.partial(contract.call, ADD_PRIMITIVE, ARGS, 4)

    pid = contract.bundle.worker_pid
    worker_before, host_before = switches(pid), switches(os.getpid())
    samples, calls_per_s, calls = _measure.threaded(make_fn, count, n_each, max(10, n_each // 20))
    placement = {
        "worker_switches_per_call": (switches(pid) - worker_before) / max(calls, 1),
        "host_switches_per_call": (switches(os.getpid()) - host_before) / max(calls, 1),
    }
    case = Case(
        name=f"threads.{count}",
        label=f"isolated, auto, {count} thread{'s' if count > 1 else ''}",
        group="threads",
        kind="throughput",
        hist=_measure.histogram_of(samples),
        calls_per_s=calls_per_s,
        baseline="inproc",
        note="p50/p99 per call; calls/s of all threads together",
        extra={"threads": count, **placement},
    )
    from . import _threads  # mirrored threads: add and a 1 ms sleep, isolated beside in-process

    return [case, *_threads.cases(count, plan)]


def payload(contract, size: int, n: int) -> Case:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    args = struct.pack("<Q", size) + data
    call = functools.partial(contract.call, ECHO, args, size)
    if call() != data:
        raise RuntimeError(f"isolated echo of {size} bytes came back different")
    samples, placement = timed_with_switches(contract, call, n, max(10, n // 10))
    return Case(
        name=f"payload.isolated.{size}",
        label=f"echo {size_label(size)}, isolated",
        group="payload",
        kind="latency",
        hist=_measure.histogram_of(samples),
        calls_per_s=_measure.throughput(call, n),
        baseline=f"payload.inproc.{size}",
        extra={"size": size, **placement},
    )


# ---- the idle worker ---------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (schedstat: ns resolution, not ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
    return total


def idle_worker(contract, pid: int, plan: Plan) -> dict[str, Any]:
    """After a burst of calls, waits out the spin window and measures the worker's CPU use."""
    call = functools.partial(contract.call, ADD_PRIMITIVE, ARGS, 4)
    burst_cpu, burst_t0 = cpu_ns(pid), time.perf_counter_ns()
    _measure.warm(call, plan.warmup)
    # The same meter over the burst, to show it is not stuck at 0. Only roughly:
    # a running thread's counter can lag until its next tick or switch; a
    # sleeping one's (the idle window below) is exact.
    burst = 100.0 * (cpu_ns(pid) - burst_cpu) / (time.perf_counter_ns() - burst_t0)
    time.sleep(plan.idle_settle_s)
    ticks_before = _psutil_cpu(pid)
    before, t0 = cpu_ns(pid), time.perf_counter_ns()
    time.sleep(plan.idle_window_s)
    after, t1 = cpu_ns(pid), time.perf_counter_ns()
    ticks_after = _psutil_cpu(pid)
    result = {
        "pid": pid,
        "settle_s": plan.idle_settle_s,
        "window_s": (t1 - t0) / 1e9,
        "cpu_ns": after - before,
        "percent_of_core": 100.0 * (after - before) / (t1 - t0),
        "source": "/proc/<pid>/task/*/schedstat",
        "burst_percent_of_core": burst,
    }
    if ticks_before is not None and ticks_after is not None:
        result["psutil_percent_of_core"] = 100.0 * (ticks_after - ticks_before) / ((t1 - t0) / 1e9)
    return result


def _psutil_cpu(pid: int) -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# ---- leaks -------------------------------------------------------------------------


def worker_children() -> list[tuple[int, str]]:
    """(pid, command line) of every ``polyplug_isolated.worker`` process whose parent is this one."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and "polyplug_isolated.worker" in cmdline:
            found.append((int(entry), cmdline))
    return found


def sandbox(bundle: Path, plan: Plan) -> list[Case]:
    """Worker start and call latency with and without containment (bench/_sandbox.py)."""
    from . import _sandbox

    return _sandbox.cases(bundle, plan)


def collect() -> None:
    """Between cases: the collector is off while measuring, so clear cycles here."""
    gc.collect()


from ._callbacks import callbacks  # noqa: E402,F401 - host contract and cross-bundle rows (bench/_callbacks.py)
