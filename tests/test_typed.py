"""Typed proxies against real workers: Python values in, Python values out.

The property tests hold every kitchen_sink function, called through the
isolated typed proxy with random values of every type, against the same call
made in-process: this file run as a script (``python tests/test_typed.py
BUNDLE_DIR``) loads the bundle with the worker's own C (``_serve_ffi``, one
bundle per process, hence a subprocess), packs the arguments with cffi from
the fixture's own C declarations (``ffi.new`` of kitchen_sink.c's structs,
tests/_fixture_c.py; neither our declarations nor our struct formats) and
calls ``ppw_invoke``; pickled requests on stdin, pickled answers on stdout.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import logging
import math
import os
import pickle
import struct
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from conftest import settled, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polyplug_isolated import (
    BundleUnavailable,
    ContractInstance,
    ManifestError,
    PayloadTooLarge,
    PluginCallError,
    Runtime,
    TypedContract,
    guest_contract_id,
    parse_api,
    parse_manifest,
)
from polyplug_isolated._fixtures import FIXTURES_DIR
from polyplug_isolated._idl import Enum, Scalar, Struct, View
from polyplug_isolated._marshal import _Breach, _View
from polyplug_isolated._typed import _return_room

KITCHEN_API = parse_api(FIXTURES_DIR / "kitchen_sink" / "api.toml")
KITCHEN, COUNTER = KITCHEN_API.contracts
DESTROYED = "polyplug_isolated.bundle.kitchen_sink"


# ---- the in-process reference ------------------------------------------------------


def plain(value):
    """A typed result as plain data: enums as ints, dataclasses as dicts."""
    if isinstance(value, enum.Enum):
        return int(value)
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def same(a, b) -> bool:
    """Equal, with the same types, floats bit for bit (any NaN equals any NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or struct.pack("=d", a) == struct.pack("=d", b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


def _serve_reference(bundle_dir: str) -> None:
    """The subprocess: answers (contract, function, args) requests with in-process calls."""
    import cffi
    from polyplug_isolated.worker._serve_ffi import ffi as wffi
    from polyplug_isolated.worker._serve_ffi import lib as wlib

    manifest = parse_manifest(bundle_dir)
    loaded = wffi.new("ppw_load_result *")
    directory = os.fsencode(manifest.path)
    wlib.ppw_load(os.fsencode(manifest.file), manifest.id, directory, len(directory), loaded)
    assert loaded.kind == wlib.PPW_LOAD_OK, loaded.kind
    info = wffi.new("ppw_registration_info *")
    worker_index = {}
    for i in range(wlib.ppw_registration_count()):
        wlib.ppw_registration(i, info)
        worker_index[info.contract_id] = i
    from _fixture_c import args_struct, c_spelling, fixture_ffi

    api = parse_api(bundle_dir)
    ffi, structs = fixture_ffi(Path(bundle_dir).name)
    libc_ffi = cffi.FFI()
    libc_ffi.cdef("void free(void *);")
    libc = libc_ffi.dlopen(None)

    def init(t, value, keep):
        if isinstance(t, View):
            if value is None:
                ptr, length = ffi.NULL, 0
            else:
                data = value.encode() if isinstance(value, str) else bytes(value)
                ptr, length = ffi.new("uint8_t[]", max(len(data), 1)), len(data)
                ffi.memmove(ptr, data, length)
                keep.append(ptr)
            return {"ptr": ptr, "len": length, "cap": length} if t.owned else {"ptr": ptr, "len": length}
        if isinstance(t, Struct):
            return {f.name: init(f.type, value[f.name], keep) for f in t.fields}
        return value

    def read(t, cdata):
        if isinstance(t, View):
            if cdata.ptr == ffi.NULL:
                return b"" if t.owned else ""
            data = ffi.unpack(ffi.cast("char *", cdata.ptr), cdata.len)
            if t.owned:
                libc.free(cdata.ptr)  # host->free in the worker is free()
                return data
            return data.decode("utf-8", "surrogateescape")
        if isinstance(t, Struct):
            return {f.name: read(f.type, getattr(cdata, f.name)) for f in t.fields}
        return cdata

    def call(contract_name, function_name, args):
        contract = next(c for c in api.contracts if c.name == contract_name)
        fn = contract.function(function_name)
        keep: list = []
        if not fn.params:
            pointer = ffi.NULL
        elif len(fn.params) == 1:
            pointer = ffi.new(f"{c_spelling(fn.params[0].type)} *", init(fn.params[0].type, args[0], keep))
        else:
            fields = {p.name: init(p.type, a, keep) for p, a in zip(fn.params, args, strict=True)}
            pointer = ffi.new(f"{args_struct(structs, fn)} *", fields)
        out = ffi.new(f"{c_spelling(fn.returns)} *") if fn.returns is not None else ffi.NULL
        err = wffi.new("AbiError *")
        refused = wlib.ppw_invoke(worker_index[contract.id], fn.index, pointer, out, err)
        assert refused == wffi.NULL
        if err.code:
            message = wffi.unpack(wffi.cast("char *", err.message.ptr), err.message.len).decode()
            return ("error", err.code, message)
        return ("ok", read(fn.returns, out[0]) if fn.returns is not None else None)

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while header := stdin.read(4):
        request = pickle.loads(stdin.read(int.from_bytes(header, "little")))
        answer = pickle.dumps(call(*request))
        stdout.write(len(answer).to_bytes(4, "little") + answer)
        stdout.flush()


class Reference:
    """The host side of the reference subprocess."""

    def __init__(self, bundle: Path):
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(bundle)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def call(self, contract: str, function: str, args: tuple):
        request = pickle.dumps((contract, function, plain(args)))
        self.process.stdin.write(len(request).to_bytes(4, "little") + request)
        self.process.stdin.flush()
        header = self.process.stdout.read(4)
        assert header, f"the reference process died (exit status {self.process.wait()})"
        return pickle.loads(self.process.stdout.read(int.from_bytes(header, "little")))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


# ---- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def kitchen_runtime(fixtures_root):
    """One kitchen_sink worker for the module's property tests (they only call stateless functions)."""
    with Runtime(load_timeout=5.0, drain_timeout=5.0) as runtime:
        runtime.load_bundle(fixtures_root / "kitchen_sink")
        settled(runtime)  # before the first test's leak check looks
        yield runtime


@pytest.fixture(scope="module")
def shared_kitchen(kitchen_runtime) -> TypedContract:
    return kitchen_runtime.contract("test.kitchen")


@pytest.fixture(scope="module")
def reference(fixtures_root):
    ref = Reference(fixtures_root / "kitchen_sink")
    yield ref
    ref.close()


@pytest.fixture
def kitchen(rt, bundle_dir) -> TypedContract:
    return rt.load_bundle(bundle_dir("kitchen_sink")).contract("test.kitchen")


@pytest.fixture
def counter(rt, bundle_dir) -> TypedContract:
    rt.load_bundle(bundle_dir("kitchen_sink"))
    return rt.contract("test.counter")


def calls_sent(contract: TypedContract) -> int:
    return contract.contract.bundle.proxy.channel.counters[0]


# ---- finding contracts, binding arguments -------------------------------------------------


def test_adder_with_plain_values(rt, bundle_dir):
    rt.load_bundle(bundle_dir("adder"))
    add = rt.contract("test.add", api=FIXTURES_DIR / "adder" / "api.toml")
    assert add.add_primitive(2, 3) == 5
    assert add.add_primitive(a=2, b=3) == add.add_primitive(2, b=3) == 5
    assert add.add_primitive(0xFFFFFFFF, 2) == 1  # wraps, as in C
    assert add.add({"a": 40, "b": 2}) == 42
    assert add.add(add.types.AddArgs(a=1, b=2)) == 3
    assert add.add(SimpleNamespace(a=5, b=6)) == 11  # any object with the fields
    assert add.version() == "1.0.0"
    assert add.reset() is None
    assert add.functions["add_primitive"](1, 1) == 2


def test_finding_the_contract(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("adder"))
    by_name = rt.contract("test.add")  # the api.toml beside the bundle's manifest
    by_id = rt.contract(guest_contract_id("test.add", 1), api=bundle_dir("adder"))
    with_major = bundle.contract("test.add@1")
    for proxy in (by_name, by_id, with_major):
        assert proxy.add_primitive(1, 2) == 3
        assert proxy.contract.bundle is bundle
    assert repr(by_name) == "<TypedContract test.add@1 of bundle 'adder'>"
    with pytest.raises(LookupError, match="at major >= 2"):
        rt.contract("test.add", min_version=2)
    with pytest.raises(LookupError, match="below min_version 2"):
        rt.contract("test.add", min_version=2, api=bundle_dir("adder"))
    with pytest.raises(
        LookupError, match=r"declares no guest contract 'test\.nope' \(it declares: test\.add@1\)"
    ):
        rt.contract("test.nope", api=bundle_dir("adder"))
    with pytest.raises(LookupError, match="no loaded bundle provides guest contract test.kitchen@1"):
        rt.contract("test.kitchen", api=FIXTURES_DIR / "kitchen_sink")
    with pytest.raises(LookupError, match="bundle 'adder' does not provide"):
        bundle.contract("test.kitchen", api=FIXTURES_DIR / "kitchen_sink")
    with pytest.raises(ManifestError, match="no such api.toml"):
        rt.contract("test.add", api=FIXTURES_DIR / "nope.toml")


def test_methods_describe_themselves(rt, bundle_dir):
    rt.load_bundle(bundle_dir("kitchen_sink"))
    kitchen = rt.contract("test.kitchen")
    signature = inspect.signature(kitchen.mixed)  # Python types, not IDL names
    assert [p.annotation for p in signature.parameters.values()] == [
        int,
        float,
        bool,
        int,
        kitchen.types.Color,
    ]
    assert signature.return_annotation is kitchen.types.Mixed
    assert {f.name: f.type for f in dataclasses.fields(kitchen.types.Mixed)}["e"] is kitchen.types.Color
    assert kitchen.describe.__name__ == "describe"
    assert kitchen.nothing.__doc__ == "test.kitchen.nothing() -> None (function 26)"
    assert list(kitchen.functions) == [f.name for f in KITCHEN.functions]
    assert [m.name for m in kitchen.types.Access] == ["Read", "Write", "Exec"]
    assert kitchen.types.Access.All == 7 and issubclass(kitchen.types.Access, enum.IntFlag)
    assert dataclasses.is_dataclass(kitchen.types.Record)


@pytest.mark.parametrize(
    ("function", "args", "kwargs", "error", "message"),
    [
        (
            "echo_u8",
            (256,),
            {},
            ValueError,
            "test.kitchen.echo_u8(): parameter 'v': 256 is out of range for u8 (0..255)",
        ),
        ("echo_i8", (-129,), {}, ValueError, "parameter 'v': -129 is out of range for i8 (-128..127)"),
        ("echo_u64", (-1,), {}, ValueError, "out of range for u64"),
        ("echo_u32", (1.5,), {}, TypeError, "parameter 'v': must be an int (u32), not float"),
        ("echo_u32", ("1",), {}, TypeError, "must be an int (u32), not str"),
        ("echo_f64", ("1.0",), {}, TypeError, "parameter 'v': must be a float (f64), not str"),
        ("echo_f32", (1e39,), {}, ValueError, "1e+39 is out of range for f32"),
        ("echo_bool", (2,), {}, TypeError, "must be a bool, not int"),
        ("echo_bool", ("yes",), {}, TypeError, "must be a bool, not str"),
        ("echo_color", (3,), {}, ValueError, "3 is not a Color (Red=0, Green=1, Blue=2, White=255)"),
        ("echo_level", (0,), {}, ValueError, "0 is not a Level"),
        ("echo_access", (1 << 32,), {}, ValueError, "out of range for Access flags (0..4294967295)"),
        ("echo_string", (3,), {}, TypeError, "must be a str or bytes (or None), not int"),
        ("echo_string", ("\ud800",), {}, ValueError, "is not valid UTF-8 text"),
        ("echo_buffer", ("text",), {}, TypeError, "must be bytes (or None), not str"),
        ("echo_point", ({"x": 1.0},), {}, TypeError, "dict has no key 'y'"),
        ("echo_point", ({"x": 1.0, "y": 2.0, "z": 3.0},), {}, TypeError, "has no field 'z'"),
        ("echo_point", (5,), {}, TypeError, "must be a dict or an object with the fields of Point"),
        ("echo_point", ({"x": 1.0, "y": "2"},), {}, TypeError, "parameter 'v', field 'y': must be a float"),
        (
            "describe",
            ("a", -1, 0),
            {},
            ValueError,
            "test.kitchen.describe(): parameter 'count': -1 is out of range",
        ),
        (
            "mixed",
            (1, 2.0, True, 3),
            {},
            TypeError,
            "test.kitchen.mixed() is missing required argument(s): 'e'",
        ),
        ("mixed", (1, 2.0, True, 3, 0, 9), {}, TypeError, "mixed() takes 5 argument(s) but 6 were given"),
        ("echo_u8", (1,), {"v": 1}, TypeError, "got multiple values for argument 'v'"),
        ("echo_u8", (), {"w": 1}, TypeError, "got an unexpected keyword argument 'w'"),
        ("nothing", (1,), {}, TypeError, "nothing() takes 0 argument(s) but 1 were given"),
    ],
)
def test_bad_values_are_refused_in_the_host(kitchen, function, args, kwargs, error, message):
    before = calls_sent(kitchen)
    with pytest.raises(error) as excinfo:
        kitchen.functions[function](*args, **kwargs)
    assert message in str(excinfo.value)
    assert calls_sent(kitchen) == before  # nothing reached the worker


def test_nested_field_errors_name_the_path(kitchen):
    record = record_value(kitchen.types)
    record.tagged.at.y = "nope"
    with pytest.raises(
        TypeError, match=r"echo_record\(\): parameter 'v', field 'tagged\.at\.y': must be a float"
    ):
        kitchen.echo_record(record)
    record = record_value(kitchen.types)
    record.scalars.i16 = 1 << 15
    with pytest.raises(ValueError, match=r"field 'scalars\.i16': 32768 is out of range for i16"):
        kitchen.echo_record(record)


def test_enum_of_another_type_is_refused(kitchen):
    with pytest.raises(TypeError, match="must be a Color, not Level.Low"):
        kitchen.echo_color(kitchen.types.Level.Low)


# ---- every type through a real worker --------------------------------------------------


def record_value(types):
    return types.Record(
        flag=True,
        id=2**64 - 1,
        color=types.Color.White,
        access=types.Access.Read | types.Access.Exec,
        tagged=types.Tagged(types.Point(1.5, -2.0), "tag ✓"),
        level=types.Level.High,
        scalars=types.Scalars(
            255, 65535, 2**32 - 1, 2**64 - 1, -128, -32768, -(2**31), -(2**63), 0.25, -1e300, False
        ),
        name="a name",
        wide=types.Wide.Top | types.Wide.Bottom,
        data=b"\x00data\xff",
    )


def test_every_function_answers_with_python_values(kitchen):
    t = kitchen.types
    assert kitchen.echo_u8(255) == 255 and kitchen.echo_i8(-128) == -128
    assert kitchen.echo_u16(65535) == 65535 and kitchen.echo_i16(-32768) == -32768
    assert kitchen.echo_u32(2**32 - 1) == 2**32 - 1 and kitchen.echo_i32(-(2**31)) == -(2**31)
    assert kitchen.echo_u64(2**64 - 1) == 2**64 - 1 and kitchen.echo_i64(-(2**63)) == -(2**63)
    assert kitchen.echo_f32(0.1) == struct.unpack("f", struct.pack("f", 0.1))[0]
    assert kitchen.echo_f64(-0.0) == 0.0 and math.copysign(1, kitchen.echo_f64(-0.0)) == -1
    assert math.isinf(kitchen.echo_f32(math.inf)) and math.isnan(kitchen.echo_f64(math.nan))
    assert kitchen.echo_bool(True) is True and kitchen.echo_bool(0) is False
    assert kitchen.echo_color(t.Color.Blue) is t.Color.Blue and kitchen.echo_color(255) is t.Color.White
    assert kitchen.echo_level(0x8000) is t.Level.High
    assert kitchen.echo_access(t.Access.ReadWrite) == t.Access.Read | t.Access.Write
    assert kitchen.echo_access(1 << 31) == 1 << 31  # flags the IDL does not name survive
    assert kitchen.echo_wide(2**64 - 1) == t.Wide.Every
    assert kitchen.echo_point({"x": 1.5, "y": 2.5}) == t.Point(1.5, 2.5)
    record = record_value(t)
    assert kitchen.echo_record(record) == record
    assert kitchen.mixed(7, 2.5, True, 65535, t.Color.Green) == t.Mixed(7, 2.5, True, 65535, t.Color.Green)
    assert kitchen.sum_ints(-1, -2, -3, -4, 1, 2, 3, 4) == 0
    assert kitchen.sum_ints(0, 0, 0, 2**63 - 1, 0, 0, 0, 1) == -(2**63)  # wraps
    assert kitchen.describe("job", 3, t.Access.Read | t.Access.Exec) == "job x3 [r-x]"
    assert kitchen.concat("ab", b"\x00cd") == b"ab\x00cd"
    assert kitchen.patch(b"hello", 0, ord("j")) == b"jello" and kitchen.patch(b"hi", 9, 0) == b"hi"
    assert kitchen.divide(-7, 2) == -3
    assert kitchen.nothing() is None
    assert kitchen.magic() == 0xFEEDFACECAFEBEEF


def test_plugin_errors_carry_code_and_message(kitchen):
    with pytest.raises(PluginCallError) as excinfo:
        kitchen.divide(1, 0)
    assert (excinfo.value.code, excinfo.value.message) == (256, "kitchen_sink: division by zero")
    assert "test.kitchen@1.divide() (function 25)" in str(excinfo.value)
    with pytest.raises(PluginCallError, match="INT32_MIN / -1 overflows"):
        kitchen.divide(-(2**31), -1)
    assert kitchen.divide(9, 3) == 3  # the worker is fine


def test_strings_and_buffers_cross_by_copy(kitchen):
    assert kitchen.echo_string("") == "" and kitchen.echo_string(None) == ""
    assert kitchen.echo_buffer(b"") == b"" and kitchen.echo_buffer(None) == b""
    assert kitchen.echo_string("nul\x00inside ✓") == "nul\x00inside ✓"
    raw = b"\xff\xfe not utf-8"
    back = kitchen.echo_string(raw)  # bytes pass as they are; invalid UTF-8 comes back escaped
    assert back.encode("utf-8", "surrogateescape") == raw
    assert kitchen.echo_buffer(bytearray(b"ba")) == b"ba" and kitchen.echo_buffer(memoryview(b"mv")) == b"mv"
    assert kitchen.concat(None, "") == b""  # the plugin answers a NULL Buffer


def test_large_strings_spill_to_the_arena_and_too_large_is_refused(kitchen):
    big = "x" * 300_000  # args and return area exceed a 64 KiB slot: the arena carries them
    assert kitchen.echo_string(big) == big
    blob = os.urandom(1_000_000)
    assert kitchen.echo_buffer(blob) == blob
    assert kitchen.concat("a" * 40_000, "b" * 40_000) == b"a" * 40_000 + b"b" * 40_000
    with pytest.raises(PayloadTooLarge):
        kitchen.echo_buffer(b"z" * (5 << 20))  # more than the 4 MiB arena
    assert kitchen.echo_string("still fine") == "still fine"


def test_returned_buffers_are_freed_in_the_worker(kitchen):
    """Each answer's Buffer is host->free'd by the worker once copied: its memory stays flat."""
    blob = b"\xab" * 256 * 1024
    worker = psutil.Process(kitchen.contract.bundle.worker_pid)
    for _ in range(20):  # warm up the allocator and the arena pages
        kitchen.echo_buffer(blob)
    before = worker.memory_info().rss
    for _ in range(400):  # 100 MiB if they leaked
        assert kitchen.echo_buffer(blob) == blob
    assert worker.memory_info().rss - before < 32 * 1024 * 1024


def test_a_view_outside_the_return_area_is_caught():
    view = _View(View("StringView"))
    assert view.decode(iter((0, 3)), b"abcdef") == "abc"
    for offset, length in [(4, 3), (7, 0), (0, 2**63), (2**64 - 2, 4)]:
        with pytest.raises(_Breach):
            view.decode(iter((offset, length)), b"abcdef")


def test_return_room_keeps_calls_in_their_slot_when_it_can():
    channel = SimpleNamespace(payload_cap=65_536 + 5, arena_cap=4 << 20)
    room = _return_room(channel, 20, 1, 16)  # args 24, table 16, out 16
    assert room == (65_536 + 5 - 56) // 8 * 8 and room % 8 == 0
    assert _return_room(channel, 65_000, 1, 16) == (4 << 20) - 65_032  # too little left: the arena


# ---- instances --------------------------------------------------------------------------


def test_instances_hold_their_own_state(counter, caplog):
    caplog.set_level(logging.INFO, logger=DESTROYED)
    t = counter.types
    assert counter.increment() == 1 and counter.label() == "default"  # the default instance
    with counter.instance(t.CounterConfig(start=10, step=5, label="fives")) as fives:
        assert isinstance(fives, ContractInstance) and fives.handle > 0
        with counter.instance(
            {"start": -1, "step": -1, "label": "down"}, config_type="CounterConfig"
        ) as down:
            assert (fives.increment(), down.increment(), fives.add(n=3), down.get()) == (15, -2, 18, -2)
            assert fives.label() == "fives" and down.label() == "down"
            assert fives.state() == t.CounterState(value=18, calls=2, label="fives")
        assert down.closed
        wait_until(lambda: "counter 'down' destroyed at -2" in caplog.text)
        with pytest.raises(ValueError, match=r"test\.counter\.get\(\): the instance is closed"):
            down.get()
    wait_until(lambda: "counter 'fives' destroyed at 18" in caplog.text)
    fives.close()  # idempotent
    assert counter.get() == 1  # the default instance was never touched
    with counter.instance() as defaults:  # NULL config
        assert (defaults.label(), defaults.increment()) == ("default", 1)
    raw = struct.pack("=qqQQ", 100, 1, 0, 0)  # raw bytes: a CounterConfig with a NULL label
    with counter.instance(raw) as from_bytes:
        assert from_bytes.increment() == 101 and from_bytes.label() == "default"


def test_instance_config_is_checked_in_the_host(counter):
    with pytest.raises(TypeError, match=r"test\.counter\.instance\(\): config must be None, bytes"):
        counter.instance({"start": 1})
    with pytest.raises(TypeError, match="the api.toml has no type 'Nope'"):
        counter.instance({}, config_type="Nope")
    with pytest.raises(
        ValueError, match=r"config field 'start': 9223372036854775808 is out of range for i64"
    ):
        counter.instance({"start": 2**63, "step": 1, "label": ""}, config_type="CounterConfig")


def test_closing_an_instance_while_threads_call_it(counter):
    """A call either runs before the destroy or is refused in the host: never after it."""
    instance = counter.instance(counter.types.CounterConfig(0, 1, "busy"))
    outcomes: list[str] = []

    def hammer() -> None:
        while True:
            try:
                instance.increment()
            except ValueError:
                outcomes.append("closed")
                return

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: instance.functions["state"]().calls >= 200)
    instance.close()
    for thread in threads:
        thread.join()
    assert outcomes == ["closed"] * 4
    assert counter.contract.bundle.proxy.alive and counter.increment() == 1


def test_threads_share_a_proxy(kitchen):
    wrong: list[object] = []

    def echo(i: int) -> None:
        for j in range(200):
            text = f"thread {i} call {j} " * (j % 7)
            answers = (
                kitchen.echo_string(text),
                kitchen.echo_buffer(text.encode()),
                kitchen.echo_u64(i * 1000 + j),
            )
            if answers != (text, text.encode(), i * 1000 + j):
                wrong.append(answers)

    threads = [threading.Thread(target=echo, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_live_instances_are_destroyed_at_unload(bundle_dir, caplog):
    caplog.set_level(logging.INFO, logger=DESTROYED)
    with Runtime(load_timeout=5.0, drain_timeout=5.0) as runtime:
        runtime.load_bundle(bundle_dir("kitchen_sink"))
        counter = runtime.contract("test.counter")
        left = counter.instance(counter.types.CounterConfig(7, 1, "left behind"))
        left.increment()
    # The worker destroyed it (before dlclose), and its default instance too.
    assert "counter 'left behind' destroyed at 8" in caplog.text
    assert "counter 'default' destroyed at 0" in caplog.text
    left.close()  # its worker is gone: nothing to do


def test_instances_do_not_survive_a_reload(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("kitchen_sink"))
    counter = bundle.contract("test.counter")
    instance = counter.instance(counter.types.CounterConfig(0, 1, "old"))
    assert instance.increment() == 1
    rt.reload_bundle(bundle_dir("kitchen_sink"))
    with pytest.raises(BundleUnavailable, match="has been replaced .* create a new instance"):
        instance.increment()
    instance.close()
    assert counter.increment() == 1  # the proxy follows the bundle to its new worker
    with counter.instance(counter.types.CounterConfig(5, 5, "new")) as fresh:
        assert fresh.increment() == 10


def test_unloaded_bundle_is_unavailable(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("kitchen_sink"))
    kitchen = bundle.contract("test.kitchen")
    rt.unload_bundle(bundle.id)
    with pytest.raises(BundleUnavailable):
        kitchen.echo_u8(1)
    with pytest.raises(BundleUnavailable):
        kitchen.echo_string("x")


# ---- property tests: isolated == in-process -----------------------------------------------


def strategy(t, types):
    if isinstance(t, Scalar):
        if t.kind == "bool":
            return st.booleans()
        if t.name == "f32":
            return st.one_of(st.floats(width=32), st.floats(-3.4e38, 3.4e38))  # exact, and rounded
        if t.name == "f64":
            return st.floats()
        return st.integers(*t.bounds)
    if isinstance(t, Enum):
        members = st.sampled_from(list(getattr(types, t.name)))
        if t.bitflag:
            return st.one_of(members, st.integers(0, t.repr.bounds[1]))
        return st.one_of(members, st.sampled_from([value for _, value in t.variants]))
    if isinstance(t, View):
        data = st.binary(max_size=200)
        if t.owned:
            return st.one_of(st.none(), data, data.map(bytearray))
        text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
        return st.one_of(st.none(), text, data)
    fields = {f.name: strategy(f.type, types) for f in t.fields}
    return st.one_of(st.fixed_dictionaries(fields), st.builds(getattr(types, t.name), **fields))


@pytest.mark.parametrize("name", [f.name for f in KITCHEN.functions])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_isolated_calls_answer_as_in_process_calls(shared_kitchen, reference, name, data):
    function = KITCHEN.function(name)
    args = tuple(data.draw(strategy(p.type, shared_kitchen.types), label=p.name) for p in function.params)
    try:
        isolated = ("ok", plain(shared_kitchen.functions[name](*args)))
    except PluginCallError as error:
        isolated = ("error", error.code, error.message)
    assert same(isolated, reference.call("test.kitchen", name, args))


if __name__ == "__main__":
    _serve_reference(sys.argv[1])
