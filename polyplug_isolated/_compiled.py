"""Typed functions compiled: one C call per Python call.

When a typed proxy is made, each function whose parameters are integers,
floats, bools, StringViews, Buffers or structs of scalars, and whose result is
a scalar, a struct of scalars or nothing, becomes a ``_fastcall.Function``: a
callable C object that knows the offset and width of every parameter in the
args record (and of every field of a struct result: its dataclass is built
from them in the same C call). A call
converts its Python values straight into a record on the C stack (a str's
UTF-8 and a bytes' contents after it, pointed at by fixups), runs the call on
the thread's slot without the GIL, and returns the answer as a Python value:
no struct.pack, no bytes objects, no Python frame.

Whatever it cannot take (keywords, an int subclass, a value out of range, a
call that did not answer Ok) goes to the general path (_typed's method), which
binds, checks and raises exactly as before; afterwards the object is re-bound
to the contract's current worker, so a reload costs one slow call.

``fn.many(argument_tuples)`` packs every tuple in C and runs them in
batches, one hand-off per batch; it returns the answers as a list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ._channel import ChannelFailure
from ._contract import _DEFAULT, UNSENT, GuestContract
from ._fastcall import FAST_OUT, Function
from ._marshal import _Bool, _Float, _Int, _Struct, _View

if TYPE_CHECKING:
    from ._layout import TypeLayout
    from ._typed import _Call

_SCALARS = (_Int, _Float, _Bool)
_MAX_RECORD = 256  # MAX_RECORD in _fastcall.c


def param_entries(call: _Call, layout: TypeLayout | None) -> list[tuple[Any, ...]] | None:
    """The parameters as _fastcall.Function entries; None when one needs the general path.

    A scalar is (struct code, offset); a StringView ("S", offset) and a Buffer
    ("U", offset); a struct of scalars ("T", 0, field count) followed by
    (code, offset, attribute name) per field.
    """
    if layout is None:
        return []
    if len(call.params) == 1:
        places = [(0, layout)]
    else:
        places = [(offset, inner) for _, offset, inner in layout.fields]
    entries: list[tuple[Any, ...]] = []
    for codec, (offset, inner) in zip(call.codecs, places, strict=True):
        if type(codec) in _SCALARS and len(inner.format) == 1:
            entries.append((inner.format, offset))
        elif type(codec) is _View:
            entries.append(("U" if codec.owned else "S", offset))
        elif type(codec) is _Struct and all(type(field) in _SCALARS for _, field in codec.fields):
            entries.append(("T", 0, len(inner.fields)))
            for name, at, field in inner.fields:
                if len(field.format) != 1:
                    return None
                entries.append((field.format, offset + at, name))
        else:
            return None
    return entries


def struct_result(call: _Call) -> tuple[type, tuple[tuple[str, int], ...]] | None:
    """A struct of scalars as the result: (its class, (struct code, offset) per field); else None."""
    codec, out = call.result_codec, call.out_layout
    if type(codec) is not _Struct or out is None or len(codec.fields) != len(out.fields):
        return None
    if not all(type(field) in _SCALARS for _, field in codec.fields):
        return None
    if not all(len(inner.format) == 1 for _, _, inner in out.fields):
        return None
    return codec.cls, tuple((inner.format, offset) for _, offset, inner in out.fields)


def compile_function(
    call: _Call, contract: GuestContract, slow: Callable[..., Any], args_layout: TypeLayout | None
) -> Callable[..., Any] | None:
    """``call`` on the default instance compiled to one C call; None when its shape needs the general path."""
    result = call.result_codec
    result_struct = None
    if result is not None and type(result) not in _SCALARS:
        result_struct = struct_result(call)
        if result_struct is None:
            return None
    if call.returns_views:
        return None
    params = param_entries(call, args_layout)
    if params is None or call.args_size > _MAX_RECORD or call.out_size > FAST_OUT:
        return None
    proxy, conn, index = contract.route()
    per_batch = proxy.channel.records_per_batch(call.args_size, call.out_size)
    code = "" if result is None else "T" if result_struct else call.out_format

    def rebind() -> None:
        bound_proxy, bound_conn, bound_index = contract._binding
        if bound_conn is not None:
            fast.rebind(bound_conn, bound_proxy, bound_index)

    def failed(status: int, at: Any, args: tuple[Any, ...]) -> Any:
        """A call that did not answer Ok: the general path, or the error it means."""
        try:
            if status in UNSENT:
                return slow(*args)  # nothing was sent: this path takes a lease, waits out reloads
            failure = ChannelFailure.last(status)  # read before anything else calls on this thread
            out = contract._failed(failure, at, call.index, call.encode(args), call.out_size, _DEFAULT)
            return call.result(out, b"")
        finally:
            rebind()

    def many(arguments: Iterable[Sequence[Any]]) -> list[Any]:
        """One answer per argument tuple, in order; the calls go in batches of one hand-off each.

        A plugin error stops the run: PluginCallError's ``index`` names the
        failing call (the calls before it ran; their answers are dropped).
        """
        items = arguments if isinstance(arguments, (list, tuple)) else list(arguments)
        if call.fixups:  # views: no batches (each call has its own bytes), one call each
            return [fast(*args) for args in items]
        if not call.params:
            return _many_slowly(call, contract, items)
        answer = fast._many(items)
        if type(answer) is list:
            return answer
        status, start, done, before, called = answer
        try:
            if status == 0 or status in UNSENT:  # the rest never went out: the general path
                return [*before, *_many_slowly(call, contract, items[start:])]
            raise contract._batch_error(status, called, call.index, start + done) from None
        finally:
            rebind()

    fast: Function = Function(
        conn,
        proxy,
        index,
        call.index,
        contract._timeout,
        params,
        call.args_size,
        code,
        call.out_size,
        per_batch,
        slow,
        failed,
        *([result_struct] if result_struct else []),
    )
    fast.many = many
    return fast


def _many_slowly(call: _Call, contract: GuestContract, items: Sequence[Sequence[Any]]) -> list[Any]:
    """``many`` through call_packed: each tuple checked and packed in Python."""
    if not items:
        return []
    if call.args_size == 0:
        return [call.result(contract.call(call.index, b"", call.out_size), b"") for _ in items]
    blobs = []
    for args in items:
        if not isinstance(args, tuple):
            raise TypeError(f"{call.where}.many(): each item must be a tuple of arguments, not {args!r}")
        blobs.append(call.encode(call.bind(args, {})))
    out = contract.call_packed(call.index, b"".join(blobs), call.args_size, call.out_size)
    size = call.out_size
    return (
        [call.result(out[i : i + size], b"") for i in range(0, len(items) * size, size)]
        if size
        else [None] * len(items)
    )
