"""Rows for calls back: a guest->host round trip and a call between bundles, next to the plain call.

Three calls into the same kind of worker, each returning a u32:

* plain:  reporter.status()          -- the call alone (the baseline of the two others)
* host:   reporter.level()           -- the call, plus one call back to a host contract
                                        (host.logger@1 get_level, a Python method) returning u32
* cross:  depender.target_add()      -- the call, plus one call into cross_target's add
                                        (through the handle its init found), forwarded in C by
                                        the host thread waiting on the call (_cbroutes.c)

The three are timed interleaved, in rounds of ``ROUND`` calls each, so that a
contended machine weighs on all of them alike. The p50 of a row minus the
plain p50 is what the call back itself costs (in ``extra``).
"""

from __future__ import annotations

import struct
from array import array

from . import _measure

ROUND = 500
PAIR = struct.pack("<II", 2, 3)


class Logger:
    """host.logger@1 for the benchmark: get_level answers at once."""

    def log(self, message: str) -> None:
        pass

    def get_level(self) -> int:
        return 7


def _contract(rt, name: str):
    from polyplug_isolated import guest_contract_id

    return rt.resolve_guest_contract(rt.find_guest_contract(guest_contract_id(name, 1), 1))


def callbacks(plan, pinned) -> list:
    """The three rows; ``pinned`` pins the measuring thread as the other rows are."""
    from polyplug_isolated import Runtime
    from polyplug_isolated._fixtures import fixture_path

    from ._cases import Case

    with Runtime(wait="auto") as rt:
        rt.register_host_contract(Logger(), api=fixture_path("reporter") / "api.toml")
        rt.load_bundle(fixture_path("reporter"))
        rt.load_bundle(fixture_path("cross_target"))
        rt.load_bundle(fixture_path("depender"))
        reporter, depender = _contract(rt, "reporter.test"), _contract(rt, "depender.test")
        calls = {
            "plain": (lambda: reporter.call(2, b"", 4), 0),
            "host": (lambda: reporter.call(1, b"", 4), 7),
            "cross": (lambda: depender.call(2, PAIR, 4), 5),
        }
        for name, (call, expected) in calls.items():
            if int.from_bytes(call(), "little") != expected:
                raise RuntimeError(f"callbacks.{name}: the call did not answer {expected}")
        samples = {name: array("q") for name in calls}
        with pinned():
            for call, _ in calls.values():
                _measure.warm(call, plan.warmup)
            rounds = max(1, plan.latency_n // (10 * ROUND))
            for _ in range(rounds):
                for name, (call, _) in calls.items():
                    samples[name].extend(_measure.time_each(call, ROUND, 0))
            rates = {
                name: _measure.throughput(call, plan.throughput_n // 10) for name, (call, _) in calls.items()
            }
    hists = {name: _measure.histogram_of(values) for name, values in samples.items()}
    plain_p50 = hists["plain"].get_value_at_percentile(50)
    labels = {
        "plain": ("calls back: plain call returning u32 (reporter.status)", "no call back"),
        "host": ("calls back: + guest->host round trip (host contract -> u32)", "get_level called from C"),
        "cross": ("calls back: + call into another bundle (add -> u32)", "forwarded by the host in C"),
    }
    cases = []
    for name, hist in hists.items():
        label, note = labels[name]
        extra = {"call_back_p50_ns": hist.get_value_at_percentile(50) - plain_p50} if name != "plain" else {}
        cases.append(
            Case(
                name=f"callbacks.{name}",
                label=label,
                group="callbacks",
                kind="latency",
                hist=hist,
                calls_per_s=rates[name],
                baseline="callbacks.plain",
                note=note,
                extra=extra,
            )
        )
    return cases
