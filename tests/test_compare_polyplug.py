"""Our fixtures answer through polyplug_isolated exactly as through the real polyplug runtime.

Every well-behaved fixture (adder, crasher's returning functions, slow, multi,
kitchen_sink, payload, probe_v1, probe_v2, environ) is called both ways; the
misbehaving ones must be refused alike.

The real runtime (PyPI ``polyplug``, ``polyplug-abi``, ``polyplug-loaders-native``
0.1.3: the ``compare`` extra) is driven by ``_polyplug_reference.py`` in a
subprocess, one per fixture, with every call of the test in one batch. Without
the extra these tests are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

_REFERENCE_PACKAGES = ("polyplug", "polyplug_abi", "polyplug_loaders_native")
# find_spec rather than importorskip: importing polyplug dlopens its runtime
# library, which only the reference subprocess should have in it.
for _package in _REFERENCE_PACKAGES:
    if importlib.util.find_spec(_package) is None:
        pytest.skip(
            f"the real polyplug runtime is not installed ({_package} missing): pip install -e '.[compare]'",
            allow_module_level=True,
        )

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from polyplug_isolated import (  # noqa: E402
    InitFailed,
    InitSymbolMissing,
    LoaderError,
    PluginCallError,
    Runtime,
    guest_contract_id,
    parse_api,
)
from polyplug_isolated._fixtures import fixture_path  # noqa: E402
from polyplug_isolated._layout import Layout  # noqa: E402

REFERENCE_SCRIPT = Path(__file__).with_name("_polyplug_reference.py")
NOT_FOUND = 0xFFFFFFFF
U32_MAX = 0xFFFFFFFF

ADD = guest_contract_id("test.add", 1)
CRASH = guest_contract_id("test.crash", 1)
SLOW = guest_contract_id("test.slow", 1)
MUL = guest_contract_id("test.mul", 1)
SUB = guest_contract_id("test.sub", 1)
REGFAIL = guest_contract_id("regfail.add", 1)
KITCHEN = guest_contract_id("test.kitchen", 1)
PAYLOAD = guest_contract_id("test.payload", 1)
PROBE = guest_contract_id("test.probe", 1)
ENV = guest_contract_id("test.env", 1)

# Pairs every arithmetic function gets besides the random ones: zero and wrap-around.
EDGE_PAIRS = [(0, 0), (1, 2), (U32_MAX, 1), (1, U32_MAX), (U32_MAX, U32_MAX), (0x10000, 0x10000)]


@dataclass(frozen=True)
class Call:
    contract_id: int
    fn: int
    args: bytes = b""
    out_size: int = 0
    string_view: bool = False  # out is a StringView: its pointer only means something in one process

    def request(self) -> dict:
        return {
            "contract_id": self.contract_id,
            "min_version": 1,
            "fn": self.fn,
            "args_hex": self.args.hex(),
            "out_size": self.out_size,
            "string_view": self.string_view,
        }


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def pair(a: int, b: int) -> bytes:
    return struct.pack("<II", a, b)


def run_reference(bundle: Path, calls: list[Call]) -> dict:
    """One batch through the real runtime, in its own process."""
    request = {"bundle": str(bundle), "calls": [call.request() for call in calls]}
    proc = subprocess.run(
        [sys.executable, str(REFERENCE_SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip(), (
        f"the reference host failed (status {proc.returncode}):\n{proc.stderr}{proc.stdout}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def call_ours(contract, call: Call) -> dict:
    """Our answer in the reference's shape; a non-Ok AbiError brings no out bytes."""
    try:
        out = contract.call(call.fn, call.args, call.out_size)
    except PluginCallError as exc:
        return {"out_hex": None, "code": exc.code, "message": exc.message}
    return {"out_hex": out.hex(), "code": 0, "message": ""}


def comparable(call: Call, answer: dict) -> tuple:
    """What must be equal: out bytes (a StringView's length only) on success, else code and message."""
    if answer["code"] != 0:
        return (answer["code"], answer["message"])
    out = bytes.fromhex(answer["out_hex"])
    if call.string_view:
        out = out[8:16]
    return (0, out.hex())


class Ours:
    """A runtime with one fixture loaded, calling it the way the reference does."""

    def __init__(self, rt: Runtime, name: str):
        self.rt = rt
        self.bundle = fixture_path(name)
        rt.load_bundle(self.bundle)
        self.contracts: dict[int, object] = {}
        self.calls: list[Call] = []
        self.answers: list[dict] = []

    def contract(self, contract_id: int):
        if contract_id not in self.contracts:
            handle = self.rt.find_guest_contract(contract_id, 1)
            assert handle.found, f"contract 0x{contract_id:016X} not found through polyplug_isolated"
            self.contracts[contract_id] = self.rt.resolve_guest_contract(handle)
        return self.contracts[contract_id]

    def call(self, call: Call) -> None:
        self.calls.append(call)
        self.answers.append(call_ours(self.contract(call.contract_id), call))

    def random_pairs(self, functions: list[tuple[int, int]]) -> None:
        """Edge pairs, then hypothesis's u32 pairs, into each (contract, fn) taking ``{u32 a, u32 b}``."""
        for a, b in EDGE_PAIRS:
            for contract_id, fn in functions:
                self.call(Call(contract_id, fn, pair(a, b), 4))

        @settings(max_examples=20, deadline=None)
        @given(a=st.integers(0, U32_MAX), b=st.integers(0, U32_MAX))
        def draw(a: int, b: int) -> None:
            for contract_id, fn in functions:
                self.call(Call(contract_id, fn, pair(a, b), 4))

        draw()

    def compare_with_reference(self) -> dict:
        """Runs every call made so far through the real runtime and asserts identical answers."""
        reference = run_reference(self.bundle, self.calls)
        assert "load_error" not in reference, f"the real runtime refused {self.bundle}: {reference}"
        theirs = reference["results"]
        assert len(theirs) == len(self.calls)
        mismatches = [
            f"  {call}: polyplug_isolated {ours} != polyplug {their}"
            for call, ours, their in zip(self.calls, self.answers, theirs, strict=True)
            if comparable(call, ours) != comparable(call, their)
        ]
        assert not mismatches, "answers differ from the real runtime:\n" + "\n".join(mismatches)

        for contract_id, contract in self.contracts.items():
            info = reference["contracts"][str(contract_id)]
            assert contract.function_count == info["function_count"]
            assert list(contract.version) == info["version"]
            # Our worker passes {NULL, contract_id}: what the fixture's create_instance
            # hands the real runtime, so both called the functions with the same instance.
            assert info["instance"] == [0, contract_id]
        return reference


def test_adder_answers_like_polyplug():
    with Runtime() as rt:
        ours = Ours(rt, "adder")
        ours.call(Call(ADD, 2, out_size=16, string_view=True))  # version() -> StringView
        ours.call(Call(ADD, 3))  # reset(): args and out both NULL
        ours.call(Call(ADD, 0, b"", 4))  # add with args NULL: the plugin's InvalidPointer
        ours.call(Call(ADD, 1, pair(2, 3), 0))  # add_primitive with out NULL: likewise
        ours.random_pairs([(ADD, 0), (ADD, 1)])
        reference = ours.compare_with_reference()
    assert reference["results"][0]["string"] == "1.0.0"
    assert bytes.fromhex(reference["results"][0]["out_hex"])[8:16] == u32(5) + bytes(4)
    assert ours.answers[2]["code"] == 8  # InvalidPointer: args really arrived as NULL


def test_crasher_answers_like_polyplug():
    """Only the functions that return: fail(code) with Ok, built-in and plugin-defined codes, and ping."""
    with Runtime() as rt:
        ours = Ours(rt, "crasher")
        for code in (0, 1, 6, 255, 256, 300, U32_MAX):
            ours.call(Call(CRASH, 3, u32(code), 4))
        for x in (0, 41, U32_MAX):
            ours.call(Call(CRASH, 4, u32(x), 4))
        ours.compare_with_reference()
    assert ours.answers[0] == {"out_hex": "00000000", "code": 0, "message": ""}
    assert ours.answers[5] == {
        "out_hex": None,
        "code": 300,
        "message": "crasher: failing with code 300 on request",
    }


def test_slow_answers_like_polyplug():
    with Runtime() as rt:
        ours = Ours(rt, "slow")
        for x in (0, 7, U32_MAX):
            ours.call(Call(SLOW, 1, u32(x), 4))
        ours.call(Call(SLOW, 0, u32(1), 4))  # sleep_ms(1)
        ours.call(Call(SLOW, 0, u32(0), 4))
        ours.compare_with_reference()


def test_multi_answers_like_polyplug():
    with Runtime() as rt:
        ours = Ours(rt, "multi")
        ours.random_pairs([(MUL, 0), (SUB, 0)])
        ours.compare_with_reference()
    assert set(ours.contracts) == {MUL, SUB}


def random_record(rng: random.Random, fmt: str) -> bytes:
    """Bytes of a struct ``fmt`` (standard sizes) with random valid values: bools 0/1, finite floats."""
    values = []
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt):
        if code == "x":
            continue
        for _ in range(int(count or 1)):
            if code == "?":
                values.append(rng.random() < 0.5)
            elif code in "fd":
                values.append(struct.unpack("<f", struct.pack("<f", rng.uniform(-1e6, 1e6)))[0])
            else:
                bits = 8 * struct.calcsize(code)
                low = -(1 << (bits - 1)) if code.islower() else 0
                values.append(rng.randrange(low, low + (1 << bits)))
    return struct.pack("=" + fmt, *values)


def test_kitchen_sink_answers_like_polyplug():
    """Every test.kitchen function whose arguments and answer hold no pointer (a view's pointer
    only means something in one process), with random values, and divide's plugin errors."""
    api = parse_api(fixture_path("kitchen_sink"))
    layout = Layout(api)
    kitchen = api.contracts[0]
    rng = random.Random(17)
    compared = []
    with Runtime() as rt:
        ours = Ours(rt, "kitchen_sink")
        for function in kitchen.functions:
            args = layout.args(kitchen, function)
            returns = layout.of(function.returns) if function.returns is not None else None
            if (args and args.views) or (returns and returns.views):
                continue
            compared.append(function.name)
            for _ in range(1 if args is None else 8):
                data = b"" if args is None else random_record(rng, args.format)
                ours.call(Call(KITCHEN, function.index, data, returns.size if returns else 0))
        divide = kitchen.function("divide").index
        for a, b in ((7, 2), (1, 0), (-(2**31), -1)):
            ours.call(Call(KITCHEN, divide, struct.pack("<ii", a, b), 4))
        ours.compare_with_reference()
    assert {"echo_u8", "echo_f64", "echo_scalars", "mixed", "sum_ints", "nothing", "magic"} <= set(compared)
    assert {answer["code"] for answer in ours.answers[-2:]} == {256, 257}  # the plugin's own errors


def test_payload_answers_like_polyplug():
    with Runtime() as rt:
        ours = Ours(rt, "payload")
        for size in (0, 1, 7, 8, 255, 4096, 65_536):
            blob = struct.pack("<Q", size) + bytes(random.Random(size).randbytes(size))
            ours.call(Call(PAYLOAD, 0, blob, size))  # echo
            ours.call(Call(PAYLOAD, 1, blob, 8))  # checksum
        ours.compare_with_reference()
    assert bytes.fromhex(ours.answers[8]["out_hex"]) == random.Random(255).randbytes(255)


@pytest.mark.parametrize("name", ["probe_v1", "probe_v2"])
def test_probe_answers_like_polyplug(name):
    with Runtime() as rt:
        ours = Ours(rt, name)
        ours.call(Call(PROBE, 0, b"", 4))  # generation()
        ours.random_pairs([(PROBE, 1)])
        ours.compare_with_reference()
    assert ours.answers[0]["out_hex"] == u32(int(name[-1])).hex()


def test_environ_answers_like_polyplug(monkeypatch):
    """getenv of variables both processes inherit from this one (set, empty, unset)."""
    monkeypatch.setenv("POLYPLUG_COMPARE_SET", "same in both")
    monkeypatch.setenv("POLYPLUG_COMPARE_EMPTY", "")
    monkeypatch.delenv("POLYPLUG_COMPARE_UNSET", raising=False)
    with Runtime() as rt:
        ours = Ours(rt, "environ")
        for key in ("POLYPLUG_COMPARE_SET", "POLYPLUG_COMPARE_EMPTY", "POLYPLUG_COMPARE_UNSET"):
            ours.call(Call(ENV, 0, key.encode().ljust(64, b"\0"), 1024))
        ours.compare_with_reference()
    assert bytes.fromhex(ours.answers[0]["out_hex"]).rstrip(b"\0") == b"same in both"


# The real runtime's refusals read "init failed for bundle `NAME`: CAUSE" or
# "init symbol missing in ...": CAUSE must be in ours, and the kinds must match.
_REAL_INIT_FAILED = re.compile(r"init failed for bundle `[^`]*`: (?P<cause>.*)", re.S)
_REAL_INIT_SYMBOL_MISSING = re.compile(r"init symbol missing")


@pytest.mark.parametrize(
    ("name", "contract_ids"),
    [
        ("error_plugin", []),
        ("register_fail", [REGFAIL]),
        ("no_init", []),
        ("old_abi", []),
        ("no_abi_version", []),
    ],
)
def test_misbehaving_fixture_refused_like_polyplug(name, contract_ids):
    bundle = fixture_path(name)
    probes = [Call(contract_id, 0, pair(1, 2), 4) for contract_id in contract_ids]
    reference = run_reference(bundle, probes)
    assert "load_error" in reference, f"the real runtime loaded {name}: {reference}"
    real = reference["load_error"]

    with Runtime() as rt:
        with pytest.raises(LoaderError) as refused:
            rt.load_bundle(bundle)
        # What init registered before failing is gone, in both.
        for contract_id in contract_ids:
            assert rt.find_guest_contract(contract_id, 1).index == NOT_FOUND
            assert reference["found_after_error"][str(contract_id)] is False
        assert rt.bundles == []

    ours = refused.value
    if _REAL_INIT_SYMBOL_MISSING.search(real):
        assert isinstance(ours, InitSymbolMissing), f"polyplug: {real!r}; ours: {ours!r}"
    else:
        match = _REAL_INIT_FAILED.search(real)
        assert match, f"unexpected refusal from the real runtime: {real!r}"
        assert isinstance(ours, InitFailed), f"polyplug: {real!r}; ours: {ours!r}"
        assert match["cause"] in str(ours), f"polyplug: {real!r}; ours: {ours!r}"
