"""The fixtures' own C declarations: their structs as the C compiler lays them out, not as we do.

A fixture's C source declares its IDL types (``typedef struct Point {...} Point;``,
``typedef uint8_t Color;``) and one struct per function of two or more
parameters (``typedef struct DivideArgs { int32_t a; int32_t b; } DivideArgs;``,
found by its field names). ``real_layout`` compiles the source itself into a
program that prints every size, alignment and offset; ``fixture_ffi`` hands the
same declarations to cffi for the in-process reference of the property tests.
Nothing here uses ``polyplug_isolated._layout``: it is what that module is held
against.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import cffi

from polyplug_isolated._fixtures import FIXTURES_DIR
from polyplug_isolated._idl import Api, Function, Pointer, Scalar, Type

# C's spelling of the IDL scalars (ABI.md), written out here rather than taken from _layout.
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

WORKER_DIR = FIXTURES_DIR.parent / "worker"
ABI_HEADER = WORKER_DIR / "polyplug_abi.h"
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_STRUCT = re.compile(r"typedef\s+struct\s+\w*\s*\{(?P<body>[^{}]*)\}\s*(?P<name>\w+)\s*;")
_SCALAR_TYPEDEF = re.compile(r"typedef\s+(?:u?int(?:8|16|32|64)_t|_Bool|bool)\s+(?P<name>\w+)\s*;")


def c_source(fixture: str) -> Path:
    return FIXTURES_DIR / fixture / f"{fixture}.c"


def c_structs(source: str) -> dict[str, list[str]]:
    """Every ``typedef struct ... Name;`` of ``source``: its field names in order."""
    found = {}
    for match in _STRUCT.finditer(_COMMENT.sub(" ", source)):
        found[match["name"]] = [
            _declared_name(declarator)
            for declaration in match["body"].split(";")
            if declaration.strip()
            for declarator in declaration.split(",")
        ]
    return found


def _declared_name(declaration: str) -> str:
    """``uint8_t data[]`` -> ``data``; ``const uint8_t *ptr`` -> ``ptr``."""
    return re.findall(r"(\w+)\s*(?:\[[^\]]*\])?\s*$", declaration.strip())[0]


def c_spelling(t: Type) -> str:
    """How the fixtures' C spells a value of IDL type ``t`` (their typedefs carry the IDL names)."""
    if isinstance(t, Scalar):
        return C_SCALARS[t.name]
    if isinstance(t, Pointer):
        return "void *"
    return t.name


def args_struct(structs: dict[str, list[str]], function: Function) -> str:
    """The fixture's C struct of ``function``'s parameters (two or more): same field names, in order."""
    wanted = [p.name for p in function.params]
    candidates = [name for name, fields in structs.items() if fields == wanted]
    camel = "".join(part.title() for part in function.name.split("_"))
    for preferred in (f"{camel}Args", camel):
        if preferred in candidates:
            return preferred
    if not candidates:
        raise AssertionError(
            f"the fixture's C declares no struct with the fields {wanted} of {function.name}()"
        )
    return candidates[0]


def real_layout(fixture: str, api: Api, tmp_path: Path) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Sizes, alignments and offsets of the fixture's own C types, keyed like ``Layout``'s records.

    Keys: ("struct", tag) -> (size, align), ("field", tag, name) -> (offset,),
    ("type", name) -> (size, align), where tag is the IDL struct's name or, for
    argument records, ``pp_args_<contract>_<function>``.
    """
    from polyplug_isolated._layout import args_tag  # the key only: the layout is the compiler's

    source = c_source(fixture)
    structs = c_structs(source.read_text())
    records: dict[str, tuple[str, list[str]]] = {}
    for struct in api.structs.values():
        records[struct.name] = (struct.name, [f.name for f in struct.fields])
    for ci, contract in enumerate(api.contracts):
        for function in contract.functions:
            if len(function.params) >= 2:
                records[args_tag(ci, function)] = (
                    args_struct(structs, function),
                    [p.name for p in function.params],
                )
    lines = []
    for tag, (c_name, fields) in records.items():
        lines.append(f'printf("struct {tag} %zu %zu\\n", sizeof({c_name}), _Alignof({c_name}));')
        lines += [f'printf("field {tag} {f} %zu\\n", offsetof({c_name}, {f}));' for f in fields]
    for name in [*api.enums, "StringView", "Buffer"]:
        lines.append(f'printf("type {name} %zu %zu\\n", sizeof({name}), _Alignof({name}));')
    program_source = tmp_path / f"real_layout_{fixture}.c"
    program_source.write_text(
        f'#include <stddef.h>\n#include <stdio.h>\n#include "{source}"\n'
        "int main(void)\n{\n    " + "\n    ".join(lines) + "\n    return 0;\n}\n"
    )
    program = tmp_path / f"real_layout_{fixture}"
    cc = shlex.split(os.environ.get("CC", "cc"))
    subprocess.run(
        [*cc, "-std=c11", "-w", f"-I{WORKER_DIR}", "-o", str(program), str(program_source)],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    found: dict[tuple[str, ...], tuple[int, ...]] = {}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "field":
            found[kind, rest[0], rest[1]] = (int(rest[2]),)
        else:
            found[kind, rest[0]] = (int(rest[1]), int(rest[2]))
    return found


def fixture_ffi(fixture: str) -> tuple[cffi.FFI, dict[str, list[str]]]:
    """A cffi FFI of the fixture's own type declarations (and polyplug_abi.h's views), and its structs."""
    header = _COMMENT.sub(" ", ABI_HEADER.read_text())
    source = _COMMENT.sub(" ", c_source(fixture).read_text())
    declarations = [m[0] for m in _STRUCT.finditer(header) if m["name"] in ("StringView", "Buffer")]
    declarations += [m[0] for m in _SCALAR_TYPEDEF.finditer(source)]
    declarations += [m[0] for m in _STRUCT.finditer(source)]
    ffi = cffi.FFI()
    ffi.cdef("\n".join(declarations))
    return ffi, c_structs(source)
