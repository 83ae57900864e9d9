"""Host threads x work, isolated and in-process on as many threads (the rows of issue 9).

For 1/2/4/8 host threads x {trivial add (adder's add_primitive), a 1 ms
sleeping call (threads' sleep_ms(1))}: calls/s of all threads together and
p50/p99 per call, isolated (one bundle; each host thread on a worker thread of
its own) beside the same work in-process (the bundle loaded into a subprocess
through the worker's own cffi dispatch, called from as many threads; cffi
releases the GIL around each call, as the isolated wait does). Also how long 8
host threads' 200 ms calls take together, and the CPU a worker with 64 parked
threads uses while idle.

``python -m bench`` runs the rows with its ``threads`` group; alone:
``python -m bench._threads [--quick]`` prints them as a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import _measure

ROOT = Path(__file__).resolve().parent.parent
# work -> (bundle, function, args, out size)
WORKS = {
    "add": ("adder", 1, struct.pack("<II", 2, 3), 4),
    "sleep1ms": ("threads", 2, struct.pack("<I", 1), 4),
}
LABELS = {"add": "trivial add", "sleep1ms": "1 ms sleeping call"}


def calls_each(work: str, quick: bool) -> int:
    if work == "add":
        return 2_000 if quick else 20_000
    return 50 if quick else 500


def _summary(samples, calls_per_s: float) -> dict:
    return {"hist": _measure.encode(_measure.histogram_of(samples)), "calls_per_s": calls_per_s}


# ---- in-process (a subprocess per bundle: _serve_ffi holds one bundle) ---------------------


def _inproc_main(request: dict) -> dict:
    from ._inproc import _load_serve_ffi

    name, function, args, out_size = WORKS[request["work"]]
    ffi, lib = _load_serve_ffi(Path(request["bundle"]), name)
    _measure.BUDGET_S = request["budget_s"]

    def make_fn():
        out, err, invoke, buffer = (
            ffi.new("uint8_t[]", out_size),
            ffi.new("AbiError *"),
            lib.ppw_invoke,
            ffi.buffer,
        )

        def call() -> bytes:
            invoke(0, function, args, out, err)
            if err.code:
                raise RuntimeError(f"{name} function {function} failed: {err.code}")
            return buffer(out, out_size)[:]

        return call

    rows = {}
    for count in request["counts"]:
        n = request["n_each"]
        samples, calls_per_s, _ = _measure.threaded(make_fn, count, n, max(5, n // 20))
        rows[str(count)] = _summary(samples, calls_per_s)
    return rows


def inproc(work: str, bundle: Path, counts: list[int], n_each: int, budget_s: float) -> dict:
    request = {"work": work, "bundle": str(bundle), "counts": counts, "n_each": n_each, "budget_s": budget_s}
    proc = subprocess.run(
        [sys.executable, "-m", "bench._threads", "--inproc"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench._threads --inproc {work} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout)


# ---- isolated ------------------------------------------------------------------------------


def isolated(work: str, bundle: Path, counts: list[int], n_each: int) -> dict:
    from polyplug_isolated import Runtime

    _, function, args, out_size = WORKS[work]
    rows = {}
    with Runtime() as rt:
        loaded = rt.load_bundle(bundle)
        contract = rt.resolve_guest_contract(rt.find_guest_contract(loaded.contracts[0].contract_id, 1))
        for count in counts:
            samples, calls_per_s, _ = _measure.threaded(
                lambda: functools.partial(contract.call, function, args, out_size),
                count,
                n_each,
                max(5, n_each // 20),
            )
            rows[str(count)] = _summary(samples, calls_per_s)
    return rows


def concurrent_sleeps(bundle: Path, threads: int = 8, ms: int = 200) -> float:
    """Seconds for ``threads`` host threads each making one ``sleep_ms(ms)`` call on one bundle."""
    from polyplug_isolated import Runtime

    with Runtime() as rt:
        loaded = rt.load_bundle(bundle)
        contract = rt.resolve_guest_contract(rt.find_guest_contract(loaded.contracts[0].contract_id, 1))
        start = threading.Barrier(threads + 1)
        done: list[float] = []

        def sleeper() -> None:
            start.wait()
            contract.call(2, struct.pack("<I", ms), 4)
            done.append(time.perf_counter())

        pool = [threading.Thread(target=sleeper) for _ in range(threads)]
        for thread in pool:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in pool:
            thread.join()
    return max(done) - began


def idle_parked(bundle: Path, threads: int = 64, window_s: float = 2.0) -> dict:
    """CPU of a worker with ``threads`` parked worker threads (their host threads alive, idle)."""
    from polyplug_isolated import Runtime

    from ._cases import cpu_ns

    release = threading.Event()
    with Runtime() as rt:
        loaded = rt.load_bundle(bundle)
        contract = rt.resolve_guest_contract(rt.find_guest_contract(loaded.contracts[0].contract_id, 1))
        called = threading.Barrier(threads + 1)

        def hold() -> None:
            contract.call(0, b"", 4)  # this host thread's worker thread is made, then parks
            called.wait()
            release.wait()

        pool = [threading.Thread(target=hold) for _ in range(threads)]
        for thread in pool:
            thread.start()
        called.wait()
        pid = loaded.worker_pid
        worker_threads = len(os.listdir(f"/proc/{pid}/task"))
        time.sleep(0.5)  # past every spin window
        before, t0 = cpu_ns(pid), time.perf_counter_ns()
        time.sleep(window_s)
        after, t1 = cpu_ns(pid), time.perf_counter_ns()
        release.set()
        for thread in pool:
            thread.join()
    return {
        "parked": threads,
        "worker_threads": worker_threads,
        "window_s": (t1 - t0) / 1e9,
        "percent_of_core": 100.0 * (after - before) / (t1 - t0),
    }


# ---- as bench cases --------------------------------------------------------------------------


def cases(count: int, plan) -> list:
    """The rows for ``count`` host threads, isolated and in-process (for bench/_cases.py)."""
    from polyplug_isolated._fixtures import fixture_path

    from ._cases import Case

    out = []
    for work in WORKS:
        bundle = fixture_path(WORKS[work][0])
        n = calls_each(work, plan.quick)
        inside = inproc(work, bundle, [count], n, plan.budget_s)[str(count)]
        outside = isolated(work, bundle, [count], n)[str(count)]
        base = f"threads.{work}.{count}.inproc"
        for side, row, baseline in (("inproc", inside, base), ("isolated", outside, base)):
            out.append(
                Case(
                    name=f"threads.{work}.{count}.{side}",
                    label=f"{LABELS[work]}, {count} host thread{'s' if count > 1 else ''}, {side}",
                    group="threads",
                    kind="throughput",
                    hist=_measure.decode(row["hist"]),
                    calls_per_s=row["calls_per_s"],
                    baseline=baseline,
                    note="p50/p99 per call; calls/s of all threads together",
                    extra={"threads": count, "work": work},
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._threads", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few calls: a smoke run")
    parser.add_argument("--inproc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inproc:
        print(json.dumps(_inproc_main(json.load(sys.stdin))))
        return 0
    from polyplug_isolated._fixtures import build_fixtures, fixture_path

    build_fixtures()
    counts = [1, 2, 4, 8]
    print(f"{'work':<20} {'threads':>7} {'side':<9} {'calls/s':>11} {'p50 us':>9} {'p99 us':>9} {'ratio':>6}")
    for work in WORKS:
        bundle = fixture_path(WORKS[work][0])
        n = calls_each(work, args.quick)
        inside = inproc(work, bundle, counts, n, 4.0)
        outside = isolated(work, bundle, counts, n)
        for count in counts:
            base = inside[str(count)]["calls_per_s"]
            for side, rows in (("inproc", inside), ("isolated", outside)):
                row = rows[str(count)]
                stats = _measure.summarize(_measure.decode(row["hist"]))
                print(
                    f"{LABELS[work]:<20} {count:>7} {side:<9} {row['calls_per_s']:>11,.0f} "
                    f"{stats['p50_ns'] / 1e3:>9.2f} {stats['p99_ns'] / 1e3:>9.2f} "
                    f"{row['calls_per_s'] / base:>6.2f}"
                )
    elapsed = concurrent_sleeps(fixture_path("threads"))
    print(f"8 host threads x sleep_ms(200) on one bundle (first calls): {elapsed:.3f} s")
    idle = idle_parked(fixture_path("threads"))
    print(
        f"idle worker, {idle['parked']} parked threads ({idle['worker_threads']} in the worker): "
        f"{idle['percent_of_core']:.3f}% of a core over {idle['window_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
