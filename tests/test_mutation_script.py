"""The mutation check fails loudly when the code it breaks has moved, never passes silently."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "mutation.py"
spec = importlib.util.spec_from_file_location("ci_mutation", SCRIPT)
assert spec is not None and spec.loader is not None
mutation = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mutation  # its dataclasses look their module up
spec.loader.exec_module(mutation)


def test_every_anchor_is_in_the_code_exactly_once():
    root = SCRIPT.parent.parent
    for m in mutation.MUTATIONS:
        text = (root / m.file).read_text()
        for anchor, _ in m.edits:
            assert text.count(anchor) == 1, f"mutation {m.name}: anchor not in {m.file} once: {anchor!r}"
        for test in m.tests:
            assert (root / test.split("::")[0]).is_file(), f"mutation {m.name}: no {test}"


@pytest.mark.parametrize(
    ("text", "what"), [("nothing here\n", "not found"), ("x = 1\nx = 1\n", "found 2 times")]
)
def test_a_missing_or_repeated_anchor_stops_the_check(tmp_path, text, what):
    (tmp_path / "code.py").write_text(text)
    moved = mutation.Mutation("moved", "code.py", (("x = 1", "x = 2"),), ("tests/test_x.py",), "a test")
    with pytest.raises(SystemExit, match=f"mutation moved: anchor {what} in code.py"):
        mutation.apply(tmp_path, moved)
    assert (tmp_path / "code.py").read_text() == text  # nothing was half-applied


def test_an_anchor_found_once_is_replaced_and_the_original_returned(tmp_path):
    (tmp_path / "code.py").write_text("a = 1\nx = 1\n")
    original = mutation.apply(tmp_path, mutation.Mutation("m", "code.py", (("x = 1", "x = 2"),), (), ""))
    assert original == "a = 1\nx = 1\n"
    assert (tmp_path / "code.py").read_text() == "a = 1\nx = 2\n"
