"""What every host script shares: a caller in the shape polyplugc 0.1.3 generates (shape only).

Imported by the scripts, never by polyplug_isolated: it knows only polyplug's ABI.
"""

from __future__ import annotations

import ctypes

from polyplug_abi import AbiError, GuestContractInstance, GuestContractInterface, HostApi

NativeFn = ctypes.CFUNCTYPE(
    None, GuestContractInstance, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(AbiError)
)


def pointer(value: object) -> int | None:
    return ctypes.cast(ctypes.byref(value), ctypes.c_void_p).value if value is not None else None


class Caller:
    """One interface, one instance: functions[fn](instance, args, out, &err)."""

    def __init__(self, host_ptr: int, iface_ptr: int, stateful: bool = True):
        self.host_ptr = host_ptr
        self.host = HostApi.from_address(host_ptr)
        self.iface_ptr = iface_ptr
        iface = GuestContractInterface.from_address(iface_ptr)
        self.function_count = iface.dispatch.native.function_count
        self.functions = ctypes.cast(iface.dispatch.native.functions, ctypes.POINTER(ctypes.c_void_p))
        self.instance = GuestContractInstance()
        if stateful:
            self.host.create_guest_instance(host_ptr, iface_ptr, None, ctypes.byref(self.instance))

    def call(self, fn: int, args: object, out: object) -> tuple[int, str]:
        err = AbiError()
        NativeFn(self.functions[fn])(self.instance, pointer(args), pointer(out), ctypes.byref(err))
        message = ctypes.string_at(err.message.ptr, err.message.len) if err.message.len else b""
        return err.code, message.decode("utf-8", "replace")

    def close(self) -> None:
        if self.instance.data:
            self.host.destroy_guest_instance(self.host_ptr, self.iface_ptr, self.instance)
