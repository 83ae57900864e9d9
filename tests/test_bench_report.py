"""The bench's verdict rules and its report: ranges decide, disturbed rounds do not count,
the table fits the terminal, the plot has legends, byte units and a contended-run mark."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("hdrh.histogram", reason="the bench needs hdrhistogram (pip install -e '.[bench]')")

from bench import _report, _rounds

PLAN = _rounds.RoundPlan(rounds=4, min_clean=3, max_rounds=8)


class ScriptedMeter:
    """Stands in for RoundMeter: round k is disturbed when ``disturbed[k]`` is true."""

    def __init__(self, disturbed: list[bool]):
        self._disturbed = iter(disturbed)

    def start(self) -> None:
        pass

    def stop(self) -> dict:
        return {"disturbed": "steal 0.50 cores" if next(self._disturbed) else ""}


def side(name: str, values: list[float]) -> _rounds.Side:
    it = iter(values)
    return _rounds.Side(name, lambda: (next(it), None))


def rounds_of(ratios: list[float], disturbed: list[bool] | None = None) -> _rounds.Rounds:
    meter = ScriptedMeter(disturbed or [False] * len(ratios))
    plan = _rounds.RoundPlan(rounds=len(ratios), min_clean=3, max_rounds=len(ratios))
    return _rounds.alternate([side("a", ratios), side("b", [1.0] * len(ratios))], plan, meter)


def test_sides_alternate_and_disturbed_rounds_are_made_up_for():
    # 4 planned rounds, the 2nd and 3rd disturbed: two more run to reach 3 clean ones... and stop there.
    disturbed = [False, True, True, False, False, False, False, False]
    rounds = _rounds.alternate(
        [side("a", list(range(1, 9))), side("b", [1.0] * 8)], PLAN, ScriptedMeter(disturbed)
    )
    assert [r["order"] for r in rounds.rounds] == [["a", "b"], ["b", "a"]] * 2 + [["a", "b"]]
    assert len(rounds.rounds) == 5 and len(rounds.clean()) == 3
    assert rounds.values("a") == [1, 4, 5]  # the disturbed rounds 2 and 3 do not count
    assert rounds.values("a", clean=False) == [1, 2, 3, 4, 5]


def test_rounds_stop_at_the_cap_when_too_few_are_clean():
    rounds = _rounds.alternate([side("a", [1.0] * 8)], PLAN, ScriptedMeter([True] * 8))
    assert len(rounds.rounds) == PLAN.max_rounds and rounds.clean() == []
    result = _rounds.judge("ratio", 1.5, rounds, rounds.values("a"), PLAN)
    assert result["verdict"] == "n/a (disturbed)" and result["met"] is None
    assert result["disturbed_by"] == ["steal 0.50 cores"]


@pytest.mark.parametrize(
    ("kind", "limit", "ratios", "verdict"),
    [
        ("ratio", 1.5, [1.2, 1.3, 1.25, 1.28, 1.31], "yes"),  # the whole range within
        ("ratio", 1.5, [1.6, 1.7, 1.65, 1.9, 1.62], "NO"),  # the whole range beyond
        ("ratio", 1.5, [1.3, 1.45, 1.55, 1.6, 1.4], "unclear"),  # straddles: no flipping yes/no
        ("ratio", 1.3, [1.2, 1.25, 1.3, 1.28, 1.3], "yes"),  # at most the limit
        ("faster", 1.0, [0.4, 0.45, 0.42, 0.44, 0.41], "yes"),
        ("faster", 1.0, [0.9, 0.95, 1.0, 1.0, 1.0], "unclear"),  # not below the limit all the way
        ("rate", 20e6, [90e6, 95e6, 60e6, 99e6, 92e6], "yes"),
        ("rate", 20e6, [15e6, 18e6, 19e6, 12e6, 16e6], "NO"),
    ],
)
def test_a_verdict_needs_the_whole_range_on_one_side(kind, limit, ratios, verdict):
    rounds = rounds_of(ratios)
    result = _rounds.judge(kind, limit, rounds, rounds.ratios("a", "b"), PLAN)
    assert result["verdict"] == verdict
    assert result["met"] is {"yes": True, "NO": False}.get(verdict)
    assert result["low"] <= result["median"] <= result["high"]


def test_the_spread_is_the_interquartile_range():
    assert _rounds.spread([1, 2, 3, 4, 100]) == {"median": 3, "low": 2, "high": 4, "n": 5}
    assert _rounds.spread([2.0, 1.0]) == {"median": 1.5, "low": 1.0, "high": 2.0, "n": 2}


# ---- the report ---------------------------------------------------------------------

LONG = "isolated, wait=block, placement left to the scheduler (diag)"


def case(name, label, group="isolated", p50=700.0, **extra) -> dict:
    return {
        "name": name,
        "label": label,
        "group": group,
        "kind": "latency",
        "baseline": "inproc",
        "p50_ns": p50,
        "p99_ns": 2 * p50,
        "p999_ns": 3 * p50,
        "calls_per_s": 1e9 / p50,
        "ratio": p50 / 350,
        **extra,
    }


def document(contended: list[str]) -> dict:
    cases = [
        case("inproc", "in-process, C shim (baseline)", "baseline", 350.0),
        case(
            "isolated.auto",
            "isolated, wait=auto",
            round_ratio={"median": 2.0, "low": 1.9, "high": 2.1, "n": 9},
        ),
        case("isolated.block.unplaced", LONG, p50=2600.0),
    ]
    for size, (inproc, isolated) in {8: (350, 1600), 4096: (420, 3500), 1 << 20: (1e5, 1e6)}.items():
        cases.append(case(f"payload.inproc.{size}", f"echo {size}, in-process", "payload", inproc, size=size))
        cases.append(
            case(f"payload.isolated.{size}", f"echo {size}, isolated", "payload", isolated, size=size)
        )
    for threads in (1, 2, 4, 8):
        cases.append(
            case(f"threads.{threads}", f"isolated, auto, {threads} threads", "threads", threads=threads)
        )
    targets = [
        {
            "id": "auto_vs_inproc",
            "text": "p50 ≤ 1.5x in-process",
            "case": "isolated.auto",
            "verdict": "NO",
            "met": False,
            "measured_text": "NO 2.00x [1.90x-2.10x]",
        }
    ]
    return {
        "meta": {
            "quick": True,
            "wall_s": 9.0,
            "host_cpu": 1,
            "contended": contended,
            "cpu_model": "cpu",
            "cpus": 2,
        },
        "cases": cases,
        "targets": targets,
        "idle_worker": None,
        "steps": [],
        "skipped": [],
        "errors": [],
        "leaked_workers": [],
    }


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_table_fits_the_terminal(width):
    from rich.console import Console

    out = io.StringIO()
    _report.print_table(document(["auto: 3 of 9 rounds disturbed"]), console=Console(file=out, width=width))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    text = " ".join(out.getvalue().split())
    assert "NO 2.00x [1.90x-2.10x]" in text and "CONTENDED RUN" in text
    assert "placement left" in text  # a long label wraps, it is not cut


@pytest.fixture(scope="module")
def pyplot():
    """matplotlib, its fonts loaded (and kept open by its cache) before the leak guard looks."""
    matplotlib = pytest.importorskip(
        "matplotlib", reason="the plot needs matplotlib (pip install -e '.[bench]')"
    )
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close(_report.figure(document(["warm-up"])))
    return plt


@pytest.mark.parametrize("contended", [[], ["block: 18 of 18 rounds disturbed"]])
def test_the_plot_has_legends_byte_units_and_a_contended_mark(pyplot, contended):
    plt = pyplot
    fig = _report.figure(document(contended))
    try:
        latency, payload, threads = fig.axes[:3]
        assert [t.get_text() for t in payload.get_xticklabels()] == ["8 B", "4 KiB", "1 MiB"]
        for ax in (latency, payload, threads):
            assert ax.get_legend() is not None, ax.get_title()
        legend = [t.get_text() for t in threads.get_legend().get_texts()]
        assert any("calls/s" in t for t in legend) and any("p50" in t for t in legend)  # both y-axes
        marks = [t.get_text() for t in fig.texts if "CONTENDED RUN" in t.get_text()]
        assert len(marks) == (1 if contended else 0)
        assert all(contended[0] in mark for mark in marks)
    finally:
        plt.close(fig)
