"""Supervision: whether, when and how a crashed bundle comes back.

Erlang's restart intensity (at most ``max_restarts`` within ``window``
seconds, else give up for good) with exponential backoff and jitter between
attempts. Restarts run on restart threads, never on the monitor thread: a
restart waits for the new worker's polyplug_init (up to load_timeout), and
the monitor must meanwhile go on hearing of every other worker. A restart
thread waits ``RESTART_THREAD_IDLE_S`` for the next restart before it ends:
starting a thread took ~1 ms here, a third of a whole restart, and kept the
monitor thread (which hands the restart over) waiting for it.
"""

from __future__ import annotations

import enum
import functools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._config import RestartPolicy
from .errors import LoaderError

if TYPE_CHECKING:
    from ._bundle import Bundle

_logger = logging.getLogger("polyplug_isolated")

RESTART_THREAD_IDLE_S = 30.0  # how long a restart thread waits for another restart before it ends


class BundleEventKind(enum.Enum):
    CRASHED = "crashed"  # the worker died unasked (detail: how)
    RESTARTING = "restarting"  # a restart is scheduled (detail: the delay)
    RESTARTED = "restarted"  # a fresh worker serves the bundle again
    RESTART_FAILED = "restart_failed"  # the fresh worker did not load (detail: the error)
    GAVE_UP = "gave_up"  # the policy's budget is spent: the bundle stays CRASHED


@dataclass(frozen=True)
class BundleEvent:
    """What ``Runtime(on_event=...)`` receives about crashes and restarts."""

    kind: BundleEventKind
    bundle_id: int
    bundle_name: str
    detail: str = ""
    restarts: int = 0


class Supervisor:
    """Applies one RestartPolicy to the bundles of one runtime."""

    def __init__(
        self,
        policy: RestartPolicy,
        restart: Callable[[Bundle], bool],
        report: Callable[[BundleEvent], None],
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ):
        self._policy = policy
        self._restart = restart
        self._report = report
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._threads = _Threads("polyplug-restart", RESTART_THREAD_IDLE_S)
        self._scheduled: dict[int, _Attempt] = {}
        self._attempts: dict[int, deque[float]] = {}
        self._closed = False

    def delay(self, attempt: int) -> float:
        """Seconds before restart attempt ``attempt`` (0-based) within the window."""
        policy = self._policy
        base = min(policy.max_backoff, policy.backoff * 2**attempt)
        return float(base * (1 - policy.jitter * self._rng()))

    def crashed(self, bundle: Bundle) -> Callable[[], None]:
        """Decides whether a restart comes (or the policy gives up) and tells the bundle.

        Returns what announces the decision (events, then the restart is
        handed to a restart thread): the runtime calls it once the crashed
        worker's callers have been woken.
        """
        policy = self._policy
        with self._lock:
            if self._closed or policy.max_restarts == 0:
                bundle.expect_restart(
                    "it is not restarted (RestartPolicy.max_restarts=0): reload it to bring it back", False
                )
                return lambda: None
            now = self._clock()
            attempts = self._attempts.setdefault(bundle.id, deque())
            while attempts and now - attempts[0] > policy.window:
                attempts.popleft()
            gave_up = len(attempts) >= policy.max_restarts
            if not gave_up:
                delay = self.delay(len(attempts))
                attempts.append(now)
                attempt = _Attempt(bundle, delay)
                self._scheduled[bundle.id] = attempt
        if gave_up:
            why = (
                f"the restart policy gave up after {policy.max_restarts} restarts within {policy.window:g} s"
            )
            bundle.expect_restart(f"{why}: reload it to bring it back", False)
            event = BundleEvent(BundleEventKind.GAVE_UP, bundle.id, bundle.name, why, bundle.restarts)
            return lambda: self._report(event)
        bundle.expect_restart("a restart is scheduled", True)
        event = BundleEvent(
            BundleEventKind.RESTARTING, bundle.id, bundle.name, f"in {delay:.3f} s", bundle.restarts
        )

        def announce() -> None:
            self._report(event)
            attempt.submitted = True
            self._threads.submit(functools.partial(self._run, attempt))

        return announce

    def _run(self, attempt: _Attempt) -> None:
        """A restart thread: the attempt once its delay is over, unless it was cancelled."""
        attempt.thread = thread = threading.current_thread()
        thread.name = f"polyplug-restart-{attempt.bundle.name}"
        try:
            if not attempt.cancelled.wait(attempt.delay):
                self._attempt(attempt)
        finally:
            thread.name = self._threads.name
            attempt.ended.set()

    def _attempt(self, attempt: _Attempt) -> None:
        # The attempt stays in _scheduled while it runs, so forget() can wait for it.
        bundle = attempt.bundle
        with self._lock:
            if self._closed or self._scheduled.get(bundle.id) is not attempt:
                return
        try:
            restarted = self._restart(bundle)
        except LoaderError as exc:
            self._report(
                BundleEvent(BundleEventKind.RESTART_FAILED, bundle.id, bundle.name, str(exc), bundle.restarts)
            )
            restarted = False
            self.crashed(bundle)()  # counts as an attempt: try again or give up
        with self._lock:
            if self._scheduled.get(bundle.id) is attempt:
                del self._scheduled[bundle.id]
        if restarted:
            self._report(BundleEvent(BundleEventKind.RESTARTED, bundle.id, bundle.name, "", bundle.restarts))

    def forget(self, bundle: Bundle) -> None:
        """Cancels a pending restart, or waits out one in progress (unload, reload)."""
        with self._lock:
            attempt = self._scheduled.pop(bundle.id, None)
            self._attempts.pop(bundle.id, None)
        if attempt is not None:
            attempt.cancel()
        bundle.expect_restart(bundle.outlook, False)

    def close(self) -> None:
        """Cancels every pending restart, waits for one in progress, and ends the restart threads."""
        with self._lock:
            self._closed = True
            attempts, self._scheduled = list(self._scheduled.values()), {}
        for attempt in attempts:
            attempt.cancel()
        self._threads.close()


class _Attempt:
    """One scheduled restart of one bundle."""

    def __init__(self, bundle: Bundle, delay: float):
        self.bundle = bundle
        self.delay = delay
        self.cancelled = threading.Event()
        self.ended = threading.Event()
        self.submitted = False  # handed to a restart thread (announce() does it after reporting)
        self.thread: threading.Thread | None = None  # the restart thread, once it runs the attempt

    def cancel(self) -> None:
        """Stops an attempt that has not begun; waits for one that has (unless called from it).

        One not yet handed to a thread needs no wait: the thread that takes it
        finds it cancelled.
        """
        self.cancelled.set()
        if self.submitted and self.thread is not threading.current_thread():
            self.ended.wait()


class _Threads:
    """Daemon threads that run tasks, each waiting ``idle_s`` for the next task before it ends."""

    def __init__(self, name: str, idle_s: float):
        self.name = name
        self._idle_s = idle_s
        self._ready = threading.Condition()
        self._tasks: deque[Callable[[], None]] = deque()
        self._waiting = 0  # threads waiting for a task
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def submit(self, task: Callable[[], None]) -> None:
        """Runs ``task`` on a waiting thread, or on a new one if none is free (even after close)."""
        with self._ready:
            self._tasks.append(task)
            if len(self._tasks) <= self._waiting:
                self._ready.notify()
                return
            thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._threads.add(thread)
        thread.start()

    def close(self) -> None:
        """Ends the waiting threads and waits for every thread but the caller's to end."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            with self._ready:
                self._waiting += 1
                self._ready.wait_for(lambda: self._tasks or self._closed, self._idle_s)
                self._waiting -= 1
                if not self._tasks:
                    self._threads.discard(me)
                    return
                task = self._tasks.popleft()
            try:
                task()
            except Exception:  # the thread lives on for the next task
                _logger.exception("%s: a task failed", self.name)
