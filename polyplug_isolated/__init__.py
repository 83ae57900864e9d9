"""polyplug_isolated: polyplug native bundles, each in its own worker process.

A plugin that segfaults, aborts, leaks or hangs becomes an exception in the
host, never a dead host. Public names only; the code lives in private modules.
"""

from importlib import import_module, metadata
from typing import TYPE_CHECKING

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
    "._registry": ("GuestContractHandle",),
    "._runtime": ("ReloadPhase", "ReloadPhaseType", "Runtime"),
    "._signing": ("bundle_digest", "generate_signing_key", "sign_bundle"),
    "._sandbox": ("Sandbox", "SandboxReport"),
    "._supervisor": ("BundleEvent", "BundleEventKind"),
    "._typed": ("ContractInstance", "TypedContract"),
    ".errors": (
        "BundleSignatureError",
        "BundleUnavailable",
        "CallError",
        "CallTimeout",
        "HotReloadDisabled",
        "InitFailed",
        "InitSymbolMissing",
        "LifecycleConflict",
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
    "._paths": ("get_include",),
}
if TYPE_CHECKING:  # type checkers see the real names; at run time they are imported on first use
    from ._bundle import Bundle as Bundle
    from ._bundle import BundleState as BundleState
    from ._bundle import ContractInfo as ContractInfo
    from ._config import ResourceLimits as ResourceLimits
    from ._config import RestartPolicy as RestartPolicy
    from ._config import RuntimeConfig as RuntimeConfig
    from ._config import WorkerOptions as WorkerOptions
    from ._contract import AbiErrorCode as AbiErrorCode
    from ._contract import GuestContract as GuestContract
    from ._contract import PayloadTooLarge as PayloadTooLarge
    from ._faults import Fault as Fault
    from ._faults import FaultKind as FaultKind
    from ._faults import FaultRecord as FaultRecord
    from ._idl import parse_api as parse_api
    from ._ids import bundle_id as bundle_id
    from ._ids import fnv1a64 as fnv1a64
    from ._ids import guest_contract_id as guest_contract_id
    from ._loader import BundleSource as BundleSource
    from ._loader import IsolatedLoader as IsolatedLoader
    from ._manifest import ManifestData as ManifestData
    from ._manifest import parse_manifest as parse_manifest
    from ._paths import get_include as get_include
    from ._registry import GuestContractHandle as GuestContractHandle
    from ._runtime import ReloadPhase as ReloadPhase
    from ._runtime import ReloadPhaseType as ReloadPhaseType
    from ._runtime import Runtime as Runtime
    from ._supervisor import BundleEvent as BundleEvent
    from ._supervisor import BundleEventKind as BundleEventKind
    from ._typed import ContractInstance as ContractInstance
    from ._typed import TypedContract as TypedContract
    from .errors import BundleUnavailable as BundleUnavailable
    from .errors import CallError as CallError
    from .errors import CallTimeout as CallTimeout
    from .errors import InitFailed as InitFailed
    from .errors import InitSymbolMissing as InitSymbolMissing
    from .errors import LoaderError as LoaderError
    from .errors import ManifestError as ManifestError
    from .errors import ManifestMissingFile as ManifestMissingFile
    from .errors import PluginCallError as PluginCallError
    from .errors import PolyplugIsolatedError as PolyplugIsolatedError
    from .errors import ProtocolError as ProtocolError
    from .errors import StaleHandle as StaleHandle
    from .errors import UnsupportedBundleSource as UnsupportedBundleSource
    from .errors import WorkerCrashed as WorkerCrashed

    __version__: str

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> object:
    if name == "__version__":  # the installed distribution's, so it never disagrees with pip
        try:
            return metadata.version("polyplug_isolated")
        except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
            return "0+unknown"
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'polyplug_isolated' has no attribute {name!r}")
    value = getattr(import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
