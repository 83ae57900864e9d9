"""One worker's shared-memory data plane, host side (never sees a PID).

The segment is created with posix_ipc (random name, mode 0600) and unlinked
at once: the worker inherits the open fd, so no name exists that a crash of
either side could leak. Calls go through ``pp_call`` in _channel.c, one cffi
call that releases the GIL while it waits.
"""

from __future__ import annotations

import os

import posix_ipc

from ._channel_ffi import ffi, lib

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


class Channel:
    """The call slots shared with one worker.

    ``conn`` is what the C calls take; GuestContract calls ``pp_call_small``
    on it directly, the one path where an extra Python frame would show.
    """

    def __init__(self, slots: int, payload_cap: int, arena_cap: int, wait: str, spin_ns: int):
        memory = posix_ipc.SharedMemory(None, posix_ipc.O_CREX, mode=0o600)
        try:
            memory.unlink()
            conn = lib.pp_conn_create(memory.fd, slots, payload_cap, arena_cap, WAIT_MODES[wait], spin_ns)
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
        self.payload_cap = payload_cap
        self.arena_cap = arena_cap

    @property
    def fd(self) -> int:
        """The segment's fd, to pass to the worker."""
        fd: int = self._memory.fd
        return fd

    def close_fd(self) -> None:
        """Drops the host's fd once the worker has its own (the mapping stays)."""
        if self._memory.fd >= 0:
            self._memory.close_fd()

    def call(self, contract: int, function: int, args: BytesLike, out_size: int, timeout: float) -> bytes:
        """One call (timeout < 0: none); returns the out bytes or raises ChannelFailure."""
        # A bytearray, not ffi.new: big cffi buffers come from fresh pages, and
        # their first-touch faults cost more than the copy (1 MiB: ~2 ms vs ~0.2 ms).
        out = bytearray(out_size)
        source = args if type(args) is bytes else ffi.from_buffer(args)
        status = lib.pp_call(
            self.conn, contract, function, source, len(args), ffi.from_buffer(out), out_size, timeout
        )
        if status != lib.PP_CALL_OK:
            raise ChannelFailure.last(status)
        return bytes(out)

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
        status = lib.pp_call_batch(
            self.conn, contract, function, source, record, count, out, out_size, timeout
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
        status = lib.pp_call_ex(
            self.conn,
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
