"""Every call shape against its in-process equivalent, interleaved: ``python -m bench._shapes``.

Each case is timed in rounds; a round runs the in-process side, then the
isolated side (the order swaps every round), so that both see the same load
on a shared machine. A round's ratio is isolated p50 over in-process p50
(for call_many: calls/s); the table gives the median ratio, the range over
the rounds and how many rounds met the target (issue 15 asks for 9 of 10).

The in-process sides run in one child process per bundle (``--inproc``): the
worker's own dispatch (``_serve_ffi``) loads the bundle there, and each call
goes through one cffi call of ``ppw_invoke`` with Python ints in and Python
values (or bytes) out, the way a host using cffi would call the plugin.

Options: ``--rounds N`` (10), ``--quick`` (smaller rounds), ``--json PATH``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
BATCH = 10  # calls per timed sample of a latency case (spreads the timer's cost)
PAIRS = [(i, i + 1) for i in range(10_000)]
SOURCE = bytes(range(256)) * (MiB // 256)


@dataclass(frozen=True)
class Shape:
    """One row: the isolated case, its in-process counterpart, and the target."""

    name: str
    label: str
    bundle: str  # the in-process child that runs the counterpart
    kind: str  # "latency" (ratio of p50s, at most limit) or "rate" (calls/s, at least limit)
    limit: float
    calls: int  # per round (latency: calls; rate: repetitions of PAIRS)
    diagnostic: bool = False


SHAPES = (
    Shape("raw_out4", "raw call, out 4 B (add)", "shapes", "latency", 1.3, 20_000),
    Shape("raw_out8", "raw call, out 8 B (mul)", "shapes", "latency", 1.3, 20_000),
    Shape("raw_out64", "raw call, out 64 B (digest)", "shapes", "latency", 1.3, 20_000),
    Shape("typed_add", "typed add(u32, u32) -> u32", "shapes", "latency", 1.3, 20_000),
    Shape("typed_mul", "typed mul(u64, u64) -> u64", "shapes", "latency", 1.3, 20_000),
    Shape("typed_stamp", "typed stamp(Point, StringView, Buffer) -> u64", "shapes", "latency", 1.5, 10_000),
    Shape("echo_1mib", "1 MiB echo, zero-copy buffers()", "payload", "latency", 1.5, 200),
    Shape("many_tuples", "add.many(10k tuples), calls/s", "shapes", "rate", 15e6, 20),
    Shape(
        "cffi_small", "diagnostic: raw out 4 B via cffi pp_call_small", "shapes", "latency", 1.3, 20_000, True
    ),
)


# ---- timing ------------------------------------------------------------------------


def p50_ns(fn: Callable[[], object], calls: int, per: int) -> float:
    """The median ns per call over samples of ``per`` back-to-back calls."""
    clock = time.perf_counter_ns
    for _ in range(max(1, calls // 10)):
        fn()
    samples = []
    for _ in range(max(1, calls // per)):
        t0 = clock()
        for _ in range(per):
            fn()
        samples.append((clock() - t0) / per)
    return statistics.median(samples)


def rate(fn: Callable[[], object], repeats: int, calls_per_fn: int) -> float:
    """Calls per second of ``repeats`` runs of ``fn`` (the best quarter, as noise only slows)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    times.sort()
    return calls_per_fn / (statistics.median(times[: max(1, len(times) // 4)]) / 1e9)


def measure(shape: Shape, fn: Callable[[], object], calls: int) -> float:
    gc.collect()
    if shape.kind == "rate":
        return rate(fn, calls, len(PAIRS))
    return p50_ns(fn, calls, 1 if shape.bundle == "payload" else BATCH)


# ---- the in-process side (a child process per bundle) ---------------------------------


def inproc_calls(bundle: str) -> dict[str, Callable[[], object]]:
    """The in-process counterparts, over the worker's own dispatch loaded into this process."""
    sys.path.insert(0, str(ROOT))
    from bench._inproc import _load_serve_ffi
    from polyplug_isolated._fixtures import fixture_path

    ffi, lib = _load_serve_ffi(fixture_path(bundle), bundle)
    invoke = lib.ppw_invoke
    err = ffi.new("AbiError *")
    if bundle == "payload":
        args = bytearray(8 + MiB)
        args[:8] = MiB.to_bytes(8, "little")
        out = bytearray(MiB)
        args_c, out_c, args_view, out_view = (
            ffi.from_buffer(args),
            ffi.from_buffer(out),
            memoryview(args),
            memoryview(out),
        )

        def echo_1mib() -> object:
            args_view[8:] = SOURCE
            invoke(0, 0, args_c, out_c, err)
            if err.code:
                raise RuntimeError(f"echo failed: {err.code}")
            return out_view[-1]

        return {"echo_1mib": echo_1mib}

    u32, u64 = ffi.new("uint32_t[2]"), ffi.new("uint64_t[2]")
    out32, out64, digest = ffi.new("uint32_t *"), ffi.new("uint64_t *"), ffi.new("char[64]")
    mul_args, digest_args = struct.pack("=QQ", 6, 7), struct.pack("=Q", 3)
    add_args = struct.pack("=II", 2, 3)
    unpack = ffi.unpack

    def raw(fn: int, args: bytes, size: int) -> Callable[[], bytes]:
        def call() -> bytes:
            invoke(0, fn, args, digest, err)
            if err.code:
                raise RuntimeError(f"function {fn} failed: {err.code}")
            return unpack(digest, size)

        return call

    def add(a: int, b: int) -> int:
        u32[0] = a
        u32[1] = b
        invoke(0, 0, u32, out32, err)
        if err.code:
            raise RuntimeError(f"add failed: {err.code}")
        return out32[0]

    def mul(a: int, b: int) -> int:
        u64[0] = a
        u64[1] = b
        invoke(0, 1, u64, out64, err)
        if err.code:
            raise RuntimeError(f"mul failed: {err.code}")
        return out64[0]

    record = bytearray(56)
    record_c = ffi.from_buffer(record)
    pack_into = struct.Struct("=iidQQQQQ").pack_into
    address = lambda cdata: int(ffi.cast("uintptr_t", cdata))  # noqa: E731

    def stamp(at: Point, label: str, data: bytes) -> int:
        text = label.encode()
        text_c, data_c = ffi.from_buffer(text), ffi.from_buffer(data)
        pack_into(
            record, 0, at.x, at.y, at.scale, address(text_c), len(text), address(data_c), len(data), len(data)
        )
        invoke(0, 3, record_c, out64, err)
        if err.code:
            raise RuntimeError(f"stamp failed: {err.code}")
        return out64[0]

    point, data = Point(1, 2, 3.0), b"d" * 64

    def many() -> list[int]:
        return [add(a, b) for a, b in PAIRS]

    fast = raw(0, add_args, 4)
    return {
        "raw_out4": fast,
        "raw_out8": raw(1, mul_args, 8),
        "raw_out64": raw(2, digest_args, 64),
        "typed_add": lambda: add(2, 3),
        "typed_mul": lambda: mul(6, 7),
        "typed_stamp": lambda: stamp(point, "label", data),
        "many_tuples": many,
        "cffi_small": fast,
    }


@dataclass
class Point:
    x: int
    y: int
    scale: float


def serve_inproc(bundle: str) -> None:
    """The child: one JSON request per line ({"case", "calls"}), one JSON answer per line."""
    calls = inproc_calls(bundle)
    shapes = {shape.name: shape for shape in SHAPES}
    print(json.dumps({"ready": sorted(calls)}), flush=True)
    gc.disable()
    for line in sys.stdin:
        request = json.loads(line)
        shape = shapes[request["case"]]
        print(json.dumps({"value": measure(shape, calls[shape.name], request["calls"])}), flush=True)


class Child:
    """A running ``--inproc`` child."""

    def __init__(self, bundle: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench._shapes", "--inproc", bundle],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        json.loads(self.process.stdout.readline())

    def measure(self, case: str, calls: int) -> float:
        self.process.stdin.write(json.dumps({"case": case, "calls": calls}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["value"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


# ---- the isolated side ---------------------------------------------------------------


def isolated_calls(rt) -> dict[str, Callable[[], object]]:
    from polyplug_isolated._channel_ffi import lib

    from polyplug_isolated import guest_contract_id
    from polyplug_isolated._fixtures import fixture_path

    rt.load_bundle(fixture_path("shapes"))
    rt.load_bundle(fixture_path("payload"))
    typed = rt.contract("test.shapes", api=fixture_path("shapes") / "api.toml")
    shapes = typed.contract
    payload = rt.resolve_guest_contract(rt.find_guest_contract(guest_contract_id("test.payload", 1), 1))
    mul_args, digest_args = struct.pack("=QQ", 6, 7), struct.pack("=Q", 3)
    add_args = struct.pack("=II", 2, 3)
    call = shapes.call
    add, mul, stamp = typed.add, typed.mul, typed.stamp
    point, data = typed.types.Point(1, 2, 3.0), b"d" * 64
    header = MiB.to_bytes(8, "little")

    def echo_1mib() -> object:
        with payload.buffers(0, 8 + MiB, MiB) as in_place:
            in_place.args[:8] = header
            in_place.args[8:] = SOURCE
            return in_place()[-1]

    shapes.call(0, add_args, 4)  # takes the thread's lease
    proxy, _, index = shapes.route()
    small = lib.pp_call_small
    cffi_conn = proxy.channel.conn
    checks = {
        "raw_out4": (lambda: call(0, add_args, 4), struct.pack("=I", 5)),
        "raw_out8": (lambda: call(1, mul_args, 8), struct.pack("=Q", 42)),
        "raw_out64": (lambda: call(2, digest_args, 64), struct.pack("=8Q", *[3 * k for k in range(1, 9)])),
        "typed_add": (lambda: add(2, 3), 5),
        "typed_mul": (lambda: mul(6, 7), 42),
        "typed_stamp": (lambda: stamp(point, "label", data), None),
        "echo_1mib": (echo_1mib, SOURCE[-1]),
        "many_tuples": (lambda: add.many(PAIRS), [a + b for a, b in PAIRS]),
        "cffi_small": (lambda: small(cffi_conn, index, 0, add_args, 8, 4, -1.0), 5),
    }
    for name, (fn, expected) in checks.items():
        if expected is not None and fn() != expected:
            raise SystemExit(f"bench._shapes: {name} answered {fn()!r}, not {expected!r}")
    return {name: fn for name, (fn, _) in checks.items()}


# ---- the run -------------------------------------------------------------------------


def run(rounds: int, quick: bool) -> dict:
    from polyplug_isolated import Runtime

    children = {bundle: Child(bundle) for bundle in ("shapes", "payload")}
    rows = []
    try:
        with Runtime() as rt:
            calls = isolated_calls(rt)
            gc.disable()
            for shape in SHAPES:
                n = max(2, shape.calls // 10) if quick else shape.calls
                pairs = []
                for r in range(rounds):
                    sides = ("inproc", "isolated") if r % 2 == 0 else ("isolated", "inproc")
                    got = {}
                    for side in sides:
                        if side == "inproc":
                            got[side] = children[shape.bundle].measure(shape.name, n)
                        else:
                            got[side] = measure(shape, calls[shape.name], n)
                    pairs.append((got["inproc"], got["isolated"]))
                rows.append(_row(shape, pairs))
                print(_line(rows[-1]), flush=True)
            gc.enable()
    finally:
        for child in children.values():
            child.close()
    return {"rounds": rounds, "quick": quick, "load_avg": os.getloadavg(), "cases": rows}


def _row(shape: Shape, pairs: list[tuple[float, float]]) -> dict:
    if shape.kind == "rate":
        values = [iso for _, iso in pairs]
        met = [v >= shape.limit for v in values]
    else:
        values = [iso / inproc for inproc, iso in pairs]
        met = [v <= shape.limit for v in values]
    return {
        "name": shape.name,
        "label": shape.label,
        "kind": shape.kind,
        "limit": shape.limit,
        "diagnostic": shape.diagnostic,
        "median": statistics.median(values),
        "low": min(values),
        "high": max(values),
        "met": sum(met),
        "rounds": len(values),
        "inproc": [inproc for inproc, _ in pairs],
        "isolated": [iso for _, iso in pairs],
    }


def _line(row: dict) -> str:
    if row["kind"] == "rate":
        value = f"{row['median'] / 1e6:6.1f} M/s ({row['low'] / 1e6:.1f}-{row['high'] / 1e6:.1f})"
        target = f">= {row['limit'] / 1e6:.0f} M/s"
    else:
        value = f"{row['median']:5.2f}x ({row['low']:.2f}-{row['high']:.2f})"
        target = f"<= {row['limit']}x"
        iso = statistics.median(row["isolated"])
        value += f"  isolated p50 {iso:,.0f} ns"
    return f"{row['label']:<48} {value:<44} target {target:<10} met {row['met']}/{row['rounds']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._shapes", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--inproc", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inproc:
        serve_inproc(args.inproc)
        return 0
    print(f"bench._shapes: {args.rounds} interleaved rounds per case; load average {os.getloadavg()[0]:.1f}")
    report = run(args.rounds, args.quick)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
