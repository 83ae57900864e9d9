"""Racing lifecycles and a misbehaving host: close during load, racing loads and unloads,
reloads under batched calls, fork(), a Runtime dropped without close().

Each case once broke the runtime (issue 10). Every test runs under the
autouse leak guard: no worker, segment name or fd may outlive it.
"""

from __future__ import annotations

import struct
import threading

import psutil
from conftest import ADD, pair, wait_until

from polyplug_isolated import (
    Runtime,
)

SLOW_START_MS = 400  # long enough for the racing call to arrive while a start is under way


def workers() -> set[int]:
    return {child.pid for child in psutil.Process().children()}


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
                wait_until(
                    lambda seen=seen: calls[0] > seen or outcome
                )  # a batch is under way at each switch
                rt.reload_bundle(bundle_dir("adder"))
        finally:
            stop.set()
            thread.join(20)
        assert outcome == [None], outcome
