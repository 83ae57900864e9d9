"""Worker processes: talk to one, signal it safely, reap it, describe how it ended.

Knows nothing of msgpack or shared memory. Workers are forked by the
runtime's zygote (_zygote.py) as children of the host itself (CLONE_PARENT),
so the host holds a pidfd to each and collects its exit status like any
child's. Signals go through the pidfd, so a recycled PID can never be hit.
Reaping is the monitor's job (it owns liveness); everyone else waits on
``exited``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import threading
from typing import BinaryIO

# A crash writes the Python stacks (faulthandler) and then the native one:
# keep enough lines for both.
OUTPUT_TAIL_LINES = 120


class WorkerProcess:
    """One worker process (a child of this one) and the host end of its control socket."""

    def __init__(self, pid: int, control: socket.socket, output: BinaryIO):
        # A child is never reaped behind our back, so its PID cannot be
        # recycled before the pidfd is open.
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.control = control
        self.output = output  # its stdout and stderr
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

    def duplicate_fds(self) -> tuple[socket.socket, int] | None:
        """Copies of the control socket and the pidfd that stay valid after reap() (None: reaped
        already), for a thread that waits on the worker beside the monitor."""
        with self._lock:
            if self.exited.is_set():
                return None
            control = socket.socket(fileno=os.dup(self.control.fileno()))
            try:
                return control, os.dup(self.pidfd)
            except OSError:
                control.close()
                raise

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
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
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
        """Whether the process runs (an exited one stays unreaped for the monitor)."""
        with self._lock:
            if self.exited.is_set():
                return False
            return os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def discard(self) -> None:
        """Ends a process no monitor watches (a spare): kill, reap, close."""
        self.kill("the runtime no longer needs it")
        self.reap()

    def tail(self) -> str:
        """The worker's last output lines, for error messages."""
        return "\n".join(self.output_tail)


def describe_exit(returncode: int) -> tuple[signal.Signals | None, int | None, str]:
    """(signal, exit code, words) for a return code as Popen gives it (-N: killed by signal N)."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return None, None, f"was killed by signal {-returncode}"
        return sig, None, f"was killed by {sig.name} ({returncode})"
    return None, returncode, f"exited with status {returncode}"
