"""Fault plans: faults built in Python, executed in the worker around the real plugin.

The shape follows Toxiproxy and libfiu: a named fault (what goes wrong), a
trigger (when: every call, the n-th, every n-th, with a seeded probability,
after a time), a target (which contract and function), a budget (at most n
firings) and a phase (a call, or polyplug_init). Faults are immutable values;
every builder method returns a new one::

    Fault.crash(signal.SIGSEGV).on_call(3)
    Fault.error(code=1, message="injected").every(2).only(contract="test.add", function=0)
    Fault.delay(ms=5).with_probability(0.1, seed=42)
    Fault.crash().during_init()

The same plan and seed give the same firings for the same sequence of calls:
the worker draws from one xorshift64* stream per fault, once per matching call.
"""

from __future__ import annotations

import dataclasses
import enum
import signal as signals
from dataclasses import dataclass
from typing import Any

from . import _checks as check


class FaultKind(enum.Enum):
    CRASH = 0
    EXIT = 1
    HANG = 2
    DELAY = 3
    ERROR = 4
    CORRUPT = 5
    LEAK = 6


class Trigger(enum.Enum):
    ALWAYS = 0
    NTH = 1
    EVERY = 2
    PROBABILITY = 3
    AFTER = 4


PHASE_CALL, PHASE_INIT = 0, 1
_CONTRACT_CAP, _MESSAGE_CAP = 127, 255  # bytes the worker's fault table holds


@dataclass(frozen=True)
class Fault:
    """One fault; build it with the class methods, refine it with the others."""

    kind: FaultKind
    arg: int = 0
    message: str = ""
    trigger: Trigger = Trigger.ALWAYS
    n: int = 0
    probability: float = 0.0
    seed: int = 0
    after_s: float = 0.0
    times: int = 0  # 0: no limit
    contract: str = ""
    function: int = -1
    init: bool = False

    # ---- what goes wrong ----------------------------------------------------

    @classmethod
    def crash(cls, sig: int = signals.SIGSEGV) -> Fault:
        """The worker dies of ``sig`` (SIGSEGV, SIGABRT, SIGKILL, SIGBUS, ...)."""
        check.integer("Fault.crash", "sig", sig, "Fault.crash(signal.SIGSEGV)", low=1, high=64)
        return cls(FaultKind.CRASH, arg=int(signals.Signals(sig)))

    @classmethod
    def exit(cls, code: int = 1) -> Fault:
        """The worker calls ``_exit(code)``."""
        check.integer("Fault.exit", "code", code, "Fault.exit(3)", low=0, high=255)
        return cls(FaultKind.EXIT, arg=code)

    @classmethod
    def hang(cls) -> Fault:
        """The call never returns (a timeout ends it)."""
        return cls(FaultKind.HANG)

    @classmethod
    def delay(cls, ms: int) -> Fault:
        """The call runs ``ms`` milliseconds late."""
        check.integer("Fault.delay", "ms", ms, "Fault.delay(ms=5)", low=0)
        return cls(FaultKind.DELAY, arg=ms)

    @classmethod
    def error(cls, code: int = 1, message: str = "injected fault") -> Fault:
        """The plugin is not called; the call answers AbiError(code, message)."""
        check.integer(
            "Fault.error", "code (0 is Ok)", code, "Fault.error(code=300)", low=1, high=(1 << 32) - 1
        )
        check.instance("Fault.error", "message", message, str, 'Fault.error(300, message="injected")')
        if len(message.encode()) > _MESSAGE_CAP:
            raise ValueError(f"Fault.error: message is longer than {_MESSAGE_CAP} bytes")
        return cls(FaultKind.ERROR, arg=code, message=message)

    @classmethod
    def corrupt(cls) -> Fault:
        """The plugin runs; every byte of its answer is inverted (tests a host's own checks)."""
        return cls(FaultKind.CORRUPT)

    @classmethod
    def leak(cls, mb: int) -> Fault:
        """``mb`` MiB are allocated, touched and never freed; past a limit, the worker aborts."""
        check.integer("Fault.leak", "mb", mb, "Fault.leak(mb=64)", low=1)
        return cls(FaultKind.LEAK, arg=mb)

    @classmethod
    def slow_start(cls, ms: int) -> Fault:
        """polyplug_init starts ``ms`` milliseconds late."""
        return cls.delay(ms).during_init()

    @classmethod
    def fail_init(cls, code: int = 1, message: str = "injected init failure") -> Fault:
        """polyplug_init is not called; the load fails with AbiError(code, message)."""
        return cls.error(code, message).during_init()

    # ---- when, where, how often -------------------------------------------------

    def on_call(self, n: int) -> Fault:
        """Fires on the n-th matching call from now (1-based)."""
        _positive("on_call", n)
        return dataclasses.replace(self, trigger=Trigger.NTH, n=n)

    def every(self, n: int) -> Fault:
        """Fires on every n-th matching call."""
        _positive("every", n)
        return dataclasses.replace(self, trigger=Trigger.EVERY, n=n)

    def with_probability(self, p: float, seed: int = 0) -> Fault:
        """Fires on each matching call with probability ``p``, from a generator seeded with ``seed``."""
        check.number("with_probability", "p", p, "with_probability(0.1, seed=42)", low=0.0, high=1.0)
        check.integer("with_probability", "seed", seed, "with_probability(0.1, seed=42)")
        return dataclasses.replace(self, trigger=Trigger.PROBABILITY, probability=p, seed=seed & (2**64 - 1))

    def after(self, seconds: float) -> Fault:
        """Fires on matching calls once ``seconds`` have passed since it was injected."""
        check.number("after", "seconds", seconds, "after(2.0)", low=0)
        return dataclasses.replace(self, trigger=Trigger.AFTER, after_s=seconds)

    def only(self, contract: str | None = None, function: int | None = None) -> Fault:
        """Fires only on calls to this contract (its registered name) and/or function index."""
        check.optional("only", "contract", contract, str, 'only(contract="test.add")')
        if function is not None:
            check.integer("only", "function", function, "only(function=0)", low=0)
        if contract is not None and len(contract.encode()) > _CONTRACT_CAP:
            raise ValueError(f"only: contract name is longer than {_CONTRACT_CAP} bytes")
        if function is not None and function < 0:
            raise ValueError(f"only: function is an index, not {function}")
        return dataclasses.replace(
            self,
            contract=self.contract if contract is None else contract,
            function=self.function if function is None else function,
        )

    def first(self, n: int) -> Fault:
        """Fires at most ``n`` times."""
        _positive("first", n)
        return dataclasses.replace(self, times=n)

    def during_init(self) -> Fault:
        """Applies to polyplug_init instead of calls (pass it to ``load_bundle(faults=...)``)."""
        return dataclasses.replace(self, init=True)

    def spec(self, fault_id: int) -> dict[str, Any]:
        """The worker's view of this fault (a ppw_fault_spec)."""
        return {
            "id": fault_id,
            "phase": PHASE_INIT if self.init else PHASE_CALL,
            "action": self.kind.value,
            "trigger": self.trigger.value,
            "arg": self.arg,
            "n": self.n,
            "probability": self.probability,
            "seed": self.seed,
            "after_s": self.after_s,
            "max_fires": self.times,
            "function": self.function,
            "contract": self.contract.encode(),
            "message": self.message.encode(),
        }


@dataclass(frozen=True)
class FaultRecord:
    """One firing: which fault, on which matching call, where."""

    fault: Fault
    call: int  # the n-th call this fault matched
    contract: str | None  # None: polyplug_init
    function: int | None


def _positive(name: str, n: int) -> None:
    check.integer(name, "n", n, f"{name}(2)", low=1)
