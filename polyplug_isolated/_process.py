"""Worker processes: start one, talk to it, signal it safely, describe how it ended.

Knows nothing of msgpack or shared memory. Signals go through a pidfd, so a
recycled PID can never be hit. Reaping is the monitor's job (it owns
liveness); everyone else waits on ``exited``. A spare worker can be started
ahead of need: a Python worker takes ~60 ms to start, a load into a waiting
one ~2 ms.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping

# A crash writes the Python stacks (faulthandler) and then the native one:
# keep enough lines for both.
OUTPUT_TAIL_LINES = 120


class WorkerProcess:
    """One ``python -m polyplug_isolated.worker`` and the host end of its control socket."""

    def __init__(self, env: Mapping[str, str] | None = None):
        self.control, worker_end = socket.socketpair()
        with worker_end:
            command = [
                sys.executable,
                "-m",
                "polyplug_isolated.worker",
                "--control-fd",
                str(worker_end.fileno()),
            ]
            # subprocess, never a fork of a (threaded) host; close_fds keeps
            # other workers' sockets out of this one.
            try:
                self._popen = subprocess.Popen(
                    command,
                    pass_fds=(worker_end.fileno(),),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    close_fds=True,
                )
            except BaseException:
                self.control.close()
                raise
        self.pid = self._popen.pid
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except BaseException:  # EMFILE: the process must not outlive the error
            with self._popen:  # closes its pipe and reaps it
                self._popen.kill()
            self.control.close()
            raise
        assert self._popen.stdout is not None  # stdout=PIPE
        self.output = self._popen.stdout
        self.output_tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self.returncode: int | None = None
        self.exited = threading.Event()
        self.kill_reason: str | None = None
        # Held while signalling, sending and reaping: reaping closes the pidfd
        # and the socket, whose numbers could otherwise be reused under us.
        self._lock = threading.Lock()

    def send(self, data: bytes, fds: tuple[int, ...] = ()) -> bool:
        """Sends ``data`` (and ``fds``, SCM_RIGHTS) on the control socket; False if it is gone."""
        with self._lock:
            if self.exited.is_set():
                return False
            try:
                if fds:
                    sent = socket.send_fds(self.control, [data], list(fds))
                    self.control.sendall(data[sent:])
                else:
                    self.control.sendall(data)
            except OSError:
                return False
            return True

    def signal(self, signum: int) -> None:
        """Sends ``signum`` unless the process has already been reaped."""
        with self._lock:
            if not self.exited.is_set():
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self.pidfd, signum)

    def kill(self, reason: str) -> None:
        """SIGKILLs the worker, remembering why (the first reason wins)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        self.signal(signal.SIGKILL)

    def dump_and_kill(self, reason: str, grace: float) -> None:
        """Asks the worker to write its busy thread's stack and die (SIGUSR2); SIGKILL after ``grace``."""
        if self.kill_reason is None:
            self.kill_reason = reason
        self.signal(signal.SIGUSR2)
        if not self.exited.wait(grace):
            self.signal(signal.SIGKILL)

    def reap(self) -> int:
        """Collects the exit status and closes everything; the monitor calls it once the pidfd is readable."""
        with self._lock:
            self.returncode = self._popen.wait()
            os.close(self.pidfd)
            self.output.close()
            self.control.close()
            self.exited.set()
        return self.returncode

    def forget_after_fork(self) -> None:
        """In a fork() child: closes the child's copies of the socket, pipe and pidfd (not the parent's)."""
        self.control.close()
        self.output.close()
        with contextlib.suppress(OSError):
            os.close(self.pidfd)

    def alive(self) -> bool:
        """Whether the process runs (for a spare nobody watches yet: reaps it if not)."""
        return self._popen.poll() is None

    def discard(self) -> None:
        """Ends a process no monitor watches (a spare): kill, reap, close."""
        self.kill("the runtime closed")
        self.reap()

    def tail(self) -> str:
        """The worker's last output lines, for error messages."""
        return "\n".join(self.output_tail)


class SpareWorker:
    """Keeps one worker started ahead of need; only for bundles with default options."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spare: WorkerProcess | None = None
        self._closed = False

    def take(self) -> WorkerProcess:
        """A waiting worker if there is a live one, else a new one; then starts the next spare."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and not spare.alive():
            spare.discard()
            spare = None
        worker = spare or WorkerProcess()
        with self._lock:
            if not self._closed and self._spare is None:
                self._spare = WorkerProcess()
        return worker

    def forget_after_fork(self) -> None:
        """In a fork() child: the spare is the parent's; close the child's copies of its descriptors."""
        if self._spare is not None:
            self._spare.forget_after_fork()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()


def describe_exit(returncode: int) -> tuple[signal.Signals | None, int | None, str]:
    """(signal, exit code, words) for a Popen return code."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return None, None, f"was killed by signal {-returncode}"
        return sig, None, f"was killed by {sig.name} ({returncode})"
    return None, returncode, f"exited with status {returncode}"
