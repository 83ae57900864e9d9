"""RuntimeConfig: hot reload, and Compatibility's [function_count] checks on load and reload.

python config.py ADDER NO_COUNT_KEY WRONG_COUNT PROBE_V1 PROBE_V2
"""

from __future__ import annotations

import ctypes
import json
import sys

from polyplug_abi import Compatibility, RuntimeConfig, guest_contract_id
from polyplug_loaders_native import register_native_loader

from polyplug_isolated import polyplug  # SWITCH
from tests.polyplug_hosts._caller import Caller

PROBE = guest_contract_id("test.probe", 1)


def attempt(action) -> str:
    try:
        action()
    except RuntimeError as exc:
        return "function count mismatch" if "function" in str(exc) else f"error: {exc}"
    return "ok"


def runtime(compatibility: int = Compatibility.Strict, on_reload=None) -> polyplug.Runtime:
    config = RuntimeConfig()
    config.hot_reload_enabled = True
    config.compatibility = compatibility
    rt = polyplug.Runtime(config=config, on_reload=on_reload)
    register_native_loader(rt)
    return rt


def main(adder: str, no_count_key: str, wrong_count: str, probe_v1: str, probe_v2: str) -> dict:
    seen: dict = {}
    for compatibility in Compatibility:
        results = seen[compatibility.name] = []
        for path in (no_count_key, wrong_count):
            results.append(attempt(lambda path=path, c=compatibility: runtime(c).load_bundle(path)))
            rt = runtime(compatibility)
            rt.load_bundle(adder)
            results.append(attempt(lambda rt=rt, path=path: rt.reload_bundle(path)))

    phases: list = []
    rt = runtime(on_reload=lambda p: phases.append([p.type.name, p.bundle_name, p.reason]))
    rt.reload_bundle(probe_v1)  # not loaded yet: a load, announced as a reload
    handle = rt.find_guest_contract(PROBE, 1)
    generation = ctypes.c_uint32()
    calls = seen["calls"] = []
    calls.append(
        [*Caller(rt.host, rt.resolve_guest_contract(handle)).call(0, None, generation), generation.value]
    )
    rt.reload_bundle(probe_v2)
    same = rt.find_guest_contract(PROBE, 1)
    seen["same handle"] = [same.index, same.generation] == [handle.index, handle.generation]
    calls.append(
        [*Caller(rt.host, rt.resolve_guest_contract(handle)).call(0, None, generation), generation.value]
    )
    seen["phases"] = phases
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:6])))
