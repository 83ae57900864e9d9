"""README.md cannot drift: every ```python block runs; the plugin guide builds, checks and calls its plugin.

Blocks fenced ```python illustrative (a sketch that cannot run from the
repository root) are skipped. Each block runs in its own interpreter from the
repository root, with the fixtures and the guide's example plugin built.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.M | re.S)


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, code) of every block fenced exactly ```<language>."""
    return [
        (README.count("\n", 0, m.start()) + 1, m["body"])
        for m in FENCE.finditer(README)
        if m["info"].strip() == language
    ]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False, **kwargs
    )


@pytest.fixture(scope="module")
def guide_build() -> subprocess.CompletedProcess[str]:
    """The guide's shell block that compiles and checks the example plugin, run as written."""
    (script,) = [code for _, code in blocks("sh") if "libcalc.so" in code]
    return run(["bash", "-euo", "pipefail", "-c", script])


def test_the_plugin_guide_builds_and_checks_its_plugin(guide_build):
    assert guide_build.returncode == 0, guide_build.stderr
    assert "build/calc: no problems" in guide_build.stdout
    for name in ("calc.c", "manifest.toml", "api.toml"):
        assert (ROOT / "examples" / "plugin" / name).is_file()


def test_the_guide_shows_the_plugin_as_it_is():
    """The C, manifest and api.toml in the guide are the files the build compiles."""
    shown = {info: body for info, body in ((m["info"].strip(), m["body"]) for m in FENCE.finditer(README))}
    for info, name in (("c", "calc.c"), ("toml manifest", "manifest.toml"), ("toml api", "api.toml")):
        assert shown[info] == (ROOT / "examples" / "plugin" / name).read_text(encoding="utf-8"), name


PYTHON_BLOCKS = blocks("python")


@pytest.mark.parametrize(
    ("line", "code"), PYTHON_BLOCKS, ids=[f"README.md:{line}" for line, _ in PYTHON_BLOCKS]
)
def test_readme_python_block_runs(line, code, fixtures_root, guide_build):
    assert guide_build.returncode == 0, guide_build.stderr
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, f"README.md:{line} failed:\n{result.stderr[-3000:]}"


def test_blocks_are_found():
    assert len(PYTHON_BLOCKS) >= 5
    assert all("python illustrative" not in code for _, code in PYTHON_BLOCKS)


def test_the_shipped_header_cites_nothing_missing():
    """Before: polyplug_abi.h cited ../shared/ABI.md, a file outside the repository."""
    header = (ROOT / "worker" / "polyplug_abi.h").read_text(encoding="utf-8")
    cited = re.findall(r"[\w./-]+\.md\b", header)
    for name in cited:
        assert (ROOT / "worker" / name).exists() or (ROOT / name).exists(), name
    assert "README.md" in cited
