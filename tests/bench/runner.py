"""The bench's command line and the order of its work.

Every file workload runs on every target in one session, all targets mounted
at once. Repetitions are interleaved (workload by workload, the targets'
order rotated each round), so a burst of load from elsewhere on the machine
spreads over the targets instead of landing on one of them; each figure is
the median of its repetitions.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from . import engine, report, workloads
from .results import SECONDS, THROUGHPUT, Results
from .targets import TARGETS, Target, open_targets, remove_tree, start_sovrfs

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("bindfs", "rclone", "fusermount3", "git", "tar")


@dataclass(frozen=True)
class Sizes:
    sequential_mib: tuple[int, ...]
    small_files: tuple[int, ...]
    #: Stdlib packages for each tree; ``None`` is the whole stdlib.
    trees: tuple[tuple[str, ...] | None, ...]
    latency_runs: tuple[int, ...]
    memory_files: tuple[int, ...]


FULL = Sizes(
    sequential_mib=(64, 256),
    small_files=(1000, 5000),
    trees=(workloads.SMALL_TREE_PACKAGES, None),
    latency_runs=(30, 100),
    memory_files=(10_000, 100_000),
)
QUICK = Sizes(
    sequential_mib=(16, 64),
    small_files=(200, 1000),
    trees=(("email", "json"), workloads.SMALL_TREE_PACKAGES),
    latency_runs=(10, 30),
    memory_files=(2_000, 10_000),
)


@dataclass
class Bench:
    """One session: its settings, the machine, and everything measured."""

    args: argparse.Namespace
    sizes: Sizes
    root: Path
    console: Console
    results: Results = dataclasses.field(default_factory=Results)
    latency: list[engine.Latency] = dataclasses.field(default_factory=list)
    memory: list[engine.Memory] = dataclasses.field(default_factory=list)
    #: Run-latency and memory measurements that failed, and why.
    latency_errors: list[str] = dataclasses.field(default_factory=list)
    memory_errors: list[str] = dataclasses.field(default_factory=list)
    facts: dict[str, str] = dataclasses.field(default_factory=dict)
    tarballs: list[workloads.Tarball] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.console.print(f"[dim]{elapsed:6.0f} s[/dim]  {text}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Benchmark sovrfs against the plain disk, bindfs and rclone mount.",
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a first look")
    p.add_argument("--repeat", type=int, default=3, help="repetitions per timing (median)")
    p.add_argument(
        "--workdir", type=Path, default=Path("/var/tmp"),
        help="where the targets keep their files (a disk, not tmpfs)",
    )  # fmt: skip
    p.add_argument(
        "--docs", type=Path, default=REPO / "docs",
        help="where bench-report.rst and _static/bench-*.png are written",
    )  # fmt: skip
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--json", type=Path, help="also save every sample as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p


def machine_facts(root: Path, args: argparse.Namespace) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        except OSError:
            return "missing"
        return (out.strip().splitlines() or ["?"])[0]

    model = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kib = int(fh.readline().split()[1])
    from sovrfs import __version__

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPUs": f"{os.cpu_count()} ({model})",
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "disk": " ".join(
            first_line(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(root)]).split()
        )
        + f" at {root.parent}",
        "Python": platform.python_version(),
        "sovrfs": f"{__version__}, {checkout()}",
        "bindfs": first_line(["bindfs", "--version"]),
        "rclone": first_line(["rclone", "version"]),
        "git": first_line(["git", "--version"]),
        "caches": "dropped before cold phases"
        if workloads.can_drop_caches()
        else "NOT dropped (not root): cold phases ran warm",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": "python -m tests.bench " + shlex.join(sys.argv[1:]),
        "sizes": "quick" if args.quick else "full",
    }


def checkout() -> str:
    """The commit measured, and whether the daemon's code differs from it."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout"
    changed = git("status", "--porcelain", "--", "sovrfs")
    return f"commit {commit}" + (" with uncommitted changes in sovrfs/" if changed else "")


# -- the file workloads ------------------------------------------------------------


def file_workloads(bench: Bench) -> list[tuple[str, str, str, workloads.Workload]]:
    """(workload, size label, unit, ``fn(work_dir, phases)``) in running order."""
    out: list[tuple[str, str, str, workloads.Workload]] = []
    for mib in bench.sizes.sequential_mib:
        seq = functools.partial(workloads.sequential, size_mib=mib)
        out.append(("sequential", f"{mib} MiB", THROUGHPUT, _positional(seq)))
    for count in bench.sizes.small_files:
        small = functools.partial(workloads.small_files, count=count)
        out.append(("small files", f"{count} files", SECONDS, _positional(small)))
    home = bench.root / "git-home"
    home.mkdir(exist_ok=True)
    for tarball in bench.tarballs:
        label = f"{tarball.files} files, {tarball.megabytes:.1f} MB"
        tree = functools.partial(workloads.source_tree, tarball=tarball, home=home)
        out.append(("source tree", label, SECONDS, _positional(tree)))
    return out


def _positional(fn: Callable[..., None]) -> workloads.Workload:
    return lambda base, phases: fn(base, phases=phases)


def run_file_workloads(bench: Bench, targets: list[Target]) -> None:
    plan = file_workloads(bench)
    for rep in range(bench.args.repeat):
        for step, (workload, size, unit, fn) in enumerate(plan):
            shift = rep % len(targets)
            for target in targets[shift:] + targets[:shift]:
                where = f"round {rep + 1}: {workload} {size} on {target.name}"
                # A directory of its own for every sample: a name used again
                # would make one sample depend on the clean-up of another.
                base = target.workdir / f"{workload.replace(' ', '-')}-{step}-{rep}"
                phases: dict[str, float] = {}
                error = None
                try:
                    base.mkdir()
                    fn(base, phases)
                except (workloads.WorkloadError, OSError) as exc:
                    error = str(exc)
                finally:
                    left = remove_tree(base)
                    if left:
                        bench.say(f"[yellow]{where}: clean-up: {left}[/yellow]")
                for phase, value in phases.items():
                    bench.results.add(workload, size, phase, unit, target.name, value)
                shown = ", ".join(f"{k} {v:.3g}" for k, v in phases.items())
                bench.say(f"{where}: {shown} {unit}")
                if error is not None:
                    failed = next(p for p in workloads.PHASES[workload] if p not in phases)
                    why = f"round {rep + 1}: {error}"
                    bench.results.fail(workload, size, failed, unit, target.name, why)
                    bench.say(f"[red]{where}: {failed} FAILED: {error}[/red]")


# -- the session -------------------------------------------------------------------


def check_tools() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not workloads.STDLIB.is_dir():
        missing.append(f"the Python stdlib at {workloads.STDLIB}")
    return missing


def run(bench: Bench) -> None:
    bench.say(f"work directory {bench.root}")
    for i, packages in enumerate(bench.sizes.trees):
        tarball = workloads.make_tarball(bench.root / f"tree-{i}.tar", packages)
        bench.tarballs.append(tarball)
        bench.say(f"tarball {tarball.path.name}: {tarball.files} files, {tarball.megabytes:.1f} MB")
    with open_targets(bench.root / "targets", TARGETS) as targets:
        bench.say("mounted " + ", ".join(t.name for t in targets))
        run_file_workloads(bench, targets)
    mount = start_sovrfs(bench.root / "runs")
    try:
        for count in bench.sizes.latency_runs:
            try:
                latency = engine.run_latency(mount, count)
            except (RuntimeError, OSError) as exc:
                bench.latency_errors.append(f"run latency over {count} runs: {exc}")
                bench.say(f"[red]run latency over {count} runs FAILED: {exc}[/red]")
                continue
            bench.latency.append(latency)
            bench.say(
                f"run latency over {count} runs: start p50 {latency.to_start[0] * 1000:.1f} ms, "
                f"succeeded p50 {latency.to_succeeded[0] * 1000:.1f} ms"
            )
    finally:
        mount.umount()
    for files in bench.sizes.memory_files:
        try:
            memory = engine.memory(bench.root / f"memory-{files}", files)
        except (RuntimeError, OSError) as exc:
            bench.memory_errors.append(f"memory with {files:,} files: {exc}")
            bench.say(f"[red]memory with {files:,} files FAILED: {exc}[/red]")
            continue
        bench.memory.append(memory)
        bench.say(f"memory with {files} files: peak {memory.hwm_mib:.1f} MiB")
    bench.facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    bench.facts["duration"] = f"{(time.monotonic() - bench.started) / 60:.1f} min"


def save_json(bench: Bench, path: Path) -> None:
    data: dict[str, Any] = {
        "facts": bench.facts,
        "rows": [dataclasses.asdict(row) for row in bench.results],
        "latency": [dataclasses.asdict(x) for x in bench.latency],
        "memory": [dataclasses.asdict(x) for x in bench.memory],
    }
    path.write_text(json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:
        # Logs and pipes get the whole table rather than 80 folded columns.
        console = Console(width=160)
    missing = check_tools()
    if missing:
        console.print(f"[red]bench: missing {', '.join(missing)}[/red] (make bench installs them)")
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="sovrfs-bench-", dir=args.workdir))
    bench = Bench(args, QUICK if args.quick else FULL, root, console)
    bench.facts = machine_facts(root, args)
    try:
        run(bench)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report.print_tables(bench, console)
    if args.json:
        save_json(bench, args.json)
    if not args.no_write:
        written = report.write(bench, args.docs)
        console.print("wrote " + ", ".join(str(p) for p in written))
    return 0
