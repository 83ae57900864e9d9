"""``python -m bench``: measure, then print the table and write the JSON and the plot.

Exit status: 0 after a complete run (targets are reported, not asserted),
1 when a step failed or a worker process outlived the run, 2 for a missing
dependency or bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import platform
import sys
import time
import traceback
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("floor", "polyplug", "pipe", "isolated", "batch", "threads", "idle", "payload", "shapes")
# Run only when asked for (--only shapes): bench._shapes interleaves its own rounds.
OPT_IN = {"shapes"}

# (id, case, text, kind, limit, reference case). kind "ratio": case p50 over the
# reference's p50 at most limit; "faster": case p50 below the reference's p50;
# "rate": calls/s at least limit; "idle": % of a core below limit.
TARGETS = (
    ("auto_vs_cffi", "isolated.auto", "p50 ≤ 1.5x cffi", "ratio", 1.5, "inproc"),
    ("auto_vs_polyplug", "isolated.auto", "p50 < polyplug's", "faster", None, "polyplug"),
    ("block_vs_sem_floor", "isolated.block", "p50 ≤ 1.3x sem floor", "ratio", 1.3, "floor.sem"),
    ("call_packed_rate", "call_packed", "≥ 20 M calls/s", "rate", 20e6, None),
    ("call_many_rate", "call_many", "≥ 2 M calls/s", "rate", 2e6, None),
    ("idle_cpu", "idle", "< 1% of a core", "idle", 1.0, None),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark polyplug_isolated against in-process calls, polyplug 0.1.3, "
        "multiprocessing.Pipe and the C-to-C floor (the adder and payload fixtures).",
    )
    parser.add_argument("--quick", action="store_true", help="small sample counts, < 20 s (CI smoke test)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", type=Path, metavar="PATH", help="write a PNG plot (needs matplotlib)")
    parser.add_argument(
        "--only",
        metavar="GROUPS",
        help=f"comma-separated subset of {','.join(GROUPS)} (the in-process baseline always runs)",
    )
    parser.add_argument("--plain", action="store_true", help="plain-text table even when rich is installed")
    parser.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the measuring thread and the baselines to one CPU (workers are never pinned)",
    )
    args = parser.parse_args(argv)
    if args.only:
        chosen = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = chosen - set(GROUPS)
        if unknown:
            parser.error(f"--only: unknown group(s) {', '.join(sorted(unknown))}; choose from {GROUPS}")
        args.groups = chosen
    else:
        args.groups = set(GROUPS) - OPT_IN
    return args


class Progress:
    """A rich progress bar on a terminal, one line per step otherwise, or nothing."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.done = 0
        self.enabled = enabled
        self._bar = None
        if enabled and sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )

                self._bar = Progress(
                    TextColumn("{task.description:<48}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=Console(stderr=True),
                    transient=True,
                )
                self._task = self._bar.add_task("starting", total=total)
                self._bar.start()

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, description=label, completed=self.done)
        else:
            print(f"[{self.done + 1}/{self.total}] {label}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import hdrh.histogram  # noqa: F401
    except ImportError:
        print("python -m bench needs hdrhistogram: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    from . import _cases, _report

    started = time.perf_counter()
    runner = Runner(
        _cases.Plan.make(args.quick), args.groups, progress=not args.no_progress, pin=not args.no_pin
    )
    try:
        runner.run()
    finally:
        runner.close()
    leaked = _cases.worker_children()
    document = runner.document(time.perf_counter() - started, leaked)

    _report.print_table(document, plain=args.plain)
    if args.json:
        _report.write_json(document, args.json)
        print(f"JSON written to {args.json}")
    if args.plot:
        why_not = _report.write_plot(document, args.plot)
        print(f"plot not written: {why_not}" if why_not else f"plot written to {args.plot}")
    if leaked:
        print(f"error: worker processes outlived the benchmark: {leaked}", file=sys.stderr)
        for pid, _ in leaked:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    return 1 if leaked or document["errors"] else 0


class Runner:
    """Runs the steps in order, keeping the runtimes the steps share open between them."""

    def __init__(self, plan, groups: set[str], progress: bool, pin: bool = True):
        from . import _cases

        self.plan = plan
        self.all_cpus = os.sched_getaffinity(0)
        # The measuring thread runs on one CPU, and so do the baseline
        # subprocesses it starts: both sides of every ratio see the same core
        # (the two vCPUs of a VM can differ by 2x). Workers, floors and the
        # threads case are never pinned.
        self.host_cpu = max(self.all_cpus) if pin and len(self.all_cpus) >= 2 else None
        self.groups = groups
        self.cases: dict = {}
        self.skipped: list[dict] = []
        self.errors: list[dict] = []
        self.idle: dict | None = None
        self.shapes: dict | None = None
        self.step_log: list[dict] = []
        self.stack = contextlib.ExitStack()
        self._runtimes: dict = {}
        self._cases = _cases
        self.steps = self._steps()
        self.progress = Progress(len(self.steps), progress)

    # -- the steps -------------------------------------------------------------------

    def _steps(self) -> list[tuple[str, object]]:
        c = self._cases
        plan = self.plan
        steps: list[tuple[str, object]] = [("build fixtures", self._build)]
        if "floor" in self.groups:
            steps += [(f"C floor: {mode}", lambda mode=mode: self._floor(mode)) for mode in c.FLOOR_LABELS]
        steps.append(
            (
                "in-process cffi baseline (subprocess)",
                lambda: self._add(self._p(c.inproc_adder, self.adder, plan)),
            )
        )
        if "polyplug" in self.groups:
            steps.append(("polyplug 0.1.3 in-process (subprocess)", self._polyplug))
        if "pipe" in self.groups:
            steps.append(
                ("multiprocessing.Pipe round trip", lambda: self._add(c.pipe_round_trip(plan, self._pinned)))
            )
        if "isolated" in self.groups:
            steps.append(("isolated, wait=spin", lambda: self._isolated_alone("spin")))
            steps.append(("isolated, wait=auto", self._isolated_auto))
        if "batch" in self.groups:
            steps.append(("call_packed", lambda: self._add(self._p(c.batch_packed, self._auto(), plan))))
            steps.append(
                ("call_many (list of tuples)", lambda: self._add(self._p(c.batch_list, self._auto(), plan)))
            )
        if "threads" in self.groups:
            for count in plan.thread_counts:
                steps.append(
                    (f"host threads: {count}", lambda n=count: self._add(c.threads(self._auto(), n, plan)))
                )
        if "idle" in self.groups:
            steps.append(("idle worker CPU", self._idle))
        steps.append(("close the wait=auto runtime", self._close_auto))
        if "isolated" in self.groups:
            steps.append(("isolated, wait=block", lambda: self._isolated_alone("block")))
        if "payload" in self.groups:
            steps.append(("payload sizes, in-process (subprocess)", self._payload_inproc))
            steps.append(("payload sizes, isolated", self._payload_isolated))
        if "shapes" in self.groups:
            steps.append(("call shapes, interleaved rounds (bench._shapes)", self._shapes))
        return steps

    def _shapes(self) -> None:
        from . import _shapes

        self.shapes = _shapes.run(3 if self.plan.quick else 10, self.plan.quick)

    def run(self) -> None:
        from . import _measure
        from ._load import LoadMeter

        _measure.BUDGET_S = self.plan.budget_s
        meter = LoadMeter()
        gc.disable()
        try:
            for label, step in self.steps:
                self.progress.step(label)
                before = set(self.cases)
                meter.start()
                try:
                    step()
                except Exception as exc:
                    self.errors.append({"step": label, "error": f"{type(exc).__name__}: {exc}"})
                    traceback.print_exc(file=sys.stderr)
                    if label == "build fixtures":
                        break
                finally:
                    self._cases.collect()
                load = meter.stop()
                self.step_log.append({"step": label, **load})
                for name in set(self.cases) - before:
                    self.cases[name].extra["load"] = load
                self.progress.advance()
        finally:
            gc.enable()
            self.progress.close()

    def close(self) -> None:
        self.stack.close()

    @contextlib.contextmanager
    def _pinned(self):
        """The calling thread on ``host_cpu`` (processes it starts meanwhile inherit it)."""
        if self.host_cpu is None:
            yield
            return
        os.sched_setaffinity(0, {self.host_cpu})
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.all_cpus)

    def _p(self, fn, *args):
        """``fn(*args)`` pinned; load bundles before, so workers do not inherit the pin."""
        with self._pinned():
            return fn(*args)

    def _add(self, *cases) -> None:
        for case in cases:
            if isinstance(case, list):
                self._add(*case)
            elif case is not None:
                self.cases[case.name] = case

    def _build(self) -> None:
        from polyplug_isolated._fixtures import fixture_path

        from ._floor import Floor

        self.adder = fixture_path("adder")
        self.payload = fixture_path("payload")
        if "floor" in self.groups:
            self.floor = self.stack.enter_context(Floor())

    def _floor(self, mode: str) -> None:
        if mode == "sem-2cpu" and len(os.sched_getaffinity(0)) < 2:
            self.skipped.append({"step": f"floor {mode}", "reason": "needs two CPUs"})
            return
        self._add(self._cases.floor_case(self.floor, mode, self.plan))

    def _polyplug(self) -> None:
        if not self._cases.polyplug_available():
            self.skipped.append(
                {
                    "step": "polyplug",
                    "reason": "polyplug and polyplug-loaders-native are not installed (the compare extra)",
                }
            )
            return
        self._add(self._p(self._cases.polyplug_adder, self.adder, self.plan))

    def _runtime(self, wait: str, **options):
        from polyplug_isolated import Runtime

        rt = Runtime(wait=wait, **options)
        self.stack.callback(rt.close)
        return rt

    def _isolated_alone(self, wait: str) -> None:
        from polyplug_isolated import Runtime

        # A spinning worker burns a core until closed: its runtime lives for this step only.
        with Runtime(wait=wait) as rt:
            rt.load_bundle(self.adder)
            contract = self._cases.contract_of(rt, "test.add")
            self._add(self._p(self._cases.isolated_single, contract, wait, self.plan))

    def _auto(self):
        if "auto" not in self._runtimes:
            rt = self._runtime("auto")
            bundle = rt.load_bundle(self.adder)
            self._runtimes["auto"] = (rt, bundle, self._cases.contract_of(rt, "test.add"))
        return self._runtimes["auto"][2]

    def _isolated_auto(self) -> None:
        contract = self._auto()
        self._add(self._p(self._cases.isolated_single, contract, "auto", self.plan))
        raw = self._p(self._cases.isolated_raw, contract, self.plan)
        if raw is None:
            self.skipped.append(
                {
                    "step": "isolated, raw C call",
                    "reason": "pp_call_small changed",
                }
            )
        self._add(raw)

    def _idle(self) -> None:
        contract = self._auto()
        self.idle = self._cases.idle_worker(contract, self._runtimes["auto"][1].pid, self.plan)

    def _close_auto(self) -> None:
        entry = self._runtimes.pop("auto", None)
        if entry is not None:
            entry[0].close()

    def _payload_inproc(self) -> None:
        self._add(self._p(self._cases.inproc_payload, self.payload, self.plan))

    def _payload_isolated(self) -> None:
        largest = max(size for size, _ in self.plan.payload)
        rt = self._runtime("auto", arena_capacity=max(4 * 1024 * 1024, 2 * largest + 4096))
        try:
            rt.load_bundle(self.payload)
            contract = self._cases.contract_of(rt, "test.payload")
            for size, n in self.plan.payload:
                self._add(self._p(self._cases.payload, contract, size, n))
                self._cases.collect()
        finally:
            rt.close()

    # -- the results -----------------------------------------------------------------

    def document(self, wall_s: float, leaked: list) -> dict:
        cases = []
        stats = {name: case.stats() for name, case in self.cases.items()}
        for name, case in self.cases.items():
            base = self.cases.get(case.baseline)
            ratio = None
            if base is not None:
                if case.kind == "throughput":
                    ratio = case.calls_per_s / base.calls_per_s
                else:
                    ratio = stats[name]["p50_ns"] / stats[case.baseline]["p50_ns"]
            cases.append(
                {
                    "name": name,
                    "label": case.label,
                    "group": case.group,
                    "kind": case.kind,
                    **stats[name],
                    "calls_per_s": case.calls_per_s,
                    "ratio": ratio,
                    "baseline": case.baseline,
                    "calls_per_sample": case.per,
                    "note": case.note,
                    "diagnostic": case.diagnostic,
                    **case.extra,
                }
            )
        return {
            "meta": {**_meta(self.plan, wall_s), "host_cpu": self.host_cpu},
            "cases": cases,
            "targets": self._targets(stats),
            "idle_worker": self.idle,
            "shapes": self.shapes,
            "steps": self.step_log,
            "skipped": self.skipped,
            "errors": self.errors,
            "leaked_workers": [{"pid": pid, "cmdline": cmd} for pid, cmd in leaked],
        }

    def _targets(self, stats: dict) -> list[dict]:
        out = []
        for target_id, case_name, text, kind, limit, reference in TARGETS:
            entry = {"id": target_id, "case": case_name, "text": text, "limit": limit, "reference": reference}
            measured = met = None
            measured_text = ""
            if kind == "idle":
                if self.idle is not None:
                    measured = self.idle["percent_of_core"]
                    met = measured < limit
                    measured_text = f"{measured:.3f}%"
            elif case_name in stats and kind == "rate":
                measured = self.cases[case_name].calls_per_s
                met = measured >= limit
                measured_text = f"{measured / 1e6:.1f} M/s"
            elif case_name in stats and reference in stats:
                measured = stats[case_name]["p50_ns"] / stats[reference]["p50_ns"]
                met = measured <= limit if kind == "ratio" else measured < 1.0
                # A bimodal distribution (sleeps vs hand-offs) shows in the mean, not the p50.
                entry["mean_ratio"] = stats[case_name]["mean_ns"] / stats[reference]["mean_ns"]
                measured_text = f"{measured:.2f}x (mean {entry['mean_ratio']:.2f}x)"
            entry.update(measured=measured, met=met, measured_text=measured_text)
            out.append(entry)
        return out


def _meta(plan, wall_s: float) -> dict:
    import importlib.metadata
    import subprocess

    try:
        version = importlib.metadata.version("polyplug_isolated")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False, cwd=_ROOT
    ).stdout.strip()
    cpu_model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "quick": plan.quick,
        "wall_s": wall_s,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "polyplug_isolated": version,
        "commit": commit or "unknown",
        "plan": {**vars(plan), "payload": [list(p) for p in plan.payload]},
    }


if __name__ == "__main__":
    sys.exit(main())
