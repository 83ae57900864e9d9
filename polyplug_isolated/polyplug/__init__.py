"""polyplug 0.1.3's Python host surface, running every bundle in its own worker process.

A host written for polyplug switches by changing one import::

    import polyplug                              # before
    from polyplug_isolated import polyplug       # after

``polyplug.Runtime``, ``polyplug.ReloadPhase``, ``polyplug.ReloadPhaseType``,
``polyplug.runtime`` and ``polyplug.scanner.scan_dir`` are there as polyplug
has them; values such as ``RuntimeConfig``, ``SignaturePolicy`` and
``Compatibility`` stay polyplug-abi's own. See the README, "Switching a
polyplug host", for what differs.
"""

from __future__ import annotations

try:
    import polyplug_abi as _abi
except ImportError:  # pragma: no cover - the polyplug extra is missing
    raise ImportError(
        "polyplug_isolated.polyplug speaks polyplug's ABI types from the polyplug-abi package: "
        "pip install 'polyplug_isolated[polyplug]'"
    ) from None

from . import runtime, scanner
from .runtime import Runtime

ReloadPhase = _abi.ReloadPhase
ReloadPhaseType = _abi.ReloadPhaseType

__all__ = ["ReloadPhase", "ReloadPhaseType", "Runtime", "load_native_lib", "runtime", "scanner"]


def load_native_lib() -> object:
    """The host's compiled C module (polyplug returns its libpolyplug here)."""
    from .._channel_ffi import lib

    return lib
