"""Output: the table (rich when installed, plain text otherwise), the JSON document, the PNG plot."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

COLUMNS = ("case", "p50", "p99", "p99.9", "calls/s", "ratio", "vs", "target", "met?")
SHORT = {"inproc": "cffi", "floor.sem": "sem floor", "polyplug": "polyplug"}
ORDER = ("baseline", "isolated", "batch", "threads", "payload", "pipe", "floor")


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


def rows(document: dict) -> list[tuple[str, ...]]:
    """The table as text cells, one tuple per case (plus the idle worker)."""
    by_case: dict[str, list[dict]] = {}
    for target in document["targets"]:
        by_case.setdefault(target["case"], []).append(target)
    labels = {case["name"]: case["label"] for case in document["cases"]}
    out = []
    for case in ordered(document["cases"]):
        targets = by_case.get(case["name"], [])
        vs = "" if case["baseline"] == case["name"] else _short(case["baseline"], labels)
        out.append(
            (
                case["label"],
                fmt_ns(case["p50_ns"]),
                fmt_ns(case["p99_ns"]),
                fmt_ns(case["p999_ns"]),
                fmt_rate(case["calls_per_s"]),
                fmt_ratio(case["ratio"]),
                vs + (", calls/s" if case["kind"] == "throughput" and vs else ""),
                "; ".join(t["text"] for t in targets),
                "; ".join(_met(t) for t in targets),
            )
        )
    idle = document.get("idle_worker")
    if idle:
        targets = by_case.get("idle", [])
        out.append(
            (
                "idle worker after the spin window",
                "-",
                "-",
                "-",
                "-",
                "-",
                "",
                "; ".join(t["text"] for t in targets),
                "; ".join(_met(t) for t in targets),
            )
        )
    return out


def ordered(cases: list[dict]) -> list[dict]:
    """Display order: by group (ORDER), then as measured."""
    rank = {group: i for i, group in enumerate(ORDER)}
    return sorted(cases, key=lambda case: rank.get(case["group"], len(ORDER)))


def _short(name: str, labels: dict) -> str:
    if name in SHORT:
        return SHORT[name]
    if name.startswith("payload.inproc."):
        return "in-process echo"
    return labels.get(name, name)


def _met(target: dict) -> str:
    if target["met"] is None:
        return "n/a"
    return ("yes " if target["met"] else "NO ") + target["measured_text"].split(" (mean")[0]


def print_table(document: dict, plain: bool = False) -> None:
    table_rows = rows(document)
    title = (
        f"polyplug_isolated benchmark ({'quick' if document['meta']['quick'] else 'full'}, "
        f"{document['meta']['wall_s']:.1f} s)"
    )
    console = None
    if not plain:
        try:
            from rich import box
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            console = None
        else:
            # Never narrower than the table: rich would truncate cells with "…"
            # (in a narrow terminal or a CI log, where it assumes 80 columns).
            natural = len(plain_table(document, table_rows, title).splitlines()[1]) + 3 * len(COLUMNS)
            console = Console()
            if console.width < natural or not sys.stdout.isatty():
                console = Console(width=max(natural, console.width if sys.stdout.isatty() else 0))
    if console is None:
        print(plain_table(document, table_rows, title))
        return
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i in (0, 6, 7, 8) else "right", no_wrap=i != 0)
    for row in table_rows:
        style = None
        if row[8].startswith("NO") or "; NO" in row[8]:
            style = "red"
        elif row[8].startswith("yes"):
            style = "green"
        table.add_row(*row, style=style)
    console.print(table)
    for line in footer(document):
        console.print(line, highlight=False)


def plain_table(document: dict, table_rows: list[tuple[str, ...]], title: str) -> str:
    widths = [max(len(COLUMNS[i]), *(len(row[i]) for row in table_rows)) for i in range(len(COLUMNS))]
    right = {1, 2, 3, 4, 5}

    def line(cells) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ).rstrip()

    out = [title, line(COLUMNS), line("-" * w for w in widths)]
    out.extend(line(row) for row in table_rows)
    out.extend(footer(document))
    return "\n".join(out)


def footer(document: dict) -> list[str]:
    met = [t for t in document["targets"] if t["met"] is not None]
    lines = [f"targets met: {sum(t['met'] for t in met)} of {len(met)} (benchmark ratios, not assertions)"]
    lines.append(
        "ratio: p50 over the p50 of `vs`; for `calls/s` rows, calls/s over the calls/s of `vs`. "
        "Latencies include the timer loop (see its row)."
    )
    base = next((c for c in document["cases"] if c["name"] == "inproc"), None)
    if base:
        lines.append(f"baseline: {base['note']}.")
    host_cpu = document["meta"].get("host_cpu")
    lines.append(
        f"the measuring thread and the baseline subprocesses ran pinned to CPU {host_cpu}; "
        "workers, floors and the threads rows are not pinned."
        if host_cpu is not None
        else "nothing was pinned."
    )
    lines.append(
        "batch rows: p50/p99 are per call (batch time / records); thread rows: per call, "
        "calls/s of all threads together; (diag): diagnostics, no target."
    )
    switches = [
        f"{case['label'].removeprefix('isolated, ')} {case['worker_switches_per_call']:.2f}"
        for case in ordered(document["cases"])
        if "worker_switches_per_call" in case and case["group"] in ("isolated", "threads")
    ]
    if switches:
        lines.append(
            "worker context switches per call (0: spin hand-offs; ~1: it slept or was preempted "
            "every call): " + ", ".join(switches)
        )
    for target in document["targets"]:
        if target.get("mean_ratio") is not None:
            lines.append(
                f"target {target['id']}: p50 ratio {target['measured']:.2f}x, "
                f"mean ratio {target['mean_ratio']:.2f}x"
            )
    idle = document.get("idle_worker")
    if idle:
        lines.append(
            f"idle worker: {idle['percent_of_core']:.3f}% of a core over {idle['window_s']:.2f} s, "
            f"{idle['settle_s']:g} s after a burst of calls ({idle['source']})."
        )
    # Clock ticks are 10 ms: a few stray ones over a short step mean nothing.
    noisy = [
        s
        for s in document.get("steps", [])
        if (s["foreign_ticks"] >= 5 and s["foreign_cores"] > 0.2)
        or (s["steal_ticks"] >= 5 and s["steal_cores"] > 0.1)
    ]
    for step in noisy:
        lines.append(
            f"warning: during '{step['step']}' other processes used {step['foreign_cores']:.2f} cores "
            f"and the hypervisor stole {step['steal_cores']:.2f}: its rows are unreliable"
        )
    for skipped in document["skipped"]:
        lines.append(f"skipped {skipped['step']}: {skipped['reason']}")
    for error in document["errors"]:
        lines.append(f"ERROR in {error['step']}: {error['error']}")
    if document["leaked_workers"]:
        lines.append(f"LEAKED WORKERS: {document['leaked_workers']}")
    return lines


def write_json(document: dict, path: Path) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_plot(document: dict, path: Path) -> str | None:
    """Writes the PNG; returns why it could not, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
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
    ax.set_xlabel("echo payload bytes")
    ax.set_ylabel("p50 ns per call")
    ax.set_title("payload size")
    ax.legend(fontsize=8)
    ax = axes[2]
    if threads:
        xs = [c["threads"] for c in threads]
        ax.plot(xs, [c["calls_per_s"] / 1e6 for c in threads], marker="o", color="tab:green")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("host threads (wait=auto)")
        ax.set_ylabel("M calls/s, all threads", color="tab:green")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.plot(xs, [c["p50_ns"] for c in threads], marker="s", color="tab:purple")
        twin.set_ylabel("p50 ns per call", color="tab:purple")
        twin.set_ylim(bottom=0)
        ax.set_title("host threads")
    meta = document["meta"]
    fig.suptitle(
        f"polyplug_isolated benchmark — {meta['cpu_model']}, {meta['cpus']} CPUs, "
        f"{'quick' if meta['quick'] else 'full'} run"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
