"""Helpers for the drop-in tests: signed bundle copies, and one host script run on both runtimes.

A host script is run as it stands against polyplug_isolated (its import line
is ``from polyplug_isolated import polyplug  # SWITCH``) and, with that one
line replaced by ``import polyplug``, against the real polyplug 0.1.3 — each
in a subprocess, because polyplug runs plugins in its own process. Each run
prints one JSON document; the tests compare them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polyplug_isolated._signing import generate_signing_key, sign_bundle

ROOT = Path(__file__).resolve().parent.parent
SWITCH = "from polyplug_isolated import polyplug  # SWITCH"
PROBE_API = """
[[contract]]
name = "test.probe"
version = "1.0.0"

[[contract.functions]]
name = "generation"
return = "u32"

[[contract.functions]]
name = "add"
params = [{ name = "a", type = "u32" }, { name = "b", type = "u32" }]
return = "u32"
"""


def needs_polyplug() -> None:
    """Skips the test when the compare extra (the real polyplug 0.1.3) is not installed."""
    for name in ("polyplug", "polyplug_abi", "polyplug_loaders_native"):
        pytest.importorskip(name)


def bundle_copy(source: Path, dest: Path, *, key: bytes | None = None, api: str | None = None) -> Path:
    """A copy of a built bundle (so that signing never touches the shared build), signed with ``key``."""
    shutil.copytree(source, dest)
    if api is not None:
        (dest / "api.toml").write_text(api)
    if key is not None:
        sign_bundle(dest, key)
    return dest


def new_key() -> tuple[bytes, bytes]:
    return generate_signing_key()


def run_host(script: Path, runtime: str, *args: str, tmp_path: Path) -> dict:
    """Runs ``script`` against ``runtime`` ("isolated" or "polyplug"); returns its JSON output."""
    text = script.read_text()
    assert SWITCH in text, f"{script} has no `{SWITCH}` line"
    if runtime == "polyplug":
        text = text.replace(SWITCH, "import polyplug")
    path = tmp_path / f"{script.stem}_{runtime}.py"
    path.write_text(text)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if runtime == "polyplug":
        arch = {"x86_64": "x64", "aarch64": "arm64"}[os.uname().machine]
        spec = importlib.util.find_spec("polyplug")
        assert spec is not None and spec.submodule_search_locations
        package = Path(next(iter(spec.submodule_search_locations)))
        env["POLYPLUG_LIB"] = str(package / "_native" / f"linux-{arch}" / "libpolyplug.so")
    done = subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, f"{runtime} host failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
