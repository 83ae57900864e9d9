"""Runtime: the host facade — registry of bundles and contracts, load/reload/unload.

Method names follow polyplug's own Python host (``polyplug.Runtime``) so a
polyplug host can switch to isolation by changing an import.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._bundle import Bundle, BundleState
from ._config import ResourceLimits, RestartPolicy, RuntimeConfig, WorkerOptions
from ._contract import GuestContract
from ._faults import Fault
from ._manifest import ManifestData, parse_manifest
from ._monitor import Monitor
from ._process import WorkerProcess
from ._proxy import WorkerProxy
from ._supervisor import BundleEvent, BundleEventKind, Supervisor
from ._typed import TypedContract, open_contract
from ._zygote import FrameFor, Zygote
from .errors import InitFailed, LoaderError, StaleHandle, WorkerStartFailed

_logger = logging.getLogger("polyplug_isolated")
NOT_FOUND = 0xFFFFFFFF


class GuestContractHandle(NamedTuple):
    """Names a registered contract; ``index == 0xFFFFFFFF`` means not found."""

    index: int
    generation: int

    @property
    def found(self) -> bool:
        return self.index != NOT_FOUND


class ReloadPhaseType(enum.IntEnum):
    PREPARING = 0
    RELOADED = 1
    FAILED = 2
    UNLOADING = 3


@dataclass(frozen=True)
class ReloadPhase:
    """What ``on_reload`` receives, as polyplug's ReloadPhase."""

    type: ReloadPhaseType
    bundle_id: int
    bundle_name: str
    reason: str = ""


@dataclass
class _Slot:
    """A registry entry: one contract of one bundle; vacated on unload (generation bumped)."""

    contract_id: int
    major: int
    bundle: Bundle | None
    generation: int = 0


class Runtime:
    """Loads bundles into isolated workers and hands out their contracts.

    Use as a context manager, or call :meth:`close`: it unloads every bundle.
    """

    def __init__(
        self,
        on_reload: Callable[[ReloadPhase], None] | None = None,
        on_event: Callable[[BundleEvent], None] | None = None,
        call_timeout: float | None = None,
        drain_timeout: float = 10.0,
        restart: RestartPolicy | None = None,
        wait: str = "auto",
        slots: int = 64,
        **options: Any,
    ):
        self.config = RuntimeConfig(
            call_timeout=call_timeout,
            drain_timeout=drain_timeout,
            restart=restart or RestartPolicy(),
            wait=wait,
            slots=slots,
            **options,
        )
        self._on_reload = on_reload
        self._on_event = on_event
        self._supervisor = Supervisor(self.config.restart, self._restart, self._event)
        self._lock = threading.RLock()
        self._bundles: dict[int, Bundle] = {}
        self._slots: list[_Slot] = []
        self._monitor = Monitor()
        self._zygote = Zygote(self.config.load_timeout, keep_spare=self.config.prestart)
        if self.config.prestart:
            self._zygote.start()
        self._closed = False

    # ---- context ------------------------------------------------------------

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unloads every bundle (draining each) and stops the monitor. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            bundles = list(self._bundles.values())
        self._supervisor.close()
        # Every idle worker is told at once, then each is waited for: one
        # after the other, 1,000 workers took seconds to exit.
        leaving = [(bundle, self._begin_unload(bundle)) for bundle in bundles]
        for bundle, (unloading, proxy) in leaving:
            if unloading:
                self._end_unload(bundle, proxy)
        self._zygote.close()
        self._monitor.close()

    # ---- load / reload / unload -----------------------------------------

    def load_bundle(
        self,
        path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        library_path: Iterable[str | os.PathLike[str]] = (),
        limits: ResourceLimits | None = None,
        faults: Iterable[Fault] = (),
    ) -> Bundle:
        """Loads the bundle at ``path`` into a new worker and publishes its contracts.

        Loading a bundle that is already loaded replaces its worker (as a reload).
        The keyword arguments set up the worker process (see WorkerOptions);
        reloads and restarts keep them.

        Raises:
            LoaderError: a subclass saying what failed; nothing is left behind.
        """
        options = WorkerOptions(
            env=tuple(sorted((env or {}).items())),
            inherit_env=inherit_env,
            cwd=os.fspath(cwd) if cwd is not None else None,
            library_path=tuple(os.fspath(p) for p in library_path),
            limits=limits,
            faults=tuple(faults),
        )
        return self.load_manifest(parse_manifest(path), options)

    def load_manifest(self, manifest: ManifestData, options: WorkerOptions | None = None) -> Bundle:
        """Loads an already parsed manifest (what IsolatedLoader.load does)."""
        self._check_open()
        with self._lock:
            existing = self._bundles.get(manifest.id)
        if existing is not None:
            if options is not None:
                existing.set_options(options)
            return self.reload_manifest(manifest)
        bundle = Bundle(manifest, options or WorkerOptions())
        proxy = self._start_worker(bundle, manifest)
        with self._lock:
            bundle.proxy = proxy
            self._publish(bundle, proxy)
            self._bundles[bundle.id] = bundle
            bundle.move(BundleState.READY)
        return bundle

    def reload_bundle(self, path: str | os.PathLike[str]) -> Bundle:
        """Starts a new worker for the bundle at ``path`` while the old one serves, then switches.

        On failure the old worker keeps serving, ``on_reload`` gets a Failed phase,
        and the LoaderError is raised. No call is lost either way.
        """
        return self.reload_manifest(parse_manifest(path))

    def reload_manifest(self, manifest: ManifestData) -> Bundle:
        self._check_open()
        with self._lock:
            bundle = self._bundles.get(manifest.id)
        if bundle is None:
            return self.load_manifest(manifest)
        self._supervisor.forget(bundle)
        self._report(ReloadPhaseType.PREPARING, bundle)
        try:
            proxy = self._start_worker(bundle, manifest)
        except LoaderError as exc:
            self._report(ReloadPhaseType.FAILED, bundle, str(exc))
            raise
        with self._lock:
            old = bundle.proxy
            bundle.manifest, bundle.version, bundle.path = manifest, manifest.version, manifest.path
            bundle.proxy = proxy
            if old is not None:
                # In the same breath as the switch: a caller still bound to the
                # old worker is turned away unsent, and rerouted to the new one.
                old.channel.start_draining()
            bundle.crash = None
            self._publish(bundle, proxy)
            if bundle.state is BundleState.CRASHED:
                bundle.move(BundleState.RESTARTING)
                bundle.move(BundleState.READY)
        self._report(ReloadPhaseType.RELOADED, bundle)
        if old is not None and old.alive:
            old.shutdown(self.config.drain_timeout)
        return bundle

    def unload_bundle(self, bundle_id: int) -> None:
        """Drains the bundle's calls in flight, then its worker dlcloses and exits.

        New calls fail at once with BundleUnavailable; handles go stale.
        """
        with self._lock:
            bundle = self._bundles.get(bundle_id)
        if bundle is None:
            raise LoaderError(f"no bundle with id {bundle_id} is loaded in this runtime", bundle=None)
        self._unload(bundle)

    def _unload(self, bundle: Bundle) -> None:
        unloading, proxy = self._begin_unload(bundle)
        if unloading:
            self._end_unload(bundle, proxy)

    def _begin_unload(self, bundle: Bundle) -> tuple[bool, WorkerProxy | None]:
        """Turns the bundle DRAINING and tells its worker, if idle, to exit.

        Returns whether this call unloads the bundle, and its worker.
        """
        self._supervisor.forget(bundle)
        self._report(ReloadPhaseType.UNLOADING, bundle)
        with self._lock:
            if bundle.state is BundleState.UNLOADED or self._bundles.get(bundle.id) is not bundle:
                return False, None
            proxy = bundle.proxy
            if proxy is not None:
                proxy.channel.start_draining()  # before anyone can see DRAINING
            bundle.move(BundleState.DRAINING)
            self._unpublish(bundle)
        if proxy is not None and proxy.alive:
            proxy.leave_if_idle()
        return True, proxy

    def _end_unload(self, bundle: Bundle, proxy: WorkerProxy | None) -> None:
        """Drains and ends the worker (waiting for it), then the bundle is UNLOADED."""
        if proxy is not None and proxy.alive:
            proxy.shutdown(self.config.drain_timeout)
        with self._lock:
            bundle.proxy = None
            del self._bundles[bundle.id]
            bundle.move(BundleState.UNLOADED)

    def _start_worker(self, bundle: Bundle, manifest: ManifestData) -> WorkerProxy:
        try:
            os.fsencode(manifest.path).decode("utf-8")
        except UnicodeDecodeError:
            raise InitFailed(
                f"bundle {manifest.name!r}: bundle path is not valid UTF-8: {manifest.path!s}; "
                "polyplug passes the bundle directory to polyplug_init as UTF-8: rename the directory",
                bundle=manifest.name,
            ) from None
        if not manifest.file.is_file():
            raise InitFailed(
                f"bundle {manifest.name!r}: failed to load plugin library at {manifest.file}: no such file; "
                "build the library or fix [file] in manifest.toml",
                bundle=manifest.name,
            )
        options = bundle.options
        host_environment = dict(os.environ)
        environment = options.environment(host_environment) or host_environment

        def spawn(load_frame_for: FrameFor, segment_fd: int) -> WorkerProcess:
            try:
                return self._zygote.fork(environment, load_frame_for, segment_fd)
            except WorkerStartFailed as exc:
                raise WorkerStartFailed(
                    f"bundle {manifest.name!r}: cannot start a worker: {exc}",
                    bundle=manifest.name,
                    errno=exc.errno,
                ) from exc

        proxy = WorkerProxy(
            manifest,
            self.config,
            self._monitor,
            lambda dead: self._on_death(bundle, dead),
            bundle.record_fault,
        )
        try:
            proxy.start(spawn, options, bundle.fault_specs(bundle.start_faults))
        finally:
            self._zygote.fork_ahead()
        return proxy

    def _on_death(self, bundle: Bundle, proxy: WorkerProxy) -> None:
        """Monitor thread: a worker of the bundle died unasked.

        In this order: the bundle is CRASHED (so a caller woken next sees it),
        the worker's callers are woken, and only then is anyone told (so a
        call made after the CRASHED event is refused unsent, never sent to
        the dead worker).
        """
        with self._lock:
            current = bundle.proxy is proxy
            if current:
                bundle.proxy = None
                bundle.crash = proxy
                bundle.move(BundleState.CRASHED)
        announce = self._supervisor.crashed(bundle) if current else None  # decided before callers wake
        proxy.channel.mark_dead()
        if announce is None:
            return
        death = proxy.death
        description = death.description + (f" ({death.kill_reason})" if death.kill_reason else "")
        _logger.error("bundle %r: worker %d %s", bundle.name, proxy.pid, description)
        self._event(
            BundleEvent(BundleEventKind.CRASHED, bundle.id, bundle.name, description, bundle.restarts)
        )
        announce()

    def _restart(self, bundle: Bundle) -> bool:
        """Supervisor thread: a fresh worker for a crashed bundle, same file, init again.

        Handles stay valid: contracts follow their bundle to the new worker.
        Returns False when the bundle was unloaded or reloaded meanwhile.
        """
        with self._lock:
            if self._bundles.get(bundle.id) is not bundle or bundle.state is not BundleState.CRASHED:
                return False
            bundle.move(BundleState.RESTARTING)
        try:
            proxy = self._start_worker(bundle, bundle.manifest)
        except LoaderError:
            with self._lock:
                if bundle.state is BundleState.RESTARTING:
                    bundle.move(BundleState.CRASHED)
            raise
        with self._lock:
            current = bundle.state is BundleState.RESTARTING
            if current:
                bundle.proxy = proxy
                bundle.crash = None
                bundle.restarts += 1
                self._publish(bundle, proxy)
                bundle.move(BundleState.READY)
        if not current:
            proxy.shutdown(self.config.drain_timeout)
        return current

    # ---- registry ------------------------------------------------------------

    def _publish(self, bundle: Bundle, proxy: WorkerProxy) -> None:
        """Points the registry at ``proxy``'s contracts.

        A contract the bundle already provided keeps its slot and generation, so
        handles minted before a reload stay valid (as in polyplug); a contract
        it no longer provides is vacated; a new one takes a free slot.
        """
        fresh = {contract["contract_id"]: contract for contract in proxy.contracts}
        for slot in self._slots:
            if slot.bundle is bundle:
                contract = fresh.pop(slot.contract_id, None)
                if contract is None:
                    slot.bundle = None
                    slot.generation += 1
                else:
                    slot.major = contract["version"][0]
        for contract in fresh.values():
            vacant = next((s for s in self._slots if s.bundle is None), None)
            if vacant is None:
                vacant = _Slot(0, 0, None)
                self._slots.append(vacant)
            vacant.contract_id = contract["contract_id"]
            vacant.major = contract["version"][0]
            vacant.bundle = bundle

    def _unpublish(self, bundle: Bundle) -> None:
        for slot in self._slots:
            if slot.bundle is bundle:
                slot.bundle = None
                slot.generation += 1

    def find_guest_contract(self, contract_id: int, min_version: int = 0) -> GuestContractHandle:
        """The first provider of ``contract_id`` whose major is at least ``min_version``."""
        with self._lock:
            for index, slot in enumerate(self._slots):
                if slot.bundle is not None and slot.contract_id == contract_id and slot.major >= min_version:
                    return GuestContractHandle(index, slot.generation)
        return GuestContractHandle(NOT_FOUND, 0)

    def find_all_by_contract(self, contract_id: int, min_version: int = 0) -> list[GuestContractHandle]:
        """Every provider of ``contract_id`` (major >= ``min_version``), in registration order."""
        with self._lock:
            return [
                GuestContractHandle(index, slot.generation)
                for index, slot in enumerate(self._slots)
                if slot.bundle is not None and slot.contract_id == contract_id and slot.major >= min_version
            ]

    def resolve_guest_contract(self, handle: GuestContractHandle) -> GuestContract:
        """The callable contract a handle names.

        Raises:
            StaleHandle: the handle was never found, or its bundle was unloaded.
        """
        with self._lock:
            slot = self._slots[handle.index] if 0 <= handle.index < len(self._slots) else None
            if slot is None or slot.bundle is None or slot.generation != handle.generation:
                raise StaleHandle(
                    f"stale plugin handle: index={handle.index} generation={handle.generation} refers to a "
                    "vacated or recycled slot (its bundle was unloaded); call find_guest_contract again"
                )
            return GuestContract(slot.bundle, slot.contract_id, self.config)

    def contract(
        self, name: str | int, min_version: int = 1, api: str | os.PathLike[str] | None = None
    ) -> TypedContract:
        """A typed proxy of guest contract ``name`` (or its id): one method per api.toml function.

        ``api`` is the api.toml (or its directory) declaring the contract; None
        means the one beside the providing bundle's manifest.

        Raises:
            ManifestError: the api.toml is missing or invalid.
            LookupError: it declares no such contract, or no loaded bundle provides it
                at a major >= ``min_version``.
        """
        return open_contract(self, name, min_version, api)

    @property
    def bundles(self) -> list[Bundle]:
        """The loaded bundles."""
        with self._lock:
            return list(self._bundles.values())

    def live_worker_count(self) -> int:
        """How many worker processes of this runtime are running."""
        with self._lock:
            return sum(1 for b in self._bundles.values() if b.proxy is not None and b.proxy.alive)

    # ---- helpers -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LoaderError("this Runtime is closed; create a new one", bundle=None)

    def _event(self, event: BundleEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            _logger.exception("on_event callback raised for bundle %r (ignored)", event.bundle_name)

    def _report(self, phase: ReloadPhaseType, bundle: Bundle, reason: str = "") -> None:
        if self._on_reload is None:
            return
        try:
            self._on_reload(ReloadPhase(phase, bundle.id, bundle.name, reason))
        except Exception:
            _logger.exception("on_reload callback raised for bundle %r (ignored)", bundle.name)
