"""The bench's output: a terminal table, a reStructuredText page, plots.

The same cell texts feed the terminal (rich) and the report
(``docs/bench-report.rst``, included by ``docs/bench.rst`` under its own
title, so its sections are underlined with ``-``). Plots are PNG files in
``docs/_static/`` drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from .results import (
    MEMORY_MAX_MIB,
    MEMORY_TARGET_FILES,
    RUN_START_P50_MAX,
    SECONDS,
    SEQUENTIAL_MIN_VS_PLAIN,
    Row,
)
from .targets import TARGETS

if TYPE_CHECKING:
    from .engine import Latency, Memory
    from .runner import Bench

COLORS = {"sovrfs": "#d1495b", "plain": "#7a7a7a", "bindfs": "#00798c", "rclone": "#edae49"}
WORKLOADS = ("sequential", "small files", "source tree")
WORKLOAD_TITLES = {
    "sequential": "Sequential write and cold read",
    "small files": "Small files",
    "source tree": "A source tree: tar, git, rm",
}
_RATIOS = (
    "Ratios divide sovrfs's median by the other target's: for a time a ratio above 1 "
    "means sovrfs is slower, for MB/s a ratio below 1 does."
)
WORKLOAD_NOTES = {
    "sequential": "MB/s (millions of bytes a second), higher is better. " + _RATIOS,
    "small files": "Seconds for all the files, lower is better. " + _RATIOS,
    "source tree": "Seconds, lower is better. " + _RATIOS,
}
PLOTS = {
    "sequential": "bench-sequential.png",
    "small files": "bench-small-files.png",
    "source tree": "bench-source-tree.png",
    "runs": "bench-runs.png",
    "memory": "bench-memory.png",
}

Cells = list[list[str]]


# -- cell texts ------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == SECONDS:
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def ms(pair: tuple[float, float]) -> str:
    return f"{pair[0] * 1000:.1f} / {pair[1] * 1000:.1f} ms"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def row_verdict(row: Row) -> str:
    checks = row.checks()
    if not checks:
        return "—"
    missed = [c.name for c in checks if not c.met]
    return "met" if not missed else "NOT met: " + ", ".join(missed)


FILE_HEADER = [
    "Size", "Phase", *TARGETS, "sovrfs÷plain", "sovrfs÷bindfs", "Targets",
]  # fmt: skip


def target_cell(row: Row, target: str, rounds: int) -> str:
    """The median, and how many rounds failed or never reached this phase."""
    got = len(row.samples.get(target, []))
    failed = len(row.failures.get(target, []))
    if not got:
        return "FAILED" if failed else "—"
    value = fmt(row.median(target), row.unit)
    if failed:
        return f"{value} ({failed} of {got + failed} FAILED)"
    if got < rounds:
        return f"{value} ({got} of {rounds})"
    return value


def file_cells(bench: Bench, workload: str) -> Cells:
    out = []
    for row in bench.results.for_workload(workload):
        values = [target_cell(row, t, bench.args.repeat) for t in TARGETS]
        ratios = [fmt_ratio(row.ratio("plain")), fmt_ratio(row.ratio("bindfs"))]
        out.append([row.size, row.phase, *values, *ratios, row_verdict(row)])
    return out


LATENCY_HEADER = [
    "Runs", "open() returns", "exec starts", "run succeeded", "direct spawn (no sovrfs)",
    f"start p50 < {RUN_START_P50_MAX * 1000:.0f} ms",
]  # fmt: skip


def latency_met(lat: Latency) -> bool:
    return lat.to_start[0] < RUN_START_P50_MAX


def latency_cells(bench: Bench) -> Cells:
    return [
        [
            str(lat.runs),
            ms(lat.open_returned),
            ms(lat.to_start),
            ms(lat.to_succeeded),
            ms(lat.direct_spawn),
            verdict(latency_met(lat)),
        ]
        for lat in bench.latency
    ]


MEMORY_HEADER = [
    "Files in the pod", "RSS after mount", "peak RSS (VmHWM)", "RSS at the end",
    "find: sovrfs / plain", "ls -lR: sovrfs / plain", "one run", f"peak < {MEMORY_MAX_MIB:.0f} MiB",
]  # fmt: skip


def memory_cells(bench: Bench) -> Cells:
    return [
        [
            f"{m.files:,}",
            f"{m.rss_mounted_mib:.1f} MiB",
            f"{m.hwm_mib:.1f} MiB",
            f"{m.rss_end_mib:.1f} MiB",
            f"{m.find_s:.2f} s / {m.plain_find_s:.2f} s",
            f"{m.ls_s:.2f} s / {m.plain_ls_s:.2f} s",
            f"{m.run_s * 1000:.0f} ms",
            verdict(m.hwm_mib < MEMORY_MAX_MIB),
        ]
        for m in bench.memory
    ]


def target_lines(bench: Bench) -> list[tuple[str, str, str]]:
    """(target, verdict, figures) for the summary."""
    out = []
    checks = bench.results.checks()
    vs_bindfs = [(row, c) for row, c in checks if c.name.endswith("bindfs")]
    missed = [row for row, c in vs_bindfs if not c.met]
    workloads = ", ".join(dict.fromkeys(row.workload for row in missed)) or "none"
    detail = (
        f"{len(vs_bindfs) - len(missed)} of {len(vs_bindfs)} measurements met; "
        f"missed in: {workloads}"
    )
    out.append(("sovrfs at least as fast as bindfs on every workload", _all(missed), detail))
    seq = [(row, c) for row, c in checks if c.name.endswith("plain")]
    if seq:
        detail = "; ".join(f"{r.phase} {r.size}: {c.detail}" for r, c in seq)
        name = f"sequential write and read at least {SEQUENTIAL_MIN_VS_PLAIN}x the plain disk"
        out.append((name, _all([c for _, c in seq if not c.met]), detail))
    if bench.latency or bench.latency_errors:
        detail = "; ".join(f"{x.runs} runs: {x.to_start[0] * 1000:.1f} ms" for x in bench.latency)
        late: list[object] = [x for x in bench.latency if not latency_met(x)]
        late += bench.latency_errors
        if bench.latency_errors:
            detail += f" ({len(bench.latency_errors)} measurement(s) failed)"
        out.append((f"run start p50 under {RUN_START_P50_MAX * 1000:.0f} ms", _all(late), detail))
    if bench.memory or bench.memory_errors:
        detail = "; ".join(f"{m.files:,} files: {m.hwm_mib:.1f} MiB" for m in bench.memory)
        largest = max(bench.memory, key=lambda m: m.files, default=None)
        result = "not measured"
        if largest is not None:
            result = verdict(largest.hwm_mib < MEMORY_MAX_MIB)
            if largest.files < MEMORY_TARGET_FILES:
                result = f"not measured (largest pod {largest.files:,} files)"
        name = f"daemon peak memory under {MEMORY_MAX_MIB:.0f} MiB at {MEMORY_TARGET_FILES:,} files"
        if bench.memory_errors:
            result = verdict(False)
            detail += f" ({len(bench.memory_errors)} measurement(s) failed)"
        out.append((name, result, detail))
    return out


def failure_lines(bench: Bench) -> list[str]:
    lines = [
        f"{target}, {row.workload} {row.size}, {row.phase}: {why}"
        for row in bench.results
        for target, whys in row.failures.items()
        for why in whys
    ]
    return lines + [f"sovrfs, {why}" for why in bench.latency_errors + bench.memory_errors]


def _all(misses: Sequence[object]) -> str:
    return verdict(not misses)


# -- terminal --------------------------------------------------------------------


def _rich_table(title: str, header: list[str], cells: Cells) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 3 else "right", overflow="fold")
    for line in cells:
        table.add_row(*[_color(c) for c in line])
    return table


def _color(cell: str) -> str:
    if cell.startswith("NOT met") or "FAILED" in cell:
        return f"[bold red]{cell}[/bold red]"
    if cell == "met":
        return f"[green]{cell}[/green]"
    if cell.startswith("not measured"):
        return f"[yellow]{cell}[/yellow]"
    return cell


def print_tables(bench: Bench, console: Console) -> None:
    for workload in WORKLOADS:
        if bench.results.for_workload(workload):
            title = f"{WORKLOAD_TITLES[workload]} (median of {bench.args.repeat})"
            console.print(_rich_table(title, FILE_HEADER, file_cells(bench, workload)))
    note = "ratios: sovrfs ÷ other of the figure shown (times: >1 is slower; MB/s: <1 is slower)"
    console.print(f"[dim]{note}[/dim]")
    failures = failure_lines(bench)
    if failures:
        console.print("[bold red]Failed workload phases[/bold red]")
        for line in failures:
            console.print(f"  {line}", markup=False, highlight=False)
    if bench.latency:
        console.print(_rich_table("Run latency, p50 / p95", LATENCY_HEADER, latency_cells(bench)))
    if bench.memory:
        console.print(_rich_table("Daemon memory", MEMORY_HEADER, memory_cells(bench)))
    summary = Table(title="Targets", title_justify="left")
    summary.add_column("target")
    summary.add_column("result")
    summary.add_column("figures", overflow="fold")
    for name, result, detail in target_lines(bench):
        summary.add_row(name, _color(result), detail)
    console.print(summary)


# -- reStructuredText -------------------------------------------------------------


def rst_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")


def list_table(header: list[str], cells: Cells, widths: list[int] | None = None) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(map(str, widths)))
    lines.append("")
    for line in [header, *cells]:
        for i, cell in enumerate(line):
            lines.append(("   * - " if i == 0 else "     - ") + (rst_escape(cell) or "\\ "))
    lines.append("")
    return lines


def section(title: str) -> list[str]:
    return [title, "-" * len(title), ""]


def image(name: str, alt: str) -> list[str]:
    return [f".. image:: /_static/{name}", f"   :alt: {alt}", "   :width: 100%", ""]


def render_rst(bench: Bench) -> str:
    facts = bench.facts
    lines = section("Results")
    lines += [
        f"Measured on {facts['date']} with ``{facts['command'].strip()}`` "
        f"({facts['sizes']} sizes, each figure the median of {bench.args.repeat} rounds). "
        "To measure again on your machine::",
        "",
        "    make bench                         # full sizes, 35 to 45 minutes",
        "    make bench BENCH_ARGS=--quick      # smaller sizes, a first look",
        "",
        "Both rewrite this section and its plots; the FairOS-DFS part (about 25 "
        "minutes of the full run) adds its own section at the end.",
        "",
    ]
    lines += [f":{key}: {rst_escape(value)}" for key, value in facts.items() if key != "command"]
    lines.append("")
    lines += section("Summary")
    lines += list_table(
        ["Target", "Result", "Figures"],
        [list(line) for line in target_lines(bench)],
        [30, 10, 60],
    )
    for workload in WORKLOADS:
        if bench.results.for_workload(workload):
            lines += section(WORKLOAD_TITLES[workload])
            lines += [WORKLOAD_NOTES[workload], ""]
            lines += list_table(FILE_HEADER, file_cells(bench, workload))
            lines += image(PLOTS[workload], f"{workload} on each target")
    failures = failure_lines(bench)
    if failures:
        lines += section("Failed workload phases")
        lines += [
            "A phase that failed has no time; the phases after it in the same round did "
            "not run. The figures above are the medians of the rounds that succeeded.",
            "",
        ]
        lines += [f"- {rst_escape(line)}" for line in failures]
        lines.append("")
    if bench.latency:
        lines += section("Run start latency")
        lines += [
            "p50 / p95 in milliseconds, from just before ``open()`` of ``.sovr/run``.",
            "",
        ]
        lines += list_table(LATENCY_HEADER, latency_cells(bench))
        lines += image(PLOTS["runs"], "run latency distribution")
    if bench.memory:
        lines += section("Daemon memory")
        lines += [
            "Resident memory of the daemon serving one pod of small files, after a cold "
            "``find`` and ``ls -lR`` of the pod through the mount and five runs of it.",
            "",
        ]
        lines += list_table(MEMORY_HEADER, memory_cells(bench))
        lines += image(PLOTS["memory"], "daemon memory")
    return "\n".join(lines).rstrip() + "\n"


# -- plots -------------------------------------------------------------------------


def _bars(ax: Any, rows: list[Row], labels: list[str]) -> None:
    import numpy as np

    x = np.arange(len(rows))
    width = 0.8 / len(TARGETS)
    for i, target in enumerate(TARGETS):
        heights = [row.median(target) or 0.0 for row in rows]
        ax.bar(x + (i - 1.5) * width, heights, width, label=target, color=COLORS[target])
    ax.set_xticks(x, labels)


def plot_files(bench: Bench, workload: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = bench.results.for_workload(workload)
    sizes = list(dict.fromkeys(r.size for r in rows))
    if workload == "sequential":
        fig, ax = plt.subplots(figsize=(8, 3.6))
        ordered = sorted(rows, key=lambda r: (r.phase != "write", sizes.index(r.size)))
        _bars(ax, ordered, [f"{r.phase}\n{r.size}" for r in ordered])
        ax.set_ylabel("MB/s (higher is better)")
        ax.set_title("Sequential write with fsync, then cold read")
        ax.legend()
    else:
        fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.6), squeeze=False)
        for ax, size in zip(axes[0], sizes, strict=True):
            sized = [r for r in rows if r.size == size]
            _bars(ax, sized, [r.phase for r in sized])
            ax.set_title(f"{workload}: {size}")
            ax.set_ylabel("seconds (lower is better)")
        axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_runs(latency: list[Latency], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for lat, style in zip(latency, ("-", "--", ":"), strict=False):
        for samples, what, color in (
            (lat.start_samples, "exec starts", COLORS["sovrfs"]),
            (lat.succeeded_samples, "succeeded", COLORS["bindfs"]),
        ):
            xs = sorted(s * 1000 for s in samples)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(xs, ys, style, where="post", color=color, label=f"{what}, {lat.runs} runs")
    ax.axvline(RUN_START_P50_MAX * 1000, color="black", linewidth=0.8, label="50 ms target")
    ax.set_xlabel("milliseconds after open() of .sovr/run")
    ax.set_ylabel("share of runs")
    ax.set_title("Run latency (cumulative)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_memory(memory: list[Memory], path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(memory))
    ax.bar(x - 0.2, [m.rss_mounted_mib for m in memory], 0.4, label="after mount", color="#7a7a7a")
    ax.bar(x + 0.2, [m.hwm_mib for m in memory], 0.4, label="peak", color=COLORS["sovrfs"])
    ax.axhline(MEMORY_MAX_MIB, color="black", linewidth=0.8, label="150 MiB target")
    ax.set_ylim(0, max([MEMORY_MAX_MIB, *(m.hwm_mib for m in memory)]) * 1.2)
    ax.set_xticks(x, [f"{m.files:,} files" for m in memory])
    ax.set_ylabel("MiB resident")
    ax.set_title("sovrfs daemon memory serving one pod")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def write(bench: Bench, docs: Path) -> list[Path]:
    """Write ``bench-report.rst`` and the plots below ``docs``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    static = docs / "_static"
    static.mkdir(parents=True, exist_ok=True)
    written = []
    for workload in WORKLOADS:
        if bench.results.for_workload(workload):
            plot_files(bench, workload, static / PLOTS[workload])
            written.append(static / PLOTS[workload])
    if bench.latency:
        plot_runs(bench.latency, static / PLOTS["runs"])
        written.append(static / PLOTS["runs"])
    if bench.memory:
        plot_memory(bench.memory, static / PLOTS["memory"])
        written.append(static / PLOTS["memory"])
    report = docs / "bench-report.rst"
    report.write_text(render_rst(bench))
    written.insert(0, report)
    return written
