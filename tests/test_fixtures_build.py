"""Tests of the fixture bundle builder and of the fixtures' static shape.

No plugin code runs here: libraries are opened with dlopen (which runs no
fixture code) and only ``polyplug_abi_version`` is called. Loading the bundles
for real is the worker's tests' business.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from polyplug_isolated._fixtures import (
    FIXTURES_DIR,
    FixtureBuildError,
    build_fixtures,
    fixture_names,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

INIT = "polyplug_init"
ABI_VERSION = "polyplug_abi_version"

# fixture -> (exported entry points, value polyplug_abi_version returns or None)
EXPECTED_EXPORTS: dict[str, tuple[set[str], int | None]] = {
    "adder": ({ABI_VERSION, INIT}, 1),
    "cross_caller": ({ABI_VERSION, INIT}, 1),
    "cross_target": ({ABI_VERSION, INIT}, 1),
    "cross_target_v2": ({ABI_VERSION, INIT}, 1),
    "depender": ({ABI_VERSION, INIT}, 1),
    "error_chain": ({ABI_VERSION, INIT}, 1),
    "reporter": ({ABI_VERSION, INIT}, 1),
    "crasher": ({ABI_VERSION, INIT}, 1),
    "daemon": ({ABI_VERSION, INIT}, 1),
    "environ": ({ABI_VERSION, INIT}, 1),
    "error_plugin": ({ABI_VERSION, INIT}, 1),
    "escape": ({ABI_VERSION, INIT}, 1),
    "init_crash": ({ABI_VERSION, INIT}, 1),
    "hostile": ({ABI_VERSION, INIT}, 1),
    "init_hang": ({ABI_VERSION, INIT}, 1),
    "kitchen_sink": ({ABI_VERSION, INIT}, 1),
    "multi": ({ABI_VERSION, INIT}, 1),
    "no_abi_version": ({INIT}, None),
    "no_init": ({ABI_VERSION}, 1),
    "old_abi": ({ABI_VERSION, INIT}, 7),
    "oversized": ({ABI_VERSION, INIT}, 1),
    "payload": ({ABI_VERSION, INIT}, 1),
    "probe_v1": ({ABI_VERSION, INIT}, 1),
    "probe_v2": ({ABI_VERSION, INIT}, 1),
    "register_fail": ({ABI_VERSION, INIT}, 1),
    "shapes": ({ABI_VERSION, INIT}, 1),
    "slow": ({ABI_VERSION, INIT}, 1),
    "threads": ({ABI_VERSION, INIT}, 1),
    "wellbehaved": ({ABI_VERSION, INIT}, 1),
    "unruly": ({ABI_VERSION, INIT}, 1),
}

# contract name -> function count, for every fixture that registers contracts
EXPECTED_CONTRACTS: dict[str, dict[str, int]] = {
    "adder": {"test.add": 4},
    "cross_caller": {"cross.caller": 5},
    "cross_target": {"cross.target": 2},
    "cross_target_v2": {"cross.target": 2},
    "depender": {"depender.test": 3},
    "error_chain": {"error.test": 3},
    "reporter": {"reporter.test": 3},
    "crasher": {"test.crash": 5},
    "daemon": {"test.daemon": 1},
    "environ": {"test.env": 5},
    "escape": {"test.escape": 6},
    "hostile": {"test.hostile": 6},
    "kitchen_sink": {"test.kitchen": 28, "test.counter": 5},
    "multi": {"test.mul": 1, "test.sub": 1},
    "oversized": {"test.oversized": 1},
    "payload": {"test.payload": 3},
    "probe_v1": {"test.probe": 2},
    "probe_v2": {"test.probe": 2},
    "register_fail": {"regfail.add": 1},
    "shapes": {"test.shapes": 4},
    "slow": {"test.slow": 2},
    "threads": {"test.threads": 4},
    "wellbehaved": {"test.wellbehaved": 5},
    "unruly": {"test.unruly": 3},
}

# no api.toml where the IDL cannot say it (payload's length-prefixed blob,
# environ's char arrays) or nobody generates bindings (probes, hostile, containment's, oversized)
WITH_API = set(EXPECTED_CONTRACTS) - {
    "payload",
    "environ",
    "hostile",
    "probe_v1",
    "probe_v2",
    "escape",
    "daemon",
    "wellbehaved",
    "oversized",
}

# directory -> the fixture whose source it builds again (with other #defines)
SHARED_SOURCES = {"probe_v2": "probe_v1", "cross_target_v2": "cross_target"}

# directory -> (bundle name, version) for the builds of one bundle
VARIANTS = {
    "probe_v1": ("probe", "1.0.0"),
    "probe_v2": ("probe", "1.1.0"),
    "cross_target_v2": ("cross_target", "1.1.0"),
}


def fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def read_toml(path: Path) -> dict:
    with path.open("rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fixtures(out_dir=tmp_path_factory.mktemp("fixtures"))


def test_fnv1a64_reference_values() -> None:
    assert fnv1a64("test_plugin") == 11175554700064995833
    assert fnv1a64("guest_contract:test.add@1") == 0x40244DF59FCBECB6


def test_fixture_names_lists_every_fixture() -> None:
    assert fixture_names() == sorted(EXPECTED_EXPORTS)


def test_every_bundle_is_built_with_its_manifest(built: Path) -> None:
    for name in fixture_names():
        bundle = built / name
        assert (bundle / f"lib{name}.so").is_file()
        assert (bundle / "manifest.toml").read_bytes() == (FIXTURES_DIR / name / "manifest.toml").read_bytes()
        has_api = (FIXTURES_DIR / name / "api.toml").is_file()
        assert (bundle / "api.toml").is_file() == has_api
        assert has_api == (name in WITH_API)
    assert not [p for p in built.iterdir() if p.is_dir() and p.name.startswith(".")]


@pytest.mark.parametrize("name", sorted(EXPECTED_EXPORTS))
def test_exports(built: Path, name: str) -> None:
    exports, abi_version = EXPECTED_EXPORTS[name]
    lib = ctypes.CDLL(str(built / name / f"lib{name}.so"), mode=ctypes.RTLD_LOCAL)
    assert hasattr(lib, INIT) == (INIT in exports)
    assert hasattr(lib, ABI_VERSION) == (ABI_VERSION in exports)
    if abi_version is not None:
        fn = lib.polyplug_abi_version
        fn.restype, fn.argtypes = ctypes.c_uint32, []
        assert fn() == abi_version


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm")
@pytest.mark.parametrize("name", sorted(EXPECTED_EXPORTS))
def test_nothing_else_is_exported(built: Path, name: str) -> None:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(built / name / f"lib{name}.so")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    symbols = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert symbols == EXPECTED_EXPORTS[name][0]


@pytest.mark.parametrize("name", sorted(EXPECTED_EXPORTS))
def test_manifest(name: str) -> None:
    manifest = read_toml(FIXTURES_DIR / name / "manifest.toml")
    contracts = EXPECTED_CONTRACTS.get(name, {})
    bundle, version = VARIANTS.get(name, (name, "1.0.0"))
    assert manifest["name"] == bundle
    assert manifest["id"] == fnv1a64(bundle)
    assert manifest["version"] == version
    assert manifest["loader"] == "native"
    assert manifest["file"] == {"linux": {"x86_64": f"lib{name}.so", "aarch64": f"lib{name}.so"}}
    assert manifest["provides"] == list(contracts)
    assert manifest["function_count"] == {f"{c}@1": n for c, n in contracts.items()}


@pytest.mark.parametrize("name", sorted(WITH_API))
def test_api_toml_matches_manifest(name: str) -> None:
    api = read_toml(FIXTURES_DIR / name / "api.toml")
    declared = {c["name"]: len(c["functions"]) for c in api["contract"]}
    assert declared == EXPECTED_CONTRACTS[name]
    assert {c["version"] for c in api["contract"]} == {"1.0.0"}


@pytest.mark.parametrize("name", sorted(EXPECTED_CONTRACTS))
def test_contract_id_constants(name: str) -> None:
    source_name = SHARED_SOURCES.get(name, name)
    source = (FIXTURES_DIR / source_name / f"{source_name}.c").read_text()
    found = re.findall(
        r'/\* fnv1a64\("(guest_contract:([\w.]+)@1)"\) \*/\s*#define \w+ (0x[0-9A-F]{16})ull',
        source,
    )
    assert {contract for _, contract, _ in found} == set(EXPECTED_CONTRACTS[name])
    for text, _, constant in found:
        assert int(constant, 16) == fnv1a64(text)


def test_second_build_does_not_recompile(built: Path) -> None:
    libs = {name: built / name / f"lib{name}.so" for name in fixture_names()}
    before = {name: lib.stat().st_mtime_ns for name, lib in libs.items()}
    build_fixtures(out_dir=built)
    assert {name: lib.stat().st_mtime_ns for name, lib in libs.items()} == before


def copy_fixture(name: str, source_dir: Path) -> Path:
    return Path(shutil.copytree(FIXTURES_DIR / name, source_dir / name))


def test_changed_source_is_rebuilt(tmp_path: Path) -> None:
    source = copy_fixture("no_init", tmp_path / "src")
    out = build_fixtures(out_dir=tmp_path / "out", source_dir=tmp_path / "src")
    lib = out / "no_init" / "libno_init.so"
    built_at = lib.stat().st_mtime_ns
    later = built_at + 10**9
    os.utime(source / "no_init.c", ns=(later, later))
    build_fixtures(["no_init"], out_dir=out, source_dir=tmp_path / "src")
    assert lib.stat().st_mtime_ns > built_at


def test_broken_source_raises_naming_the_fixture(tmp_path: Path) -> None:
    source = copy_fixture("adder", tmp_path / "src")
    c_file = source / "adder.c"
    c_file.write_text(c_file.read_text() + "\nthis is not C;\n")
    out = tmp_path / "out"
    with pytest.raises(FixtureBuildError, match="'adder'") as excinfo:
        build_fixtures(["adder"], out_dir=out, source_dir=tmp_path / "src")
    assert excinfo.value.fixture == "adder"
    assert "adder.c" in excinfo.value.stderr
    assert "adder.c" in str(excinfo.value)
    # Neither a half-built bundle nor a staging directory is left behind.
    assert not [p for p in out.iterdir() if p.is_dir()]


def test_rebuild_sweeps_up_after_a_killed_builder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ".no_init.build-dead").mkdir(parents=True)
    (out / ".no_init.build-dead" / "libno_init.so").write_bytes(b"half")
    build_fixtures(["no_init"], out_dir=out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["no_init"]


def test_unknown_fixture_raises(tmp_path: Path) -> None:
    with pytest.raises(FixtureBuildError, match="'nope'"):
        build_fixtures(["nope"], out_dir=tmp_path)


def test_concurrent_builders_produce_one_complete_bundle(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def build() -> None:
        try:
            build_fixtures(["multi"], out_dir=tmp_path)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == [
        "api.toml",
        "libmulti.so",
        "manifest.toml",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["multi"]
