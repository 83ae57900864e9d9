"""One worker's shared-memory data plane, host side (never sees a PID).

The segment is created with posix_ipc (random name, mode 0600) and unlinked
at once: the worker inherits the open fd, so no name exists that a crash of
either side could leak. Calls go through ``pp_call`` in _channel.c, one cffi
call that releases the GIL while it waits.
"""

from __future__ import annotations

import os
import threading

import posix_ipc

from ._channel_ffi import ffi, lib

WAIT_MODES = {"auto": lib.PP_WAIT_AUTO, "spin": lib.PP_WAIT_SPIN, "block": lib.PP_WAIT_BLOCK}


class ChannelFailure(Exception):
    """A call that did not end with an answer; ``status`` is a PP_CALL_* code."""

    def __init__(self, status: int, code: int = 0, message: str = ""):
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message


class Channel:
    """The call slots shared with one worker."""

    def __init__(self, slots: int, payload_cap: int, wait: str, spin_ns: int):
        memory = posix_ipc.SharedMemory(None, posix_ipc.O_CREX, mode=0o600)
        try:
            memory.unlink()
            conn = lib.pp_conn_create(memory.fd, slots, payload_cap, WAIT_MODES[wait], spin_ns)
            if conn == ffi.NULL:
                err = ffi.errno
                raise OSError(err, f"cannot set up a {slots}-slot shared-memory segment: {os.strerror(err)}")
        except BaseException:
            memory.close_fd()
            raise
        self._memory = memory
        # The mapping lives exactly as long as the last reference: a thread
        # inside pp_call holds one, so it can never see the memory go away.
        self._conn = ffi.gc(conn, lib.pp_conn_destroy)
        self._local = threading.local()
        self.payload_cap = payload_cap

    @property
    def fd(self) -> int:
        """The segment's fd, to pass to the worker."""
        return self._memory.fd

    def close_fd(self) -> None:
        """Drops the host's fd once the worker has its own (the mapping stays)."""
        if self._memory.fd >= 0:
            self._memory.close_fd()

    def call(self, contract: int, function: int, args, out_size: int, timeout: float | None) -> bytes:
        """Runs one call; returns the out bytes or raises ChannelFailure."""
        result = getattr(self._local, "result", None)
        if result is None:
            result = self._local.result = ffi.new("pp_result *")
        out = ffi.new("uint8_t[]", out_size) if out_size else ffi.NULL
        source = args if isinstance(args, bytes) else ffi.from_buffer(args)
        status = lib.pp_call(
            self._conn,
            contract,
            function,
            source,
            len(args),
            out,
            out_size,
            -1.0 if timeout is None else timeout,
            result,
        )
        if status != lib.PP_CALL_OK:
            message = ffi.unpack(result.err_msg, result.err_len).decode("utf-8", "replace")
            raise ChannelFailure(status, result.err_code, message)
        return ffi.buffer(out, out_size)[:] if out_size else b""

    @property
    def inflight(self) -> int:
        return lib.pp_conn_inflight(self._conn)

    def start_draining(self) -> None:
        """New calls now fail with PP_CALL_UNAVAILABLE; calls in flight go on."""
        lib.pp_conn_set_draining(self._conn)

    def wait_drained(self, timeout: float) -> bool:
        """True once no call is in flight, False if ``timeout`` passed first."""
        return bool(lib.pp_conn_wait_drained(self._conn, timeout))

    def mark_dead(self) -> None:
        """Fails every waiting and future call with PP_CALL_DEAD."""
        lib.pp_conn_mark_dead(self._conn)
