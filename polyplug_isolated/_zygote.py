"""The host's side of the zygote: one pre-initialised worker template per runtime.

A fresh Python worker takes ~40 ms to start; a fork of a template that has
already imported everything takes ~1 ms, and the child shares the template's
pages copy-on-write. The template (worker/zygote.py) is started with
subprocess — never a fork of the host, whose other threads may hold locks —
and forks one worker per load, reload and restart. Each worker is a child of
the host (CLONE_PARENT), so reaping, pidfds and exit statuses work as for
any child, whatever becomes of the zygote.

One zygote per runtime rather than one per host process: it lives and dies
with its runtime (close() leaves no process behind, a test's leak check
holds), it carries no state shared between runtimes, and its environment is
the host's when the runtime started it. Its cost is one template per runtime
(~19 MB RSS, mostly shared with nothing) — a host runs one runtime.

When the zygote dies, hangs or cannot fork, the load in progress fails with
WorkerStartFailed, the zygote is killed and reaped, and a new one is started
for the next load. A zygote found dead before a request is replaced without
an error: no request was lost with it.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from . import _protocol as proto
from ._process import WorkerProcess
from .errors import WorkerStartFailed

# Fds each worker holds in the host (control socket, output pipe, pidfd),
# plus the few a start needs for a moment (the segment's, the worker's ends).
_FDS_PER_WORKER = 3
_FD_HEADROOM = 16


class Zygote:
    """Starts worker processes by forking one template; thread-safe (forks take turns)."""

    def __init__(self, timeout: float):
        self._timeout = timeout  # for the template to start, and for each fork
        self._lock = threading.Lock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader = proto.FrameReader()
        self._ready = False
        self._environment: dict[str, str] = {}
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The template's PID (None before the first start)."""
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        """Starts the template now if none runs (prestart); loads otherwise start it on demand."""
        with self._lock:
            if self._popen is None and not self._closed:
                self._spawn()

    def fork(self, environment: dict[str, str], first_frame: bytes, first_fd: int) -> WorkerProcess:
        """A new worker process with ``environment``, its first frame (and fd) already queued to it.

        The frame is sent on the worker's control socket before the zygote
        answers: the worker reads it as soon as it runs, while the host is
        still setting up its side.

        Raises:
            WorkerStartFailed: the zygote could not start, hung, died or could
                not fork; it has been replaced for the next attempt.
        """
        with self._lock:
            if self._closed:
                raise WorkerStartFailed("the runtime is closed: no worker can be started")
            if self._popen is None or self._popen.poll() is not None:
                self._replace()
            control, worker_control, output_read, output_write = _worker_fds()
            try:
                with worker_control, open(output_write, "wb", closefd=True):
                    env = None if environment == self._environment else environment
                    pid = self._request(
                        env, (worker_control.fileno(), output_write), control, first_frame, first_fd
                    )
                output = open(output_read, "rb", buffering=0)  # noqa: SIM115 - the process owns it
            except BaseException:
                control.close()
                os.close(output_read)
                raise
            try:
                return WorkerProcess(pid, control, output)
            except OSError as exc:  # pidfd_open: out of fds
                control.close()
                output.close()
                os.kill(pid, signal.SIGKILL)  # our unreaped child: the PID is still its own
                os.waitpid(pid, 0)
                raise WorkerStartFailed(f"cannot watch the new worker {pid}: {exc}") from exc

    def close(self) -> None:
        """Ends the template (its workers are the runtime's to end). Idempotent."""
        with self._lock:
            self._closed = True
            self._stop()

    # ---- inside the lock -------------------------------------------------------

    def _request(
        self,
        env: dict[str, str] | None,
        fds: tuple[int, int],
        control: socket.socket,
        first_frame: bytes,
        first_fd: int,
    ) -> int:
        """One fork; the new worker's PID."""
        assert self._sock is not None
        try:
            if not self._ready:
                self._await("ready")
                self._ready = True
            request = proto.frame("fork", env=env)
            sent = socket.send_fds(self._sock, [request], list(fds))
            self._sock.sendall(request[sent:])
            sent = socket.send_fds(control, [first_frame], [first_fd])
            control.sendall(first_frame[sent:])
            reply = self._await("forked", "fork_failed")
        except WorkerStartFailed:
            self._replace()
            raise
        except (OSError, proto.FrameError) as exc:
            why = self._died_or(f"its socket failed: {exc}")
            self._replace()
            raise WorkerStartFailed(f"the worker zygote {why}") from exc
        if reply["t"] == "forked":
            return int(reply["pid"])
        code = reply.get("errno")
        self._replace()
        hint = " (a process or memory limit?)" if code in (errno.EAGAIN, errno.ENOMEM) else ""
        raise WorkerStartFailed(
            f"the worker zygote could not fork: {reply.get('message')} (errno {code}){hint}; "
            "a new zygote is started for the next load",
            errno=code,
        )

    def _await(self, *tags: str) -> dict[str, Any]:
        """The next frame from the zygote, which must be one of ``tags``."""
        assert self._sock is not None
        self._sock.settimeout(self._timeout)
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                raise WorkerStartFailed(
                    f"the worker zygote did not answer within {self._timeout:g} s (hung?); it was killed and "
                    "a new one is started for the next load. Raise Runtime(load_timeout=...) on a slow host"
                ) from None
            if not data:
                why = self._died_or("closed its socket")
                raise WorkerStartFailed(f"the worker zygote {why}; a new one is started for the next load")
            for message in self._reader.feed(data):
                if message.get("t") not in tags:
                    raise WorkerStartFailed(f"the worker zygote sent {message!r:.200} instead of {tags}")
                return message

    def _died_or(self, otherwise: str) -> str:
        assert self._popen is not None
        try:
            code = self._popen.wait(self._timeout)
        except subprocess.TimeoutExpired:
            return otherwise
        stderr = self._popen.stderr.read().decode("utf-8", "replace").strip() if self._popen.stderr else ""
        return f"exited with status {code}" + (f": {stderr[-2000:]}" if stderr else "")

    def _replace(self) -> None:
        self._stop()
        if not self._closed:
            self._spawn()

    def _spawn(self) -> None:
        mine, theirs = socket.socketpair()
        with theirs:
            command = [sys.executable, "-m", "polyplug_isolated.worker", "--zygote-fd", str(theirs.fileno())]
            environment = dict(os.environ)
            try:
                self._popen = subprocess.Popen(
                    command,
                    pass_fds=(theirs.fileno(),),
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    close_fds=True,
                )
            except BaseException:
                mine.close()
                raise
        self._sock = mine
        self._reader = proto.FrameReader()
        self._ready = False
        self._environment = environment

    def _stop(self) -> None:
        """Kills and reaps the template: it holds nothing a kill could leak, healthy or hung."""
        popen, sock = self._popen, self._sock
        self._popen = self._sock = None
        if sock is not None:
            sock.close()
        if popen is None:
            return
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        if popen.stderr is not None:
            popen.stderr.close()


def _worker_fds() -> tuple[socket.socket, socket.socket, int, int]:
    """A control socketpair and an output pipe for a new worker, leaving room for the next one."""
    try:
        fds = _open_worker_fds()
    except OSError as exc:
        if exc.errno != errno.EMFILE or not _raise_fd_limit():
            raise WorkerStartFailed(_no_fds(exc)) from exc
        try:
            fds = _open_worker_fds()
        except OSError as again:
            raise WorkerStartFailed(_no_fds(again)) from again
    control, _, output_read, output_write = fds
    # Fds are numbered lowest-free-first: the highest new one tells how many are open.
    if max(output_read, output_write, control.fileno()) + _FDS_PER_WORKER + _FD_HEADROOM >= _soft_limit():
        _raise_fd_limit()
    return fds


def _open_worker_fds() -> tuple[socket.socket, socket.socket, int, int]:
    control, worker_control = socket.socketpair()
    try:
        output_read, output_write = os.pipe2(os.O_CLOEXEC)
    except BaseException:
        control.close()
        worker_control.close()
        raise
    return control, worker_control, output_read, output_write


def _soft_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _raise_fd_limit() -> bool:
    """Raises the soft fd limit to the hard one; False if it already was (or may not be raised).

    ~3 fds per worker: 1,000 workers need more than the common soft limit of
    1,024. A host that never comes near its limit keeps it untouched.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return False
    return True


def _no_fds(exc: OSError) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (
        f"the host cannot open the worker's sockets: {exc.strerror} (fd limit {soft}, hard limit {hard}); "
        f"each worker holds {_FDS_PER_WORKER} fds in the host: raise `ulimit -n` or load fewer bundles"
    )
