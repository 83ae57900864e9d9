"""Host contracts, calls between bundles and dependencies: the same outcomes as polyplug 0.1.3.

Each scenario of _contract_scenarios runs against the real runtime (the
``compare`` extra, in a subprocess: _polyplug_scenarios.py) and against
polyplug_isolated, with the same fixtures and the same ctypes host contract;
their outcomes must be equal, except where the README lists a deliberate
difference (asserted here as such).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

for _package in ("polyplug", "polyplug_abi", "polyplug_loaders_native"):
    if importlib.util.find_spec(_package) is None:
        pytest.skip(
            f"the real polyplug runtime is not installed ({_package} missing): pip install -e '.[compare]'",
            allow_module_level=True,
        )

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _contract_scenarios import SCENARIOS  # noqa: E402

from polyplug_isolated import LoaderError, PluginCallError, Runtime, bundle_id  # noqa: E402

SCENARIO_SCRIPT = Path(__file__).with_name("_polyplug_scenarios.py")


class IsolatedDriver:
    """The Driver of _contract_scenarios over polyplug_isolated."""

    def __init__(self, rt: Runtime, phases: list[tuple[str, str]]):
        self.rt = rt
        self.phases = phases
        self._keep: list[Any] = []

    def register(self, interface: Any) -> None:
        self._keep.append(interface)
        self.rt.register_host_contract(interface)

    def load(self, path: Path) -> str:
        try:
            self.rt.load_bundle(path)
        except LoaderError:
            return "failed"
        return "ok"

    def reload(self, path: Path) -> str:
        try:
            self.rt.reload_bundle(path)
        except LoaderError:
            return "failed"
        return "ok"

    def unload(self, name: str) -> str:
        try:
            self.rt.unload_bundle(bundle_id(name))
        except LoaderError:
            return "refused"
        return "ok"

    def _contract(self, contract_id: int):
        return self.rt.resolve_guest_contract(self.rt.find_guest_contract(contract_id, 0))

    def call_u32(self, contract_id: int, fn: int, args: bytes) -> tuple[int, int]:
        try:
            out = self._contract(contract_id).call(fn, args, 4)
        except PluginCallError as error:
            return error.code, 0
        return 0, int.from_bytes(out, "little")

    def call_error_out(self, contract_id: int, fn: int, args: bytes) -> tuple[int, int, str]:
        typed = self.rt.contract(contract_id)
        name = typed.idl.functions[fn].name
        params = [p.name for p in typed.idl.functions[fn].params]
        values = dict(zip(params, _unpack(args, typed.idl.functions[fn].params), strict=True))
        try:
            out = typed.functions[name](**values)
        except PluginCallError as error:
            return error.code, 0, ""
        return 0, out.code, out.message


def _unpack(args: bytes, params: Any) -> list[int]:
    """The integer fields of an args record, each at its natural alignment."""
    values, at = [], 0
    for param in params:
        size = param.type.size
        at = (at + size - 1) // size * size
        values.append(int.from_bytes(args[at : at + size], "little"))
        at += size
    return values


def _reference(scenario: str, bundles: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCENARIO_SCRIPT), scenario, str(bundles)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"the polyplug 0.1.3 run of {scenario!r} failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.splitlines()[-1])


def _ours(scenario: str, bundles: Path) -> dict[str, Any]:
    phases: list[tuple[str, str]] = []
    with Runtime(on_reload=lambda p: phases.append((p.type.name, p.bundle_name)), load_timeout=10.0) as rt:
        result = SCENARIOS[scenario](IsolatedDriver(rt, phases), bundles)
    return json.loads(json.dumps(result))  # tuples become lists, as from the subprocess


@pytest.mark.parametrize(
    "scenario",
    ["reporter", "reporter_without_logger", "cross", "cross_null_out", "error_chain", "dependencies"],
)
def test_same_outcome_as_polyplug(scenario: str, fixtures_root: Path) -> None:
    assert _ours(scenario, fixtures_root) == _reference(scenario, fixtures_root)


def test_missing_dependency_is_refused_where_polyplug_loads(fixtures_root: Path) -> None:
    """A deliberate difference (README): 0.1.3 loads a bundle whose dependency is missing."""
    assert _reference("dependency_missing", fixtures_root) == {"load": "ok"}
    assert _ours("dependency_missing", fixtures_root) == {"load": "failed"}
