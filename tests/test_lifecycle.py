"""Load, find, resolve, call, reload and unload against real workers."""

from __future__ import annotations

import logging
import struct

import psutil
import pytest
from conftest import ADD, CRASH, MUL, SUB, as_u32, pair, u32
from polyplug_isolated.bench._scale import copies  # the bench's own copies of a fixture

from polyplug_isolated import (
    AbiErrorCode,
    BundleSource,
    BundleState,
    BundleUnavailable,
    IsolatedLoader,
    PayloadTooLarge,
    PluginCallError,
    ReloadPhaseType,
    Runtime,
    StaleHandle,
    bundle_id,
    parse_manifest,
)


def adder_contract(rt, bundle_dir):
    rt.load_bundle(bundle_dir("adder"))
    return rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))


def test_loaded_bundle_describes_itself(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("adder"))
    assert bundle.id == bundle_id("adder")
    assert (bundle.name, bundle.version, bundle.state) == ("adder", "1.0.0", BundleState.READY)
    assert bundle.path == bundle_dir("adder")
    assert psutil.Process(bundle.pid).is_running()
    [info] = bundle.contracts
    assert (info.contract_id, info.name, info.version, info.function_count, info.plugin_name) == (
        ADD,
        "test.add",
        (1, 0, 0),
        4,
        "adder",
    )
    assert bundle.inflight == 0
    assert rt.live_worker_count() == 1


def test_adder_answers_every_function(rt, bundle_dir):
    add = adder_contract(rt, bundle_dir)
    assert as_u32(add.call(0, pair(2, 3), 4)) == 5
    assert as_u32(add.call(1, pair(0xFFFFFFFF, 2), 4)) == 1  # wrapping, as in C
    ptr, length = struct.unpack("<QQ", add.call(2, b"", 16))
    assert length == len("1.0.0") and ptr != 0  # a view into the worker's memory: length is what crosses
    assert add.call(3, b"", 0) == b""


def test_args_may_be_any_contiguous_buffer(rt, bundle_dir):
    add = adder_contract(rt, bundle_dir)
    assert as_u32(add.call(0, bytearray(pair(7, 8)), 4)) == 15
    assert as_u32(add.call(0, memoryview(pair(7, 9)), 4)) == 16
    with pytest.raises(TypeError, match="args must be bytes"):
        add.call(0, "not bytes", 4)
    with pytest.raises(ValueError, match="out_size"):
        add.call(0, pair(1, 2), -1)


def test_find_respects_min_version_and_lists_all_providers(rt, bundle_dir):
    rt.load_bundle(bundle_dir("adder"))
    assert rt.find_guest_contract(ADD, 1).found
    assert not rt.find_guest_contract(ADD, 2).found
    assert rt.find_guest_contract(ADD, 2).index == 0xFFFFFFFF
    assert rt.find_all_by_contract(ADD, 1) == [rt.find_guest_contract(ADD, 1)]
    with pytest.raises(StaleHandle):
        rt.resolve_guest_contract(rt.find_guest_contract(ADD, 2))


def test_one_bundle_may_register_two_contracts(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("multi"))
    mul = rt.resolve_guest_contract(rt.find_guest_contract(MUL, 1))
    sub = rt.resolve_guest_contract(rt.find_guest_contract(SUB, 1))
    assert as_u32(mul.call(0, pair(6, 7), 4)) == 42
    assert as_u32(sub.call(0, pair(2, 3), 4)) == 0xFFFFFFFF
    assert {c.plugin_name for c in bundle.contracts} == {"multiplier", "subtractor"}


def test_plugin_error_carries_code_and_message(rt, bundle_dir):
    rt.load_bundle(bundle_dir("crasher"))
    crasher = rt.resolve_guest_contract(rt.find_guest_contract(CRASH, 1))
    with pytest.raises(PluginCallError) as caught:
        crasher.call(3, u32(300), 4)
    assert caught.value.code == 300
    assert caught.value.message == "crasher: failing with code 300 on request"
    assert "bundle 'crasher'" in str(caught.value) and "function 3" in str(caught.value)
    assert as_u32(crasher.call(4, u32(41), 4)) == 42  # the worker is fine


def test_function_index_past_the_contract_is_function_not_available(rt, bundle_dir):
    add = adder_contract(rt, bundle_dir)
    for index in (4, -1, 2**40):
        with pytest.raises(PluginCallError) as caught:
            add.call(index, b"", 0)
        assert caught.value.code == AbiErrorCode.FUNCTION_NOT_AVAILABLE


def test_payload_beyond_the_arena_is_refused_before_sending(bundle_dir):
    with Runtime(payload_capacity=1024, arena_capacity=4096) as rt:
        add = adder_contract(rt, bundle_dir)
        with pytest.raises(PayloadTooLarge, match="4096-byte arena"):
            add.call(0, bytes(4097), 4)
        assert as_u32(add.call(0, pair(1, 1), 4)) == 2


def test_host_api_log_reaches_python_logging(rt, bundle_dir, caplog):
    with caplog.at_level(logging.INFO, logger="polyplug_isolated.bundle.adder"):
        rt.load_bundle(bundle_dir("adder"))
        rt.close()  # the log frame precedes the ready frame, so it has been handled
    records = [r for r in caplog.records if r.name == "polyplug_isolated.bundle.adder"]
    assert any(f"adder loaded from {bundle_dir('adder')}" in r.getMessage() for r in records)


def test_unload_stops_the_worker_and_stales_handles(rt, bundle_dir):
    add = adder_contract(rt, bundle_dir)
    bundle = add.bundle
    handle = rt.find_guest_contract(ADD, 1)
    worker = bundle.proxy.process
    rt.unload_bundle(bundle.id)
    assert worker.returncode == 0  # it dlclosed and exited by itself
    assert not psutil.pid_exists(worker.pid) or psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE
    assert bundle.state is BundleState.UNLOADED
    assert rt.live_worker_count() == 0
    with pytest.raises(StaleHandle, match="stale plugin handle"):
        rt.resolve_guest_contract(handle)
    with pytest.raises(BundleUnavailable, match="bundle 'adder' is UNLOADED"):
        add.call(0, pair(1, 2), 4)
    assert not rt.find_guest_contract(ADD, 1).found


def test_loading_again_after_unload_gets_a_new_generation(rt, bundle_dir):
    rt.load_bundle(bundle_dir("adder"))
    first = rt.find_guest_contract(ADD, 1)
    rt.unload_bundle(bundle_id("adder"))
    rt.load_bundle(bundle_dir("adder"))
    second = rt.find_guest_contract(ADD, 1)
    assert second.index == first.index and second.generation == first.generation + 1
    with pytest.raises(StaleHandle):
        rt.resolve_guest_contract(first)


def test_a_new_contract_takes_the_lowest_vacated_slot(rt, bundle_dir, tmp_path):
    first, _, last, later, latest = (
        rt.load_bundle(path) if index < 3 else path
        for index, path in enumerate(copies(bundle_dir("adder"), tmp_path, 5))
    )
    assert [(h.index, h.generation) for h in rt.find_all_by_contract(ADD, 1)] == [(0, 0), (1, 0), (2, 0)]
    rt.unload_bundle(first)
    rt.unload_bundle(last)  # vacated last, yet not taken first
    rt.load_bundle(later)
    assert [(h.index, h.generation) for h in rt.find_all_by_contract(ADD, 1)] == [(0, 1), (1, 0)]
    rt.load_bundle(latest)
    assert [(h.index, h.generation) for h in rt.find_all_by_contract(ADD, 1)] == [(0, 1), (1, 0), (2, 1)]


def test_unloading_an_unknown_bundle_is_a_loader_error(rt):
    from polyplug_isolated import LoaderError

    with pytest.raises(LoaderError, match="no bundle with id 42"):
        rt.unload_bundle(42)


def test_loading_the_same_bundle_twice_replaces_the_worker(bundle_dir):
    phases = []
    with Runtime(on_reload=phases.append) as rt:
        add = adder_contract(rt, bundle_dir)
        handle = rt.find_guest_contract(ADD, 1)
        old = add.bundle.proxy.process
        again = rt.load_bundle(bundle_dir("adder"))
        assert again is add.bundle
        # Drained, dlclosed, exited: in the background, the reload returned once the new one served.
        assert old.exited.wait(10) and old.returncode == 0
        assert again.pid != old.pid
        assert rt.find_guest_contract(ADD, 1) == handle  # the handle stays valid
        assert as_u32(add.call(0, pair(20, 22), 4)) == 42  # and routes to the new worker
        assert rt.live_worker_count() == 1
    assert [p.type for p in phases] == [
        ReloadPhaseType.PREPARING,
        ReloadPhaseType.RELOADED,
        ReloadPhaseType.UNLOADING,
    ]


def test_failed_reload_keeps_the_old_worker_serving(bundle_dir, tmp_path):
    import shutil

    phases = []
    with Runtime(on_reload=phases.append) as rt:
        bundle_path = tmp_path / "adder"
        shutil.copytree(bundle_dir("adder"), bundle_path)
        add = adder_contract(rt, lambda _: bundle_path)
        old_pid = add.bundle.pid
        # Replaced by rename, as deployments must: truncating a mapped library
        # in place would SIGBUS the worker that serves it.
        (bundle_path / "libadder.so.new").write_text("garbage")
        (bundle_path / "libadder.so.new").replace(bundle_path / "libadder.so")
        from polyplug_isolated import InitFailed

        with pytest.raises(InitFailed):
            rt.reload_bundle(bundle_path)
        assert add.bundle.pid == old_pid and add.bundle.state is BundleState.READY
        assert as_u32(add.call(0, pair(1, 2), 4)) == 3
        failed = [p for p in phases if p.type is ReloadPhaseType.FAILED]
        assert failed and "failed to load plugin library" in failed[0].reason
        assert failed[0].bundle_name == "adder" and failed[0].bundle_id == bundle_id("adder")


def test_isolated_loader_mirrors_the_seed_loader(rt, bundle_dir):
    loader = IsolatedLoader()
    assert loader.loader_name() == "native"
    assert loader.supports_hot_reload() is True
    manifest = parse_manifest(bundle_dir("adder"))
    bundle = loader.load(manifest, BundleSource.path(bundle_dir("adder")), rt)
    assert loader.live_worker_count() == 1
    first_pid = bundle.pid
    loader.reload(manifest, rt)
    assert bundle.pid != first_pid and loader.live_worker_count() == 1
    loader.unload(bundle.id, rt)
    assert loader.live_worker_count() == 0


def test_close_is_idempotent_and_refuses_new_loads(bundle_dir):
    from polyplug_isolated import LoaderError

    rt = Runtime()
    rt.load_bundle(bundle_dir("adder"))
    rt.close()
    rt.close()
    assert rt.live_worker_count() == 0
    with pytest.raises(LoaderError, match="closed"):
        rt.load_bundle(bundle_dir("adder"))
