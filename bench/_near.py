"""A thread alternating large and small calls: ``python -m bench._near``.

Large calls in a row run on the caller's CPU, and the first small call after
them sends the worker thread back (README "Large calls run on the caller's
CPU"): each such switch moves the thread. This prints the p50 of one cycle of
N large calls (echo of 256 KiB, the threshold) then K small ones, for a few
mixes, so that a change to when the thread moves can be compared with the
code before it (run both, interleaved). No in-process side: compare builds.
"""

from __future__ import annotations

import gc
import statistics
import struct
import sys
import time

LARGE = 256 << 10
MIXES = ((1, 1), (1, 10), (1, 100), (2, 1), (2, 10), (8, 1), (100, 0))  # (large, small) per cycle
ECHO, CHECKSUM = 0, 1


def main() -> int:
    from polyplug_isolated import Runtime, guest_contract_id
    from polyplug_isolated._fixtures import fixture_path

    large = struct.pack("<Q", LARGE) + bytes(LARGE)
    small = struct.pack("<Q", 4) + b"abcd"
    with Runtime() as rt:
        rt.load_bundle(fixture_path("payload"))
        payload = rt.resolve_guest_contract(rt.find_guest_contract(guest_contract_id("test.payload", 1), 1))
        call = payload.call
        gc.disable()
        for n, k in MIXES:
            samples = []
            for _ in range(max(100, 3000 // (n + k))):
                t0 = time.perf_counter_ns()
                for _ in range(n):
                    call(ECHO, large, LARGE)
                for _ in range(k):
                    call(CHECKSUM, small, 8)
                samples.append(time.perf_counter_ns() - t0)
            p50 = statistics.median(samples[10:]) / 1e3
            print(f"{n:>3} x 256 KiB + {k:>3} small: {p50:9.1f} us per cycle", flush=True)
        gc.enable()
    return 0


if __name__ == "__main__":
    sys.exit(main())
