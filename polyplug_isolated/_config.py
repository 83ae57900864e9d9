"""Runtime configuration: one frozen value per runtime, no module-level state."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._faults import Fault

WAITS = ("auto", "spin", "block")


@dataclass(frozen=True)
class RestartPolicy:
    """How a crashed bundle comes back, Erlang-style.

    At most ``max_restarts`` restarts within any ``window`` seconds; one more
    crash and the runtime gives up (the bundle stays CRASHED). Attempt k
    (0-based, within the window) waits ``min(max_backoff, backoff * 2**k)``
    seconds, shortened by up to ``jitter`` (a fraction) at random so that
    bundles that crashed together do not restart in lockstep.
    ``max_restarts=0`` (the default) leaves a crashed bundle down.
    """

    max_restarts: int = 0
    backoff: float = 0.05
    window: float = 60.0
    max_backoff: float = 5.0
    jitter: float = 0.5

    def __post_init__(self):
        if self.max_restarts < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("RestartPolicy: max_restarts, backoff and max_backoff must not be negative")
        if self.window <= 0:
            raise ValueError("RestartPolicy: window must be positive")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RestartPolicy: jitter is a fraction between 0 and 1")


@dataclass(frozen=True)
class RuntimeConfig:
    """Every knob of a Runtime, with its default.

    Attributes:
        call_timeout: default per-call timeout in seconds; None waits forever
            (a crash still ends the call).
        drain_timeout: how long unload/reload let calls in flight finish before
            killing the worker.
        load_timeout: how long a worker may take to dlopen and run polyplug_init.
        close_grace: how long a worker may take to exit before SIGTERM, then SIGKILL.
        wait: "auto" spins for ``spin_ns`` then sleeps; "spin" only spins; "block"
            only sleeps (both host and worker side).
        spin_ns: the spin window of "auto".
        slots: concurrent calls per worker: each host thread that calls a
            bundle holds one slot, served by a worker thread of its own.
        max_threads: most worker threads (slots in use) per worker; None: ``slots``.
            Past it, a call from yet another host thread waits for an idle
            slot and takes it over (its owner's next call gets another).
        thread_idle_timeout: seconds after which a worker thread whose host
            thread made no call exits (its next call gets a fresh one, with
            fresh thread-local state); None: it lives as long as its host thread.
        payload_capacity: bytes per call slot for args + out (args rounded up to 8).
        prestart: keep one worker process started ahead of need, so that a load,
            reload or restart skips the worker's interpreter start-up (~60 ms
            here) at the cost of one idle process per runtime.
        arena_capacity: bytes of the one shared spill area for a call (or batch) whose
            args + out exceed a slot: the largest call a worker takes. Calls that
            spill take turns; pages are only committed when touched.
    """

    call_timeout: float | None = None
    drain_timeout: float = 10.0
    load_timeout: float = 10.0
    close_grace: float = 5.0
    wait: str = "auto"
    spin_ns: int = 50_000
    slots: int = 64
    max_threads: int | None = None
    thread_idle_timeout: float | None = None
    payload_capacity: int = 64 * 1024
    arena_capacity: int = 4 * 1024 * 1024
    restart: RestartPolicy = RestartPolicy()
    prestart: bool = False

    def __post_init__(self):
        if self.wait not in WAITS:
            raise ValueError(f"wait must be one of {WAITS}, not {self.wait!r}")
        if not 1 <= self.slots <= 4096:  # PP_MAX_SLOTS
            raise ValueError(f"slots must be between 1 and 4096, not {self.slots}")
        if self.max_threads is not None and not 1 <= self.max_threads <= self.slots:
            raise ValueError(
                f"max_threads must be between 1 and slots ({self.slots}), not {self.max_threads}"
            )
        if self.thread_idle_timeout is not None and not 0.001 <= self.thread_idle_timeout <= 4e6:
            raise ValueError(
                f"thread_idle_timeout must be None or 0.001..4e6 seconds, not {self.thread_idle_timeout}"
            )
        if not 8 <= self.payload_capacity <= 1 << 30:
            raise ValueError(
                f"payload_capacity must be between 8 bytes and 1 GiB, not {self.payload_capacity}"
            )
        for name in ("drain_timeout", "load_timeout", "close_grace"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.call_timeout is not None and self.call_timeout <= 0:
            raise ValueError("call_timeout must be positive or None")
        if self.spin_ns < 0:
            raise ValueError("spin_ns must not be negative")


@dataclass(frozen=True)
class ResourceLimits:
    """Limits set in the worker (setrlimit) before the plugin is loaded; None: inherited.

    Attributes:
        address_space: bytes of virtual memory (RLIMIT_AS); allocations past it fail.
        cpu_seconds: CPU time (RLIMIT_CPU); past it the worker gets SIGXCPU, then SIGKILL.
        open_files: file descriptors (RLIMIT_NOFILE).
    """

    address_space: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None

    def __post_init__(self):
        for name, value in self.as_dict().items():
            if value <= 0:
                raise ValueError(f"ResourceLimits.{name} must be positive, not {value}")

    def as_dict(self) -> dict[str, int]:
        """The limits that are set, by name."""
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class WorkerOptions:
    """How one bundle's worker process is set up (``load_bundle(..., env=...)`` and friends).

    Attributes:
        env: variables added to the worker's environment (or, with
            ``inherit_env=False``, its whole environment besides PYTHONPATH,
            which the worker program itself needs).
        inherit_env: start from the host's environment.
        cwd: the worker's working directory.
        library_path: directories prepended to LD_LIBRARY_PATH, so the plugin's
            own shared libraries resolve without touching the host's environment.
        limits: resource limits for the worker.
        faults: fault plans armed in every worker of the bundle before
            polyplug_init (so ``Fault.crash().during_init()`` works), see _faults.
    """

    env: tuple[tuple[str, str], ...] = ()
    inherit_env: bool = True
    cwd: str | None = None
    library_path: tuple[str, ...] = ()
    limits: ResourceLimits | None = None
    faults: tuple[Fault, ...] = ()

    @property
    def needs_own_process(self) -> bool:
        """A spare worker was started with the host's environment; these options need their own."""
        return bool(self.env or self.library_path) or not self.inherit_env

    def environment(self, host: dict[str, str]) -> dict[str, str] | None:
        """The worker's environment, or None for the host's own."""
        if not self.needs_own_process:
            return None
        env = dict(host) if self.inherit_env else {k: host[k] for k in ("PYTHONPATH",) if k in host}
        env.update(self.env)
        if self.library_path:
            paths = [*self.library_path, *filter(None, env.get("LD_LIBRARY_PATH", "").split(os.pathsep))]
            env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
        return env
