"""A loaded bundle as the host sees it: its state, its current worker, its contracts.

Routing is one attribute: ``Bundle.proxy`` is the worker that takes new
calls. Reload swaps it (atomically under the GIL); unload and crashes clear
it. The allowed state changes are in one table, ``TRANSITIONS``.
"""

from __future__ import annotations

import enum
import itertools
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _checks as check
from . import _protocol as proto
from ._config import WorkerOptions
from ._faults import Fault, FaultRecord
from ._manifest import ManifestData
from ._proxy import WorkerProxy
from ._sandbox import SandboxReport
from .errors import BundleUnavailable, LoaderError

if TYPE_CHECKING:
    from ._runtime import Runtime
    from ._typed import TypedContract


class BundleState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    CRASHED = "crashed"
    RESTARTING = "restarting"
    UNLOADED = "unloaded"


TRANSITIONS: dict[BundleState, frozenset[BundleState]] = {
    BundleState.LOADING: frozenset({BundleState.READY, BundleState.UNLOADED}),
    BundleState.READY: frozenset({BundleState.DRAINING, BundleState.CRASHED}),
    BundleState.DRAINING: frozenset({BundleState.UNLOADED}),
    BundleState.CRASHED: frozenset({BundleState.RESTARTING, BundleState.DRAINING}),
    BundleState.RESTARTING: frozenset({BundleState.READY, BundleState.CRASHED, BundleState.DRAINING}),
    BundleState.UNLOADED: frozenset(),
}


@dataclass(frozen=True)
class ContractInfo:
    """A contract a bundle registered in its worker."""

    contract_id: int
    name: str
    version: tuple[int, int, int]
    function_count: int
    plugin_name: str


class Bundle:
    """A bundle loaded by a Runtime; read its attributes, call through contracts."""

    def __init__(self, manifest: ManifestData, options: WorkerOptions):
        self.id = manifest.id
        self.name = manifest.name
        self.version = manifest.version
        self.path: Path = manifest.path
        self.manifest = manifest
        self.restarts = 0
        self.proxy: WorkerProxy | None = None
        self.crash: WorkerProxy | None = None  # the worker whose death downed the bundle
        self.outlook = ""  # after a crash: what happens next, for error messages
        self.farewell = ""  # once unloading: why, and what to do, for error messages
        # The runtime that loaded it, held weakly: a bundle (or a contract kept
        # past its runtime) must not keep a dropped Runtime from its finalizer.
        self._runtime: weakref.ref[Runtime] | None = None
        self._state = BundleState.LOADING
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # state, worker or restart outlook changed
        self.restart_pending = False
        self.inert = ""  # why this copy of the bundle cannot be used (a fork() child), if it cannot
        self._fault_ids = itertools.count(1)
        self._faults: dict[int, Fault] = {}  # every fault ever armed, by id
        self._fault_log: list[FaultRecord] = []
        self.set_options(options)

    def set_options(self, options: WorkerOptions) -> None:
        """How its workers are set up; kept across reloads and restarts."""
        self.options = options
        self.start_faults = [(next(self._fault_ids), fault) for fault in options.faults]

    @property
    def state(self) -> BundleState:
        return self._state

    def move(self, new: BundleState) -> None:
        """Changes state, refusing a change the table does not allow."""
        with self._lock:
            if new not in TRANSITIONS[self._state]:
                raise RuntimeError(f"bundle {self.name!r}: cannot go from {self._state.name} to {new.name}")
            self._state = new
            self._changed.notify_all()

    def expect_restart(self, outlook: str, pending: bool) -> None:
        """After a crash: what happens next (for messages), and whether a restart is coming."""
        with self._changed:
            self.outlook = outlook
            self.restart_pending = pending
            self._changed.notify_all()

    def await_worker(self, timeout: float | None) -> bool:
        """While a restart is pending, waits for a worker to serve again; True if one does.

        Callers wait out a restart instead of spinning on BundleUnavailable
        (a busy retry loop would starve the restart of the GIL).
        """
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self.proxy is not None
                    or not self.restart_pending
                    or self._state in (BundleState.DRAINING, BundleState.UNLOADED)
                ),
                timeout,
            )
            return self.proxy is not None

    def forget_after_fork(self, why: str) -> None:
        """In a fork() child: no worker serves this copy of the bundle; calls say ``why``.

        Fresh locks: a thread of the parent may have held these at the fork.
        """
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.inert, self.restart_pending = why, False
        self.proxy = self.crash = None

    @property
    def runtime(self) -> Runtime | None:
        """The Runtime that loaded this bundle (None if none did, or it is gone)."""
        return self._runtime() if self._runtime is not None else None

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        self._runtime = weakref.ref(runtime)

    def unload(self) -> None:
        """Unloads this bundle from its runtime (``runtime.unload_bundle(self)``)."""
        runtime = self.runtime
        if runtime is None:
            raise LoaderError(f"bundle {self.name!r} was not loaded by a Runtime", bundle=self.name)
        runtime.unload_bundle(self)

    @property
    def pid(self) -> int | None:
        """The current worker's PID (None when no worker serves the bundle)."""
        return self.proxy.pid if self.proxy else None

    @property
    def worker_pid(self) -> int | None:
        """The pid of the process running the plugin. Under containment it runs
        inside the worker's namespaces, a descendant of ``pid`` (which stands for
        it: signals reach it, its exit status is the worker's); else ``pid``."""
        proxy = self.proxy
        report = proxy.sandbox_report if proxy else None
        return report.pid if report is not None and report.pid else self.pid

    @property
    def sandbox_report(self) -> SandboxReport | None:
        """What contains the current worker (see Runtime.sandbox_report); None without one."""
        return self.proxy.sandbox_report if self.proxy else None

    @property
    def contracts(self) -> list[ContractInfo]:
        proxy = self.proxy or self.crash
        if proxy is None:
            return []
        return [
            ContractInfo(c["contract_id"], c["name"], tuple(c["version"]), c["function_count"], c["plugin"])
            for c in proxy.contracts
        ]

    def contract(
        self, name: str | int, min_version: int = 1, api: str | os.PathLike[str] | None = None
    ) -> TypedContract:
        """This bundle's provider of guest contract ``name`` as a typed proxy (see Runtime.contract);
        ``api`` defaults to the api.toml beside its manifest."""
        from ._typed import open_bundle_contract  # _typed needs _contract, which needs this module

        return open_bundle_contract(self, name, min_version, api)

    @property
    def inflight(self) -> int:
        """Calls in flight on the current worker."""
        proxy = self.proxy
        return proxy.channel.inflight if proxy and proxy.channel else 0

    def stats(self) -> dict[str, int]:
        """Calls and failed calls on the current worker, restarts so far."""
        proxy = self.proxy
        calls, failures = proxy.channel.counters if proxy and proxy.channel else (0, 0)
        return {"calls": calls, "failures": failures, "restarts": self.restarts}

    # ---- fault injection ---------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Arms faults in the current worker, after any armed before; they act from the next call.

        Faults live in one worker: a restart or reload starts clean (only the
        ``faults=`` given to load_bundle are armed again at each start).
        """
        for fault in faults:
            check.instance("inject", "each fault", fault, Fault, "bundle.inject(Fault.crash().on_call(3))")
        if any(fault.init for fault in faults):
            raise ValueError("faults during_init() act at load: pass them to load_bundle(faults=...)")
        armed = [(next(self._fault_ids), fault) for fault in faults]
        self._arm(armed, append=True)

    def clear_faults(self) -> None:
        """Disarms every fault in the current worker."""
        self._arm([], append=False)

    def fault_log(self) -> list[FaultRecord]:
        """Every fault that fired in this bundle's workers so far, in order."""
        proxy = self.proxy
        if proxy is not None:
            proxy.request(proto.frame(proto.SYNC), self._sync_timeout)  # fault frames sent before are now in
        with self._lock:
            return list(self._fault_log)

    def record_fault(self, proxy: WorkerProxy, message: dict[str, Any]) -> None:
        """Monitor thread: a fault fired in ``proxy``'s worker."""
        fault_id = message.get("id")
        fault = self._faults.get(fault_id) if isinstance(fault_id, int) else None
        if fault is None:
            return
        contract = message.get("contract", -1)
        names = [c["name"] for c in proxy.contracts]
        name = names[contract] if isinstance(contract, int) and 0 <= contract < len(names) else None
        function = message.get("function")
        record = FaultRecord(fault, message.get("call", 0), name, function if name is not None else None)
        with self._lock:
            self._fault_log.append(record)

    def fault_specs(self, armed: list[tuple[int, Fault]]) -> list[dict[str, Any]]:
        """Registers faults by id and returns what the worker is sent."""
        with self._lock:
            self._faults.update(armed)
        return [fault.spec(fault_id) for fault_id, fault in armed]

    def _arm(self, armed: list[tuple[int, Fault]], append: bool) -> None:
        proxy = self.proxy
        if proxy is None:
            raise BundleUnavailable(
                f"bundle {self.name!r} is {self._state.name}: no worker to inject faults into",
                bundle=self.name,
            )
        frame = proto.frame(proto.FAULTS, faults=self.fault_specs(armed), append=append)
        if not proxy.request(frame, self._sync_timeout):
            raise BundleUnavailable(
                f"bundle {self.name!r}: its worker ended before the faults were armed", bundle=self.name
            )

    _sync_timeout = 10.0

    def __repr__(self) -> str:
        return f"<Bundle {self.name!r} {self._state.name} pid={self.pid}>"
