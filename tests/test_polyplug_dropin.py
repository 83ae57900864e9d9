"""The one-line switch: polyplug hosts run unchanged on ``polyplug_isolated.polyplug``.

Every scenario is one host script, run against the real polyplug 0.1.3 and
against the switched import (tests/_dropin.py), with the same outcomes
expected; where polyplug 0.1.3 is wrong the test says so and asserts the
correct behaviour here (README, "Differences from polyplug").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from polyplug_isolated import bundle_id
from tests._dropin import PROBE_API, ROOT, bundle_copy, needs_polyplug, new_key, run_host

pytestmark = pytest.mark.timeout(180)


def test_signed_host_runs_unchanged_after_the_one_line_switch(bundle_dir, tmp_path: Path):
    needs_polyplug()
    seed, public = new_key()
    adder = bundle_copy(bundle_dir("adder"), tmp_path / "adder", key=seed)
    v1 = bundle_copy(bundle_dir("probe_v1"), tmp_path / "probe_v1", key=seed, api=PROBE_API)
    v2 = bundle_copy(bundle_dir("probe_v2"), tmp_path / "probe_v2", key=seed, api=PROBE_API)
    unsigned = bundle_copy(bundle_dir("kitchen_sink"), tmp_path / "unsigned")
    args = (public.hex(), str(adder), str(v1), str(v2), str(unsigned))
    script = ROOT / "examples" / "polyplug_host.py"

    isolated = run_host(script, "isolated", *args, tmp_path=tmp_path)
    reference = run_host(script, "polyplug", *args, tmp_path=tmp_path)

    assert isolated == reference
    assert isolated["calls"] == [
        ["add", 0, "", 5],
        ["add_primitive", 0, "", 42],
        ["version", 0, "", "1.0.0"],
        ["reset", 0, ""],
        ["probe.generation", 0, "", 1],
        ["probe.generation after reload", 0, "", 2],
        ["add after unload", 4, "contract is gone (NotFound)"],
    ]
    assert isolated["phases"] == [
        ["Preparing", "probe", None, [True, False, False, False]],
        ["Reloaded", "probe", None, [False, True, False, False]],
        ["Unloading", "adder", None, [False, False, False, True]],
    ]
    assert isolated["unsigned"] == "not signed"
    assert isolated["find after unload"] == 0xFFFFFFFF


def test_surface_errors_phases_scanner_and_function_table_calls_match_polyplug(bundle_dir, tmp_path: Path):
    needs_polyplug()
    scan = tmp_path / "scan"
    scan.mkdir()
    for name in ("adder", "kitchen_sink", "probe_v2"):
        bundle_copy(bundle_dir(name), scan / name)
    (scan / "not_a_bundle").mkdir()
    args = (str(bundle_dir("adder")), str(bundle_dir("kitchen_sink")), str(scan))
    script = ROOT / "tests" / "polyplug_hosts" / "surface.py"

    isolated = run_host(script, "isolated", *args, tmp_path=tmp_path)
    reference = run_host(script, "polyplug", *args, tmp_path=tmp_path)

    assert isolated == reference
    assert isolated["register twice"] == ["RuntimeError", 'duplicate loader "native"']
    assert isolated["resolve null handle"] == ["RuntimeError", "null plugin handle"]
    assert isolated["resolve stale"] == ["ok", None]
    assert isolated["kitchen"][:3] == [[0, "", "hello"], [0, "", "job x3 [r-x]"], [0, "", "abcd"]]
    assert isolated["kitchen"][5][0] == 256  # the plugin's own AbiError code, and its message
    assert isolated["counter"] == [[0, "", 1], [0, "", 2], [0, "", 1], [0, "", 3]]
    assert isolated["phases"] == [["Unloading", "adder", None]]


def test_signature_policies_match_polyplug(bundle_dir, tmp_path: Path):
    needs_polyplug()
    seed, public = new_key()
    other_seed, _ = new_key()
    adder = bundle_dir("adder")
    unsigned = bundle_copy(adder, tmp_path / "unsigned")
    signed = bundle_copy(adder, tmp_path / "signed", key=seed)
    tampered = bundle_copy(adder, tmp_path / "tampered", key=seed)
    with open(tampered / "manifest.toml", "a") as manifest:
        manifest.write("# changed after signing\n")
    added = bundle_copy(adder, tmp_path / "added", key=seed)
    (added / "notes.txt").write_text("added after signing")
    wrong = bundle_copy(adder, tmp_path / "wrong", key=other_seed)
    args = (public.hex(), *(str(p) for p in (unsigned, signed, tampered, added, wrong)))
    script = ROOT / "tests" / "polyplug_hosts" / "signatures.py"

    isolated = run_host(script, "isolated", *args, tmp_path=tmp_path)
    reference = run_host(script, "polyplug", *args, tmp_path=tmp_path)

    assert isolated == reference
    assert isolated["Required, allowlist"] == [
        "unsigned",
        "loaded",
        "bad signature",
        "bad signature",
        "untrusted key",
    ]
    assert isolated["Required, trust on first use"] == [
        "unsigned",
        "loaded",
        "bad signature",
        "bad signature",
        "loaded",
    ]
    assert isolated["WarnOnly, allowlist"] == ["loaded"] * 5
    assert isolated["Off"] == ["loaded"] * 5
    assert isolated["Required from the config"] == isolated["Required, allowlist"]


def test_hot_reload_and_compatibility_match_polyplug(bundle_dir, tmp_path: Path):
    needs_polyplug()
    adder = bundle_dir("adder")
    manifest = (adder / "manifest.toml").read_text()
    no_key = bundle_copy(adder, tmp_path / "no_key")
    (no_key / "manifest.toml").write_text(manifest.split("[function_count]")[0])
    wrong = bundle_copy(adder, tmp_path / "wrong")
    (wrong / "manifest.toml").write_text(manifest.replace('"test.add@1" = 4', '"test.add@1" = 9'))
    v1 = bundle_copy(bundle_dir("probe_v1"), tmp_path / "v1", api=PROBE_API)
    v2 = bundle_copy(bundle_dir("probe_v2"), tmp_path / "v2", api=PROBE_API)
    args = tuple(str(p) for p in (adder, no_key, wrong, v1, v2))
    script = ROOT / "tests" / "polyplug_hosts" / "config.py"

    isolated = run_host(script, "isolated", *args, tmp_path=tmp_path)
    reference = run_host(script, "polyplug", *args, tmp_path=tmp_path)

    assert isolated == reference
    # (load, reload) of the bundle missing its key, then of the one with a wrong count:
    assert isolated["Strict"] == ["function count mismatch", "ok", "function count mismatch", "ok"]
    assert isolated["Relaxed"] == ["ok"] * 4
    assert isolated["Yolo"] == ["ok"] * 4
    assert isolated["calls"] == [[0, "", 1], [0, "", 2]]
    assert isolated["same handle"] is True
    assert isolated["phases"] == [
        ["Preparing", "probe", None],
        ["Reloaded", "probe", None],
        ["Preparing", "probe", None],
        ["Reloaded", "probe", None],
    ]


def test_where_polyplug_is_wrong_the_switched_host_gets_the_right_behaviour(bundle_dir, tmp_path: Path):
    needs_polyplug()
    seed, public = new_key()
    other, _ = new_key()
    adder = bundle_dir("adder")
    twin = bundle_copy(adder, tmp_path / "twin")
    manifest = (adder / "manifest.toml").read_text()
    (twin / "manifest.toml").write_text(
        manifest.replace('name = "adder"', 'name = "adder_twin"').replace(
            "2548453539782603331", str(bundle_id("adder_twin"))
        )
    )
    # Same bundle name, a library whose init registers a contract and then fails.
    failing = bundle_copy(bundle_dir("register_fail"), tmp_path / "failing")
    (failing / "manifest.toml").write_text(
        manifest.replace("libadder.so", "libregister_fail.so").split("[function_count]")[0]
    )
    signed = bundle_copy(adder, tmp_path / "signed", key=seed)
    other_signed = bundle_copy(adder, tmp_path / "other_signed", key=other)
    unsigned = bundle_copy(adder, tmp_path / "unsigned")
    args = (public.hex(), *(str(p) for p in (adder, twin, failing, signed, unsigned, other_signed)))
    script = ROOT / "tests" / "polyplug_hosts" / "differences.py"

    isolated = run_host(script, "isolated", *args, tmp_path=tmp_path)
    reference = run_host(script, "polyplug", *args, tmp_path=tmp_path)

    assert isolated == {
        "find_all": [[0, 0], [1, 0]],
        "load a loaded bundle": "refused",
        "its contract afterwards": 42,
        "failed reload": "refused",
        "the old contract afterwards": 42,
        "reload to an unsigned bundle": "refused",
        "reload signed by another key, no allowlist": "refused",
        "load without register_native_loader": "ok",
    }
    # What polyplug 0.1.3 does instead (find_all reads freed memory: its values vary).
    assert reference["load a loaded bundle"] == "refused"
    assert reference["its contract afterwards"] == "stale"
    assert reference["failed reload"] == "refused"
    assert reference["the old contract afterwards"] == "stale"
    assert reference["reload to an unsigned bundle"] == "ok"
    assert reference["reload signed by another key, no allowlist"] == "ok"
    assert reference["load without register_native_loader"] == "refused"
