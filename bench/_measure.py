"""Timing loops and latency summaries, shared by the bench process and its subprocesses.

Every latency is measured the same way, in-process or isolated: one
``time.perf_counter_ns()`` before and one after each call, the difference
stored in a preallocated array (nothing else between calls), then recorded
into an HdrHistogram. Throughput comes from a separate loop with no per-call
timing: calls / wall time.

The callers disable the cyclic garbage collector for the whole measuring
phase (both in the bench process and in the baseline subprocesses), so no
collection lands inside one side's samples only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from array import array
from collections import Counter
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_NS = 1
HIGHEST_NS = 600 * 10**9
DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_NS, HIGHEST_NS, DIGITS)


def histogram_of(samples) -> HdrHistogram:
    """An HdrHistogram of nanosecond samples (recorded as value, count pairs)."""
    hist = new_histogram()
    for value, count in Counter(samples).items():
        hist.record_value(min(max(int(value), LOWEST_NS), HIGHEST_NS), count)
    return hist


# Every loop stops early once it has run this long (seconds), so that a machine
# where calls are 50x slower than planned still finishes in bounded time. The
# bench sets it (shorter for --quick); the samples taken so far count.
BUDGET_S = 5.0
CHUNK = 64


def time_each(fn, n: int, warmup: int) -> array:
    """Calls ``fn()`` ``warmup`` times, then up to ``n`` times timing each call; the ns samples."""
    warm(fn, warmup)
    clock = time.perf_counter_ns
    deadline = clock() + int(BUDGET_S * 1e9)
    samples = array("q", bytes(8 * n))
    for start in range(0, n, CHUNK):
        for i in range(start, min(start + CHUNK, n)):
            t0 = clock()
            fn()
            samples[i] = clock() - t0
        if clock() > deadline:
            del samples[start + CHUNK :]
            break
    return samples


def warm(fn, n: int) -> None:
    """Up to ``n`` untimed calls first (caches, branch predictors, the worker's spin)."""
    _run_for(fn, n)


def throughput(fn, n: int, calls_per_fn: int = 1) -> float:
    """Calls per second of up to ``n`` back-to-back ``fn()`` calls, none timed on its own."""
    clock = time.perf_counter_ns
    t0 = clock()
    deadline = t0 + int(BUDGET_S * 1e9)
    done = 0
    while done < n:
        chunk = min(CHUNK, n - done)
        for _ in range(chunk):
            fn()
        done += chunk
        if clock() > deadline:
            break
    elapsed = clock() - t0
    return done * calls_per_fn * 1e9 / max(elapsed, 1)


def threaded(make_fn, threads: int, n_each: int, warmup: int) -> tuple[array, float, int]:
    """``threads`` threads each calling their own ``make_fn()``: (latency samples, calls/s, calls made).

    Each thread first times up to ``n_each`` calls one by one (after
    ``warmup``), then all threads run up to ``n_each`` untimed calls together;
    calls/s is their total over the wall time from a common start to the last
    thread done.
    """
    fns = [make_fn() for _ in range(threads)]
    results: list[array | None] = [None] * threads
    counts = [0] * threads
    errors: list[BaseException] = []
    start_latency = threading.Barrier(threads)
    start_throughput = threading.Barrier(threads + 1)

    def run(k: int) -> None:
        try:
            start_latency.wait()
            results[k] = time_each(fns[k], n_each, warmup)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            start_latency.abort()
            start_throughput.abort()
            return
        try:
            start_throughput.wait()
        except threading.BrokenBarrierError:
            return
        counts[k] = _run_for(fns[k], n_each)

    pool = [threading.Thread(target=run, args=(k,), name=f"bench-{k}") for k in range(threads)]
    for thread in pool:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start_throughput.wait()
    t0 = time.perf_counter_ns()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter_ns() - t0
    if errors:
        raise errors[0]
    samples = array("q")
    for part in results:
        samples.extend(part)
    calls = sum(counts) + len(samples) + threads * warmup
    return samples, sum(counts) * 1e9 / max(elapsed, 1), calls


def _run_for(fn, n: int) -> int:
    """Up to ``n`` untimed calls, within the budget; how many ran."""
    clock = time.perf_counter_ns
    deadline = clock() + int(BUDGET_S * 1e9)
    done = 0
    while done < n:
        chunk = min(CHUNK, n - done)
        for _ in range(chunk):
            fn()
        done += chunk
        if clock() > deadline:
            break
    return done


def summarize(hist: HdrHistogram, per: int = 1) -> dict[str, Any]:
    """p50/p99/p99.9/mean/max in ns of one call (a histogram of batches is divided by ``per``)."""
    return {
        "p50_ns": hist.get_value_at_percentile(50) / per,
        "p99_ns": hist.get_value_at_percentile(99) / per,
        "p999_ns": hist.get_value_at_percentile(99.9) / per,
        "mean_ns": hist.get_mean_value() / per,
        "max_ns": hist.get_max_value() / per,
        "samples": hist.get_total_count(),
    }


def encode(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


def decode(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))
