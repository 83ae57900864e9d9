"""The api.toml parser: what it accepts, the model it builds, and how it refuses.

Pure unit tests: no process is started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from polyplug_isolated import ManifestError, guest_contract_id, parse_api
from polyplug_isolated._fixtures import FIXTURES_DIR
from polyplug_isolated._idl import SCALARS, Enum, Pointer, Struct, View, parse_api_text

API_FILES = sorted(FIXTURES_DIR.glob("*/api.toml"))


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.parent.name)
def test_every_fixture_api_parses(path: Path) -> None:
    api = parse_api(path)
    assert api.contracts
    for contract in api.contracts:
        assert [f.index for f in contract.functions] == list(range(len(contract.functions)))


def test_adder_api() -> None:
    api = parse_api(FIXTURES_DIR / "adder")  # a directory means its api.toml
    (contract,) = api.contracts
    assert (contract.name, contract.version, contract.major) == ("test.add", (1, 0, 0), 1)
    assert contract.id == guest_contract_id("test.add", 1) == 0x40244DF59FCBECB6
    add, add_primitive, version, reset = contract.functions
    assert add.params[0].type == Struct("AddArgs", api.structs["AddArgs"].fields)
    assert [(p.name, p.type) for p in add_primitive.params] == [("a", SCALARS["u32"]), ("b", SCALARS["u32"])]
    assert add_primitive.returns == SCALARS["u32"]
    assert (version.params, version.returns) == ((), View("StringView"))
    assert (reset.params, reset.returns) == ((), None)


def test_kitchen_sink_api() -> None:
    api = parse_api(FIXTURES_DIR / "kitchen_sink" / "api.toml")
    assert {name: dict(e.variants) for name, e in api.enums.items()} == {
        "Color": {"Red": 0, "Green": 1, "Blue": 2, "White": 255},
        "Level": {"Low": 1, "High": 0x8000},
        "Access": {"Read": 1, "Write": 2, "Exec": 4, "ReadWrite": 3, "All": 7},
        "Wide": {"Bottom": 1, "Top": 1 << 63, "Every": (1 << 64) - 1},
    }
    assert api.enums["Access"].bitflag and not api.enums["Color"].bitflag
    assert api.enums["Wide"].repr == SCALARS["u64"]
    # Record names Tagged before Tagged is declared; structs come out members first.
    order = list(api.structs)
    assert order.index("Tagged") < order.index("Record") and order.index("Point") < order.index("Tagged")
    record = api.structs["Record"]
    assert [f.name for f in record.fields] == [
        "flag", "id", "color", "access", "tagged", "level", "scalars", "name", "wide", "data"
    ]  # fmt: skip
    assert record.fields[4].type.fields[1].type == View("StringView")
    kitchen, counter = api.contracts
    assert (len(kitchen.functions), len(counter.functions)) == (28, 5)
    assert kitchen.function("magic").returns == SCALARS["u64"]  # the expanded return table


def test_contract_spellings_and_host_contracts() -> None:
    api = parse_api_text(
        """
        [[plugin_contract]]
        name = "a.one"
        version = "2"
        [[guest_contract]]
        name = "a.two"
        version = "1.2"
        [[guest_contract.functions]]
        name = "f"
        params = [{ name = "p", type = "ptr" }]
        return = "Void"
        [[host_contract]]
        name = "host.logger"
        version = "1.0.0"
        singleton = true
        """
    )
    one, two, host = api.contracts
    assert (one.name, one.version, two.version) == ("a.one", (2, 0, 0), (1, 2, 0))
    assert two.functions[0].params[0].type == Pointer() and two.functions[0].returns is None
    assert host.host and api.guest_contracts == (one, two)
    assert host.id == 0xF53EB5F2845853BB  # ABI.md: host_contract:host.logger@1


def test_variant_expressions() -> None:
    api = parse_api_text(
        """
        [[enum]]
        name = "E"
        repr = "u8"
        bitflag = true
        variants = [
            { name = "A", value = "0b1" },
            { name = "B", value = "A << 1" },
            { name = "C", value = "( A | B ) << 2" },
            { name = "D", value = "~A" },
            { name = "F", value = "~(A | B | C)" },
            { name = "G", value = 9 },
            { name = "H", value = "0xf0 | ~~1" },
        ]
        """
    )
    assert dict(api.enums["E"].variants) == {"A": 1, "B": 2, "C": 12, "D": 254, "F": 240, "G": 9, "H": 241}
    expected = (("A", 1), ("B", 2), ("C", 12), ("D", 254), ("F", 240), ("G", 9), ("H", 241))
    assert api.enums["E"] == Enum("E", SCALARS["u8"], True, expected)  # in declaration order


ENUM = '[[enum]]\nname = "E"\nrepr = "u8"\n'
FN = '[[contract]]\nname = "c"\nversion = "1"\n[[contract.functions]]\nname = "f"\n'


def struct(name: str, *fields: str) -> str:
    body = ", ".join(f'{{ name = "{n}", type = "{t}" }}' for n, t in (f.split(":") for f in fields))
    return f'[[types]]\nname = "{name}"\nfields = [{body}]\n'


def variants(*pairs: str) -> str:
    body = ", ".join(f'{{ name = "{n}", value = {v} }}' for n, v in (p.split("=", 1) for p in pairs))
    return f"{ENUM}variants = [{body}]\n"


# (snippet, fragments the message must contain): every message names the file, the item, the field.
BAD_APIS = [
    ("this is = not toml", ["not valid TOML"]),
    ("wat = 1", ["top level", "unknown key `wat`"]),
    ("types = 3", ["`types` must be an array of tables"]),
    (FN + 'returns = "u32"', ["'c' function 'f'", "unknown key `returns`", "did you mean `return`?"]),
    (struct("T", "x:u33"), ["[[types]] 'T' field 'x'", "unknown type 'u33'", "did you mean 'u32'?"]),
    (struct("T", "x:u8") + struct("T", "y:u8"), ["[[types]] 'T'", "declared twice"]),
    (struct("T", "x:u8", "x:u8"), ["'T' field 'x'", "twice"]),
    (struct("u8", "x:u8"), ["built-in type name"]),
    (struct("E", "x:u8") + ENUM, ["also declared as an [[enum]]"]),
    ('[[types]]\nname = "T"\nfields = []', ["'T'", "has no fields"]),
    (struct("T", "me:T"), ["contains itself", "T -> T"]),
    (struct("A", "b:B") + struct("B", "c:C") + struct("C", "a:A"), ["contains itself", "A -> B -> C -> A"]),
    (struct("T", "x:Array<u8>"), ["Array<T> is not part of the v1 IDL"]),
    (struct("T", "x:void"), ["only valid as a function return"]),
    (struct("T", "class:u8"), ["'class' is a C or Python keyword"]),
    (struct("T", "1x:u8"), ["'1x' is not a valid identifier"]),
    ('[[enum]]\nname = "E"\nrepr = "i32"', ["[[enum]] 'E'", "invalid repr 'i32'", "u8 | u16 | u32 | u64"]),
    (ENUM + 'bitflag = "yes"', ["`bitflag` must be true or false"]),
    (variants('A="1 <<"'), ["'E' variant 'A'", "'1 <<'", "at the end"]),
    (variants('A="B"', 'B="1"'), ["'E' variant 'A'", "forward reference"]),
    (variants('A="1 << 8"'), ["overflows"]),
    (variants('A="256"'), ["does not fit"]),
    (variants("A=-1"), ["does not fit repr u8"]),
    (variants('A="1 + 1"'), ["unexpected '+'"]),
    (variants('A="(1"'), ["missing ')'"]),
    (variants('A="1 2"'), ["unexpected '2' after a complete expression"]),
    (variants('A=""'), ["empty expression"]),
    (variants('A="__import__"'), ["not a variant declared before"]),
    (variants("A=\"__import__('os')\""), ["unexpected"]),
    (variants('A="1"', 'A="2"'), ["variant 'A'", "twice"]),
    (f'{ENUM}variants = [{{ name = "A" }}]', ["`value` is required"]),
    ('[[contract]]\nname = "c"', ["[[contract]] 'c'", "`version` is required"]),
    ('[[contract]]\nname = "c"\nversion = "1.x"', ["version '1.x' is not major[.minor[.patch]]"]),
    ('[[contract]]\nname = "c"\nversion = "1.70000"', ["minor and patch 0..65535"]),
    ('[[contract]]\nname = "bad name"\nversion = "1"', ["'bad name' is not a valid identifier"]),
    (
        '[[contract]]\nname = "c"\nversion = "1"\n[[guest_contract]]\nname = "c"\nversion = "1"',
        ["declared twice"],
    ),
    ('[[host_contract]]\nname = "logger"\nversion = "1"', ["must start with `host.`"]),
    (FN + '[[contract.functions]]\nname = "f"', ["function 'f'", "declared twice"]),
    (FN + 'params = [{ name = "a", type = "u8" }, { name = "a", type = "u8" }]', ["'f' param 'a'", "twice"]),
    (FN + 'params = [{ name = "a", type = "Nope" }]', ["'c' function 'f' param 'a'", "unknown type 'Nope'"]),
    (FN + 'return = { type = "Nope" }', ["function 'f' return", "unknown type 'Nope'"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_APIS)
def test_invalid_api_raises_manifest_error_naming_file_item_and_field(
    text: str, fragments: list[str]
) -> None:
    with pytest.raises(ManifestError) as excinfo:
        parse_api_text(text, "/x/api.toml")
    message = str(excinfo.value)
    assert message.startswith("/x/api.toml: ")
    for fragment in fragments:
        assert fragment in message


def test_missing_file_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such api.toml"):
        parse_api(tmp_path)


def test_docs_and_langs_are_accepted_everywhere() -> None:
    api = parse_api_text(
        """
        [langs.rust]
        attributes = ["x"]
        [[types]]
        name = "P"
        docs = "a point"
        fields = [{ name = "x", type = "f32", docs = "x" }]
        [types.langs.cpp]
        attributes = ["y"]
        [[contract]]
        name = "c"
        version = "1"
        docs = "contract"
        [[contract.functions]]
        name = "f"
        docs = "f"
        params = [{ name = "p", type = "P", docs = "p" }]
        return = { type = "P", docs = "the point" }
        """
    )
    assert api.contracts[0].functions[0].returns is api.structs["P"]
