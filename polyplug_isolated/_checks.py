"""Argument checks at the public boundary: one wrong option, one precise error.

A value of the wrong type or range must fail where the user passed it, with
a message naming the option and showing a correct use, never later on an
internal thread (where it would kill the monitor and leave callers waiting).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}" if len(text) <= 60 else type(value).__name__


def integer(
    owner: str, name: str, value: object, example: str, *, low: int | None = None, high: int | None = None
) -> int:
    """``value`` as an int (not a bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, not {_shown(value)}; e.g. {example}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{owner}: {name} must be {_range(low, high)}, not {value}; e.g. {example}")
    return value


def number(
    owner: str,
    name: str,
    value: object,
    example: str,
    *,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> float:
    """``value`` as an int or float (not a bool, not NaN): positive, or within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number, not {_shown(value)}; e.g. {example}")
    if value != value or (positive and value <= 0):  # NaN compares unequal to itself
        raise ValueError(f"{owner}: {name} must be a positive number, not {value}; e.g. {example}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{owner}: {name} must be {_range(low, high)}, not {value}; e.g. {example}")
    return value


def timeout(owner: str, name: str, value: object, example: str) -> float | None:
    """A timeout: a positive number of seconds, or None for no limit."""
    if value is None:
        return None
    return number(owner, name, value, f"{example} (or None for no limit)", positive=True)


def instance(owner: str, name: str, value: object, kind: type[T], example: str) -> T:
    if not isinstance(value, kind):
        raise TypeError(f"{owner}: {name} must be a {kind.__name__}, not {_shown(value)}; e.g. {example}")
    return value


def optional(owner: str, name: str, value: object, kind: type[T], example: str) -> T | None:
    return None if value is None else instance(owner, name, value, kind, example)


def flag(owner: str, name: str, value: object, example: str) -> bool:
    return instance(owner, name, value, bool, example)


def callback(owner: str, name: str, value: object, example: str) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise TypeError(f"{owner}: {name} must be callable or None, not {_shown(value)}; e.g. {example}")
    return value


def path(owner: str, name: str, value: object, example: str) -> str:
    """A str or os.PathLike, as a str."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{owner}: {name} must be a path (str or os.PathLike), not {_shown(value)}; e.g. {example}"
        )
    result = os.fspath(value)
    if not isinstance(result, str):
        raise TypeError(f"{owner}: {name} must be a text path, not bytes; e.g. {example}")
    return result


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f"at least {low}" if low is not None else f"at most {high}"
