"""``python -m bench._dropin``: a call through the host HostApi's function table vs. a raw isolated call.

Both sides call ``add_primitive(2, 3)`` of the adder fixture in the same
worker, interleaved round by round: ``functions[1](instance, args, out, &err)``
from ctypes (a polyplugc-shaped caller, through a host trampoline) and
``GuestContract.call`` (the isolated runtime's raw call). Prints p50, mean
and the share of calls over 100 µs, per round, and the ratio of the p50s.
Not yet a case of ``python -m bench``.
"""

from __future__ import annotations

import ctypes
import statistics
import struct
import time
from collections.abc import Callable

from polyplug_abi import AbiError, GuestContractInstance, GuestContractInterface, guest_contract_id

from polyplug_isolated import polyplug
from polyplug_isolated._fixtures import fixture_path

CALLS = 20_000
ROUNDS = 5


def _sample(call: Callable[[], object]) -> list[int]:
    times = []
    for _ in range(CALLS):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return times


def main() -> None:
    add = guest_contract_id("test.add", 1)
    with polyplug.Runtime() as rt:
        rt.load_bundle(fixture_path("adder"))
        iface = GuestContractInterface.from_address(rt.resolve_guest_contract(rt.find_guest_contract(add, 1)))
        native = ctypes.CFUNCTYPE(
            None, GuestContractInstance, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(AbiError)
        )
        function = native(ctypes.cast(iface.dispatch.native.functions, ctypes.POINTER(ctypes.c_void_p))[1])
        args, out, err = (ctypes.c_uint32 * 2)(2, 3), ctypes.c_uint32(), AbiError()
        instance = GuestContractInstance()
        pointers = ctypes.addressof(args), ctypes.addressof(out), ctypes.byref(err)
        raw = rt.isolated.resolve_guest_contract(rt.isolated.find_guest_contract(add, 1))
        record = struct.pack("<II", 2, 3)
        cases = {
            "function table (trampoline)": lambda: function(instance, *pointers),
            "GuestContract.call (raw)": lambda: raw.call(1, record, 4),
        }
        p50s: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(ROUNDS):
            for name, call in cases.items():
                times = _sample(call)
                p50 = statistics.median(times) / 1000
                p50s[name].append(p50)
                slow = sum(t > 100_000 for t in times) / len(times)
                mean = statistics.mean(times) / 1000
                print(f"round {round_}  {name:<28} p50 {p50:6.2f} µs  mean {mean:6.2f} µs  >100µs {slow:.2%}")
        trampoline, direct = (statistics.median(v) for v in p50s.values())
        ratio = trampoline / direct
        print(f"median p50: trampoline {trampoline:.2f} µs, raw {direct:.2f} µs, ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
