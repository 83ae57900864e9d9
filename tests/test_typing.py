"""Type checkers see the real public API: py.typed, real names behind the lazy exports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

USER_CODE = """
from polyplug_isolated import Runtime, RestartPolicy, WorkerCrashed

with Runtime(restart=RestartPolicy(max_restarts=3)) as rt:
    bundle = rt.load_bundle(42)
    reveal_type(bundle)
    reveal_type(rt.contract("test.add").with_options(timeout=1.0))
    reveal_type(WorkerCrashed("x").report)
Runtime(restart=3)
"""


def test_mypy_sees_the_public_api(tmp_path):
    """Before: every public name was Any (module __getattr__, no py.typed): mypy accepted all of this."""
    (tmp_path / "user.py").write_text(USER_CODE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--no-error-summary",
            "user.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT)},  # mypy cannot follow an editable install's import hook
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert any('"load_bundle" of "Runtime" has incompatible type "int"' in line for line in lines), lines
    assert any('Revealed type is "polyplug_isolated._bundle.Bundle"' in line for line in lines), lines
    assert any('Revealed type is "polyplug_isolated._typed.TypedContract"' in line for line in lines), lines
    assert any('Revealed type is "str"' in line for line in lines), lines
    assert any(
        '"Runtime" has incompatible type "int"; expected "RestartPolicy | None"' in line for line in lines
    )
    assert (ROOT / "polyplug_isolated" / "py.typed").is_file()
