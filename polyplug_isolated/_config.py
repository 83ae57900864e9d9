"""Runtime configuration: one frozen value per runtime, no module-level state."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _checks as check
from ._faults import Fault

if TYPE_CHECKING:
    from ._sandbox import Sandbox

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

    def __post_init__(self) -> None:
        owner = "RestartPolicy"
        check.integer(owner, "max_restarts", self.max_restarts, "RestartPolicy(max_restarts=3)", low=0)
        check.number(owner, "backoff", self.backoff, "RestartPolicy(backoff=0.05)", low=0)
        check.number(owner, "max_backoff", self.max_backoff, "RestartPolicy(max_backoff=5.0)", low=0)
        check.number(owner, "window", self.window, "RestartPolicy(window=60.0)", positive=True)
        check.number(owner, "jitter", self.jitter, "RestartPolicy(jitter=0.5)", low=0, high=1)


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
        prestart: start the runtime's zygote (the worker template every worker
            is forked from) with the Runtime rather than at the first load (~40 ms
            once, then ~90 ms on a busy machine).
        spare_worker: keep one worker forked ahead and contained with the default
            policy (from the first load on, or from the start with ``prestart``),
            so that a load, reload or restart skips the fork and the containment
            (~4 ms) at the cost of one idle worker (~1.6 MB, three processes).
            False: each worker is forked when it is needed. A bundle with a
            Sandbox, or whose environment needs an exec, forks its own either way.
        arena_capacity: bytes of the one shared spill area for a call (or batch) whose
            args + out exceed a slot: the largest call a worker takes. Calls that
            spill take turns; pages are only committed when touched.
        containment: contain every worker (namespaces, no capabilities, Landlock,
            seccomp: see README "What a plugin can and cannot do"); False only to
            measure what it costs or on a kernel where it misbehaves.
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
    spare_worker: bool = True
    containment: bool = True

    def __post_init__(self) -> None:
        owner = "Runtime"
        if self.wait not in WAITS:
            raise ValueError(f'{owner}: wait must be one of {WAITS}, not {self.wait!r}; e.g. wait="auto"')
        check.integer(owner, "slots", self.slots, "slots=64", low=1, high=4096)  # PP_MAX_SLOTS
        check.integer(
            owner, "payload_capacity", self.payload_capacity, "payload_capacity=65536", low=8, high=1 << 30
        )
        check.integer(
            owner, "arena_capacity", self.arena_capacity, "arena_capacity=4 << 20", low=0, high=(1 << 32) - 1
        )
        if self.max_threads is not None:
            check.integer(owner, "max_threads", self.max_threads, "max_threads=8", low=1)
            if self.max_threads > self.slots:
                raise ValueError(
                    f"{owner}: max_threads must be between 1 and slots ({self.slots}), not "
                    f"{self.max_threads}; e.g. max_threads={self.slots}"
                )
        if self.thread_idle_timeout is not None:
            check.number(
                owner,
                "thread_idle_timeout",
                self.thread_idle_timeout,
                "thread_idle_timeout=60.0",
                positive=True,
            )
            if not 0.001 <= self.thread_idle_timeout <= 4e6:
                raise ValueError(
                    f"{owner}: thread_idle_timeout must be None or 0.001..4e6 seconds, "
                    f"not {self.thread_idle_timeout}; e.g. thread_idle_timeout=60.0"
                )
        for name in ("drain_timeout", "load_timeout", "close_grace"):
            check.number(owner, name, getattr(self, name), f"{name}=10.0", positive=True)
        check.timeout(owner, "call_timeout", self.call_timeout, "call_timeout=5.0")
        check.integer(owner, "spin_ns", self.spin_ns, "spin_ns=50_000", low=0)
        check.instance(owner, "restart", self.restart, RestartPolicy, "restart=RestartPolicy(max_restarts=3)")
        check.flag(owner, "prestart", self.prestart, "prestart=True")
        check.flag(owner, "spare_worker", self.spare_worker, "spare_worker=False")


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

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            check.integer("ResourceLimits", name, value, f"ResourceLimits({name}=256)", low=1)

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
        sandbox: restrictions beyond the default containment (a ``Sandbox``).
    """

    env: tuple[tuple[str, str], ...] = ()
    inherit_env: bool = True
    cwd: str | None = None
    library_path: tuple[str, ...] = ()
    limits: ResourceLimits | None = None
    faults: tuple[Fault, ...] = ()
    sandbox: Sandbox | None = None

    @property
    def needs_own_process(self) -> bool:
        """Whether these options make the worker's environment differ from the host's."""
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


def worker_options(
    env: Mapping[str, str] | None,
    inherit_env: bool,
    cwd: str | os.PathLike[str] | None,
    library_path: Iterable[str | os.PathLike[str]],
    limits: ResourceLimits | None,
    faults: Iterable[Fault],
) -> WorkerOptions:
    """load_bundle's keyword arguments, checked, as WorkerOptions."""
    owner = "load_bundle"
    if env is not None and (
        not isinstance(env, Mapping)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise TypeError(f'{owner}: env must map str to str, not {env!r:.80}; e.g. env={{"MODE": "prod"}}')
    check.flag(owner, "inherit_env", inherit_env, "inherit_env=False")
    if isinstance(library_path, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{owner}: library_path is a list of directories, not one path; "
            f'e.g. library_path=["{os.fsdecode(library_path)}"]'
        )
    if isinstance(limits, Mapping):
        raise TypeError(
            f"{owner}: limits must be a ResourceLimits, not a dict; "
            f"e.g. limits=ResourceLimits({', '.join(f'{k}={v!r}' for k, v in limits.items())})"
        )
    faults = tuple(faults)
    for fault in faults:
        check.instance(owner, "faults", fault, Fault, "faults=[Fault.crash().during_init()]")
    return WorkerOptions(
        env=tuple(sorted((env or {}).items())),
        inherit_env=inherit_env,
        cwd=None if cwd is None else check.path(owner, "cwd", cwd, 'cwd="/srv/plugin"'),
        library_path=tuple(
            check.path(owner, "library_path", p, 'library_path=["/opt/plugin/lib"]') for p in library_path
        ),
        limits=check.optional(
            owner, "limits", limits, ResourceLimits, "limits=ResourceLimits(cpu_seconds=60)"
        ),
        faults=faults,
    )
