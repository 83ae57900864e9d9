"""Layouts are the C compiler's: every struct of every fixture IDL against the fixture's own C.

For each fixture with an api.toml, its C source (the structs the plugin really
reads) is compiled into a program that prints sizeof, _Alignof and offsetof of
every IDL struct, every argument record (the fixture's struct of the same
fields), every enum and both views; each number must equal what Layout
reports (tests/_fixture_c.py). Randomly generated IDLs (nesting, padding,
every type), which have no C of their own, check that cffi lays out the
declarations _layout writes as the compiler does.
"""

from __future__ import annotations

import os
import random
import shlex
import struct
import subprocess
from pathlib import Path

import pytest
from _fixture_c import real_layout

from polyplug_isolated import parse_api
from polyplug_isolated._fixtures import FIXTURES_DIR
from polyplug_isolated._idl import BUILTINS, SCALARS, Api, View, parse_api_text
from polyplug_isolated._layout import Layout

API_FILES = sorted(FIXTURES_DIR.glob("*/api.toml"))


def compiled_layout(layout: Layout, tmp_path: Path) -> dict[tuple[str, ...], tuple[int, ...]]:
    """What the C compiler says about every declaration of ``layout``."""
    lines = []
    for tag, record in layout.records().items():
        lines.append(f'printf("struct {tag} %zu %zu\\n", sizeof(struct {tag}), _Alignof(struct {tag}));')
        for name, _, _ in record.fields:
            lines.append(f'printf("field {tag} {name} %zu\\n", offsetof(struct {tag}, {name}));')
    for name in [*layout.api.enums, "StringView", "Buffer"]:
        lines.append(f'printf("type {name} %zu %zu\\n", sizeof({name}), _Alignof({name}));')
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stddef.h>\n#include <stdint.h>\n#include <stdio.h>\n"
        + layout.source
        + "int main(void)\n{\n    "
        + "\n    ".join(lines)
        + "\n    return 0;\n}\n"
    )
    program = tmp_path / "layout"
    cc = shlex.split(os.environ.get("CC", "cc"))
    subprocess.run([*cc, "-std=c11", "-Wall", "-Werror", "-o", str(program), str(source)], check=True)
    out = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        *key, last = line.split()
        if key[0] == "field":
            found[tuple(key)] = (int(last),)
        else:
            found[tuple(key[:-1])] = (int(key[-1]), int(last))
    return found


def reported_layout(layout: Layout) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The same numbers as Layout reports them."""
    found = {}
    for tag, record in layout.records().items():
        found["struct", tag] = (record.size, record.align)
        for name, offset, _ in record.fields:
            found["field", tag, name] = (offset,)
    for enum_type in layout.api.enums.values():
        found["type", enum_type.name] = (layout.of(enum_type).size, layout.of(enum_type).align)
    for view in ("StringView", "Buffer"):
        found["type", view] = (layout.of(BUILTINS[view]).size, layout.of(BUILTINS[view]).align)
    return found


def check_against_compiler(api: Api, tmp_path: Path) -> Layout:
    layout = Layout(api)
    assert reported_layout(layout) == compiled_layout(layout, tmp_path)
    for record in layout.records().values():
        assert struct.calcsize("=" + record.format) == record.size
    return layout


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.parent.name)
def test_fixture_layouts_match_the_fixtures_own_c(path: Path, tmp_path: Path) -> None:
    api = parse_api(path)
    real = real_layout(path.parent.name, api, tmp_path)
    assert reported_layout(Layout(api)) == real
    assert any(key[0] == "field" for key in real) or not api.structs  # it really compared structs


def test_kitchen_sink_layouts(tmp_path: Path) -> None:
    layout = check_against_compiler(parse_api(FIXTURES_DIR / "kitchen_sink"), tmp_path)
    api = layout.api
    kitchen = api.contracts[0]
    record = layout.of(api.structs["Record"])
    assert (record.size, record.align) == (160, 8)
    assert record.views == ((32, View("StringView")), (112, View("StringView")), (136, View("Buffer")))
    # ABI.md: mixed(a: u8, b: f64, c: bool, d: u16, e: PixelFormat /*u8*/) -> a@0 b@8 c@16 d@18 e@20, 24
    mixed = layout.args(kitchen, kitchen.function("mixed"))
    assert [(name, offset) for name, offset, _ in mixed.fields] == [
        ("a", 0), ("b", 8), ("c", 16), ("d", 18), ("e", 20)
    ]  # fmt: skip
    assert (mixed.size, mixed.format) == (24, "B7xd?1xHB3x")
    # One parameter: args points at the value itself; none: args is NULL.
    assert layout.args(kitchen, kitchen.function("echo_record")) == record
    assert layout.args(kitchen, kitchen.function("echo_u8")).format == "B"
    assert layout.args(kitchen, kitchen.function("magic")) is None


def test_abi_md_examples(tmp_path: Path) -> None:
    api = parse_api_text(
        """
        [[types]]
        name = "Named"
        fields = [
            { name = "s", type = "StringView" }, { name = "n", type = "u64" }, { name = "b", type = "u8" },
        ]
        [[types]]
        name = "Point"
        fields = [{ name = "x", type = "f32" }, { name = "y", type = "f32" }]
        [[contract]]
        name = "shapes"
        version = "1"
        [[contract.functions]]
        name = "add_primitive"
        params = [{ name = "a", type = "u32" }, { name = "b", type = "u32" }]
        [[contract.functions]]
        name = "log"
        params = [{ name = "level", type = "u32" }, { name = "msg", type = "StringView" }]
        [[contract.functions]]
        name = "named"
        params = [{ name = "n", type = "Named" }, { name = "p", type = "Point" }]
        """
    )
    layout = check_against_compiler(api, tmp_path)
    contract = api.contracts[0]

    def shape(name: str) -> tuple[int, list[tuple[str, int]]]:
        args = layout.args(contract, contract.function(name))
        return args.size, [(field, offset) for field, offset, _ in args.fields]

    assert shape("add_primitive") == (8, [("a", 0), ("b", 4)])
    assert shape("log") == (24, [("level", 0), ("msg", 8)])
    assert shape("named") == (40, [("n", 0), ("p", 32)])
    assert layout.of(api.structs["Named"]).size == 32


def random_api(seed: int) -> str:
    """An api.toml of random structs (each may nest earlier ones) and functions over them."""
    rng = random.Random(seed)
    lines = [
        '[[enum]]\nname = "E8"\nrepr = "u8"\nvariants = [{ name = "A", value = "1" }]',
        '[[enum]]\nname = "E16"\nrepr = "u16"\nbitflag = true',
        '[[enum]]\nname = "E64"\nrepr = "u64"',
    ]
    leaves = [*SCALARS, "StringView", "Buffer", "Ptr", "E8", "E16", "E64"]
    structs: list[str] = []
    for i in range(40):
        pool = leaves + structs
        fields = ", ".join(
            f'{{ name = "f{j}", type = "{rng.choice(pool)}" }}' for j in range(rng.randint(1, 7))
        )
        lines.append(f'[[types]]\nname = "S{i}"\nfields = [{fields}]')
        structs.append(f"S{i}")
    lines.append('[[contract]]\nname = "random.api"\nversion = "1"')
    for i in range(30):
        pool = leaves + structs
        params = ", ".join(
            f'{{ name = "p{j}", type = "{rng.choice(pool)}" }}' for j in range(rng.randint(0, 6))
        )
        lines.append(
            f'[[contract.functions]]\nname = "fn{i}"\nparams = [{params}]\nreturn = "{rng.choice(pool)}"'
        )
    return "\n".join(lines)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_layouts_match_the_c_compiler(seed: int, tmp_path: Path) -> None:
    layout = check_against_compiler(parse_api_text(random_api(seed), f"random-{seed}"), tmp_path)
    # Views are found at any depth: each one's offset really is a StringView/Buffer field.
    for record in layout.records().values():
        for offset, view in record.views:
            assert offset % 8 == 0 and offset + layout.of(BUILTINS[view.name]).size <= record.size
