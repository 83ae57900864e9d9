"""Runs one scenario of _contract_scenarios against the real polyplug 0.1.3, in this process.

``python tests/_polyplug_scenarios.py <scenario> <built fixtures dir>`` prints
the scenario's outcome as one JSON line. It runs in a subprocess of the test
because a plugin crash would take the real runtime (and the tests) down with
it; see _polyplug_reference.py for how the runtime library is found.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _contract_scenarios import SCENARIOS
from _polyplug_reference import _point_at_runtime_library

_NATIVE_FN = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
)


class _AbiError(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint32), ("ptr", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class PolyplugDriver:
    """The Driver of _contract_scenarios over polyplug 0.1.3's Python host."""

    def __init__(self) -> None:
        _point_at_runtime_library()
        from polyplug import Runtime
        from polyplug_abi import bundle_id
        from polyplug_loaders_native import register_native_loader

        self.phases: list[tuple[str, str]] = []
        self._bundle_id = bundle_id
        self._rt = Runtime(
            config=SimpleNamespace(hot_reload_enabled=True),
            on_reload=lambda phase: self.phases.append((phase.type.name.upper(), phase.bundle_name)),
        )
        register_native_loader(self._rt)
        self._keep: list[Any] = []

    def register(self, interface: Any) -> None:
        self._keep.append(interface)
        self._rt.register_host_contract(interface)

    def load(self, path: Path) -> str:
        try:
            self._rt.load_bundle(path)
        except RuntimeError:
            return "failed"
        return "ok"

    def reload(self, path: Path) -> str:
        try:
            self._rt.reload_bundle(path)
        except RuntimeError:
            return "failed"
        return "ok"

    def unload(self, name: str) -> str:
        try:
            self._rt.unload_bundle(self._bundle_id(name))
        except RuntimeError:
            return "refused"
        return "ok"

    def _call(self, contract_id: int, fn: int, args: bytes, out: ctypes.Array) -> _AbiError:
        handle = self._rt.find_guest_contract(contract_id, 0)
        iface = self._rt.resolve_guest_contract(handle)
        functions = ctypes.c_void_p.from_address(iface + 48).value
        function = _NATIVE_FN(ctypes.c_void_p.from_address(functions + 8 * fn).value)
        err = _AbiError()
        packed = ctypes.create_string_buffer(args, len(args)) if args else None
        # GuestContractInstance {NULL, id} by value: two registers, as two arguments.
        function(None, contract_id, packed, out, ctypes.byref(err))
        return err

    def call_u32(self, contract_id: int, fn: int, args: bytes) -> tuple[int, int]:
        out = ctypes.create_string_buffer(8)
        err = self._call(contract_id, fn, args, out)
        return err.code, ctypes.c_uint32.from_buffer(out).value if err.code == 0 else 0

    def call_error_out(self, contract_id: int, fn: int, args: bytes) -> tuple[int, int, str]:
        out = _AbiError()
        err = self._call(contract_id, fn, args, ctypes.byref(out))
        text = ctypes.string_at(out.ptr, out.len).decode("utf-8", "replace") if out.ptr else ""
        return err.code, out.code, text


def main() -> None:
    scenario, bundles = sys.argv[1], Path(sys.argv[2])
    result = SCENARIOS[scenario](PolyplugDriver(), bundles)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
