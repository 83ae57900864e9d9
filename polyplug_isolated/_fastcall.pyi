"""Type stub of the _fastcall extension (_fastcall.c)."""

from collections.abc import Callable, Sequence
from typing import Any

FAST_OUT: int

def bind(table_address: int, /) -> None: ...

class Conn:
    def __init__(self, owner: Any, address: int, /) -> None: ...

class Region:
    exports: int
    def __init__(self, owner: Any, address: int, length: int, /) -> None: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

class Raw:
    proxy: Any
    __signature__: Any
    __name__: str
    def __init__(
        self,
        conn: Conn | None,
        proxy: Any,
        contract: int,
        timeout: float,
        general: Callable[..., bytes],
        failed: Callable[..., bytes],
        /,
    ) -> None: ...
    def __call__(self, fn_index: int, args: Any, out_size: int, *, timeout: Any = ...) -> bytes: ...
    def rebind(self, conn: Conn, proxy: Any, contract: int, /) -> None: ...
    def _many(
        self, fn_index: int, items: list[Any], out_size: int, per_batch: int, /
    ) -> list[bytes] | tuple[int, int, int, list[bytes], Any]: ...

class Function:
    proxy: Any
    many: Callable[[Any], list[Any]]
    def __init__(
        self,
        conn: Conn | None,
        proxy: Any,
        contract: int,
        function: int,
        timeout: float,
        params: Sequence[tuple[Any, ...]],
        args_size: int,
        result: str,
        out_size: int,
        per_batch: int,
        slow: Callable[..., Any],
        failed: Callable[..., Any],
        result_struct: tuple[type, tuple[tuple[str, int], ...]] = ...,
        /,
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def rebind(self, conn: Conn, proxy: Any, contract: int, /) -> None: ...
    def _many(self, items: Sequence[Any], /) -> list[Any] | tuple[int, int, int, list[Any], Any]: ...
