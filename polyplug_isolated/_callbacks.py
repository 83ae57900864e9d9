"""Answers a worker's calls back: host contracts, other bundles' contracts, the bundle list.

A plugin serving a call may call its host (a host contract) or another
bundle through the HostApi its worker gave it. The worker writes one request
into the call's slot (worker/callback.h); the host thread waiting on that
slot runs ``pp_on_callback`` here and answers in the same place. During
polyplug_init the same request arrives as a control frame and is answered on
the thread running the load. Either way ``Answerer.answer(bytes) -> bytes``
is the whole interface a transport needs.

Nested chains work (A calls B, B calls a host contract, which calls C): each
level is one more call back on the same host thread. A call into a bundle
whose worker is already waiting on this thread would wait for itself; the
channel refuses it (ReentrantCall, code 9), and chains deeper than
``MAX_DEPTH`` are refused too (both in _channel.c, before any Python runs).

Once a kind of request has been answered here, the answer also becomes a
route in _cbroutes.c, which reply_callback asks before this module: a host
contract of numbers is called straight from C, and a plain call into another
bundle is forwarded by the waiting host thread to that bundle's worker
without entering Python (anything but an Ok answer comes back to
``_plain_failed``, which does what the Python route does).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _cbroutes, _idl, _wire
from ._channel_ffi import ffi, lib
from ._contract import _DEFAULT, GuestContract
from ._host_contracts import HostContract, HostContracts, Refused
from ._registry import GuestContractHandle
from ._typed import _Route
from .errors import CallError, PluginCallError, StaleHandle

if TYPE_CHECKING:
    from ._bundle import Bundle
    from ._runtime import Runtime

MAX_DEPTH = lib.PP_CB_MAX_DEPTH  # nested calls back on one host thread (enforced in _channel.c)
_logger = logging.getLogger("polyplug_isolated")
_answerers: dict[int, Answerer] = {}  # by owner id; an answerer leaves when its worker ends
_ids = itertools.count(1)
_QUICK_KEY = _wire.REQUEST.size  # the whole header: a request unlike the cached one in any field is new


def _header(request: _wire.Request) -> bytes:
    """The header of a request just like ``request``: what its quick answer is kept under."""
    args = request.args or b""
    return _wire.REQUEST.pack(*request[:6], len(args), request.out_size, _flags(request))


# reply_callback asks the routes first (they call the data plane through its fast-path table).
_hook = _cbroutes.bind(int(ffi.cast("uintptr_t", lib.pp_fast_api_table())))
lib.pp_set_callback_hook(ffi.cast("void *", _hook))


@ffi.def_extern()  # type: ignore[untyped-decorator]
def pp_on_callback(owner: int, request: Any, length: int, reply: Any, cap: int) -> int:
    """C calls this (taking the GIL) when a worker asks something while serving a call;
    returns the length of the reply written at ``reply``."""
    answerer = _answerers.get(owner)
    data = ffi.buffer(request, length)[:]
    if answerer is None:
        answer = _wire.reply(_wire.GENERIC, "polyplug_isolated: this worker is no longer served")
    else:
        answer = answerer.answer(data)
    if len(answer) > cap:
        answer = _wire.reply(
            _wire.BUFFER_TOO_SMALL,
            f"polyplug_isolated: the answer ({len(answer)} bytes) exceeds the {cap} bytes left in the slot",
        )
    if len(answer) > cap:
        return -1
    ffi.memmove(reply, answer, len(answer))
    return len(answer)


def _error_reply(error: CallError) -> bytes:
    """A failed call as the calling plugin gets it: the other plugin's own AbiError, else GENERIC."""
    if isinstance(error, PluginCallError):
        return _wire.reply(error.code, error.message)
    return _wire.reply(_wire.GENERIC, str(error))


def _flags(request: _wire.Request) -> int:
    """The request's PP_CB_* flags (a route answers only requests with the same)."""
    return (lib.PP_CB_ARGS_NULL if request.args is None else 0) | (
        lib.PP_CB_OUT_NULL if request.out_null else 0
    )


class Directory:
    """What every worker of one runtime may ask about: its bundles, contracts and host contracts."""

    def __init__(self, runtime: Runtime):
        self._runtime = weakref.ref(runtime)
        self.host_contracts = HostContracts()
        self._shapes: dict[tuple[str, int, int], list[_wire.FunctionShape]] = {}
        self._lock = threading.Lock()
        self.revision = 0  # moves whenever the registry changes: cached routes are dropped
        self._routed: set[int] = set()  # answerers that left routes since the last change

    def changed(self) -> None:
        """The registry changed (a load, reload or unload): handles may name other bundles now.

        Drops the routes of the answerers that left any, not of every worker:
        that was one C call per worker per change, 1,000,000 calls (1 s) to
        close a runtime of 1,000 bundles that never called back.
        """
        self.revision += 1
        with self._lock:
            routed, self._routed = self._routed, set()
        for owner in routed:
            _cbroutes.drop(owner)

    def left_route(self, owner: int) -> None:
        """The answerer ``owner`` has left a route (after it did, so a change drops it)."""
        with self._lock:
            self._routed.add(owner)

    @property
    def runtime(self) -> Runtime:
        runtime = self._runtime()
        if runtime is None:
            raise Refused(_wire.GENERIC, "polyplug_isolated: the runtime is gone")
        return runtime

    def guest_shapes(self, contract: GuestContract) -> list[_wire.FunctionShape]:
        """Each function's layout, from the api.toml beside the providing bundle's manifest."""
        api_path = contract.bundle.path / "api.toml"
        try:
            stamp = api_path.stat().st_mtime_ns
        except OSError:
            stamp = 0
        key = (str(api_path), stamp, contract.contract_id)
        with self._lock:
            cached = self._shapes.get(key)
        if cached is None:
            known: list[_wire.FunctionShape] = []
            if stamp:
                api = _idl.parse_api(api_path)
                for idl in api.guest_contracts:
                    if idl.id == contract.contract_id:
                        known = _wire.shapes(api, idl)
            count = contract.function_count
            cached = [known[i] if i < len(known) else _wire.UNDESCRIBED for i in range(count)]
            with self._lock:
                self._shapes[key] = cached
        return cached


class Answerer:
    """Answers the calls back of one worker of ``bundle``."""

    def __init__(self, directory: Directory, bundle: Bundle):
        self.id = next(_ids)
        self._directory = directory
        self._bundle = bundle
        self._api = bundle.path / "api.toml"
        self._contracts: dict[int, GuestContract] = {}
        # Requests answered before, by header (op, function, ids): how to answer them again
        # without parsing or looking anything up (the hot path of a call back).
        self._quick: dict[bytes, Callable[[bytes], bytes]] = {}
        self._revision = directory.revision
        self.initialising = False  # during polyplug_init lookups see declared dependencies only
        self._ops = {
            lib.PP_CB_HOST_GET: self._host_get,
            lib.PP_CB_HOST_IFACE: self._host_iface,
            lib.PP_CB_HOST_CALL: self._host_call,
            lib.PP_CB_HOST_CREATE: self._host_create,
            lib.PP_CB_HOST_DESTROY: self._host_destroy,
            lib.PP_CB_FIND: self._find,
            lib.PP_CB_FIND_ALL: self._find_all,
            lib.PP_CB_RESOLVE: self._resolve,
            lib.PP_CB_GUEST_CALL: self._guest_call,
            lib.PP_CB_GUEST_CREATE: self._guest_create,
            lib.PP_CB_GUEST_DESTROY: self._guest_destroy,
            lib.PP_CB_LIST_BUNDLES: self._list_bundles,
        }

    def attach(self, conn: Any) -> None:
        """Makes this the answerer of the calls back that come through ``conn``."""
        _answerers[self.id] = self
        lib.pp_conn_set_owner(conn, self.id)

    def close(self) -> None:
        """The worker ended: nothing comes through its conn any more."""
        _answerers.pop(self.id, None)
        _cbroutes.drop(self.id)

    def answer(self, data: bytes) -> bytes:
        """The reply to one request (never raises: a failure is an AbiError for the plugin)."""
        if self._revision != self._directory.revision:
            self._quick.clear()
            self._revision = self._directory.revision
        quick = self._quick.get(data[:_QUICK_KEY])
        if quick is not None and len(data) == _QUICK_KEY + _wire.args_len(data):
            return quick(data)
        try:
            request = _wire.parse_request(data)
        except _wire.BadRequest as exc:
            return _wire.reply(_wire.GENERIC, f"polyplug_isolated: {exc}")
        op = self._ops.get(request.op)
        if op is None:
            return _wire.reply(
                _wire.FUNCTION_NOT_AVAILABLE, f"polyplug_isolated: unknown call back {request.op}"
            )
        try:
            return op(request)
        except Refused as refused:
            return _wire.reply(refused.code, refused.message)
        except Exception as exc:  # the host keeps running; the plugin gets the text
            _logger.exception("bundle %r: answering a call back failed", self._bundle.name)
            return _wire.reply(_wire.GENERIC, f"polyplug_isolated: the host failed to answer: {exc}")

    # ---- host contracts ---------------------------------------------------------------

    def _host_iface(self, request: _wire.Request) -> bytes:
        return self._describe(self._directory.host_contracts.lookup(request.id, request.min_version))

    def _host_get(self, request: _wire.Request) -> bytes:
        host = self._directory.host_contracts
        contract = host.lookup(request.id, request.min_version)
        return self._describe(contract, host.instance(contract))

    def _describe(self, contract: HostContract, token: int = 0) -> bytes:
        """The interface of a host contract as the worker builds it, with the instance ``token``."""
        shapes = self._directory.host_contracts.shapes(contract, self._api)
        description = _wire.describe(contract.contract_id, contract.version, contract.singleton, shapes)
        return _wire.reply(out=description, value=token)

    def _host_call(self, request: _wire.Request) -> bytes:
        host = self._directory.host_contracts
        answer = host.call(request.instance, request, self._api)
        quick = host.quick(request.instance, request.function)
        if quick is not None:
            header = _header(request)
            self._quick[header] = quick
            _cbroutes.answer_in_python(self.id, header, quick)
            self._directory.left_route(self.id)
        return answer

    def _host_create(self, request: _wire.Request) -> bytes:
        host = self._directory.host_contracts
        return _wire.reply(value=host.instance(host.lookup(request.id, 0), fresh=True))

    def _host_destroy(self, request: _wire.Request) -> bytes:
        self._directory.host_contracts.destroy(request.instance)
        return _wire.reply()

    # ---- other bundles ---------------------------------------------------------------------

    def _visible(self, contract_id: int) -> bool:
        """polyplug's rule: during init a bundle finds only what it declared as dependencies."""
        if not self.initialising:
            return True
        return any(dep.contract_id == contract_id for dep in self._bundle.manifest.dependencies)

    def _find(self, request: _wire.Request) -> bytes:
        handle = self._directory.runtime.find_guest_contract(request.id, request.min_version)
        if not handle.found or not self._visible(request.id):
            return _wire.reply(_wire.NOT_FOUND)
        return _wire.reply(value=handle.index | handle.generation << 32)

    def _find_all(self, request: _wire.Request) -> bytes:
        handles = self._directory.runtime.find_all_by_contract(request.id, request.min_version)
        if not self._visible(request.id):
            handles = []
        packed = b"".join((h.index | h.generation << 32).to_bytes(8, "little") for h in handles)
        return _wire.reply(out=packed)

    def _list_bundles(self, request: _wire.Request) -> bytes:
        ids = [bundle.id for bundle in self._directory.runtime.bundles]
        return _wire.reply(out=b"".join(i.to_bytes(8, "little") for i in ids))

    def _contract(self, handle: int) -> GuestContract:
        """The contract ``handle`` names; a new one (bound afresh) only when its provider changed."""
        runtime = self._directory.runtime
        try:
            bundle, contract_id = runtime._provider(GuestContractHandle(handle & 0xFFFFFFFF, handle >> 32))
        except StaleHandle as exc:
            raise Refused(_wire.STALE_HANDLE, str(exc)) from None
        found = self._contracts.get(handle)
        if found is None or found.bundle is not bundle or found.contract_id != contract_id:
            found = self._contracts[handle] = GuestContract(bundle, contract_id, runtime.config)
        return found

    def _resolve(self, request: _wire.Request) -> bytes:
        contract = self._contract(request.handle)
        if contract.bundle is self._bundle:
            _, _, index = contract.route()
            return _wire.reply(value=index + 1)
        contract.route()  # binds: name, version and function count of the current worker
        shapes = self._directory.guest_shapes(contract)
        description = _wire.describe(contract.contract_id, contract.version, False, shapes)
        return _wire.reply(out=description)

    def _guest_call(self, request: _wire.Request) -> bytes:
        contract = self._contract(request.handle)
        shapes = self._directory.guest_shapes(contract)
        if request.function >= len(shapes):
            raise Refused(_wire.FUNCTION_NOT_AVAILABLE, "function index is out of range for this contract")
        shape = shapes[request.function]
        problem = _wire.misfit(request.args, shape) if request.args is not None else None
        if problem:  # the other bundle's plugin would read what args says
            raise Refused(_wire.GENERIC, f"polyplug_isolated: {problem}")
        out_size = 0 if request.out_null else shape.out_size
        views = [] if request.out_null else shape.out_views
        if not shape.arg_views and not views and out_size <= 7 and request.instance == 0:
            plain = functools.partial(self._plain_call, contract, request.function, out_size)
            header = _header(request)
            self._quick[header] = lambda data: plain(data[_wire.REQUEST.size :])
            if request.args is not None and not request.out_null and shape.args_size != _wire.UNKNOWN:
                self._forward(request.function, header, contract, shape.args_size, out_size)
            return plain(request.args or b"")
        fixups = [(offset, lib.PP_FIX_ARG_POINTER) for offset, _ in shape.arg_views] if request.args else []
        fixups += [(o, lib.PP_FIX_OUT_BUFFER if owned else lib.PP_FIX_OUT_VIEW) for o, owned in views]
        try:
            out, ret, _ = _Route(contract).call(
                request.function, request.instance, request.args or b"", fixups, out_size, bool(views)
            )
        except CallError as error:
            return _error_reply(error)
        return _wire.reply(out=out, tail=ret)

    def _forward(
        self, function: int, header: bytes, contract: GuestContract, args_size: int, out_size: int
    ) -> None:
        """Lets the C hook forward calls with this ``header`` to the bundle's current worker itself."""
        proxy, _, index = contract.route()
        conn = proxy.channel.conn
        failed = functools.partial(self._plain_failed, contract, proxy, function, out_size)
        address = int(ffi.cast("uintptr_t", conn))
        timeout = contract.wait_for(_DEFAULT)
        _cbroutes.forward(
            self.id, header, conn, address, index, function, args_size, out_size, timeout, failed
        )
        self._directory.left_route(self.id)

    @staticmethod
    def _plain_failed(
        contract: GuestContract, proxy: Any, function: int, out_size: int, status: int, args: bytes
    ) -> bytes:
        """A forwarded call that did not answer Ok: what ``_plain_call`` answers when its call fails so."""
        try:
            out = contract._failed_fast(status, proxy, function, args, out_size)
        except CallError as error:
            return _error_reply(error)
        return _wire.reply(out=out)

    @staticmethod
    def _plain_call(contract: GuestContract, function: int, out_size: int, args: bytes) -> bytes:
        """No views, a small out, the default instance: the raw call's fast path."""
        try:
            out = contract.call(function, args, out_size)
        except CallError as error:
            return _error_reply(error)
        return _wire.reply(out=out)

    def _guest_create(self, request: _wire.Request) -> bytes:
        contract = self._contract(request.handle)
        try:
            out, _, _ = _Route(contract).call("create_instance", 0, b"", [], 4, False)
        except CallError as error:
            return _wire.reply(_wire.GENERIC, str(error))
        return _wire.reply(value=int.from_bytes(out, "little"))

    def _guest_destroy(self, request: _wire.Request) -> bytes:
        contract = self._contract(request.handle)
        try:
            _Route(contract).call("destroy_instance", request.instance, b"", [], 0, False)
        except CallError as error:
            return _wire.reply(_wire.GENERIC, str(error))
        return _wire.reply()
