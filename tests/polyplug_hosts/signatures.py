"""Signature policies: which bundles load, and which error stops the others.

python signatures.py TRUSTED_KEY_HEX UNSIGNED SIGNED TAMPERED ADDED WRONG_KEY
"""

from __future__ import annotations

import json
import sys

from polyplug_abi import RuntimeConfig, SignaturePolicy
from polyplug_loaders_native import register_native_loader

from polyplug_isolated import polyplug  # SWITCH

KINDS = {
    "is not signed": "unsigned",
    "signature verification failed": "bad signature",
    "trusted-key allowlist": "untrusted key",
}


def outcome(rt: polyplug.Runtime, path: str) -> str:
    try:
        rt.load_bundle(path)
    except RuntimeError as exc:
        return next((kind for phrase, kind in KINDS.items() if phrase in str(exc)), f"other: {exc}")
    return "loaded"


def main(key_hex: str, *bundles: str) -> dict:
    cases = {
        "Required, allowlist": (SignaturePolicy.Required, [bytes.fromhex(key_hex)], None),
        "Required, trust on first use": (SignaturePolicy.Required, None, None),
        "WarnOnly, allowlist": (SignaturePolicy.WarnOnly, [bytes.fromhex(key_hex)], None),
        "Off": (SignaturePolicy.Off, [bytes.fromhex(key_hex)], None),
        "Required from the config": (None, [bytes.fromhex(key_hex)], SignaturePolicy.Required),
    }
    seen: dict = {}
    for name, (policy, keys, configured) in cases.items():
        config = RuntimeConfig()
        if configured is not None:
            config.signature_policy = configured
        for path in bundles:
            rt = polyplug.Runtime(config=config, signature_policy=policy, trusted_keys=keys)
            register_native_loader(rt)
            seen.setdefault(name, []).append(outcome(rt, path))
            if hasattr(rt, "close"):
                rt.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
