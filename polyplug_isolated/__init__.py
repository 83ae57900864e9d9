"""polyplug_isolated: polyplug native bundles, each in its own worker process.

A plugin that segfaults, aborts, leaks or hangs becomes an exception in the
host, never a dead host. Public names only; the code lives in private modules.
"""

from ._bundle import Bundle, BundleState, ContractInfo
from ._config import ResourceLimits, RestartPolicy, RuntimeConfig, WorkerOptions
from ._contract import AbiErrorCode, GuestContract, PayloadTooLarge
from ._faults import Fault, FaultKind, FaultRecord
from ._idl import parse_api
from ._ids import bundle_id, fnv1a64, guest_contract_id
from ._loader import BundleSource, IsolatedLoader
from ._manifest import ManifestData, parse_manifest
from ._runtime import GuestContractHandle, ReloadPhase, ReloadPhaseType, Runtime
from ._supervisor import BundleEvent, BundleEventKind
from ._typed import ContractInstance, TypedContract
from .errors import (
    BundleUnavailable,
    CallError,
    CallTimeout,
    InitFailed,
    InitSymbolMissing,
    LoaderError,
    ManifestError,
    ManifestMissingFile,
    PluginCallError,
    PolyplugIsolatedError,
    ProtocolError,
    StaleHandle,
    UnsupportedBundleSource,
    WorkerCrashed,
)

__all__ = [
    "AbiErrorCode",
    "Bundle",
    "BundleEvent",
    "BundleEventKind",
    "BundleSource",
    "BundleState",
    "BundleUnavailable",
    "CallError",
    "CallTimeout",
    "ContractInfo",
    "ContractInstance",
    "Fault",
    "FaultKind",
    "FaultRecord",
    "GuestContract",
    "GuestContractHandle",
    "InitFailed",
    "InitSymbolMissing",
    "IsolatedLoader",
    "LoaderError",
    "ManifestData",
    "ManifestError",
    "ManifestMissingFile",
    "PayloadTooLarge",
    "PluginCallError",
    "PolyplugIsolatedError",
    "ProtocolError",
    "ReloadPhase",
    "ReloadPhaseType",
    "ResourceLimits",
    "RestartPolicy",
    "Runtime",
    "RuntimeConfig",
    "StaleHandle",
    "TypedContract",
    "UnsupportedBundleSource",
    "WorkerCrashed",
    "WorkerOptions",
    "bundle_id",
    "fnv1a64",
    "guest_contract_id",
    "parse_api",
    "parse_manifest",
]
