"""What containment costs: worker start time and call latency, with and without it.

The two sides run interleaved, round by round (the order alternating), so that
a busy neighbour on the machine weighs on both alike; the spread of the
per-round medians says how much to trust a difference. Calls should cost the
same: containment acts at system calls, and the call path is shared memory.

    python -m bench._sandbox [--quick]      # a table on its own
    python -m bench --only sandbox          # rows in the bench report
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from array import array
from pathlib import Path

from . import _measure
from ._cases import ADD_PRIMITIVE, ARGS, EXPECTED, Case, Plan, contract_of

SIDES = {"contained": True, "plain": False}


def _rounds(plan: Plan) -> tuple[int, int]:
    """(rounds, calls timed per round)."""
    return (4, 5_000) if plan.quick else (12, 50_000)


def measure(
    bundle: Path, plan: Plan
) -> tuple[dict[str, dict[str, array[int]]], dict[str, dict[str, list[float]]]]:
    """({side: {"start": ns per load, "call": ns per call}}, the same as per-round medians)."""
    from polyplug_isolated import Runtime

    rounds, calls = _rounds(plan)
    samples: dict[str, dict[str, array[int]]] = {
        side: {"start": array("q"), "call": array("q")} for side in SIDES
    }
    medians: dict[str, dict[str, list[float]]] = {
        side: {"start": [], "call": [], "apply": []} for side in SIDES
    }
    for round_ in range(rounds):
        order = list(SIDES) if round_ % 2 == 0 else list(reversed(SIDES))
        for side in order:
            with Runtime(containment=SIDES[side]) as rt:
                t0 = time.perf_counter_ns()
                rt.load_bundle(bundle)
                samples[side]["start"].append(time.perf_counter_ns() - t0)
                report = rt.sandbox_report().get("adder")
                if report is not None:
                    medians[side]["apply"].append(report.seconds * 1e9)
                call = functools.partial(contract_of(rt, "test.add").call, ADD_PRIMITIVE, ARGS, 4)
                if call() != EXPECTED:
                    raise RuntimeError(f"add_primitive(2, 3) is not 5 ({side})")
                timed = _measure.time_each(call, calls, min(calls, plan.warmup))
                samples[side]["call"].extend(timed)
                medians[side]["call"].append(statistics.median(timed))
                medians[side]["start"].append(samples[side]["start"][-1])
    return samples, medians


def cases(bundle: Path, plan: Plan) -> list[Case]:
    """Bench rows: start and call latency per side; contained rows compare to plain ones."""
    measured, medians = measure(bundle, plan)
    rows = []
    for side in SIDES:
        for what, label in (("start", "worker start (load_bundle)"), ("call", "call, wait=auto")):
            values = measured[side][what]
            rows.append(
                Case(
                    name=f"sandbox.{what}.{side}",
                    label=f"{label}, {'contained' if SIDES[side] else 'containment=False'}",
                    group="sandbox",
                    kind="latency" if what == "call" else "start",  # start: in the table, not the plot
                    hist=_measure.histogram_of(values),
                    calls_per_s=1e9 / max(statistics.median(values), 1),
                    baseline=f"sandbox.{what}.plain",
                    note="interleaved rounds; spread = min..max of per-round medians",
                    extra={"round_medians_ns": medians[side][what], "apply_ns": medians[side]["apply"]},
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._sandbox", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls (a smoke run)")
    args = parser.parse_args()
    from polyplug_isolated._fixtures import fixture_path

    plan = Plan.make(args.quick)
    rows = {case.name: case for case in cases(fixture_path("adder"), plan)}
    print(f"{'':48} {'p50':>10} {'per-round medians (min..max)':>32} {'vs plain':>9}")
    for name, case in rows.items():
        medians = case.extra["round_medians_ns"]
        p50 = statistics.median(medians)
        base = statistics.median(rows[case.baseline].extra["round_medians_ns"])
        unit, scale = ("ms", 1e6) if ".start." in name else ("ns", 1.0)
        spread = f"{min(medians) / scale:.2f}..{max(medians) / scale:.2f} {unit}"
        print(f"{case.label:48} {p50 / scale:>7.2f} {unit} {spread:>32} {p50 / base:>8.3f}x")
    applied = rows["sandbox.start.contained"].extra["apply_ns"]
    print(
        f"{'containment applied in the worker':48} {statistics.median(applied) / 1e6:>7.2f} ms "
        f"{f'{min(applied) / 1e6:.2f}..{max(applied) / 1e6:.2f} ms':>32}"
    )


if __name__ == "__main__":
    main()
