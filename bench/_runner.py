"""The bench's steps in order, the interleaved comparisons behind the targets, and the result document."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from . import _cases, _placement, _rounds
from ._load import LoadMeter, RoundMeter

T = TypeVar("T")

# (id, case, text, kind, limit, comparison, numerator side, denominator side).
# kind "ratio": numerator/denominator at most limit; "faster": below limit;
# "rate": the side's calls/s at least limit; "idle": % of a core below limit.
# Every ratio and rate comes from the alternating rounds of one comparison.
TARGETS = (
    (
        "auto_vs_inproc",
        "isolated.auto",
        "p50 ≤ 1.5x in-process",
        "ratio",
        1.5,
        "auto",
        "isolated.auto",
        "inproc",
    ),
    (
        "auto_vs_polyplug",
        "isolated.auto",
        "p50 < polyplug host call",
        "faster",
        1.0,
        "auto",
        "isolated.auto",
        "polyplug",
    ),
    (
        "block_vs_2cpu_floor",
        "isolated.block",
        "p50 ≤ 1.3x 2-CPU sem floor",
        "ratio",
        1.3,
        "block",
        "isolated.block",
        "floor.sem-2cpu",
    ),
    ("call_packed_rate", "call_packed", "≥ 20 M calls/s", "rate", 20e6, "batch", "call_packed", None),
    ("call_many_rate", "call_many", "≥ 2 M calls/s", "rate", 2e6, "batch", "call_many", None),
    ("idle_cpu", "idle", "< 1% of a core", "idle", 1.0, None, None, None),
)

# Rows made from a comparison's pooled rounds: side -> (label, group, baseline, note, diagnostic).
ROWS = {
    "inproc": (
        "in-process, C shim (baseline)",
        "baseline",
        "inproc",
        "GuestContract.call's shape over a C shim with pp_call_small's contract",
        False,
    ),
    "inproc.raw": ("in-process, C shim call alone (diag)", "baseline", "inproc.raw", "an int", True),
    "timer": ("timer loop, empty call (diag)", "baseline", "inproc", "2x perf_counter_ns + a call", True),
    "polyplug": (
        "polyplug 0.1.3 host call",
        "baseline",
        "inproc",
        "Runtime.resolve_guest_contract per call + ctypes call, err check, bytes",
        False,
    ),
    "polyplug.ctypes": (
        "polyplug 0.1.3, resolved fn via ctypes (diag)",
        "baseline",
        "inproc",
        "no Runtime in the call path",
        True,
    ),
    "isolated.auto": (
        "isolated, wait=auto",
        "isolated",
        "inproc",
        "GuestContract.call(1, args, 4); worker on the other CPU",
        False,
    ),
    "isolated.typed": (
        "isolated, auto, typed call",
        "isolated",
        "isolated.auto",
        "rt.contract('test.add').add_primitive(2, 3) -> 5",
        False,
    ),
    "isolated.typed.kw": (
        "isolated, auto, typed call, keywords",
        "isolated",
        "isolated.auto",
        "add_primitive(a=2, b=3)",
        False,
    ),
    "isolated.auto.raw": (
        "isolated, auto, pp_call_small alone (diag)",
        "isolated",
        "inproc.raw",
        "the one cffi call of GuestContract.call; an int",
        True,
    ),
    "isolated.block": (
        "isolated, wait=block, worker on another CPU",
        "isolated",
        "floor.sem-2cpu",
        "host and worker pinned to two CPUs, as the floor",
        False,
    ),
    "floor.sem-2cpu": (
        "C floor: sem_t, two CPUs",
        "floor",
        "inproc",
        "parent and child pinned to two CPUs",
        False,
    ),
    "call_packed": ("call_packed, 100k records", "batch", "inproc", "array('I') in, bytes out", False),
    "call_many": ("call_many, 10k tuples", "batch", "inproc", "includes Struct.pack of each tuple", False),
}


class Runner:
    """Runs the steps in order, keeping the runtimes the steps share open between them."""

    def __init__(
        self, plan: _cases.Plan, groups: set[str], progress: Callable[[int], Any], pin: bool = True
    ) -> None:
        self.plan = plan
        self.all_cpus = os.sched_getaffinity(0)
        # The measuring thread runs on one CPU, and so do the baseline
        # subprocesses it starts: both sides of every ratio see the same core
        # (the two vCPUs of a VM can differ by 2x). Workers are not pinned,
        # except where a comparison places them as its floor does.
        self.host_cpu = max(self.all_cpus) if pin and len(self.all_cpus) >= 2 else None
        self.groups = groups
        self.cases: dict[str, _cases.Case] = {}
        self.comparisons: dict[str, _rounds.Rounds] = {}
        self.skipped: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.idle: dict[str, Any] | None = None
        self.shapes: dict[str, Any] | None = None  # bench._shapes' own report (--only shapes)
        self.step_log: list[dict[str, Any]] = []
        self.stack = contextlib.ExitStack()
        self.meter = RoundMeter()
        self._auto: tuple[Any, Any, Any] | None = None
        self.steps = self._steps()
        self.progress = progress(len(self.steps))

    # -- the steps -------------------------------------------------------------------

    def _steps(self) -> list[tuple[str, Callable[[], object]]]:
        c, plan, groups = _cases, self.plan, self.groups
        steps: list[tuple[str, Callable[[], object]]] = [("build fixtures", self._build)]
        if "floor" in groups:
            steps += [(f"C floor: {mode}", functools.partial(self._floor, mode)) for mode in c.FLOOR_LABELS]
        steps.append(("wait=auto vs in-process and polyplug, alternating", self._compare_auto))
        if "pipe" in groups:
            steps.append(
                ("multiprocessing.Pipe round trip", lambda: self._add(c.pipe_round_trip(plan, self._pinned)))
            )
        if "isolated" in groups:
            steps.append(("isolated, wait=spin", functools.partial(self._isolated_alone, "spin")))
        if "batch" in groups:
            steps.append(("call_packed and call_many, alternating", self._compare_batch))
        if "threads" in groups:
            for count in plan.thread_counts:
                steps.append((f"host threads: {count}", functools.partial(self._threads, count)))
        if "idle" in groups:
            steps.append(("idle worker CPU", self._idle))
        steps.append(("close the wait=auto runtime", self._close_auto))
        if "isolated" in groups:
            steps.append(("isolated, wait=block, unplaced", functools.partial(self._isolated_alone, "block")))
            steps.append(("wait=block vs the two-CPU floor, alternating", self._compare_block))
        if "callbacks" in groups:
            steps.append(
                (
                    "calls back: host contract, other bundle",
                    lambda: self._add(c.callbacks(plan, self._pinned)),
                )
            )
        if "sandbox" in groups:
            steps.append(("containment cost", lambda: self._add(c.sandbox(self.adder, plan))))
        if "payload" in groups:
            steps.append(("payload sizes, in-process (subprocess)", self._payload_inproc))
            steps.append(("payload sizes, isolated", self._payload_isolated))
        if "shapes" in groups:
            steps.append(("call shapes, interleaved rounds (bench._shapes)", self._shapes))
        return steps

    def _shapes(self) -> None:
        from . import _shapes

        self.shapes = _shapes.run(3 if self.plan.quick else 10, self.plan.quick)

    def run(self) -> None:
        from . import _measure

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
                    _cases.collect()
                load = meter.stop()
                self.step_log.append({"step": label, **load})
                for name in set(self.cases) - before:
                    self.cases[name].extra.setdefault("load", load)
                self.progress.advance()
        finally:
            gc.enable()
            self.progress.close()

    def close(self) -> None:
        self.stack.close()

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[None]:
        """The calling thread on ``host_cpu`` (processes it starts meanwhile inherit it)."""
        if self.host_cpu is None:
            yield
            return
        os.sched_setaffinity(0, {self.host_cpu})
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.all_cpus)

    def _p(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` pinned; load bundles before, so workers do not inherit the pin."""
        with self._pinned():
            return fn(*args)

    def _add(self, *cases: Any) -> None:
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
        self.floor = self.stack.enter_context(Floor())

    def _floor(self, mode: str) -> None:
        self._add(_cases.floor_case(self.floor, mode, self.plan))

    def _runtime(self, wait: str, **options: Any) -> Any:
        from polyplug_isolated import Runtime

        rt = Runtime(wait=wait, **options)
        self.stack.callback(rt.close)
        return rt

    def _isolated_alone(self, wait: str) -> None:
        from polyplug_isolated import Runtime

        # A spinning worker burns a core until closed: its runtime lives for this step only.
        with Runtime(wait=wait) as rt:
            rt.load_bundle(self.adder)
            contract = _cases.contract_of(rt, "test.add")
            case = self._p(_cases.isolated_single, contract, wait, self.plan)
            if wait == "block":
                case.name, case.label, case.diagnostic = (
                    "isolated.block.unplaced",
                    "isolated, wait=block, placement left to the scheduler (diag)",
                    True,
                )
            self._add(case)

    def _contract(self) -> Any:
        if self._auto is None:
            rt = self._runtime("auto")
            bundle = rt.load_bundle(self.adder)
            self._auto = (rt, bundle, _cases.contract_of(rt, "test.add"))
        return self._auto[2]

    def _server(self, mode: str, bundle: Path) -> _cases.BaselineServer:
        server = self._p(_cases.BaselineServer, mode, bundle, self.plan)
        self.stack.callback(server.close)
        self.meter.pids.append(server.pid)
        return server

    def _compare(
        self, key: str, sides: list[_rounds.Side], rate_sides: tuple[str, ...] = ()
    ) -> _rounds.Rounds:
        """Alternating rounds of ``sides`` (measured pinned), then one row per side."""
        with self._pinned():
            rounds = _rounds.alternate(sides, self.plan.rounds, self.meter)
        self.comparisons[key] = rounds
        for name in rounds.sides:
            label, group, baseline, note, diagnostic = ROWS[name]
            clean = rounds.clean() or rounds.rounds
            extra: dict[str, Any] = {"comparison": key}
            if baseline in rounds.sides and baseline != name:
                extra["round_ratio"] = _rounds.spread(
                    [r["values"][name] / r["values"][baseline] for r in clean]
                )
            if name in rate_sides:
                extra["round_rate"] = _rounds.spread([r["values"][name] for r in clean])
            self._add(
                _cases.Case(
                    name=name,
                    label=label,
                    group=group,
                    kind="throughput" if name in rate_sides else "latency",
                    hist=rounds.hists[name],
                    calls_per_s=0.0,
                    baseline=baseline,
                    note=note,
                    diagnostic=diagnostic,
                    extra=extra,
                )
            )
        return rounds

    def _compare_auto(self) -> None:
        from ._measure import throughput

        plan = self.plan
        contract = self._contract()
        self.meter.pids.append(contract.bundle.worker_pid)
        n, warmup = plan.round_n, plan.warmup
        cffi = self._server("serve-cffi", self.adder)
        call = functools.partial(contract.call, _cases.ADD_PRIMITIVE, _cases.ARGS, 4)
        raw = _cases.raw_call(contract)
        assert self._auto is not None  # _contract() started it
        typed, typed_kw = _cases.typed_calls(self._auto[0])
        sides = [
            cffi.side("inproc", n, warmup),
            _cases.local_side("isolated.auto", call, n, warmup),
            _cases.local_side("isolated.typed", typed, n, warmup),
            _cases.local_side("isolated.typed.kw", typed_kw, n, warmup),
            cffi.side("inproc.raw", n, warmup),
            _cases.local_side("isolated.auto.raw", raw, n, warmup),
            cffi.side("timer", n, warmup),
        ]
        polyplug = None
        if "polyplug" not in self.groups:
            pass
        elif not _cases.polyplug_available():
            self.skipped.append(
                {
                    "step": "polyplug",
                    "reason": "polyplug and polyplug-loaders-native are not installed (the compare extra)",
                }
            )
        else:
            polyplug = self._server("serve-polyplug", self.adder)
            sides += [polyplug.side("polyplug", n, warmup), polyplug.side("polyplug.ctypes", n, warmup)]
        rounds = self._compare_placed("auto", sides, contract.bundle.worker_pid)
        with self._pinned():
            rates = {
                name: cffi.calls_per_s(name, plan.throughput_n) for name in ("inproc", "inproc.raw", "timer")
            }
            rates["isolated.auto"] = throughput(call, plan.throughput_n)
            rates["isolated.auto.raw"] = throughput(raw, plan.throughput_n)
            rates["isolated.typed"] = throughput(typed, plan.throughput_n)
            rates["isolated.typed.kw"] = throughput(typed_kw, plan.throughput_n)
            if polyplug is not None:
                for name in ("polyplug", "polyplug.ctypes"):
                    rates[name] = polyplug.calls_per_s(name, plan.throughput_n)
        for name in rounds.sides:
            self.cases[name].calls_per_s = rates[name]

    def _compare_placed(self, key: str, sides: list[_rounds.Side], worker_pid: int) -> _rounds.Rounds:
        """``_compare`` with the worker on the other CPU, as the floor places its second process.

        Left to the scheduler, the spinning worker sometimes shares the host's
        CPU or moves during a round, and the ratio of a whole run moves with it
        (1.22-1.44x in nine quick runs, 1.61x in the tenth): the verdict would
        measure placement luck, not the call path.
        """
        if self.host_cpu is None:
            return self._compare(key, sides)
        _placement.pin_process(worker_pid, self.all_cpus - {self.host_cpu})
        try:
            return self._compare(key, sides)
        finally:
            _placement.pin_process(worker_pid, self.all_cpus)

    def _compare_batch(self) -> None:
        plan = self.plan
        contract = self._contract()
        repeats = plan.batch_round_repeats
        sides = [
            _cases.rate_side("call_packed", _cases.packed_call(contract, plan), repeats, plan.packed_records),
            _cases.rate_side("call_many", _cases.many_call(contract, plan), repeats, plan.list_records),
        ]
        rounds = self._compare("batch", sides, ("call_packed", "call_many"))
        for name, records in (("call_packed", plan.packed_records), ("call_many", plan.list_records)):
            case = self.cases[name]
            case.per = records
            case.calls_per_s = _rounds.spread(rounds.values(name) or rounds.values(name, False))["median"]

    def _compare_block(self) -> None:
        if self.host_cpu is None:  # None whenever fewer than two CPUs (see __init__)
            self.skipped.append(
                {"step": "wait=block vs the two-CPU floor", "reason": "needs two CPUs and pinning"}
            )
            return
        from polyplug_isolated import Runtime

        plan = self.plan
        other = {min(self.all_cpus - {self.host_cpu})}
        with Runtime(wait="block") as rt:
            rt.load_bundle(self.adder)
            contract = _cases.contract_of(rt, "test.add")
            # Placed as the floor places its two processes: host here, worker on the other CPU.
            _placement.pin_process(contract.bundle.worker_pid, other)
            call = functools.partial(contract.call, _cases.ADD_PRIMITIVE, _cases.ARGS, 4)
            n = plan.block_round_n
            sides = [
                _cases.floor_side(self.floor, "sem-2cpu", n, plan.budget_s, self.all_cpus),
                _cases.local_side("isolated.block", call, n, max(100, n // 20)),
            ]
            self.meter.pids.append(contract.bundle.worker_pid)
            try:
                rounds = self._compare("block", sides)
            finally:
                self.meter.pids.remove(contract.bundle.worker_pid)
        for name in rounds.sides:
            self.cases[name].calls_per_s = 1e9 / max(self.cases[name].stats()["mean_ns"], 1)

    def _threads(self, count: int) -> None:
        self._add(_cases.threads(self._contract(), count, self.plan))

    def _idle(self) -> None:
        contract = self._contract()
        self.idle = _cases.idle_worker(contract, contract.bundle.worker_pid, self.plan)

    def _close_auto(self) -> None:
        if self._auto is not None:
            if self._auto[1].worker_pid in self.meter.pids:
                self.meter.pids.remove(self._auto[1].worker_pid)
            self._auto[0].close()
            self._auto = None

    def _payload_inproc(self) -> None:
        self._add(self._p(_cases.inproc_payload, self.payload, self.plan))

    def _payload_isolated(self) -> None:
        largest = max(size for size, _ in self.plan.payload)
        rt = self._runtime("auto", arena_capacity=max(4 * 1024 * 1024, 2 * largest + 4096))
        try:
            rt.load_bundle(self.payload)
            contract = _cases.contract_of(rt, "test.payload")
            for size, n in self.plan.payload:
                self._add(self._p(_cases.payload, contract, size, n))
                _cases.collect()
        finally:
            rt.close()

    # -- the results -----------------------------------------------------------------

    def document(self, meta: dict[str, Any], leaked: list[tuple[int, str]]) -> dict[str, Any]:
        cases = []
        stats = {name: case.stats() for name, case in self.cases.items()}
        for name, case in self.cases.items():
            base = self.cases.get(case.baseline)
            ratio = None
            if "round_ratio" in case.extra:
                ratio = case.extra["round_ratio"]["median"]
            elif base is not None and case.kind == "throughput":
                ratio = case.calls_per_s / base.calls_per_s
            elif base is not None:
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
        targets = self._targets()
        contended = [
            f"{key}: {len(r.rounds) - len(r.clean())} of {len(r.rounds)} rounds disturbed"
            for key, r in self.comparisons.items()
            if len(r.clean()) < len(r.rounds)
        ]
        return {
            "meta": {**meta, "host_cpu": self.host_cpu, "contended": contended},
            "cases": cases,
            "targets": targets,
            "comparisons": {key: r.as_json() for key, r in self.comparisons.items()},
            "idle_worker": self.idle,
            "shapes": self.shapes,
            "steps": self.step_log,
            "skipped": self.skipped,
            "errors": self.errors,
            "leaked_workers": [{"pid": pid, "cmdline": cmd} for pid, cmd in leaked],
        }

    def _targets(self) -> list[dict[str, Any]]:
        out = []
        for target_id, case_name, text, kind, limit, key, num, den in TARGETS:
            entry: dict[str, Any] = {
                "id": target_id,
                "case": case_name,
                "text": text,
                "kind": kind,
                "limit": limit,
            }
            rounds = self.comparisons.get(key) if key else None
            if kind == "idle":
                if self.idle is not None:
                    measured = self.idle["percent_of_core"]
                    met = measured < limit
                    entry.update(
                        measured=measured,
                        met=met,
                        verdict="yes" if met else "NO",
                        measured_text=f"{'yes' if met else 'NO'} {measured:.3f}%",
                    )
            elif rounds is not None and num in rounds.sides and (den is None or den in rounds.sides):
                values = rounds.values(num) if den is None else rounds.ratios(num, den)
                result = _rounds.judge(kind, limit, rounds, values, self.plan.rounds)
                every = rounds.values(num, False) if den is None else rounds.ratios(num, den, False)
                result["all_rounds"] = _rounds.spread(every)
                entry.update(result)
                entry["measured"] = result.get("median")
                entry["measured_text"] = _rounds.verdict_text(kind, result)
            entry.setdefault("met", None)
            entry.setdefault("verdict", "n/a (not measured)")
            entry.setdefault("measured", None)
            entry.setdefault("measured_text", "n/a (not measured)")
            out.append(entry)
        return out
