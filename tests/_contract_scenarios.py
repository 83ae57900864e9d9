"""Scenarios of host contracts, calls between bundles and dependencies, for any runtime.

Each scenario drives a ``Driver`` (polyplug 0.1.3 in a subprocess, see
_polyplug_scenarios.py, or polyplug_isolated in the test process) through the
same steps and returns what it observed as plain data, so the two runtimes'
outcomes can be compared for equality.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Protocol

from _host_logger import LoggerState, logger_interface

CROSS_TARGET = 0x769AACE2206EA99C
CROSS_CALLER = 0xB453CCE003612A92
REPORTER = 0x63C400BA21711992
ERROR_TEST = 0x1DBC5520D2A67253
DEPENDER = 0x308F9BC70480D11E
UNKNOWN = 0x0123456789ABCDEF


class Driver(Protocol):
    phases: list[tuple[str, str]]

    def register(self, interface: Any) -> None: ...
    def load(self, path: Path) -> str: ...  # "ok" or "failed"
    def reload(self, path: Path) -> str: ...
    def unload(self, name: str) -> str: ...  # "ok" or "refused"
    def call_u32(self, contract_id: int, fn: int, args: bytes) -> tuple[int, int]: ...  # (code, value)
    def call_error_out(self, contract_id: int, fn: int, args: bytes) -> tuple[int, int, str]: ...


def reporter(driver: Driver, bundles: Path) -> dict[str, Any]:
    """A reporter's log lines reach the host's host.logger@1; get_level is one round trip."""
    state = LoggerState(level=7)
    driver.register(logger_interface(state))
    loaded = driver.load(bundles / "reporter")
    report = driver.call_u32(REPORTER, 0, struct.pack("<I", 5))
    level = driver.call_u32(REPORTER, 1, b"")
    status = driver.call_u32(REPORTER, 2, b"")
    return {
        "load": loaded,
        "report": report,
        "level": level,
        "status": status,
        "lines": state.lines,
        "created": state.created,
        "instances": len(state.instances),
    }


def reporter_without_logger(driver: Driver, bundles: Path) -> dict[str, Any]:
    """No host.logger@1 registered: the plugin sees it missing (code 100) and carries on."""
    loaded = driver.load(bundles / "reporter")
    return {
        "load": loaded,
        "status": driver.call_u32(REPORTER, 2, b""),
        "report": driver.call_u32(REPORTER, 0, struct.pack("<I", 2)),
        "level": driver.call_u32(REPORTER, 1, b"")[0],
    }


def cross(driver: Driver, bundles: Path) -> dict[str, Any]:
    """cross_caller calls cross_target's add, lists the bundles, and follows a reload."""
    steps: dict[str, Any] = {
        "load_target": driver.load(bundles / "cross_target"),
        "load_caller": driver.load(bundles / "cross_caller"),
    }
    steps["add_via"] = driver.call_u32(CROSS_CALLER, 0, struct.pack("<II", 2, 3))
    steps["add_default"] = driver.call_u32(CROSS_CALLER, 3, struct.pack("<II", 2, 3))
    steps["bundle_count"] = driver.call_u32(CROSS_CALLER, 1, b"")
    steps["generation"] = driver.call_u32(CROSS_CALLER, 2, struct.pack("<QI4x", CROSS_TARGET, 1))
    steps["unknown"] = driver.call_u32(CROSS_CALLER, 2, struct.pack("<QI4x", UNKNOWN, 0))[0]
    steps["reload"] = driver.reload(bundles / "cross_target_v2")
    steps["add_via_v2"] = driver.call_u32(CROSS_CALLER, 0, struct.pack("<II", 2, 3))
    steps["generation_v2"] = driver.call_u32(CROSS_CALLER, 2, struct.pack("<QI4x", CROSS_TARGET, 1))
    return steps


def cross_null_out(driver: Driver, bundles: Path) -> dict[str, Any]:
    """cross_caller calls cross_target's add with out == NULL: add's own AbiError comes back.

    Twice (the second takes the quick route the first left), with calls that pass an out
    around them, which must still get their sum.
    """
    pair = struct.pack("<II", 2, 3)
    steps: dict[str, Any] = {
        "load_target": driver.load(bundles / "cross_target"),
        "load_caller": driver.load(bundles / "cross_caller"),
    }
    steps["add_before"] = driver.call_u32(CROSS_CALLER, 3, pair)
    steps["null_out"] = driver.call_error_out(CROSS_CALLER, 4, pair)
    steps["add_between"] = driver.call_u32(CROSS_CALLER, 3, pair)
    steps["null_out_again"] = driver.call_error_out(CROSS_CALLER, 4, pair)
    steps["add_after"] = driver.call_u32(CROSS_CALLER, 3, pair)
    return steps


def error_chain(driver: Driver, bundles: Path) -> dict[str, Any]:
    """polyplug's error_plugin behaviours: a returned AbiError, a panic, errors propagated across bundles."""
    steps: dict[str, Any] = {
        "load_target": driver.load(bundles / "cross_target"),
        "load": driver.load(bundles / "error_chain"),
    }
    steps["message"] = driver.call_error_out(ERROR_TEST, 0, b"")
    steps["panic"] = driver.call_u32(ERROR_TEST, 1, b"")[0]
    chain = struct.Struct("<QI4x")
    steps["propagated"] = driver.call_error_out(ERROR_TEST, 2, chain.pack(CROSS_TARGET, 0))
    steps["no_target"] = driver.call_error_out(ERROR_TEST, 2, chain.pack(UNKNOWN, 0))
    steps["no_function"] = driver.call_error_out(ERROR_TEST, 2, chain.pack(CROSS_TARGET, 9))
    return steps


def dependencies(driver: Driver, bundles: Path) -> dict[str, Any]:
    """depender needs cross_target: load order, unload refusal, the reload cascade."""
    state = LoggerState()
    driver.register(logger_interface(state))
    steps: dict[str, Any] = {"load_target": driver.load(bundles / "cross_target")}
    steps["load_depender"] = driver.load(bundles / "depender")
    steps["inits"] = state.lines.count("depender init")
    steps["target_add"] = driver.call_u32(DEPENDER, 2, struct.pack("<II", 2, 3))
    steps["unload_target"] = driver.unload("cross_target")
    del driver.phases[:]
    steps["reload_target"] = driver.reload(bundles / "cross_target_v2")
    steps["phases"] = list(driver.phases)
    steps["inits_after_reload"] = state.lines.count("depender init")
    steps["target_add_v2"] = driver.call_u32(DEPENDER, 2, struct.pack("<II", 2, 3))
    steps["unload_depender"] = driver.unload("depender")
    steps["unload_target_after"] = driver.unload("cross_target")
    return steps


def dependency_missing(driver: Driver, bundles: Path) -> dict[str, Any]:
    """depender without cross_target (0.1.3 loads it anyway; we refuse, see the README)."""
    return {"load": driver.load(bundles / "depender")}


SCENARIOS = {
    f.__name__: f
    for f in (
        reporter,
        reporter_without_logger,
        cross,
        cross_null_out,
        error_chain,
        dependencies,
        dependency_missing,
    )
}
