"""``python -m bench``: measure, then print the table and write the JSON and the plot.

Exit status: 0 after a complete run (targets are reported, not asserted),
1 when a step failed or a worker process outlived the run, 2 for a missing
dependency or bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
GROUPS = (
    "floor",
    "polyplug",
    "pipe",
    "isolated",
    "batch",
    "threads",
    "idle",
    "payload",
    "callbacks",
    "sandbox",
    "shapes",
)
# Run only when asked for (--only shapes): bench._shapes interleaves its own rounds.
OPT_IN = {"shapes"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark polyplug_isolated against in-process calls, polyplug 0.1.3, "
        "multiprocessing.Pipe and the C-to-C floor (the adder and payload fixtures).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sample counts: seconds on a quiet machine (the CI smoke test)",
    )
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
        help="pin nothing: the measuring thread, the baselines and wait=block's worker stay "
        "where the scheduler puts them (the wait=block target is then skipped)",
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
    from ._runner import Runner

    started = time.perf_counter()
    plan = _cases.Plan.make(args.quick)
    runner = Runner(
        plan, args.groups, progress=lambda total: Progress(total, not args.no_progress), pin=not args.no_pin
    )
    try:
        runner.run()
    finally:
        runner.close()
    leaked = _cases.worker_children()
    document = runner.document(_meta(plan, time.perf_counter() - started), leaked)

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
        "plan": {
            **vars(plan),
            "payload": [list(p) for p in plan.payload],
            "rounds": dataclasses.asdict(plan.rounds),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
