"""Where polyplug 0.1.3 is wrong and polyplug_isolated is not (README, "Differences from polyplug").

python differences.py KEY_HEX ADDER ADDER_TWIN FAILING_ADDER SIGNED UNSIGNED OTHER_KEY_SIGNED
"""

from __future__ import annotations

import ctypes
import json
import sys

from polyplug_abi import RuntimeConfig, SignaturePolicy, guest_contract_id
from polyplug_loaders_native import register_native_loader

from polyplug_isolated import polyplug  # SWITCH
from tests.polyplug_hosts._caller import Caller

ADD = guest_contract_id("test.add", 1)


class AddArgs(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint32)]


def attempt(action) -> str:
    try:
        action()
    except RuntimeError:
        return "refused"
    return "ok"


def add(rt: polyplug.Runtime, handle) -> object:
    """add(20, 22) through the handle's interface, or why not."""
    address = rt.resolve_guest_contract(handle)
    if not address:
        return "stale"
    total = ctypes.c_uint32()
    code, _ = Caller(rt.host, address, stateful=False).call(0, AddArgs(20, 22), total)
    return total.value if code == 0 else f"code {code}"


def runtime(**kwargs) -> polyplug.Runtime:
    config = RuntimeConfig()
    config.hot_reload_enabled = True
    rt = polyplug.Runtime(config=config, **kwargs)
    register_native_loader(rt)
    return rt


def main(key_hex, adder, twin, failing, signed, unsigned, other_signed) -> dict:
    seen: dict = {}
    rt = runtime()
    rt.load_bundle(adder)
    rt.load_bundle(twin)
    seen["find_all"] = [[h.index, h.generation] for h in rt.find_all_by_contract(ADD, 1)]

    handle = rt.find_guest_contract(ADD, 1)
    seen["load a loaded bundle"] = attempt(lambda: rt.load_bundle(adder))
    seen["its contract afterwards"] = add(rt, handle)

    rt = runtime()
    rt.load_bundle(adder)
    handle = rt.find_guest_contract(ADD, 1)
    seen["failed reload"] = attempt(lambda: rt.reload_bundle(failing))
    seen["the old contract afterwards"] = add(rt, handle)

    key = [bytes.fromhex(key_hex)]
    rt = runtime(signature_policy=SignaturePolicy.Required, trusted_keys=key)
    rt.load_bundle(signed)
    seen["reload to an unsigned bundle"] = attempt(lambda: rt.reload_bundle(unsigned))

    rt = runtime(signature_policy=SignaturePolicy.Required)
    rt.load_bundle(signed)
    seen["reload signed by another key, no allowlist"] = attempt(lambda: rt.reload_bundle(other_signed))

    rt = polyplug.Runtime()
    seen["load without register_native_loader"] = attempt(lambda: rt.load_bundle(adder))
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:8])))
