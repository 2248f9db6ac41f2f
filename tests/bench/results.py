"""Measurements, their medians and ratios, and the performance targets.

A :class:`Row` is one phase of one workload at one size, with every sample
of every target. Its figure per target is the median of the samples. Ratios
are always *sovrfs divided by the other target* of the figure shown: for a
time (lower is better) a ratio above 1 means sovrfs is slower, for a
throughput (higher is better) a ratio below 1 means sovrfs is slower.

The targets sovrfs is held to:

- at least as fast as bindfs on every workload phase and size;
- sequential write and read at least 0.7 times the plain disk's throughput;
- a run's exec starts within 50 ms of opening ``.sovr/run`` (p50);
- the daemon's peak memory stays under 150 MiB with 100,000 files in a pod.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field

THROUGHPUT = "MB/s"
SECONDS = "s"

SEQUENTIAL_MIN_VS_PLAIN = 0.7
RUN_START_P50_MAX = 0.050
MEMORY_MAX_MIB = 150.0
MEMORY_TARGET_FILES = 100_000


@dataclass
class Check:
    """One performance target applied to one measurement."""

    name: str
    met: bool
    detail: str


@dataclass
class Row:
    workload: str
    size: str
    phase: str
    unit: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    #: Why a target's phase failed, one entry per failed round.
    failures: dict[str, list[str]] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return self.unit == THROUGHPUT

    def add(self, target: str, value: float) -> None:
        self.samples.setdefault(target, []).append(value)

    def median(self, target: str) -> float | None:
        values = self.samples.get(target)
        return statistics.median(values) if values else None

    def ratio(self, other: str) -> float | None:
        mine, theirs = self.median("sovrfs"), self.median(other)
        if mine is None or not theirs:
            return None
        return mine / theirs

    def checks(self) -> list[Check]:
        if self.failures.get("sovrfs"):
            failed = f"sovrfs failed {len(self.failures['sovrfs'])} time(s)"
            names = ["sovrfs ≥ bindfs"]
            if self.workload == "sequential":
                names.append(f"≥ {SEQUENTIAL_MIN_VS_PLAIN}x plain")
            return [Check(name, False, failed) for name in names]
        out = []
        ratio = self.ratio("bindfs")
        if ratio is not None:
            met = ratio >= 1.0 if self.higher_is_better else ratio <= 1.0
            out.append(Check("sovrfs ≥ bindfs", met, f"{ratio:.2f}x"))
        if self.workload == "sequential":
            ratio = self.ratio("plain")
            if ratio is not None:
                met = ratio >= SEQUENTIAL_MIN_VS_PLAIN
                out.append(Check(f"≥ {SEQUENTIAL_MIN_VS_PLAIN}x plain", met, f"{ratio:.2f}x"))
        return out


class Results:
    """Rows in the order they were first measured."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Row] = {}

    def row(self, workload: str, size: str, phase: str, unit: str) -> Row:
        key = (workload, size, phase)
        found = self.rows.get(key)
        if found is None:
            found = self.rows[key] = Row(workload, size, phase, unit)
        return found

    def add(self, workload: str, size: str, phase: str, unit: str, target: str, v: float) -> None:
        self.row(workload, size, phase, unit).add(target, v)

    def fail(self, workload: str, size: str, phase: str, unit: str, target: str, why: str) -> None:
        self.row(workload, size, phase, unit).failures.setdefault(target, []).append(why)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows.values())

    def for_workload(self, workload: str) -> list[Row]:
        return [r for r in self.rows.values() if r.workload == workload]

    def checks(self) -> list[tuple[Row, Check]]:
        return [(row, check) for row in self.rows.values() for check in row.checks()]
