"""How a Runtime ends when nobody closes it: in a fork() child, and when it is dropped.

fork(): the child gets a copy of every Runtime, whose workers are the
parent's. A hook (``os.register_at_fork``) makes each copy inert in the child
before any of its code runs: calls are refused unsent with a clear error,
lifecycle calls raise, ``close()`` does nothing, and the child's copies of the
parent's descriptors are closed (so a worker still sees EOF when the parent
goes). Nothing is signalled, sent or written to shared memory: the workers
stay the parent's. The hook takes no lock (another thread of the parent may
have held it at the fork; in the child that thread does not exist).

Dropped: ``weakref.finalize`` unloads the bundles of a Runtime nobody can
reach any more and stops its threads. For a Runtime ever to become
unreachable, nothing its threads hold (monitor callbacks, supervisor timers)
may refer to it strongly: they get :func:`weakly` bound methods.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._bundle import Bundle
    from ._channel import ChannelStock
    from ._monitor import Monitor
    from ._proxy import WorkerProxy
    from ._runtime import Runtime
    from ._supervisor import Supervisor
    from ._zygote import Zygote

_live: weakref.WeakSet[Runtime] = weakref.WeakSet()


def track(runtime: Runtime) -> None:
    """Has ``runtime`` made inert in any fork() child of this process."""
    _live.add(runtime)


def _after_fork_in_child() -> None:
    for runtime in list(_live):
        if not runtime._closed:  # a closed copy has nothing left to make inert
            runtime._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def forked_message(parent: int) -> str:
    """Why a Runtime copied into a fork() child refuses to work."""
    return (
        f"this process (pid {os.getpid()}) is a fork() child of pid {parent}, whose Runtime and workers "
        "these are; the child cannot use them: create a new Runtime in the child"
    )


def weakly(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (bound) without keeping its object alive; a no-op returning None once it is gone."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> Any:
        bound = ref()
        return None if bound is None else bound(*args)

    return call


def reclaim(
    supervisor: Supervisor,
    bundles: dict[int, Bundle],
    zygote: Zygote,
    channels: ChannelStock,
    monitor: Monitor,
    drain_timeout: float,
    retiring: dict[WorkerProxy, int],
) -> None:
    """Finalizer of an unreachable Runtime: what close() does, without events or callbacks."""
    if threading.current_thread() is monitor.thread:  # it must reap the workers: close from elsewhere
        args = (supervisor, bundles, zygote, channels, monitor, drain_timeout, retiring)
        threading.Thread(target=reclaim, args=args, name="polyplug-reclaim", daemon=True).start()
        return
    from ._bundle import BundleState  # _bundle imports the call path; this module must stay light

    supervisor.close()
    for bundle in list(bundles.values()):
        proxy = bundle.proxy
        if proxy is not None and proxy.channel is not None:
            proxy.channel.start_draining()
        with contextlib.suppress(RuntimeError):  # already DRAINING
            bundle.move(BundleState.DRAINING)
        if proxy is not None and proxy.alive:
            proxy.shutdown(drain_timeout)
        bundle.proxy = None
        bundle.move(BundleState.UNLOADED)
    bundles.clear()
    for proxy in list(retiring):  # reloads' old workers, still unloading
        proxy.await_exit()
    zygote.close()
    channels.close()
    monitor.close()
