"""The call-back wire format (worker/callback.h) on the host side: parse requests, build replies.

A request is a 48-byte header and the args blob (the argument record, then
the bytes its StringViews/Buffers point at, each pointer replaced by the
offset of its bytes in the blob). A reply is a 24-byte header, the AbiError
message, out (its views as offsets into the tail) and the tail, each part
8-aligned. Everything from the worker is untrusted: lengths are checked here,
once, and a request that does not parse is answered with an error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from . import _idl
from ._channel_ffi import lib
from ._layout import Layout, TypeLayout

REQUEST = struct.Struct("=IIQQQIIII")
REPLY = struct.Struct("=IIIIQ")
IFACE = struct.Struct("=QIIIIII")
FUNCTION = struct.Struct("=IIHH")
VIEW = struct.Struct("=II")
UNKNOWN = lib.PP_CB_UNKNOWN
NULL_OFFSET = 0xFFFFFFFFFFFFFFFF

OK = 0
GENERIC = 1
BUFFER_TOO_SMALL = 2
NOT_FOUND = 4
STALE_HANDLE = 5
FUNCTION_NOT_AVAILABLE = 6
REENTRANT_CALL = 9
HOST_CONTRACT_NOT_FOUND = 100
HOST_CONTRACT_VERSION_MISMATCH = 101
HOST_CONTRACT_CALL_FAILED = 102


class BadRequest(ValueError):
    """A request that cannot be what a well-behaved worker sent."""


class Request(NamedTuple):
    op: int
    function: int
    id: int
    handle: int
    instance: int
    min_version: int
    args: bytes | None  # None: the plugin passed args == NULL
    out_size: int
    out_null: bool


def parse_request(data: bytes) -> Request:
    if len(data) < REQUEST.size:
        raise BadRequest(f"a call-back request of {len(data)} bytes is shorter than its header")
    op, function, id_, handle, instance, min_version, args_len, out_size, flags = _unpack_request(data)
    if args_len != len(data) - _REQUEST_SIZE:
        raise BadRequest("a call-back request's args_len does not match its length")
    args = None if flags & _ARGS_NULL else data[_REQUEST_SIZE:]
    return Request(op, function, id_, handle, instance, min_version, args, out_size, bool(flags & _OUT_NULL))


def args_len(data: bytes) -> int:
    """The args length a request's header claims (parse_request checks it against the bytes)."""
    claimed: int = _unpack_args_len(data, _ARGS_LEN_OFFSET)[0]
    return claimed


_unpack_request = REQUEST.unpack_from
_unpack_args_len = struct.Struct("=I").unpack_from
_ARGS_LEN_OFFSET = struct.calcsize("=IIQQQI")
_REQUEST_SIZE = REQUEST.size
_ARGS_NULL = lib.PP_CB_ARGS_NULL
_OUT_NULL = lib.PP_CB_OUT_NULL
_pack_reply = REPLY.pack
_PADDING = [b"\0" * (-n % 8) for n in range(8)]


def reply(code: int = OK, message: str = "", out: bytes = b"", tail: bytes = b"", value: int = 0) -> bytes:
    if message:
        text = message.encode("utf-8", "replace")[: lib.PP_ERR_CAP]
        head = _pack_reply(code, len(text), len(out), len(tail), value) + text + _PADDING[len(text) % 8]
    else:
        head = _pack_reply(code, 0, len(out), len(tail), value)
    return head + out + _PADDING[len(out) % 8] + tail


@dataclass(frozen=True)
class FunctionShape:
    """Where one function's bytes lie: what a trampoline copies each way."""

    args_size: int  # UNKNOWN: not described
    out_size: int
    arg_views: tuple[tuple[int, bool], ...] = ()  # (offset, is Buffer)
    out_views: tuple[tuple[int, bool], ...] = ()


UNDESCRIBED = FunctionShape(UNKNOWN, 0)


def misfit(blob: bytes, shape: FunctionShape) -> str | None:
    """Why args from a worker do not fit the function's shape (None: they do).

    Whoever reads them next (a host contract, another worker's plugin) trusts
    the record to be whole and every view to lie inside the bytes sent.
    """
    if len(blob) < shape.args_size:
        return f"the arguments are {len(blob)} bytes, not {shape.args_size}"
    for offset, _ in shape.arg_views:
        where, length = struct.unpack_from("=QQ", blob, offset)
        if where != NULL_OFFSET and (where > len(blob) or length > len(blob) - where):
            return "an argument's StringView or Buffer lies outside the arguments"
    return None


def shapes(api: _idl.Api, contract: _idl.Contract) -> list[FunctionShape]:
    """The shape of each of ``contract``'s functions, from the api.toml's C layout."""
    layout = Layout(api)
    found = []
    for function in contract.functions:
        args = layout.args(contract, function)
        out: TypeLayout | None = layout.of(function.returns) if function.returns is not None else None
        found.append(
            FunctionShape(
                args.size if args else 0,
                out.size if out else 0,
                tuple((offset, view.owned) for offset, view in (args.views if args else ())),
                tuple((offset, view.owned) for offset, view in (out.views if out else ())),
            )
        )
    return found


def describe(
    contract_id: int, version: tuple[int, int, int], singleton: bool, functions: list[FunctionShape]
) -> bytes:
    """An interface description: what the worker builds its trampolines from."""
    views = [v for f in functions for v in (*f.arg_views, *f.out_views)]
    parts = [IFACE.pack(contract_id, *version, int(singleton), len(functions), len(views))]
    parts += [FUNCTION.pack(f.args_size, f.out_size, len(f.arg_views), len(f.out_views)) for f in functions]
    parts += [VIEW.pack(offset, int(owned)) for offset, owned in views]
    return b"".join(parts)
