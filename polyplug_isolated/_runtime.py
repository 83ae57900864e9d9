"""Runtime: the host facade — registry of bundles and contracts, load/reload/unload.

Method names follow polyplug's own Python host (``polyplug.Runtime``) so a
polyplug host can switch to isolation by changing an import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import _checks as check
from . import _dependencies
from ._bundle import Bundle, BundleState
from ._callbacks import Answerer, Directory
from ._channel import ChannelStock
from ._config import ResourceLimits, RestartPolicy, RuntimeConfig, WorkerOptions, worker_options
from ._contract import GuestContract
from ._faults import Fault
from ._lifetime import forked_message, reclaim, track, weakly
from ._manifest import ManifestData, did_you_mean, parse_manifest
from ._monitor import Monitor
from ._oserrors import loader_errors
from ._process import WorkerProcess
from ._proxy import WorkerProxy
from ._registry import NOT_FOUND, ContractRegistry, GuestContractHandle
from ._sandbox import RefusalLog, Sandbox, SandboxReport, default_policy
from ._supervisor import BundleEvent, BundleEventKind, Supervisor
from ._typed import TypedContract, open_contract
from ._zygote import FrameFor, Policy, Zygote
from .errors import (
    DependencyInUse,
    DependencyNotFound,
    InitFailed,
    LifecycleConflict,
    LoaderError,
    WorkerStartFailed,
)

_logger = logging.getLogger("polyplug_isolated")
SPARE_ANSWER_CHECKS = 250  # looks for the zygote's answer about a spare, one per Monitor.defer (~1 ms)
_BUNDLE = 'load_bundle("fixtures/build/adder")'
_OPTIONS = ("on_reload", "on_event", *(f.name for f in dataclasses.fields(RuntimeConfig)))


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
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(RuntimeConfig)})
        if unknown:
            raise TypeError(f"Runtime: unknown option {unknown[0]!r}{did_you_mean(unknown[0], _OPTIONS)}")
        self.config = RuntimeConfig(
            call_timeout=call_timeout,
            drain_timeout=drain_timeout,
            restart=RestartPolicy() if restart is None else restart,
            wait=wait,
            slots=slots,
            **options,
        )
        self._on_reload = check.callback("Runtime", "on_reload", on_reload, "on_reload=print")
        self._on_event = check.callback("Runtime", "on_event", on_event, "on_event=print")
        self._supervisor = Supervisor(self.config.restart, weakly(self._restart), weakly(self._event))
        self._lock = threading.RLock()
        self._bundles: dict[int, Bundle] = {}
        self._monitor = Monitor()
        self._zygote = Zygote(
            self.config.load_timeout,
            keep_spare=self.config.spare_worker,
            spare_policy=default_policy(self.config.containment),
        )
        self._channels = ChannelStock(self.config, keep=self.config.spare_worker)
        if self.config.prestart:
            self._zygote.start()
        self._refusals = RefusalLog()
        self._closed = False
        self._directory = Directory(self)  # what workers' calls back see (_callbacks)
        self._registry = ContractRegistry(self._directory.changed)
        # Lifecycle operations in progress, by bundle id: (what, thread). One
        # at a time per bundle; close() waits for them and kills their starts.
        self._busy: dict[int, tuple[str, int]] = {}
        self._idle = threading.Condition(self._lock)
        self._starting: set[WorkerProxy] = set()
        self._retiring: dict[WorkerProxy, int] = {}  # reloads' old workers, unloading: their bundle ids
        self._parent: int | None = None  # in a fork() child: the pid whose Runtime this is
        track(self)
        # Closes a Runtime dropped unclosed. Not at exit: workers see the host's
        # end by themselves, and a drain would only delay the exit.
        self._finalizer = weakref.finalize(
            self,
            reclaim,
            self._supervisor,
            self._bundles,
            self._zygote,
            self._channels,
            self._monitor,
            self.config.drain_timeout,
            self._retiring,
        )
        self._finalizer.atexit = False

    # ---- context ------------------------------------------------------------

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unloads every bundle (draining each) and stops the monitor. Idempotent.

        A load racing it is cut short (its worker killed) and raises LoaderError;
        a reload or unload in progress finishes first. In a fork() child it does
        nothing: the workers are the parent's.
        """
        if self._parent is not None:
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for proxy in self._starting:
                proxy.kill("the runtime was closed during the load")
            me = threading.get_ident()
            self._idle.wait_for(lambda: all(thread == me for _, thread in self._busy.values()))
            bundles = list(self._bundles.values())
        self._supervisor.close()
        # Every idle worker is told at once, then each is waited for (one after
        # the other, 1,000 workers took seconds to exit); dependers (loaded
        # later) first.
        farewell = "its Runtime was closed; load it into an open Runtime to call it"
        untold: list[WorkerProxy] = []
        leaving = [(bundle, self._begin_unload(bundle, farewell, untold)) for bundle in reversed(bundles)]
        self._monitor.defer(functools.partial(_tell_to_unload, untold))  # see leave_if_idle
        for bundle, (unloading, worker) in leaving:
            if unloading:
                self._end_unload(bundle, worker)
        self._await_retired(None)
        self._zygote.close()
        self._channels.close()
        self._monitor.close()
        self._finalizer.detach()

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
        sandbox: Sandbox | None = None,
    ) -> Bundle:
        """Loads the bundle at ``path`` into a new worker and publishes its contracts.

        Loading a bundle that is already loaded replaces its worker (as a reload).
        The keyword arguments set up the worker process (see WorkerOptions);
        reloads and restarts keep them. ``sandbox`` restricts the plugin beyond
        the default containment (see Sandbox).

        Raises:
            LoaderError: a subclass saying what failed; nothing is left behind.
        """
        options = dataclasses.replace(
            worker_options(env, inherit_env, cwd, library_path, limits, faults), sandbox=sandbox
        )
        if limits is not None and sandbox is not None and sandbox.limits is not None:
            raise ValueError("give resource limits either as load_bundle(limits=...) or Sandbox(limits=...)")
        return self.load_manifest(parse_manifest(check.path("load_bundle", "path", path, _BUNDLE)), options)

    def load_manifest(self, manifest: ManifestData, options: WorkerOptions | None = None) -> Bundle:
        """Loads an already parsed manifest (what IsolatedLoader.load does).

        Raises:
            LifecycleConflict: another thread is loading, reloading or unloading this bundle.
        """
        with self._claim(manifest, "loaded"):
            return self._load(manifest, options)

    def _load(self, manifest: ManifestData, options: WorkerOptions | None) -> Bundle:
        with self._lock:
            existing = self._bundles.get(manifest.id)
        if existing is not None:
            if options is not None:
                existing.set_options(options)
            return self._reload(existing, manifest)
        unmet = _dependencies.missing(manifest.dependencies, self.bundles)
        if unmet:
            raise DependencyNotFound(
                f"bundle {manifest.name!r}: dependency not found: "
                + ", ".join(f"contract={dep.describe()} min_version={dep.min_version}" for dep in unmet)
                + "; load the bundle that provides it first",
                bundle=manifest.name,
            )
        bundle = Bundle(manifest, options or WorkerOptions())
        bundle.runtime = self
        proxy = self._start_worker(bundle, manifest)
        with self._lock:
            bundle.proxy = proxy
            self._registry.publish(bundle, proxy.contracts)
            self._bundles[bundle.id] = bundle
            bundle.move(BundleState.READY)
        return bundle

    def reload_bundle(self, path: str | os.PathLike[str]) -> Bundle:
        """Starts a new worker for the bundle at ``path`` while the old one serves, then switches.

        On failure the old worker keeps serving, ``on_reload`` gets a Failed phase,
        and the LoaderError is raised. No call is lost either way.
        """
        return self.reload_manifest(parse_manifest(check.path("reload_bundle", "path", path, _BUNDLE)))

    def reload_manifest(self, manifest: ManifestData) -> Bundle:
        """Reloads an already parsed manifest (loads it if it is not loaded).

        Raises:
            LifecycleConflict: another thread is loading, reloading or unloading this bundle.
        """
        with self._claim(manifest, "reloaded"):
            with self._lock:
                bundle = self._bundles.get(manifest.id)
            # Not loaded: a load, through load_manifest (subclasses hook loads there).
            return self.load_manifest(manifest) if bundle is None else self._reload(bundle, manifest)

    def _reload(self, bundle: Bundle, manifest: ManifestData) -> Bundle:
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
            self._registry.publish(bundle, proxy.contracts)
            if bundle.state is BundleState.CRASHED:
                bundle.move(BundleState.RESTARTING)
                bundle.move(BundleState.READY)
        for depender in _dependencies.dependers(bundle, self.bundles):
            if depender.manifest.needs_reinit_on_dep_reload:
                self._reinit(depender, bundle)
        self._report(ReloadPhaseType.RELOADED, bundle)
        if old is not None and old.alive:
            self._retire(bundle, old)
        return bundle

    def _retire(self, bundle: Bundle, old: WorkerProxy) -> None:
        """The old worker of a reload: an idle one unloads while the reload returns (the bundle's
        unload and close() wait for it); one with calls in flight is drained first, as an unload does.
        One still running two close_grace periods later is killed at the next reload."""
        if not old.retire():
            old.shutdown(self.config.drain_timeout)
            return
        with self._lock:  # in place: the finalizer holds this dict too
            for earlier in list(self._retiring):
                if earlier.alive:
                    earlier.end_if_overdue()  # one whose unload hangs: as shutdown() would
                else:
                    del self._retiring[earlier]
            self._retiring[old] = bundle.id

    def _await_retired(self, bundle: Bundle | None) -> None:
        """Waits for the old workers of ``bundle``'s reloads (None: of every bundle) to exit."""
        with self._lock:
            leaving = [proxy for proxy, id in self._retiring.items() if bundle is None or id == bundle.id]
        for proxy in leaving:
            proxy.await_exit()

    def _reinit(self, depender: Bundle, target: Bundle) -> None:
        """The cascade: a fresh worker runs the depender's polyplug_init again; calls are rerouted."""
        try:
            self.reload_manifest(depender.manifest)
        except LoaderError as exc:
            raise LoaderError(
                f"cascade reload of dependent bundle {depender.name!r} failed after {target.name!r} "
                f"reloaded: "
                f"{exc}",
                bundle=depender.name,
            ) from exc

    def unload_bundle(self, bundle: Bundle | int | str) -> None:
        """Drains the bundle's calls in flight, then its worker dlcloses and exits.

        ``bundle`` is a Bundle, its id or its name. New calls fail at once with
        BundleUnavailable; handles go stale.

        Raises:
            DependencyInUse: loaded bundles declared a dependency on it.
            LifecycleConflict: another thread is loading, reloading or unloading this bundle.
        """
        bundle = self._loaded(bundle, "unload_bundle")
        users = _dependencies.dependers(bundle, self.bundles)
        if users:
            raise DependencyInUse(
                f"cannot unload bundle {bundle.name!r}: still-loaded bundles declared a dependency on it: "
                f"{[user.name for user in users]}; unload them first",
                bundle=bundle.name,
            )
        with self._claim(bundle.manifest, "unloaded"):
            self._unload(bundle)

    @contextlib.contextmanager
    def _claim(self, manifest: ManifestData, what: str) -> Iterator[None]:
        """Serialises lifecycle operations on one bundle: one that races another is refused.

        Waiting instead would only replay the race (a load after a load starts a
        second worker; an unload after a reload throws the new worker away):
        the caller, who knows what it wanted, decides. The thread holding the
        claim may claim again (a reload of a bundle not loaded is a load).
        """
        me = threading.get_ident()
        with self._lock:
            self._check_open()
            busy = self._busy.get(manifest.id)
            if busy is not None and busy[1] != me:
                raise LifecycleConflict(
                    f"bundle {manifest.name!r} is being {busy[0]} by another thread: it cannot also be "
                    f"{what} now; retry once that call has returned",
                    bundle=manifest.name,
                )
            outermost = busy is None
            if outermost:
                self._busy[manifest.id] = (what, me)
        try:
            yield
        finally:
            if outermost:
                with self._lock:
                    del self._busy[manifest.id]
                    self._idle.notify_all()

    def _loaded(self, key: Bundle | int | str, owner: str) -> Bundle:
        """The loaded bundle ``key`` names, or a LoaderError saying what is loaded."""
        with self._lock:
            if isinstance(key, Bundle):
                found = key if self._bundles.get(key.id) is key else None
                what = f"bundle {key.name!r} is not loaded in this runtime (it is {key.state.name})"
            elif isinstance(key, int) and not isinstance(key, bool):
                found = self._bundles.get(key)
                what = f"no bundle with id {key} (0x{key:016X}) is loaded in this runtime"
            elif isinstance(key, str):
                found = next((b for b in self._bundles.values() if b.name == key), None)
                what = f"no bundle named {key!r} is loaded in this runtime"
            else:
                raise TypeError(
                    f"{owner}: takes a Bundle, a bundle id or a bundle name, not {type(key).__name__}; "
                    f'e.g. {owner}(bundle) or {owner}("adder")'
                )
            loaded = ", ".join(repr(b.name) for b in self._bundles.values()) or "none"
        if found is None:
            raise LoaderError(
                f"{owner}: {what}; loaded: {loaded}",
                bundle=key.name if isinstance(key, Bundle) else None,
            )
        return found

    def _unload(self, bundle: Bundle, why: str = "it was unloaded; load it again to call it") -> None:
        unloading, proxy = self._begin_unload(bundle, why)
        if unloading:
            self._end_unload(bundle, proxy)

    def _begin_unload(
        self, bundle: Bundle, why: str, untold: list[WorkerProxy] | None = None
    ) -> tuple[bool, WorkerProxy | None]:
        """Turns the bundle DRAINING and tells its worker, if idle, to exit (or, with ``untold``,
        adds it there for the caller to have told).

        Returns whether this call unloads the bundle, and its worker.
        """
        bundle.farewell = why
        self._supervisor.forget(bundle)
        self._report(ReloadPhaseType.UNLOADING, bundle)
        with self._lock:
            if bundle.state is BundleState.UNLOADED or self._bundles.get(bundle.id) is not bundle:
                return False, None
            proxy = bundle.proxy
            if proxy is not None:
                proxy.channel.start_draining()  # before anyone can see DRAINING
            bundle.move(BundleState.DRAINING)
            self._registry.unpublish(bundle)
        if proxy is not None and proxy.alive:
            left = proxy.leave_if_idle(send=untold is None)
            if left and untold is not None:
                untold.append(proxy)
        return True, proxy

    def _end_unload(self, bundle: Bundle, proxy: WorkerProxy | None) -> None:
        """Drains and ends the worker (waiting for it), then the bundle is UNLOADED."""
        if proxy is not None and proxy.alive:
            proxy.shutdown(self.config.drain_timeout)
        self._await_retired(bundle)
        with self._lock:
            bundle.proxy = None
            del self._bundles[bundle.id]
            bundle.move(BundleState.UNLOADED)

    def _start_worker(self, bundle: Bundle, manifest: ManifestData) -> WorkerProxy:
        """A worker serving ``manifest``; close() kills it while it starts (a load, reload or
        restart racing close() would otherwise hold it up to its load_timeout)."""
        if self._monitor.failed:
            raise InitFailed(
                f"bundle {manifest.name!r}: this Runtime's monitor thread failed (see the log), so no "
                "worker can be watched: close it and create a new Runtime",
                bundle=manifest.name,
            )
        try:
            with loader_errors(manifest.name, "starting its worker"):
                return self._start_worker_process(bundle, manifest)
        except LoaderError as exc:
            if self._closed:
                raise LoaderError(
                    f"bundle {manifest.name!r}: the runtime was closed while its worker was starting",
                    bundle=manifest.name,
                ) from exc
            raise

    def _start_worker_process(self, bundle: Bundle, manifest: ManifestData) -> WorkerProxy:
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

        def spawn(load_frame_for: FrameFor, segment_fd: int, policy: Policy) -> WorkerProcess:
            try:
                return self._zygote.fork(environment, load_frame_for, segment_fd, policy)
            except WorkerStartFailed as exc:
                raise WorkerStartFailed(
                    f"bundle {manifest.name!r}: cannot start a worker: {exc}",
                    bundle=manifest.name,
                    errno=exc.errno,
                ) from exc

        on_death = weakly(self._on_death)  # the monitor thread must not keep the runtime alive
        proxy = WorkerProxy(
            manifest,
            self.config,
            self._monitor,
            lambda dead: on_death(bundle, dead),
            bundle.record_fault,
        )
        with self._lock:
            if self._closed:  # close() has killed the starts it saw: this one must not begin
                raise LoaderError(f"bundle {manifest.name!r}: the runtime is closed", bundle=manifest.name)
            self._starting.add(proxy)
        try:
            faults = bundle.fault_specs(bundle.start_faults)
            answerer = Answerer(self._directory, bundle)
            proxy.start(spawn, self._channels.take(), options, faults, answerer)  # start() closes its fd
        finally:
            with self._lock:
                self._starting.discard(proxy)
            self._monitor.defer(weakly(self._ready_next_start))  # the monitor must not keep the runtime alive
        if proxy.sandbox_report is not None:
            self._refusals.note(proxy.sandbox_report)
        return proxy

    def _ready_next_start(self) -> None:
        """Monitor thread, after a start: the next start's spare worker and channel."""
        self._zygote.fork_ahead()
        self._channels.refill()
        self._monitor.defer(functools.partial(weakly(self._adopt_spare), SPARE_ANSWER_CHECKS))

    def _adopt_spare(self, checks: int) -> None:
        """Monitor thread: the zygote's answer about the spare, read off the next start's path."""
        if self._zygote.adopt_spare() and checks > 1:  # not come yet: look again a little later
            self._monitor.defer(functools.partial(weakly(self._adopt_spare), checks - 1))

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
        try:
            announce = self._supervisor.crashed(bundle) if current else None  # decided before callers wake
        finally:
            proxy.channel.mark_dead()  # whatever failed above, no caller waits on a dead worker
        if announce is None:
            return
        death = proxy.death
        assert death is not None  # recorded before on_death is called
        description = death.description + (f" ({death.kill_reason})" if death.kill_reason else "")
        _logger.error("bundle %r: worker %d %s", bundle.name, proxy.pid, description)
        self._event(
            BundleEvent(BundleEventKind.CRASHED, bundle.id, bundle.name, description, bundle.restarts)
        )
        announce()

    def _restart(self, bundle: Bundle) -> bool:
        """Supervisor thread: a fresh worker for a crashed bundle, same file, init again.

        Handles stay valid: contracts follow their bundle to the new worker.
        Returns False when the bundle was unloaded or reloaded meanwhile, or the runtime closed.
        """
        with self._lock:
            if self._bundles.get(bundle.id) is not bundle or bundle.state is not BundleState.CRASHED:
                return False
            bundle.move(BundleState.RESTARTING)
        try:
            proxy = self._start_worker(bundle, bundle.manifest)
        except LoaderError:
            with self._lock:
                if bundle.state is BundleState.RESTARTING:  # type: ignore[comparison-overlap]  # moved above
                    bundle.move(BundleState.CRASHED)
                closed = self._closed
            if closed:  # close() cut it short: no failure to report
                return False
            raise
        with self._lock:
            current = bundle.state is BundleState.RESTARTING  # type: ignore[comparison-overlap]  # moved above
            if current:
                bundle.proxy = proxy
                bundle.crash = None
                bundle.restarts += 1
                self._registry.publish(bundle, proxy.contracts)
                bundle.move(BundleState.READY)
        if not current:
            proxy.shutdown(self.config.drain_timeout)
        return current

    # ---- registry ------------------------------------------------------------

    def find_guest_contract(self, contract_id: int, min_version: int = 0) -> GuestContractHandle:
        """The first provider of ``contract_id`` whose major is at least ``min_version``."""
        with self._lock:
            found = self._registry.find_all("find_guest_contract", contract_id, min_version)
        return found[0] if found else GuestContractHandle(NOT_FOUND, 0)

    def find_all_by_contract(self, contract_id: int, min_version: int = 0) -> list[GuestContractHandle]:
        """Every provider of ``contract_id`` (major >= ``min_version``), in registration order."""
        with self._lock:
            return self._registry.find_all("find_all_by_contract", contract_id, min_version)

    def resolve_guest_contract(self, handle: GuestContractHandle) -> GuestContract:
        """The callable contract a handle names.

        Raises:
            StaleHandle: the handle was never found, or its bundle was unloaded.
        """
        bundle, contract_id = self._provider(handle)
        return GuestContract(bundle, contract_id, self.config)

    def _provider(self, handle: GuestContractHandle) -> tuple[Bundle, int]:
        """(bundle, contract id) that ``handle`` names now, without building a contract to call.

        Raises:
            StaleHandle: the handle was never found, or its bundle was unloaded.
        """
        with self._lock:
            return self._registry.provider(handle)

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

    def register_host_contract(
        self,
        implementation: Any,
        *,
        api: str | os.PathLike[str] | None = None,
        contract: str | None = None,
        singleton: bool = True,
    ) -> None:
        """Offers a host contract to every bundle's ``get_host_contract``.

        ``implementation`` is polyplug's ``HostContractInterface`` as its generated
        host factories build it (a ctypes struct with callbacks and ``user_data``;
        keep it alive), or a plain Python object whose methods are the functions of
        the api.toml ``[[host_contract]]`` named by ``contract`` (the only one, if
        None), called with and returning Python values. Implementations run on the
        host thread whose plugin call asked for them. ``api`` also tells the
        workers how a native interface's arguments are laid out; without it, the
        calling bundle's own api.toml must declare the host contract.

        Raises:
            ValueError: a host contract with that id is already registered.
            TypeError, LookupError, ManifestError: the implementation or api does not fit.
        """
        self._directory.host_contracts.register(implementation, api, contract, singleton)

    @property
    def bundles(self) -> list[Bundle]:
        """The loaded bundles."""
        with self._lock:
            return list(self._bundles.values())

    def sandbox_report(self) -> dict[str, SandboxReport]:
        """What contains each loaded bundle's current worker, by bundle name.

        A bundle whose policy asked for nothing (``Runtime(containment=False)``
        and no Sandbox), or with no worker right now, is absent.
        """
        with self._lock:
            proxies = [(b.name, b.proxy) for b in self._bundles.values()]
        return {
            name: proxy.sandbox_report
            for name, proxy in proxies
            if proxy is not None and proxy.sandbox_report is not None
        }

    def live_worker_count(self) -> int:
        """How many worker processes of this runtime are running (serving its bundles: not
        counting a reload's old worker still finishing its unload)."""
        with self._lock:
            return sum(1 for b in self._bundles.values() if b.proxy is not None and b.proxy.alive)

    # ---- helpers -------------------------------------------------------------

    def _forked(self) -> None:
        """fork() hook, in the child, before any other code runs there: this copy goes inert.

        Calls are refused unsent (each channel drains: host-private memory, so
        the parent's workers see nothing), lifecycle calls raise, and the
        child's copies of the parent's descriptors are closed.
        """
        self._parent = os.getppid()
        self._finalizer.detach()
        self._lock = threading.RLock()  # a parent thread may have held the old one at the fork
        self._idle = threading.Condition(self._lock)
        why = forked_message(self._parent)
        for watcher in self._monitor.forget_after_fork():
            if isinstance(watcher, WorkerProxy) and watcher.channel is not None:
                watcher.channel.start_draining()
        self._zygote.forget_after_fork()
        self._channels.forget_after_fork()
        self._retiring.clear()  # the parent's to wait for
        for bundle in self._bundles.values():
            bundle.forget_after_fork(why)

    def _check_open(self) -> None:
        if self._parent is not None:
            raise LoaderError(forked_message(self._parent), bundle=None)
        if self._closed:
            raise LoaderError("this Runtime is closed; create a new one", bundle=None)

    def _event(self, event: BundleEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except BaseException:  # it runs on the monitor thread: not even SystemExit may end that
            _logger.exception("on_event callback raised for bundle %r (ignored)", event.bundle_name)

    def _report(self, phase: ReloadPhaseType, bundle: Bundle, reason: str = "") -> None:
        if self._on_reload is None:
            return
        try:
            self._on_reload(ReloadPhase(phase, bundle.id, bundle.name, reason))
        except Exception:
            _logger.exception("on_reload callback raised for bundle %r (ignored)", bundle.name)


def _tell_to_unload(proxies: list[WorkerProxy]) -> None:
    """Monitor thread: tells idle workers to unload (close())."""
    for proxy in proxies:
        proxy.send_unload()
