"""The worker program: hosts one bundle in its own process.

Runs as the runtime's zygote (``python -m polyplug_isolated.worker
--zygote-fd Z``, see zygote.py), which forks one worker per load; or as one
worker (``--control-fd C``), which is what a zygote's child execs when the
bundle's environment must be in place at process start. A worker refuses to
run without its handshake (a load frame with the segment's fd). Python only
drives the control plane here: loading, reporting, unloading. Calls are
served by the C loop in serve.c on its own thread, without the GIL.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import resource
import signal
import socket
import sys
import threading

from polyplug_isolated.worker._contain import contain
from polyplug_isolated.worker._serve_ffi import ffi, lib

from polyplug_isolated import _protocol as proto

_LOAD_ERRORS = {
    lib.PPW_LOAD_DLOPEN: proto.DLOPEN,
    lib.PPW_LOAD_NO_ABI_VERSION: proto.NO_ABI_VERSION,
    lib.PPW_LOAD_ABI_MISMATCH: proto.ABI_MISMATCH,
    lib.PPW_LOAD_NO_INIT: proto.NO_INIT,
    lib.PPW_LOAD_INIT_FAILED: proto.INIT_ERROR,
}


def _send(tag: str, /, **fields) -> None:
    payload = proto.encode(tag, **fields)
    if lib.ppw_send_frame(payload, len(payload)) != 0:
        os._exit(0)  # the host is gone; nobody is left to answer


def _frames(sock: socket.socket, reader: proto.FrameReader):
    while True:
        data = sock.recv(65536)
        if not data:
            return
        yield from reader.feed(data)


def _text(pointer, length: int) -> str:
    return ffi.unpack(pointer, length).decode("utf-8", "replace") if length else ""


def _registrations() -> list[dict]:
    info = ffi.new("ppw_registration_info *")
    contracts = []
    for index in range(lib.ppw_registration_count()):
        lib.ppw_registration(index, info)
        contracts.append(
            {
                "index": index,
                "contract_id": info.contract_id,
                "name": _text(info.contract_name, info.contract_name_len),
                "plugin": _text(info.plugin_name, info.plugin_name_len),
                "version": [info.major, info.minor, info.patch],
                "plugin_version": [info.plugin_major, info.plugin_minor, info.plugin_patch],
                "function_count": info.function_count,
            }
        )
    return contracts


_LIMITS = {
    "address_space": resource.RLIMIT_AS,
    "cpu_seconds": resource.RLIMIT_CPU,
    "open_files": resource.RLIMIT_NOFILE,
}


def apply_worker_options(request: dict) -> None:
    """Everything a worker does to itself for its bundle after the fork and before dlopen.

    The environment (when the fork's is not the one wanted; variables only a
    process start reads were set by an exec instead: zygote.py), working
    directory and resource limits of the bundle's WorkerOptions. Containment
    of the worker belongs here too, last: whatever it forbids, the zygote
    never needed.
    """
    if request.get("env") is not None:
        os.environ.clear()
        os.environ.update(request["env"])
    if request.get("cwd"):
        os.chdir(request["cwd"])
    for name, value in (request.get("limits") or {}).items():
        # CPU: the soft limit sends SIGXCPU (the host names the limit), the
        # hard one a second later SIGKILL, should the plugin ignore it.
        hard = value + 1 if name == "cpu_seconds" else value
        resource.setrlimit(_LIMITS[name], (value, hard))


def _install_faults(specs: list[dict], append: bool) -> None:
    table = ffi.new("ppw_fault_spec[]", max(1, len(specs)))
    for entry, spec in zip(table, specs, strict=False):
        for name, value in spec.items():
            setattr(entry, name, value)
    lib.ppw_faults_install(table, len(specs), append)


def _declare_dependencies(dependencies: list[dict]) -> None:
    """What get_dependencies shows the plugin during its polyplug_init."""
    table = ffi.new("DependencyInfo[]", max(1, len(dependencies)))
    for entry, dependency in zip(table, dependencies, strict=False):
        for name, value in dependency.items():
            setattr(entry, name, value)
    lib.ppw_set_dependencies(table, len(dependencies))


def _load(request: dict, segment_fd: int | None) -> bool:
    if (
        request.get("t") != proto.LOAD
        or request.get("protocol") != lib.PP_PROTOCOL_VERSION
        or segment_fd is None
    ):
        _send(
            proto.ERROR,
            kind=proto.BAD_REQUEST,
            message=f"expected a load frame for protocol {lib.PP_PROTOCOL_VERSION} with the segment's fd, "
            f"got {request!r:.200}",
        )
        return False
    attached = lib.ppw_attach(segment_fd)
    os.close(segment_fd)
    if attached != 0:
        _send(
            proto.ERROR, kind=proto.ATTACH, message="the shared-memory segment is not one this worker speaks"
        )
        return False
    try:
        apply_worker_options(request)
    except (OSError, ValueError, KeyError) as exc:
        _send(
            proto.ERROR,
            kind=proto.CONFINE,
            message=f"cannot apply the bundle's environment, cwd or limits: {exc}",
        )
        return False
    _install_faults(request.get("faults") or [], append=False)
    _declare_dependencies(request.get("dependencies") or [])
    result = ffi.new("ppw_load_result *")
    bundle_dir = request["bundle_dir"]
    lib.ppw_load(request["library"].encode(), request["bundle_id"], bundle_dir, len(bundle_dir), result)
    if result.kind != lib.PPW_LOAD_OK:
        _send(
            proto.ERROR,
            kind=_LOAD_ERRORS[result.kind],
            code=result.code,
            found=result.found,
            message=_text(result.message, result.message_len),
        )
        return False
    _send(proto.READY, abi_version=1, contracts=_registrations())
    return True


def _first_frame(sock: socket.socket, reader: proto.FrameReader) -> tuple[dict | None, int | None]:
    """The load frame, and the segment fd that travels with it (SCM_RIGHTS)."""
    segment_fd = None
    while True:
        data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
        for fd in fds:
            if segment_fd is None:
                segment_fd = fd
            else:
                os.close(fd)
        if not data:
            return None, segment_fd
        frames = reader.feed(data)
        if frames:
            return frames[0], segment_fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polyplug_isolated.worker", description=__doc__)
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--control-fd", type=int, help="serve one bundle over this control socket")
    role.add_argument("--zygote-fd", type=int, help="fork workers on request over this socket")
    args = parser.parse_args(argv)
    _prepare_process()
    if args.zygote_fd is not None:
        from polyplug_isolated.worker.zygote import serve_forks

        return serve_forks(args.zygote_fd, run_worker)
    return run_worker(args.control_fd)


def _prepare_process() -> None:
    """What every worker needs and a fork inherits: done once, in the zygote (or an exec'd worker).

    Signal dispositions, the handlers' alternate stack and the libgcc that
    backtrace() loads all survive fork(); this saves each worker ~0.4 ms.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the host
    lib.ppw_install_crash_handlers()  # before faulthandler, which chains to it
    faulthandler.enable()  # writes to fd 2, which each worker points at its own output


def _rehearse() -> None:
    """A forked worker, before its load frame: runs what a load runs that needs no bundle.

    A fresh fork shares every page with the zygote, and the first write to
    each (a reference count is one) copies it: done here, those copies are
    off the load's path, which a spare is waiting to shorten.
    """
    _install_faults([], append=False)
    _declare_dependencies([])
    ffi.new("ppw_load_result *")
    proto.decode(proto.encode(proto.READY, abi_version=1, contracts=_registrations()))
    proto.FrameReader().feed(proto.frame(proto.LOAD, protocol=0))


# run_worker's policy when the load frame brings it (an exec'd worker).
FROM_LOAD_FRAME = "from the load frame"


def run_worker(control_fd: int, policy: dict | str | None = FROM_LOAD_FRAME) -> int:
    """One worker's life: set up, load the bundle its load frame names, serve it until unloaded.

    Runs in a freshly forked (or exec'd) process: its threads (the watchdog
    here, the serve loop below) start only now, never in the zygote, and
    only after containment (Landlock binds only the threads alive then).
    A zygote's child gets its containment ``policy`` with the fork and
    applies it before it waits for its load frame: a spare forked ahead is
    contained while nothing waits for it. The load frame must then ask for
    that very policy (the host hands a spare only to bundles that do).
    """
    lib.ppw_set_control_fd(control_fd)
    sock = socket.socket(fileno=control_fd)
    # While single-threaded and before any plugin code runs; the report goes out at once, so that
    # no plugin code can forge it (a spare's waits in the socket until the host takes the spare).
    if policy != FROM_LOAD_FRAME:
        _send(proto.CONTAINED, **contain(policy if isinstance(policy, dict) else None, control_fd))
        lib.ppw_start_watchdog(control_fd)
        _rehearse()

    reader = proto.FrameReader()
    request, segment_fd = _first_frame(sock, reader)
    if request is None:
        return 0
    if policy == FROM_LOAD_FRAME:
        _send(proto.CONTAINED, **contain(request.get("sandbox"), control_fd))
        lib.ppw_start_watchdog(control_fd)
    elif request.get("sandbox") != policy:
        _send(
            proto.ERROR,
            kind=proto.CONFINE,
            message=f"this worker was contained as {policy!r:.300} before its load frame asked for "
            f"{request.get('sandbox')!r:.300}; the host must fork a new one",
        )
        return 0
    if not _load(request, segment_fd):
        return 0
    server = threading.Thread(
        target=lib.ppw_serve, args=(request["wait"], request["spin_ns"]), name="serve", daemon=True
    )
    server.start()
    for message in _frames(sock, reader):
        if message["t"] == proto.FAULTS:
            _install_faults(message["faults"], message["append"])
            _send(proto.FAULTS_SET)
        elif message["t"] == proto.SYNC:
            _send(proto.SYNCED)
        elif message["t"] == proto.UNLOAD:
            lib.ppw_stop()
            server.join()
            lib.ppw_unload()
            _send(proto.CLOSED)
            # Nothing is left to clean up, and interpreter shutdown takes longer
            # than the rest of an unload.
            os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
