"""Smoke test of the benchmark: ``python -m bench --quick`` runs, reports every case, leaks nothing.

The numbers are not checked against the targets (those are benchmark ratios,
reported by the bench itself), only for being there and positive.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("hdrh.histogram", reason="the bench needs hdrhistogram (pip install -e '.[bench]')")

ROOT = Path(__file__).resolve().parent.parent

# Every case the quick run reports, whatever is installed (polyplug and the
# two-CPU floor are checked separately: they depend on the machine).
ALWAYS = {
    "inproc",
    "inproc.raw",
    "timer",
    "floor.spin",
    "floor.sem",
    "floor.sem-1cpu",
    "pipe",
    "isolated.spin",
    "isolated.auto",
    "isolated.auto.raw",
    "isolated.typed",
    "isolated.typed.kw",
    "isolated.block.unplaced",
    "call_packed",
    "call_many",
    "threads.1",
    "threads.2",
    "threads.4",
    "threads.8",
    "payload.inproc.8",
    "payload.inproc.4096",
    "payload.inproc.1048576",
    "payload.isolated.8",
    "payload.isolated.4096",
    "payload.isolated.1048576",
}
TARGETS = {
    "auto_vs_inproc",
    "auto_vs_polyplug",
    "block_vs_2cpu_floor",
    "call_packed_rate",
    "call_many_rate",
    "idle_cpu",
}


VERDICTS = {"yes", "NO", "unclear", "n/a (disturbed)"}


def _in_session(sid: int) -> list[str]:
    """Every live process of session ``sid``: the bench and all it started (workers included)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.info["pid"]) == sid:
                found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or ())}")
    return found


@pytest.mark.timeout(240)
def test_quick_bench_runs_and_reports_every_case(tmp_path: Path):
    out = tmp_path / "bench.json"
    # Its own session: whatever it leaves behind (a worker, the Pipe child, a
    # floor process) keeps the session id, even once the bench has exited.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out), "--no-progress"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=180)  # a contended machine runs more rounds
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("python -m bench --quick took more than 180 s")
    # A process that is exiting right now may still show up for a moment.
    deadline = time.monotonic() + 5
    while (leftovers := _in_session(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leftovers, f"the bench left processes behind: {leftovers}"
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{stdout}\n{stderr}"
    document = json.loads(out.read_text())

    assert document["errors"] == []
    assert document["leaked_workers"] == []
    assert document["meta"]["quick"] is True
    cases = {case["name"]: case for case in document["cases"]}
    expected = set(ALWAYS)
    if any(s["step"] == "polyplug" for s in document["skipped"]):
        assert "polyplug" not in cases
    else:
        expected |= {"polyplug", "polyplug.ctypes"}
    if psutil.Process().cpu_affinity() and len(psutil.Process().cpu_affinity()) >= 2:
        expected |= {"floor.sem-2cpu", "isolated.block"}
    assert expected <= set(cases), f"missing cases: {sorted(expected - set(cases))}"
    for name, case in cases.items():
        for key in ("p50_ns", "p99_ns", "p999_ns", "mean_ns", "calls_per_s", "ratio"):
            assert case[key] is not None and case[key] > 0, f"{name}: {key} = {case[key]!r}"
        assert case["p50_ns"] <= case["p99_ns"] <= case["p999_ns"], name
        assert case["samples"] > 0, name
    assert cases["inproc"]["ratio"] == pytest.approx(1.0)

    targets = {target["id"]: target for target in document["targets"]}
    assert set(targets) == TARGETS
    for target_id, target in targets.items():
        if target_id == "auto_vs_polyplug" and "polyplug" not in cases:
            assert target["met"] is None
            continue
        # A verdict, never a bare number: met only when the whole range is within the limit.
        assert target["verdict"] in VERDICTS, target_id
        assert target["met"] is {"yes": True, "NO": False}.get(target["verdict"]), target_id
        if target_id == "idle_cpu":
            continue
        assert target["rounds"] >= 9 and target["all_rounds"]["n"] == target["rounds"], target_id
        if target["verdict"] != "n/a (disturbed)":
            assert target["clean_rounds"] >= 6, target_id
            assert target["low"] <= target["median"] <= target["high"], target_id
    for key, comparison in document["comparisons"].items():
        # Alternating rounds: each round runs the sides in the reverse order of the one before.
        orders = [r["order"] for r in comparison["rounds"]]
        assert all(b == a[::-1] for a, b in itertools.pairwise(orders)), key

    idle = document["idle_worker"]
    assert idle["window_s"] > 0 and 0 <= idle["percent_of_core"] < 100

    assert "targets met:" in stdout
    assert ("CONTENDED RUN" in stdout) == bool(document["meta"]["contended"])
