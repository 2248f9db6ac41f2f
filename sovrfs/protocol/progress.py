"""Long protocol operations under way, for ``.sovr/status.json`` and the CLI.

An :class:`Operation` is created when a fork, import, persist or copy starts
and dropped when it ends. Its counters are plain integers that worker threads
bump while they copy; the trio thread only reads them, and a reader that sees
a count a moment old does no harm.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Operation:
    """One operation under way. ``None`` totals mean "not known (yet)"."""

    id: int
    operation: str
    pod: str
    started: float = field(default_factory=time.time)
    phase: str = ""
    files_done: int = 0
    files_total: int | None = None
    bytes_done: int = 0
    bytes_total: int | None = None

    def add(self, files: int = 0, nbytes: int = 0) -> None:
        """Count work done (called from worker threads)."""
        self.files_done += files
        self.bytes_done += nbytes

    def set_total(self, files: int, nbytes: int) -> None:
        self.files_total = files
        self.bytes_total = nbytes

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "operation": self.operation,
            "pod": self.pod,
            "phase": self.phase,
            "started_at": self.started,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
        }


class Progress:
    """The set of operations under way."""

    def __init__(self) -> None:
        self._ops: dict[int, Operation] = {}
        self._ids = itertools.count(1)

    @contextmanager
    def track(self, operation: str, pod: str) -> Iterator[Operation]:
        """Show ``operation`` on ``pod`` while the ``with`` block runs."""
        op = Operation(next(self._ids), operation, pod)
        self._ops[op.id] = op
        try:
            yield op
        finally:
            del self._ops[op.id]

    def snapshot(self) -> list[dict[str, Any]]:
        return [op.to_json() for op in sorted(self._ops.values(), key=lambda o: o.id)]
