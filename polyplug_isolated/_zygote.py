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
an error: no request was lost with it (nor is a load failed by the loss of a
spare forked ahead: it forks from a new zygote instead). Both the zygote and
the forked child report the child's PID, so a zygote (or child) killed right
after a fork leaves no child the host does not know of.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from . import _protocol as proto
from ._process import WorkerProcess
from .errors import WorkerStartFailed

# Variables the dynamic loader and libc read only when a process starts: a
# worker whose environment differs from the zygote's in any of them is exec'd
# (by the zygote's child) instead of running in the fork.
_STARTUP_PREFIXES = ("LD_", "GLIBC_TUNABLES", "MALLOC_")

# Builds a worker's first frame, given the environment it must still set itself.
FrameFor = Callable[[dict[str, str] | None], bytes]
# A worker's containment policy (_sandbox.worker_policy); None: nothing to apply.
Policy = dict[str, Any] | None

# A zygote starts an interpreter: on a busy machine that can outlast a short load_timeout.
_START_TIMEOUT = 10.0

# Fds each worker holds in the host (control socket, output pipe, pidfd),
# plus the few a start needs for a moment (the segment's, the worker's ends).
_FDS_PER_WORKER = 3
_FD_HEADROOM = 16


class Zygote:
    """Starts worker processes by forking one template; thread-safe (forks take turns).

    Each worker gets its containment policy with the fork and applies it
    before it reads its first frame. With ``keep_spare``
    (``Runtime(spare_worker=True)``, the default), one worker is kept forked
    ahead of need and contained with ``spare_policy`` (the runtime's
    default): a load whose policy is that one hands its first frame to the
    spare, which has already paid for its fork, its namespaces, Landlock and
    seccomp (~4 ms here); once that worker's load has ended,
    ``fork_ahead`` asks the zygote for the next spare without waiting for it:
    its answer is read at the next fork.
    """

    def __init__(self, timeout: float, keep_spare: bool = False, spare_policy: Policy = None):
        self._timeout = timeout  # for the template to start, and for each fork
        self._keep_spare = keep_spare
        self._spare_policy = spare_policy
        self._lock = threading.Lock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader = proto.FrameReader()
        self._ready = False
        self._environment: dict[str, str] = {}
        self._spare: tuple[WorkerProcess, dict[str, str], Policy] | None = None  # its environment, policy
        self._pending: tuple[socket.socket, int] | None = None  # a spare asked for: (control, output)
        # Each fork is reported twice (by the zygote and by the child): the PIDs already taken.
        self._reported: collections.deque[int] = collections.deque(maxlen=64)
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

    def fork(
        self,
        environment: dict[str, str],
        first_frame: FrameFor,
        first_fd: int,
        policy: Policy = None,
    ) -> WorkerProcess:
        """A new worker process with ``environment``, its first frame (and fd) already queued to it.

        ``first_frame(env)`` builds that frame, ``env`` being the environment
        the worker must still set itself (None: it has it). The frame is sent
        before the zygote answers, so the worker can read it as soon as it runs.
        ``policy`` is the containment the frame asks for.

        Raises:
            WorkerStartFailed: the zygote could not start, hung, died or could
                not fork; it has been replaced for the next attempt.
        """
        with self._lock:
            if self._closed:
                raise WorkerStartFailed("the runtime is closed: no worker can be started")
            process = self._take_spare(environment, first_frame, first_fd, policy)
            if process is None:
                process = self._fork_now(environment, first_frame, first_fd, policy)
            return process

    def fork_ahead(self) -> None:
        """Asks for the next spare (with ``keep_spare``), without waiting for anything.

        The monitor thread calls it just after a worker's start has ended: not
        earlier, as forking the spare meanwhile would take the CPU that load
        needs, and not on the loading thread, whose caller would wait for the
        request (the zygote, woken, takes that thread's CPU). It never waits
        for the lock either: whoever holds it is a fork in progress (whose
        start asks again when it ends) or close().
        """
        if not self._keep_spare or not self._lock.acquire(blocking=False):
            return
        try:
            if self._ready and not self._closed and self._spare is None and self._pending is None:
                self._ask_for_spare()
        except OSError:  # no new zygote could be started: the next load tries again, and says why
            pass
        finally:
            self._lock.release()

    def adopt_spare(self) -> bool:
        """Adopts the spare asked for if the zygote's answer has come; never waits for it.

        The monitor thread calls it after ``fork_ahead``, so that the next
        load finds the spare adopted instead of reading that answer on its
        own path (~0.15 ms here). Returns True while the answer is still to
        come: the caller may look again later. A fork in progress (the lock is
        held) reads it itself, and so does the next fork when the socket
        failed: it finds out why and replaces the zygote.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._pending is None or self._sock is None:
                return False
            try:
                reply = self._reply_if_come()
            except proto.FrameError:
                return False
            if reply is None:
                return True
            with contextlib.suppress(WorkerStartFailed):  # the next load finds a new zygote, and says why
                self._settle_spare(lambda: self._forked_pid(reply))
            return False
        finally:
            self._lock.release()

    def close(self) -> None:
        """Ends the template and the spare (the workers are the runtime's to end). Idempotent."""
        with self._lock:
            self._closed = True
            with contextlib.suppress(WorkerStartFailed):
                self._collect_spare()
            if self._spare is not None:
                self._spare[0].discard()
                self._spare = None
            self._stop()

    def forget_after_fork(self) -> None:
        """In a fork() child: the template and its spare are the parent's. Closes the child's
        copies of their descriptors and never signals or waits for either."""
        self._lock = threading.Lock()  # a parent thread may have held the old one at the fork
        self._closed = True
        if self._spare is not None:
            self._spare[0].forget_after_fork()
            self._spare = None
        if self._pending is not None:
            control, output_read = self._pending
            self._pending = None
            control.close()
            with contextlib.suppress(OSError):
                os.close(output_read)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._popen is not None and self._popen.stderr is not None:
            self._popen.stderr.close()
        self._popen = None

    # ---- inside the lock -------------------------------------------------------

    def _take_spare(
        self,
        environment: dict[str, str],
        first_frame: FrameFor,
        first_fd: int,
        policy: Policy,
    ) -> WorkerProcess | None:
        """The spare, if there is a live one that can become this worker; its first frame sent."""
        with contextlib.suppress(WorkerStartFailed):  # a spare lost with its zygote fails no load
            self._collect_spare()
        if self._spare is None:
            return None
        process, spare_environment, spare_policy = self._spare
        if _startup_part(environment) != _startup_part(spare_environment) or policy != spare_policy:
            return None  # an exec, or another containment: the spare waits for the next load
        self._spare = None
        env = None if environment == spare_environment else environment
        if not process.alive() or not _send(process.control, first_frame(env), first_fd):
            process.discard()
            return None
        return process

    def _collect_spare(self) -> None:
        """Reads (waiting for it) the zygote's answer about the spare asked for last."""
        if self._pending is not None:
            self._settle_spare(self._answer)

    def _settle_spare(self, answer: Callable[[], int]) -> None:
        """Adopts the pending spare as the PID ``answer()`` gives, or drops it if that raises.

        The pending fds stay in ``_pending`` until they are the spare's, so that
        a fork() of the host meanwhile finds them (forget_after_fork).
        """
        assert self._pending is not None
        control, output_read = self._pending
        try:
            pid = answer()
        except BaseException:
            self._pending = None
            control.close()
            os.close(output_read)
            raise
        try:
            self._spare = (_adopt(pid, control, output_read), self._environment, self._spare_policy)
        finally:
            self._pending = None  # its fds are the spare's now, or _adopt closed them

    def _ask_for_spare(self) -> None:
        """Asks for the next spare without waiting: it forks while this load goes on."""
        try:
            control, worker_control, output_read, output_write = _worker_fds()
        except WorkerStartFailed:
            return  # out of fds: no spare this time
        with worker_control, open(output_write, "wb", closefd=True):
            try:
                self._ask(None, (worker_control.fileno(), output_write), self._spare_policy)
            except WorkerStartFailed:
                control.close()
                os.close(output_read)
                return  # no spare this time; the next fork finds a new zygote
        self._pending = (control, output_read)

    def _fork_now(
        self,
        environment: dict[str, str],
        first_frame: FrameFor,
        first_fd: int,
        policy: Policy,
    ) -> WorkerProcess:
        if self._popen is None or self._popen.poll() is not None:
            self._replace()
        exec_env = environment if _startup_part(environment) != _startup_part(self._environment) else None
        env = None if exec_env is not None or environment == self._environment else environment
        control, worker_control, output_read, output_write = _worker_fds()
        try:
            with worker_control, open(output_write, "wb", closefd=True):
                self._ask(exec_env, (worker_control.fileno(), output_write), policy)
                if not _send(control, first_frame(env), first_fd):
                    raise WorkerStartFailed("the new worker's control socket failed")
            pid = self._answer()
        except BaseException:
            control.close()
            os.close(output_read)
            raise
        return _adopt(pid, control, output_read)

    def _ask(self, exec_env: dict[str, str] | None, fds: tuple[int, int], policy: Policy) -> None:
        """Sends one fork request (with the worker's two fds); the answer is read by _answer.

        A forked worker is told its containment ``policy`` now; an exec'd one
        reads it in its load frame (it contains itself after the exec)."""
        assert self._sock is not None
        with self._replaced_on_failure():
            if not self._ready:
                self._await("ready", timeout=max(self._timeout, _START_TIMEOUT))
                self._ready = True
            contained = {} if exec_env is not None else {"contain": policy}
            request = proto.frame("fork", exec_env=exec_env, **contained)
            sent = socket.send_fds(self._sock, [request], list(fds))
            self._sock.sendall(request[sent:])

    @contextlib.contextmanager
    def _replaced_on_failure(self) -> Iterator[None]:
        """A failed exchange with the template replaces it; the error says why, as WorkerStartFailed."""
        try:
            yield
        except WorkerStartFailed:
            self._replace()
            raise
        except (OSError, proto.FrameError) as exc:
            why = self._died_or(f"its socket failed: {exc}")
            self._replace()
            raise WorkerStartFailed(f"the worker zygote {why}") from exc

    def _answer(self) -> int:
        """The PID of the worker the last request forked."""
        with self._replaced_on_failure():
            reply = self._await("forked", "fork_failed")
        return self._forked_pid(reply)

    def _forked_pid(self, reply: dict[str, Any]) -> int:
        """The PID a ``forked`` answer names; raises for any other (and replaces the zygote)."""
        if reply["t"] == "forked":
            pid = int(reply["pid"])
            self._reported.append(pid)
            return pid
        code = reply.get("errno")
        self._replace()
        hint = " (a process or memory limit?)" if code in (errno.EAGAIN, errno.ENOMEM) else ""
        raise WorkerStartFailed(
            f"the worker zygote could not fork: {reply.get('message')} (errno {code}){hint}; "
            "a new zygote is started for the next load",
            errno=code,
        )

    def _await(self, *tags: str, timeout: float | None = None) -> dict[str, Any]:
        """The next frame from the zygote, which must be one of ``tags``."""
        assert self._sock is not None
        timeout = timeout or self._timeout
        self._sock.settimeout(timeout)
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                raise WorkerStartFailed(
                    f"the worker zygote did not answer within {timeout:g} s (hung?); it was killed and "
                    "a new one is started for the next load. Raise Runtime(load_timeout=...) on a slow host"
                ) from None
            if not data:
                why = self._died_or("closed its socket")
                raise WorkerStartFailed(f"the worker zygote {why}; a new one is started for the next load")
            for message in self._reader.feed(data):
                if self._reported_before(message):
                    continue
                if message.get("t") not in tags:
                    raise WorkerStartFailed(f"the worker zygote sent {message!r:.200} instead of {tags}")
                return message

    def _reply_if_come(self) -> dict[str, Any] | None:
        """The zygote's next answer if it has come whole; None when it has not, never waiting.

        None too at EOF or a socket error: the next ``_await`` meets them again
        and says why. What was read of an answer stays in the reader for it.
        """
        assert self._sock is not None
        self._sock.setblocking(False)  # a timeout would make recv poll for that long first
        try:
            while True:
                try:
                    data = self._sock.recv(1 << 16)
                except OSError:  # BlockingIOError: nothing more now
                    return None
                if not data:
                    return None
                for message in self._reader.feed(data):
                    if not self._reported_before(message):
                        return message
        finally:
            self._sock.settimeout(self._timeout)

    def _reported_before(self, message: dict[str, Any]) -> bool:
        """The second report of a fork already answered (each fork is reported twice)."""
        return message.get("t") == "forked" and message.get("pid") in self._reported

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
        self._reported.clear()
        self._ready = False
        self._environment = environment

    def _stop(self) -> None:
        """Kills and reaps the template: it holds nothing a kill could leak, healthy or hung.

        Killed before its socket is closed: the template takes EOF on that
        socket for its host's death, and wakes every worker it forked
        (SIGCONT to its process group) to see that death.
        """
        popen, sock = self._popen, self._sock
        self._popen = self._sock = None
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()
        if sock is not None:
            sock.close()
        if popen is not None and popen.stderr is not None:
            popen.stderr.close()


def _startup_part(environment: dict[str, str]) -> dict[str, str]:
    """The variables only a process start reads (a worker that differs in them is exec'd)."""
    return {name: value for name, value in environment.items() if name.startswith(_STARTUP_PREFIXES)}


def _send(control: socket.socket, frame: bytes, fd: int) -> bool:
    """Sends a frame and an fd on a worker's control socket; False if the worker is gone."""
    try:
        sent = socket.send_fds(control, [frame], [fd])
        control.sendall(frame[sent:])
    except OSError:
        return False
    return True


def _adopt(pid: int, control: socket.socket, output_read: int) -> WorkerProcess:
    """The WorkerProcess of a child the zygote forked; kills and reaps it if it cannot be watched."""
    output = open(output_read, "rb", buffering=0)  # noqa: SIM115 - the process owns it
    try:
        return WorkerProcess(pid, control, output)
    except OSError as exc:  # pidfd_open: out of fds
        control.close()
        output.close()
        os.kill(pid, signal.SIGKILL)  # our unreaped child: the PID is still its own
        os.waitpid(pid, 0)
        raise WorkerStartFailed(f"cannot watch the new worker {pid}: {exc}") from exc


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
