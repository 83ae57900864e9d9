"""Wrong arguments fail where passed, naming the option; no internal failure leaves a caller waiting."""

from __future__ import annotations

import inspect
import logging
import re
import shutil
import signal
import struct
import threading

import pytest
from conftest import ADD, pair

from polyplug_isolated import (
    BundleUnavailable,
    CallTimeout,
    Fault,
    InitFailed,
    LoaderError,
    PluginCallError,
    ResourceLimits,
    RestartPolicy,
    Runtime,
    RuntimeConfig,
    StaleHandle,
    WorkerCrashed,
    guest_contract_id,
)
from polyplug_isolated._monitor import Monitor
from polyplug_isolated._supervisor import Supervisor

# (what is called, the error, what its message must contain: the option and a correct use)
BAD_OPTIONS = [
    (lambda: Runtime(restart=3), TypeError, ["restart", "RestartPolicy(max_restarts=3)"]),
    (lambda: Runtime(restart={"max_restarts": 3}), TypeError, ["restart", "RestartPolicy("]),
    (lambda: Runtime(slots="64"), TypeError, ["slots", "slots=64"]),
    (lambda: Runtime(slots=0), ValueError, ["slots", "between 1 and 4096"]),
    (lambda: Runtime(call_timeout="5"), TypeError, ["call_timeout", "call_timeout=5.0"]),
    (lambda: Runtime(call_timeout=0), ValueError, ["call_timeout", "None for no limit"]),
    (lambda: Runtime(drain_timeout=float("nan")), ValueError, ["drain_timeout"]),
    (lambda: Runtime(load_timeout=True), TypeError, ["load_timeout"]),
    (lambda: Runtime(wait="fast"), ValueError, ["wait", "auto"]),
    (lambda: Runtime(prestart="yes"), TypeError, ["prestart", "prestart=True"]),
    (lambda: Runtime(spare_worker=1), TypeError, ["spare_worker", "spare_worker=False"]),
    (lambda: Runtime(spin_ns=-1), ValueError, ["spin_ns"]),
    (lambda: Runtime(arena_capacity=1 << 40), ValueError, ["arena_capacity"]),
    (lambda: Runtime(on_event="log"), TypeError, ["on_event", "callable"]),
    (lambda: Runtime(call_timout=5), TypeError, ["call_timout", "did you mean 'call_timeout'"]),
    (lambda: RuntimeConfig(restart=None), TypeError, ["restart"]),
    (lambda: RestartPolicy(max_restarts=1.5), TypeError, ["max_restarts", "RestartPolicy(max_restarts=3)"]),
    (lambda: RestartPolicy(max_restarts=-1), ValueError, ["max_restarts"]),
    (lambda: RestartPolicy(backoff="1"), TypeError, ["backoff"]),
    (lambda: RestartPolicy(window=0), ValueError, ["window"]),
    (lambda: RestartPolicy(jitter=2), ValueError, ["jitter", "between 0 and 1"]),
    (lambda: ResourceLimits(cpu_seconds="1"), TypeError, ["cpu_seconds", "ResourceLimits(cpu_seconds="]),
    (lambda: ResourceLimits(open_files=0), ValueError, ["open_files"]),
    (lambda: Fault.delay("5"), TypeError, ["ms", "Fault.delay(ms=5)"]),
    (lambda: Fault.crash("SEGV"), TypeError, ["sig", "signal.SIGSEGV"]),
    (lambda: Fault.error(code=0), ValueError, ["code", "Fault.error(code=300)"]),
    (lambda: Fault.error(message=3), TypeError, ["message"]),
    (lambda: Fault.leak(mb=1.5), TypeError, ["mb"]),
    (lambda: Fault.hang().on_call("3"), TypeError, ["on_call", "on_call(2)"]),
    (lambda: Fault.hang().with_probability(1.5), ValueError, ["p", "with_probability(0.1"]),
    (lambda: Fault.hang().with_probability(0.5, seed="x"), TypeError, ["seed"]),
    (lambda: Fault.hang().after(-1), ValueError, ["seconds"]),
    (lambda: Fault.hang().only(function="0"), TypeError, ["function", "only(function=0)"]),
]


@pytest.mark.parametrize(("make", "error", "fragments"), BAD_OPTIONS)
def test_a_bad_option_is_refused_naming_it_with_an_example(make, error, fragments):
    with pytest.raises(error) as info:
        make()
    for fragment in fragments:
        assert fragment in str(info.value)


BAD_LOAD_OPTIONS = [
    ({"limits": {"cpu_seconds": 1}}, TypeError, ["limits", "ResourceLimits(cpu_seconds=1)"]),
    ({"limits": 5}, TypeError, ["limits", "ResourceLimits("]),
    ({"env": {"A": 1}}, TypeError, ["env", 'env={"MODE": "prod"}']),
    ({"env": ["A=1"]}, TypeError, ["env"]),
    ({"inherit_env": 0}, TypeError, ["inherit_env", "inherit_env=False"]),
    ({"cwd": 3}, TypeError, ["cwd", 'cwd="/srv/plugin"']),
    ({"library_path": "/opt/lib"}, TypeError, ["library_path", 'library_path=["/opt/lib"]']),
    ({"library_path": [3]}, TypeError, ["library_path"]),
    ({"faults": ["crash"]}, TypeError, ["faults", "Fault.crash().during_init()"]),
]


@pytest.mark.parametrize(("options", "error", "fragments"), BAD_LOAD_OPTIONS)
def test_a_bad_load_option_is_refused_before_any_worker_starts(rt, bundle_dir, options, error, fragments):
    with pytest.raises(error) as info:
        rt.load_bundle(bundle_dir("adder"), **options)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert rt.bundles == []


def test_lookups_and_injections_check_their_arguments(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("adder"))
    with pytest.raises(TypeError, match=r"contract_id must be an int.*guest_contract_id\("):
        rt.find_guest_contract("test.add", 1)
    with pytest.raises(ValueError, match="min_version"):
        rt.find_all_by_contract(ADD, -1)
    with pytest.raises(TypeError, match=r"inject: each fault must be a Fault"):
        bundle.inject("crash")


def test_load_bundle_path_must_be_a_path(rt):
    with pytest.raises(TypeError, match=r"load_bundle: path must be a path .*load_bundle\("):
        rt.load_bundle(42)


def test_bad_call_arguments_are_type_errors(rt, bundle_dir):
    rt.load_bundle(bundle_dir("adder"))
    add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
    for index in ("1", 1.0, None):
        with pytest.raises(TypeError, match="a function index is an int"):
            add.call(index, pair(1, 2), 4)
    with pytest.raises(TypeError, match="timeout"):
        add.call(1, pair(1, 2), 4, timeout="1")
    with pytest.raises(ValueError, match="timeout"):
        add.call(1, pair(1, 2), 4, timeout=-1)


def test_an_index_past_the_end_has_one_message_whichever_path_sees_it(rt, bundle_dir):
    rt.load_bundle(bundle_dir("adder"))
    add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
    messages = set()
    for index in (4, 5, 2**31, 2**40, -1):
        with pytest.raises(PluginCallError) as info:
            add.call(index, b"", 4)
        assert info.value.code == 6
        messages.add(re.sub(r"function -?\d+", "function N", str(info.value)))
    assert messages == {
        "bundle 'adder': test.add@1 function N: no such function (FunctionNotAvailable): "
        "the contract has 4 functions, indices 0..3"
    }


# ---- an internal failure never leaves a caller waiting ---------------------------------


def test_a_failure_deciding_a_restart_still_wakes_the_caller(rt, bundle_dir, monkeypatch):
    """Before: the monitor's death handling raised before waking callers, and they waited forever."""
    crasher = rt.load_bundle(bundle_dir("crasher"))
    crash = rt.resolve_guest_contract(rt.find_guest_contract(guest_contract_id("test.crash", 1), 1))

    def broken(self, bundle):
        raise AttributeError("'int' object has no attribute 'max_restarts'")

    monkeypatch.setattr(Supervisor, "crashed", broken)
    with pytest.raises(WorkerCrashed):
        crash.call(0, b"", 0, timeout=None)
    assert crasher.proxy is None


def test_an_on_event_callback_cannot_end_the_monitor(bundle_dir):
    def hostile(event):
        raise SystemExit("a callback that exits")

    with Runtime(on_event=hostile, restart=RestartPolicy(max_restarts=1, backoff=0)) as rt:
        crasher = rt.load_bundle(bundle_dir("crasher"))
        rt.load_bundle(bundle_dir("adder"))
        crash = rt.resolve_guest_contract(rt.find_guest_contract(guest_contract_id("test.crash", 1), 1))
        add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
        with pytest.raises(WorkerCrashed):
            crash.call(0, b"", 0, timeout=None)
        assert crash.call(4, struct.pack("<I", 1), 4, timeout=10.0) == struct.pack("<I", 2)  # restarted
        assert crasher.restarts == 1
        assert add.call(1, pair(2, 3), 4) == struct.pack("<I", 5)
        assert not rt._monitor.failed


def test_a_broken_monitor_loop_fails_every_caller_and_every_later_load(bundle_dir, monkeypatch):
    """The monitor loop itself dies: calls end in errors, later loads fail, close works."""
    entered = threading.Event()

    def broken(self, watch):
        entered.set()
        raise SystemExit("injected: the monitor loop breaks")

    with Runtime(load_timeout=5.0) as rt:
        rt.load_bundle(bundle_dir("adder"))
        rt.load_bundle(bundle_dir("crasher"))
        add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
        crash = rt.resolve_guest_contract(rt.find_guest_contract(guest_contract_id("test.crash", 1), 1))
        monkeypatch.setattr(Monitor, "_on_exit", broken)
        with pytest.raises(WorkerCrashed):
            crash.call(0, b"", 0, timeout=None)
        assert entered.is_set()
        with pytest.raises((WorkerCrashed, BundleUnavailable)):
            add.call(1, pair(1, 2), 4, timeout=None)  # its worker was killed when the monitor failed
        with pytest.raises(InitFailed, match="monitor thread failed"):
            rt.load_bundle(bundle_dir("slow"))
    assert rt.live_worker_count() == 0


# ---- messages ------------------------------------------------------------------------------


def test_worker_crashed_is_two_lines_naming_function_and_signal(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("kitchen_sink"))
    kitchen = bundle.contract("test.kitchen")
    bundle.inject(Fault.crash(signal.SIGSEGV).only(function=25))
    with pytest.raises(WorkerCrashed) as info:
        kitchen.divide(1, 2)
    message = str(info.value)
    assert len(message.splitlines()) <= 2, message
    for fragment in ("'kitchen_sink'", "test.kitchen@1.divide()", "SIGSEGV", "reload it"):
        assert fragment in message
    assert info.value.report.startswith(message)
    assert len(info.value.report) > len(message)  # the worker's last output follows
    assert info.value.signal == signal.SIGSEGV


def test_typed_plugin_errors_name_the_function(rt, bundle_dir):
    kitchen = rt.load_bundle(bundle_dir("kitchen_sink")).contract("test.kitchen")
    with pytest.raises(PluginCallError, match=r"test\.kitchen@1\.divide\(\) \(function 25\)"):
        kitchen.divide(1, 0)


def test_unload_takes_a_bundle_an_id_or_a_name(rt, bundle_dir):
    for key in (lambda b: b, lambda b: b.id, lambda b: b.name):
        bundle = rt.load_bundle(bundle_dir("adder"))
        rt.unload_bundle(key(bundle))
        assert rt.bundles == []
    bundle = rt.load_bundle(bundle_dir("adder"))
    bundle.unload()
    assert rt.bundles == []
    with pytest.raises(LoaderError, match=r"bundle 'adder' is not loaded in this runtime \(it is UNLOADED\)"):
        rt.unload_bundle(bundle)
    with pytest.raises(LoaderError, match="no bundle named 'nope' is loaded"):
        rt.unload_bundle("nope")
    with pytest.raises(TypeError, match="a Bundle, a bundle id or a bundle name"):
        rt.unload_bundle(1.5)


def test_resolving_a_not_found_handle_says_not_found(rt, bundle_dir):
    rt.load_bundle(bundle_dir("adder"))
    handle = rt.find_guest_contract(guest_contract_id("no.such", 1), 1)
    with pytest.raises(StaleHandle) as info:
        rt.resolve_guest_contract(handle)
    assert "not-found" in str(info.value)
    assert "unloaded" not in str(info.value)


def test_a_call_after_close_says_the_runtime_was_closed(bundle_dir):
    with Runtime() as rt:
        rt.load_bundle(bundle_dir("adder"))
        add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
    with pytest.raises(BundleUnavailable) as info:
        add.call(1, struct.pack("<II", 1, 2), 4)
    assert "Runtime was closed" in str(info.value)
    assert "load it again" not in str(info.value)
    with pytest.raises(LoaderError, match="Runtime is closed"):
        rt.load_bundle(bundle_dir("adder"))


def test_an_unknown_manifest_key_is_warned_about_and_the_bundle_still_loads(rt, bundle_dir, tmp_path, caplog):
    bundle = tmp_path / "adder"
    shutil.copytree(bundle_dir("adder"), bundle)
    manifest = bundle / "manifest.toml"
    manifest.write_text(manifest.read_text().replace("provides =", "provide ="))
    with caplog.at_level(logging.WARNING, logger="polyplug_isolated"):
        loaded = rt.load_bundle(bundle)
    assert loaded.name == "adder"
    warnings = [r.getMessage() for r in caplog.records if "unknown key" in r.getMessage()]
    assert len(warnings) == 1
    assert "'provide' is ignored; did you mean 'provides'?" in warnings[0]


# ---- typed calls: per-call options, real signatures ----------------------------------


def test_typed_calls_take_a_timeout_of_their_own(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("kitchen_sink"))
    kitchen = bundle.contract("test.kitchen")
    quick = kitchen.with_options(timeout=0.3)
    assert quick.divide(6, 3) == 2
    bundle.inject(Fault.hang().only(function=25))
    with pytest.raises(
        CallTimeout, match=r"test\.kitchen@1\.divide\(\) \(function 25\): no answer within 0.3 s"
    ):
        quick.divide(6, 3)  # the runtime's call_timeout is None: without the option this would hang
    with pytest.raises(ValueError, match=r"with_options\(timeout=0.5\)"):
        kitchen.with_options(timeout=0)


def test_signatures_show_python_types_and_real_defaults(rt, bundle_dir):
    kitchen = rt.load_bundle(bundle_dir("kitchen_sink")).contract("test.kitchen")
    signature = inspect.signature(kitchen.describe)
    assert [p.annotation for p in signature.parameters.values()] == [str, int, kitchen.types.Access]
    assert signature.return_annotation is str
    assert inspect.signature(kitchen.mixed).return_annotation is kitchen.types.Mixed
    raw = str(inspect.signature(kitchen.contract.call))
    assert "object at" not in raw
    assert "timeout: 'float | _Default | None' = <Runtime call_timeout>" in raw
