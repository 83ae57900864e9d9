"""Mutation check: each deliberate breakage of the code must make the suite fail.

    python .ci/mutation.py [--keep] [NAME ...]

Copies the tree (tracked and new files, no build products) to a scratch
directory, builds its C hot path there, and checks that the chosen tests pass
on the unbroken copy. Then, for each mutation, it edits one small named
fragment of the copy, rebuilds when the fragment is C, runs the tests that
guard it and expects them to FAIL; then it puts the fragment back.

Every mutation is anchored on an exact code fragment that must occur exactly
once: when the code it targets has moved or changed, the check says
"mutation X: anchor not found" and fails, rather than passing without having
broken anything. Exit status 0 only when the unbroken copy passes and every
mutation was caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    edits: tuple[tuple[str, str], ...]  # (anchor, replacement), each anchor exactly once in file
    tests: tuple[str, ...]  # pytest arguments: the tests that must catch it
    why: str


MUTATIONS = (
    Mutation(
        "layout-width",
        "polyplug_isolated/_layout.py",
        (('    "u16": "uint16_t",', '    "u16": "uint32_t",'), ('    "u16": "H",', '    "u16": "I",')),
        (
            "tests/test_layout.py::test_fixture_layouts_match_the_fixtures_own_c",
            "tests/test_typed.py::test_isolated_calls_answer_as_in_process_calls",
        ),
        "u16 laid out as 4 bytes, consistently in the declarations and the formats",
    ),
    Mutation(
        "answer-count",
        "polyplug_isolated/_channel.c",
        (("*(volatile uint32_t *)&s->answers != hs->answers + 1", "0"),),
        ("tests/test_isolation.py::test_a_forged_answer_is_caught",),
        "the host no longer checks that each slot answers exactly once",
    ),
    Mutation(
        "drain",
        "polyplug_isolated/_proxy.py",
        (("drained = self.channel.wait_drained(drain_timeout)", "drained = True"),),
        ("tests/test_unload.py",),
        "unload stops the worker without waiting for the calls in flight",
    ),
    Mutation(
        "crash-wake-up",
        "polyplug_isolated/_channel.py",
        (("lib.pp_conn_mark_dead(self.conn)", "pass"),),
        ("tests/test_crash.py",),
        "callers blocked on a worker that died are not woken",
    ),
    Mutation(
        "reroute-on-reload",
        "polyplug_isolated/_contract.py",
        (
            (
                "failure.status == lib.PP_CALL_UNAVAILABLE and self._bundle.proxy not in (None, proxy)",
                "False",
            ),
        ),
        ("tests/test_isolation.py::test_reload_back_and_forth_under_load_loses_no_call",),
        "a call a reload turned away is not retried on the new worker",
    ),
    Mutation(
        "routes-follow-reload",
        "polyplug_isolated/_callbacks.py",
        (("            _cbroutes.drop(owner)", "            pass"),),
        ("tests/test_callback_routes.py::test_forwarded_calls_follow_a_reload_of_the_callee",),
        "a reload leaves the routes of calls between bundles pointing at the old worker",
    ),
)
# pytest's exit status when tests ran and some failed, or a hung one was ended by
# pytest-timeout's thread method; 2-5 (interrupted, internal or usage error, no
# tests collected) mean the check itself is broken, not that it caught anything.
CAUGHT = {1}
TIMEOUT_S = 30


def scratch_copy(target: Path) -> None:
    """The tree as git sees it (tracked and untracked, not ignored), without build products."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            destination = target / os.fsdecode(name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    # The package maps polyplug_isolated.worker to worker/ (pyproject); on the path the same.
    (target / "polyplug_isolated" / "worker").symlink_to(target / "worker", target_is_directory=True)


def build(tree: Path) -> None:
    """Compiles both cffi modules of the hot path into the scratch tree."""
    script = (
        "import sys; sys.path.insert(0, 'polyplug_isolated'); import _build_ffi as b; "
        "b.host_ffi.compile(tmpdir='.', verbose=False); b.worker_ffi.compile(tmpdir='.', verbose=False)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tree, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"building the scratch copy's C hot path failed (cffi needs setuptools):\n{proc.stderr}")


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--timeout={TIMEOUT_S}",
        "--timeout-method=thread",  # a call blocked in C never sees the signal method's SIGALRM
        "--hypothesis-seed=0",
        *tests,
    ]
    proc = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


def apply(tree: Path, mutation: Mutation) -> str:
    """Edits the file in ``tree``; returns its original text. Exits when an anchor is not there once."""
    path = tree / mutation.file
    original = path.read_text()
    text = original
    for anchor, replacement in mutation.edits:
        count = text.count(anchor)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            sys.exit(f"mutation {mutation.name}: anchor {where} in {mutation.file}: {anchor!r}")
        text = text.replace(anchor, replacement)
    path.write_text(text)
    return original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", help=f"mutations to run (default: all of {[m.name for m in MUTATIONS]})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress as it happens, also in a CI log
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s): {sorted(unknown)}")

    tree = Path(tempfile.mkdtemp(prefix="polyplug-mutation-"))
    try:
        scratch_copy(tree)
        # Anchors first: a moved fragment fails before anything slow runs.
        for mutation in chosen:
            (tree / mutation.file).write_text(apply(tree, mutation))
        build(tree)
        every_test = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        started = time.monotonic()
        status, last = run_tests(tree, every_test)
        outcome = "passes" if status == 0 else "FAILS"
        print(f"unbroken copy: {outcome} ({time.monotonic() - started:.0f} s): {last}")
        if status != 0:
            print("the guarding tests fail without any mutation: the check means nothing", file=sys.stderr)
            return 1
        missed = []
        for mutation in chosen:
            original = apply(tree, mutation)
            started = time.monotonic()
            try:
                if mutation.file.endswith(".c"):
                    build(tree)
                status, last = run_tests(tree, mutation.tests)
            finally:
                (tree / mutation.file).write_text(original)
                if mutation.file.endswith(".c"):
                    build(tree)
            caught = status in CAUGHT
            if not caught:
                missed.append(mutation.name)
            verdict = "caught" if caught else f"MISSED (pytest exit {status})"
            took = time.monotonic() - started
            print(f"mutation {mutation.name}: {verdict} ({took:.0f} s), {mutation.why}: {last}")
        if missed:
            print(f"mutations the suite did not catch: {missed}", file=sys.stderr)
            return 1
        print(f"all {len(chosen)} mutations caught")
        return 0
    finally:
        if args.keep:
            print(f"scratch tree kept at {tree}")
        else:
            shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
