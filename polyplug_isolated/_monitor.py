"""The one thread that owns the liveness of every worker of a runtime.

It waits, in one epoll (no FD_SETSIZE limit: a runtime may watch thousands
of workers), on each worker's control socket (frames, EOF; from the end of
its load handshake, which the loading thread reads itself), its output pipe
(kept as a tail for error messages) and its pidfd (exit), plus a wake-up
pipe for new registrations. It never sleeps to poll. What it learns it hands
to the worker's :class:`Watcher` callbacks, which must not block.

No worker can starve the others or grow the host without bound: each ready
descriptor gets one bounded read per round (epoll is level-triggered, so what
is left is read next round, after everyone else's turn), and a line of output
is cut every ``OUTPUT_LINE_CAP`` bytes, so a plugin writing with no newline
costs a fixed amount of memory and linear time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ._process import WorkerProcess
from ._protocol import FrameError, FrameReader

_logger = logging.getLogger("polyplug_isolated")

READ_CHUNK = 1 << 16  # one read per ready descriptor per round
OUTPUT_LINE_CAP = 1 << 16  # longer output lines reach the host in pieces of this size
TAIL_LINE_CAP = 4096  # of a line kept for error messages (stack lines are far shorter)
LAST_WORDS_READS = 64  # after an exit: reads of what the worker left behind (a child may hold the pipe)
DEFER_S = 0.001  # how long deferred work waits (Monitor.defer)


class Watcher(Protocol):
    """What the monitor tells a worker's owner; called on the monitor thread."""

    def on_frame(self, message: dict[str, Any]) -> None: ...
    def on_output(self, line: str) -> None: ...
    def on_control_lost(self, reason: str, malformed: bool = False) -> None: ...
    def on_exit(self, returncode: int) -> None: ...
    def abandon(self, reason: str) -> None: ...


class LineSplitter:
    """Splits a byte stream into lines of at most ``cap`` bytes, in time linear in the stream."""

    def __init__(self, cap: int = OUTPUT_LINE_CAP):
        self._cap = cap
        self._partial = bytearray()
        self._line_cut = False  # pieces of the current line went out already

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes (an over-long line in ``cap``-byte pieces)."""
        *complete, rest = data.split(b"\n")
        lines = []
        if complete:
            self._partial += complete[0]
            lines += self._pieces(final=True)
            middle = complete[1:]
            if middle and max(map(len, middle)) > self._cap:
                middle = [piece for line in middle for piece in _cut(line, self._cap)]
            lines += middle
        self._partial += rest
        lines += self._pieces(final=False)
        return lines

    def flush(self) -> list[bytes]:
        """What is left at EOF, as a last line."""
        return self._pieces(final=True) if self._partial else []

    def _pieces(self, final: bool) -> list[bytes]:
        """Cuts whole ``cap``-byte pieces off the partial line (and, if ``final``, the rest)."""
        partial, cap = self._partial, self._cap
        whole = len(partial) // cap * cap
        pieces = _cut(bytes(partial[:whole]), cap) if whole else []
        del partial[:whole]
        if final:
            if partial or not (pieces or self._line_cut):  # a line that was all pieces ends with them
                pieces.append(bytes(partial))
                partial.clear()
            self._line_cut = False
        elif pieces:
            self._line_cut = True
        return pieces


def _cut(line: bytes, cap: int) -> list[bytes]:
    """``line`` in pieces of at most ``cap`` bytes (an empty line stays one empty line)."""
    return [line[i : i + cap] for i in range(0, len(line), cap)] or [b""]


class Watch:
    """One watched worker; ``control_open`` from Monitor.hand_over until its control socket is
    dropped (before, the loading thread reads the handshake on it)."""

    def __init__(self, watcher: Watcher, process: WorkerProcess):
        self.watcher = watcher
        self.control = process.control
        self.process = process
        # Both from hand_over: the reader that read the handshake (and holds what
        # followed it), and the frames it read after the ready frame.
        self.frames = FrameReader()
        self.pending: list[dict[str, Any]] = []
        self.lines = LineSplitter()
        self.control_open = False
        self.output_open = True
        self.exit_open = True


class Monitor:
    """Liveness thread of one runtime; started on first use, stopped by close()."""

    def __init__(self, name: str = "polyplug-monitor"):
        self._selector = selectors.EpollSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._incoming: list[Watch] = []
        self._handovers: list[Watch] = []  # control sockets whose handshake is over
        self._deferred: list[tuple[float, Callable[[], None]]] = []  # (when, task): queued by others
        self._due: list[tuple[float, Callable[[], None]]] = []  # the monitor thread's own copy
        self._closing = False
        self._failed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def failed(self) -> bool:
        """The thread died of an internal error: no worker can be watched any more."""
        return self._failed

    def watch(
        self,
        watcher: Watcher,
        process: WorkerProcess,
        handshake: tuple[FrameReader, list[dict[str, Any]]] | None = None,
    ) -> Watch:
        """Starts watching a worker: its output and exit go to ``watcher`` now; its frames once
        its load has read the handshake, with ``handshake`` here (what ``hand_over`` takes: one
        wake-up of this thread for all three) or by calling ``hand_over`` later."""
        watch = Watch(watcher, process)
        with self._lock:
            failed = self._failed
            if not failed:
                self._incoming.append(watch)
                if handshake is not None:
                    watch.frames, watch.pending = handshake
                    self._handovers.append(watch)
        if failed:
            _bury(watch)
        self._wake()
        return watch

    def hand_over(self, watch: Watch, frames: FrameReader, pending: list[dict[str, Any]]) -> None:
        """From now on the monitor reads ``watch``'s control socket too, going on with ``frames``
        (what its reader so far holds of a frame not yet complete), after it has passed on
        ``pending`` (frames already read)."""
        watch.frames = frames
        watch.pending = pending
        with self._lock:
            self._handovers.append(watch)
        self._wake()

    def defer(self, task: Callable[[], None]) -> None:
        """Runs ``task`` on the monitor thread, which must not block in it, ``DEFER_S`` from now.

        For work a lifecycle operation wants done but not waited for (asking
        for the next spare, telling a reload's old worker to unload): the
        delay lets the calling thread finish its operation first, so that
        neither the task, nor the GIL it holds, nor the process it wakes
        takes that thread's time.
        """
        with self._lock:
            self._deferred.append((time.monotonic() + DEFER_S, task))
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

    def forget_after_fork(self) -> list[Watcher]:
        """In a fork() child (no monitor thread runs there): closes the child's copies of every
        descriptor the monitor watches and of its own; returns the watchers, for them to go inert."""
        watches = [key.data[1] for key in self._selector.get_map().values() if key.data is not None]
        watches += self._incoming
        self._selector.close()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        processes = {id(watch.process): watch.process for watch in watches}
        for process in processes.values():
            process.forget_after_fork()
        return list({id(watch.watcher): watch.watcher for watch in watches}.values())

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full pipe: already awake
            os.write(self._wake_write, b"x")

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:  # the loop itself broke: nobody would hear of a death again
            _logger.critical("monitor: the monitor thread failed; killing its workers", exc_info=True)
            self._fail_all()

    def _serve(self) -> None:
        while True:
            timeout = max(0.0, self._due[0][0] - time.monotonic()) if self._due else None
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    if self._take_incoming():
                        return
                    continue
                kind, watch = key.data
                if not getattr(watch, f"{kind}_open"):
                    continue  # dropped earlier in this round (its exit): the fd may be closed, even reused
                try:
                    getattr(self, f"_on_{kind}")(watch)
                except Exception:  # the monitor must outlive any one worker's trouble
                    _logger.exception("monitor: handling %s of worker %d failed", kind, watch.process.pid)
                    _abandon(watch, f"the monitor failed handling its {kind}")
            self._run_due()

    def _fail_all(self) -> None:
        """Last resort: every watched worker is killed, reaped and reported dead, so no caller
        waits forever; a worker watched from now on is treated the same at once."""
        with self._lock:
            self._failed = True
            watches = {id(w): w for w in self._incoming}
            self._incoming = []
        with contextlib.suppress(Exception):
            for key in list(self._selector.get_map().values()):
                if key.data is not None:
                    watches[id(key.data[1])] = key.data[1]
        for watch in watches.values():
            _bury(watch)

    def _take_incoming(self) -> bool:
        while True:
            try:
                if not os.read(self._wake_read, 4096):
                    break
            except BlockingIOError:
                break
        with self._lock:
            incoming, self._incoming = self._incoming, []
            handovers, self._handovers = self._handovers, []
            self._due += self._deferred
            self._deferred = []
            closing = self._closing
        for watch in incoming:
            os.set_blocking(watch.process.output.fileno(), False)
            self._selector.register(watch.process.output, selectors.EVENT_READ, ("output", watch))
            self._selector.register(watch.process.pidfd, selectors.EVENT_READ, ("exit", watch))
        for watch in handovers:
            for message in watch.pending:
                watch.watcher.on_frame(message)
            watch.pending = []
            if watch.exit_open:  # else its exit was handled already (what it sent after is lost)
                watch.control_open = True
                self._watch_control(watch)
        return closing

    def _watch_control(self, watch: Watch) -> None:
        watch.control.setblocking(False)
        self._selector.register(watch.control, selectors.EVENT_READ, ("control", watch))

    def _run_due(self) -> None:
        """Runs the deferred tasks whose time has come (queued in order, so due in order)."""
        now = time.monotonic()
        while self._due and self._due[0][0] <= now:
            _, task = self._due.pop(0)
            try:
                task()
            except Exception:  # the monitor must outlive any task's trouble
                _logger.exception("monitor: a deferred task failed (ignored)")

    # ---- control socket ----------------------------------------------------------------

    def _on_control(self, watch: Watch) -> None:
        self._read_control(watch, report_loss=True)

    def _read_control(self, watch: Watch, report_loss: bool) -> bool:
        """One bounded read of frames; False when nothing more is there now (or ever).

        ``report_loss``: tell the watcher when the socket is done (EOF, error,
        garbage); after an exit that is no news.
        """
        try:
            data = watch.control.recv(READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError as exc:
            data, reason = b"", f"control socket error: {exc}"
        else:
            reason = "the worker closed its control socket"
        if not data:
            self._drop_control(watch)
            if report_loss:
                watch.watcher.on_control_lost(reason)
            return False
        try:
            frames = watch.frames.feed(data)
        except FrameError as exc:
            self._drop_control(watch)
            if report_loss:
                watch.watcher.on_control_lost(f"malformed control frame: {exc}", malformed=True)
            return False
        for message in frames:
            watch.watcher.on_frame(message)
        return True

    def _drop_control(self, watch: Watch) -> None:
        # Unregister only: the socket is closed by reap(), under the lock
        # that senders hold, so its fd number cannot be reused under them.
        if watch.control_open:
            self._selector.unregister(watch.control)
            watch.control_open = False

    # ---- output pipe --------------------------------------------------------------------

    def _on_output(self, watch: Watch) -> None:
        self._read_output(watch)

    def _read_output(self, watch: Watch) -> bool:
        """One bounded read of output; False once there is nothing more now (or ever)."""
        try:
            data = os.read(watch.process.output.fileno(), READ_CHUNK)
        except BlockingIOError:
            return False
        if not data:
            for line in watch.lines.flush():
                self._emit_line(watch, line)
            self._drop_output(watch)
            return False
        for line in watch.lines.feed(data):
            self._emit_line(watch, line)
        return True

    def _drop_output(self, watch: Watch) -> None:
        if watch.output_open:
            self._selector.unregister(watch.process.output)
            watch.output_open = False

    def _emit_line(self, watch: Watch, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        watch.process.output_tail.append(text if len(text) <= TAIL_LINE_CAP else text[:TAIL_LINE_CAP] + "...")
        watch.watcher.on_output(text)

    # ---- exit -----------------------------------------------------------------------------

    def _on_exit(self, watch: Watch) -> None:
        # Take the last words first (bounded: a child of the plugin may still
        # hold the pipe and write on): they are what an error message quotes.
        for _ in range(LAST_WORDS_READS):
            if not (watch.output_open and self._read_output(watch)):
                break
        for line in watch.lines.flush():
            self._emit_line(watch, line)
        self._drop_output(watch)
        for _ in range(LAST_WORDS_READS):
            if not (watch.control_open and self._read_control(watch, report_loss=False)):
                break
        self._drop_control(watch)
        self._selector.unregister(watch.process.pidfd)
        watch.exit_open = False
        returncode = watch.process.reap()
        watch.watcher.on_exit(returncode)


def _abandon(watch: Watch, reason: str) -> None:
    try:
        watch.watcher.abandon(reason)
    except Exception:
        _logger.exception("monitor: could not abandon worker %d", watch.process.pid)


def _bury(watch: Watch) -> None:
    """Kills, reaps and reports dead a worker that no monitor watches any more."""
    reason = "killed: the runtime's monitor thread failed"
    try:
        watch.process.kill(reason)
        if not watch.process.exited.is_set():
            watch.watcher.on_exit(watch.process.reap())
    except Exception:
        _abandon(watch, reason)
