"""Host contracts: services the host offers its plugins, registered on the Runtime.

Two forms, one behaviour::

    rt.register_host_contract(interface)          # polyplug's HostContractInterface (ctypes),
                                                  # as its generated host factories build it
    rt.register_host_contract(Logger(), api="api.toml")   # a Python object whose methods
                                                  # are the api.toml's [[host_contract]] functions

A plugin's ``get_host_contract(id, min_version)`` reaches this registry
through a call back (``_callbacks``); the packed ``major << 16 | minor``
version rule, singleton and per-call instances are polyplug's (spec §H). The
implementation runs on the host thread that called the plugin. Arguments
arrive as bytes laid out as the api.toml says (given here, or the one beside
the calling bundle's manifest); an exception becomes an AbiError carrying its
text (HostContractCallFailed).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi

from . import _idl, _wire
from ._layout import Layout
from ._marshal import _Bad, _Bool, _Float, _Int, _Tail, _Types

_ffi = cffi.FFI()
_ffi.cdef(
    """
    typedef struct { uint32_t major, minor, patch; } Version;
    typedef struct { const uint8_t *ptr; size_t len; } StringView;
    typedef struct { uint32_t code; StringView message; } AbiError;
    typedef struct { void *data; } HostContractInstance;
    typedef struct { void *data; uint64_t contract_id; } GuestContractInstance;
    typedef struct { void *data; } VmLoaderData;
    typedef struct HostContractInterface HostContractInterface;
    typedef void (*native_fn)(HostContractInstance, const void *, void *, AbiError *);
    typedef void (*vm_fn)(VmLoaderData, GuestContractInstance, uint32_t, const void *, void *, void *,
                          AbiError *);
    struct HostContractInterface {
        uint64_t contract_id;
        Version contract_version;
        _Bool singleton;
        uint32_t dispatch_type;
        void *runtime;
        void *user_data;
        void (*create_instance)(const HostContractInterface *, const void *, HostContractInstance *);
        void (*destroy_instance)(const HostContractInterface *, HostContractInstance);
        union {
            struct { uint32_t function_count; void *const *functions; } native;
            struct { vm_fn call; VmLoaderData loader_data; } vm;
        } dispatch;
    };
    """
)
assert _ffi.sizeof("HostContractInterface") == 80
_NATIVE, _VM = 0, 1


class Refused(Exception):
    """What a plugin's request gets instead: an AbiError code and its message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def version_matches(version: tuple[int, int, int], min_version: int) -> bool:
    """polyplug's host-contract rule: 0 takes any; else the same major and at least the minor."""
    return min_version == 0 or (version[0] == min_version >> 16 and version[1] >= min_version & 0xFFFF)


# ---- the two forms --------------------------------------------------------------------------


class HostContract:
    """One registered host contract."""

    contract_id: int
    version: tuple[int, int, int]
    singleton: bool
    function_count: int
    idl: tuple[_idl.Api, _idl.Contract] | None

    def create(self) -> Any:
        raise NotImplementedError

    def destroy(self, instance: Any) -> None:
        raise NotImplementedError

    def call(self, instance: Any, index: int, shape: _wire.FunctionShape, request: _wire.Request) -> bytes:
        raise NotImplementedError


class NativeHostContract(HostContract):
    """polyplug's HostContractInterface, called in-process like polyplug's runtime calls it."""

    def __init__(self, interface: Any, idl: tuple[_idl.Api, _idl.Contract] | None):
        self._keep = interface  # the struct and what its callbacks close over must outlive us
        address = _address_of(interface)
        self._iface = _ffi.cast("HostContractInterface *", address)
        iface = self._iface
        if iface.dispatch_type not in (_NATIVE, _VM):
            raise ValueError(
                f"HostContractInterface.dispatch_type {iface.dispatch_type} is neither Native nor VM"
            )
        version = iface.contract_version
        self.contract_id = int(iface.contract_id)
        self.version = (version.major, version.minor, version.patch)
        self.singleton = bool(iface.singleton)
        self.idl = idl
        if iface.dispatch_type == _NATIVE:
            self.function_count = int(iface.dispatch.native.function_count)
        else:
            self.function_count = len(idl[1].functions) if idl else 0
        if iface.create_instance == _ffi.NULL:
            raise ValueError("HostContractInterface.create_instance is NULL")

    def create(self) -> Any:
        out = _ffi.new("HostContractInstance *")
        self._iface.create_instance(self._iface, _ffi.NULL, out)
        return out[0].data

    def destroy(self, instance: Any) -> None:
        if self._iface.destroy_instance != _ffi.NULL:
            self._iface.destroy_instance(self._iface, {"data": instance})

    def call(self, instance: Any, index: int, shape: _wire.FunctionShape, request: _wire.Request) -> bytes:
        args = _ffi.NULL
        if request.args is not None and shape.args_size:
            blob = request.args
            problem = _wire.misfit(blob, shape)  # the implementation reads what args says
            if problem:
                raise Refused(_wire.GENERIC, f"polyplug_isolated: {problem}")
            args = _ffi.new("uint8_t[]", blob)
            base = int(_ffi.cast("uintptr_t", args))
            for offset, _ in shape.arg_views:
                (where,) = struct.unpack_from("=Q", blob, offset)
                pointer = 0 if where == _wire.NULL_OFFSET else base + where
                struct.pack_into("=Q", _ffi.buffer(args), offset, pointer)
        size = 0 if request.out_null else shape.out_size
        out = _ffi.new("uint8_t[]", size) if size else _ffi.NULL
        err = _ffi.new("AbiError *")
        iface = self._iface
        if iface.dispatch_type == _NATIVE:
            function = _ffi.cast("native_fn", iface.dispatch.native.functions[index])
            function({"data": instance}, args, out, err)
        else:
            iface.dispatch.vm.call(
                iface.dispatch.vm.loader_data, {"data": _ffi.NULL}, index, args, out, _ffi.NULL, err
            )
        view, message = err.message, ""
        if view.ptr != _ffi.NULL and view.len:
            message = _ffi.unpack(_ffi.cast("char *", view.ptr), view.len).decode("utf-8", "replace")
        if err.code != 0 or not size:
            return _wire.reply(err.code, message)
        record = bytearray(_ffi.buffer(out, size))
        tail = _Tail(0)
        for offset, owned in shape.out_views:
            pointer, length = struct.unpack_from("=QQ", record, offset)
            where = _wire.NULL_OFFSET
            if pointer:
                where = tail.add(bytes(_ffi.buffer(_ffi.cast("uint8_t *", pointer), length)))
            struct.pack_into("=Q", record, offset, where)
            if owned:
                struct.pack_into("=Q", record, offset + 16, length)
        return _wire.reply(0, "", bytes(record), b"".join(tail.parts))


class PythonHostContract(HostContract):
    """A plain Python object whose methods are a [[host_contract]]'s functions, typed by its api.toml."""

    def __init__(self, implementation: Any, api: _idl.Api, contract: _idl.Contract, singleton: bool):
        missing = [f.name for f in contract.functions if not callable(getattr(implementation, f.name, None))]
        if missing:
            raise TypeError(
                f"{type(implementation).__name__} does not implement host contract {contract.name}: "
                f"no method {', '.join(map(repr, missing))}"
            )
        self._implementation = implementation
        self.contract_id = contract.id
        self.version = contract.version
        self.singleton = singleton
        self.function_count = len(contract.functions)
        self.idl = (api, contract)
        layout, types = Layout(api), _Types(api)
        self._functions = [_Reversed(contract, f, layout, types) for f in contract.functions]

    def create(self) -> Any:
        return self._implementation

    def destroy(self, instance: Any) -> None:
        pass

    def quick(self, instance: Any, index: int) -> Callable[[bytes], bytes] | None:
        """For numbers in and out: the whole answer to a raw request in one closure."""
        function = self._functions[index]
        if not function.plain:
            return None
        method = getattr(instance, function.name)
        unpack, pack, where = function.unpack, function.pack, function.where
        out_size = struct.calcsize("=" + function.out_format) if pack else 0
        head = _wire.reply(out=b"\0" * out_size)[: _wire.REPLY.size]
        padding = b"\0" * (-out_size % 8)

        def answer(data: bytes) -> bytes:
            try:
                result = method(*unpack(data, _wire.REQUEST.size)) if unpack else method()
            except Exception as exc:
                return _wire.reply(_wire.HOST_CONTRACT_CALL_FAILED, f"{type(exc).__name__}: {exc}")
            if pack is None:
                return head
            try:
                return head + pack(result) + padding
            except (struct.error, TypeError, ValueError, OverflowError) as exc:
                return _wire.reply(_wire.HOST_CONTRACT_CALL_FAILED, f"{where} returned {result!r}: {exc}")

        return answer

    def call(self, instance: Any, index: int, shape: _wire.FunctionShape, request: _wire.Request) -> bytes:
        function = self._functions[index]
        values = function.decode(request.args)
        result = getattr(instance, function.name)(*values)
        out, tail = function.encode(result)
        return _wire.reply(0, "", b"" if request.out_null else out, tail)


class _Reversed:
    """A typed call the other way round: args bytes to Python values, the result to out bytes."""

    def __init__(self, contract: _idl.Contract, function: _idl.Function, layout: Layout, types: _Types):
        self.name = function.name
        self.where = f"host contract {contract.name}.{function.name}()"
        args = layout.args(contract, function)
        self.args_size = args.size if args else 0
        self.unpack = struct.Struct("=" + args.format).unpack_from if args else None
        self.codecs = [types.codec(p.type) for p in function.params]
        out = layout.of(function.returns) if function.returns is not None else None
        self.out_format = out.format if out else ""
        self.pack = struct.Struct("=" + out.format).pack if out else None
        self.result = types.codec(function.returns) if function.returns is not None else None
        numbers = (_Int, _Float, _Bool)
        self.plain = all(type(c) in numbers for c in self.codecs) and (
            self.result is None or type(self.result) in numbers
        )

    def decode(self, blob: bytes | None) -> list[Any]:
        if self.unpack is None:
            return []
        if blob is None or len(blob) < self.args_size:
            raise ValueError(f"{self.where}: the plugin passed no (or short) arguments")
        items = iter(self.unpack(blob))
        return [codec.decode(items, blob) for codec in self.codecs]

    def encode(self, value: Any) -> tuple[bytes, bytes]:
        if self.result is None or self.pack is None:
            return b"", b""
        flat: list[Any] = []
        tail = _Tail(0)
        try:
            self.result.encode(value, flat, tail)
        except _Bad as bad:
            raise bad.error(f"{self.where} returned {value!r}: {bad.message}") from None
        return self.pack(*flat), b"".join(tail.parts)


def _address_of(interface: Any) -> int:
    """The address of a HostContractInterface given as a ctypes struct (or pointer) or cffi pointer."""
    if isinstance(interface, ctypes.Structure):
        if ctypes.sizeof(interface) != 80:
            raise TypeError(f"a HostContractInterface is 80 bytes, not {ctypes.sizeof(interface)}")
        return ctypes.addressof(interface)
    if isinstance(interface, ctypes._Pointer):
        return ctypes.cast(interface, ctypes.c_void_p).value or 0
    if isinstance(interface, _ffi.CData):
        return int(_ffi.cast("uintptr_t", interface))
    raise TypeError(
        "register_host_contract takes polyplug's HostContractInterface (a ctypes struct, as polyplug's "
        f"generated host factories build it) or a Python object with api=..., not {type(interface).__name__}"
    )


# ---- the registry ----------------------------------------------------------------------------------


@dataclass
class _Instance:
    contract: HostContract
    value: Any


class HostContracts:
    """A runtime's host contracts and the instances handed out to plugins (by token)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._contracts: dict[int, HostContract] = {}
        self._instances: dict[int, _Instance] = {}
        self._singletons: dict[int, int] = {}
        self._tokens = itertools.count(1)
        self._shapes: dict[tuple[int, str], list[_wire.FunctionShape]] = {}

    def register(
        self,
        implementation: Any,
        api: str | os.PathLike[str] | None = None,
        contract: str | None = None,
        singleton: bool = True,
    ) -> HostContract:
        idl = _declared(_idl.parse_api(api), contract) if api is not None else None
        if _is_interface(implementation):
            registered: HostContract = NativeHostContract(implementation, idl)
        else:
            if idl is None:
                raise TypeError(
                    "a Python host contract needs the api.toml declaring it: "
                    "register_host_contract(obj, api='path/to/api.toml', contract='host.name')"
                )
            registered = PythonHostContract(implementation, idl[0], idl[1], singleton)
        with self._lock:
            if registered.contract_id in self._contracts:
                raise ValueError(
                    f"duplicate host contract registration: contract_id=0x{registered.contract_id:016X}"
                )
            self._contracts[registered.contract_id] = registered
        return registered

    def lookup(self, contract_id: int, min_version: int) -> HostContract:
        with self._lock:
            found = self._contracts.get(contract_id)
        if found is None:
            raise Refused(
                _wire.HOST_CONTRACT_NOT_FOUND,
                f"host contract not found: id=0x{contract_id:016X}, min_version={min_version}",
            )
        if not version_matches(found.version, min_version):
            packed = found.version[0] << 16 | found.version[1]
            raise Refused(
                _wire.HOST_CONTRACT_VERSION_MISMATCH,
                f"host contract version mismatch: contract_id=0x{contract_id:016X}, required={min_version}, "
                f"found={packed}",
            )
        return found

    def instance(self, contract: HostContract, fresh: bool = False) -> int:
        """A token for an instance: the singleton's (made on first use), or a new one."""
        with self._lock:
            if contract.singleton and not fresh:
                token = self._singletons.get(contract.contract_id)
                if token is not None:
                    return token
            value = contract.create()
            token = next(self._tokens)
            self._instances[token] = _Instance(contract, value)
            if contract.singleton and not fresh:
                self._singletons[contract.contract_id] = token
            return token

    def destroy(self, token: int) -> None:
        with self._lock:
            found = self._instances.get(token)
            if found is None or self._singletons.get(found.contract.contract_id) == token:
                return  # the singleton lives as long as the runtime, as in polyplug
            del self._instances[token]
        found.contract.destroy(found.value)

    def call(self, token: int, request: _wire.Request, caller_api: Path | None) -> bytes:
        found = self._instances.get(token)  # one dict read: atomic, no lock
        if found is None or found.contract.contract_id != request.id:
            raise Refused(
                _wire.HOST_CONTRACT_CALL_FAILED,
                f"host contract 0x{request.id:016X}: get_host_contract never handed out instance {token}",
            )
        contract = found.contract
        if request.function >= contract.function_count:
            raise Refused(
                _wire.FUNCTION_NOT_AVAILABLE, "function index is out of range for this host contract"
            )
        shape = self.shapes(contract, caller_api)[request.function]
        try:
            return contract.call(found.value, request.function, shape, request)
        except Refused:
            raise
        except Exception as exc:  # the plugin gets the text; the host keeps running
            raise Refused(_wire.HOST_CONTRACT_CALL_FAILED, f"{type(exc).__name__}: {exc}") from exc

    def quick(self, token: int, function: int) -> Callable[[bytes], bytes] | None:
        """The fast answer to calls of ``function`` on instance ``token``, when there is one."""
        found = self._instances.get(token)
        if found is None or not isinstance(found.contract, PythonHostContract):
            return None
        return found.contract.quick(found.value, function)

    def shapes(self, contract: HostContract, caller_api: Path | None) -> list[_wire.FunctionShape]:
        """Each function's layout: from the registration's api.toml, else the calling bundle's."""
        key = (contract.contract_id, "" if contract.idl else str(caller_api))
        cached = self._shapes.get(key)
        if cached is None:
            source = contract.idl or _declares(caller_api, contract.contract_id)
            known = _wire.shapes(*source) if source else []
            cached = [
                known[i] if i < len(known) else _wire.UNDESCRIBED for i in range(contract.function_count)
            ]
            with self._lock:
                self._shapes[key] = cached
        return cached


def _is_interface(implementation: Any) -> bool:
    return isinstance(implementation, (ctypes.Structure, ctypes._Pointer, _ffi.CData))


def _declared(api: _idl.Api, name: str | None) -> tuple[_idl.Api, _idl.Contract]:
    hosts = [c for c in api.contracts if c.host and (name is None or c.name == name.split("@", 1)[0])]
    if len(hosts) != 1:
        declared = ", ".join(c.name for c in api.contracts if c.host) or "none"
        which = f"no [[host_contract]] {name!r}" if name else "not exactly one [[host_contract]]"
        raise LookupError(
            f"{api.source} declares {which} (it declares: {declared}); pass contract='host.name'"
        )
    return api, hosts[0]


def _declares(api_path: Path | None, contract_id: int) -> tuple[_idl.Api, _idl.Contract] | None:
    """The calling bundle's api.toml, when it declares the host contract it calls."""
    if api_path is None or not api_path.is_file():
        return None
    try:
        api = _idl.parse_api(api_path)
    except Exception:
        return None
    for contract in api.contracts:
        if contract.host and contract.id == contract_id:
            return api, contract
    return None
