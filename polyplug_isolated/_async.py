"""Awaitable calls: many calls in flight from one event loop, no host thread per call.

An awaited call takes a slot from the channel's async pool (the mirror key of
async calls is the pool, not the task: see README "Threads and asyncio"),
hands the call over without waiting (``pp_submit``, flagged async so the
worker rings the segment's bell when it answers), and awaits a future. One
reactor thread per channel sleeps on the bell, settles the answered calls
(``pp_poll``) and resolves their futures on their loops. It starts with the
first awaited call and ends after a second without any.

Cancelling the awaiting task cannot stop the plugin function: the call runs
on, its answer is dropped when it comes, and only then does its slot go back
to the pool, so that no later call can read the cancelled one's answer.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any

from ._channel import Channel, ChannelFailure, Lease
from ._channel_ffi import ffi, lib

_OK = lib.PP_CALL_OK
_PENDING = lib.PP_CALL_PENDING
_LEASE_LOST = lib.PP_CALL_LEASE_LOST
# Outcomes after which the slot is idle again (the worker answered).
_ANSWERED = (lib.PP_CALL_OK, lib.PP_CALL_PLUGIN_ERROR, lib.PP_CALL_REFUSED)
_SLICE = 0.05  # the reactor's longest sleep: deadlines are checked this often
_LINGER = 1.0  # an idle reactor thread ends after this long
_TAKE_RETRY = 0.02  # while sync threads hold every slot, the pool looks again this often


class _Call:
    """One awaited call in flight: its future, its loop and the buffers C writes into."""

    __slots__ = ("future", "keep", "lease", "loop", "out", "ret", "submitted")

    def __init__(self, future: asyncio.Future[Any], lease: Lease, out: Any, ret: Any, keep: tuple[Any, ...]):
        self.future = future
        self.loop = future.get_loop()
        self.lease = lease
        self.out = out
        self.ret = ret
        self.keep = keep  # args and fixups, alive until the worker answered
        self.submitted = False


class Reactor:
    """The async calls of one channel: a pool of leased slots and the thread that settles calls."""

    def __init__(self, channel: Channel):
        self._channel = channel
        self._lock = threading.Lock()
        self._idle: list[Lease] = []
        self._waiters: collections.deque[asyncio.Future[Lease]] = collections.deque()
        self._calls: dict[int, _Call] = {}
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, channel: Channel) -> Reactor:
        reactor: Reactor | None = channel.async_calls
        if reactor is None:
            with _MAKING:
                reactor = channel.async_calls = channel.async_calls or cls(channel)
        return reactor

    # ---- the pool ------------------------------------------------------------------

    async def _lease(self, deadline: float | None) -> Lease:
        """An idle pool slot, a new one, or the next one a finished call gives back."""
        conn = self._channel.conn
        while True:
            with self._lock:
                if self._idle:
                    return self._idle.pop()
            lease_id = lib.pp_lease_take(conn, 0.0, 0)
            if lease_id > 0:
                return Lease(conn, lease_id)
            if lease_id != -lib.PP_CALL_TIMEOUT:
                raise ChannelFailure.last(-lease_id)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ChannelFailure(lib.PP_CALL_TIMEOUT)
            waiter: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
            with self._lock:
                self._waiters.append(waiter)
            # Pool slots come back through the waiter; a slot a sync thread
            # gives up does not, so with none of the pool's in flight look again soon.
            retry = 1.0 if self._calls else _TAKE_RETRY
            try:
                await asyncio.wait({waiter}, timeout=retry if left is None else min(retry, left))
            except BaseException:  # cancelled: no slot may be lost in a forgotten waiter
                self._forget(waiter)
                if waiter.done() and not waiter.cancelled():
                    self._give_back(waiter.result())
                raise
            self._forget(waiter)
            if waiter.done() and not waiter.cancelled():
                return waiter.result()

    def _forget(self, waiter: asyncio.Future[Lease]) -> None:
        """Takes a waiter out of the queue; one a slot is on its way to is cancelled, so that
        _hand_over gives the slot back instead."""
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif not waiter.done():
                waiter.cancel()

    def _give_back(self, lease: Lease) -> None:
        """An idle slot goes to the first waiting call, or to the pool."""
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                if waiter.done():
                    continue
                try:
                    waiter.get_loop().call_soon_threadsafe(self._hand_over, waiter, lease)
                    return
                except RuntimeError:  # that loop is closed
                    continue
            self._idle.append(lease)

    def _hand_over(self, waiter: asyncio.Future[Lease], lease: Lease) -> None:
        if waiter.done():
            self._give_back(lease)
        else:
            waiter.set_result(lease)

    # ---- calls -----------------------------------------------------------------------

    async def call(
        self,
        contract: int,
        function: int,
        instance: int,
        args: bytes | memoryview,
        fixups: list[tuple[int, int]],
        out_size: int,
        ret_cap: int,
        timeout: float,
    ) -> tuple[bytes, bytes]:
        """One call, awaited; returns (out, return area) or raises ChannelFailure."""
        deadline = None if timeout < 0 else time.monotonic() + timeout
        out = ffi.new("uint8_t[]", out_size) if out_size else ffi.NULL
        ret = ffi.new("uint8_t[]", ret_cap) if ret_cap else ffi.NULL
        table = ffi.new("pp_fixup[]", fixups) if fixups else ffi.NULL
        source = args if type(args) is bytes else ffi.from_buffer(args)
        future: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()
        while True:
            lease = await self._lease(deadline)
            call = _Call(future, lease, out, ret, (source, table))
            with self._lock:
                self._calls[lease.id] = call
            left = -1.0 if deadline is None else max(deadline - time.monotonic(), 1e-6)
            status = lib.pp_submit(
                self._channel.conn, lease.id, contract, function, instance, source, len(args),
                table, len(fixups), out, out_size, ret, ret_cap, left,
            )  # fmt: skip
            if status == _PENDING:
                break
            with self._lock:
                del self._calls[lease.id]
            if status != _LEASE_LOST:  # else a sync thread took the idle slot over: take another
                failure = ChannelFailure.last(status)
                self._give_back(lease)
                raise failure
        call.submitted = True
        self._wake()
        out, ret = await future
        return out, ret

    def _wake(self) -> None:
        """Makes the reactor look at the calls (starting it if need be)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="polyplug-async", daemon=True)
                self._thread.start()
        lib.pp_bell_ring(self._channel.conn)

    def _run(self) -> None:
        conn = self._channel.conn
        idle_since = time.monotonic()
        while True:
            seen = lib.pp_bell(conn)
            with self._lock:
                calls = [call for call in self._calls.values() if call.submitted]
                if not self._calls:
                    if time.monotonic() - idle_since > _LINGER:
                        self._thread = None
                        return
                else:
                    idle_since = time.monotonic()
            for call in calls:
                status = lib.pp_poll(conn, call.lease.id)
                if status == _PENDING:
                    continue
                failure = None if status == _OK else ChannelFailure.last(status)
                ret_len = lib.pp_last_result().ret_len
                with self._lock:
                    del self._calls[call.lease.id]
                try:
                    call.loop.call_soon_threadsafe(self._settled, call, status, failure, ret_len)
                except RuntimeError:  # the loop is closed: nobody awaits the answer
                    if status in _ANSWERED:
                        self._give_back(call.lease)
            lib.pp_bell_wait(conn, seen, _SLICE)

    def _settled(self, call: _Call, status: int, failure: ChannelFailure | None, ret_len: int) -> None:
        """On the call's loop: the slot goes back (if its worker answered), the future gets the outcome."""
        if status in _ANSWERED:
            self._give_back(call.lease)
        if call.future.cancelled():
            return  # the answer of a cancelled call is dropped
        if failure is not None:
            call.future.set_exception(failure)
            return
        out_size = len(call.out) if call.out != ffi.NULL else 0
        call.future.set_result(
            (
                ffi.buffer(call.out, out_size)[:] if out_size else b"",
                ffi.buffer(call.ret, ret_len)[:] if ret_len else b"",
            )
        )


_MAKING = threading.Lock()
