"""A host.logger@1 host contract built the way polyplug's generated host factories build one.

A ctypes ``HostContractInterface`` with native dispatch: ctypes callbacks for
``create_instance`` (which hands out ``user_data``) and each function. Used
by our tests and by the polyplug 0.1.3 reference runner alike, so both
runtimes get the very same interface. Layouts follow POLYPLUG_V1_SPEC.md §A.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

LOGGER_ID = 0xF53EB5F2845853BB  # fnv1a64("host_contract:host.logger@1")


class StringView(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class AbiError(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint32), ("message", StringView)]


class Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("patch", ctypes.c_uint32)]


class HostContractInstance(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p)]


class NativeDispatch(ctypes.Structure):
    _fields_ = [("function_count", ctypes.c_uint32), ("functions", ctypes.c_void_p)]


class VmDispatch(ctypes.Structure):
    _fields_ = [("call", ctypes.c_void_p), ("loader_data", ctypes.c_void_p)]


class Dispatch(ctypes.Union):
    _fields_ = [("native", NativeDispatch), ("vm", VmDispatch)]


CREATE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(HostContractInstance))
DESTROY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, HostContractInstance)
FUNCTION = ctypes.CFUNCTYPE(
    None, HostContractInstance, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(AbiError)
)


class HostContractInterface(ctypes.Structure):
    _fields_ = [
        ("contract_id", ctypes.c_uint64),
        ("contract_version", Version),
        ("singleton", ctypes.c_bool),
        ("dispatch_type", ctypes.c_uint32),
        ("runtime", ctypes.c_void_p),
        ("user_data", ctypes.c_void_p),
        ("create_instance", CREATE),
        ("destroy_instance", DESTROY),
        ("dispatch", Dispatch),
    ]


assert ctypes.sizeof(HostContractInterface) == 80


@dataclass
class LoggerState:
    """What the host saw: log lines, instances created, and the instance data each call got."""

    level: int = 7
    lines: list[str] = field(default_factory=list)
    created: int = 0
    instances: set[int] = field(default_factory=set)


def logger_interface(
    state: LoggerState, singleton: bool = True, version: tuple[int, int, int] = (1, 0, 0)
) -> HostContractInterface:
    """host.logger@1: fn 0 log(message: StringView), fn 1 get_level() -> u32."""
    anchor = ctypes.c_uint64(0x10C)  # what user_data points at: the implementation

    @CREATE
    def create(self_ptr, args, out):
        state.created += 1
        out[0].data = ctypes.addressof(anchor)

    @DESTROY
    def destroy(self_ptr, instance):
        pass

    @FUNCTION
    def log(instance, args, out, err):
        state.instances.add(instance.data or 0)
        view = StringView.from_address(args)
        state.lines.append(ctypes.string_at(view.ptr, view.len).decode("utf-8", "replace"))
        err[0].code = 0

    @FUNCTION
    def get_level(instance, args, out, err):
        state.instances.add(instance.data or 0)
        ctypes.c_uint32.from_address(out).value = state.level
        err[0].code = 0

    table = (ctypes.c_void_p * 2)(ctypes.cast(log, ctypes.c_void_p), ctypes.cast(get_level, ctypes.c_void_p))
    interface = HostContractInterface()
    interface.contract_id = LOGGER_ID
    interface.contract_version = Version(*version)
    interface.singleton = singleton
    interface.dispatch_type = 0
    interface.user_data = ctypes.addressof(anchor)
    interface.create_instance = create
    interface.destroy_instance = destroy
    interface.dispatch.native.function_count = 2
    interface.dispatch.native.functions = ctypes.addressof(table)
    interface._keepalive = (anchor, create, destroy, log, get_level, table)
    return interface
