"""The public surface: every exported name resolves, and API.md's names are there."""

import polyplug_isolated

API_NAMES = {
    "Runtime",
    "ReloadPhase",
    "ReloadPhaseType",
    "RestartPolicy",
    "Fault",
    "IsolatedLoader",
    "parse_manifest",
    "BundleSource",
    "Bundle",
    "BundleState",
    "ContractInfo",
    "GuestContractHandle",
    "GuestContract",
    "PolyplugIsolatedError",
    "LoaderError",
    "ManifestError",
    "ManifestMissingFile",
    "UnsupportedBundleSource",
    "InitSymbolMissing",
    "InitFailed",
    "CallError",
    "PluginCallError",
    "WorkerCrashed",
    "CallTimeout",
    "BundleUnavailable",
    "StaleHandle",
    "ProtocolError",
}


def test_every_exported_name_resolves():
    for name in polyplug_isolated.__all__:
        assert getattr(polyplug_isolated, name) is not None


def test_the_names_api_md_promises_are_exported():
    assert set(polyplug_isolated.__all__) >= API_NAMES


def test_errors_module_is_public_and_the_same_objects():
    from polyplug_isolated import errors

    assert errors.WorkerCrashed is polyplug_isolated.WorkerCrashed
    assert issubclass(polyplug_isolated.CallTimeout, TimeoutError)
