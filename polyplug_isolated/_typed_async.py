"""Typed calls, awaited: ``await proxy.aio.add(1, 2)``.

The same binding, packing and decoding as the typed proxy's methods
(_typed._Call), with GuestContract.acall_ex in place of the blocking call.
Calls go to the contract's default instance.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._marshal import _Breach
from ._typed import _Call, _return_room

if TYPE_CHECKING:
    from ._typed import TypedContract


def async_methods(typed: TypedContract) -> types.SimpleNamespace:
    """One coroutine function per IDL function of ``typed``, by name."""
    return types.SimpleNamespace(**{name: _amethod(typed, call) for name, call in typed._calls.items()})


def _amethod(typed: TypedContract, call: _Call) -> Callable[..., Coroutine[Any, Any, Any]]:
    contract, route = typed.contract, typed._route
    count = len(call.params)

    async def method(*args: Any, **kwargs: Any) -> Any:
        if kwargs or len(args) != count:
            args = call.bind(args, kwargs)
        blob = call.encode(args)
        proxy = contract.route()[0]
        room = (
            _return_room(proxy.channel, len(blob), len(call.fixups), call.out_size)
            if call.returns_views
            else 0
        )
        out, ret = await contract.acall_ex(call.index, 0, blob, call.fixups, call.out_size, room)
        try:
            return call.result(out, ret)
        except _Breach as breach:
            raise route.breach(proxy, call.where, str(breach)) from None

    method.__name__ = method.__qualname__ = call.where[:-2].rsplit(".", 1)[1]
    method.__signature__ = call.signature  # type: ignore[attr-defined]
    method.__doc__ = f"{call.where[:-2]}{call.signature}, awaited (function {call.index})"
    return method
