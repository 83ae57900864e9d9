"""A host that retries a call when the plugin's worker crashes.

polyplug_isolated runs calls at most once: when a worker dies during a call,
the caller gets WorkerCrashed and the outcome is unknown. A host whose call
is idempotent (here ``test.add@1``'s ``add_primitive``, a pure function) may
simply run it again in a fresh worker. That is all this host does:

- WorkerCrashed (segfault, abort, ``_exit``, a resource limit): reload the
  bundle (a fresh worker; a restart the supervisor had scheduled is
  cancelled) and call again, at most ``attempts`` calls in all; then the last
  WorkerCrashed goes to the caller.
- Everything else goes to the caller at once: a PluginCallError is the
  plugin's own answer, and a CallTimeout (a hang; its worker was killed)
  would most likely hang again and cost another timeout.

Run ``python -m examples.retrying_host`` from the checkout for a demo
against the ``adder`` fixture under a fault plan.
"""

from __future__ import annotations

import os
import signal
import struct
import sys

from polyplug_isolated import Fault, Runtime, WorkerCrashed, guest_contract_id

ADD = guest_contract_id("test.add", 1)
ADD_PRIMITIVE = 1  # add_primitive(a: u32, b: u32) -> u32


class RetryingAdder:
    """Calls ``test.add@1`` in one bundle, retrying in a fresh worker when its worker crashes."""

    def __init__(self, runtime: Runtime, path: str | os.PathLike[str], attempts: int = 3, **load_options):
        """Loads the bundle at ``path``; ``load_options`` go to Runtime.load_bundle (reloads keep them)."""
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self.runtime = runtime
        self.path = path
        self.attempts = attempts
        self.crashes: list[WorkerCrashed] = []  # every crash retried or raised, in order
        runtime.load_bundle(path, **load_options)
        self._add = runtime.resolve_guest_contract(runtime.find_guest_contract(ADD, 1))

    def add(self, a: int, b: int) -> int:
        """``a + b`` (wrapping, u32) computed by the plugin.

        Raises:
            WorkerCrashed: the worker crashed on each of ``attempts`` calls (the last crash).
            PluginCallError, CallTimeout, BundleUnavailable: as GuestContract.call, not retried.
        """
        for attempt in range(1, self.attempts + 1):
            try:
                out = self._add.call(ADD_PRIMITIVE, struct.pack("<II", a, b), 4)
            except WorkerCrashed as crash:
                self.crashes.append(crash)
                if attempt == self.attempts:
                    raise
                self.runtime.reload_bundle(self.path)  # the contract follows its bundle
            else:
                return struct.unpack("<I", out)[0]
        raise AssertionError("unreachable: the last attempt returns or raises")


def main() -> int:
    from polyplug_isolated._fixtures import fixture_path

    # Every worker of adder segfaults on its 2nd call: each second add() is retried once.
    plan = [Fault.crash(signal.SIGSEGV).on_call(2)]
    with Runtime(call_timeout=5.0) as runtime:
        host = RetryingAdder(runtime, fixture_path("adder"), faults=plan)
        for a in range(4):
            print(f"add({a}, 40) = {host.add(a, 40)}")
        for crash in host.crashes:
            print(f"retried after the worker of {crash.bundle!r} died of {crash.signal.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
