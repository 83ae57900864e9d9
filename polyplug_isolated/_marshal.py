"""Value codecs for typed calls: Python values to and from the C layout of each IDL type.

One codec per IDL type (integers, floats, bool, enums, StringView/Buffer,
pointers, structs), and the generated Python types (IntEnum/IntFlag,
dataclasses) they produce. Used by _typed, which builds one call per function.
"""

from __future__ import annotations

import dataclasses
import enum
import numbers
import operator
import struct
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from . import _idl

NULL = 0xFFFFFFFFFFFFFFFF  # PP_NULL_OFFSET: a NULL pointer, as an offset
_F32 = struct.Struct("=f")


class _Bad(Exception):
    """A value that cannot be packed; ``path`` collects the fields it sits in, innermost first."""

    def __init__(self, error: type[Exception], message: str):
        super().__init__(message)
        self.error, self.message = error, message
        self.path: list[str] = []


class _Breach(Exception):
    """A returned view whose bytes lie outside the return area."""


class _Tail:
    """The bytes appended after an args record; views point at them by offset."""

    __slots__ = ("parts", "size")

    def __init__(self, base: int):
        self.parts: list[bytes] = []
        self.size = base

    def add(self, data: bytes) -> int:
        offset = self.size
        self.parts.append(data)
        self.size += len(data)
        return offset


# ---- codecs: one per IDL type ------------------------------------------------


class _Codec:
    """Python value <-> the flat values of one type's struct format."""

    def encode(self, value: Any, flat: list[Any], tail: _Tail) -> None:
        raise NotImplementedError

    def decode(self, items: Iterator[Any], ret: bytes) -> Any:
        return next(items)


class _Int(_Codec):
    def __init__(self, scalar: _idl.Scalar):
        self.name = scalar.name
        self.low, self.high = scalar.bounds

    def encode(self, value: Any, flat: list[Any], tail: _Tail) -> None:
        if type(value) is not int:
            try:
                value = operator.index(value)
            except TypeError:
                raise _Bad(TypeError, f"must be an int ({self.name}), not {type(value).__name__}") from None
        if not self.low <= value <= self.high:
            raise _Bad(ValueError, f"{value} is out of range for {self.name} ({self.low}..{self.high})")
        flat.append(value)


class _Float(_Codec):
    def __init__(self, scalar: _idl.Scalar):
        self.name = scalar.name

    def encode(self, value: Any, flat: list[Any], tail: _Tail) -> None:
        if not isinstance(value, numbers.Real):
            raise _Bad(TypeError, f"must be a float ({self.name}), not {type(value).__name__}")
        try:
            value = float(value)
            if self.name == "f32":
                _F32.pack(value)
        except OverflowError:
            raise _Bad(ValueError, f"{value!r} is out of range for {self.name}") from None
        flat.append(value)


class _Bool(_Codec):
    def encode(self, value: Any, flat: list[Any], tail: _Tail) -> None:
        if value is True or value is False:
            flat.append(value)
        elif type(value) is int and value in (0, 1):
            flat.append(bool(value))
        else:
            raise _Bad(TypeError, f"must be a bool, not {type(value).__name__}")


class _Enum(_Codec):
    def __init__(self, enum_type: _idl.Enum, cls: type[enum.Enum]):
        self.name = enum_type.name
        self.cls = cls
        self.bitflag = enum_type.bitflag
        self.high = enum_type.repr.bounds[1]
        self.values = {value for _, value in enum_type.variants}
        self.names = ", ".join(f"{name}={value}" for name, value in enum_type.variants)

    def encode(self, value: Any, flat: list[Any], tail: _Tail) -> None:
        if isinstance(value, enum.Enum) and type(value).__name__ != self.name:
            raise _Bad(TypeError, f"must be a {self.name}, not {type(value).__name__}.{value.name}")
        try:
            value = operator.index(value)
        except TypeError:
            raise _Bad(TypeError, f"must be a {self.name} or an int, not {type(value).__name__}") from None
        if self.bitflag:
            if not 0 <= value <= self.high:
                raise _Bad(ValueError, f"{value} is out of range for {self.name} flags (0..{self.high})")
        elif value not in self.values:
            raise _Bad(ValueError, f"{value} is not a {self.name} ({self.names})")
        flat.append(value)

    def decode(self, items: Iterator[Any], ret: bytes) -> Any:
        value = next(items)
        try:
            return self.cls(value)
        except ValueError:  # the plugin answered a value the IDL does not name
            return value


class _View(_Codec):
    def __init__(self, view: _idl.View):
        self.owned = view.owned
        self.null = (NULL, 0, 0) if view.owned else (NULL, 0)

    def encode(self, value: Any, flat: list[Any], tail: _Tail) -> None:
        if value is None:
            flat.extend(self.null)
            return
        if isinstance(value, str) and not self.owned:
            try:
                data = value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _Bad(ValueError, f"is not valid UTF-8 text ({exc.reason})") from None
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        else:
            wanted = "bytes" if self.owned else "a str or bytes"
            raise _Bad(TypeError, f"must be {wanted} (or None), not {type(value).__name__}")
        flat.append(tail.add(data))
        flat.append(len(data))
        if self.owned:
            flat.append(len(data))

    def decode(self, items: Iterator[Any], ret: bytes) -> Any:
        offset, length = next(items), next(items)
        if self.owned:
            next(items)  # cap: the worker set it to len when it freed the plugin's buffer
        if offset == NULL:
            data = b""
        elif offset > len(ret) or length > len(ret) - offset:
            raise _Breach(f"a {'Buffer' if self.owned else 'StringView'} at {offset}+{length}")
        else:
            data = ret[offset : offset + length]
        return data if self.owned else data.decode("utf-8", "surrogateescape")


class _Pointer(_Codec):
    def encode(self, value: Any, flat: list[Any], tail: _Tail) -> None:
        raise _Bad(TypeError, "is a Ptr: an address means nothing in the worker's process")


class _Struct(_Codec):
    def __init__(self, struct_type: _idl.Struct, cls: type, fields: list[tuple[str, _Codec]]):
        self.name = struct_type.name
        self.cls = cls
        self.fields = fields
        self.names = {name for name, _ in fields}

    def encode(self, value: Any, flat: list[Any], tail: _Tail) -> None:
        is_dict = isinstance(value, dict)
        if is_dict and value.keys() - self.names:
            extra = sorted(map(str, value.keys() - self.names))[0]
            raise _Bad(TypeError, f"has no field {extra!r} (a {self.name} has {', '.join(self.names)})")
        for name, codec in self.fields:
            try:
                field = value[name] if is_dict else getattr(value, name)
            except (KeyError, AttributeError):
                raise _Bad(
                    TypeError,
                    f"must be a dict or an object with the fields of {self.name}; "
                    f"{type(value).__name__} {'has no key' if is_dict else 'has no attribute'} {name!r}",
                ) from None
            try:
                codec.encode(field, flat, tail)
            except _Bad as bad:
                bad.path.append(name)
                raise

    def decode(self, items: Iterator[Any], ret: bytes) -> Any:
        return self.cls(*[codec.decode(items, ret) for _, codec in self.fields])


class _Types:
    """An Api's Python side: an IntEnum/IntFlag per enum, a dataclass per struct, the codecs."""

    def __init__(self, api: _idl.Api):
        self.classes: dict[str, type] = {}
        for e in api.enums.values():
            base = enum.IntFlag if e.bitflag else enum.IntEnum
            self.classes[e.name] = base(e.name, list(e.variants))  # type: ignore[arg-type,assignment,call-arg]
        for s in api.structs.values():  # in dependency order: a field's class exists already
            self.classes[s.name] = dataclasses.make_dataclass(
                s.name, [(f.name, self.python_type(f.type)) for f in s.fields]
            )
        self.namespace = SimpleNamespace(**self.classes)
        self._codecs: dict[str, _Codec] = {}

    def codec(self, t: _idl.Type) -> _Codec:
        found = self._codecs.get(t.name)
        if found is None:
            found = self._codecs[t.name] = self._make(t)
        return found

    def python_type(self, t: _idl.Type) -> Any:
        """The Python type of the values of IDL type ``t`` (what annotations show)."""
        if isinstance(t, _idl.Scalar):
            return {"float": float, "bool": bool}.get(t.kind, int)
        if isinstance(t, _idl.View):
            return bytes if t.owned else str
        if isinstance(t, _idl.Pointer):
            return int
        return self.classes[t.name]

    def _make(self, t: _idl.Type) -> _Codec:
        if isinstance(t, _idl.Scalar):
            if t.kind == "float":
                return _Float(t)
            return _Bool() if t.kind == "bool" else _Int(t)
        if isinstance(t, _idl.Enum):
            return _Enum(t, self.classes[t.name])
        if isinstance(t, _idl.View):
            return _View(t)
        if isinstance(t, _idl.Pointer):
            return _Pointer()
        return _Struct(t, self.classes[t.name], [(f.name, self.codec(f.type)) for f in t.fields])
