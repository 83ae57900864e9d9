"""Typed proxies: a contract's functions called with Python values, as api.toml declares them.

::

    add = rt.contract("test.add", api="fixtures/adder/api.toml")
    add.add_primitive(2, 3)                              # 5
    with counter.instance(counter.types.CounterConfig(0, 2, "two")) as c:
        c.increment()                                    # 2

Built once per function: argument binding, a ``struct.Struct`` from the cffi
layout (_layout), the pointer fixups of its StringView/Buffer fields, and how
to decode ``out``. Then per call::

    values ─encode─► flat values ─Struct.pack─► args record ++ the views' bytes
      (a value that does not fit is a TypeError/ValueError naming the function and
       parameter, raised before anything is sent)
    ─► worker: ARG_POINTER fixups make the views' offsets pointers into its own
       mapping; returned views are copied into the return area (Buffers then freed
       with host->free there) and come back as offsets
    ◄─ out ─Struct.unpack─decode─► a Python value

The host never dereferences a pointer from the worker: a returned view is an
(offset, length) into the bytes the worker copied back, bounds-checked here; a
worker that answers one outside them broke the protocol and is killed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import operator
import os
import struct
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _checks as check
from . import _idl
from ._channel import ChannelFailure
from ._channel_ffi import lib
from ._compiled import compile_function
from ._contract import _DEFAULT, GuestContract, _Default
from ._layout import Layout
from ._marshal import (
    _Bad,
    _Bool,
    _Breach,
    _Float,
    _Int,
    _Tail,
    _Types,
)
from .errors import BundleUnavailable, ProtocolError

if TYPE_CHECKING:
    from ._bundle import Bundle
    from ._channel import Channel
    from ._proxy import WorkerProxy
    from ._runtime import Runtime

_MISSING = object()
# A call whose out holds views keeps the rest of its slot for the return area;
# when less than this would be left, it takes the (shared, one-at-a-time) arena.
_MIN_RETURN_ROOM = 1024
_INSTANCE_FUNCTIONS = {
    "create_instance": lib.PP_FN_CREATE_INSTANCE,
    "destroy_instance": lib.PP_FN_DESTROY_INSTANCE,
}


# ---- one function -------------------------------------------------------------


class _Call:
    """What one function's calls share: binding, packing, fixups, decoding."""

    def __init__(self, contract: _idl.Contract, function: _idl.Function, layout: Layout, types: _Types):
        self.index = function.index
        self.where = f"{contract.name}.{function.name}()"
        self.params = tuple(p.name for p in function.params)
        self.positions = {name: i for i, name in enumerate(self.params)}
        # All by keyword, the common case: one C call picks them in order.
        self.by_name = operator.itemgetter(*self.params) if len(self.params) > 1 else None
        self.codecs = tuple(types.codec(p.type) for p in function.params)
        args = layout.args(contract, function)
        self.args_layout = args
        self.args_size = args.size if args else 0
        self.pack = struct.Struct("=" + (args.format if args else "")).pack
        returns = function.returns
        out = layout.of(returns) if returns is not None else None
        self.out_layout = out
        self.out_size = out.size if out else 0
        self.out_format = out.format if out else ""
        self.unpack = struct.Struct("=" + (out.format if out else "")).unpack
        self.result_codec = types.codec(returns) if returns is not None else None
        fixups = [(offset, lib.PP_FIX_ARG_POINTER) for offset, _ in (args.views if args else ())]
        fixups += [
            (offset, lib.PP_FIX_OUT_BUFFER if view.owned else lib.PP_FIX_OUT_VIEW)
            for offset, view in (out.views if out else ())
        ]
        self.fixups = fixups
        self.returns_views = bool(out and out.views)
        # Numbers only: Struct.pack checks every range itself, no per-value work.
        self.plain = all(type(codec) in (_Int, _Float) for codec in self.codecs)
        self.signature = inspect.Signature(
            [
                inspect.Parameter(
                    p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=types.python_type(p.type)
                )
                for p in function.params
            ],
            return_annotation=types.python_type(returns) if returns is not None else None,
        )

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """Positional and keyword arguments as one tuple in declaration order."""
        count = len(self.params)
        if not args and len(kwargs) == count and self.by_name is not None:
            try:
                picked: tuple[Any, ...] = self.by_name(kwargs)
                return picked
            except KeyError:  # a wrong name: the loop below says which
                pass
        if len(args) > count:
            raise TypeError(f"{self.where} takes {count} argument(s) but {len(args)} were given")
        values = [*args, *[_MISSING] * (count - len(args))]
        for key, value in kwargs.items():
            position = self.positions.get(key)
            if position is None:
                raise TypeError(f"{self.where} got an unexpected keyword argument {key!r}")
            if values[position] is not _MISSING:
                raise TypeError(f"{self.where} got multiple values for argument {key!r}")
            values[position] = value
        missing = [name for name, value in zip(self.params, values, strict=True) if value is _MISSING]
        if missing:
            raise TypeError(f"{self.where} is missing required argument(s): {', '.join(map(repr, missing))}")
        return tuple(values)

    def encode(self, values: tuple[Any, ...]) -> bytes:
        """The args blob: the record, then the bytes its views point at."""
        if self.plain:
            try:
                return self.pack(*values)
            except (struct.error, TypeError, ValueError, OverflowError) as exc:
                raise self.explain(values, exc) from None
        flat: list[Any] = []
        tail = _Tail(self.args_size)
        for name, codec, value in zip(self.params, self.codecs, values, strict=True):
            try:
                codec.encode(value, flat, tail)
            except _Bad as bad:
                raise self.bad(name, bad) from None
        record = self.pack(*flat)
        return record + b"".join(tail.parts) if tail.parts else record

    def explain(self, values: tuple[Any, ...], exc: Exception) -> Exception:
        """The precise error for values Struct.pack refused."""
        for name, codec, value in zip(self.params, self.codecs, values, strict=True):
            try:
                codec.encode(value, [], _Tail(0))
            except _Bad as bad:
                return self.bad(name, bad)
        return TypeError(f"{self.where}: the arguments cannot be packed: {exc}")

    def bad(self, param: str, bad: _Bad) -> Exception:
        field = f", field {'.'.join(reversed(bad.path))!r}" if bad.path else ""
        return bad.error(f"{self.where}: parameter {param!r}{field}: {bad.message}")

    def result(self, out: bytes, ret: bytes) -> Any:
        if self.result_codec is None:
            return None
        return self.result_codec.decode(iter(self.unpack(out)), ret)


# ---- calls through the worker ---------------------------------------------------


class _Route:
    """call_ex through a GuestContract: fixups, instances, the contract's current worker.

    GuestContract.call serves plain calls on the default instance; this is its
    counterpart for the rest, reusing the contract's binding (it follows reloads)
    and its translation of channel failures into the public errors.
    """

    def __init__(self, contract: GuestContract, timeout: float | _Default | None = _DEFAULT):
        self.contract = contract
        self.timeout = timeout  # the calls' own timeout (with_options), else the runtime's

    def call(
        self,
        fn: int | str,
        instance: int,
        args: bytes,
        fixups: list[tuple[int, int]],
        out_size: int,
        returns_views: bool,
        worker: WorkerProxy | None = None,
    ) -> tuple[bytes, bytes, WorkerProxy]:
        """Returns (out, return area, the worker that answered)."""
        contract = self.contract
        proxy, _, index = contract.route()  # raises BundleUnavailable when no worker serves the bundle
        if worker is not None and proxy is not worker:
            raise BundleUnavailable(
                f"bundle {contract.bundle.name!r}: instance {instance} lived in worker {worker.pid}, which "
                "has been replaced (reload or restart) and took the instance's state with it; "
                "create a new instance",
                bundle=contract.bundle.name,
                function=fn,
            )
        if type(fn) is int and not 0 <= fn < contract.function_count:
            raise contract._no_such_function(fn)
        channel = proxy.channel
        wait = contract.wait_for(self.timeout)
        room = _return_room(channel, len(args), len(fixups), out_size) if returns_views else 0
        try:
            out, ret = channel.call_ex(
                index,
                _INSTANCE_FUNCTIONS[fn] if isinstance(fn, str) else fn,
                instance,
                args,
                fixups,
                out_size,
                room,
                wait,
            )
        except ChannelFailure as failure:
            if worker is None and contract._rerouted(failure, proxy):
                return self.call(fn, instance, args, fixups, out_size, returns_views)
            raise contract._error(failure, proxy, fn, wait) from None
        return out, ret, proxy

    def breach(self, proxy: WorkerProxy, where: str, what: str) -> ProtocolError:
        name = self.contract.bundle.name
        proxy.kill(f"answered {what} outside the return area of a call to {where}")
        return ProtocolError(
            f"bundle {name!r}: {where}: the worker (pid {proxy.pid}) answered {what} that lies outside "
            "the bytes it copied back, and was killed",
            bundle=name,
        )


def _return_room(channel: Channel, args_len: int, fixups: int, out_size: int) -> int:
    """Bytes for the return area: what the request leaves of a slot's payload (else the arena's).

    Mirrors pp_layout_of (worker/channel.h) with the host's extra RETURN_CAP
    fixup. Rounded down to a multiple of 8: the worker starts each view at an
    8-aligned offset, and its room check (``len > cap - used``, unsigned)
    would wrap if the padding took ``used`` past a capacity that is not.
    """
    used = _align8(_align8(args_len) + 8 * (fixups + 1) + out_size)
    room = channel.payload_cap - used
    if room < _MIN_RETURN_ROOM:
        room = channel.arena_cap - used
    return max(room, 0) // 8 * 8


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _method(call: _Call, route: _Route, handle: _Handle | None = None) -> Callable[..., Any]:
    """The callable for one function, on the default instance or on ``handle``'s."""
    bind, encode, result = call.bind, call.encode, call.result
    index, out_size, fixups, count = call.index, call.out_size, call.fixups, len(call.params)
    if handle is None and not fixups:
        raw: Callable[..., bytes] = route.contract.call
        if route.timeout is not _DEFAULT:
            raw = functools.partial(raw, timeout=route.timeout)
        if call.plain and call.result_codec is not None and type(call.result_codec) in (_Int, _Float, _Bool):
            # The hot path: one Struct.pack, the raw call, one Struct.unpack.
            pack, unpack = call.pack, call.unpack

            def method(*args: Any, **kwargs: Any) -> Any:
                if kwargs or len(args) != count:
                    args = bind(args, kwargs)
                try:
                    blob = pack(*args)
                except (struct.error, TypeError, ValueError, OverflowError) as exc:
                    raise call.explain(args, exc) from None
                return unpack(raw(index, blob, out_size))[0]

        else:

            def method(*args: Any, **kwargs: Any) -> Any:
                if kwargs or len(args) != count:
                    args = bind(args, kwargs)
                return result(raw(index, encode(args), out_size), b"")

    else:
        instance, worker = (handle.value, handle.worker) if handle else (0, None)
        # A call and close() on one instance exclude each other: a call sent after
        # its destroy would be refused by the worker, which counts as a breach.
        guard = handle.lock if handle else contextlib.nullcontext()
        returns_views = call.returns_views

        def method(*args: Any, **kwargs: Any) -> Any:
            if kwargs or len(args) != count:
                args = bind(args, kwargs)
            blob = encode(args)
            with guard:
                if handle is not None and handle.closed:
                    raise ValueError(f"{call.where}: the instance is closed")
                out, ret, proxy = route.call(index, instance, blob, fixups, out_size, returns_views, worker)
            try:
                return result(out, ret)
            except _Breach as breach:
                raise route.breach(proxy, call.where, str(breach)) from None

    method.__name__ = method.__qualname__ = call.where[:-2].rsplit(".", 1)[1]
    method.__signature__ = call.signature  # type: ignore[attr-defined]
    method.__doc__ = f"{call.where[:-2]}{call.signature} (function {index})"
    return method


def _compiled(call: _Call, route: _Route) -> Any:
    """The function on the default instance: compiled to one C call where its shape allows (_compiled)."""
    method = _method(call, route)
    fast = compile_function(call, route.contract, method, call.args_layout)
    if fast is None:
        return method
    fast.__name__ = fast.__qualname__ = method.__name__
    fast.__signature__ = method.__signature__  # type: ignore[attr-defined]
    fast.__doc__ = method.__doc__
    return fast


def _attach(owner: object, functions: dict[str, Any]) -> None:
    """Functions become attributes, except where the class already has that name."""
    for name, function in functions.items():
        if not hasattr(type(owner), name):
            setattr(owner, name, function)


# ---- the public objects ------------------------------------------------------------


class TypedContract:
    """A guest contract whose functions are methods taking and returning Python values.

    Made by ``Runtime.contract`` or ``Bundle.contract``. Each IDL function is a
    method (and is in ``functions``, which also holds any whose name the class
    uses, such as ``instance``). ``types`` holds the IDL's enums (IntEnum,
    IntFlag) and structs (dataclasses). Calls go to the contract's default
    instance; ``instance()`` makes another. The proxy follows its bundle across
    reloads and restarts, as GuestContract does.
    """

    def __init__(self, contract: GuestContract, idl: _idl.Contract, api: _idl.Api):
        self.contract = contract
        contract.function_names = {f.index: f.name for f in idl.functions}
        self.idl = idl
        self._api = api
        self._layout = Layout(api)
        self._types = _Types(api)
        self.types = self._types.namespace
        self._route = _Route(contract)
        self._calls = {f.name: _Call(idl, f, self._layout, self._types) for f in idl.functions}
        self.functions = {name: _compiled(call, self._route) for name, call in self._calls.items()}
        _attach(self, self.functions)

    @functools.cached_property
    def aio(self) -> Any:
        """The functions as coroutine functions: ``await proxy.aio.add(1, 2)`` (README: asyncio)."""
        from ._typed_async import async_methods

        return async_methods(self)

    def with_options(self, *, timeout: float | None) -> TypedContract:
        """This contract with per-call options; the original is unchanged::

            add.with_options(timeout=0.5).add_primitive(2, 3)  # CallTimeout after 0.5 s

        ``timeout`` (seconds, or None for no limit) replaces the Runtime's
        ``call_timeout`` for calls through the result and its instances.
        """
        check.timeout(f"{self.idl.name}.with_options", "timeout", timeout, "with_options(timeout=0.5)")
        clone = copy.copy(self)
        clone._route = _Route(self.contract, timeout)
        clone.functions = {name: _method(call, clone._route) for name, call in self._calls.items()}
        _attach(clone, clone.functions)
        return clone

    def instance(self, config: Any = None, *, config_type: str | None = None) -> ContractInstance:
        """Runs the contract's ``create_instance(config)`` in the worker.

        ``config`` is what its args point at: None (NULL, as polyplug's generated
        callers pass), raw bytes, an instance of one of ``types``' dataclasses, or
        any value of the IDL type named by ``config_type`` (a dict for a struct).
        Use the result as a context manager: leaving it destroys the instance.
        Instances still alive at unload are destroyed by the worker before dlclose.
        """
        fixups: list[tuple[int, int]] = []
        if config_type is None and (config is None or isinstance(config, (bytes, bytearray, memoryview))):
            args = bytes(config or b"")
        else:
            if config_type is None:
                config_type = type(config).__name__
                if self._types.classes.get(config_type) is not type(config):
                    raise TypeError(
                        f"{self.idl.name}.instance(): config must be None, bytes, one of proxy.types' "
                        f"dataclasses, or a value of the type named by config_type=, not {config_type}"
                    )
            found = self._api.structs.get(config_type) or self._api.enums.get(config_type)
            idl_type = found or _idl.BUILTINS.get(config_type)
            if idl_type is None:
                raise TypeError(f"{self.idl.name}.instance(): the api.toml has no type {config_type!r}")
            flat: list[Any] = []
            layout = self._layout.of(idl_type)
            tail = _Tail(layout.size)
            try:
                self._types.codec(idl_type).encode(config, flat, tail)
            except _Bad as bad:
                field = f" field {'.'.join(reversed(bad.path))!r}" if bad.path else ""
                raise bad.error(f"{self.idl.name}.instance(): config{field}: {bad.message}") from None
            args = struct.pack("=" + layout.format, *flat) + b"".join(tail.parts)
            fixups = [(offset, lib.PP_FIX_ARG_POINTER) for offset, _ in layout.views]
        out, _, worker = self._route.call("create_instance", 0, args, fixups, 4, False)
        return ContractInstance(self, _Handle(int.from_bytes(out, sys.byteorder), worker))

    def __repr__(self) -> str:
        return f"<TypedContract {self.idl.name}@{self.idl.major} of bundle {self.contract.bundle.name!r}>"


@dataclasses.dataclass
class _Handle:
    value: int
    worker: WorkerProxy
    closed: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class ContractInstance:
    """An instance made by ``TypedContract.instance()``: the contract's functions, on its state."""

    def __init__(self, typed: TypedContract, handle: _Handle):
        self._typed = typed
        self._handle = handle
        self.functions = {name: _method(call, typed._route, handle) for name, call in typed._calls.items()}
        _attach(self, self.functions)

    @property
    def handle(self) -> int:
        """The worker's handle for the instance."""
        return self._handle.value

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def close(self) -> None:
        """Runs ``destroy_instance`` in the worker. Idempotent. Nothing to do when the
        worker that held the instance is gone (it took the instance with it) or is
        draining (it destroys its instances before it unloads the library)."""
        handle = self._handle
        with handle.lock:
            if handle.closed:
                return
            handle.closed = True
            if self._typed.contract.bundle.proxy is not handle.worker or not handle.worker.alive:
                return
            with contextlib.suppress(BundleUnavailable):
                self._typed._route.call("destroy_instance", handle.value, b"", [], 0, False, handle.worker)

    def __enter__(self) -> ContractInstance:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"handle {self.handle}"
        return f"<ContractInstance of {self._typed.idl.name}@{self._typed.idl.major}: {state}>"


# ---- finding the contract ------------------------------------------------------------


def open_contract(
    runtime: Runtime, name: str | int, min_version: int, api: str | os.PathLike[str] | None
) -> TypedContract:
    """Runtime.contract: the first loaded provider of the contract, typed by ``api``."""
    if api is None:
        api = _provider(runtime.bundles, name, min_version).path / "api.toml"
    parsed = _idl.parse_api(api)
    idl = _declared(parsed, name, min_version)
    handle = runtime.find_guest_contract(idl.id, min_version)
    if not handle.found:
        raise LookupError(
            f"no loaded bundle provides guest contract {idl.name}@{idl.major} (id 0x{idl.id:016X}); "
            "load the bundle that provides it first"
        )
    return TypedContract(runtime.resolve_guest_contract(handle), idl, parsed)


def open_bundle_contract(
    bundle: Bundle, name: str | int, min_version: int, api: str | os.PathLike[str] | None
) -> TypedContract:
    """Bundle.contract: this bundle's provider of the contract."""
    parsed = _idl.parse_api(bundle.path / "api.toml" if api is None else api)
    idl = _declared(parsed, name, min_version)
    if not any(info.contract_id == idl.id for info in bundle.contracts):
        raise LookupError(f"bundle {bundle.name!r} does not provide guest contract {idl.name}@{idl.major}")
    proxy = bundle.proxy
    if proxy is None:
        raise BundleUnavailable(f"bundle {bundle.name!r} is {bundle.state.name}", bundle=bundle.name)
    return TypedContract(GuestContract(bundle, idl.id, proxy._config), idl, parsed)


def _provider(bundles: list[Bundle], name: str | int, min_version: int) -> Bundle:
    """The first loaded bundle registering the contract; its api.toml types it."""
    bare = name.split("@", 1)[0] if isinstance(name, str) else None
    for bundle in bundles:
        for info in bundle.contracts:
            matches = info.name.split("@", 1)[0] == bare if bare else info.contract_id == name
            if matches and info.version[0] >= min_version:
                return bundle
    raise LookupError(f"no loaded bundle provides guest contract {name!r} at major >= {min_version}")


def _declared(api: _idl.Api, name: str | int, min_version: int) -> _idl.Contract:
    if isinstance(name, str):
        bare, _, major = name.partition("@")
        found = [c for c in api.guest_contracts if c.name == bare and (not major or str(c.major) == major)]
    else:
        found = [c for c in api.guest_contracts if c.id == name]
    if not found:
        declared = ", ".join(f"{c.name}@{c.major}" for c in api.guest_contracts) or "none"
        raise LookupError(f"{api.source} declares no guest contract {name!r} (it declares: {declared})")
    contract = found[0]
    if contract.major < min_version:
        raise LookupError(
            f"{api.source} declares {contract.name} version {'.'.join(map(str, contract.version))}, "
            f"below min_version {min_version}"
        )
    return contract
