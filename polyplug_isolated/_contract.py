"""GuestContract: raw native dispatch into a bundle's worker, bytes in, bytes out.

A contract follows its bundle across reloads: it routes each call to the
bundle's current worker and re-binds when that worker changes. A call
refused because its worker started draining for a reload was never sent, so
it is retried on the new worker: a reload loses no call.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import types
from typing import TYPE_CHECKING, Any

from . import _checks as check
from ._async import Reactor
from ._bundle import Bundle, BundleState
from ._channel import BytesLike, ChannelFailure
from ._channel_ffi import lib
from ._fastcall import Raw
from ._zerocopy import InPlaceCall
from .errors import (
    BundleUnavailable,
    CallError,
    CallTimeout,
    PluginCallError,
    ProtocolError,
    WorkerCrashed,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

    from ._config import RuntimeConfig
    from ._proxy import WorkerProxy


class _Default(enum.Enum):
    """The timeout a call takes when given none: its Runtime's ``call_timeout``."""

    CALL_TIMEOUT = "call_timeout"

    def __repr__(self) -> str:  # what help() and inspect.signature show as the default
        return "<Runtime call_timeout>"


_DEFAULT = _Default.CALL_TIMEOUT
# A batch that failed with one of these never reached the worker: its rest goes the general path.
UNSENT = (lib.PP_CALL_LEASE_LOST, lib.PP_CALL_UNAVAILABLE, lib.PP_CALL_TOO_LARGE)


class AbiErrorCode(enum.IntEnum):
    """polyplug's AbiError codes; a plugin may answer any u32 (256+ are its own)."""

    OK = 0
    GENERIC = 1
    BUFFER_TOO_SMALL = 2
    PANIC = 3
    NOT_FOUND = 4
    STALE_HANDLE = 5
    FUNCTION_NOT_AVAILABLE = 6
    DUPLICATE_PROVIDER = 7
    INVALID_POINTER = 8
    REENTRANT_CALL = 9
    HOST_CONTRACT_NOT_FOUND = 100
    HOST_CONTRACT_VERSION_MISMATCH = 101
    HOST_CONTRACT_CALL_FAILED = 102


def code_name(code: int) -> str:
    try:
        return AbiErrorCode(code).name
    except ValueError:
        return "plugin-defined" if code >= 256 else "unknown"


class PayloadTooLarge(CallError, ValueError):
    """args plus out exceed the largest call a worker takes (``arena_capacity``)."""


class GuestContract:
    """A contract of a loaded bundle, called by function index."""

    def __init__(self, bundle: Bundle, contract_id: int, config: RuntimeConfig):
        self._bundle = bundle
        self._config = config
        self.contract_id = contract_id
        self.name = ""
        self.version: tuple[int, int, int] = (0, 0, 0)
        self.function_count = 0
        self.function_names: dict[int, str] = {}  # index -> name, when an api.toml told (typed calls)
        # (worker, its _fastcall.Conn, the contract's index there), replaced in one
        # assignment so that threads calling at once never mix two workers';
        self._binding: tuple[Any, Any, int] = (None, None, 0)
        self._timeout = _seconds(config.call_timeout)
        self._raw: Raw | None = None
        self._bind(bundle.proxy)
        # The hot path: ``call`` answered by one C call (_fastcall.c) for an out of at
        # most 64 bytes and the default timeout. It finds the thread's lease (its slot
        # and worker thread), checks the argument types and sizes (the index is checked
        # in the worker) and returns the out bytes; anything else comes to the methods
        # below: the general path, or a failed call's error (a call a reload turned
        # away before sending it is rerouted, _failed).
        proxy, conn, index = self._binding
        general = types.MethodType(GuestContract.call, self)
        self._raw = Raw(conn, proxy, index, self._timeout, general, self._failed_fast)
        self._raw.__signature__ = _call_signature()
        self._raw.__doc__, self._raw.__name__ = general.__doc__, "call"
        self.call = self._raw  # type: ignore[method-assign]

    @property
    def bundle(self) -> Bundle:
        return self._bundle

    def route(self, wait: float = 0.0) -> tuple[WorkerProxy, Any, int]:
        """(worker proxy, conn, contract index) of the worker that serves the bundle now.

        While a restart is pending, waits for it up to ``wait`` seconds (< 0: no limit).
        """
        binding = self._binding
        proxy = self._bundle.proxy
        if proxy is None and wait and self._bundle.restart_pending:
            self._bundle.await_worker(None if wait < 0 else wait)
            proxy = self._bundle.proxy
        return binding if proxy is binding[0] else self._bind(proxy)

    def _bind(self, proxy: WorkerProxy | None) -> tuple[WorkerProxy, Any, int]:
        if proxy is None:
            raise self._unavailable()
        for contract in proxy.contracts:
            if contract["contract_id"] == self.contract_id:
                break
        else:
            raise BundleUnavailable(
                f"bundle {self._bundle.name!r} no longer provides contract 0x{self.contract_id:016X} "
                "after a reload; find it again",
                bundle=self._bundle.name,
            )
        self.name = contract["name"]
        self.version = tuple(contract["version"])
        self.function_count = contract["function_count"]
        self._binding = (proxy, proxy.channel.fast, contract["index"])
        if self._raw is not None:
            self._raw.rebind(proxy.channel.fast, proxy, contract["index"])
        return self._binding

    def wait_for(self, timeout: float | _Default | None) -> float:
        """A call's timeout as the C side takes it: the Runtime's ``call_timeout`` by default."""
        return self._timeout if timeout is _DEFAULT else _seconds(timeout)

    def call(
        self,
        fn_index: int,
        args: bytes | bytearray | memoryview,
        out_size: int,
        *,
        timeout: float | _Default | None = _DEFAULT,
    ) -> bytes:
        """Calls ``functions[fn_index](instance, args, out, &err)`` in the worker.

        ``args`` is copied to the worker and passed as a pointer (NULL when empty);
        ``out`` points at ``out_size`` zeroed bytes, which come back.

        Raises:
            PluginCallError: the plugin answered a non-Ok AbiError (FunctionNotAvailable
                for an index past the contract's function_count).
            WorkerCrashed, CallTimeout, BundleUnavailable, ProtocolError, PayloadTooLarge.
        """
        # Each instance answers this through its _fastcall.Raw (see __init__);
        # this is the general path, where the Raw sends what it does not take.
        return self._call(fn_index, args, out_size, timeout)

    def _failed_fast(
        self, status: int, proxy: WorkerProxy, fn_index: int, args: bytes | memoryview, out_size: int
    ) -> bytes:
        """A call of the fast path that did not answer Ok (LEASE_LOST: nothing was sent)."""
        if status == lib.PP_CALL_LEASE_LOST:  # a first call, or its lease was taken over
            proxy.channel.cache_lease(self._timeout)  # the next one is fast again
            return self._call(fn_index, args, out_size, _DEFAULT)
        return self._failed(ChannelFailure.last(status), proxy, fn_index, args, out_size, _DEFAULT)

    def _call(self, fn_index: int, args: Any, out_size: int, timeout: float | _Default | None) -> bytes:
        wait = self.wait_for(timeout)
        proxy, _, index = self.route(wait)
        self._check_function(fn_index)
        if type(args) is not bytes:
            args = _as_bytes_view(args)
        if type(out_size) is not int or out_size < 0:
            raise ValueError(f"out_size must be a non-negative int, not {out_size!r}")
        if len(args) + out_size > proxy.channel.arena_cap:  # refused before the out is allocated
            raise self._error(ChannelFailure(lib.PP_CALL_TOO_LARGE), proxy, fn_index, wait)
        try:
            out: bytes = proxy.channel.call(index, fn_index, args, out_size, wait)
        except ChannelFailure as failure:
            return self._failed(failure, proxy, fn_index, args, out_size, timeout)
        return out

    def _failed(
        self,
        failure: ChannelFailure,
        proxy: WorkerProxy,
        fn_index: int,
        args: Any,
        out_size: int,
        timeout: float | _Default | None,
    ) -> bytes:
        """Retries a call a reload turned away before sending it; raises anything else."""
        wait = self.wait_for(timeout)
        unsent = failure.status == lib.PP_CALL_UNAVAILABLE
        if unsent and self._bundle.restart_pending:
            self._bundle.await_worker(None if wait < 0 else wait)  # a restart is coming: wait it out
        if self._rerouted(failure, proxy):
            self.route()  # bind to the bundle's current worker, then try there
            return self.call(fn_index, args, out_size, timeout=timeout)
        raise self._error(failure, proxy, fn_index, wait)

    def call_into(
        self,
        fn_index: int,
        args: bytes | bytearray | memoryview,
        out: bytearray | memoryview,
        *,
        timeout: float | _Default | None = _DEFAULT,
    ) -> None:
        """``call`` whose out lands in ``out`` (``len(out)`` bytes: a bytearray, a writable
        memoryview, a C-contiguous numpy array) instead of new bytes: no copy after the worker's.

        Raises what ``call`` raises; ``out`` holds the answer only when it returns.
        """
        wait = self.wait_for(timeout)
        target = _as_bytes_view(out)
        if target.readonly:
            raise TypeError("call_into: out must be a writable buffer (bytearray, memoryview, numpy array)")
        proxy, _, index = self.route(wait)
        self._check_function(fn_index)
        if type(args) is not bytes:
            args = _as_bytes_view(args)
        try:
            proxy.channel.call_into(index, fn_index, args, target, wait)
        except ChannelFailure as failure:
            if self._rerouted(failure, proxy):
                self.route()
                return self.call_into(fn_index, args, out, timeout=timeout)
            raise self._error(failure, proxy, fn_index, wait) from None

    def buffers(
        self, fn_index: int, args_size: int, out_size: int, *, timeout: float | _Default | None = _DEFAULT
    ) -> InPlaceCall:
        """Args and out of ``args_size`` and ``out_size`` bytes that live in the worker's arena.

        A context manager: inside the block, write ``.args``, call the object to
        run the function on them, and read the answer in ``.out`` (memoryviews),
        with no copy on either side. Leaving the block releases the views (README:
        "Zero-copy calls"). The block holds the worker's one arena: keep it short.
        """
        return InPlaceCall(self, fn_index, args_size, out_size, self.wait_for(timeout))

    async def acall(
        self,
        fn_index: int,
        args: bytes | bytearray | memoryview,
        out_size: int,
        *,
        timeout: float | _Default | None = _DEFAULT,
    ) -> bytes:
        """``call``, awaited: the event loop runs on while the worker does the call.

        Calls awaited at once run at once in the worker, each on a worker
        thread of the bundle's async pool. Cancelling the awaiting task does not
        stop the plugin function: its answer is dropped when it comes. Raises
        what ``call`` raises.
        """
        out, _ = await self.acall_ex(fn_index, 0, args, [], out_size, 0, timeout=timeout)
        return out

    async def acall_ex(
        self,
        fn_index: int,
        instance: int,
        args: bytes | bytearray | memoryview,
        fixups: list[tuple[int, int]],
        out_size: int,
        ret_cap: int,
        *,
        timeout: float | _Default | None = _DEFAULT,
    ) -> tuple[bytes, bytes]:
        """An awaited call with an instance, pointer fixups and a return area (see Channel.call_ex)."""
        wait = self.wait_for(timeout)
        if self._bundle.proxy is None and self._bundle.restart_pending:
            await asyncio.to_thread(self._bundle.await_worker, None if wait < 0 else wait)
        proxy, _, index = self.route()
        self._check_function(fn_index)
        if type(args) is not bytes:
            args = _as_bytes_view(args)
        if type(out_size) is not int or out_size < 0:
            raise ValueError(f"out_size must be a non-negative int, not {out_size!r}")
        reactor = Reactor.of(proxy.channel)
        try:
            return await reactor.call(index, fn_index, instance, args, fixups, out_size, ret_cap, wait)
        except ChannelFailure as failure:
            if self._rerouted(failure, proxy):
                return await self.acall_ex(
                    fn_index, instance, args, fixups, out_size, ret_cap, timeout=timeout
                )
            raise self._error(failure, proxy, fn_index, wait) from None

    def call_many(
        self,
        fn_index: int,
        args_list: Iterable[BytesLike],
        out_size: int,
        *,
        timeout: float | _Default | None = _DEFAULT,
    ) -> list[bytes]:
        """Calls one function once per args in ``args_list`` (all the same length), in order.

        Returns the out bytes of each call. The calls go to the worker in batches
        (as many as fit a slot), one hand-off per batch. A plugin error stops the
        batch: PluginCallError's ``index`` names the failing call; the calls
        before it ran (their outs are dropped with the error).
        """
        items = args_list if type(args_list) is list else list(args_list)
        if not items:
            return []
        if timeout is _DEFAULT and type(out_size) is int and out_size >= 0:
            outs = self._many_in_c(fn_index, items, out_size)
            if outs is not None:
                return outs
        return self._many_general(fn_index, items, out_size, timeout)

    def _many_general(
        self, fn_index: int, items: list[Any], out_size: int, timeout: float | _Default | None
    ) -> list[bytes]:
        """call_many through call_packed: any bytes-like items, checked in Python."""
        record = len(items[0])
        if any(len(item) != record for item in items):
            raise ValueError("call_many: every args must have the same length (one C struct per call)")
        if record == 0:
            raise ValueError(
                "call_many: args must not be empty (use call() for functions without parameters)"
            )
        out = self.call_packed(fn_index, b"".join(items), record, out_size, timeout=timeout)
        if not out_size:
            return [b""] * len(items)
        return [out[i : i + out_size] for i in range(0, len(out), out_size)]

    def _many_in_c(self, fn_index: int, items: list[Any], out_size: int) -> list[bytes] | None:
        """call_many over bytes objects of one length, packed and answered in C; None: not for this path."""
        proxy, _, _ = self.route(self._timeout)
        self._check_function(fn_index)
        record = len(items[0]) if type(items[0]) is bytes else 0
        if not record or record + out_size > proxy.channel.arena_cap:
            return None
        per_batch = proxy.channel.records_per_batch(record, out_size)
        answer = self._raw._many(fn_index, items, out_size, per_batch)  # type: ignore[union-attr]
        if isinstance(answer, list):
            return answer
        status, start, done, before, called = answer
        if status == 0:  # an item is not bytes of the first one's length: nothing was sent
            return None
        if status == lib.PP_CALL_LEASE_LOST:  # a first call, or the lease was taken over
            called.channel.cache_lease(self._timeout)
        if status in UNSENT:
            return [*before, *self._many_general(fn_index, items[start:], out_size, _DEFAULT)]
        raise self._batch_error(status, called, fn_index, start + done) from None

    def _batch_error(self, status: int, proxy: WorkerProxy, fn_index: int, index: int) -> Exception:
        """The error of a batch the C path ran, naming the failing call by its ``index`` in the list."""
        error = self._error(ChannelFailure.last(status), proxy, fn_index, self._timeout)
        if isinstance(error, PluginCallError):
            error.index = index
        return error

    def call_packed(
        self,
        fn_index: int,
        packed: Buffer,
        record_size: int,
        out_size: int,
        *,
        timeout: float | _Default | None = _DEFAULT,
    ) -> bytes:
        """Calls one function over ``len(packed) // record_size`` packed args records.

        ``packed`` is a bytes-like buffer of back-to-back C structs of
        ``record_size`` bytes each (``array.array`` or a numpy array works).
        Returns the outs back to back (``out_size`` bytes each), in order.
        """
        wait = self.wait_for(timeout)
        proxy, _, index = self.route(wait)
        self._check_function(fn_index)
        view = packed if type(packed) is bytes else _as_bytes_view(packed)
        if type(record_size) is not int or record_size <= 0 or type(out_size) is not int or out_size < 0:
            raise ValueError("record_size must be a positive int and out_size a non-negative int")
        if len(view) % record_size:
            raise ValueError(
                f"call_packed: {len(view)} bytes is not a whole number of {record_size}-byte records"
            )
        if record_size + out_size > proxy.channel.arena_cap:  # refused before the outs are allocated
            raise self._error(ChannelFailure(lib.PP_CALL_TOO_LARGE), proxy, fn_index, wait)
        count = len(view) // record_size
        per_batch = proxy.channel.records_per_batch(record_size, out_size)
        outs = []
        start = 0
        while start < count:
            n = min(per_batch, count - start)
            chunk = view[start * record_size : (start + n) * record_size]
            try:
                outs.append(proxy.channel.call_batch(index, fn_index, chunk, record_size, n, out_size, wait))
            except ChannelFailure as failure:
                if self._rerouted(failure, proxy):  # a reload turned this batch away unsent, whichever it is:
                    proxy, _, index = self.route()  # it and the rest go to the new worker
                    continue
                error = self._error(failure, proxy, fn_index, wait)
                if isinstance(error, PluginCallError):
                    error.index = start + failure.done
                raise error from None
            start += n
        return b"".join(outs)

    def _rerouted(self, failure: ChannelFailure, proxy: WorkerProxy) -> bool:
        """True when a reload switched workers under a call that was never sent."""
        return failure.status == lib.PP_CALL_UNAVAILABLE and self._bundle.proxy not in (None, proxy)

    def _where(self, fn_index: object) -> str:
        name = self.function_names.get(fn_index) if isinstance(fn_index, int) else None
        function = f".{name}() (function {fn_index})" if name else f" function {fn_index}"
        return f"bundle {self._bundle.name!r}: {self.name}@{self.version[0]}{function}"

    def _unavailable(self) -> BundleUnavailable:
        bundle = self._bundle
        state = bundle.state
        if bundle.inert:
            return BundleUnavailable(f"bundle {bundle.name!r}: {bundle.inert}", bundle=bundle.name)
        if state in (BundleState.DRAINING, BundleState.UNLOADED):
            why = bundle.farewell or "it is being unloaded or was unloaded; load it again to call it"
        elif state is BundleState.RESTARTING:
            why = "a fresh worker is starting after a crash; retry shortly"
        elif bundle.crash is not None and bundle.crash.death is not None:
            why = f"its worker {bundle.crash.death.description}; {bundle.outlook}"
        else:
            why = "it is being unloaded or was unloaded; load it again to call it"
        return BundleUnavailable(f"bundle {bundle.name!r} is {state.name}: {why}", bundle=bundle.name)

    def _check_function(self, fn_index: object) -> None:
        """Refuses an index that is not an int naming one of the contract's functions."""
        if type(fn_index) is not int or not 0 <= fn_index < self.function_count:
            raise self._no_such_function(fn_index)

    def _no_such_function(self, fn_index: object) -> Exception:
        if isinstance(fn_index, bool) or not isinstance(fn_index, int):
            return TypeError(
                f"{self._where(fn_index)}: a function index is an int, not {type(fn_index).__name__}; "
                f"e.g. call(1, args, out_size) (indices 0..{self.function_count - 1})"
            )
        return PluginCallError(
            f"{self._where(fn_index)}: no such function (FunctionNotAvailable): the contract has "
            f"{self.function_count} functions, indices 0..{self.function_count - 1}",
            code=AbiErrorCode.FUNCTION_NOT_AVAILABLE,
            plugin_message="function index out of range",
            bundle=self._bundle.name,
            function=fn_index,
        )

    def _error(
        self, failure: ChannelFailure, proxy: WorkerProxy, fn_index: int | str, timeout: float
    ) -> Exception:
        where = self._where(fn_index)
        names: dict[str, Any] = {"bundle": self._bundle.name, "function": fn_index}
        status = failure.status
        if status == lib.PP_CALL_PLUGIN_ERROR and type(fn_index) is int and fn_index >= self.function_count:
            return self._no_such_function(fn_index)  # the worker's own refusal of the index, said once
        if status == lib.PP_CALL_PLUGIN_ERROR:
            return PluginCallError(
                f"{where} failed with AbiError code {failure.code} ({code_name(failure.code)}): "
                f"{failure.message or '(no message)'}",
                code=failure.code,
                plugin_message=failure.message,
                **names,
            )
        if status == lib.PP_CALL_UNAVAILABLE:
            return self._unavailable()
        if status == lib.PP_CALL_DEAD:
            return _crashed(where, proxy, names, self._bundle.outlook)
        if status == lib.PP_CALL_TIMEOUT:
            proxy.kill_hung(
                f"killed after a call to {self._where(fn_index).split(': ', 1)[1]} timed out ({timeout:g} s)"
            )
            return CallTimeout(
                f"{where}: no answer within {timeout:g} s; the worker (pid {proxy.pid}) was killed "
                "because its slot can never be trusted again",
                **names,
            )
        if status == lib.PP_CALL_TOO_LARGE:
            return PayloadTooLarge(
                f"{where}: args and out need more than the {proxy.channel.arena_cap}-byte arena, "
                "the largest call a worker takes; pass less or raise Runtime(arena_capacity=...)",
                **names,
            )
        if status == lib.PP_CALL_REENTRANT:
            return PluginCallError(
                f"{where}: re-entrant call (ReentrantCall): the bundle's worker is waiting on this thread "
                "for the answer to its own call back, so this call could never be served",
                code=AbiErrorCode.REENTRANT_CALL,
                plugin_message="re-entrant call into a bundle waiting on this thread",
                **names,
            )
        if status == lib.PP_CALL_ARENA_HELD:  # nothing was sent
            return CallError(
                f"{where}: this thread holds the worker's arena in a buffers() block, and this call "
                "needs the arena too; make it outside the block",
                **names,
            )
        if status == lib.PP_CALL_REFUSED:  # the worker is fine; the request named nothing it has
            return CallError(f"{where}: the worker refused the request: {failure.message}", **names)
        proxy.kill(f"broke the shared-memory protocol (status {status}): {failure.message}")
        return ProtocolError(
            f"{where}: the worker (pid {proxy.pid}) broke the shared-memory protocol "
            f"({failure.message or f'status {status}'}) and was killed",
            bundle=self._bundle.name,
        )

    def __repr__(self) -> str:
        return f"<GuestContract {self.name}@{self.version[0]} of bundle {self._bundle.name!r}>"


@functools.cache
def _call_signature() -> inspect.Signature:
    """GuestContract.call's signature without ``self``: what an instance's ``call`` shows."""
    signature = inspect.signature(GuestContract.call)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _seconds(timeout: float | None) -> float:
    """A timeout as the C side takes it: seconds, negative for none."""
    if timeout is None:
        return -1.0
    return float(
        check.number("call", "timeout", timeout, "timeout=5.0 (or None for no limit)", positive=True)
    )


def _as_bytes_view(args: Any) -> memoryview:
    try:
        view = memoryview(args)
    except TypeError:
        raise TypeError(f"args must be bytes, bytearray or memoryview, not {type(args).__name__}") from None
    if not view.c_contiguous:
        raise ValueError("args must be a C-contiguous buffer")
    return view.cast("B")


def _last_lines(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "(none)"


def _crashed(where: str, proxy: WorkerProxy, names: dict[str, Any], outlook: str) -> WorkerCrashed:
    death = proxy.death
    if death is None:  # pragma: no cover - mark_dead always follows the death record
        return WorkerCrashed(f"{where}: the worker died", **names)
    cause = f" ({death.kill_reason})" if death.kill_reason else ""
    outlook = outlook or "reload the bundle to call it again"
    message = (
        f"{where}: the worker (pid {proxy.pid}) {death.description}{cause} during the call; "
        f"its outcome is unknown.\n{outlook[0].upper()}{outlook[1:]}; the worker's native stack and "
        "last output are in .report"
    )
    return WorkerCrashed(
        message,
        signal=death.signal,
        exitcode=death.exitcode,
        stderr_tail=death.output_tail,
        report=f"{message}\n\nLast output of the worker:\n{_last_lines(death.output_tail, 200)}",
        **names,
    )
