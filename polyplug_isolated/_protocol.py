"""The control plane between host and worker: framed msgpack on a socketpair.

Each frame is a 4-byte big-endian length, then one msgpack map whose ``t`` key
names it. The shared-memory layout lives in ``worker/channel.h``; its version
(``PP_PROTOCOL_VERSION``) is sent in ``load`` and checked by the worker.

::

    host                                     worker
     |  spawn: python -m polyplug_isolated.worker --control-fd C  (maybe long before)
     |--- load {protocol, library, bundle_id, bundle_dir, wait, spin_ns,  --->|
     |          cwd, limits, sandbox} + the segment's fd (SCM_RIGHTS)
     |<-- contained {mechanisms, pid, seconds} --- contain (see _sandbox)
     |                                          chdir, setrlimit
     |                                          attach segment, dlopen, init
     |<-- ready {abi_version, contracts: [...]}  |  or  error {kind, ...} ---|
     |<-- cb {data} (during init: a call back) -> cb_reply {data} -----------|
     |<-- log {level, target, message} (any time, from the plugin) ----------|
     |--- faults {faults, append} -> faults_set;  sync -> synced ------------|
     |<-- fault {id, call, contract, function} (before a fault acts) --------|
     |--- unload ------------------------------------------------------------>|
     |                                     stop serving, dlclose
     |<-- closed ------------------------------------------------------------|
     |                                          exit 0
     EOF on the socket, either way, means the other side is gone.

A frame from the worker is untrusted: its length is capped (MAX_FRAME; until
the ready or error frame, MAX_READY_FRAME, since the ready frame carries every
registration) and every field is checked where it is used.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from ._channel_ffi import lib as _channel

PROTOCOL_VERSION = _channel.PP_PROTOCOL_VERSION
MAX_FRAME = 1 << 20
MAX_READY_FRAME = 64 << 20  # 20k contracts take ~1.5 MiB; a 1 MiB contract name fits many times
_PREFIX = struct.Struct(">I")

LOAD = "load"
UNLOAD = "unload"
READY = "ready"
ERROR = "error"
LOG = "log"
CLOSED = "closed"
FAULTS = "faults"  # host -> worker: {faults: [spec], append: bool}; answered by FAULTS_SET
FAULTS_SET = "faults_set"
FAULT = "fault"  # worker -> host: a fault fired {id, call, contract, function}
SYNC = "sync"  # host -> worker; answered by SYNCED once every earlier frame is out
SYNCED = "synced"
CB = "cb"  # worker -> host during polyplug_init: {data: a call-back request (worker/callback.h)}
CB_REPLY = "cb_reply"  # host -> worker: {data: the reply}
CONTAINED = "contained"  # worker -> host, before dlopen: {mechanisms: {name: state}, pid, seconds}

# Values of an ``error`` frame's ``kind``.
DLOPEN = "dlopen"
NO_ABI_VERSION = "no_abi_version"
ABI_MISMATCH = "abi_mismatch"
NO_INIT = "no_init"
INIT_ERROR = "init_error"
ATTACH = "attach"
CONFINE = "confine"
BAD_REQUEST = "bad_request"


class FrameError(ValueError):
    """A frame that cannot be what the peer meant: too long, not msgpack, not a map."""


def encode(tag: str, /, **fields: Any) -> bytes:
    """The msgpack payload of a frame (without its length prefix)."""
    payload: bytes = msgpack.packb({"t": tag, **fields}, use_bin_type=True)
    return payload


def frame(tag: str, /, **fields: Any) -> bytes:
    """A whole frame: length prefix and payload."""
    payload = encode(tag, **fields)
    return _PREFIX.pack(len(payload)) + payload


def decode(payload: bytes) -> dict[str, Any]:
    """One frame's payload as a dict with a string ``t``; FrameError otherwise."""
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FrameError(f"not a msgpack frame: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise FrameError("a control frame must be a map with a string 't'")
    return message


class FrameReader:
    """Splits a byte stream into frames; fed by whoever reads the socket."""

    def __init__(self, max_frame: int = MAX_FRAME, handshake_max: int | None = None):
        """``handshake_max``: the cap until a ready or error frame has passed (then ``max_frame``)."""
        self._buffer = bytearray()
        self._max = max_frame if handshake_max is None else handshake_max
        self._after_handshake = max_frame

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Adds bytes, returns the frames they complete. Raises FrameError."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= _PREFIX.size:
            (length,) = _PREFIX.unpack_from(self._buffer)
            if length > self._max:
                raise FrameError(f"frame of {length} bytes exceeds the {self._max}-byte limit")
            end = _PREFIX.size + length
            if len(self._buffer) < end:
                break
            frame = decode(bytes(self._buffer[_PREFIX.size : end]))
            del self._buffer[:end]
            if frame["t"] in (READY, ERROR):
                self._max = self._after_handshake
            frames.append(frame)
        return frames
