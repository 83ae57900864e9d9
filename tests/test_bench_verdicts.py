"""The quick bench's verdicts do not flip: ten runs, and no target is met in one and missed in another.

Marked ``slow`` (10 quick runs: a few minutes on a quiet machine): not in the default run.
Run it on a quiet machine, where few rounds are disturbed::

    python -m pytest -m slow tests/test_bench_verdicts.py -s

It prints one line per run (each target's verdict with its median and
interquartile range). A flip is a target judged "yes" in one run and "NO" in
another. "unclear" (the range straddles the limit) and "n/a (disturbed)" are
not flips, but every target must be decided (yes or NO) in at least one run,
so that a machine too busy to judge anything cannot pass for a stable one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hdrh.histogram", reason="the bench needs hdrhistogram (pip install -e '.[bench]')")

ROOT = Path(__file__).resolve().parent.parent
RUNS = 10


def quick_run(out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-progress", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


def flips(runs: list[dict[str, str]]) -> dict[str, set[str]]:
    """Targets judged both "yes" and "NO" across ``runs`` (target id -> the verdicts seen)."""
    seen: dict[str, set[str]] = {}
    for verdicts in runs:
        for target, verdict in verdicts.items():
            seen.setdefault(target, set()).add(verdict)
    return {target: found for target, found in seen.items() if {"yes", "NO"} <= found}


def test_flips_are_told_apart_from_undecided_runs():
    assert flips([{"a": "yes", "b": "unclear"}, {"a": "yes", "b": "NO"}]) == {}
    assert flips([{"a": "yes"}, {"a": "n/a (disturbed)"}, {"a": "NO"}]) == {
        "a": {"yes", "NO", "n/a (disturbed)"}
    }


@pytest.mark.slow
@pytest.mark.timeout(150 * RUNS)  # a quiet machine needs ~15 s a run; a busy one runs more rounds
def test_ten_quick_runs_give_the_same_verdicts(tmp_path: Path):
    runs, lines = [], []
    for i in range(RUNS):
        document = quick_run(tmp_path / f"run{i}.json")
        targets = document["targets"]
        runs.append({t["id"]: t["verdict"] for t in targets})
        contended = " CONTENDED" if document["meta"]["contended"] else ""
        lines.append(
            f"run {i + 1:2}{contended}: " + " | ".join(f"{t['id']} {t['measured_text']}" for t in targets)
        )
        print(("\n" if i == 0 else "") + lines[-1], flush=True)  # as it goes, with -s
    assert flips(runs) == {}, "\n".join(lines)
    undecided = [t for t in runs[0] if all(run[t] not in ("yes", "NO") for run in runs)]
    assert not undecided, (
        f"never decided in {RUNS} runs (too disturbed or too close): {undecided}\n" + "\n".join(lines)
    )
