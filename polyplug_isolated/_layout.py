"""Where every byte of an IDL type lies, as a C compiler lays it out — asked of cffi.

The Api's types are written as C declarations (``c_declarations``) and given
to cffi (ABI mode, nothing compiled), whose struct layout is the platform C
compiler's: natural alignment, padding between fields and at the end. From
cffi's sizes and offsets each type gets a ``struct`` module format with the
padding spelled out (``=`` order: native byte order, no implicit alignment),
checked against cffi's size, so packing a call is one ``Struct.pack``.

Argument records follow polyplug's native dispatch (its ABI): no parameter, no
record; one parameter, the value itself; two or more, one C struct of all of
them in declaration order (``pp_args_<contract>_<function>``).

A StringView is ``{ptr, len}`` and a Buffer ``{ptr, len, cap}``: the pointer is
packed as a u64 the worker fixes up (``views`` lists where they lie).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cffi

from . import _idl
from .errors import ManifestError

C_SCALARS = {
    "u8": "uint8_t",
    "u16": "uint16_t",
    "u32": "uint32_t",
    "u64": "uint64_t",
    "i8": "int8_t",
    "i16": "int16_t",
    "i32": "int32_t",
    "i64": "int64_t",
    "f32": "float",
    "f64": "double",
    "bool": "_Bool",
}
# struct module codes; with "=" they have the standard sizes of C's fixed-width types.
FORMAT_CODES = {
    "u8": "B",
    "u16": "H",
    "u32": "I",
    "u64": "Q",
    "i8": "b",
    "i16": "h",
    "i32": "i",
    "i64": "q",
    "f32": "f",
    "f64": "d",
    "bool": "?",
}
# The ABI's two views, as polyplug_abi.h declares them.
PRELUDE = """\
typedef struct StringView { const uint8_t *ptr; size_t len; } StringView;
typedef struct Buffer { uint8_t *ptr; size_t len; size_t cap; } Buffer;
"""
_VIEW_FORMATS = {"StringView": "QQ", "Buffer": "QQQ"}


@dataclass(frozen=True)
class TypeLayout:
    """One type's bytes: ``format`` packs it (without the ``=`` prefix); ``views`` are the
    (offset, View) of every StringView/Buffer inside it; ``fields`` the (name, offset,
    layout) of a struct's fields."""

    c_type: str
    size: int
    align: int
    format: str
    views: tuple[tuple[int, _idl.View], ...] = ()
    fields: tuple[tuple[str, int, TypeLayout], ...] = ()


def c_type(t: _idl.Type) -> str:
    """How a field of IDL type ``t`` is spelled in the C declarations."""
    if isinstance(t, _idl.Scalar):
        return C_SCALARS[t.name]
    if isinstance(t, (_idl.Enum, _idl.View)):
        return t.name
    if isinstance(t, _idl.Pointer):
        return "void *"
    return f"struct {t.name}"


def args_tag(contract_index: int, function: _idl.Function) -> str:
    """The C struct tag of a function's argument record (two or more parameters)."""
    return f"pp_args_{contract_index}_{function.index}"


def c_declarations(api: _idl.Api) -> str:
    """C declarations of every type of ``api`` and every argument record; needs
    <stdint.h> and <stddef.h> when compiled as C."""
    lines = [PRELUDE]
    lines += [f"typedef {C_SCALARS[e.repr.name]} {e.name};" for e in api.enums.values()]
    for struct_type in api.structs.values():  # dependency order: members first
        lines.append(_c_struct(struct_type.name, struct_type.fields))
    for ci, contract in enumerate(api.contracts):
        for function in contract.functions:
            if len(function.params) >= 2:
                lines.append(_c_struct(args_tag(ci, function), function.params))
    return "\n".join(lines) + "\n"


def _c_struct(tag: str, fields: tuple[_idl.Field, ...]) -> str:
    body = " ".join(f"{c_type(f.type)} {f.name};" for f in fields)
    return f"struct {tag} {{ {body} }};"


class Layout:
    """The layouts of one Api's types and argument records."""

    def __init__(self, api: _idl.Api):
        self.api = api
        self.source = c_declarations(api)
        taken = {args_tag(ci, f) for ci, c in enumerate(api.contracts) for f in c.functions}
        clash = taken & set(api.structs)
        if clash:
            raise ManifestError(f"{api.source}: [[types]] {sorted(clash)[0]!r} clashes with a generated name")
        self.ffi = cffi.FFI()
        try:
            self.ffi.cdef(self.source)
        except (cffi.CDefError, cffi.FFIError) as exc:  # a name C reserves, e.g. a type named size_t
            raise ManifestError(f"{api.source}: its types do not make valid C declarations: {exc}") from exc
        self._types: dict[str, TypeLayout] = {}
        self._args: dict[tuple[str, str], TypeLayout | None] = {}
        for ci, contract in enumerate(api.contracts):
            for function in contract.functions:
                self._args[contract.name, function.name] = self._args_layout(ci, function)

    def of(self, t: _idl.Type) -> TypeLayout:
        """The layout of a value of type ``t``."""
        key = t.name
        cached = self._types.get(key)
        if cached is None:
            cached = self._types[key] = self._compute(t)
        return cached

    def args(self, contract: _idl.Contract, function: _idl.Function) -> TypeLayout | None:
        """The argument record ``args`` points at (None: no parameters, args is NULL)."""
        return self._args[contract.name, function.name]

    def records(self) -> dict[str, TypeLayout]:
        """Every C struct declared (``[[types]]`` and argument records), by struct tag."""
        found = {t.name: self.of(t) for t in self.api.structs.values()}
        for layout in self._args.values():
            if layout is not None and layout.c_type.startswith("struct pp_args_"):
                found[layout.c_type.removeprefix("struct ")] = layout
        return found

    def _compute(self, t: _idl.Type) -> TypeLayout:
        spelled = c_type(t)
        size, align = self.ffi.sizeof(spelled), self.ffi.alignof(spelled)
        if isinstance(t, _idl.Struct):
            return self._record(spelled, t.fields)
        if isinstance(t, _idl.View):
            return _checked(TypeLayout(spelled, size, align, _VIEW_FORMATS[t.name], ((0, t),)))
        if isinstance(t, _idl.Pointer):
            return _checked(TypeLayout(spelled, size, align, "Q"))
        scalar = t.repr if isinstance(t, _idl.Enum) else t
        return _checked(TypeLayout(spelled, size, align, FORMAT_CODES[scalar.name]))

    def _args_layout(self, ci: int, function: _idl.Function) -> TypeLayout | None:
        if not function.params:
            return None
        if len(function.params) == 1:
            return self.of(function.params[0].type)
        return self._record(f"struct {args_tag(ci, function)}", function.params)

    def _record(self, spelled: str, members: tuple[_idl.Field, ...]) -> TypeLayout:
        """A struct's layout from cffi's offsets: its members' formats with the padding between."""
        tag = spelled
        parts, views, fields, cursor = [], [], [], 0
        for member in members:
            offset = self.ffi.offsetof(tag, member.name)
            inner = self.of(member.type)
            if offset > cursor:
                parts.append(f"{offset - cursor}x")
            parts.append(inner.format)
            views += [(offset + at, view) for at, view in inner.views]
            fields.append((member.name, offset, inner))
            cursor = offset + inner.size
        size = self.ffi.sizeof(tag)
        if size > cursor:
            parts.append(f"{size - cursor}x")
        layout = TypeLayout(spelled, size, self.ffi.alignof(tag), "".join(parts), tuple(views), tuple(fields))
        return _checked(layout)


def _checked(layout: TypeLayout) -> TypeLayout:
    """The format must cover exactly the bytes cffi says the type has."""
    if struct.calcsize("=" + layout.format) != layout.size:
        raise AssertionError(
            f"{layout.c_type}: format {layout.format!r} disagrees with cffi's size {layout.size}"
        )
    return layout
