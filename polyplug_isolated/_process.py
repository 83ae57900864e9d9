"""Worker processes: start one, signal it safely, describe how it ended.

Knows nothing of msgpack or shared memory. Signals go through a pidfd, so a
recycled PID can never be hit. Reaping is the monitor's job (it owns
liveness); everyone else waits on ``exited``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading

OUTPUT_TAIL_LINES = 40


class WorkerProcess:
    """One running ``python -m polyplug_isolated.worker``."""

    def __init__(self, control_fd: int, segment_fd: int):
        command = [
            sys.executable,
            "-m",
            "polyplug_isolated.worker",
            "--control-fd",
            str(control_fd),
            "--segment-fd",
            str(segment_fd),
        ]
        # subprocess, never a fork of a (threaded) host; close_fds keeps other
        # workers' sockets out of this one.
        self._popen = subprocess.Popen(
            command,
            pass_fds=(control_fd, segment_fd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )
        self.pid = self._popen.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.output = self._popen.stdout
        self.output_tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self.returncode: int | None = None
        self.exited = threading.Event()
        self._reap_lock = threading.Lock()
        self.kill_reason: str | None = None

    def signal(self, signum: int) -> None:
        """Sends ``signum`` unless the process has already been reaped."""
        # Under the lock, so the pidfd cannot be closed (and its number
        # reused for another worker's pidfd) between the check and the send.
        with self._reap_lock:
            if not self.exited.is_set():
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self.pidfd, signum)

    def kill(self, reason: str) -> None:
        """SIGKILLs the worker, remembering why (the first reason wins)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        self.signal(signal.SIGKILL)

    def reap(self) -> int:
        """Collects the exit status; called by the monitor once the pidfd is readable."""
        with self._reap_lock:
            self.returncode = self._popen.wait()
            os.close(self.pidfd)
            self.output.close()
            self.exited.set()
        return self.returncode

    def tail(self) -> str:
        """The worker's last output lines, for error messages."""
        return "\n".join(self.output_tail)


def describe_exit(returncode: int) -> tuple[signal.Signals | None, int | None, str]:
    """(signal, exit code, words) for a Popen return code."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return None, None, f"was killed by signal {-returncode}"
        return sig, None, f"was killed by {sig.name} ({returncode})"
    return None, returncode, f"exited with status {returncode}"
