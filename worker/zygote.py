"""The zygote: a worker template that forks one worker per load, reload and restart.

The host starts it once per runtime (``python -m polyplug_isolated.worker
--zygote-fd Z``); it imports everything a worker needs (cffi modules,
msgpack, the worker program), says ``ready`` and then waits on its socket.
Each request carries two fds (SCM_RIGHTS): the worker's end of a fresh
control socket and the write end of its output pipe. The zygote forks, and
the child becomes that worker (``run_worker``), which sets its bundle's
environment itself — or, when the environment differs in what only a
process start reads (``exec_env``: LD_LIBRARY_PATH and the dynamic loader's
other variables, glibc's tunables), execs a fresh worker program with it:
~40 ms instead of ~2, for those bundles only.

Two rules hold it together:

- **The zygote stays single-threaded.** A fork copies only the calling
  thread; a lock another thread held would stay locked in the child forever.
  Nothing here starts a thread; workers start theirs (the watchdog, the
  serve loop, any thread mirror) after the fork. ``serve_forks`` refuses to
  run in a process that has more than one.
- **The worker is the host's child, not ours.** The fork is a raw clone3
  with CLONE_PARENT: the host holds a pidfd to its worker, collects its exit
  status with waitpid and never depends on the zygote to learn how a worker
  ended; a zygote that dies or hangs takes no running worker with it. The
  CPython fork protocol (PyOS_BeforeFork / AfterFork_*) runs around the
  clone exactly as around os.fork().

Protocol (length-prefixed msgpack frames, _protocol.FrameReader)::

    zygote -> host   {"t": "ready", "pid": P}                once, after imports
    host -> zygote   {"t": "fork", "exec_env": {..}|None, "contain": policy}
                                                      + fds [control, output]
    zygote -> host   {"t": "forked", "pid": W}    and the new worker sends the same
                   | {"t": "fork_failed", "errno": E, "message": M}

``contain`` (absent when the child execs) is the containment the child
applies first thing, before it waits for its load frame (run_worker).
EOF on the socket ends the zygote, and it means the host died: a host that
ends a zygote kills it first and closes the socket after. So at EOF the
zygote sends SIGCONT to its process group, which it leads and every worker
it forked (or a contained worker's stand-in) is in: a worker stopped by
SIGSTOP runs again, and its watchdog sees its socket hang up.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import NoReturn

from polyplug_isolated import _protocol as proto

_CLONE_PARENT = 0x00008000
_SYS_CLONE3 = 435  # the same number on every architecture (syscalls >= 424 are unified)
_UNSET = object()  # a fork request without "contain": the worker reads its policy in its load frame
_SYS_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220}  # flags first, like clone3's fields


class _CloneArgs(ctypes.Structure):
    """struct clone_args (linux/sched.h), version 0."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls")
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _clone_parent() -> int:
    """fork(), but the child's parent is our parent: 0 in the child, its PID here.

    With CLONE_PARENT the kernel takes the exit signal from this process (the
    host started it with SIGCHLD), so the host is notified like for any child.
    A raw clone skips glibc's fork handlers: harmless in a process that has
    one thread and holds no lock (see the module docstring).
    """
    args = _CloneArgs(flags=_CLONE_PARENT)
    python = ctypes.pythonapi  # PyDLL: these run with the GIL held, as they must
    python.PyOS_BeforeFork()
    pid: int = _libc.syscall(_SYS_CLONE3, ctypes.byref(args), ctypes.sizeof(args))
    if pid < 0 and ctypes.get_errno() == errno.ENOSYS and os.uname().machine in _SYS_CLONE:
        pid = _libc.syscall(_SYS_CLONE[os.uname().machine], _CLONE_PARENT, 0, 0, 0, 0)
    error = ctypes.get_errno()
    if pid == 0:
        python.PyOS_AfterFork_Child()
        return 0
    python.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(error, os.strerror(error))
    return pid


def _send(sock: socket.socket, tag: str, /, **fields: object) -> None:
    sock.sendall(proto.frame(tag, **fields))


def _become_worker(
    sock: socket.socket,
    control_fd: int,
    output_fd: int,
    exec_env: dict[str, str] | None,
    policy: object,
    run_worker: Callable[..., int],
) -> None:
    """The child's side of a fork: drop the zygote's socket, take the worker's fds, run (or exec).

    Never returns: whatever happens, the child exits here.
    """
    status = 70  # EX_SOFTWARE: the worker program itself failed
    try:
        # The child says it exists, and so does the zygote: the host learns
        # the new PID (and so reaps the child) even if one of them is killed
        # right after the fork. It takes the first and skips the second.
        _send(sock, "forked", pid=os.getpid())
        sock.close()
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(output_fd)
        if exec_env is not None:
            os.set_inheritable(control_fd, True)
            command = [sys.executable, "-m", "polyplug_isolated.worker", "--control-fd", str(control_fd)]
            os.execve(sys.executable, command, exec_env)
        status = run_worker(control_fd) if policy is _UNSET else run_worker(control_fd, policy)
    except BaseException as exc:  # a worker must never fall back into the zygote's loop
        os.write(2, f"polyplug_isolated worker: {exc!r}\n".encode("utf-8", "replace"))
    finally:
        os._exit(status)


def serve_forks(zygote_fd: int, run_worker: Callable[..., int]) -> int:
    """The zygote's loop: one fork per request until the host hangs up."""
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        print(
            f"polyplug_isolated zygote: refusing to fork from a process with {threads} threads",
            file=sys.stderr,
        )
        return 70
    os.setpgid(0, 0)  # a group of its own, which its workers inherit: see _host_gone
    sock = socket.socket(fileno=zygote_fd)
    # Everything imported so far lives as long as the zygote: keep the
    # collector's hands off it, so a worker's first collection copies no page.
    gc.freeze()
    with contextlib.suppress(ConnectionError):  # reset (it died with reports unread) or a broken pipe
        _serve(sock, run_worker)
    _host_gone()


def _serve(sock: socket.socket, run_worker: Callable[..., int]) -> None:
    """Forks a worker per request; returns at EOF, when the host has gone."""
    _send(sock, "ready", pid=os.getpid())
    reader = proto.FrameReader()
    received: list[int] = []  # fds that came before their request was complete
    while True:
        data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2, socket.MSG_CMSG_CLOEXEC)
        if not data:
            return
        received += fds
        for request in reader.feed(data):
            worker_fds, received = received[:2], received[2:]
            if len(worker_fds) != 2:
                for fd in worker_fds:
                    os.close(fd)
                _send(sock, "fork_failed", errno=errno.EINVAL, message="a fork request needs exactly two fds")
                continue
            _fork(sock, request, worker_fds[0], worker_fds[1], run_worker)


def _host_gone() -> NoReturn:
    """The host died: every worker this zygote forked must see it, a stopped one too.

    An uncontained worker is in this zygote's process group (see
    serve_forks): SIGCONT lets a stopped one run, and its watchdog ends it.
    A contained worker left the group (setsid), but its stand-in did not and
    ends it by itself when the host's end of the control socket closes
    (sandbox.c's supervise): a SIGKILL here would kill the stand-in before
    it can end what the worker left behind.
    """
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGCONT)
    os._exit(0)


def _fork(
    sock: socket.socket,
    request: dict[str, object],
    control_fd: int,
    output_fd: int,
    run_worker: Callable[..., int],
) -> None:
    """Forks one worker for ``request``; the child never returns from here."""
    exec_env = request.get("exec_env")
    policy = request.get("contain", _UNSET)
    try:
        pid = _clone_parent()
        if pid == 0:
            _become_worker(
                sock,
                control_fd,
                output_fd,
                exec_env if isinstance(exec_env, dict) else None,
                policy,
                run_worker,
            )
        _send(sock, "forked", pid=pid)
    except OSError as exc:
        _send(sock, "fork_failed", errno=exc.errno, message=exc.strerror or str(exc))
    finally:
        os.close(control_fd)
        os.close(output_fd)
