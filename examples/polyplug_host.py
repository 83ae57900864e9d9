"""A host written for polyplug 0.1.3's Python package, switched to isolation by one import.

The only change from a polyplug host is the import marked SWITCH; with
``import polyplug`` there instead, this runs on polyplug's in-process runtime
and prints the same outcomes (tests/test_polyplug_dropin.py runs it both ways).

It creates a Runtime requiring signatures from one trusted key, loads signed
bundles, calls contracts through the interface's native function table the
way polyplugc's generated Python callers do (HostApi from ``rt.host``,
``create_guest_instance``, the revision counter, ctypes structs), reloads one
bundle, refuses an unsigned one, unloads, and prints what it saw as JSON.

    python -m examples.polyplug_host KEY_HEX ADDER PROBE_V1 PROBE_V2 UNSIGNED
"""

from __future__ import annotations

import ctypes
import json
import sys

from polyplug_abi import (
    AbiError,
    Compatibility,
    GuestContractInstance,
    GuestContractInterface,
    HostApi,
    RuntimeConfig,
    SignaturePolicy,
    StringView,
    guest_contract_id,
)
from polyplug_loaders_native import register_native_loader

from polyplug_isolated import polyplug  # SWITCH

NativeFn = ctypes.CFUNCTYPE(
    None, GuestContractInstance, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(AbiError)
)


class ContractCaller:
    """The shape of a polyplugc 0.1.3 Python caller: interface pointer, function table, ctypes structs."""

    def __init__(self, rt: polyplug.Runtime, contract_id: int, min_version: int = 1):
        self._host_ptr = rt.host
        self._host = HostApi.from_address(self._host_ptr)
        self._handle = self._host.find_guest_contract(self._host_ptr, contract_id, min_version)
        if self._handle.index == 0xFFFFFFFF:
            raise LookupError(f"no provider for contract 0x{contract_id:016X}")
        self._revision_ptr = ctypes.cast(
            self._host.revision_counter(self._host_ptr), ctypes.POINTER(ctypes.c_uint64)
        )
        self._bind()

    def _bind(self) -> None:
        self._revision = self._revision_ptr[0]
        self._iface_ptr = self._host.resolve_guest_contract(self._host_ptr, self._handle)
        self._instance = GuestContractInstance()
        if self._iface_ptr:
            iface = GuestContractInterface.from_address(self._iface_ptr)
            self._functions = ctypes.cast(iface.dispatch.native.functions, ctypes.POINTER(ctypes.c_void_p))
            self._count = iface.dispatch.native.function_count
            self._host.create_guest_instance(
                self._host_ptr, self._iface_ptr, None, ctypes.byref(self._instance)
            )

    def call(
        self, fn_id: int, args: ctypes.Structure | None, out: ctypes._SimpleCData | ctypes.Structure | None
    ):
        """(code, message) of functions[fn_id](instance, &args, &out, &err)."""
        if self._revision_ptr[0] != self._revision:
            self._bind()  # a reload or unload happened: re-resolve the same handle
        if not self._iface_ptr:
            return 4, "contract is gone (NotFound)"
        if fn_id >= self._count:
            return 6, "FunctionNotAvailable"
        err = AbiError()
        NativeFn(self._functions[fn_id])(
            self._instance,
            ctypes.cast(ctypes.byref(args), ctypes.c_void_p) if args is not None else None,
            ctypes.cast(ctypes.byref(out), ctypes.c_void_p) if out is not None else None,
            ctypes.byref(err),
        )
        message = ctypes.string_at(err.message.ptr, err.message.len).decode() if err.message.len else ""
        return err.code, message


ADDER_BUNDLE_ID = 2548453539782603331  # fnv1a64("adder")


class AddArgs(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint32)]


def main(key_hex: str, adder: str, probe_v1: str, probe_v2: str, unsigned: str) -> dict:
    seen: dict = {"phases": [], "calls": []}

    def on_reload(phase: polyplug.ReloadPhase) -> None:
        kinds = [phase.is_preparing(), phase.is_reloaded(), phase.is_failed(), phase.is_unloading()]
        seen["phases"].append([phase.type.name, phase.bundle_name, phase.reason, kinds])

    config = RuntimeConfig()
    config.hot_reload_enabled = True
    config.compatibility = Compatibility.Strict
    rt = polyplug.Runtime(
        config=config,
        on_reload=on_reload,
        signature_policy=SignaturePolicy.Required,
        trusted_keys=[bytes.fromhex(key_hex)],
    )
    register_native_loader(rt)
    rt.load_bundle(adder)
    rt.load_bundle(probe_v1)

    add = ContractCaller(rt, guest_contract_id("test.add", 1))
    probe = ContractCaller(rt, guest_contract_id("test.probe", 1))
    total, version, generation = ctypes.c_uint32(), StringView(), ctypes.c_uint32()
    seen["calls"].append(["add", *add.call(0, AddArgs(2, 3), total), total.value])
    seen["calls"].append(["add_primitive", *add.call(1, AddArgs(40, 2), total), total.value])
    code, message = add.call(2, None, version)
    seen["calls"].append(["version", code, message, ctypes.string_at(version.ptr, version.len).decode()])
    seen["calls"].append(["reset", *add.call(3, None, None)])
    seen["calls"].append(["probe.generation", *probe.call(0, None, generation), generation.value])

    rt.reload_bundle(probe_v2)
    seen["calls"].append(
        ["probe.generation after reload", *probe.call(0, None, generation), generation.value]
    )

    try:
        rt.load_bundle(unsigned)
        seen["unsigned"] = "loaded"
    except RuntimeError as exc:
        seen["unsigned"] = "not signed" if "is not signed" in str(exc) else str(exc)

    rt.unload_bundle(ADDER_BUNDLE_ID)
    seen["calls"].append(["add after unload", *add.call(1, AddArgs(1, 1), total)])
    seen["find after unload"] = rt.find_guest_contract(guest_contract_id("test.add", 1), 1).index
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:6])))
