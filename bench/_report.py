"""Output: the table (rich when installed, plain text otherwise), the JSON document, the PNG plot."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._cases import size_label

COLUMNS = ("case", "p50", "p99", "p99.9", "calls/s", "ratio", "vs")
TARGET_COLUMNS = ("target", "case", "verdict: median [Q1-Q3] of clean rounds")
SHORT = {
    "inproc": "in-process",
    "inproc.raw": "shim alone",
    "floor.sem-2cpu": "2-CPU floor",
    "polyplug": "polyplug",
}
ORDER = ("baseline", "isolated", "batch", "threads", "payload", "pipe", "floor")
RIGHT = frozenset({1, 2, 3, 4, 5})


def fmt_ns(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value < 100:
        return f"{value:.1f} ns"
    if value < 1000:
        return f"{value:.0f} ns"
    if value < 1e6:
        return f"{value / 1e3:.3g} µs" if value < 1e4 else f"{value / 1e3:.1f} µs"
    return f"{value / 1e6:.2f} ms"


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def rows(document: dict[str, Any]) -> list[tuple[str, ...]]:
    """The case table as text cells, one tuple per case."""
    labels = {case["name"]: case["label"] for case in document["cases"]}
    out: list[tuple[str, ...]] = []
    for case in ordered(document["cases"]):
        vs = "" if case["baseline"] == case["name"] else _short(case["baseline"], labels)
        ratio = fmt_ratio(case["ratio"])
        spread = case.get("round_ratio")
        if spread and spread["n"] > 1:
            ratio += f" ±{(spread['high'] - spread['low']) / 2:.2f}"
        out.append(
            (
                case["label"],
                fmt_ns(case["p50_ns"]),
                fmt_ns(case["p99_ns"]),
                fmt_ns(case["p999_ns"]),
                fmt_rate(case["calls_per_s"]),
                ratio,
                vs + (" (calls/s)" if case["kind"] == "throughput" and vs else ""),
            )
        )
    return out


def target_rows(document: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per target: what it asks, of which case, and the verdict with its spread."""
    return [(t["text"], t["case"], t["measured_text"]) for t in document["targets"]]


def ordered(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Display order: by group (ORDER), then as measured."""
    rank = {group: i for i, group in enumerate(ORDER)}
    return sorted(cases, key=lambda case: rank.get(case["group"], len(ORDER)))


def _short(name: str, labels: dict[str, Any]) -> str:
    if name in SHORT:
        return SHORT[name]
    if name.startswith("payload.inproc."):
        return "in-process echo"
    return str(labels.get(name, name))


def print_table(document: dict[str, Any], plain: bool = False, console: Any = None) -> None:
    """Rich tables as wide as the terminal (the case column wraps), or plain text off a terminal."""
    title = (
        f"polyplug_isolated benchmark ({'quick' if document['meta']['quick'] else 'full'}, "
        f"{document['meta']['wall_s']:.1f} s)"
    )
    if console is None and not plain and sys.stdout.isatty():
        try:
            from rich.console import Console
        except ImportError:
            pass
        else:
            console = Console()
    if console is None:
        print(plain_table(document, title))
        return
    from rich import box
    from rich.table import Table

    cases = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, column in enumerate(COLUMNS):
        cases.add_column(column, justify="right" if i in RIGHT else "left", no_wrap=i in RIGHT)
    for row in rows(document):
        cases.add_row(*row, style="dim" if row[0].endswith("(diag)") else None)
    console.print(cases)
    targets = Table(title="targets", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in TARGET_COLUMNS:
        targets.add_column(column)
    for target, row in zip(document["targets"], target_rows(document), strict=True):
        style = {"yes": "green", "NO": "red"}.get(target.get("verdict", ""), "yellow")
        targets.add_row(*row, style=style)
    console.print(targets)
    for line in footer(document):
        console.print(line, highlight=False, soft_wrap=False)


def plain_table(document: dict[str, Any], title: str) -> str:
    out = [title, *_plain(COLUMNS, rows(document), RIGHT), "", *_plain(TARGET_COLUMNS, target_rows(document))]
    out.extend(textwrap.fill(line, 110, subsequent_indent="  ") for line in footer(document))
    return "\n".join(out)


def _plain(
    columns: tuple[str, ...], table_rows: list[tuple[str, ...]], right: frozenset[int] = frozenset()
) -> list[str]:
    widths = [max(len(columns[i]), *(len(row[i]) for row in table_rows)) for i in range(len(columns))]

    def line(cells: Iterable[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ).rstrip()

    return [line(columns), line("-" * w for w in widths), *(line(row) for row in table_rows)]


def footer(document: dict[str, Any]) -> list[str]:
    met = [t for t in document["targets"] if t["met"] is not None]
    lines = [
        f"targets met: {sum(t['met'] for t in met)} of {len(document['targets'])} "
        "(benchmark ratios, not assertions; a verdict needs its range on one side of the limit)",
        "ratio: p50 over the p50 of `vs` (for rows measured in alternating rounds: the median of the "
        "rounds' ratios, ± half their interquartile range); (calls/s): calls/s over the calls/s of `vs`.",
        "latencies include the timer loop (its row); batch rows are per call (batch time / records); "
        "thread rows: per call, calls/s of all threads together; (diag): diagnostics, no target.",
    ]
    host_cpu = document["meta"].get("host_cpu")
    lines.append(
        f"the measuring thread and the baseline subprocesses ran pinned to CPU {host_cpu}; "
        "the workers of the wait=auto and wait=block comparisons ran on the other CPU, as the two-CPU "
        "floor places its second process; other workers are not pinned."
        if host_cpu is not None
        else "nothing was pinned."
    )
    idle = document.get("idle_worker")
    if idle:
        lines.append(
            f"idle worker: {idle['percent_of_core']:.3f}% of a core over {idle['window_s']:.2f} s, "
            f"{idle['settle_s']:g} s after a burst of calls ({idle['source']})."
        )
    contended = document["meta"].get("contended") or []
    if contended:
        lines.append(
            "CONTENDED RUN: the machine was busy with other work while measuring ("
            + "; ".join(contended)
            + "): disturbed rounds do not count, and a target without enough clean rounds is n/a."
        )
    # Clock ticks are 10 ms: a few stray ones over a short step mean nothing.
    noisy = [
        s["step"]
        for s in document.get("steps", [])
        if (s["foreign_ticks"] >= 5 and s["foreign_cores"] > 0.2)
        or (s["steal_ticks"] >= 5 and s["steal_cores"] > 0.1)
    ]
    if noisy:
        lines.append(f"other processes or the hypervisor took CPU during: {', '.join(noisy)}.")
    for skipped in document["skipped"]:
        lines.append(f"skipped {skipped['step']}: {skipped['reason']}")
    for error in document["errors"]:
        lines.append(f"ERROR in {error['step']}: {error['error']}")
    if document["leaked_workers"]:
        lines.append(f"LEAKED WORKERS: {document['leaked_workers']}")
    return lines


def write_json(document: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_plot(document: dict[str, Any], path: Path) -> str | None:
    """Writes the PNG; returns why it could not, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    fig = figure(document)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def figure(document: dict[str, Any]) -> Any:
    """The plot as a matplotlib Figure: latencies, payload sizes (byte units), host threads (two
    y-axes, one legend); a red "CONTENDED RUN" band when rounds were disturbed."""
    import matplotlib.pyplot as plt

    cases = document["cases"]
    single = [c for c in ordered(cases) if c["kind"] == "latency" and c["group"] != "payload"]
    payload_in = sorted(
        (c for c in cases if c["name"].startswith("payload.inproc.")), key=lambda c: c["size"]
    )
    payload_iso = sorted(
        (c for c in cases if c["name"].startswith("payload.isolated.")), key=lambda c: c["size"]
    )
    threads = sorted((c for c in cases if c["group"] == "threads"), key=lambda c: c["threads"])

    fig, axes = plt.subplots(1, 3, figsize=(18, 6.5), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    ax = axes[0]
    if single:
        labels = [c["label"] for c in single]
        ys = range(len(single))
        ax.barh(ys, [c["p50_ns"] for c in single], color="tab:blue", label="p50")
        ax.scatter([c["p99_ns"] for c in single], ys, color="tab:red", marker="|", s=200, label="p99")
        ax.scatter([c["p999_ns"] for c in single], ys, color="black", marker="|", s=200, label="p99.9")
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ns per call (log)")
        ax.set_title("latency of one call")
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    for series, name in ((payload_in, "in-process cffi"), (payload_iso, "isolated")):
        if series:
            ax.plot([c["size"] for c in series], [c["p50_ns"] for c in series], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({c["size"] for c in payload_in + payload_iso})
    if sizes:
        ax.set_xticks(sizes, [size_label(size) for size in sizes], fontsize=8)
        ax.minorticks_off()
    ax.set_xlabel("echo payload size")
    ax.set_ylabel("p50 ns per call")
    ax.set_title("payload size")
    ax.legend(fontsize=8)
    ax = axes[2]
    if threads:
        xs = [c["threads"] for c in threads]
        rate = ax.plot(
            xs, [c["calls_per_s"] / 1e6 for c in threads], marker="o", color="tab:green", label="calls/s"
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("host threads (wait=auto)")
        ax.set_ylabel("M calls/s, all threads", color="tab:green")
        twin = ax.twinx()
        p50 = twin.plot(xs, [c["p50_ns"] for c in threads], marker="s", color="tab:purple", label="p50")
        twin.set_ylabel("p50 ns per call", color="tab:purple")
        twin.set_ylim(0, 1.25 * max(c["p50_ns"] for c in threads))
        ax.set_ylim(0, 1.25 * max(c["calls_per_s"] / 1e6 for c in threads))
        lines = rate + p50
        ax.legend(lines, ["M calls/s, all threads (left)", "p50 ns per call (right)"], fontsize=8)
        ax.set_title("host threads")
    meta = document["meta"]
    fig.suptitle(
        f"polyplug_isolated benchmark — {meta['cpu_model']}, {meta['cpus']} CPUs, "
        f"{'quick' if meta['quick'] else 'full'} run"
    )
    if meta.get("contended"):
        fig.text(
            0.01,
            0.01,
            "CONTENDED RUN: " + "; ".join(meta["contended"]),
            color="white",
            backgroundcolor="tab:red",
            fontsize=9,
            ha="left",
            va="bottom",
        )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
