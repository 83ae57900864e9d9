"""polyplug's RuntimeConfig on the switched runtime: log and log_max_level, restarts, bad values."""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
from pathlib import Path

import pytest

from polyplug_isolated import Fault, RestartPolicy, guest_contract_id

polyplug = pytest.importorskip("polyplug_isolated.polyplug")
abi = pytest.importorskip("polyplug_abi")
pytest.importorskip("cryptography")

from tests.conftest import wait_until  # noqa: E402


def log_config(max_level: int, compatibility: int = 1):
    """A RuntimeConfig whose log callback (a C function pointer, as polyplug's) records what it gets."""
    seen: list[tuple[int, str, str]] = []
    config = abi.RuntimeConfig()
    config.compatibility = compatibility
    config.log_max_level = max_level

    def record(_user_data, level, scope, message):
        seen.append(
            (
                level,
                ctypes.string_at(scope.ptr, scope.len).decode(),
                ctypes.string_at(message.ptr, message.len).decode(),
            )
        )

    config.log = type(config.log)(record)
    return config, seen


@pytest.fixture
def no_count_key(bundle_dir, tmp_path: Path) -> Path:
    bundle = Path(shutil.copytree(bundle_dir("adder"), tmp_path / "adder"))
    manifest = bundle / "manifest.toml"
    manifest.write_text(manifest.read_text().split("[function_count]")[0])
    return bundle


def test_relaxed_and_warn_only_warnings_reach_the_log_callback(no_count_key: Path):
    config, seen = log_config(max_level=abi.LogLevel.Warn)
    with polyplug.Runtime(config=config, signature_policy=abi.SignaturePolicy.WarnOnly) as rt:
        rt.load_bundle(no_count_key)
    assert seen == [
        (
            2,
            "runtime",
            "bundle `adder`: signature check failed (WarnOnly — continuing): bundle `adder` is not "
            "signed and signature_policy is Required; sign it (a bundle.sig beside its manifest) or "
            "lower the policy",
        ),
        (
            2,
            "runtime",
            'bundle "adder" provides "test.add" but has no function_count entry for key "test.add@1"',
        ),
    ]


def test_log_max_level_filters_what_the_callback_gets(no_count_key: Path):
    config, seen = log_config(max_level=abi.LogLevel.Error)
    with polyplug.Runtime(config=config) as rt:
        rt.load_bundle(no_count_key)
    assert seen == []


def test_a_plugins_host_api_log_reaches_the_log_callback(bundle_dir, caplog):
    config, seen = log_config(max_level=abi.LogLevel.Info)
    caplog.set_level(logging.INFO, "polyplug_isolated.bundle")
    with polyplug.Runtime(config=config) as rt:
        rt.load_bundle(bundle_dir("kitchen_sink"))
        counter = rt.isolated.contract("test.counter")
        counter.instance().close()  # destroy_instance logs through HostApi.log at Info
        wait_until(lambda: any(scope == "kitchen_sink" for _, scope, _ in seen))
    assert (3, "kitchen_sink", "counter 'default' destroyed at 0") in seen


def test_a_restart_changes_the_revision_counter(bundle_dir):
    add = guest_contract_id("test.add", 1)
    with polyplug.Runtime(restart=RestartPolicy(max_restarts=1, backoff=0)) as rt:
        rt.load_bundle(bundle_dir("adder"))
        revision = ctypes.cast(rt.host + 168, ctypes.POINTER(ctypes.c_void_p))[0]
        counter = ctypes.c_uint64.from_address(
            ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(revision)(rt.host)
        )
        before = counter.value
        bundle = rt.isolated.bundles[0]
        bundle.inject(Fault.crash(signal.SIGSEGV).on_call(1))
        with pytest.raises(Exception, match="SIGSEGV"):
            rt.isolated.resolve_guest_contract(rt.isolated.find_guest_contract(add, 1)).call(1, bytes(8), 4)
        wait_until(lambda: counter.value != before)


def test_config_values_polyplug_does_not_define_are_refused():
    config = abi.RuntimeConfig()
    config.compatibility = 7
    with pytest.raises(ValueError, match="Strict .0., Relaxed .1. or Yolo .2."):
        polyplug.Runtime(config=config)
    with pytest.raises(ValueError, match="Off .0., WarnOnly .1. or Required .2."):
        polyplug.Runtime(signature_policy=5)


def test_collecting_the_runtime_closes_its_workers_as_polyplugs_destructor_does(bundle_dir):
    import gc

    import psutil

    def loaded(cycle: bool) -> int:
        rt = polyplug.Runtime(on_reload=(lambda _: rt) if cycle else None)
        rt.load_bundle(bundle_dir("adder"))
        return rt.isolated.bundles[0].pid

    pid = loaded(cycle=False)
    assert not psutil.pid_exists(pid)  # gone with the last reference
    pid = loaded(cycle=True)
    gc.collect()
    assert not psutil.pid_exists(pid)
