"""The C-to-C floor: builds ``floor.c`` with ``cc -O2`` into a temporary directory and runs it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from array import array
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "floor.c"
MODES = ("spin", "sem", "sem-1cpu", "sem-2cpu")


class FloorError(RuntimeError):
    pass


def build(source: Path, binary: Path) -> None:
    """Compiles one of the bench's C programs with ``cc -O2`` (``$CC`` if set)."""
    cmd = [
        *shlex.split(os.environ.get("CC", "cc")),
        "-std=c11",
        "-O2",
        "-Wall",
        "-Wextra",
        "-o",
        str(binary),
        str(source),
        "-lpthread",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FloorError(f"cannot run the C compiler: {exc}") from exc
    if proc.returncode != 0:
        raise FloorError(f"{shlex.join(cmd)} failed:\n{proc.stderr}")


class Floor:
    """A built floor binary in a temporary directory (removed by ``close``)."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="polyplug-bench-floor-")
        self.binary = Path(self._tmp.name) / "floor"
        try:
            build(SOURCE, self.binary)
        except FloorError:
            self.close()
            raise

    def run(self, mode: str, rounds: int, warmup: int, budget_s: float) -> tuple[array, dict]:
        """(ns per round trip samples, the binary's JSON summary); stops after ``budget_s``."""
        samples_path = Path(self._tmp.name) / f"{mode}.bin"
        budget_ms = max(1, int(budget_s * 1000))
        cmd = [str(self.binary), mode, str(rounds), str(warmup), str(samples_path), str(budget_ms)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            raise FloorError(f"floor {mode} exited with {proc.returncode}: {proc.stderr.strip()}")
        samples = array("Q")
        with open(samples_path, "rb") as f:
            samples.frombytes(f.read())
        samples_path.unlink()
        summary = json.loads(proc.stdout)
        if not 0 < len(samples) == summary["rounds"] <= rounds:
            raise FloorError(f"floor {mode}: {len(samples)} samples, {summary['rounds']} rounds reported")
        return samples, summary

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> Floor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
