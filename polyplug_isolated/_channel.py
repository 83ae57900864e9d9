"""One worker's shared-memory data plane, host side (never sees a PID).

The segment is created with posix_ipc (random name, mode 0600) and unlinked
at once: the worker inherits the open fd, so no name exists that a crash of
either side could leak. Calls go through ``pp_call`` in _channel.c, one cffi
call that releases the GIL while it waits.

Each host thread calls on a slot leased to it on its first call (and with
the slot, a worker thread of its own, see worker/channel.h); the lease lives
in a ``threading.local`` and goes back when the thread ends. A call that
sleeps in the main thread returns to Python every few milliseconds
(PP_CALL_PENDING), so that Ctrl-C interrupts it; the call is then abandoned.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import posix_ipc

from . import _fastcall
from ._channel_ffi import ffi, lib

if TYPE_CHECKING:
    from ._config import RuntimeConfig

# The extension calls the data plane through this module's table, so that
# both share one copy of the per-thread state (leases, results).
_fastcall.bind(int(ffi.cast("uintptr_t", lib.pp_fast_api_table())))

# What the C calls take as args: bytes as they are, other buffers through ffi.from_buffer.
BytesLike = bytes | bytearray | memoryview

WAIT_MODES = {"auto": lib.PP_WAIT_AUTO, "spin": lib.PP_WAIT_SPIN, "block": lib.PP_WAIT_BLOCK}


class ChannelFailure(Exception):
    """A call that did not end with an answer; ``status`` is a PP_CALL_* code."""

    def __init__(self, status: int, code: int = 0, message: str = "", done: int = 0):
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.done = done

    @classmethod
    def last(cls, status: int) -> ChannelFailure:
        """The calling thread's last failure, as the C side recorded it."""
        result = lib.pp_last_result()
        message = ffi.unpack(result.err_msg, result.err_len).decode("utf-8", "replace")
        return cls(status, result.err_code, message, result.done_count)


_PENDING = lib.PP_CALL_PENDING
_LEASE_LOST = lib.PP_CALL_LEASE_LOST
# Longest single wait for a slot: the main thread returns to Python this
# often, so that a Ctrl-C is not held up while all slots are busy.
_TAKE_SLICE = 0.02


class Lease:
    """A slot (and its worker thread) held by one host thread or one async call.

    Dropping it gives the slot back, and the worker thread retires: a
    thread-local that holds it drops it when its thread ends.
    """

    __slots__ = ("conn", "id")

    def __init__(self, conn: Any, lease_id: int):
        self.conn = conn
        self.id = lease_id

    def __del__(self) -> None:
        lib.pp_lease_release(self.conn, self.id)


class Channel:
    """The call slots shared with one worker.

    ``conn`` is what the cffi calls take; ``fast`` the same connection for
    the _fastcall extension, which GuestContract and typed proxies call
    directly, the paths where an extra Python frame would show.
    """

    def __init__(
        self,
        slots: int,
        max_threads: int,
        payload_cap: int,
        arena_cap: int,
        wait: str,
        spin_ns: int,
        idle_retire_ms: int = 0,
    ):
        memory = posix_ipc.SharedMemory(None, posix_ipc.O_CREX, mode=0o600)
        try:
            memory.unlink()
            conn = lib.pp_conn_create(
                memory.fd,
                slots,
                max_threads,
                payload_cap,
                arena_cap,
                WAIT_MODES[wait],
                spin_ns,
                idle_retire_ms,
            )
            if conn == ffi.NULL:
                err = ffi.errno
                raise OSError(err, f"cannot set up a {slots}-slot shared-memory segment: {os.strerror(err)}")
        except BaseException:
            memory.close_fd()
            raise
        self._memory = memory
        # The mapping lives exactly as long as the last reference: a thread
        # inside a call holds one, so it can never see the memory go away.
        self.conn = ffi.gc(conn, lib.pp_conn_destroy)
        self.fast = _fastcall.Conn(self.conn, int(ffi.cast("uintptr_t", conn)))
        self.payload_cap = payload_cap
        self.arena_cap = arena_cap
        self.local = threading.local()  # .lease: the calling thread's lease id; .holder: its Lease
        self.async_calls: Any = None  # the _async.Reactor, made on the first awaited call

    @property
    def fd(self) -> int:
        """The segment's fd, to pass to the worker."""
        fd: int = self._memory.fd
        return fd

    def close_fd(self) -> None:
        """Drops the host's fd once the worker has its own (the mapping stays)."""
        if self._memory.fd >= 0:
            self._memory.close_fd()

    # ---- leases ----------------------------------------------------------------

    def lease(self, timeout: float) -> int:
        """The calling thread's lease, taken on its first call (waits up to ``timeout`` for a slot).

        A new lease is also put in the C side's per-thread cache, where the
        fast paths (``pp_call_fast``) find it; ``cache_lease`` puts it back there.
        """
        try:
            return int(self.local.lease)
        except AttributeError:
            holder = self.take_lease(timeout)
            self.local.holder = holder
            self.local.lease = holder.id
            lib.pp_use_lease(self.conn, holder.id)
            return holder.id

    def cache_lease(self, timeout: float) -> None:
        """Makes the calling thread's lease (taken if need be) the one the fast paths use.

        Failing to take one is left to the call that follows, which says why.
        """
        with contextlib.suppress(ChannelFailure):
            lib.pp_use_lease(self.conn, self.lease(timeout))

    def renew_lease(self, timeout: float) -> int:
        """A new lease for the calling thread: its old one was taken over or its call abandoned."""
        self.local.__dict__.clear()
        return self.lease(timeout)

    def take_lease(self, timeout: float) -> Lease:
        """A slot of its own, waiting up to ``timeout`` (< 0: no limit) while all are busy."""
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            left = _TAKE_SLICE if deadline is None else min(_TAKE_SLICE, deadline - time.monotonic())
            lease_id = lib.pp_lease_take(self.conn, max(left, 0.0), 1)
            if lease_id > 0:
                return Lease(self.conn, lease_id)
            if lease_id != -lib.PP_CALL_TIMEOUT or (deadline is not None and time.monotonic() >= deadline):
                raise ChannelFailure.last(-lease_id)

    def settle(self, status: int, lease: int) -> int:
        """Waits out a call that came back PENDING (letting signal handlers run in between).

        An exception raised meanwhile (KeyboardInterrupt) abandons the call:
        its answer is dropped when it comes, and this thread's next call takes
        a fresh slot and worker thread.
        """
        try:
            while status == _PENDING:
                status = int(lib.pp_resume(self.conn, lease))
        except BaseException:
            lib.pp_abandon(self.conn, lease)
            raise
        return status

    def _run(self, timeout: float, call: Callable[[int], int]) -> int:
        """Runs ``call(lease)`` (a C call) on this thread's lease, renewing a lost one."""
        lease = self.lease(timeout)
        status = self.settle(call(lease), lease)
        while status == _LEASE_LOST:
            lease = self.renew_lease(timeout)
            status = self.settle(call(lease), lease)
        return status

    # ---- calls -------------------------------------------------------------------

    def call(self, contract: int, function: int, args: BytesLike, out_size: int, timeout: float) -> bytes:
        """One call (timeout < 0: none); returns the out bytes or raises ChannelFailure."""
        # A bytearray, not ffi.new: big cffi buffers come from fresh pages, and
        # their first-touch faults cost more than the copy (1 MiB: ~2 ms vs ~0.2 ms).
        out = bytearray(out_size)
        self.call_into(contract, function, args, out, timeout)
        return bytes(out)

    def call_into(
        self, contract: int, function: int, args: BytesLike, out: BytesLike, timeout: float
    ) -> None:
        """One call whose out (``len(out)`` bytes) is copied straight into ``out``, a writable buffer."""
        source = args if type(args) is bytes else ffi.from_buffer(args)
        target = ffi.from_buffer(out, require_writable=True)
        out_size = len(target)
        status = self._run(
            timeout,
            lambda lease: lib.pp_call(
                self.conn, lease, contract, function, source, len(args), target, out_size, timeout
            ),
        )
        if status != lib.PP_CALL_OK:
            raise ChannelFailure.last(status)

    def records_per_batch(self, record: int, out_size: int) -> int:
        """How many calls of ``record`` args bytes and ``out_size`` out bytes one hand-off carries.

        A batch travels in one slot's payload, after its 8-byte header; at least one call goes.
        """
        return max(1, (self.payload_cap - 8) // max(1, record + out_size))

    def call_batch(
        self,
        contract: int,
        function: int,
        packed: BytesLike,
        record: int,
        count: int,
        out_size: int,
        timeout: float,
    ) -> bytes:
        """``count`` calls over ``record``-byte args records packed in ``packed``, one hand-off.

        Returns count * out_size bytes; on a plugin error raises ChannelFailure
        whose ``done`` says how many calls completed (their outs are lost with it).
        """
        out = ffi.new("uint8_t[]", count * out_size) if out_size else ffi.NULL
        source = packed if type(packed) is bytes else ffi.from_buffer(packed)
        status = self._run(
            timeout,
            lambda lease: lib.pp_call_batch(
                self.conn, lease, contract, function, source, record, count, out, out_size, timeout
            ),
        )
        if status != lib.PP_CALL_OK:
            raise ChannelFailure.last(status)
        return bytes(ffi.buffer(out, count * out_size)) if out_size else b""

    def call_ex(
        self,
        contract: int,
        function: int,
        instance: int,
        args: BytesLike,
        fixups: list[tuple[int, int]],
        out_size: int,
        ret_cap: int,
        timeout: float,
    ) -> tuple[bytes, bytes]:
        """One call on ``instance`` (0: the default) with pointer fixups.

        ``fixups`` are (offset, PP_FIX_* kind) pairs (see worker/channel.h):
        ARG_POINTER fields of ``args`` hold offsets into ``args`` that the
        worker turns into pointers; OUT_VIEW / OUT_BUFFER fields of out come
        back with their bytes copied into the return area (at most
        ``ret_cap`` bytes) and their pointer replaced by the offset there.
        Returns (out, return area).
        """
        out = ffi.new("uint8_t[]", out_size) if out_size else ffi.NULL
        ret = ffi.new("uint8_t[]", ret_cap) if ret_cap else ffi.NULL
        table = ffi.new("pp_fixup[]", fixups) if fixups else ffi.NULL
        source = args if type(args) is bytes else ffi.from_buffer(args)
        status = self._run(
            timeout,
            lambda lease: lib.pp_call_ex(
                self.conn,
                lease,
                contract,
                function,
                instance,
                source,
                len(args),
                table,
                len(fixups),
                out,
                out_size,
                ret,
                ret_cap,
                timeout,
            ),
        )
        if status != lib.PP_CALL_OK:
            raise ChannelFailure.last(status)
        ret_len = lib.pp_last_result().ret_len
        return (
            ffi.buffer(out, out_size)[:] if out_size else b"",
            ffi.buffer(ret, ret_len)[:] if ret_len else b"",
        )

    def create_instance(self, contract: int, args: bytes, timeout: float) -> int:
        """Runs the contract's create_instance(args) in the worker; returns the instance handle."""
        out, _ = self.call_ex(contract, lib.PP_FN_CREATE_INSTANCE, 0, args, [], 4, 0, timeout)
        return int.from_bytes(out, "little")

    def destroy_instance(self, contract: int, instance: int, timeout: float) -> None:
        """Runs destroy_instance on a handle from create_instance."""
        self.call_ex(contract, lib.PP_FN_DESTROY_INSTANCE, instance, b"", [], 0, 0, timeout)

    @property
    def inflight(self) -> int:
        return int(lib.pp_conn_inflight(self.conn))

    @property
    def counters(self) -> tuple[int, int]:
        """(calls, failed calls) since the worker started."""
        return lib.pp_conn_calls(self.conn), lib.pp_conn_failures(self.conn)

    def start_draining(self) -> None:
        """New calls now fail with PP_CALL_UNAVAILABLE; calls in flight go on."""
        lib.pp_conn_set_draining(self.conn)

    def wait_drained(self, timeout: float) -> bool:
        """True once no call is in flight, False if ``timeout`` passed first."""
        return bool(lib.pp_conn_wait_drained(self.conn, timeout))

    def mark_dead(self) -> None:
        """Fails every waiting and future call with PP_CALL_DEAD."""
        lib.pp_conn_mark_dead(self.conn)


def channel_for(config: RuntimeConfig) -> Channel:
    """A new channel shaped by a runtime's configuration."""
    return Channel(
        config.slots,
        config.max_threads or config.slots,
        config.payload_capacity,
        config.arena_capacity,
        config.wait,
        config.spin_ns,
        round(config.thread_idle_timeout * 1000) if config.thread_idle_timeout else 0,
    )


class ChannelStock:
    """Keeps one channel made ahead, for the next worker's start to take.

    Creating a segment, mapping it and writing its headers took a load,
    reload or restart 0.05-0.2 ms of its path here; made on the monitor
    thread after each start (``refill``), like the spare worker, it is off
    that path. Without ``keep`` every start makes its own.
    """

    def __init__(self, config: RuntimeConfig, keep: bool):
        self._config = config
        self._keep = keep
        self._lock = threading.Lock()
        self._ready: Channel | None = None
        self._closed = False

    def take(self) -> Channel:
        """The channel made ahead, or a new one."""
        with self._lock:
            channel, self._ready = self._ready, None
        return channel if channel is not None else channel_for(self._config)

    def refill(self) -> None:
        """Makes the next channel unless one waits already (monitor thread, never raises: a
        start that finds none makes its own, and reports what stops it)."""
        with self._lock:
            if not self._keep or self._closed or self._ready is not None:
                return
        try:
            channel = channel_for(self._config)
        except OSError:
            return
        with self._lock:
            if not self._closed and self._ready is None:
                self._ready = channel
                return
        channel.close_fd()

    def close(self) -> None:
        """Drops the channel made ahead (its fd now, its mapping with the last reference)."""
        with self._lock:
            self._closed = True
            channel, self._ready = self._ready, None
        if channel is not None:
            channel.close_fd()

    def forget_after_fork(self) -> None:
        """In a fork() child: closes the child's copy of the channel made ahead."""
        self._lock = threading.Lock()  # a parent thread may have held the old one at the fork
        self.close()
