"""Zero-copy calls: args written and outs read in place, in the worker's arena.

::

    with payload.buffers(ECHO, 8 + n, n) as call:
        call.args[:8] = n.to_bytes(8, "little")
        call.args[8:] = data            # or numpy.frombuffer(call.args, ...)[...] = ...
        out = call()                    # a memoryview of the answer, no copy
        checksum = zlib.crc32(out)

The block holds the arena (one per worker; other big calls wait for it) and
the calling thread's slot. ``call.args`` and ``call.out`` are memoryviews of
the arena, at offsets the host computes: the worker never says where they
lie, and every length is the caller's. The arena is shared memory the worker
can write at any time, so a hostile worker can change what ``out`` holds but
never what the host reads beyond it. On leaving the block both views are
released: using one afterwards raises ValueError, and a view made from them
that is still alive (a slice, a cast, a numpy array) makes the exit raise
BufferError, since its bytes would be the next call's. Such a view can never
reach past the arena, which stays mapped as long as any view lives.

The worker zeroes ``out`` for the block's first call; each later call's
answer is written over the one before, as the plugin writes it (no pass over
the bytes the plugin does not touch).
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._channel import ChannelFailure
from ._channel_ffi import ffi, lib
from ._fastcall import Region
from .errors import CallError

if TYPE_CHECKING:
    from ._contract import GuestContract


class InPlaceCall:
    """One function's args and out in the arena, for as many calls as the ``with`` block makes."""

    def __init__(self, contract: GuestContract, fn_index: int, args_size: int, out_size: int, timeout: float):
        for name, value in (("args_size", args_size), ("out_size", out_size)):
            if type(value) is not int or value < 0:
                raise ValueError(f"buffers(): {name} must be a non-negative int, not {value!r}")
        self._contract = contract
        self._fn = fn_index
        self._args_size = args_size
        self._out_size = out_size
        self._timeout = timeout
        self._held: tuple[Any, Any, int, int] | None = None  # (proxy, conn, contract index, lease)
        self._views: list[memoryview] = []
        self._region: Region | None = None
        self.args = memoryview(b"")
        self.out = memoryview(b"")

    def __enter__(self) -> InPlaceCall:
        contract = self._contract
        proxy, _, index = contract.route(self._timeout)
        contract._check_function(self._fn)
        channel = proxy.channel
        conn = channel.conn
        args_at, out_at = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        if lib.pp_in_place_layout(conn, self._args_size, self._out_size, args_at, out_at) != lib.PP_CALL_OK:
            raise contract._error(ChannelFailure(lib.PP_CALL_TOO_LARGE), proxy, self._fn, self._timeout)
        end = max(args_at[0] + self._args_size, out_at[0] + self._out_size)
        lease = channel.lease(self._timeout)
        status = lib.pp_arena_hold(conn, lease, self._args_size, self._out_size, self._timeout)
        if status == lib.PP_CALL_LEASE_LOST:
            lease = channel.renew_lease(self._timeout)
            status = lib.pp_arena_hold(conn, lease, self._args_size, self._out_size, self._timeout)
        if status != lib.PP_CALL_OK:
            raise contract._error(ChannelFailure.last(status), proxy, self._fn, self._timeout)
        self._held = (proxy, conn, index, lease)
        # The region holds the conn, so the mapping outlives any view of it;
        # it counts the views, so that the exit can tell whether one is left.
        self._region = Region(conn, int(ffi.cast("uintptr_t", lib.pp_arena_base(conn))), end)
        whole = memoryview(self._region)
        self.args = whole[args_at[0] : args_at[0] + self._args_size]
        self.out = whole[out_at[0] : out_at[0] + self._out_size]
        self._views = [self.args, self.out, whole]
        return self

    def __call__(self) -> memoryview:
        """Runs the function on ``args`` as they are now; returns ``out`` (its answer, in place)."""
        if self._held is None:
            raise ValueError("buffers(): call inside the with block")
        proxy, conn, index, lease = self._held
        contract = self._contract
        status = lib.pp_call_in_place(
            conn, lease, index, self._fn, self._args_size, self._out_size, self._timeout
        )
        status = proxy.channel.settle(status, lease)
        if status == lib.PP_CALL_LEASE_LOST:  # nothing was sent
            raise CallError(
                f"bundle {contract.bundle.name!r}: buffers(): the block no longer holds its slot and the "
                "arena (call it on the thread that entered it, before the block ends)",
                bundle=contract.bundle.name,
                function=self._fn,
            )
        if status != lib.PP_CALL_OK:
            raise contract._error(ChannelFailure.last(status), proxy, self._fn, self._timeout)
        return self.out

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        held, self._held = self._held, None
        if held is not None:
            lib.pp_arena_drop(held[1], held[3])
        for view in self._views:
            with contextlib.suppress(BufferError):  # exported further: counted below
                view.release()
        self._views = []
        if self._region is not None and self._region.exports and kind is None:
            raise BufferError(
                "buffers(): a view of the call's args or out (a numpy array, a memoryview) is still alive "
                "after the with block; its bytes belong to the next call: copy what you keep, then drop it"
            )
