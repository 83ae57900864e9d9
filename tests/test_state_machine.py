"""A Hypothesis state machine over the whole life of bundles, against a model of what must happen.

Rules: load (a new bundle, or a new version of a loaded one), call, call_many,
reload, unload, inject a fault, clear faults, crash (a crashing plugin
function, or a SIGKILL from outside), restart (the supervisor's), calls
through handles and contracts of unloaded bundles, and races: two threads
loading one bundle, an unload racing a reload, a close racing a load (in a
runtime of its own), a fork() child using the runtime. The model predicts every
answer and every error: it runs the worker's fault plan itself (plan order,
per-fault counters, triggers, budgets, SKIP stops the plan) and the
supervisor's restart budget. After every step: the runtime's bundles and
states match the model, the registry finds exactly the loaded contracts
under their first handles, the live workers are exactly this process's
children, no shared-memory segment it holds still has a name, and open fds are the runtime's plus a
fixed number per live worker. Each example closes its runtime and checks
that nothing at all was left.

A crashed bundle whose restart is scheduled stays "pending" in the model
until the restart rule (or any other rule that needs the bundle) has seen its
RESTARTED event; a call made meanwhile waits for the restart and must get the
right answer from the fresh worker.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import struct
import threading
from collections import deque
from dataclasses import dataclass, field

import psutil
from conftest import ADD, CRASH
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from polyplug_isolated import (
    BundleEventKind,
    BundleState,
    BundleUnavailable,
    CallTimeout,
    Fault,
    FaultKind,
    LifecycleConflict,
    LoaderError,
    PluginCallError,
    RestartPolicy,
    Runtime,
    StaleHandle,
    WorkerCrashed,
    guest_contract_id,
)
from polyplug_isolated._faults import Trigger
from polyplug_isolated._fixtures import fixture_path
from polyplug_isolated.pytest_plugin import ResourceSnapshot

PROBE = guest_contract_id("test.probe", 1)
U32 = 0xFFFFFFFF
HANG_TIMEOUT = 0.3  # the timeout of a call the model knows will hang
SAFETY_TIMEOUT = 20.0  # every other call: a wrong model fails the test instead of hanging it
EVENT_TIMEOUT = 20.0


@dataclass(frozen=True)
class Fn:
    """A plugin function the machine calls: index, u32 parameters, and what it answers."""

    index: int
    arity: int
    answer: object  # (args, generation) -> ("ok", value) | ("error", code, message)


def _add(args, _generation):
    return ("ok", (args[0] + args[1]) & U32)


def _ping(args, _generation):
    return ("ok", (args[0] + 1) & U32)


def _fail(args, _generation):
    code = args[0]
    return ("ok", 0) if code == 0 else ("error", code, f"crasher: failing with code {code} on request")


def _generation(_args, generation):
    return ("ok", generation)


# bundle name -> (fixture versions by generation, contract id, contract name, functions)
BUNDLES = {
    "adder": ({1: "adder"}, ADD, "test.add", [Fn(0, 2, _add), Fn(1, 2, _add)]),
    "crasher": ({1: "crasher"}, CRASH, "test.crash", [Fn(4, 1, _ping), Fn(3, 1, _fail)]),
    "probe": ({1: "probe_v1", 2: "probe_v2"}, PROBE, "test.probe", [Fn(0, 0, _generation), Fn(1, 2, _add)]),
}
CRASHING = {0: ("crash", signal.SIGSEGV), 1: ("crash", signal.SIGABRT), 2: ("exit", 3)}  # crasher fns
LOADABLE = [(name, generation) for name, spec in BUNDLES.items() for generation in spec[0]]

faults = st.one_of(
    st.builds(Fault.error, code=st.integers(1, 1000), message=st.sampled_from(["injected", "nope", ""])),
    st.just(Fault.corrupt()),
    st.just(Fault.delay(ms=1)),
    st.builds(Fault.crash, st.sampled_from([signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL])),
    st.builds(Fault.exit, st.integers(0, 9)),
    st.just(Fault.hang()),
)


@st.composite
def fault_plans(draw, contract: str):
    """A fault with a trigger the model runs exactly: always, n-th, every n-th; maybe a budget, a target."""
    fault = draw(faults)
    trigger = draw(st.sampled_from(["always", "nth", "every"]))
    if trigger == "nth":
        fault = fault.on_call(draw(st.integers(1, 4)))
    elif trigger == "every":
        fault = fault.every(draw(st.integers(1, 3)))
    if draw(st.booleans()):
        fault = fault.first(draw(st.integers(1, 3)))
    target = draw(st.sampled_from(["any", "function", "contract", "elsewhere"]))
    if target == "function":
        fault = fault.only(function=draw(st.integers(0, 4)))
    elif target == "contract":
        fault = fault.only(contract=contract)
    elif target == "elsewhere":
        fault = fault.only(contract="test.nothing")  # a name no bundle registered: never matches
    return fault


@dataclass
class Armed:
    """A fault armed in a worker, with the worker's counters (faults.c: seen, fired)."""

    fault: Fault
    seen: int = 0
    fired: int = 0

    def fires(self, contract: str, function: int) -> bool:
        f = self.fault
        if (f.contract and f.contract != contract) or (f.function >= 0 and f.function != function):
            return False
        self.seen += 1
        if f.times and self.fired >= f.times:
            return False
        if f.trigger is Trigger.NTH:
            hit = self.seen == f.n
        elif f.trigger is Trigger.EVERY:
            hit = self.seen % f.n == 0
        else:
            hit = f.trigger is Trigger.ALWAYS
        self.fired += hit
        return hit


@dataclass
class Model:
    """What the machine knows about one loaded bundle."""

    bundle: object  # the Bundle
    generation: int
    handle: object
    contract: object  # a GuestContract resolved at load
    state: str = "ready"  # ready | crashed | pending (a restart is scheduled)
    armed: list[Armed] = field(default_factory=list)
    restarts: int = 0  # bundle.restarts
    budget_used: int = 0  # restarts the supervisor counted since the last load/reload

    def outcome(self, contract: str, fn: Fn, args: tuple[int, ...], crashing: int | None = None):
        """What the worker does with one call (one item of a batch), running the fault plan first."""
        effect = "run"
        for armed in self.armed:
            if not armed.fires(contract, crashing if crashing is not None else fn.index):
                continue
            f = armed.fault
            if f.kind is FaultKind.CRASH:
                return ("crash", signal.Signals(f.arg))
            if f.kind is FaultKind.EXIT:
                return ("exit", f.arg)
            if f.kind is FaultKind.HANG:
                return ("hang",)
            if f.kind is FaultKind.CORRUPT:
                effect = "corrupt"
            if f.kind is FaultKind.ERROR:
                return ("error", f.arg, f.message)  # SKIP: the plan stops here
        if crashing is not None:
            return CRASHING[crashing]
        answer = fn.answer(args, self.generation)
        if answer[0] == "ok" and effect == "corrupt":
            return ("ok", answer[1] ^ U32)
        return answer


def named_shm_held() -> list[str]:
    """/dev/shm objects this process has open or mapped whose name still exists.

    Every segment must be unlinked as soon as it is created. Asked of this
    process rather than of /dev/shm, which other processes on the machine share.
    """
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd listdir itself used, already closed
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
    with open("/proc/self/maps") as maps:
        fields = [line.split(maxsplit=5) for line in maps]
    paths += [f[5].rstrip("\n") for f in fields if len(f) == 6]
    return sorted({p for p in paths if p.startswith("/dev/shm/") and not p.endswith(" (deleted)")})


def pack(fn: Fn, args: tuple[int, ...]) -> bytes:
    return struct.pack(f"<{fn.arity}I", *args)


def unpack(out: bytes) -> int:
    return struct.unpack("<I", out)[0]


class Lifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.before = ResourceSnapshot.take()
        self.events: queue.Queue = queue.Queue()
        self.seen: dict[str, deque] = {name: deque() for name in BUNDLES}
        self.models: dict[str, Model] = {}
        self.gone: list[tuple[object, object]] = []  # (handle, contract) of unloaded bundles
        self.rt: Runtime | None = None
        self.max_restarts = 0
        self.fd_base = 0
        self.fds_per_worker: int | None = None

    @initialize(max_restarts=st.sampled_from([0, 2]))
    def start(self, max_restarts):
        self.max_restarts = max_restarts
        policy = RestartPolicy(max_restarts=max_restarts, backoff=0.01, jitter=0.0, window=600.0)
        self.rt = Runtime(  # no spare: the model counts the workers' processes and fds
            restart=policy,
            on_event=self.events.put,
            call_timeout=SAFETY_TIMEOUT,
            load_timeout=10.0,
            spare_worker=False,
        )
        self.rt._zygote.start()  # the zygote (a child with fds of its own) is there before fd_base
        self.fd_base = len(os.listdir("/proc/self/fd"))

    def teardown(self):
        if self.rt is not None:
            self.rt.close()
            self._collect_events()
            for name, seen in self.seen.items():
                model = self.models.get(name)
                leftover = [e.kind for e in seen]
                allowed = [BundleEventKind.RESTARTED] if model and model.state == "pending" else []
                assert leftover in ([], allowed), f"{name}: unexpected events {leftover}"
        leaks = ResourceSnapshot.take().leaks_since(self.before)
        assert not leaks, leaks

    # ---- helpers ------------------------------------------------------------------

    def _collect_events(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self.seen[event.bundle_name].append(event)

    def _expect(self, name: str, *kinds: BundleEventKind):
        """The next event of bundle ``name``, which must be one of ``kinds`` (per-bundle order is exact)."""
        while not self.seen[name]:
            event = self.events.get(timeout=EVENT_TIMEOUT)
            self.seen[event.bundle_name].append(event)
        event = self.seen[name].popleft()
        assert event.kind in kinds, f"{name}: expected {kinds}, got {event}"
        return event

    def _pick(self, data, states=("ready", "crashed", "pending")) -> str | None:
        names = sorted(name for name, model in self.models.items() if model.state in states)
        return data.draw(st.sampled_from(names)) if names else None

    def _settle(self, name: str) -> Model:
        """Waits out a scheduled restart, so that the rule that follows is deterministic."""
        model = self.models[name]
        if model.state == "pending":
            self._restarted(name)
        return model

    def _restarted(self, name: str) -> None:
        model = self.models[name]
        event = self._expect(name, BundleEventKind.RESTARTED)
        model.restarts += 1
        assert event.restarts == model.restarts == model.bundle.restarts
        assert model.bundle.state is BundleState.READY
        model.state, model.armed = "ready", []

    def _crashed(self, name: str, how: str) -> None:
        """The bundle's worker died: its CRASHED event, then what the supervisor decides."""
        model = self.models[name]
        event = self._expect(name, BundleEventKind.CRASHED)
        assert how in event.detail, (how, event.detail)
        model.armed = []
        if self.max_restarts == 0:
            model.state = "crashed"
        elif model.budget_used >= self.max_restarts:
            self._expect(name, BundleEventKind.GAVE_UP)
            model.state = "crashed"
        else:
            self._expect(name, BundleEventKind.RESTARTING)
            model.budget_used += 1
            model.state = "pending"

    def _check(self, name: str, expected, run) -> None:
        """Runs a call (or batch) and checks it against the model's expected outcome."""
        try:
            got = run()
        except PluginCallError as exc:
            assert expected[0] == "error", (expected, exc)
            assert (exc.code, exc.message, exc.bundle) == (expected[1], expected[2], name)
            assert exc.index == (expected[3] if len(expected) > 3 else None)
            return
        except WorkerCrashed as exc:
            assert expected[0] in ("crash", "exit"), (expected, exc)
            if expected[0] == "crash":
                assert (exc.signal, exc.exitcode) == (expected[1], None)
                self._crashed(name, expected[1].name)
            else:
                assert (exc.signal, exc.exitcode) == (None, expected[1])
                self._crashed(name, f"exited with status {expected[1]}")
            return
        except CallTimeout:
            assert expected[0] == "hang", expected
            self._crashed(name, "timed out")
            return
        assert expected[0] == "ok", (expected, got)
        assert got == expected[1]

    # ---- rules ---------------------------------------------------------------------

    @rule(which=st.sampled_from(LOADABLE))
    def load(self, which):
        name, generation = which
        versions, contract_id, _, _ = BUNDLES[name]
        model = self.models.get(name)
        if model is not None:
            self._settle(name)
        bundle = self.rt.load_bundle(fixture_path(versions[generation]))
        handle = self.rt.find_guest_contract(contract_id, 1)
        if model is None:  # a new bundle: a new handle; handles of an earlier load stay stale
            for stale, _ in self.gone:
                if stale.index == handle.index:
                    assert stale.generation != handle.generation
            contract = self.rt.resolve_guest_contract(handle)
            self.models[name] = Model(bundle, generation, handle, contract)
        else:  # loading a loaded bundle is a reload: same Bundle, same handle, a fresh worker
            assert bundle is model.bundle and handle == model.handle
            model.generation, model.state, model.armed, model.budget_used = generation, "ready", [], 0

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def reload(self, data):
        name = self._pick(data)
        model = self._settle(name)
        generation = data.draw(st.sampled_from(sorted(BUNDLES[name][0])))
        assert self.rt.reload_bundle(fixture_path(BUNDLES[name][0][generation])) is model.bundle
        model.generation, model.state, model.armed, model.budget_used = generation, "ready", [], 0

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def unload(self, data):
        name = self._pick(data)
        model = self._settle(name)
        self.rt.unload_bundle(model.bundle.id)
        assert model.bundle.state is BundleState.UNLOADED
        self.gone.append((model.handle, model.contract))
        del self.models[name]

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def call(self, data):
        name = self._pick(data)
        model = self.models[name]
        _, _, contract_name, functions = BUNDLES[name]
        fn = data.draw(st.sampled_from(functions))
        args = tuple(data.draw(st.integers(0, U32)) for _ in range(fn.arity))
        if model.state == "pending":  # the call waits for the restart and runs on the fresh worker
            expected = fn.answer(args, model.generation)
            self._check(name, expected, lambda: unpack(model.contract.call(fn.index, pack(fn, args), 4)))
            return
        if model.state == "crashed":
            try:
                model.contract.call(fn.index, pack(fn, args), 4)
            except BundleUnavailable as exc:
                assert "is CRASHED" in str(exc)
                return
            raise AssertionError("a call to a crashed bundle answered")
        expected = model.outcome(contract_name, fn, args)
        # The runtime's call_timeout (SAFETY_TIMEOUT) unless the model knows the call hangs.
        timeout = {"timeout": HANG_TIMEOUT} if expected[0] == "hang" else {}
        self._check(
            name, expected, lambda: unpack(model.contract.call(fn.index, pack(fn, args), 4, **timeout))
        )

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def call_many(self, data):
        name = self._pick(data)
        model = self._settle(name)
        _, _, contract_name, functions = BUNDLES[name]
        fn = data.draw(st.sampled_from([fn for fn in functions if fn.arity]))
        items = data.draw(st.lists(st.tuples(*[st.integers(0, U32)] * fn.arity), min_size=1, max_size=6))
        if model.state == "crashed":
            try:
                model.contract.call_many(fn.index, [pack(fn, args) for args in items], 4)
            except BundleUnavailable:
                return
            raise AssertionError("a batch on a crashed bundle answered")
        values = []
        expected = ("ok", values)
        for index, args in enumerate(items):
            outcome = model.outcome(contract_name, fn, args)
            if outcome[0] != "ok":
                expected = (*outcome, index) if outcome[0] == "error" else outcome
                break
            values.append(outcome[1])
        timeout = HANG_TIMEOUT if expected[0] == "hang" else SAFETY_TIMEOUT

        def run():
            outs = model.contract.call_many(fn.index, [pack(fn, args) for args in items], 4, timeout=timeout)
            return [unpack(out) for out in outs]

        self._check(name, expected, run)

    @precondition(lambda self: any(m.state == "ready" and not m.armed for m in self.models.values()))
    @rule(data=st.data(), threads=st.integers(2, 4))
    def calls_from_threads(self, data, threads):
        """Several host threads call one bundle at once (each on its own worker thread)."""
        name = data.draw(
            st.sampled_from(sorted(n for n, m in self.models.items() if m.state == "ready" and not m.armed))
        )
        model = self.models[name]
        _, _, contract_name, functions = BUNDLES[name]
        calls = st.sampled_from(functions).flatmap(
            lambda fn: st.tuples(st.just(fn), st.tuples(*[st.integers(0, U32)] * fn.arity))
        )
        plans = [data.draw(st.lists(calls, min_size=1, max_size=5)) for _ in range(threads)]
        expected = [[model.outcome(contract_name, fn, args) for fn, args in plan] for plan in plans]
        got: list[list] = [[] for _ in range(threads)]

        def run(k: int) -> None:
            for fn, args in plans[k]:
                try:
                    got[k].append(("ok", unpack(model.contract.call(fn.index, pack(fn, args), 4))))
                except PluginCallError as exc:
                    got[k].append(("error", exc.code, exc.message))

        pool = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(SAFETY_TIMEOUT)
        assert got == expected

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def inject(self, data):
        name = self._pick(data)
        model = self._settle(name)
        fault = data.draw(fault_plans(BUNDLES[name][2]))
        if model.state == "crashed":
            try:
                model.bundle.inject(fault)
            except BundleUnavailable as exc:
                assert "no worker to inject faults into" in str(exc)
                return
            raise AssertionError("faults were injected into a crashed bundle")
        model.bundle.inject(fault)
        model.armed.append(Armed(fault))

    @precondition(lambda self: any(m.state == "ready" and m.armed for m in self.models.values()))
    @rule(data=st.data())
    def clear_faults(self, data):
        name = data.draw(st.sampled_from(sorted(n for n, m in self.models.items() if m.state == "ready")))
        self.models[name].bundle.clear_faults()
        self.models[name].armed = []

    @precondition(lambda self: any(m.state == "ready" for m in self.models.values()))
    @rule(data=st.data())
    def crash(self, data):
        """A crashing plugin function (crasher), or the worker killed from outside (anyone)."""
        name = self._pick(data, states=("ready",))
        model = self.models[name]
        if name == "crasher" and data.draw(st.booleans()):
            index = data.draw(st.sampled_from(sorted(CRASHING)))
            expected = model.outcome(BUNDLES[name][2], None, (), crashing=index)
            timeout = HANG_TIMEOUT if expected[0] == "hang" else SAFETY_TIMEOUT
            self._check(name, expected, lambda: model.contract.call(index, b"", 0, timeout=timeout))
            return
        os.kill(model.bundle.pid, signal.SIGKILL)
        self._crashed(name, "SIGKILL")

    @precondition(lambda self: any(m.state == "pending" for m in self.models.values()))
    @rule(data=st.data())
    def restart(self, data):
        name = self._pick(data, states=("pending",))
        handle = self.models[name].handle
        self._restarted(name)
        assert self.rt.find_guest_contract(BUNDLES[name][1], 1) == handle

    @precondition(lambda self: self.gone)
    @rule(data=st.data())
    def use_unloaded(self, data):
        handle, contract = data.draw(st.sampled_from(self.gone))
        try:
            self.rt.resolve_guest_contract(handle)
        except StaleHandle:
            pass
        else:
            raise AssertionError(f"the handle {handle} of an unloaded bundle still resolves")
        try:
            contract.call(contract.function_count - 1, struct.pack("<II", 1, 2), 4)
        except BundleUnavailable as exc:
            assert "is UNLOADED" in str(exc)
        else:
            raise AssertionError("a contract of an unloaded bundle answered")

    # ---- racing rules: lifecycle calls from several threads, close during a load, fork() ----------

    @rule(which=st.sampled_from(LOADABLE))
    def race_loads(self, which):
        """Two threads load one bundle at once: one worker; the loser of an overlap is told why."""
        name, generation = which
        if name in self.models:
            self._settle(name)
        path = fixture_path(BUNDLES[name][0][generation])
        outcomes = race(lambda: self.rt.load_bundle(path), lambda: self.rt.load_bundle(path))
        bundles = [o for o in outcomes if not isinstance(o, BaseException)]
        assert bundles and all(b is bundles[0] for b in bundles), outcomes
        assert all(isinstance(o, LifecycleConflict) for o in outcomes if isinstance(o, BaseException)), (
            outcomes
        )
        model = self.models.get(name)
        if model is None:
            handle = self.rt.find_guest_contract(BUNDLES[name][1], 1)
            self.models[name] = Model(bundles[0], generation, handle, self.rt.resolve_guest_contract(handle))
        else:
            assert bundles[0] is model.bundle
            model.generation, model.state, model.armed, model.budget_used = generation, "ready", [], 0

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def unload_during_reload(self, data):
        """A reload and an unload of one bundle at once: whichever ran last decides, nothing is orphaned.

        Either may win, so the rule ends by unloading what is left: the model
        (which Hypothesis replays) must not depend on the winner.
        """
        name = self._pick(data)
        model = self._settle(name)
        generation = data.draw(st.sampled_from(sorted(BUNDLES[name][0])))
        path = fixture_path(BUNDLES[name][0][generation])
        reloaded, unloaded = race(
            lambda: self.rt.reload_bundle(path), lambda: self.rt.unload_bundle(model.bundle.id)
        )
        for outcome in (reloaded, unloaded):
            assert not isinstance(outcome, BaseException) or isinstance(outcome, LifecycleConflict), outcome
        present = {b.name: b for b in self.rt.bundles}.get(name)
        if present is model.bundle:  # the reload won (or came last): same bundle, a worker of its own
            assert reloaded is model.bundle and isinstance(unloaded, LifecycleConflict)
            assert present.state is BundleState.READY and present.pid is not None
        elif present is not None:  # the unload came first; the reload then loaded it afresh
            assert reloaded is present and unloaded is None and model.bundle.state is BundleState.UNLOADED
        else:  # the unload won (or came last)
            assert unloaded is None and model.bundle.state is BundleState.UNLOADED
        if present is not None:
            self.rt.unload_bundle(present.id)
        self.gone.append((model.handle, model.contract))
        del self.models[name]

    @rule(which=st.sampled_from(LOADABLE))
    def close_during_load(self, which):
        """A second runtime closed while it loads: the load returns or says the runtime closed."""
        name, generation = which
        other = Runtime(load_timeout=10.0)
        loaded, closed = race(
            lambda: other.load_bundle(fixture_path(BUNDLES[name][0][generation])), other.close
        )
        assert closed is None
        if isinstance(loaded, BaseException):
            assert isinstance(loaded, LoaderError) and "closed" in str(loaded), loaded
        else:
            assert loaded.state is BundleState.UNLOADED
        assert other.bundles == [] and other.live_worker_count() == 0

    @precondition(lambda self: any(m.state == "ready" for m in self.models.values()))
    @rule(data=st.data())
    def fork(self, data):
        """A fork() child can neither call nor close the parent's bundles; the parent sees nothing."""
        name = self._pick(data, states=("ready",))
        model = self.models[name]
        fn = BUNDLES[name][3][0]
        called = in_fork_child(lambda: model.contract.call(fn.index, pack(fn, (1,) * fn.arity), 4))
        assert called.startswith("BundleUnavailable") and "fork()" in called, called
        closed = in_fork_child(lambda: (self.rt.close(), "closed")[1])
        assert closed == "closed", closed
        assert model.bundle.state is BundleState.READY

    # ---- invariants -------------------------------------------------------------------

    @invariant()
    def registry_matches_the_workers(self):
        if self.rt is None:
            return
        self._collect_events()
        for name, seen in self.seen.items():
            model = self.models.get(name)
            allowed = {BundleEventKind.RESTARTED} if model and model.state == "pending" else set()
            assert {e.kind for e in seen} <= allowed, f"{name}: unexpected events {list(seen)}"
        states = {b.name: b.state for b in self.rt.bundles}
        assert states.keys() == self.models.keys()
        for name, model in self.models.items():
            allowed = {
                "ready": {BundleState.READY},
                "crashed": {BundleState.CRASHED},
                "pending": {BundleState.CRASHED, BundleState.RESTARTING, BundleState.READY},
            }[model.state]
            assert states[name] in allowed, (name, states[name], model.state)
        for name, (_, contract_id, _, _) in BUNDLES.items():
            found = self.rt.find_all_by_contract(contract_id, 1)
            assert found == ([self.models[name].handle] if name in self.models else []), (name, found)

        self.rt._await_retired(None)  # a reload's old worker exits after the reload returned
        ready = {m.bundle.pid for m in self.models.values() if m.state == "ready"}
        pending = sum(m.state == "pending" for m in self.models.values())
        zygote = {self.rt._zygote.pid}
        children = {child.pid for child in psutil.Process().children()} - self.before.children - zygote
        assert None not in ready
        assert ready <= children and len(children) <= len(ready) + pending, (ready, children)
        if pending:
            return  # a restart may be starting a worker (its segment has a name for a moment)
        assert named_shm_held() == []
        assert self.rt.live_worker_count() == len(ready) == len(children)
        extra = len(os.listdir("/proc/self/fd")) - self.fd_base
        if ready and self.fds_per_worker is None:
            assert extra % len(ready) == 0, (extra, len(ready))
            self.fds_per_worker = extra // len(ready)
        assert extra == (self.fds_per_worker or 0) * len(ready), (extra, self.fds_per_worker, len(ready))


def race(*calls):
    """Runs ``calls`` in threads released together; each one's result or exception, in order."""
    start = threading.Barrier(len(calls))
    outcomes: list[object] = [None] * len(calls)

    def run(index, call):
        start.wait()
        try:
            outcomes[index] = call()
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SAFETY_TIMEOUT)
        assert not thread.is_alive(), "a racing lifecycle call never returned"
    return outcomes


def in_fork_child(job) -> str:
    """Runs ``job`` in a fork() child; what it returned (as str) or its error as 'Type: message'."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            try:
                answer = str(job())
            except BaseException as exc:
                answer = f"{type(exc).__name__}: {exc}"
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode()
    assert os.waitpid(pid, 0)[0] == pid  # the child exits right after it wrote
    return answer


def test_lifecycle_state_machine():
    # About 20 s on 2 cores; 400 examples of 30 steps (4 min) also pass.
    budget = settings(max_examples=40, stateful_step_count=25, deadline=None)
    run_state_machine_as_test(Lifecycle, settings=budget)
