"""The Python half of the host's HostApi (_hostapi.c): lookups, lifecycle, and trampoline calls.

A host written against polyplug's C ABI gets ``Runtime.host``, the address of
a HostApi whose ``resolve_guest_contract`` returns GuestContractInterface
structs built here. Their native dispatch tables hold C trampolines; calling
``functions[i](instance, args, out, &err)`` lands in :func:`pph_py_call`,
which reads ``args`` as the contract's api.toml lays it out, runs the call in
the bundle's worker through the ordinary GuestContract path (so it follows
reloads and uses the calling thread's slot), and writes ``out`` and the
AbiError back: the bytes a raw in-process call would have left there.

Pointers cannot cross into the worker, so StringView/Buffer arguments are
copied in by value and returned ones copied out into host memory: a returned
Buffer is allocated with the HostApi's ``alloc`` (the caller owns it and may
``free`` it, as polyplug's contract says); a returned StringView stays valid
until the calling thread's next call through a trampoline.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import struct
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import _idl
from ._channel_ffi import ffi, lib
from ._contract import AbiErrorCode, GuestContract, PayloadTooLarge
from ._layout import Layout, TypeLayout
from ._marshal import NULL as NULL_OFFSET
from ._typed import _Route
from .errors import (
    BundleUnavailable,
    CallTimeout,
    ManifestError,
    PluginCallError,
    ProtocolError,
    StaleHandle,
    WorkerCrashed,
)

if TYPE_CHECKING:
    from ._proxy import WorkerProxy

_logger = logging.getLogger("polyplug_isolated")
_VIEW = struct.Struct("=QQ")


class BridgeOwner(Protocol):
    """What the C HostApi needs of a polyplug-style runtime."""

    def host_lifecycle(self, op: int, path: bytes, bundle_id: int) -> None: ...
    def host_find(self, contract_id: int, min_version: int) -> list[tuple[int, int]]: ...
    def host_interface(self, index: int, generation: int) -> int: ...
    def host_bundle_ids(self) -> list[int]: ...
    def host_register_loader(self, loader: int) -> None: ...
    def host_log(self, level: int, scope: str, message: str) -> None: ...


# ---- the process-wide registries the C callbacks look things up in ------------------

_owners: dict[int, weakref.ref[Any]] = {}
_keys = itertools.count(1)
_tokens = itertools.count(1)
_lock = threading.Lock()
_targets: dict[int, tuple[Interface, int]] = {}  # function trampoline -> (interface, fn index)
_slots: dict[int, Interface] = {}  # interface trampoline (create/destroy) -> interface
_returned = threading.local()  # StringView bytes kept for the calling thread's last call


class _Pool:
    """Contiguous ranges of trampoline numbers. Fresh numbers go first, so that a
    function pointer kept past its unload keeps answering StaleHandle for as long
    as the pool lasts."""

    def __init__(self, size: int):
        self.size = size
        self.cursor = 0
        self.freed: list[tuple[int, int]] = []

    def take(self, count: int) -> int | None:
        if self.size - self.cursor >= count:
            self.cursor += count
            return self.cursor - count
        for i, (start, length) in enumerate(self.freed):
            if length >= count:
                self.freed[i] = (start + count, length - count)
                return start
        return None

    def give(self, start: int, count: int) -> None:
        if count:
            self.freed.append((start, count))


_function_pool = _Pool(lib.PPH_FUNCTION_TRAMPOLINES)
_interface_pool = _Pool(lib.PPH_INTERFACE_TRAMPOLINES)


class HostApiTable:
    """One runtime's C HostApi; the table outlives the runtime (it then answers "closed")."""

    def __init__(self, owner: BridgeOwner):
        self.key = next(_keys)
        self._c = lib.pph_runtime_new(self.key)
        if self._c == ffi.NULL:
            raise MemoryError("cannot allocate the host's HostApi")
        _owners[self.key] = weakref.ref(owner)
        self.address = int(ffi.cast("uintptr_t", lib.pph_host_api(self._c)))

    def set_last_error(self, message: str) -> None:
        data = message.encode("utf-8", "replace")
        lib.pph_set_last_error(self._c, data, len(data))

    def bump_revision(self) -> None:
        lib.pph_bump_revision(self._c)

    def close(self) -> None:
        lib.pph_runtime_close(self._c)
        _owners.pop(self.key, None)


# ---- one function's bytes ---------------------------------------------------------


@dataclass(frozen=True)
class _Function:
    """Where one function's args and out hold StringViews and Buffers, from api.toml."""

    args_size: int
    out_size: int
    arg_views: tuple[tuple[int, bool], ...]  # (offset, is a Buffer)
    out_views: tuple[tuple[int, bool], ...]

    @classmethod
    def of(cls, args: TypeLayout | None, out: TypeLayout | None) -> _Function:
        return cls(
            args.size if args else 0,
            out.size if out else 0,
            tuple((offset, view.owned) for offset, view in (args.views if args else ())),
            tuple((offset, view.owned) for offset, view in (out.views if out else ())),
        )

    def encode(self, args: Any) -> tuple[bytes, list[tuple[int, int]]]:
        """The args record (and the bytes its views point at), with the worker's fixups."""
        if args == ffi.NULL or not self.args_size:
            return b"", []
        if not self.arg_views:
            return ffi.buffer(args, self.args_size)[:], []
        record = bytearray(ffi.buffer(args, self.args_size))
        tail: list[bytes] = []
        size = self.args_size
        for offset, owned in self.arg_views:
            pointer, length = _VIEW.unpack_from(record, offset)
            if pointer == 0:
                _VIEW.pack_into(record, offset, NULL_OFFSET, 0)
            else:
                tail.append(ffi.buffer(ffi.cast("uint8_t *", pointer), length)[:])
                _VIEW.pack_into(record, offset, size, length)
                size += length
            if owned:  # the worker's copy holds len bytes: cap must not promise more
                struct.pack_into("=Q", record, offset + 16, length if pointer else 0)
        fixups = [(offset, lib.PP_FIX_ARG_POINTER) for offset, _ in self.arg_views]
        return bytes(record) + b"".join(tail), fixups

    def out_fixups(self) -> list[tuple[int, int]]:
        return [(o, lib.PP_FIX_OUT_BUFFER if owned else lib.PP_FIX_OUT_VIEW) for o, owned in self.out_views]

    def decode(self, out: bytes, ret: bytes) -> bytes:
        """``out`` with each returned view's offset into ``ret`` replaced by host memory."""
        if not self.out_views:
            return out
        patched = bytearray(out)
        keep = _returned.__dict__.setdefault("views", [])
        keep.clear()
        for offset, owned in self.out_views:
            where, length = _VIEW.unpack_from(patched, offset)
            if where == NULL_OFFSET or length == 0:
                address = 0
                length = 0 if where == NULL_OFFSET else length
            elif where > len(ret) or length > len(ret) - where:
                raise _Breach(f"a {'Buffer' if owned else 'StringView'} at {where}+{length}")
            elif owned:
                memory = lib.pph_alloc(length, 1)
                if memory == ffi.NULL:
                    raise MemoryError(f"cannot allocate {length} bytes for a returned Buffer")
                ffi.memmove(memory, ret[where : where + length], length)
                address = int(ffi.cast("uintptr_t", memory))
            else:
                memory = ffi.from_buffer(ret, require_writable=False)
                keep.append(ret)
                address = int(ffi.cast("uintptr_t", memory)) + where
            _VIEW.pack_into(patched, offset, address, length)
            if owned:
                struct.pack_into("=Q", patched, offset + 16, length)
        return bytes(patched)


class _Breach(Exception):
    """A returned view lies outside the bytes the worker copied back."""


def api_functions(api: _idl.Api, contract_id: int) -> list[_Function] | None:
    """Each function of the contract ``api`` declares with that id, in fn_id order."""
    for contract in api.guest_contracts:
        if contract.id == contract_id:
            layout = Layout(api)
            return [
                _Function.of(layout.args(contract, f), layout.of(f.returns) if f.returns else None)
                for f in contract.functions
            ]
    return None


def load_api_functions(candidates: list[Path], contract_id: int, where: str) -> list[_Function]:
    """The contract's functions from the first api.toml declaring it.

    Raises:
        ManifestError: none of them does (or one is invalid).
    """
    for path in candidates:
        if path.is_file():
            found = api_functions(_idl.parse_api(path), contract_id)
            if found is not None:
                return found
    looked = ", ".join(str(p) for p in candidates) or "nowhere"
    raise ManifestError(
        f"{where}: no api.toml declares contract 0x{contract_id:016X} (looked at: {looked}); the host's "
        "function table needs each function's args and out layout: put the contract's api.toml beside "
        "the bundle's manifest.toml or pass it with Runtime(apis=[...])",
        bundle=where,
    )


# ---- one resolved interface ----------------------------------------------------------


class Interface:
    """A GuestContractInterface handed to the host, and the instances made through it."""

    def __init__(self, contract: GuestContract, functions: list[_Function]):
        self.contract = contract
        self.functions = functions
        self.function_count = contract.function_count
        self.version = contract.version
        # _Route.call: (fn, instance, args, fixups, out_size, returns_views, worker) -> (out, ret, worker)
        self.route = _Route(contract)
        self._call_ex: Callable[..., tuple[bytes, bytes, WorkerProxy]] = self.route.call
        self.instances: dict[int, tuple[WorkerProxy, int]] = {}
        with _lock:
            slot = _interface_pool.take(1)
            first = _function_pool.take(self.function_count)
            if slot is None or first is None:
                if slot is not None:
                    _interface_pool.give(slot, 1)
                if first is not None:
                    _function_pool.give(first, self.function_count)
                raise BundleUnavailable(
                    f"bundle {contract.bundle.name!r}: no host trampolines left for another interface "
                    f"({lib.PPH_INTERFACE_TRAMPOLINES} interfaces, {lib.PPH_FUNCTION_TRAMPOLINES} functions "
                    "per process); unload bundles you no longer use",
                    bundle=contract.bundle.name,
                )
            major, minor, patch = contract.version
            pointer = lib.pph_interface_new(
                slot, contract.contract_id, major, minor, patch, first, self.function_count
            )
            if pointer == ffi.NULL:  # pragma: no cover - calloc failed
                raise MemoryError("cannot allocate a GuestContractInterface")
            self.slot, self.first = slot, first
            _slots[slot] = self
            for fn in range(self.function_count):
                _targets[first + fn] = (self, fn)
        self.address = int(ffi.cast("uintptr_t", pointer))

    def retire(self) -> None:
        """Its bundle is gone: its trampolines answer StaleHandle until the pool reuses them."""
        with _lock:
            if _slots.get(self.slot) is not self:
                return
            del _slots[self.slot]
            for fn in range(self.function_count):
                _targets.pop(self.first + fn, None)
            _interface_pool.give(self.slot, 1)
            _function_pool.give(self.first, self.function_count)

    def call(self, fn: int, token: int, args: Any, out: Any) -> bytes | None:
        """Runs functions[fn] on the instance ``token`` names (0: the default one) in the
        worker; returns the out bytes to copy back."""
        spec = self.functions[fn] if fn < len(self.functions) else None
        if spec is None:
            raise PluginCallError(
                f"bundle {self.contract.bundle.name!r}: {self.contract.name} function {fn} is registered "
                "but its api.toml does not declare it, so its args and out layout are unknown",
                code=AbiErrorCode.FUNCTION_NOT_AVAILABLE,
                plugin_message="function not declared in api.toml",
                bundle=self.contract.bundle.name,
                function=fn,
            )
        blob, fixups = spec.encode(args)
        out_size = spec.out_size if out != ffi.NULL else 0
        if out_size:
            fixups += spec.out_fixups()
        if token == 0 and not fixups:
            return self.contract.call(fn, blob, out_size)  # the fast path, the default instance
        worker, handle = self._instance(token) if token else (None, 0)
        returns_views = bool(out_size and spec.out_views)
        result, ret, proxy = self._call_ex(fn, handle, blob, fixups, out_size, returns_views, worker)
        try:
            return spec.decode(result, ret) if out_size else result
        except _Breach as breach:
            raise self.route.breach(proxy, f"{self.contract.name} function {fn}", str(breach)) from None

    def _instance(self, token: int) -> tuple[WorkerProxy, int]:
        found = self.instances.get(token)
        if found is None:
            raise StaleHandle(
                f"bundle {self.contract.bundle.name!r}: instance {token:#x} was destroyed or was not made "
                "by this interface's create_instance; create a new one",
                bundle=self.contract.bundle.name,
            )
        return found

    def create(self) -> int:
        out, _, worker = self._call_ex("create_instance", 0, b"", [], 4, False)
        token = next(_tokens)
        self.instances[token] = (worker, int.from_bytes(out, "little"))
        return token

    def destroy(self, token: int) -> None:
        found = self.instances.pop(token, None)
        if found is None:
            return
        worker, handle = found
        if self.contract.bundle.proxy is worker and worker.alive:
            # Draining: the worker destroys its instances before it unloads.
            with contextlib.suppress(BundleUnavailable):
                self._call_ex("destroy_instance", handle, b"", [], 0, False, worker)


# ---- errors as an AbiError -------------------------------------------------------------

_CODES: tuple[tuple[type[Exception], int], ...] = (
    (StaleHandle, AbiErrorCode.STALE_HANDLE),
    (BundleUnavailable, AbiErrorCode.STALE_HANDLE),
    (WorkerCrashed, AbiErrorCode.PANIC),
    (CallTimeout, AbiErrorCode.PANIC),
    (ProtocolError, AbiErrorCode.PANIC),
    (PayloadTooLarge, AbiErrorCode.BUFFER_TOO_SMALL),
)


def _abi_error(err: Any, exc: BaseException) -> None:
    if isinstance(exc, PluginCallError):
        code, message = exc.code, exc.message
    else:
        code = next((c for kind, c in _CODES if isinstance(exc, kind)), AbiErrorCode.GENERIC)
        message = str(exc)
    data = message.encode("utf-8", "surrogateescape")
    lib.pph_set_abi_error(err, code, data, len(data))


_last_error = threading.local()


def last_call_error() -> BaseException | None:
    """The exception behind the calling thread's last failed trampoline call."""
    return getattr(_last_error, "value", None)


# ---- the C callbacks ---------------------------------------------------------------------


def _owner(key: int) -> Any:
    ref = _owners.get(key)
    return ref() if ref is not None else None


_F = TypeVar("_F", bound=Callable[..., Any])


def _extern(function: _F) -> _F:
    """Registers ``function`` as the Python side of the extern "Python+C" of its name."""
    ffi.def_extern()(function)
    return function


def _guarded(default: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Nothing may unwind into C: an unexpected error is logged and the default returned."""

    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any) -> Any:
            try:
                return function(*args)
            except Exception:
                _logger.exception("polyplug_isolated HostApi: %s failed", function.__name__)
                return default

        guarded.__name__ = function.__name__
        return guarded

    return wrap


@_extern
@_guarded(1)
def pph_py_lifecycle(key: int, op: int, path: Any, path_len: int, bundle_id: int) -> int:
    owner = _owner(key)
    if owner is None:
        return 1
    raw = ffi.buffer(path, path_len)[:] if op != lib.PPH_UNLOAD else b""
    try:
        owner.host_lifecycle(op, raw, bundle_id)
    except Exception as exc:
        owner.host_table.set_last_error(str(exc))
        return 1
    return 0


@_extern
@_guarded(0)
def pph_py_find(key: int, contract_id: int, min_version: int, find_all: int, out: Any, found: Any) -> int:
    owner = _owner(key)
    if owner is None:
        return 0
    handles = owner.host_find(contract_id, min_version)
    if not find_all:
        if handles:
            found.index, found.generation = handles[0]
        return len(handles)
    if handles:
        items = lib.pph_alloc(8 * len(handles), 4)
        if items == ffi.NULL:
            return 0
        array = ffi.cast("GuestContractHandle *", items)
        for i, (index, generation) in enumerate(handles):
            array[i].index, array[i].generation = index, generation
        out.items, out.len = items, len(handles)
    return len(handles)


@_extern
@_guarded(ffi.NULL)
def pph_py_resolve(key: int, index: int, generation: int) -> Any:
    owner = _owner(key)
    if owner is None:
        return ffi.NULL
    try:
        address = owner.host_interface(index, generation)
    except Exception as exc:
        owner.host_table.set_last_error(str(exc))
        return ffi.NULL
    return ffi.cast("GuestContractInterface *", address) if address else ffi.NULL


@_extern
@_guarded(0)
def pph_py_list_bundles(key: int, out: Any) -> int:
    owner = _owner(key)
    ids = owner.host_bundle_ids() if owner is not None else []
    if ids:
        items = lib.pph_alloc(8 * len(ids), 8)
        if items == ffi.NULL:
            return 0
        array = ffi.cast("uint64_t *", items)
        for i, bundle_id in enumerate(ids):
            array[i] = bundle_id
        out.items, out.len = items, len(ids)
    return len(ids)


@_extern
@_guarded(1)
def pph_py_register_loader(key: int, loader: Any) -> int:
    owner = _owner(key)
    if owner is None:
        return 1
    try:
        owner.host_register_loader(int(ffi.cast("uintptr_t", loader)))
    except Exception as exc:
        owner.host_table.set_last_error(str(exc))
        return 1
    return 0


@_extern
@_guarded(None)
def pph_py_log(key: int, level: int, scope: Any, scope_len: int, message: Any, message_len: int) -> None:
    owner = _owner(key)
    if owner is not None:
        owner.host_log(level, _text(scope, scope_len), _text(message, message_len))


def _text(pointer: Any, length: int) -> str:
    return ffi.buffer(pointer, length)[:].decode("utf-8", "replace") if length else ""


@_extern
def pph_py_call(trampoline: int, instance: int, args: Any, out: Any, err: Any) -> None:
    # The trampoline already wrote an Ok AbiError: only a failure is written here.
    try:
        target = _targets.get(trampoline)
        if target is None:
            raise StaleHandle(
                "this function pointer belongs to an interface whose bundle was unloaded; "
                "find and resolve the contract again"
            )
        interface, fn = target
        data = interface.call(fn, instance, args, out)
        if data:
            ffi.memmove(out, data, len(data))
    except BaseException as exc:
        _last_error.value = exc
        _abi_error(err, exc)


@_extern
def pph_py_create(slot: int, args: Any, out_instance: Any) -> None:
    out_instance.data, out_instance.contract_id = ffi.NULL, 0
    interface = _slots.get(slot)
    if interface is None:
        _logger.error("create_instance on an interface whose bundle was unloaded: no instance made")
        return
    if args != ffi.NULL:
        _logger.error(
            "bundle %r: create_instance with a config: its size is not in api.toml, so it cannot be "
            "copied to the worker; pass NULL (as polyplug's generated callers do)",
            interface.contract.bundle.name,
        )
        return
    try:
        token = interface.create()
    except Exception:
        _logger.exception("bundle %r: create_instance failed", interface.contract.bundle.name)
        return
    out_instance.data = ffi.cast("void *", token)
    out_instance.contract_id = interface.contract.contract_id


@_extern
def pph_py_destroy(slot: int, instance: Any) -> None:
    interface = _slots.get(slot)
    if interface is not None:
        try:
            interface.destroy(int(ffi.cast("uintptr_t", instance)))
        except Exception:
            _logger.exception("bundle %r: destroy_instance failed", interface.contract.bundle.name)
