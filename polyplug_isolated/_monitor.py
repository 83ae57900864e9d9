"""The one thread that owns the liveness of every worker of a runtime.

It waits, in one ``select``, on each worker's control socket (frames, EOF),
its output pipe (kept as a tail for error messages) and its pidfd (exit), plus
a wake-up pipe for new registrations. It never sleeps to poll. What it learns
it hands to the worker's :class:`Watcher` callbacks, which must not block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
from typing import Any, Protocol

from ._process import WorkerProcess
from ._protocol import FrameError, FrameReader

_logger = logging.getLogger("polyplug_isolated")


class Watcher(Protocol):
    """What the monitor tells a worker's owner; called on the monitor thread."""

    def on_frame(self, message: dict[str, Any]) -> None: ...
    def on_output(self, line: str) -> None: ...
    def on_control_lost(self, reason: str) -> None: ...
    def on_exit(self, returncode: int) -> None: ...


class _Watch:
    def __init__(self, watcher: Watcher, process: WorkerProcess):
        self.watcher = watcher
        self.control = process.control
        self.process = process
        self.frames = FrameReader()
        self.partial_line = b""
        self.control_open = True
        self.output_open = True


class Monitor:
    """Liveness thread of one runtime; started on first use, stopped by close()."""

    def __init__(self, name: str = "polyplug-monitor"):
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._incoming: list[_Watch] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def watch(self, watcher: Watcher, process: WorkerProcess) -> None:
        """Starts watching a worker: its frames, output and exit go to ``watcher``."""
        with self._lock:
            self._incoming.append(_Watch(watcher, process))
        self._wake()

    def close(self) -> None:
        """Stops the thread. Workers must already be gone (the runtime unloads them first)."""
        with self._lock:
            self._closing = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full pipe: already awake
            os.write(self._wake_write, b"x")

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    if self._take_incoming():
                        return
                else:
                    kind, watch = key.data
                    try:
                        getattr(self, f"_on_{kind}")(watch)
                    except Exception:  # the monitor must outlive any one worker's trouble
                        _logger.exception("monitor: handling %s of worker %d failed", kind, watch.process.pid)

    def _take_incoming(self) -> bool:
        while True:
            try:
                if not os.read(self._wake_read, 4096):
                    break
            except BlockingIOError:
                break
        with self._lock:
            incoming, self._incoming = self._incoming, []
            closing = self._closing
        for watch in incoming:
            watch.control.setblocking(False)
            os.set_blocking(watch.process.output.fileno(), False)
            self._selector.register(watch.control, selectors.EVENT_READ, ("control", watch))
            self._selector.register(watch.process.output, selectors.EVENT_READ, ("output", watch))
            self._selector.register(watch.process.pidfd, selectors.EVENT_READ, ("exit", watch))
        return closing

    def _on_control(self, watch: _Watch) -> None:
        if not watch.control_open:  # an event of the same batch as the exit that closed it
            return
        try:
            data = watch.control.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            data, reason = b"", f"control socket error: {exc}"
        else:
            reason = "the worker closed its control socket"
        if not data:
            self._drop_control(watch)
            watch.watcher.on_control_lost(reason)
            return
        try:
            frames = watch.frames.feed(data)
        except FrameError as exc:
            self._drop_control(watch)
            watch.watcher.on_control_lost(f"malformed control frame: {exc}")
            return
        for message in frames:
            watch.watcher.on_frame(message)

    def _drop_control(self, watch: _Watch) -> None:
        # Unregister only: the socket is closed by reap(), under the lock
        # that senders hold, so its fd number cannot be reused under them.
        self._selector.unregister(watch.control)
        watch.control_open = False

    def _on_output(self, watch: _Watch) -> None:
        if not watch.output_open:  # as in _on_control
            return
        if not self._read_output(watch):
            self._drop_output(watch)

    def _drop_output(self, watch: _Watch) -> None:
        self._selector.unregister(watch.process.output)
        watch.output_open = False

    def _read_output(self, watch: _Watch) -> bool:
        """Reads what is there; False at EOF."""
        while True:
            try:
                data = os.read(watch.process.output.fileno(), 1 << 16)
            except BlockingIOError:
                return True
            if not data:
                if watch.partial_line:
                    self._emit_line(watch, watch.partial_line)
                    watch.partial_line = b""
                return False
            *lines, watch.partial_line = (watch.partial_line + data).split(b"\n")
            for line in lines:
                self._emit_line(watch, line)

    def _emit_line(self, watch: _Watch, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        watch.process.output_tail.append(text)
        watch.watcher.on_output(text)

    def _on_exit(self, watch: _Watch) -> None:
        # Take the last words first: they are what an error message quotes.
        if watch.output_open:
            self._read_output(watch)
            self._drop_output(watch)
        if watch.control_open:
            self._drain_control(watch)
        self._selector.unregister(watch.process.pidfd)
        returncode = watch.process.reap()
        watch.watcher.on_exit(returncode)

    def _drain_control(self, watch: _Watch) -> None:
        """Delivers frames the worker sent just before it exited, then closes."""
        while True:
            try:
                data = watch.control.recv(1 << 16)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            try:
                frames = watch.frames.feed(data)
            except FrameError:
                break
            for message in frames:
                watch.watcher.on_frame(message)
        self._drop_control(watch)
