"""WorkerProxy: the host's handle on one worker process serving one bundle.

It starts the worker (segment, socket, process, handshake — acquired inside an
ExitStack and handed over only once the bundle is up), turns the worker's
load errors into the seed loader's errors, shuts it down by draining first,
and records how it died when it dies. Its monitor callbacks run on the
runtime's monitor thread and never block.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _protocol as proto
from ._channel import WAIT_MODES, Channel
from ._config import ResourceLimits, RuntimeConfig, WorkerOptions
from ._manifest import ManifestData
from ._monitor import READ_CHUNK, Monitor, Watch
from ._process import WorkerProcess, describe_exit
from ._sandbox import SandboxReport, read_report, worker_policy
from ._zygote import FrameFor, Policy
from .errors import InitFailed, InitSymbolMissing, LoaderError

DUMP_GRACE = 1.0  # seconds a timed-out worker gets to write its stack before SIGKILL
HANG_UP_GRACE_S = 1.0  # after a worker closed its control socket in its load: for its exit to show
_LOG_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: logging.DEBUG}
_logger = logging.getLogger("polyplug_isolated")


@dataclass(frozen=True)
class Death:
    """How a worker ended when nobody asked it to."""

    signal: signal.Signals | None
    exitcode: int | None
    description: str
    output_tail: str
    kill_reason: str | None


class WorkerProxy:
    """One worker process for one loaded bundle."""

    def __init__(
        self,
        manifest: ManifestData,
        config: RuntimeConfig,
        monitor: Monitor,
        on_death: Callable[[WorkerProxy], None],
        on_fault: Callable[[WorkerProxy, dict[str, Any]], None],
    ):
        self.manifest = manifest
        self._config = config
        self._monitor = monitor
        self._on_death = on_death
        self._on_fault = on_fault
        self._request_lock = threading.Lock()
        self._reply: concurrent.futures.Future[dict[str, Any]] | None = None
        self._bundle_log = logging.getLogger(f"polyplug_isolated.bundle.{manifest.name}")
        self._handshake: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._watch: Watch | None = None  # from the first moment the monitor watches the worker
        self.answerer: Any = None  # answers this worker's calls back (_callbacks.Answerer)
        self._leaving = False
        self._unload_sent = False
        self._retired_at: float | None = None  # when retire() told it to unload
        self.contracts: list[dict[str, Any]] = []
        self.death: Death | None = None
        self.options = WorkerOptions()
        # Set by start() before any caller or monitor callback can see the proxy.
        self.process: WorkerProcess = None  # type: ignore[assignment]
        self.channel: Channel = None  # type: ignore[assignment]
        self.sandbox_report: SandboxReport | None = None
        self._policy: dict[str, Any] | None = None

    # ---- start ----------------------------------------------------------

    def start(
        self,
        spawn: Callable[[FrameFor, int, Policy], WorkerProcess],
        channel: Channel,
        options: WorkerOptions,
        faults: list[dict[str, Any]],
        answerer: Any = None,
    ) -> None:
        """Starts a worker with ``spawn`` and loads the bundle in it; raises LoaderError, leaving nothing.

        ``spawn(load_frame_for, segment_fd, policy)`` starts the process and queues
        its load frame at once (``load_frame_for(env)``: env is what the worker
        must set itself), so the worker loads while the host sets up; ``policy``
        is the containment that frame asks for. ``channel`` is the worker's data
        plane; its fd goes to the worker and is closed here.
        ``faults`` (fault specs) are armed before polyplug_init runs; ``answerer``
        answers the worker's calls back (during init on this thread).
        """
        config = self._config
        self.options = options
        with contextlib.ExitStack() as undo:
            undo.callback(channel.close_fd)
            self.channel = channel
            self.answerer = answerer
            if answerer is not None:
                answerer.attach(channel.conn)
            self._policy = worker_policy(config.containment, options.sandbox, self.manifest.path, options.cwd)
            load = functools.partial(
                proto.frame,
                proto.LOAD,
                protocol=proto.PROTOCOL_VERSION,
                library=str(self.manifest.file),
                bundle_id=self.manifest.id,
                bundle_dir=os.fsencode(self.manifest.path),
                wait=WAIT_MODES[config.wait],
                spin_ns=config.spin_ns,
                cwd=options.cwd,
                limits=limits.as_dict() if (limits := _limits_of(options)) else None,
                faults=faults,
                dependencies=[dep.as_info() for dep in self.manifest.dependencies],
                sandbox=self._policy,
            )
            self.process = spawn(lambda env: load(env=env), channel.fd, self._policy)
            undo.callback(self._discard)
            undo.callback(self._watched)  # first: the monitor reaps what _discard kills
            channel.close_fd()
            try:
                reply, frames, later = self._read_handshake(config.load_timeout)
            except concurrent.futures.TimeoutError:
                raise InitFailed(
                    f"bundle {self.manifest.name!r}: loading {self.manifest.file} did not finish within "
                    f"{config.load_timeout:g} s (polyplug_init hangs?); the worker was killed. "
                    "Fix the plugin or raise Runtime(load_timeout=...)",
                    bundle=self.manifest.name,
                ) from None
            self._accept(reply)
            if self._watch is None:
                self._watch = self._monitor.watch(self, self.process, (frames, later))
            else:
                self._monitor.hand_over(self._watch, frames, later)
            undo.pop_all()

    def _watched(self) -> None:
        """Has the monitor watch the worker's output and exit from now on, if it does not yet."""
        if self._watch is None:
            self._watch = self._monitor.watch(self, self.process)

    def _read_handshake(
        self, timeout: float
    ) -> tuple[dict[str, Any], proto.FrameReader, list[dict[str, Any]]]:
        """The ready (or error) frame, the reader that found it and the frames read after it
        (for the monitor, once the contracts are known); meanwhile answers what polyplug_init
        asks the host.

        Read here, not relayed by the monitor thread: a load waits for one
        wake-up instead of two. The monitor is not woken either, unless the
        worker writes output (which the monitor reads) or exits (which it
        reaps and describes, ending this wait too): a load that succeeds
        wakes it once, at its end, for output, exit and frames at once. From
        then on the monitor may close the worker's fds, so this thread polls
        duplicates.

        Raises:
            concurrent.futures.TimeoutError: nothing conclusive within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        frames = proto.FrameReader(handshake_max=proto.MAX_READY_FRAME)
        fds = self.process.duplicate_fds()
        assert fds is not None  # nothing reaps it before the monitor watches it
        control, exit_fd = fds
        output = self.process.output.fileno()  # polled only until the monitor watches it
        if self.answerer is not None:
            self.answerer.initialising = True
        try:
            waiting = select.poll()  # not select(): a host with 1,000 workers has fds past 1,024
            waiting.register(control, select.POLLIN)
            waiting.register(exit_fd, select.POLLIN)
            waiting.register(output, select.POLLIN)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise concurrent.futures.TimeoutError
                readable = {fd for fd, _ in waiting.poll(remaining * 1000)}
                if self._watch is None and readable & {output, exit_fd}:
                    waiting.unregister(output)  # before the monitor, which may close it, has it
                    self._watched()
                data = _receive(control) if control.fileno() in readable else None
                if not data:
                    if data is None and exit_fd not in readable:
                        continue
                    if exit_fd not in readable and not _exits_within(exit_fd, HANG_UP_GRACE_S):
                        # It hung up and lives on (a dying process closes its fds just before its
                        # exit is seen): nothing more can come from it.
                        self.process.kill("it closed its control socket while loading")
                        tail = self.process.tail()
                        self._settle(
                            {"t": "exited", "description": "closed its control socket", "tail": tail}
                        )
                    # Gone: its exit, once the monitor has reaped it, says how.
                    self._watched()
                    return self._handshake.result(max(0.0, deadline - time.monotonic())), frames, []
                try:
                    messages = frames.feed(data)
                except proto.FrameError as exc:
                    self._settle({"t": "malformed", "reason": f"malformed control frame: {exc}"})
                    return self._handshake.result(), frames, []
                for index, message in enumerate(messages):
                    if message["t"] == proto.ERROR:  # its own error explains its exit best
                        self._settle(message)
                        return message, frames, []
                    if message["t"] == proto.READY:
                        self._settle(message)
                        # A ready worker that has exited meanwhile (the monitor was first) failed its load.
                        return self._handshake.result(), frames, messages[index + 1 :]
                    if message["t"] == proto.CB:
                        self._answer_init_call(message)
                    else:
                        self.on_frame(message)
        finally:
            control.close()
            os.close(exit_fd)
            if self.answerer is not None:
                self.answerer.initialising = False

    def _answer_init_call(self, call: dict[str, Any]) -> None:
        data = call.get("data")
        answer = self.answerer.answer(data) if self.answerer and isinstance(data, bytes) else b""
        self.process.send(proto.frame(proto.CB_REPLY, data=answer))

    def _settle(self, outcome: dict[str, Any]) -> bool:
        """Records how the handshake ended, unless something else already did (its exit, say)."""
        try:
            self._handshake.set_result(outcome)
        except concurrent.futures.InvalidStateError:
            return False
        return True

    def _accept(self, reply: dict[str, Any]) -> None:
        name, library = self.manifest.name, self.manifest.file
        kind = reply.get("t")
        if kind == proto.READY:
            if self._policy is not None and self.sandbox_report is None:
                # Fail closed: a worker program that skipped contain() would run the plugin bare.
                raise InitFailed(
                    f"bundle {name!r}: its worker loaded {library} without reporting its containment; "
                    "a worker must call polyplug_isolated.worker._contain.contain() before dlopen "
                    "(or run with Runtime(containment=False))",
                    bundle=name,
                )
            self.contracts = _checked_contracts(reply, self.manifest)
            return
        if kind == "malformed":
            raise InitFailed(
                f"bundle {name!r}: loading {library} failed: the worker sent a {reply['reason']} "
                f"(registrations, every contract name included, must fit {proto.MAX_READY_FRAME >> 20} MiB); "
                "the worker was killed",
                bundle=name,
            )
        if kind == "exited":
            raise InitFailed(
                f"bundle {name!r}: the worker {reply['description']} while loading {library} "
                f"(a crash in polyplug_init?); last output:\n{reply['tail'] or '(none)'}",
                bundle=name,
            )
        if kind != proto.ERROR:
            raise InitFailed(
                f"bundle {name!r}: the worker broke the load handshake: {reply!r:.300}", bundle=name
            )
        raise _load_error(reply, self.manifest)

    # ---- calls ------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The process the host started, signals and reaps. Under containment it
        stands for the worker, which runs inside the namespaces (its pid is in
        ``sandbox_report``): its signals reach the worker, its exit status is
        the worker's."""
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and not self.process.exited.is_set()

    def kill(self, reason: str) -> None:
        """Kills the worker now (a protocol breach); the monitor reports the death."""
        if self.process:
            self.process.kill(reason)

    def kill_hung(self, reason: str) -> None:
        """Kills a worker stuck in a call, after it wrote that call's native stack to its output.

        The dump takes milliseconds: a worker that has not died within
        DUMP_GRACE ignores the request (a plugin may ignore SIGUSR2), and
        waiting on for close_grace would only stretch the caller's timeout.
        """
        if self.process:
            self.process.dump_and_kill(reason, grace=min(self._config.close_grace, DUMP_GRACE))

    def request(self, frame: bytes, timeout: float) -> bool:
        """Sends a control request and waits for its answer; False if the worker is gone first."""
        with self._request_lock:
            self._reply = concurrent.futures.Future()
            if not self.process.send(frame):
                return False
            try:
                return bool(self._reply.result(timeout)["t"] != "exited")
            except concurrent.futures.TimeoutError:
                self.kill(f"did not answer a control request within {timeout:g} s")
                return False

    # ---- shutdown -----------------------------------------------------------

    def leave_if_idle(self, send: bool = True) -> bool:
        """Tells a worker with no call in flight to unload now (with ``send``), without waiting
        for it; False when calls are in flight (shutdown() then drains them).

        shutdown() then only waits. close() tells every worker before it waits for any, and
        passes ``send=False``: the monitor sends them all (send_unload), so the thread that
        reaps the workers makes every system call of theirs, instead of passing the GIL back
        and forth with close() at each one (1,000 workers: about 1 s of hand-overs).
        """
        assert self.channel is not None and self.process is not None
        if not self.channel.wait_drained(0):
            return False
        self._leaving = True  # before the exit it causes can be taken for a crash
        self._unload_sent = self.process.send(proto.frame(proto.UNLOAD)) if send else True
        return True

    def retire(self) -> bool:
        """Tells a worker with no call in flight to unload, and returns at once (a reload's old worker).

        False when calls are still in flight: then shutdown() drains them. The
        monitor reaps the worker when it exits; await_exit() waits for that.
        The monitor thread sends the unload too: the old worker it wakes (which
        unloads, exits and tears its memory down) then takes neither the
        reloading thread's time nor its CPU.
        """
        assert self.channel is not None
        self.channel.start_draining()
        self._retired_at = time.monotonic()
        if not self.channel.wait_drained(0):
            return False
        self._leaving = True  # before the exit it causes can be taken for a crash
        self._unload_sent = True  # at once, by the monitor; a worker already gone needs none
        self._monitor.defer(self.send_unload)
        return True

    def send_unload(self) -> None:
        """Tells the worker to unload (on the monitor thread, for retire() and close())."""
        self.process.send(proto.frame(proto.UNLOAD))

    def end_if_overdue(self) -> None:
        """Kills a retired worker still running past shutdown()'s two grace periods."""
        overdue = 2 * self._config.close_grace
        if self._retired_at is not None and time.monotonic() - self._retired_at >= overdue:
            self.kill(f"did not exit within {overdue:g} s of being told to unload after a reload")

    def shutdown(self, drain_timeout: float) -> bool:
        """Drains calls in flight, then has the worker dlclose and exit.

        Returns False when the drain timed out and the worker had to be killed.
        """
        assert self.channel is not None and self.process is not None
        if self._leaving and self._unload_sent:  # told while idle: only its exit is left
            self.await_exit()
            return True
        self.channel.start_draining()
        drained = self.channel.wait_drained(drain_timeout)
        self._leaving = True
        if not drained:
            _logger.warning(
                "bundle %r: calls still in flight after drain_timeout=%gs; killing the worker",
                self.manifest.name,
                drain_timeout,
            )
            self.process.kill(f"killed after the {drain_timeout:g} s drain timeout")
        elif not self._unload_sent:
            self.process.send(proto.frame(proto.UNLOAD))
        self.await_exit()
        return drained

    def await_exit(self) -> None:
        """Waits for the exit; escalates to SIGTERM, then SIGKILL, each after the grace period."""
        process, grace = self.process, self._config.close_grace
        for escalation in (signal.SIGTERM, signal.SIGKILL):
            if process.exited.wait(grace):
                return
            _logger.warning(
                "bundle %r: worker %d did not exit within %gs; sending %s",
                self.manifest.name,
                process.pid,
                grace,
                escalation.name,
            )
            process.signal(escalation)
        process.exited.wait()

    def _discard(self) -> None:
        """Undo for a failed start: the worker must be gone before the error is raised."""
        self._leaving = True
        self.process.kill("its load failed")
        self.process.exited.wait()

    # ---- monitor callbacks (monitor thread) -------------------------------

    def on_frame(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == proto.LOG:
            self._log_record(message)
        elif kind == proto.CONTAINED and self.sandbox_report is None and not self._handshake.done():
            # Sent before dlopen: only the first one is the worker's own.
            if self._policy is None:
                return
            pid = message.get("pid")
            pid = pid if isinstance(pid, int) and 0 < pid < 1 << 31 else self.process.pid
            self.sandbox_report = read_report(self.manifest.name, pid, message, self._policy)
        elif kind == proto.CLOSED:
            pass  # the worker dlclosed; its exit (which shutdown waits for) follows
        elif kind == proto.FAULT:
            self._on_fault(self, message)
        elif kind in (proto.FAULTS_SET, proto.SYNCED) and self._reply is not None and not self._reply.done():
            self._reply.set_result(message)
        else:
            self.kill(f"sent an unexpected {kind!r} control frame")

    def on_output(self, line: str) -> None:
        self._bundle_log.info("worker output: %s", line)

    def on_control_lost(self, reason: str, malformed: bool = False) -> None:
        # A worker that died closes its socket too: only a live one that hung
        # up (or sent garbage) is killed for it, and only then is it the reason.
        if not self._leaving and self.process.alive():
            self.kill(reason)

    def on_exit(self, returncode: int) -> None:
        sig, code, description = describe_exit(returncode)
        process = self.process
        if self.answerer is not None:
            self.answerer.close()
        if self._settle({"t": "exited", "description": description, "tail": process.tail()}):
            return  # the load reading the handshake raises it
        if self._reply is not None and not self._reply.done():
            self._reply.set_result({"t": "exited"})
        # A kill only explains a death it caused: a worker that segfaulted and
        # was then SIGKILLed for hanging up its socket died of the SIGSEGV.
        killed_by_us = sig == signal.SIGKILL and process.kill_reason is not None
        description += _limit_note(_limits_of(self.options), sig, killed_by_us)
        self.death = Death(
            sig, code, description, process.tail(), process.kill_reason if killed_by_us else None
        )
        if not self._leaving:
            self._on_death(self)  # marks the bundle, then wakes the callers (mark_dead), then tells
            return
        self.channel.mark_dead()  # wakes any caller still waiting on this worker
        if returncode != 0 and not killed_by_us:
            _logger.warning(
                "bundle %r: worker %d %s while unloading", self.manifest.name, process.pid, description
            )

    def abandon(self, reason: str) -> None:
        """Monitor thread: handling this worker's news failed, so its state cannot be trusted.

        The worker is killed (its exit then takes the usual path); if its exit is
        what could not be handled, every caller waiting on it is woken here.
        """
        if self.process is None:
            return
        self.kill(reason)
        if not self.process.exited.is_set():
            return
        exited = {"t": "exited", "description": f"was lost ({reason})", "tail": self.process.tail()}
        for future in (self._handshake, self._reply):
            if future is not None and not future.done():
                future.set_result(exited)
        if self.channel is not None:  # None until start() made it
            self.channel.mark_dead()

    def _log_record(self, message: dict[str, Any]) -> None:
        level = message.get("level")
        target = _text(message.get("target"))
        text = _text(message.get("message"))
        severity = _LOG_LEVELS.get(level, logging.ERROR) if isinstance(level, int) else logging.ERROR
        self._bundle_log.log(severity, "[%s] %s", target, text)


def _exits_within(exit_fd: int, seconds: float) -> bool:
    """Whether the process behind ``exit_fd`` (a pidfd) has exited, or does within ``seconds``."""
    waiting = select.poll()
    waiting.register(exit_fd, select.POLLIN)
    return bool(waiting.poll(seconds * 1000))


def _receive(sock: socket.socket) -> bytes | None:
    """What the socket holds (b"": the peer hung up, or it failed), or None if nothing yet.

    MSG_DONTWAIT rather than a non-blocking socket: the flag would be the
    shared file's, and the monitor's copy's too."""
    try:
        return sock.recv(READ_CHUNK, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _limits_of(options: WorkerOptions) -> ResourceLimits | None:
    """The worker's resource limits: given to load_bundle, or else in its Sandbox."""
    return options.limits or (options.sandbox.limits if options.sandbox else None)


def _limit_note(limits: ResourceLimits | None, sig: signal.Signals | None, killed_by_us: bool) -> str:
    """Names the resource limit that most likely ended the worker, if one did."""
    if limits is None or sig is None:
        return ""
    if limits.cpu_seconds and (sig == signal.SIGXCPU or (sig == signal.SIGKILL and not killed_by_us)):
        return f": it exceeded its CPU time limit (limits.cpu_seconds={limits.cpu_seconds})"
    if limits.address_space and sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS):
        return (
            f" under limits.address_space={limits.address_space} bytes: an allocation that failed "
            "is the likely cause"
        )
    return ""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _load_error(reply: dict[str, Any], manifest: ManifestData) -> LoaderError:
    name, library = manifest.name, manifest.file
    kind, message = reply.get("kind"), _text(reply.get("message"))
    if kind == proto.DLOPEN:
        return InitFailed(
            f"bundle {name!r}: failed to load plugin library at {library}: {message}", bundle=name
        )
    if kind == proto.NO_ABI_VERSION:
        return InitFailed(
            f"bundle {name!r}: missing symbol 'polyplug_abi_version' in bundle '{library}': "
            "a polyplug v1 bundle must export `uint32_t polyplug_abi_version(void)` returning 1",
            bundle=name,
        )
    if kind == proto.ABI_MISMATCH:
        return InitFailed(
            f"bundle {name!r}: ABI version mismatch in {library}: expected=1, found={reply.get('found')}; "
            "rebuild the bundle against polyplug ABI v1",
            bundle=name,
        )
    if kind == proto.NO_INIT:
        return InitSymbolMissing(
            f"bundle {name!r}: init symbol missing in {library}: expected an exported "
            "`AbiError polyplug_init(const HostApi*, const BundleInitContext*)`",
            bundle=name,
        )
    if kind == proto.INIT_ERROR:
        why = message or f"init returned error code {reply.get('code')}"
        return InitFailed(f"bundle {name!r}: polyplug_init failed: {why}", bundle=name)
    return InitFailed(f"bundle {name!r}: the worker could not start: {message or kind}", bundle=name)


def _checked_contracts(reply: dict[str, Any], manifest: ManifestData) -> list[dict[str, Any]]:
    """The ready frame's contracts, shape-checked (the worker is untrusted) and
    held against the manifest's [function_count]."""
    contracts = reply.get("contracts")
    if not isinstance(contracts, list) or not all(_well_formed(c, i) for i, c in enumerate(contracts)):
        raise InitFailed(
            f"bundle {manifest.name!r}: the worker sent a malformed ready frame", bundle=manifest.name
        )
    for contract in contracts:
        key = f"{contract['name'].split('@', 1)[0]}@{contract['version'][0]}"
        expected = manifest.function_count.get(key)
        if expected is not None and expected != contract["function_count"]:
            raise InitFailed(
                f"bundle {manifest.name!r}: function count mismatch for contract `{key}`: "
                f"expected={expected} (manifest.toml [function_count]), found={contract['function_count']} "
                "(registered by the library); fix the manifest or rebuild the library",
                bundle=manifest.name,
            )
    return contracts


def _well_formed(contract: Any, index: int) -> bool:
    def u32(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32

    return (
        isinstance(contract, dict)
        and contract.get("index") == index
        and isinstance(contract.get("contract_id"), int)
        and 0 <= contract["contract_id"] < 1 << 64
        and isinstance(contract.get("name"), str)
        and isinstance(contract.get("plugin"), str)
        and u32(contract.get("function_count"))
        and all(
            isinstance(contract.get(key), list) and len(contract[key]) == 3 and all(map(u32, contract[key]))
            for key in ("version", "plugin_version")
        )
    )
