"""Interleaved rounds and the verdict rules: what makes a target's yes/no hold from run to run.

Both sides of a ratio are measured in alternating rounds (A B, then B A, ...)
so that a slow moment of the machine lands on both; each round gives one
value per side (the p50 of its calls, or its calls/s) and one ratio. A round
is *disturbed* when the machine was busy with something else while it ran
(``_load.RoundMeter``); only clean rounds count. More rounds are run, up to a
cap, until enough are clean.

A target is judged on the spread of its clean rounds' ratios: the median and
the interquartile range (Q1-Q3; min-max below four rounds). It is met ("yes")
when the upper end of the range is within the limit, missed ("NO") when the
lower end is beyond it, and "unclear" when the range straddles the limit: a
difference too small for this run to tell, reported as such rather than as a
yes or no that would flip between runs. Too few clean rounds: "n/a (disturbed)".
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._load import RoundMeter


@dataclass(frozen=True)
class RoundPlan:
    rounds: int  # rounds run whatever happens
    min_clean: int  # clean rounds needed for a verdict
    max_rounds: int  # the most rounds run while waiting for clean ones


@dataclass
class Side:
    """One side of a comparison: ``measure()`` runs one round and returns (value, histogram or None)."""

    name: str
    measure: Callable[[], tuple[float, Any]]


@dataclass
class Rounds:
    """Every round of one comparison: per side its value, and the round's load."""

    sides: list[str]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    hists: dict[str, Any] = field(default_factory=dict)

    def clean(self) -> list[dict[str, Any]]:
        return [r for r in self.rounds if not r["disturbed"]]

    def values(self, side: str, clean: bool = True) -> list[float]:
        return [r["values"][side] for r in (self.clean() if clean else self.rounds)]

    def ratios(self, num: str, den: str, clean: bool = True) -> list[float]:
        return [r["values"][num] / r["values"][den] for r in (self.clean() if clean else self.rounds)]

    def as_json(self) -> dict[str, Any]:
        return {"sides": self.sides, "rounds": self.rounds}


def alternate(sides: list[Side], plan: RoundPlan, meter: RoundMeter) -> Rounds:
    """Runs the sides in alternating order, round after round, until enough rounds are clean."""
    out = Rounds([side.name for side in sides])
    clean = 0
    while len(out.rounds) < plan.max_rounds and (len(out.rounds) < plan.rounds or clean < plan.min_clean):
        order = sides if len(out.rounds) % 2 == 0 else sides[::-1]
        meter.start()
        values = {}
        for side in order:
            value, hist = side.measure()
            values[side.name] = value
            if hist is not None:
                if side.name in out.hists:
                    out.hists[side.name].add(hist)
                else:
                    out.hists[side.name] = hist
        load = meter.stop()
        out.rounds.append({"order": [s.name for s in order], "values": values, **load})
        clean += not load["disturbed"]
    return out


def spread(values: list[float]) -> dict[str, Any]:
    """Median and interquartile range (min-max below four values)."""
    if len(values) >= 4:
        low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    else:
        low, median, high = min(values), statistics.median(values), max(values)
    return {"median": median, "low": low, "high": high, "n": len(values)}


def judge(kind: str, limit: float, rounds: Rounds, values: list[float], plan: RoundPlan) -> dict[str, Any]:
    """The verdict of one target over its clean rounds' values (ratios, or calls/s for "rate").

    kind: "ratio" (at most ``limit``), "faster" (below ``limit``) or "rate" (at least ``limit``).
    """
    total, clean = len(rounds.rounds), len(rounds.clean())
    out: dict[str, Any] = {"rounds": total, "clean_rounds": clean}
    if clean < plan.min_clean or not values:
        out.update(verdict="n/a (disturbed)", met=None)
        reasons = sorted({r["disturbed"] for r in rounds.rounds if r["disturbed"]})
        out["disturbed_by"] = reasons[:3]
        return out
    s = spread(values)
    out.update(s)
    if kind == "rate":
        met = True if s["low"] >= limit else False if s["high"] < limit else None
    elif kind == "faster":
        met = True if s["high"] < limit else False if s["low"] >= limit else None
    else:
        met = True if s["high"] <= limit else False if s["low"] > limit else None
    out.update(met=met, verdict={True: "yes", False: "NO", None: "unclear"}[met])
    return out


def fmt_value(kind: str, value: float) -> str:
    return f"{value / 1e6:.1f} M/s" if kind == "rate" else f"{value:.2f}x"


def verdict_text(kind: str, result: dict[str, Any]) -> str:
    """E.g. ``yes 1.21x [1.18-1.25]`` or ``n/a (disturbed: 2 of 21 rounds clean)``."""
    if result["verdict"].startswith("n/a"):
        text = f"n/a (disturbed: {result['clean_rounds']} of {result['rounds']} rounds clean)"
        every = result.get("all_rounds")
        if every:
            text += (
                f"; all rounds {fmt_value(kind, every['median'])} "
                f"[{fmt_value(kind, every['low'])}-{fmt_value(kind, every['high'])}]"
            )
        return text
    return (
        f"{result['verdict']} {fmt_value(kind, result['median'])} "
        f"[{fmt_value(kind, result['low'])}-{fmt_value(kind, result['high'])}]"
    )
