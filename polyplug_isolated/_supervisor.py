"""Supervision: whether, when and how a crashed bundle comes back.

Erlang's restart intensity (at most ``max_restarts`` within ``window``
seconds, else give up for good) with exponential backoff and jitter between
attempts. Restarts run on timer threads, never on the monitor thread: a
restart waits for the new worker's polyplug_init (up to load_timeout), and
the monitor must meanwhile go on hearing of every other worker.
"""

from __future__ import annotations

import enum
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
        self._timers: dict[int, threading.Timer] = {}
        self._attempts: dict[int, deque[float]] = {}
        self._closed = False

    def delay(self, attempt: int) -> float:
        """Seconds before restart attempt ``attempt`` (0-based) within the window."""
        policy = self._policy
        base = min(policy.max_backoff, policy.backoff * 2**attempt)
        return float(base * (1 - policy.jitter * self._rng()))

    def crashed(self, bundle: Bundle) -> Callable[[], None]:
        """Decides whether a restart comes (or the policy gives up) and tells the bundle.

        Returns what announces the decision (events, the restart timer): the
        runtime calls it once the crashed worker's callers have been woken.
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
                timer = threading.Timer(delay, self._attempt, (bundle,))
                timer.daemon = True
                timer.name = f"polyplug-restart-{bundle.name}"
                self._timers[bundle.id] = timer
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
            timer.start()

        return announce

    def _attempt(self, bundle: Bundle) -> None:
        # The timer stays in _timers while it runs, so forget() can wait for it.
        me = threading.current_thread()
        with self._lock:
            if self._closed or self._timers.get(bundle.id) is not me:
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
            if self._timers.get(bundle.id) is me:
                del self._timers[bundle.id]
        if restarted:
            self._report(BundleEvent(BundleEventKind.RESTARTED, bundle.id, bundle.name, "", bundle.restarts))

    def forget(self, bundle: Bundle) -> None:
        """Cancels a pending restart, or waits out one in progress (unload, reload)."""
        with self._lock:
            timer = self._timers.pop(bundle.id, None)
            self._attempts.pop(bundle.id, None)
        if timer is not None:
            _cancel(timer)
        bundle.expect_restart(bundle.outlook, False)

    def close(self) -> None:
        """Cancels every pending restart and waits for one in progress."""
        with self._lock:
            self._closed = True
            timers, self._timers = list(self._timers.values()), {}
        for timer in timers:
            _cancel(timer)


def _cancel(timer: threading.Timer) -> None:
    """Stops a restart that has not begun; waits for one that has.

    A timer registered but not yet started (crashed() starts it after
    reporting) just never runs: cancel() sets its finished flag.
    """
    timer.cancel()
    if timer.ident is not None and timer is not threading.current_thread():
        timer.join()
