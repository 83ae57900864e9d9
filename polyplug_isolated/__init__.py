"""polyplug_isolated: polyplug native bundles, each in its own worker process.

A plugin that segfaults, aborts, leaks or hangs becomes an exception in the
host, never a dead host. Public names only; the code lives in private modules.
"""

from importlib import import_module

# Where each public name lives. Imported on first use (PEP 562): a worker
# process imports this package too, and needs none of the host's modules, so
# eager imports would only slow every worker start.
_EXPORTS = {
    "._bundle": ("Bundle", "BundleState", "ContractInfo"),
    "._config": ("ResourceLimits", "RestartPolicy", "RuntimeConfig", "WorkerOptions"),
    "._contract": ("AbiErrorCode", "GuestContract", "PayloadTooLarge"),
    "._faults": ("Fault", "FaultKind", "FaultRecord"),
    "._idl": ("parse_api",),
    "._ids": ("bundle_id", "fnv1a64", "guest_contract_id"),
    "._loader": ("BundleSource", "IsolatedLoader"),
    "._manifest": ("ManifestData", "parse_manifest"),
    "._runtime": ("GuestContractHandle", "ReloadPhase", "ReloadPhaseType", "Runtime"),
    "._supervisor": ("BundleEvent", "BundleEventKind"),
    "._typed": ("ContractInstance", "TypedContract"),
    ".errors": (
        "BundleUnavailable",
        "CallError",
        "CallTimeout",
        "InitFailed",
        "InitSymbolMissing",
        "LoaderError",
        "ManifestError",
        "ManifestMissingFile",
        "PluginCallError",
        "PolyplugIsolatedError",
        "ProtocolError",
        "StaleHandle",
        "UnsupportedBundleSource",
        "WorkerCrashed",
        "WorkerStartFailed",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'polyplug_isolated' has no attribute {name!r}")
    value = getattr(import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
