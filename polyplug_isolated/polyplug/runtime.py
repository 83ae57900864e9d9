"""``polyplug.Runtime`` as polyplug 0.1.3's Python host has it, on isolated workers.

Same constructor, methods, return types and errors (RuntimeError subclasses
from polyplug_isolated.errors), so a host switches by changing one import.
Underneath is a :class:`polyplug_isolated.Runtime` (``.isolated``), whose
richer API (typed proxies, faults, restart policy) stays available.

What polyplug's Python host does in C, this one does here, in this order: the
manifest is read, the signature checked (§G.8, before any worker sees the
bundle), the ``[function_count]`` pre-check applied per Compatibility, then
the bundle loaded into its worker, where polyplug_init runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import polyplug_abi as abi

from .. import _host_bridge
from .._bundle import Bundle
from .._host_bridge import HostApiTable, Interface
from .._manifest import ManifestData, parse_manifest
from .._registry import GuestContractHandle as IsolatedHandle
from .._runtime import ReloadPhase as IsolatedPhase
from .._runtime import Runtime as IsolatedRuntime
from .._signing import SignatureCheck
from .._supervisor import BundleEvent, BundleEventKind
from ..errors import BundleSignatureError, HotReloadDisabled, LoaderError, StaleHandle
from ._settings import Compatibility, LogLevel, LogSink, PluginLogForwarder, read_settings

NULL_HANDLE_INDEX = 0xFFFFFFFF
_bundle_logger = logging.getLogger("polyplug_isolated.bundle")


class Runtime:
    """polyplug's Runtime: load, reload, unload, find and resolve guest contracts.

    ``config`` is polyplug-abi's RuntimeConfig (or an object with its fields):
    ``hot_reload_enabled``, ``compatibility``, ``signature_policy``, ``log``,
    ``log_user_data``, ``log_max_level``. ``trusted_keys`` are 32-byte Ed25519
    public keys; empty means trust on first use. Keyword-only extras:
    ``apis`` (api.toml files describing contracts whose bundles ship none) and
    any :class:`polyplug_isolated.Runtime` option (``call_timeout``, ``restart``, ...).
    """

    def __init__(
        self,
        config: Any = None,
        on_reload: Callable[[abi.ReloadPhase], None] | None = None,
        signature_policy: Any = None,
        trusted_keys: Iterable[bytes] | None = None,
        *,
        apis: Iterable[str | os.PathLike[str]] = (),
        **options: Any,
    ):
        self._settings = read_settings(config, signature_policy)
        self._log = LogSink(config)
        weak = weakref.WeakMethod  # callbacks must not keep the Runtime alive: collecting it closes it
        self._signatures = SignatureCheck(
            self._settings.signature_policy, trusted_keys or (), warn=_weakly(weak(self._warn_signature))
        )
        self._on_reload = on_reload
        self._apis = [Path(os.fspath(p)) for p in apis]
        self._lock = threading.RLock()
        self._interfaces: dict[tuple[int, int], Interface] = {}
        self._retired: list[Interface] = []
        self._loader: int | None = None
        self.isolated = IsolatedRuntime(
            on_reload=_weakly(weak(self._phase)) if on_reload is not None else None,
            on_event=_weakly(weak(self._event)),
            **options,
        )
        self.host_table = HostApiTable(self)
        self._forwarder: PluginLogForwarder | None = None
        if self._log.enabled:
            names = weakref.ref(self.isolated)
            self._forwarder = PluginLogForwarder(self._log, lambda name: _loads(names(), name))
            _bundle_logger.addHandler(self._forwarder)
        self._finalizer = weakref.finalize(
            self, _collected, self.isolated, self.host_table, self._interfaces, self._retired, self._forwarder
        )

    # ---- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Unloads every bundle and stops the workers (polyplug does this when the Runtime is collected)."""
        detached = self._finalizer.detach()
        if detached is not None:
            _shutdown(*detached[2])

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ensure_open(self) -> None:
        if not self._finalizer.alive:
            raise LoaderError("Runtime is closed; create a new Runtime", bundle=None)

    @property
    def host(self) -> int:
        """The address of this runtime's ``HostApi`` (a real one, in this process)."""
        self._ensure_open()
        return self.host_table.address

    def load_bundle(self, path: str | os.PathLike[str]) -> None:
        """Loads the bundle at ``path`` (a directory, or a file in it) into a new worker.

        Raises:
            LoaderError (a RuntimeError): the manifest, the signature, the function counts,
                the library or its init failed; or the bundle is already loaded.
        """
        self._ensure_open()
        strict = self._settings.compatibility is Compatibility.Strict
        manifest = parse_manifest(path, check_function_counts=strict)
        if self._loaded(manifest.id) is not None:
            raise LoaderError(
                f"init failed for bundle `{manifest.name}`: it is already loaded in this runtime; "
                "use reload_bundle to replace it (its contracts keep serving)",
                bundle=manifest.name,
            )
        self._check_signature(manifest)
        self._precheck(manifest)
        bundle = self.isolated.load_manifest(manifest if strict else _without_counts(manifest))
        self._postcheck(manifest, bundle)
        self.host_table.bump_revision()

    def reload_bundle(self, path: str | os.PathLike[str]) -> None:
        """Replaces a loaded bundle's worker with one running the library at ``path``.

        Handles stay valid; on failure the old worker keeps serving. As in polyplug,
        the [function_count] checks are not applied; unlike polyplug, the signature is.

        Raises:
            HotReloadDisabled: the config did not enable hot reload.
            LoaderError (a RuntimeError): the new bundle failed to load.
        """
        self._ensure_open()
        if not self._settings.hot_reload_enabled:
            raise HotReloadDisabled(
                "hot-reload is disabled in runtime config: create the Runtime with a RuntimeConfig whose "
                "hot_reload_enabled is True to reload bundles",
                bundle=None,
            )
        manifest = parse_manifest(path, check_function_counts=False)
        loaded = self._loaded(manifest.id)
        if loaded is None:  # as in polyplug: a load, announced as a reload
            self._announce(abi.ReloadPhaseType.Preparing, manifest)
        try:
            self._check_signature(manifest)
        except BundleSignatureError as exc:
            if loaded is not None:
                self._announce(abi.ReloadPhaseType.Preparing, manifest)
            self._announce(abi.ReloadPhaseType.Failed, manifest, str(exc))
            raise
        try:
            if loaded is None:
                self.isolated.load_manifest(_without_counts(manifest))
            else:  # announces its own phases
                self.isolated.reload_manifest(_without_counts(manifest))
        except LoaderError as exc:
            if loaded is None:
                self._announce(abi.ReloadPhaseType.Failed, manifest, str(exc))
            raise
        finally:
            self.host_table.bump_revision()
        if loaded is None:
            self._announce(abi.ReloadPhaseType.Reloaded, manifest)

    def unload_bundle(self, bundle_id: int) -> None:
        """Drains the bundle's calls, then its worker dlcloses and exits; its handles go stale.

        Raises:
            LoaderError (a RuntimeError): no bundle with that id is loaded.
        """
        self._ensure_open()
        if self._loaded(bundle_id) is None:
            raise LoaderError(
                f"bundle not found for contract: bundle=0x{bundle_id:x} contract= (no bundle with id "
                f"{bundle_id} is loaded in this runtime)",
                bundle=None,
            )
        try:
            self.isolated.unload_bundle(bundle_id)
        finally:
            self._retire(lambda interface: interface.contract.bundle.id == bundle_id)
            self.host_table.bump_revision()

    # ---- contracts ---------------------------------------------------------------

    def find_guest_contract(self, contract_id: int, min_version: int) -> abi.GuestContractHandle:
        """The first provider whose major is at least ``min_version``; index 0xFFFFFFFF when none."""
        self._ensure_open()
        index, generation = self.isolated.find_guest_contract(contract_id, min_version)
        return abi.GuestContractHandle(index, generation)

    def find_all_by_contract(self, contract_id: int, min_version: int) -> list[abi.GuestContractHandle]:
        """Every provider, in registration order."""
        self._ensure_open()
        return [
            abi.GuestContractHandle(index, generation)
            for index, generation in self.isolated.find_all_by_contract(contract_id, min_version)
        ]

    def resolve_guest_contract(self, handle: Any) -> int | None:
        """The address of a ``GuestContractInterface`` whose function table calls into the worker.

        None when the handle is stale (its bundle was unloaded), as in polyplug.

        Raises:
            StaleHandle (a RuntimeError): the null handle (index 0xFFFFFFFF).
            ManifestError (a RuntimeError): no api.toml describes the contract's functions.
        """
        if handle.index == NULL_HANDLE_INDEX:
            raise StaleHandle("null plugin handle: find_guest_contract found no provider for this contract")
        self._ensure_open()
        return self.host_interface(handle.index, handle.generation) or None

    @staticmethod
    def last_call_error() -> BaseException | None:
        """Why the calling thread's last failed call through a function table failed.

        The AbiError carries a code and our message; this is the exception behind it
        (WorkerCrashed with its signal and stderr tail, CallTimeout, ...).
        """
        return _host_bridge.last_call_error()

    def release_plugin(self, resolve_handle: int) -> None:
        """Nothing to release: interfaces live as long as their handle (as in polyplug)."""

    def register_loader(self, loader_ptr: Any) -> None:
        """Accepts polyplug's native loader (``register_native_loader(rt)`` passes it).

        Bundles are loaded by polyplug_isolated's own isolated native loader
        either way; the pointer is kept, never called.

        Raises:
            LoaderError (a RuntimeError): a null pointer, or a loader was registered already.
        """
        self._ensure_open()
        self.host_register_loader(_address(loader_ptr))

    # ---- what the C HostApi calls (see _host_bridge.BridgeOwner) -------------------

    def host_lifecycle(self, op: int, path: bytes, bundle_id: int) -> None:
        from .._channel_ffi import lib

        if op == lib.PPH_UNLOAD:
            self.unload_bundle(bundle_id)
            return
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LoaderError(f"invalid utf-8 sequence in the bundle path: {exc}", bundle=None) from None
        (self.load_bundle if op == lib.PPH_LOAD else self.reload_bundle)(text)

    def host_find(self, contract_id: int, min_version: int) -> list[tuple[int, int]]:
        return [(h.index, h.generation) for h in self.isolated.find_all_by_contract(contract_id, min_version)]

    def host_interface(self, index: int, generation: int) -> int:
        """The interface's address, made on first resolve; 0 when the handle is stale."""
        try:
            contract = self.isolated.resolve_guest_contract(IsolatedHandle(index, generation))
        except StaleHandle:
            return 0
        with self._lock:
            cached = self._interfaces.get((index, generation))
            if (
                cached is not None
                and cached.contract.bundle is contract.bundle
                and (cached.function_count, cached.version) == (contract.function_count, contract.version)
            ):
                return cached.address
            bundle = contract.bundle
            functions = _host_bridge.load_api_functions(
                [*self._apis, bundle.path / "api.toml"], contract.contract_id, f"bundle {bundle.name!r}"
            )
            interface = Interface(contract, functions)
            if cached is not None:
                self._retired.append(cached)  # a host may still call it: it follows the bundle
            self._interfaces[index, generation] = interface
            return interface.address

    def host_bundle_ids(self) -> list[int]:
        return [bundle.id for bundle in self.isolated.bundles]

    def host_register_loader(self, loader: int) -> None:
        if not loader:
            raise LoaderError("null pointer in register_loader", bundle=None)
        with self._lock:
            if self._loader is not None:
                raise LoaderError(
                    'duplicate loader "native": a loader with this name is already registered', bundle=None
                )
            self._loader = loader

    def host_log(self, level: int, scope: str, message: str) -> None:
        self._log.emit(level, scope, message)

    # ---- helpers ------------------------------------------------------------------

    def _loaded(self, bundle_id: int) -> Bundle | None:
        return next((b for b in self.isolated.bundles if b.id == bundle_id), None)

    def _check_signature(self, manifest: ManifestData) -> None:
        self._signatures.check(manifest.path, manifest.name)

    def _warn_signature(self, bundle: str, message: str) -> None:
        self._log.emit(LogLevel.Warn, "runtime", f"bundle `{bundle}`: {message}")

    def _precheck(self, manifest: ManifestData) -> None:
        """Relaxed: warn about a provides entry without its [function_count] key (Strict
        refused it in parse_manifest; Yolo looks away)."""
        if self._settings.compatibility is not Compatibility.Relaxed:
            return
        for entry in manifest.provides:
            key = f"{entry.split('@', 1)[0]}@{manifest.version_major}"
            if key not in manifest.function_count:
                self._log.emit(
                    LogLevel.Warn,
                    "runtime",
                    f'bundle "{manifest.name}" provides "{entry}" but has no function_count entry '
                    f'for key "{key}"',
                )

    def _postcheck(self, manifest: ManifestData, bundle: Bundle) -> None:
        """Relaxed: warn where [function_count] disagrees with what init registered (Strict refused it)."""
        if self._settings.compatibility is not Compatibility.Relaxed:
            return
        for info in bundle.contracts:
            key = f"{info.name.split('@', 1)[0]}@{info.version[0]}"
            declared = manifest.function_count.get(key)
            if declared is not None and declared != info.function_count:
                self._log.emit(
                    LogLevel.Warn,
                    "runtime",
                    f"bundle `{manifest.name}` contract `{key}`: declared function_count {declared} but "
                    f"interface exports {info.function_count}",
                )

    def _phase(self, phase: IsolatedPhase) -> None:
        if self._on_reload is not None:
            kind = abi.ReloadPhaseType(int(phase.type))
            self._on_reload(abi.ReloadPhase(kind, phase.bundle_id, phase.bundle_name, phase.reason or None))

    def _announce(self, kind: abi.ReloadPhaseType, manifest: ManifestData, reason: str = "") -> None:
        if self._on_reload is not None:
            try:
                self._on_reload(abi.ReloadPhase(kind, manifest.id, manifest.name, reason or None))
            except Exception:
                logging.getLogger("polyplug_isolated").exception("on_reload raised (ignored)")

    def _event(self, event: BundleEvent) -> None:
        if event.kind is BundleEventKind.RESTARTED:
            self.host_table.bump_revision()  # its instances died with the old worker

    def _retire(self, which: Callable[[Interface], bool]) -> None:
        with self._lock:
            for key, interface in list(self._interfaces.items()):
                if which(interface):
                    interface.retire()
                    del self._interfaces[key]
            for interface in [i for i in self._retired if which(i)]:
                interface.retire()
                self._retired.remove(interface)


def _without_counts(manifest: ManifestData) -> ManifestData:
    """The manifest with its [function_count] left out of the post-init check."""
    return dataclasses.replace(manifest, function_count={})


def _address(pointer: Any) -> int:
    """An address from an int, a ctypes pointer or c_void_p, or a cffi pointer."""
    from .._channel_ffi import ffi

    if pointer is None:
        return 0
    if isinstance(pointer, int):
        return pointer
    if isinstance(pointer, ctypes.c_void_p):
        return pointer.value or 0
    if isinstance(pointer, (ctypes._Pointer, ctypes._CFuncPtr)):  # type: ignore[attr-defined]
        return ctypes.cast(pointer, ctypes.c_void_p).value or 0
    if isinstance(pointer, ffi.CData):
        return int(ffi.cast("uintptr_t", pointer))
    raise TypeError(f"register_loader takes a loader pointer, not {type(pointer).__name__}")


def _weakly(method: weakref.WeakMethod[Callable[..., None]]) -> Callable[..., None]:
    """A callback that does not keep the polyplug Runtime alive (its finalizer closes the workers)."""

    def call(*args: Any) -> None:
        target = method()
        if target is not None:
            target(*args)

    return call


def _loads(isolated: IsolatedRuntime | None, name: str) -> bool:
    return isolated is not None and any(b.name == name for b in isolated.bundles)


def _collected(*parts: Any) -> None:
    """The Runtime was garbage-collected: shut down. Collection may happen on any thread,
    even one of the runtime's own (whose shutdown waits for it): off the main thread the
    shutdown gets a thread of its own (not a daemon, so that exit waits for it)."""
    if threading.current_thread() is threading.main_thread():
        _shutdown(*parts)
    else:
        threading.Thread(target=_shutdown, args=parts, name="polyplug-runtime-close").start()


def _shutdown(
    isolated: IsolatedRuntime,
    table: HostApiTable,
    interfaces: dict[tuple[int, int], Interface],
    retired: list[Interface],
    forwarder: PluginLogForwarder | None,
) -> None:
    table.close()
    for interface in [*interfaces.values(), *retired]:
        interface.retire()
    interfaces.clear()
    retired.clear()
    if forwarder is not None:
        _bundle_logger.removeHandler(forwarder)
    isolated.close()


__all__ = ["Runtime"]
