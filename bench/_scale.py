"""Worker start-up and scale: how fast a worker is ready, what it costs, and 1,000 bundles at once.

``python -m bench._scale`` (``--bundles N``, ``--repeats N``, ``--json PATH``).

Start-up (the adder fixture, a warm runtime): load, reload, and restart after
a crash (SIGKILL -> serving again: the RESTARTED event, RestartPolicy(backoff=0)), each as p50/p90
of ``--repeats`` runs, in both configurations: the default, where a load
takes the spare worker forked (and contained) ahead, which the pause before
each step (``SETTLE_S``) leaves time to refill, and ``spare_worker=False``,
where each load forks its worker; the private memory (USS) of each forked
worker. The back-to-back row loads ``--repeats`` bundles in a row, each
finding the spare its predecessor asked for still starting — the rate a host
loading many bundles at once gets. The
same load through a fresh worker program (what a bundle with
``library_path`` gets: the fork execs) and a C process start (posix_spawn of
/bin/true) are measured in the same run, interleaved, as references: on a
busy machine all three slow down together.

Scale: ``--bundles`` copies of adder under distinct names, loaded into one
runtime whose process starts with a soft fd limit of 1,024 (the common
default, which the runtime raises at need): total load time, workers'
memory, the host's fds and threads, per-call latency over all bundles vs one
(and vs the C floor of the same round robin over as many sleeping processes,
``spread_floor.c``, in the same rounds), and close().
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import os
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from polyplug_isolated import (
    BundleEvent,
    BundleEventKind,
    GuestContract,
    RestartPolicy,
    Runtime,
    bundle_id,
    guest_contract_id,
)
from polyplug_isolated._fixtures import build_fixtures

from ._floor import build

ADD = guest_contract_id("test.add", 1)
ADD_PRIMITIVE = 1
ARGS = struct.pack("<II", 2, 3)
EXPECTED = struct.pack("<I", 5)


def copies(source: Path, dest: Path, count: int, prefix: str = "") -> list[Path]:
    """``count`` copies of a fixture bundle (library included) under distinct names and ids."""
    made = []
    for index in range(count):
        name = f"{prefix}{source.name}{index:04d}"
        target = dest / name
        target.mkdir()
        shutil.copy(source / f"lib{source.name}.so", target)
        manifest = (source / "manifest.toml").read_text().splitlines()
        manifest[0:2] = [f"id = {bundle_id(name)}", f'name = "{name}"']
        (target / "manifest.toml").write_text("\n".join(manifest) + "\n")
        made.append(target)
    return made


def summary_ms(samples: list[float]) -> dict[str, float]:
    """p50/p90/min/max of samples in seconds, as milliseconds."""
    ms = sorted(s * 1e3 for s in samples)
    return {
        "p50": statistics.median(ms),
        "p90": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        "min": ms[0],
        "max": ms[-1],
        "n": len(ms),
    }


# Before each timed start-up step: one runtime's work in the background (its next spare
# starting, a reload's old worker unloading) must not land in the next step measured. The
# host ends each pause busy: a sleeping host lets its vCPU idle, and waking one costs the
# next step.
SETTLE_S = 0.01


AWAKE_S = 0.002


def settle(seconds: float) -> None:
    """Sleeps, then busy-waits the last ``AWAKE_S``: a host that spun in Python the whole pause
    would hold the GIL, and the monitor thread would run the work it was left (asking for the
    next spare) only when the interpreter forces a switch (every 5 ms) — after the next step."""
    until = time.perf_counter() + seconds
    time.sleep(max(0.0, seconds - AWAKE_S))
    while time.perf_counter() < until:
        pass


def timed(fn: Callable[[], object], pause: float = 0.0) -> float:
    settle(pause)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def c_process_start() -> float:
    """posix_spawn of /bin/true and its reaping: the floor of starting any process here."""
    start = time.perf_counter()
    pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
    os.waitpid(pid, 0)
    return time.perf_counter() - start


def uss(pid: int) -> int:
    """Private memory of the worker ``pid`` and its descendants (under containment a worker is
    three processes: the host's handle, its namespace's init, and the plugin's process)."""
    root = psutil.Process(pid)
    return sum(int(p.memory_full_info().uss) for p in (root, *root.children(recursive=True)))


# ---- start-up -----------------------------------------------------------------------------------


class _Restarts:
    """When a runtime's last restart ended: the RESTARTED event's own time.

    Taken in the event's callback, on the thread that restarted the bundle,
    not when the bench's thread wakes from waiting for it: the bundle serves
    from that moment, and the wake-up (0.1-0.2 ms here) is the bench's own.
    """

    def __init__(self) -> None:
        self.done = threading.Event()
        self.at = 0.0

    def on_event(self, event: BundleEvent) -> None:
        if event.kind is BundleEventKind.RESTARTED:
            self.at = time.perf_counter()
            self.done.set()


def startup(root: Path, work: Path, repeats: int) -> dict[str, Any]:
    """Load, reload and restart of adder with a spare forked ahead (the default) and on demand, each
    interleaved with a fresh worker program and a C process start; the USS of each kind of worker."""
    paths = {
        kind: copies(root / "adder", work, repeats, prefix=kind[0])
        for kind in ("ahead", "demand", "xec", "back-to-back")
    }
    no_deps = work / "no-deps"  # an empty library_path: it only makes the fork exec
    no_deps.mkdir()
    policy = RestartPolicy(max_restarts=repeats + 1, window=3600.0, backoff=0.0, jitter=0.0)
    restarted = {"ahead": _Restarts(), "demand": _Restarts()}
    runtimes = {
        kind: Runtime(spare_worker=kind == "ahead", restart=policy, on_event=restarts.on_event)
        for kind, restarts in restarted.items()
    }
    samples: dict[str, list[float]] = collections.defaultdict(list)
    memory: dict[str, list[int]] = collections.defaultdict(list)
    result: dict[str, Any] = {}
    try:
        for rt in runtimes.values():
            rt.unload_bundle(rt.load_bundle(root / "adder").id)  # the zygote is ready from here on
        for index in range(repeats):
            samples["c_process_start"].append(c_process_start())
            for kind, rt in runtimes.items():
                load = functools.partial(rt.load_bundle, paths[kind][index])
                samples[f"load_{kind}"].append(timed(load, SETTLE_S))
            exec_load = functools.partial(runtimes["demand"].load_bundle, library_path=[no_deps])
            samples["load_exec"].append(timed(functools.partial(exec_load, paths["xec"][index]), SETTLE_S))
        started = time.perf_counter()
        for path in paths["back-to-back"]:  # the spare cannot keep up: it drains
            samples["load_back_to_back"].append(timed(functools.partial(runtimes["ahead"].load_bundle, path)))
        result["back_to_back_loads_per_s"] = repeats / (time.perf_counter() - started)
        for rt in runtimes.values():
            for bundle in rt.bundles:
                memory["exec" if bundle.name.startswith("x") else "fork"].append(uss(bundle.pid))
        zygote = psutil.Process(runtimes["ahead"]._zygote.pid)
        result["zygote_rss_mb"] = zygote.memory_info().rss / 2**20
        result["zygote_uss_mb"] = zygote.memory_full_info().uss / 2**20
        for _ in range(repeats):
            for kind, rt in runtimes.items():
                reload = functools.partial(rt.reload_bundle, rt.bundles[0].path)
                samples[f"reload_{kind}"].append(timed(reload, SETTLE_S))
        for _ in range(repeats):
            for kind, rt in runtimes.items():
                restarted[kind].done.clear()
                settle(SETTLE_S)
                start = time.perf_counter()
                os.kill(rt.bundles[0].pid, signal.SIGKILL)
                if not restarted[kind].done.wait(10):
                    raise RuntimeError("the killed worker was not restarted within 10 s")
                samples[f"restart_{kind}"].append(restarted[kind].at - start)
    finally:
        for rt in runtimes.values():
            rt.close()
    result.update({f"{name}_ms": summary_ms(values) for name, values in samples.items()})
    result["uss_per_worker_mb"] = statistics.median(memory["fork"]) / 2**20
    result["uss_per_exec_worker_mb"] = statistics.median(memory["exec"]) / 2**20
    return result


# ---- scale ----------------------------------------------------------------------------------------


def call_latencies(contracts: list[GuestContract], calls: int, idle_ns: int) -> list[float]:
    """Seconds per call, cycling over ``contracts``; ``idle_ns`` of busy waiting before each, untimed."""
    samples = []
    clock = time.perf_counter_ns
    for index in range(calls):
        call = contracts[index % len(contracts)].call
        if idle_ns:
            until = clock() + idle_ns
            while clock() < until:
                pass
        start = clock()
        if call(ADD_PRIMITIVE, ARGS, 4) != EXPECTED:
            raise RuntimeError("add_primitive(2, 3) is not 5")
        samples.append((clock() - start) / 1e9)
    return samples


SPREAD_FLOOR = Path(__file__).resolve().parent / "spread_floor.c"


def spread_floor_ns(binary: Path, processes: int, rounds: int) -> int:
    """p50 of the C floor of a call spread over ``processes`` sleeping processes (spread_floor.c)."""
    command = [str(binary), str(processes), str(rounds)]
    proc = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    return int(json.loads(proc.stdout)["p50_ns"])


def scale(root: Path, work: Path, count: int, calls: int) -> dict[str, Any]:
    """``count`` bundles in one runtime: load, memory, fds, threads, call latency, close."""
    paths = copies(root / "adder", work, count, prefix="s")
    host = psutil.Process()
    soft_before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fds_before, threads_before = host.num_fds(), host.num_threads()
    rt = Runtime(prestart=True)
    try:
        rt.load_bundle(root / "adder")  # warm: the zygote is ready
        loads = [timed(functools.partial(rt.load_bundle, path)) for path in paths]
        fds, threads = host.num_fds(), host.num_threads()
        contracts = [
            c
            for c in (rt.resolve_guest_contract(h) for h in rt.find_all_by_contract(ADD, 1))
            if c.bundle.name.startswith("s")
        ]
        one, spread, one_idle, floor = [], [], [], []
        floor_binary = work / "spread_floor"
        build(SPREAD_FLOOR, floor_binary)
        for _ in range(5):  # interleaved rounds: contention hits all four alike
            one += call_latencies(contracts[:1], calls // 5, 0)
            spread += call_latencies(contracts, calls // 5, 0)
            one_idle += call_latencies(contracts[:1], calls // 5, 2 * rt.config.spin_ns)
            floor.append(spread_floor_ns(floor_binary, len(contracts), calls // 5))
        workers = [uss(c.bundle.pid) for c in contracts]
        host_rss = host.memory_info().rss
    except BaseException:
        rt.close()
        raise
    close_s = timed(rt.close)
    us = 1e6
    return {
        "bundles": count,
        "load_total_s": sum(loads),
        "load_ms": summary_ms(loads),
        "workers_uss_total_mb": sum(workers) / 2**20,
        "uss_per_worker_mb": statistics.median(workers) / 2**20,
        "host_rss_mb": host_rss / 2**20,
        "host_fds": fds,
        "host_fds_before": fds_before,
        "fd_soft_limit_before": soft_before,
        "fd_soft_limit_after": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "host_threads": threads,
        "host_threads_before": threads_before,
        "call_one_bundle_p50_us": statistics.median(one) * us,
        "call_spread_p50_us": statistics.median(spread) * us,
        "call_one_bundle_idle_worker_p50_us": statistics.median(one_idle) * us,
        "spread_c_floor_p50_us": statistics.median(floor) / 1e3,
        "close_s": close_s,
        "host_fds_after_close": host.num_fds(),
        "python_threads_after_close": threading.active_count(),
    }


# ---- report -----------------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    s, b = result["startup"], result["scale"]

    def row(label: str, stats: dict[str, float], target: str = "") -> str:
        p50, p90, top = stats["p50"], stats["p90"], stats["max"]
        return f"  {label:<44} p50 {p50:7.2f} ms  p90 {p90:7.2f}  max {top:7.2f}  {target}"

    lines = [
        f"start-up (adder, {s['load_ahead_ms']['n']} runs each; machine load {result['loadavg']})",
        row("load, spare forked ahead (default)", s["load_ahead_ms"], "target <= 3 ms"),
        row("load, default, back to back (drains the spare)", s["load_back_to_back_ms"])
        + f" {s['back_to_back_loads_per_s']:.0f}/s",
        row("load, forked on demand (spare_worker=False)", s["load_demand_ms"]),
        row("reload, spare forked ahead (default)", s["reload_ahead_ms"], "target <= 3 ms"),
        row("reload, forked on demand (spare_worker=False)", s["reload_demand_ms"]),
        row("restart after SIGKILL, spare (default)", s["restart_ahead_ms"], "target <= 3 ms + backoff 0"),
        row("restart after SIGKILL, on demand (no spare)", s["restart_demand_ms"]),
        row("load, fresh worker program (reference)", s["load_exec_ms"]),
        row("C process start, posix_spawn (reference)", s["c_process_start_ms"]),
        f"  USS per forked worker {s['uss_per_worker_mb']:.2f} MB (target <= 2 MB); "
        f"fresh worker program {s['uss_per_exec_worker_mb']:.2f} MB; "
        f"zygote RSS {s['zygote_rss_mb']:.1f} MB",
        f"scale ({b['bundles']} bundles in one runtime)",
        f"  load: {b['load_total_s']:.2f} s in all, p50 {b['load_ms']['p50']:.2f} ms, "
        f"max {b['load_ms']['max']:.1f} ms",
        f"  memory: workers' USS {b['workers_uss_total_mb']:.0f} MB in all "
        f"({b['uss_per_worker_mb']:.2f} MB each), host RSS {b['host_rss_mb']:.0f} MB",
        f"  host fds: {b['host_fds_before']} -> {b['host_fds']} (soft limit {b['fd_soft_limit_before']} -> "
        f"{b['fd_soft_limit_after']}); after close {b['host_fds_after_close']}",
        f"  host threads: {b['host_threads_before']} -> {b['host_threads']}; after close "
        f"{b['python_threads_after_close']} (Python's count)",
        f"  call p50: one bundle {b['call_one_bundle_p50_us']:.1f} us, "
        f"spread over all {b['call_spread_p50_us']:.1f} us, "
        f"one bundle whose worker went to sleep {b['call_one_bundle_idle_worker_p50_us']:.1f} us",
        f"  C floor of the spread: the same round robin over {b['bundles']} sleeping processes "
        f"(bench/spread_floor.c) {b['spread_c_floor_p50_us']:.1f} us",
        f"  close(): {b['close_s']:.2f} s (target <= 2 s)",
    ]
    return "\n".join(lines)


def run(bundles: int, repeats: int, calls: int) -> dict[str, Any]:
    """Both parts, on copies of adder in a temporary directory; lowers the soft fd limit to 1,024 first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))  # the common default
    root = build_fixtures()
    with tempfile.TemporaryDirectory(prefix="polyplug-scale-") as tmp:
        work = Path(tmp)
        (work / "startup").mkdir()
        (work / "scale").mkdir()
        return {
            "loadavg": " ".join(f"{v:.1f}" for v in os.getloadavg()),
            "startup": startup(root, work / "startup", repeats),
            "scale": scale(root, work / "scale", bundles, calls),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=int, default=1000, help="bundles in the scale run (default 1000)")
    parser.add_argument("--repeats", type=int, default=50, help="runs of each start-up step (default 50)")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per latency series (default 20000)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    # Each killed worker is logged as an error: lines that only slow the restarts down.
    logging.getLogger("polyplug_isolated").setLevel(logging.CRITICAL)
    result = run(args.bundles, args.repeats, args.calls)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
