"""polyplug's Runtime surface: loaders, handles, errors, phases, scanner, function-table calls.

python surface.py ADDER KITCHEN_SINK SCAN_DIR
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys

from polyplug_abi import Buffer, GuestContractInterface, StringView, guest_contract_id
from polyplug_loaders_native import register_native_loader

from polyplug_isolated import polyplug  # SWITCH
from tests.polyplug_hosts._caller import Caller

ADD = guest_contract_id("test.add", 1)
KITCHEN = guest_contract_id("test.kitchen", 1)
COUNTER = guest_contract_id("test.counter", 1)
ADDER_ID = 2548453539782603331


def outcome(action) -> object:
    try:
        value = action()
    except RuntimeError as exc:
        return ["RuntimeError", str(exc).split(":")[0].split(";")[0][:40]]
    return ["ok", value]


def text(view: StringView | Buffer) -> str:
    return ctypes.string_at(view.ptr, view.len).decode() if view.len else ""


class Describe(ctypes.Structure):
    _fields_ = [("label", StringView), ("count", ctypes.c_uint32), ("access", ctypes.c_uint8)]


class Concat(ctypes.Structure):
    _fields_ = [("a", StringView), ("b", StringView)]


class Divide(ctypes.Structure):
    _fields_ = [("a", ctypes.c_int32), ("b", ctypes.c_int32)]


def view(data: bytes, keep: list) -> StringView:
    buffer = ctypes.create_string_buffer(data, len(data))
    keep.append(buffer)
    return StringView(ctypes.cast(buffer, ctypes.c_void_p), len(data))


def main(adder: str, kitchen: str, scan_dir: str) -> dict:
    seen: dict = {}
    phases: list = []
    rt = polyplug.Runtime(on_reload=lambda p: phases.append([p.type.name, p.bundle_name, p.reason]))
    seen["host is an address"] = isinstance(rt.host, int) and rt.host != 0
    register_native_loader(rt)
    seen["register twice"] = outcome(lambda: register_native_loader(rt))
    seen["load"] = outcome(lambda: rt.load_bundle(adder))
    handle = rt.find_guest_contract(ADD, 1)
    seen["handle"] = [type(handle).__name__, handle.index, handle.generation]
    seen["find above major"] = rt.find_guest_contract(ADD, 2).index
    address = rt.resolve_guest_contract(handle)
    iface = GuestContractInterface.from_address(address)
    version = iface.contract_version
    seen["interface"] = [
        iface.contract_id == ADD,
        [version.major, version.minor, version.patch],
        iface.dispatch_type,
        iface.dispatch.native.function_count,
    ]
    seen["resolve null handle"] = outcome(lambda: rt.resolve_guest_contract(rt.find_guest_contract(ADD, 9)))
    seen["release_plugin"] = outcome(lambda: rt.release_plugin(address))
    seen["reload with hot reload off"] = outcome(lambda: rt.reload_bundle(adder))
    seen["unload unknown"] = outcome(lambda: rt.unload_bundle(42))
    seen["unload"] = outcome(lambda: rt.unload_bundle(ADDER_ID))
    seen["resolve stale"] = outcome(lambda: rt.resolve_guest_contract(handle))
    seen["find after unload"] = rt.find_guest_contract(ADD, 1).index
    seen["find_all after unload"] = outcome(lambda: rt.find_all_by_contract(ADD, 1))

    rt.load_bundle(kitchen)
    k = Caller(rt.host, rt.resolve_guest_contract(rt.find_guest_contract(KITCHEN, 1)))
    keep: list = []
    out_view, out_buffer, out_i32 = StringView(), Buffer(), ctypes.c_int32()
    calls = seen["kitchen"] = []
    calls.append([*k.call(17, view(b"hello", keep), out_view), text(out_view)])
    calls.append([*k.call(22, Describe(view(b"job", keep), 3, 5), out_view), text(out_view)])
    calls.append([*k.call(23, Concat(view(b"ab", keep), view(b"cd", keep)), out_buffer), text(out_buffer)])
    calls.append([*k.call(23, Concat(StringView(), view(b"xy", keep)), out_buffer), text(out_buffer)])
    calls.append([*k.call(25, Divide(7, 2), out_i32), out_i32.value])
    calls.append([*k.call(25, Divide(1, 0), out_i32)])
    calls.append([*k.call(26, None, None)])
    magic = ctypes.c_uint64()
    calls.append([*k.call(27, None, magic), magic.value])

    first = Caller(rt.host, rt.resolve_guest_contract(rt.find_guest_contract(COUNTER, 1)))
    second = Caller(rt.host, rt.resolve_guest_contract(rt.find_guest_contract(COUNTER, 1)))
    value = ctypes.c_int64()
    counts = seen["counter"] = []
    for caller in (first, first, second, first):
        counts.append([*caller.call(0, None, value), value.value])
    first.close()
    second.close()
    k.close()

    scanner = importlib.import_module(f"{polyplug.__name__}.scanner")  # polyplug.scanner, either way
    seen["scan"] = sorted(
        [os.path.basename(path), m.name, m.version, m.provides] for path, m in scanner.scan_dir(scan_dir)
    )
    seen["phases"] = phases
    seen["ReloadPhase"] = [polyplug.ReloadPhase.__name__, [t.name for t in polyplug.ReloadPhaseType]]
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
