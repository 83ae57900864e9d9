"""api.toml, the contract IDL polyplug's code generator reads: parse and validate.

Accepts what polyplugc 0.1.3 accepts (POLYPLUG_V1_SPEC.md §F, polyplug's
docs/API_TOML.md) and turns it into a small immutable model::

    Api ── structs: {name: Struct(fields: (Field(name, type), ...))}, dependency order
       ├── enums:   {name: Enum(repr, bitflag, variants: ((name, value), ...))}
       └── contracts: (Contract(name, version, functions: (Function(name, index,
                       params: (Field, ...), returns: type or None), ...)), ...)

    type = Scalar (u8..u64, i8..i64, f32, f64, bool) | View (StringView, Buffer)
         | Pointer (Ptr) | Enum | Struct

Guest contracts may be spelled ``[[contract]]`` (what 0.1.3 fixtures use),
``[[plugin_contract]]`` or ``[[guest_contract]]``. Unknown keys are refused
(0.1.3 silently dropped them, so ``returns = "u32"`` made a void function);
``docs`` and ``langs`` are accepted and ignored. Variant values are integer
expressions (``"1 << 1"``, ``"Read | Write"``, ``"~0"``) evaluated by a small
parser here, never by ``eval``. Every error is a ManifestError naming the
file, the item and the field.
"""

from __future__ import annotations

import difflib
import keyword
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._ids import fnv1a64
from ._manifest import read_capped
from .errors import ManifestError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class Scalar:
    """A fixed-width number or bool; ``kind`` is "unsigned", "signed", "float" or "bool"."""

    name: str
    kind: str
    size: int

    @property
    def bounds(self) -> tuple[int, int]:
        """The integer range of an unsigned or signed scalar."""
        bits = 8 * self.size
        if self.kind == "signed":
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1


@dataclass(frozen=True)
class View:
    """StringView (borrowed UTF-8) or Buffer (owned bytes), passed by value."""

    name: str

    @property
    def owned(self) -> bool:
        return self.name == "Buffer"


@dataclass(frozen=True)
class Pointer:
    """``Ptr``: a raw address, meaningful in one process only."""

    name: str = "Ptr"


@dataclass(frozen=True)
class Enum:
    """An integer enum stored as its ``repr``; a ``bitflag`` enum is a set of flags."""

    name: str
    repr: Scalar
    bitflag: bool
    variants: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Field:
    """A struct field or a function parameter."""

    name: str
    type: Type


@dataclass(frozen=True)
class Struct:
    """A ``[[types]]`` entry: a C struct of its fields in order, natural alignment."""

    name: str
    fields: tuple[Field, ...]


Type = Scalar | View | Pointer | Enum | Struct


@dataclass(frozen=True)
class Function:
    """A contract function; ``index`` is its slot in the native dispatch table."""

    name: str
    index: int
    params: tuple[Field, ...]
    returns: Type | None


@dataclass(frozen=True)
class Contract:
    """A guest (or host) contract; its id depends on the name and the major only."""

    name: str
    version: tuple[int, int, int]
    functions: tuple[Function, ...]
    host: bool = False

    @property
    def major(self) -> int:
        return self.version[0]

    @property
    def id(self) -> int:
        prefix = "host_contract" if self.host else "guest_contract"
        return fnv1a64(f"{prefix}:{self.name}@{self.major}")

    def function(self, name: str) -> Function:
        for function in self.functions:
            if function.name == name:
                return function
        raise KeyError(name)


@dataclass(frozen=True)
class Api:
    """A parsed api.toml. ``structs`` are in dependency order (a struct after what it contains)."""

    source: str
    structs: dict[str, Struct]
    enums: dict[str, Enum]
    contracts: tuple[Contract, ...]

    @property
    def guest_contracts(self) -> tuple[Contract, ...]:
        return tuple(c for c in self.contracts if not c.host)


SCALARS: dict[str, Scalar] = {
    s.name: s
    for s in (
        Scalar("u8", "unsigned", 1),
        Scalar("u16", "unsigned", 2),
        Scalar("u32", "unsigned", 4),
        Scalar("u64", "unsigned", 8),
        Scalar("i8", "signed", 1),
        Scalar("i16", "signed", 2),
        Scalar("i32", "signed", 4),
        Scalar("i64", "signed", 8),
        Scalar("f32", "float", 4),
        Scalar("f64", "float", 8),
        Scalar("bool", "bool", 1),
    )
}
BUILTINS: dict[str, Type] = {
    **SCALARS,
    "StringView": View("StringView"),
    "Buffer": View("Buffer"),
    "Ptr": Pointer(),
    "ptr": Pointer(),
}
_VOID = ("void", "Void")
_ENUM_REPRS = ("u8", "u16", "u32", "u64")
_GUEST_TABLES = ("contract", "plugin_contract", "guest_contract")
_TOP_KEYS = ("types", "enum", *_GUEST_TABLES, "host_contract", "langs")
_META = ("docs", "langs")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTRACT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_VERSION = re.compile(r"([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?")
# Names that would not compile in the C declarations we hand to cffi and the C
# compiler, or could not be a Python attribute (polyplug reserves both too).
_C_WORDS = """
    auto break case char const continue default do double else enum extern float for goto if inline int
    long register restrict return short signed sizeof static struct switch typedef union unsigned void
    volatile while _Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn _Static_assert
    _Thread_local bool true false
"""
_RESERVED = frozenset(_C_WORDS.split()) | frozenset(keyword.kwlist)
# Variant expressions: literals, names, the operators 0.1.3 accepts.
_TOKEN = re.compile(r"\s*(?:(0x[0-9A-Fa-f]+|0b[01]+|[0-9]+)|([A-Za-z_][A-Za-z0-9_]*)|(<<|[|~()]))")


def parse_api(path: str | os.PathLike[str]) -> Api:
    """Reads and validates an api.toml (a directory means its ``api.toml``).

    Raises:
        ManifestError: unreadable or invalid TOML, an unknown key or type, a
            duplicate name, a struct that contains itself, a bad variant value.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "api.toml"
    try:
        text = read_capped(path).decode("utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such api.toml; pass the path of the contract's IDL") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot read the api.toml: {exc}") from exc
    return parse_api_text(text, str(path))


def parse_api_text(text: str, source: str = "<api.toml>") -> Api:
    """Parses api.toml text; ``source`` names it in error messages."""
    try:
        raw = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError is a ValueError; nesting recurses
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ManifestError(f"{source}: not valid TOML: {reason}") from None
    return _Parser(source).parse(raw)


class _Parser:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> ManifestError:
        return ManifestError(f"{self.source}: {where}: {message}")

    # ---- generic shape checks -------------------------------------------------

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, not {_kind(value)}")
        return value

    def tables(self, raw: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
        value = raw.get(key, [])
        if not isinstance(value, list):
            raise self.fail(where, f"`{key}` must be an array of tables, not {_kind(value)}")
        return [self.table(item, f"{where} {key}[{i}]") for i, item in enumerate(value)]

    def keys(self, raw: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in raw:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean `{close[0]}`?" if close else f" (known: {', '.join(allowed)})"
                raise self.fail(where, f"unknown key `{key}`{hint}")
        if "docs" in raw and not isinstance(raw["docs"], str):
            raise self.fail(where, "`docs` must be a string")
        if "langs" in raw and not isinstance(raw["langs"], dict):
            raise self.fail(where, "`langs` must be a table")

    def name(self, raw: dict[str, Any], where: str, pattern: re.Pattern[str] = _IDENTIFIER) -> str:
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise self.fail(where, "`name` is required and must be a non-empty string")
        if not pattern.fullmatch(name):
            raise self.fail(where, f"name {name!r} is not a valid identifier")
        if pattern is _IDENTIFIER and name in _RESERVED:
            raise self.fail(where, f"name {name!r} is a C or Python keyword; rename it")
        return name

    # ---- the document -------------------------------------------------------------

    def parse(self, raw: dict[str, Any]) -> Api:
        self.keys(raw, _TOP_KEYS, "top level")
        enums = self.enums(self.tables(raw, "enum", "[[enum]]"))
        declared = self.struct_tables(self.tables(raw, "types", "[[types]]"), enums)
        structs = self.resolve_structs(declared, enums)
        contracts = []
        for key in (*_GUEST_TABLES, "host_contract"):
            for item in self.tables(raw, key, f"[[{key}]]"):
                contracts.append(self.contract(item, key, enums, structs))
        seen: dict[tuple[bool, str], str] = {}
        for contract, key in contracts:
            ident = (contract.host, contract.name)
            if ident in seen:
                raise self.fail(f"[[{key}]] {contract.name!r}", f"declared twice (also in [[{seen[ident]}]])")
            seen[ident] = key
        return Api(self.source, structs, enums, tuple(contract for contract, _ in contracts))

    # ---- enums ----------------------------------------------------------------------

    def enums(self, items: list[dict[str, Any]]) -> dict[str, Enum]:
        enums: dict[str, Enum] = {}
        for i, raw in enumerate(items):
            where = f"[[enum]] #{i}"
            name = self.name(raw, where)
            where = f"[[enum]] {name!r}"
            self.keys(raw, ("name", "repr", "bitflag", "variants", *_META), where)
            if name in BUILTINS:
                raise self.fail(where, f"{name!r} is a built-in type name")
            if name in enums:
                raise self.fail(where, "declared twice")
            repr_name = raw.get("repr")
            if repr_name not in _ENUM_REPRS:
                raise self.fail(where, f"invalid repr {repr_name!r}: must be u8 | u16 | u32 | u64")
            bitflag = raw.get("bitflag", False)
            if not isinstance(bitflag, bool):
                raise self.fail(where, "`bitflag` must be true or false")
            repr_type = SCALARS[repr_name]
            values: dict[str, int] = {}
            for j, variant in enumerate(self.tables(raw, "variants", where)):
                vwhere = f"{where} variant #{j}"
                vname = self.name(variant, vwhere)
                vwhere = f"{where} variant {vname!r}"
                self.keys(variant, ("name", "value", *_META), vwhere)
                if vname in values:
                    raise self.fail(vwhere, "declared twice")
                values[vname] = self.variant_value(variant.get("value"), values, repr_type, vwhere)
            enums[name] = Enum(name, repr_type, bitflag, tuple(values.items()))
        return enums

    def variant_value(self, value: Any, earlier: dict[str, int], repr_type: Scalar, where: str) -> int:
        top = repr_type.bounds[1]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.fail(where, f"`value` is required: an integer expression string, not {_kind(value)}")
        if isinstance(value, int):
            result = value
        else:
            try:
                result = _Expression(value, earlier, top).evaluate()
            except ValueError as exc:
                raise self.fail(where, f"value {value!r}: {exc}") from None
        if not 0 <= result <= top:
            raise self.fail(
                where, f"value {value!r} = {result} does not fit repr {repr_type.name} (0..{top})"
            )
        return result

    # ---- structs --------------------------------------------------------------------

    def struct_tables(
        self, items: list[dict[str, Any]], enums: dict[str, Enum]
    ) -> dict[str, list[tuple[str, str, str]]]:
        declared: dict[str, list[tuple[str, str, str]]] = {}
        for i, raw in enumerate(items):
            name = self.name(raw, f"[[types]] #{i}")
            where = f"[[types]] {name!r}"
            self.keys(raw, ("name", "fields", *_META), where)
            if name in BUILTINS:
                raise self.fail(where, f"{name!r} is a built-in type name")
            if name in enums:
                raise self.fail(where, f"{name!r} is also declared as an [[enum]]")
            if name in declared:
                raise self.fail(where, "declared twice")
            fields: list[tuple[str, str, str]] = []
            for j, field in enumerate(self.tables(raw, "fields", where)):
                fname = self.name(field, f"{where} field #{j}")
                fwhere = f"{where} field {fname!r}"
                self.keys(field, ("name", "type", *_META), fwhere)
                if any(fname == other for other, _, _ in fields):
                    raise self.fail(fwhere, "declared twice")
                fields.append((fname, self.type_name(field.get("type"), fwhere), fwhere))
            if not fields:
                raise self.fail(where, "has no fields: a C struct needs at least one")
            declared[name] = fields
        return declared

    def resolve_structs(
        self, declared: dict[str, list[tuple[str, str, str]]], enums: dict[str, Enum]
    ) -> dict[str, Struct]:
        """Builds each struct after the structs it contains; a struct reached again is a cycle."""
        done: dict[str, Struct] = {}
        path: list[str] = []

        def build(name: str) -> Struct:
            if name in done:
                return done[name]
            if name in path:
                cycle = " -> ".join([*path[path.index(name) :], name])
                raise self.fail(
                    f"[[types]] {name!r}",
                    f"contains itself by value ({cycle}); a struct cannot hold itself (use a Ptr)",
                )
            path.append(name)
            fields = []
            for fname, tname, fwhere in declared[name]:
                ftype = self.lookup(tname, enums, declared, fwhere, build)
                fields.append(Field(fname, ftype))
            path.pop()
            done[name] = Struct(name, tuple(fields))
            return done[name]

        for name in declared:
            build(name)
        return done

    def lookup(
        self,
        name: str,
        enums: dict[str, Enum],
        structs: dict[str, Any],
        where: str,
        build: Callable[[str], Struct] | None = None,
    ) -> Type:
        if name in BUILTINS:
            return BUILTINS[name]
        if name in enums:
            return enums[name]
        if name in structs:
            found: Type = build(name) if build is not None else structs[name]
            return found
        if name in _VOID:
            raise self.fail(where, f"{name!r} is only valid as a function return (it means no return)")
        if name.startswith("Array"):
            raise self.fail(where, f"{name!r}: Array<T> is not part of the v1 IDL (polyplugc 0.1.3)")
        known = [*BUILTINS, *enums, *structs]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise self.fail(where, f"unknown type {name!r}{hint}")

    def type_name(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"`type` is required and must be a type name, not {_kind(value)}")
        return value

    # ---- contracts ----------------------------------------------------------------

    def contract(
        self, raw: dict[str, Any], key: str, enums: dict[str, Enum], structs: dict[str, Struct]
    ) -> tuple[Contract, str]:
        host = key == "host_contract"
        name = self.name(raw, f"[[{key}]]", _CONTRACT_NAME)
        where = f"[[{key}]] {name!r}"
        self.keys(raw, ("name", "version", "functions", *(("singleton",) if host else ()), *_META), where)
        if host and not name.startswith("host."):
            raise self.fail(where, "a host contract's name must start with `host.`")
        version = self.version(raw.get("version"), where)
        if host and not isinstance(raw.get("singleton", False), bool):
            raise self.fail(where, "`singleton` must be true or false")
        functions: list[Function] = []
        for index, item in enumerate(self.tables(raw, "functions", where)):
            fname = self.name(item, f"{where} function #{index}")
            fwhere = f"{where} function {fname!r}"
            self.keys(item, ("name", "params", "return", *_META), fwhere)
            if any(f.name == fname for f in functions):
                raise self.fail(fwhere, "declared twice (function names are unique within a contract)")
            params: list[Field] = []
            for j, param in enumerate(self.tables(item, "params", fwhere)):
                pname = self.name(param, f"{fwhere} param #{j}")
                pwhere = f"{fwhere} param {pname!r}"
                self.keys(param, ("name", "type", *_META), pwhere)
                if any(p.name == pname for p in params):
                    raise self.fail(pwhere, "declared twice")
                params.append(
                    Field(
                        pname, self.lookup(self.type_name(param.get("type"), pwhere), enums, structs, pwhere)
                    )
                )
            functions.append(
                Function(fname, index, tuple(params), self.returns(item, enums, structs, fwhere))
            )
        return Contract(name, version, tuple(functions), host), key

    def returns(
        self, raw: dict[str, Any], enums: dict[str, Enum], structs: dict[str, Struct], where: str
    ) -> Type | None:
        value = raw.get("return")
        if value is None:
            return None
        where = f"{where} return"
        if isinstance(value, dict):
            self.keys(value, ("type", *_META), where)
            value = value.get("type")
        name = self.type_name(value, where)
        return None if name in _VOID else self.lookup(name, enums, structs, where)

    def version(self, value: Any, where: str) -> tuple[int, int, int]:
        if not isinstance(value, str):
            raise self.fail(where, f'`version` is required: a string such as "1.0.0", not {_kind(value)}')
        match = _VERSION.fullmatch(value)
        if not match or not value.isascii():
            raise self.fail(where, f"version {value!r} is not major[.minor[.patch]]")
        major, minor, patch = (int(part or 0) for part in match.groups())
        if major >= 1 << 32 or minor > 65535 or patch > 65535:
            raise self.fail(where, f"version {value!r}: major must fit a u32, minor and patch 0..65535")
        return major, minor, patch


class _Expression:
    """``expr := shift ('|' shift)*; shift := unary ('<<' unary)*; unary := '~' unary | atom;
    atom := number | earlier variant | '(' expr ')'``, over non-negative integers of the repr."""

    def __init__(self, text: str, names: dict[str, int], top: int):
        self.tokens = self.tokenize(text)
        self.pos = 0
        self.names = names
        self.top = top

    @staticmethod
    def tokenize(text: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                if not text[pos:].strip():
                    break
                raise ValueError(f"unexpected {text[pos:].lstrip()[0]!r} at position {pos}")
            number, name, op = match.groups()
            tokens.append(("number", number) if number else ("name", name) if name else ("op", op))
            pos = match.end()
        return tokens

    def evaluate(self) -> int:
        if not self.tokens:
            raise ValueError("empty expression")
        value = self.expr()
        if self.pos != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.pos][1]!r} after a complete expression")
        return value

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def expr(self) -> int:
        value = self.shift()
        while self.peek() == "|":
            self.pos += 1
            value |= self.shift()
        return value

    def shift(self) -> int:
        value = self.unary()
        while self.peek() == "<<":
            self.pos += 1
            amount = self.unary()
            if amount >= self.top.bit_length() or value << amount > self.top:
                raise ValueError(f"{value} << {amount} overflows the repr (at most {self.top})")
            value <<= amount
        return value

    def unary(self) -> int:
        if self.peek() == "~":
            self.pos += 1
            return self.top ^ self.unary()
        return self.atom()

    def atom(self) -> int:
        if self.pos >= len(self.tokens):
            raise ValueError("expected a number, a variant name or '(' at the end")
        kind, text = self.tokens[self.pos]
        self.pos += 1
        if kind == "number":
            base = 16 if text.startswith("0x") else 2 if text.startswith("0b") else 10
            value = int(text[2:] if base != 10 else text, base)
            if value > self.top:
                raise ValueError(f"literal {text} does not fit the repr (at most {self.top})")
            return value
        if kind == "name":
            if text not in self.names:
                raise ValueError(f"{text!r} is not a variant declared before this one (forward reference?)")
            return self.names[text]
        if text == "(":
            value = self.expr()
            if self.peek() != ")":
                raise ValueError("missing ')'")
            self.pos += 1
            return value
        raise ValueError(f"unexpected {text!r}")


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
