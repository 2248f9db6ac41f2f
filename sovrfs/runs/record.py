"""What a run is: the request a caller submits and the record the engine keeps.

A :class:`RunRequest` is everything needed to start a pod's ``golem.exec``;
the engine never looks inside a recipe. A :class:`RunRecord` is the engine's
account of one run, from ``queued`` to one of the finished states, and its
:meth:`RunRecord.to_json` is what ``.sovr/status`` and ``.sovr/runs/`` show.
"""

from __future__ import annotations

import copy
import enum
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol


class RunState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (RunState.QUEUED, RunState.RUNNING)


class StreamScrubber(Protocol):
    """Rewrites a byte stream before it reaches the log (hides secrets).

    ``feed`` may hold back bytes that could be the start of something to hide
    and release them with a later ``feed`` or with ``flush`` at end of stream,
    so a secret split across two pipe reads is still caught.
    """

    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


@dataclass
class RunRequest:
    """A request to run a compute pod's ``golem.exec``.

    ``argv`` is already split (no shell). ``cwd`` is the pod root as seen
    through the mount. ``env`` is merged over a minimal base environment, not
    over the daemon's own. ``{run_id}`` in ``log_path`` is replaced by the id
    the engine gives the run (the caller does not know it before submitting).
    ``classify`` receives the exit status (negative: killed by that signal,
    as in :mod:`subprocess`) and the tail of the log, and may return a reason
    to count the run as failed.
    """

    pod: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    log_path: str
    timeout: float | None = None
    #: Opens the log somewhere other than ``log_path`` on the local disk: given
    #: the log path (``{run_id}`` filled in), returns a writable descriptor and
    #: the coroutine function that closes it. The daemon uses it to write logs
    #: straight into the pod store: a daemon must never hold files open on its
    #: own mount, or a SIGKILL leaves the kernel waiting on a dead server.
    open_log: Callable[[str], Awaitable[tuple[int, Callable[[], Awaitable[None]]]]] | None = None
    scrubber: Callable[[], StreamScrubber] | None = None
    classify: Callable[[int, str], str | None] | None = None
    after_exit: Callable[[RunRecord], Awaitable[None]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    """One run of one pod, as the engine knows it.

    ``log`` is the log's path relative to the pod root (absolute when the log
    lies outside the pod). ``position`` is the 1-based place in the queue
    while ``state`` is ``queued``. ``stopped_with`` names the last signal the
    engine had to send to stop the run (cancel, timeout or daemon shutdown).
    ``proc_start`` and ``boot_id`` identify the process beyond its pid, so a
    restarted daemon never signals a recycled pid; they are kept in the
    state directory but not shown.
    """

    pod: str
    run_id: str
    state: RunState
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None
    stopped_with: str | None = None
    log: str | None = None
    pid: int | None = None
    position: int | None = None
    argv: list[str] = field(default_factory=list)
    timeout: float | None = None
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    proc_start: int | None = None
    boot_id: str | None = None

    @property
    def finished(self) -> bool:
        return self.state.finished

    def copy(self) -> RunRecord:
        return copy.deepcopy(self)

    def to_json(self) -> dict[str, Any]:
        """The record as ``.sovr/status`` shows it."""
        return {
            "run_id": self.run_id,
            "pod": self.pod,
            "state": self.state.value,
            "queued_at": format_time(self.queued_at),
            "started_at": format_time(self.started_at),
            "finished_at": format_time(self.finished_at),
            "exit_code": self.exit_code,
            "signal": self.signal,
            "reason": self.reason,
            "stopped_with": self.stopped_with,
            "log": self.log,
            "pid": self.pid,
            "position": self.position,
            "argv": list(self.argv),
            "timeout": self.timeout,
            "warnings": list(self.warnings),
            "meta": copy.deepcopy(self.meta),
        }

    def to_state(self) -> dict[str, Any]:
        """The record as the state directory keeps it."""
        data = self.to_json()
        data["proc_start"] = self.proc_start
        data["boot_id"] = self.boot_id
        return data

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> RunRecord:
        """Read back :meth:`to_state`; raises ``KeyError``/``ValueError`` on bad data."""
        return cls(
            pod=str(data["pod"]),
            run_id=str(data["run_id"]),
            state=RunState(data["state"]),
            queued_at=parse_time(data.get("queued_at")),
            started_at=parse_time(data.get("started_at")),
            finished_at=parse_time(data.get("finished_at")),
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            reason=data.get("reason"),
            stopped_with=data.get("stopped_with"),
            log=data.get("log"),
            pid=data.get("pid"),
            position=data.get("position"),
            argv=list(data.get("argv") or []),
            timeout=data.get("timeout"),
            warnings=list(data.get("warnings") or []),
            meta=dict(data.get("meta") or {}),
            proc_start=data.get("proc_start"),
            boot_id=data.get("boot_id"),
        )


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(when: datetime | None) -> str | None:
    """ISO 8601 in UTC with millisecond precision, ``Z`` suffix."""
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text).astimezone(UTC)


def new_run_id(when: datetime, taken: Callable[[str], bool] = lambda _: False) -> str:
    """A run id like ``20261203T131500Z-3f9a``: UTC start second plus 4 random hex digits.

    Ids sort by the second they were made in; ``taken`` rejects an id already
    in use (two runs of one pod within the same second).
    """
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    while True:
        run_id = f"{stamp}-{secrets.token_hex(2)}"
        if not taken(run_id):
            return run_id


def pod_relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` when it lies inside it, else ``path`` itself."""
    rel = os.path.relpath(path, root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return path
    return rel
