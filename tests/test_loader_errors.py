"""Every loader error of ABI.md's table, against real workers and real fixtures.

Each failed load must leave nothing behind (no process, segment or
registration: the autouse leak guard checks the first two) and the host must
go on loading and calling other bundles.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import psutil
import pytest
from conftest import ADD, pair

from polyplug_isolated import (
    BundleSource,
    InitFailed,
    InitSymbolMissing,
    IsolatedLoader,
    LoaderError,
    Runtime,
    UnsupportedBundleSource,
    guest_contract_id,
    parse_manifest,
)

# fixture -> (error class, text the message must contain)
LOAD_FAILURES = {
    "error_plugin": (InitFailed, "polyplug_init failed: error_plugin: init refused on purpose"),
    "register_fail": (InitFailed, "register_fail: failing after registration"),
    "no_init": (InitSymbolMissing, "init symbol missing"),
    "no_abi_version": (InitFailed, "missing symbol 'polyplug_abi_version'"),
    "old_abi": (InitFailed, "ABI version mismatch in"),
    "init_crash": (InitFailed, "SIGSEGV"),
}


def assert_host_still_works(rt: Runtime, bundle_dir) -> None:
    rt.load_bundle(bundle_dir("adder"))
    contract = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
    assert contract.call(1, pair(40, 2), 4) == (42).to_bytes(4, "little")


@pytest.mark.parametrize("name", sorted(LOAD_FAILURES))
def test_load_failure_is_typed_and_leaves_nothing(rt, bundle_dir, name):
    error, text = LOAD_FAILURES[name]
    with pytest.raises(error) as caught:
        rt.load_bundle(bundle_dir(name))
    assert text in str(caught.value)
    assert f"bundle {name!r}" in str(caught.value)
    assert caught.value.bundle == name
    assert rt.bundles == []
    assert rt.live_worker_count() == 0
    assert_host_still_works(rt, bundle_dir)


def test_abi_mismatch_reports_both_versions(rt, bundle_dir):
    with pytest.raises(InitFailed, match=r"expected=1, found=7"):
        rt.load_bundle(bundle_dir("old_abi"))


def test_init_crash_quotes_the_workers_last_output(rt, bundle_dir):
    with pytest.raises(InitFailed) as caught:
        rt.load_bundle(bundle_dir("init_crash"))
    assert "Segmentation fault" in str(caught.value)


def test_registrations_of_a_failed_init_are_not_resolvable(rt, bundle_dir):
    with pytest.raises(InitFailed):
        rt.load_bundle(bundle_dir("register_fail"))
    handle = rt.find_guest_contract(guest_contract_id("regfail.add", 1), 0)
    assert not handle.found
    assert rt.find_all_by_contract(guest_contract_id("regfail.add", 1), 0) == []


def test_init_hang_is_killed_after_the_load_timeout(bundle_dir):
    with Runtime(load_timeout=0.5) as rt:
        with pytest.raises(InitFailed, match=r"did not finish within 0.5 s"):
            rt.load_bundle(bundle_dir("init_hang"))
        assert rt.live_worker_count() == 0
        assert_host_still_works(rt, bundle_dir)


def test_a_worker_that_hangs_up_its_control_socket_in_init_is_killed_at_once(bundle_dir):
    """It lives on but can send nothing more: the load fails now, not at the load_timeout."""
    with Runtime(load_timeout=30.0) as rt:
        started = time.monotonic()
        with pytest.raises(InitFailed, match="closed its control socket"):
            rt.load_bundle(bundle_dir("init_hang"), env={"POLYPLUG_TEST_HANG_UP": "1"})
        assert time.monotonic() - started < 10.0
        assert rt.live_worker_count() == 0


def test_a_worker_writing_more_than_a_pipe_holds_in_init_loads_and_all_of_it_is_logged(
    bundle_dir, tmp_path, caplog
):
    """The monitor reads a load's output while the load waits: the loading thread hands the
    worker over at the first byte (or a full pipe would block polyplug_init for good)."""
    caplog.set_level(logging.INFO, logger="polyplug_isolated.bundle")
    chatter = 1 << 18  # four pipes' worth, in lines of 64 bytes
    env = {"POLYPLUG_TEST_CHATTER": str(chatter), "POLYPLUG_TEST_HANG_IF": str(tmp_path / "absent")}
    with Runtime(load_timeout=5.0) as rt:
        rt.load_bundle(bundle_dir("init_hang"), env=env)
        assert rt.live_worker_count() == 1
    lines = [
        r for r in caplog.records if r.name.startswith("polyplug_isolated.bundle.") and "...." in r.message
    ]
    assert len(lines) == chatter // 64


def copy_bundle(bundle_dir, name: str, target: Path) -> Path:
    shutil.copytree(bundle_dir(name), target)
    return target


def test_dlopen_failure_names_the_library_and_the_reason(rt, bundle_dir, tmp_path):
    bundle = copy_bundle(bundle_dir, "adder", tmp_path / "adder")
    (bundle / "libadder.so").write_text("this is not an ELF file\n")
    with pytest.raises(InitFailed, match=r"failed to load plugin library at .*libadder\.so: .*"):
        rt.load_bundle(bundle)
    assert_host_still_works(rt, bundle_dir)


def test_missing_library_file_is_init_failed(rt, bundle_dir, tmp_path):
    bundle = copy_bundle(bundle_dir, "adder", tmp_path / "adder")
    (bundle / "libadder.so").unlink()
    with pytest.raises(InitFailed, match=r"failed to load plugin library at .*: no such file"):
        rt.load_bundle(bundle)


def test_function_count_disagreement_fails_with_both_numbers(rt, bundle_dir, tmp_path):
    bundle = copy_bundle(bundle_dir, "adder", tmp_path / "adder")
    manifest = bundle / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('"test.add@1" = 4', '"test.add@1" = 3'))
    with pytest.raises(
        InitFailed, match=r"function count mismatch for contract `test.add@1`: expected=3.*found=4"
    ):
        rt.load_bundle(bundle)
    assert not rt.find_guest_contract(ADD, 1).found
    assert rt.live_worker_count() == 0


def test_non_utf8_bundle_path_is_rejected(rt, bundle_dir, tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"adder-\xff")
    shutil.copytree(bundle_dir("adder"), os.fsdecode(raw))
    with pytest.raises(InitFailed, match="bundle path is not valid UTF-8"):
        rt.load_bundle(os.fsdecode(raw))
    assert rt.live_worker_count() == 0


@pytest.mark.parametrize(
    "source", [BundleSource.code("print('hi')"), BundleSource.bytes(b"\x7fELF")], ids=["code", "bytes"]
)
def test_code_and_bytes_sources_are_unsupported(rt, bundle_dir, source):
    loader = IsolatedLoader()
    manifest = parse_manifest(bundle_dir("adder"))
    with pytest.raises(UnsupportedBundleSource, match=f"cannot load a bundle from {source.kind}"):
        loader.load(manifest, source, rt)
    assert loader.live_worker_count() == 0


def test_every_loader_error_is_a_loader_error():
    for error, _ in LOAD_FAILURES.values():
        assert issubclass(error, LoaderError)


def test_a_crash_in_init_fails_the_load_at_once_while_a_child_holds_the_control_socket(bundle_dir, tmp_path):
    """The handshake reader wakes on the worker's exit too: a process the plugin forked keeps the
    socket open (nothing kills it without containment), so no EOF would come for 3 s."""
    pid_file = tmp_path / "child.pid"
    with Runtime(containment=False, load_timeout=30.0) as rt:
        started = time.monotonic()
        with pytest.raises(InitFailed, match="SIGSEGV"):
            rt.load_bundle(bundle_dir("init_crash"), env={"POLYPLUG_TEST_HOLD_FDS": str(pid_file)})
        took = time.monotonic() - started
        child = psutil.Process(int(pid_file.read_text()))
        assert child.is_running()  # it still held the socket when the load failed
        child.wait(10)
    assert took < 2.0, f"the load failed only after {took:.1f} s"
