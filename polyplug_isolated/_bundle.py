"""A loaded bundle as the host sees it: its state, its current worker, its contracts.

Routing is one attribute: ``Bundle.proxy`` is the worker that takes new
calls. Reload swaps it (atomically under the GIL); unload and crashes clear
it. The allowed state changes are in one table, ``TRANSITIONS``.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from pathlib import Path

from ._config import WorkerOptions
from ._manifest import ManifestData
from ._proxy import WorkerProxy


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
        self.options = options  # how its worker is set up; kept across reloads and restarts
        self.restarts = 0
        self.proxy: WorkerProxy | None = None
        self.crash: WorkerProxy | None = None  # the worker whose death downed the bundle
        self.outlook = ""  # after a crash: what happens next, for error messages
        self._state = BundleState.LOADING
        self._lock = threading.Lock()

    @property
    def state(self) -> BundleState:
        return self._state

    def move(self, new: BundleState) -> None:
        """Changes state, refusing a change the table does not allow."""
        with self._lock:
            if new not in TRANSITIONS[self._state]:
                raise RuntimeError(f"bundle {self.name!r}: cannot go from {self._state.name} to {new.name}")
            self._state = new

    @property
    def pid(self) -> int | None:
        """The current worker's PID (None when no worker serves the bundle)."""
        return self.proxy.pid if self.proxy else None

    @property
    def contracts(self) -> list[ContractInfo]:
        proxy = self.proxy or self.crash
        if proxy is None:
            return []
        return [
            ContractInfo(c["contract_id"], c["name"], tuple(c["version"]), c["function_count"], c["plugin"])
            for c in proxy.contracts
        ]

    @property
    def inflight(self) -> int:
        """Calls in flight on the current worker."""
        proxy = self.proxy
        return proxy.channel.inflight if proxy and proxy.channel else 0

    def __repr__(self) -> str:
        return f"<Bundle {self.name!r} {self._state.name} pid={self.pid}>"
