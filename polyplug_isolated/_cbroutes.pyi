"""Routes for calls back, answered by reply_callback's hook (see _cbroutes.c)."""

from collections.abc import Callable
from typing import Any

def bind(api_address: int, /) -> int: ...
def answer_in_python(owner: int, request: bytes, answer: Callable[[bytes], bytes], /) -> bool: ...
def forward(
    owner: int,
    request: bytes,
    conn_owner: Any,
    conn_address: int,
    contract: int,
    function: int,
    args_size: int,
    out_size: int,
    timeout_s: float,
    failed: Callable[[int, bytes], bytes],
    /,
) -> bool: ...
def drop(owner: int, /) -> None: ...
def answered() -> tuple[int, int, int]: ...
def held() -> tuple[int, int]: ...
