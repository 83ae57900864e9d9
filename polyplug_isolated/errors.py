"""Every error polyplug_isolated raises, named for whose fault it is.

::

    PolyplugIsolatedError
    ├── LoaderError                 a load/reload/unload failed (.bundle)
    │   ├── ManifestError           malformed or invalid manifest.toml / api.toml
    │   ├── ManifestMissingFile     no library file for this platform
    │   ├── UnsupportedBundleSource code/bytes source given to the native loader
    │   ├── InitSymbolMissing       no polyplug_init export
    │   ├── InitFailed              dlopen error, ABI mismatch, init error/crash/timeout, ...
    │   │   └── WorkerStartFailed   no worker process could be started (zygote died, hung, fork failed)
    │   ├── BundleSignatureError    unsigned, tampered or untrusted under SignaturePolicy.Required
    │   ├── HotReloadDisabled       reload_bundle with RuntimeConfig.hot_reload_enabled off
    │   ├── DependencyNotFound      a [[dependency]] no loaded bundle satisfies
    │   ├── DependencyInUse         unloading a bundle that loaded bundles depend on
    │   └── LifecycleConflict       another thread is loading/reloading/unloading that bundle
    ├── CallError                   a call failed (.bundle, .function)
    │   ├── PluginCallError         the plugin answered with a non-Ok AbiError (.code, .message)
    │   ├── WorkerCrashed           the worker died (.signal or .exitcode, .stderr_tail)
    │   ├── CallTimeout             no answer in time; the worker was killed (also a TimeoutError)
    │   ├── BundleUnavailable       draining, unloaded, or crashed and not restarted
    │   └── StaleHandle             the handle's generation is gone
    └── ProtocolError               the worker broke the shared-memory or control protocol

LoaderError and StaleHandle are also RuntimeErrors, as polyplug raises them.
Messages say what happened, to which bundle, and what to do about it.
"""

from __future__ import annotations

import signal
from typing import Any


class PolyplugIsolatedError(Exception):
    """Base of every error this package raises."""


class LoaderError(PolyplugIsolatedError, RuntimeError):
    """Loading, reloading or unloading a bundle failed; nothing was left behind.

    Also a RuntimeError, which is what polyplug's own Python host raises here.
    """

    def __init__(self, message: str, *, bundle: str | None = None):
        super().__init__(message)
        self.bundle = bundle


class ManifestError(LoaderError):
    """manifest.toml (or api.toml) is missing, malformed or invalid."""


class ManifestMissingFile(LoaderError):
    """The manifest names no library file for this platform."""


class UnsupportedBundleSource(LoaderError):
    """The native loader only loads bundles from a directory."""


class InitSymbolMissing(LoaderError):
    """The library has no ``polyplug_init`` export."""


class InitFailed(LoaderError):
    """The worker could not bring the bundle up (see the message for why)."""


class BundleSignatureError(LoaderError):
    """The bundle's ``bundle.sig`` is missing, does not match its files, or names an untrusted key."""


class HotReloadDisabled(LoaderError):
    """reload_bundle on a polyplug-style runtime whose config turned hot reload off."""


class DependencyNotFound(LoaderError):
    """A ``[[dependency]]`` of the bundle is satisfied by no loaded bundle: load the provider first."""


class DependencyInUse(LoaderError):
    """Loaded bundles declared a dependency on the bundle: unload them first."""


class LifecycleConflict(LoaderError):
    """Another thread is loading, reloading or unloading the same bundle right now."""


class WorkerStartFailed(InitFailed):
    """No worker process could be started for the bundle: the host's side, not the plugin's.

    The zygote that forks workers died, hung or could not fork (``errno``
    EAGAIN or ENOMEM: a process or memory limit). A new zygote is started for
    the next load, so a retry may succeed.
    """

    def __init__(self, message: str, *, bundle: str | None = None, errno: int | None = None):
        super().__init__(message, bundle=bundle)
        self.errno = errno


class CallError(PolyplugIsolatedError):
    """A call into a bundle failed."""

    def __init__(self, message: str, *, bundle: str | None = None, function: int | str | None = None):
        super().__init__(message)
        self.bundle = bundle
        self.function = function


class PluginCallError(CallError):
    """The plugin ran and answered with a non-Ok ``AbiError``."""

    def __init__(self, message: str, *, code: int, plugin_message: str, **where: Any):
        super().__init__(message, **where)
        self.code = code
        self.message = plugin_message
        self.index: int | None = None  # call_many/call_packed: which call of the batch failed


class WorkerCrashed(CallError):
    """The worker process died; the outcome of calls in flight is unknown (at-most-once)."""

    def __init__(
        self,
        message: str,
        *,
        signal: signal.Signals | None = None,
        exitcode: int | None = None,
        stderr_tail: str = "",
        report: str = "",
        **where: Any,
    ):
        super().__init__(message, **where)
        self.signal = signal
        self.exitcode = exitcode
        self.stderr_tail = stderr_tail
        self.report = report or message  # the message, then the worker's last output (its stacks)


class CallTimeout(CallError, TimeoutError):
    """No answer before the deadline; the worker was killed (its slot cannot be trusted)."""


class BundleUnavailable(CallError):
    """The bundle is draining, unloaded, or crashed and not restarted."""


class StaleHandle(CallError, RuntimeError):
    """The handle's bundle was unloaded: find the contract again."""


class ProtocolError(PolyplugIsolatedError):
    """The worker broke the shared-memory or control protocol and was killed."""

    def __init__(self, message: str, *, bundle: str | None = None):
        super().__init__(message)
        self.bundle = bundle
