"""[[dependency]]: validated ids, shown at init, missing ones refused, in-use ones kept, reloads cascade."""

from __future__ import annotations

import shutil
import threading

import pytest
from conftest import wait_until

from polyplug_isolated import (
    BundleState,
    LoaderError,
    ManifestError,
    PluginCallError,
    Runtime,
    bundle_id,
    parse_manifest,
)
from polyplug_isolated.errors import DependencyInUse, DependencyNotFound

DEPENDENCY = """
[[dependency]]
kind = "bundle"
contract = "cross.target@1"
min_version = "1.0"
"""


class Logger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def get_level(self) -> int:
        return 0


def depender_with(tmp_path, bundle_dir, extra: str):
    """A copy of the depender bundle whose [[dependency]] is replaced by ``extra``."""
    copy = tmp_path / "depender"
    shutil.copytree(bundle_dir("depender"), copy)
    manifest = (copy / "manifest.toml").read_text()
    (copy / "manifest.toml").write_text(manifest.split("[[dependency]]")[0] + extra)
    return copy


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (DEPENDENCY + "contract_id = 1\n", "declares contract_id 0x0000000000000001 but the canonical id"),
        (DEPENDENCY + 'bundle = "cross_target"\nbundle_id = 7\n', "but bundle 'cross_target' has id"),
        (DEPENDENCY + "bundle_id = 7\n", "`bundle_id` needs `bundle`"),
        (DEPENDENCY.replace('kind = "bundle"\n', ""), "`kind` is required"),
        (DEPENDENCY.replace('min_version = "1.0"\n', ""), "`min_version` is required"),
        (DEPENDENCY.replace('contract = "cross.target@1"\n', ""), "`contract` is required"),
        (DEPENDENCY + "colour = 1\n", "unknown key `colour`"),
    ],
)
def test_dependencies_are_validated(tmp_path, bundle_dir, extra, message):
    with pytest.raises(ManifestError, match="depender") as caught:
        parse_manifest(depender_with(tmp_path, bundle_dir, extra))
    assert message in str(caught.value)


def test_the_reinit_flag_is_a_bool(tmp_path, bundle_dir):
    copy = depender_with(tmp_path, bundle_dir, DEPENDENCY)
    manifest = (copy / "manifest.toml").read_text()
    (copy / "manifest.toml").write_text(manifest.replace("on_dep_reload = true", "on_dep_reload = 1"))
    with pytest.raises(ManifestError, match="`needs_reinit_on_dep_reload` must be true or false"):
        parse_manifest(copy)


def test_declared_ids_are_checked_against_the_names(bundle_dir):
    (dependency,) = parse_manifest(bundle_dir("depender")).dependencies
    assert dependency.contract_id == 8546333330095647132
    assert dependency.bundle_id == bundle_id("cross_target")
    assert dependency.min_version == 1


def test_a_bundle_whose_dependency_is_missing_does_not_load(rt, bundle_dir):
    with pytest.raises(DependencyNotFound, match="dependency not found: contract=cross.target@1"):
        rt.load_bundle(bundle_dir("depender"))
    assert rt.bundles == []
    rt.load_bundle(bundle_dir("adder"))  # a provider of something else does not help
    with pytest.raises(DependencyNotFound):
        rt.load_bundle(bundle_dir("depender"))


def test_init_sees_its_dependencies_and_finds_them(rt, bundle_dir):
    rt.load_bundle(bundle_dir("cross_target"))
    rt.load_bundle(bundle_dir("depender"))
    depender = rt.contract("depender.test")
    assert depender.dependency_count() == 1  # get_dependencies during polyplug_init
    assert depender.target_add(2, 3) == 5  # the handle init's find_guest_contract got


def test_a_bundle_others_depend_on_cannot_be_unloaded(rt, bundle_dir):
    target = rt.load_bundle(bundle_dir("cross_target"))
    rt.load_bundle(bundle_dir("depender"))
    with pytest.raises(
        DependencyInUse, match=r"still-loaded bundles declared a dependency on it: \['depender'\]"
    ):
        rt.unload_bundle(target.id)
    assert target.state is BundleState.READY
    assert rt.contract("depender.test").target_add(1, 1) == 2
    rt.unload_bundle(bundle_id("depender"))
    rt.unload_bundle(target.id)
    assert rt.bundles == []


def test_a_reload_of_the_dependency_reinitialises_its_dependers_in_order(bundle_dir):
    phases: list[tuple[str, str]] = []
    with Runtime(on_reload=lambda p: phases.append((p.type.name, p.bundle_name)), load_timeout=10.0) as rt:
        logger = Logger()
        rt.register_host_contract(logger, api=bundle_dir("depender") / "api.toml")
        rt.load_bundle(bundle_dir("cross_target"))
        rt.load_bundle(bundle_dir("depender"))
        assert logger.lines == ["depender init"]
        depender = rt.contract("depender.test")
        assert depender.target_add(2, 3) == 5

        rt.reload_bundle(bundle_dir("cross_target_v2"))
        assert logger.lines == ["depender init", "depender init"]  # re-initialised, in a fresh worker
        assert phases == [
            ("PREPARING", "cross_target"),
            ("PREPARING", "depender"),
            ("RELOADED", "depender"),
            ("RELOADED", "cross_target"),
        ]
        assert depender.target_add(2, 3) == 1005
        assert depender.dependency_count() == 1


def test_no_call_is_lost_during_the_cascade(rt, bundle_dir):
    rt.load_bundle(bundle_dir("cross_target"))
    rt.load_bundle(bundle_dir("depender"))
    depender = rt.contract("depender.test")
    results: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def call() -> None:
        while not stop.is_set():
            try:
                results.append(depender.target_add(2, 3))
            except (PluginCallError, LoaderError) as exc:  # pragma: no cover - the failure we look for
                failures.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        rt.reload_bundle(bundle_dir("cross_target_v2"))
        before = len(results)
        wait_until(lambda: len(results) >= before + 20)  # calls keep succeeding after the switch
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert set(results) <= {5, 1005}
    assert results[-1] == 1005


def test_during_init_a_bundle_finds_only_what_it_declared(rt, tmp_path, bundle_dir):
    rt.load_bundle(bundle_dir("cross_target"))
    rt.load_bundle(depender_with(tmp_path, bundle_dir, ""))  # the same bundle, no [[dependency]]
    depender = rt.contract("depender.test")
    assert depender.dependency_count() == 0
    with pytest.raises(PluginCallError) as caught:
        depender.target_add(2, 3)  # init's find_guest_contract(cross.target) found nothing
    assert caught.value.code == 4
