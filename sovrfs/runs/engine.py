"""The run engine: starts, watches, stops and remembers the runs of compute pods.

How a run goes::

    submit ──> queued ──> running ──> succeeded | failed | cancelled | interrupted
                 │                        ▲
                 └── cancel ──> cancelled ┘

Each run is one task in the engine's nursery. The task spawns the command in
a session of its own, pumps its output through the scrubber into the log,
waits for the exit, a cancel request or the timeout, and on a stop request
escalates SIGINT, SIGTERM, SIGKILL with a grace period between. Once the
leader has exited, anything left in its process group is stopped too, the
``after_exit`` hook runs, the footer goes into the log, and the record moves
to the pod's history.

Run tasks are shielded from the cancellation of :meth:`RunEngine.serve`: when
the daemon stops, the engine first asks every run to stop the ordinary way and
waits for them (bounded), so a run is never left half-recorded. Only if that
takes too long are the tasks cancelled and their groups killed.

Every change of state that matters after a crash (submitted, started with its
pid, finished) is written to the state directory before the engine moves on.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import logging
import math
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..errors import NotFound, RunBusy, RunError, describe
from .logfile import RunLog
from .process import (
    base_env,
    boot_id,
    group_is_ours,
    group_members,
    ignored_signals,
    make_preexec,
    run_env,
    signal_group,
    signal_name,
    spawn_failure,
    start_time,
)
from .record import (
    RunRecord,
    RunRequest,
    RunState,
    StreamScrubber,
    format_time,
    new_run_id,
    pod_relative,
    utc_now,
)
from .state import StateDir

log = logging.getLogger(__name__)

#: Bytes read from a run's output pipe at a time.
_CHUNK = 64 * 1024
#: How much of the log's end is kept for ``classify``.
_TAIL = 64 * 1024
#: How long to wait for the output pipe to close once the process group is gone;
#: only a process that left the group can hold it open longer.
_DRAIN_TIMEOUT = 5.0
#: How long to wait for a process group after SIGKILL.
_KILL_WAIT = 5.0
#: Polling interval while waiting for processes that are not our children.
_POLL = 0.05

INTERRUPTED_REASON = "the daemon stopped while the run was in flight"


class _Stop(enum.Enum):
    CANCEL = "cancel"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"


class _Phase(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(eq=False)
class _Active:
    """A run that is queued or running, with what its task needs besides the record."""

    record: RunRecord
    request: RunRequest
    started: bool = False
    published: bool = False
    stop: _Stop | None = None
    #: The stop that signals were actually sent for; a process that exits on
    #: its own while a stop is being requested keeps its own outcome.
    stopped_by: _Stop | None = None
    stop_requested: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    process: trio.Process | None = None
    log: RunLog | None = None

    def request_stop(self, why: _Stop) -> bool:
        """Ask the run to stop; False if it was already asked."""
        if self.stop is not None:
            return False
        self.stop = why
        self.stop_requested.set()
        return True


class _Tail:
    """The last bytes of the output, for ``classify`` and the footer."""

    def __init__(self, limit: int = _TAIL) -> None:
        self._buf = bytearray()
        self._limit = limit

    def add(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._limit:
            del self._buf[: len(self._buf) - self._limit]

    def text(self) -> str:
        return self._buf.decode("utf-8", "replace")

    def ends_line(self) -> bool:
        return not self._buf or self._buf.endswith(b"\n")


class _Scrub:
    """The request's scrubber, made safe: after any failure everything is dropped.

    The scrubber hides secrets; passing output through unscrubbed after it
    broke could write them into the pod.
    """

    def __init__(self, factory: Callable[[], StreamScrubber] | None, record: RunRecord) -> None:
        self._record = record
        self._broken = False
        self._scrubber: StreamScrubber | None = None
        if factory is not None:
            try:
                self._scrubber = factory()
            except Exception:
                self._break()

    def feed(self, data: bytes) -> bytes:
        return self._call(lambda s: s.feed(data))

    def flush(self) -> bytes:
        return self._call(lambda s: s.flush())

    def _call(self, step: Callable[[StreamScrubber], bytes]) -> bytes:
        if self._broken:
            return b""
        if self._scrubber is None:
            return step(_NoScrub())
        try:
            return step(self._scrubber)
        except Exception:
            self._break()
            return b""

    def _break(self) -> None:
        self._broken = True
        log.exception("the log scrubber of run %s failed", self._record.run_id)
        self._record.warnings.append(
            "the log scrubber failed; the rest of the output was not logged"
        )


class _NoScrub:
    def feed(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class RunEngine:
    """Runs compute pods' commands, at most ``max_parallel`` at once, and keeps their records.

    ``on_change(pod)`` is called (synchronously, from the trio loop) whenever
    what :meth:`current` returns for that pod changes. ``state_dir`` holds the
    records across daemon restarts.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        max_parallel: int = 2,
        grace_int: float = 5.0,
        grace_term: float = 5.0,
        on_change: Callable[[str], None] | None = None,
        history_limit: int = 100,
        after_exit_timeout: float = 30.0,
    ) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.max_parallel = max_parallel
        self.grace_int = grace_int
        self.grace_term = grace_term
        self.history_limit = history_limit
        self.after_exit_timeout = after_exit_timeout
        self._on_change = on_change
        self._state = StateDir(state_dir)
        self._phase = _Phase.NEW
        self._nursery: trio.Nursery | None = None
        self._active: dict[str, _Active] = {}
        self._queue: list[_Active] = []
        self._running = 0
        self._history: dict[str, list[RunRecord]] = {}
        self._save_lock = trio.Lock()
        # Log writes may wait on the daemon's own FUSE loop; a limiter of their
        # own keeps them from starving the store's worker threads, and the
        # other way round.
        self._io_limiter = trio.CapacityLimiter(max_parallel + 2)
        self._scopes: set[trio.CancelScope] = set()
        self._quiet: trio.Event | None = None
        self._unsaved: set[str] = set()
        self._base_env = base_env()
        self._boot_id = boot_id()

    # -- lifecycle ---------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover from the previous daemon, then serve runs until cancelled.

        Runs recorded as queued or running are marked ``interrupted``, and the
        process groups they left behind are stopped. Nothing is started again.
        On cancellation, every run is stopped (SIGINT first) and recorded as
        ``interrupted`` before this returns.
        """
        if self._phase is not _Phase.NEW:
            raise RuntimeError(f"a RunEngine serves once; this one is {self._phase.value}")
        loaded = await trio.to_thread.run_sync(self._state.load_all)
        recovered, orphans = self._recover(loaded)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._phase = _Phase.SERVING
                for pod in sorted(recovered):
                    self._start_task(self._persist, pod)
                for record in orphans:
                    self._start_task(self._stop_orphan, record)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._shutdown()
        finally:
            self._nursery = None
            self._phase = _Phase.STOPPED
            with trio.CancelScope(shield=True):
                for pod in sorted(self._unsaved):
                    await self._persist(pod)

    def _recover(self, loaded: dict[str, list[RunRecord]]) -> tuple[set[str], list[RunRecord]]:
        now = utc_now()
        recovered: set[str] = set()
        orphans: list[RunRecord] = []
        for pod, records in loaded.items():
            for record in records:
                if record.finished:
                    continue
                log.info(
                    "run %s of pod %s was in flight when the daemon stopped", record.run_id, pod
                )
                record.state = RunState.INTERRUPTED
                record.position = None
                record.finished_at = now
                record.reason = INTERRUPTED_REASON
                recovered.add(pod)
                if record.pid is not None:
                    orphans.append(record)
            self._history[pod] = records[-self.history_limit :]
        return recovered, orphans

    async def _stop_orphan(self, record: RunRecord) -> None:
        """Stop what a run of the previous daemon left running, if it is still ours."""
        assert record.pid is not None
        pgid = record.pid
        ours = await trio.to_thread.run_sync(group_is_ours, pgid, record.proc_start, record.boot_id)
        if not ours:
            log.debug("process group %d of run %s is gone or not ours", pgid, record.run_id)
            return
        log.info(
            "stopping left-over processes of run %s of pod %s (process group %d)",
            record.run_id,
            record.pod,
            pgid,
        )
        used = await self._stop_group(pgid)
        if used is None:
            return
        record.stopped_with = used
        record.reason = f"{INTERRUPTED_REASON}; its left-over processes were stopped with {used}"
        self._notify(record.pod)
        await self._persist(record.pod)

    async def _shutdown(self) -> None:
        self._phase = _Phase.STOPPING
        for active in list(self._queue):
            self._queue.remove(active)
            self._conclude_early(active, RunState.INTERRUPTED, INTERRUPTED_REASON)
            self._unsaved.add(active.record.pod)
        for active in self._active.values():
            active.request_stop(_Stop.SHUTDOWN)
        bound = self.grace_int + self.grace_term + _KILL_WAIT + self.after_exit_timeout
        bound += _DRAIN_TIMEOUT
        if self._scopes:
            self._quiet = trio.Event()
            with trio.move_on_after(bound):
                await self._quiet.wait()
        if self._scopes:
            log.warning("stopping the runs took too long; killing what is left")
        for scope in list(self._scopes):
            scope.cancel()

    def _check_serving(self) -> None:
        if self._phase is not _Phase.SERVING:
            raise RunError(f"the run engine is not serving (it is {self._phase.value})")

    def _start_task(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._shielded, fn, *args, name=f"runs:{fn.__name__}")

    async def _shielded(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run an engine task that outlives the cancellation of :meth:`serve`.

        The task ends through its own logic (a stop request) so that its
        records get written; :meth:`_shutdown` cancels the scope only when
        that takes too long.
        """
        with trio.CancelScope(shield=True) as scope:
            self._scopes.add(scope)
            try:
                await fn(*args)
            finally:
                self._scopes.discard(scope)
                if not self._scopes and self._quiet is not None:
                    self._quiet.set()

    # -- public API --------------------------------------------------------

    async def submit(self, req: RunRequest) -> RunRecord:
        """Queue a run of ``req.pod``; it starts as soon as a slot is free.

        Raises :class:`~sovrfs.errors.RunBusy` if the pod already has a run
        queued or running. Returns a snapshot of the new record.
        """
        self._check_serving()
        if not req.argv:
            raise ValueError("a run needs a command")
        self._refuse_busy(req.pod)
        now = utc_now()
        run_id = new_run_id(now, lambda rid: self.record(req.pod, rid) is not None)
        req = dataclasses.replace(req, log_path=req.log_path.replace("{run_id}", run_id))
        record = RunRecord(
            pod=req.pod,
            run_id=run_id,
            state=RunState.QUEUED,
            queued_at=now,
            log=pod_relative(req.log_path, req.cwd),
            argv=list(req.argv),
            timeout=req.timeout,
            meta=copy.deepcopy(req.meta),
        )
        active = _Active(record, req)
        self._active[req.pod] = active
        self._queue.append(active)
        log.debug("run %s of pod %s submitted", record.run_id, req.pod)
        self._start_queued()
        if not active.started:
            self._renumber()
        snapshot = record.copy()
        self._notify(req.pod)
        await self._persist(req.pod)
        return snapshot

    def record_failure(
        self, pod: str, reason: str, *, meta: dict[str, Any] | None = None
    ) -> RunRecord:
        """Record a run that failed before it could be submitted (a bad recipe).

        Nothing is run; ``.sovr/status`` then shows ``reason``.
        """
        self._check_serving()
        self._refuse_busy(pod)
        now = utc_now()
        record = RunRecord(
            pod=pod,
            run_id=new_run_id(now, lambda rid: self.record(pod, rid) is not None),
            state=RunState.FAILED,
            queued_at=now,
            finished_at=now,
            reason=reason,
            meta=copy.deepcopy(meta or {}),
        )
        log.info("run of pod %s refused: %s", pod, reason)
        self._add_history(record)
        self._notify(pod)
        self._start_task(self._persist, pod)
        return record.copy()

    async def cancel(self, pod: str, *, wait: bool = True) -> RunRecord | None:
        """Cancel the pod's queued or running run; None if it has none.

        A queued run is dropped from the queue. A running one is stopped by
        escalating signals; with ``wait`` this returns once it has stopped,
        otherwise at once (the record then still says ``running``).
        """
        active = self._active.get(pod)
        if active is None:
            return None
        record = active.record
        if not active.started:
            self._queue.remove(active)
            log.info("run %s of pod %s cancelled before it started", record.run_id, pod)
            self._conclude_early(active, RunState.CANCELLED, "cancelled before it started")
            self._renumber()
            await self._persist(pod)
            return record.copy()
        if active.request_stop(_Stop.CANCEL):
            log.info("cancelling run %s of pod %s", record.run_id, pod)
        if wait:
            await active.finished.wait()
        return record.copy()

    def current(self, pod: str) -> RunRecord | None:
        """The pod's queued or running run, else its last finished one."""
        active = self._active.get(pod)
        if active is not None:
            return active.record.copy()
        history = self._history.get(pod)
        return history[-1].copy() if history else None

    def history(self, pod: str) -> list[RunRecord]:
        """The pod's finished runs, oldest first."""
        return [r.copy() for r in self._history.get(pod, [])]

    def record(self, pod: str, run_id: str) -> RunRecord | None:
        active = self._active.get(pod)
        if active is not None and active.record.run_id == run_id:
            return active.record.copy()
        for record in self._history.get(pod, []):
            if record.run_id == run_id:
                return record.copy()
        return None

    def busy(self, pod: str) -> bool:
        """Whether the pod has a run queued or running."""
        return pod in self._active

    def summary(self) -> dict[str, Any]:
        """Queued and running runs, for ``.sovr/status.json``."""
        running = [a.record for a in self._active.values() if a.started]
        return {
            "max_parallel": self.max_parallel,
            "running": len(running),
            "queued": len(self._queue),
            "running_runs": [
                {
                    "pod": r.pod,
                    "run_id": r.run_id,
                    "started_at": format_time(r.started_at),
                    "pid": r.pid,
                }
                for r in sorted(running, key=lambda r: r.run_id)
            ],
            "queued_runs": [
                {"pod": a.record.pod, "run_id": a.record.run_id, "position": a.record.position}
                for a in self._queue
            ],
        }

    async def wait(self, pod: str, run_id: str) -> RunRecord:
        """Wait until the run has finished and return its record.

        Raises :class:`~sovrfs.errors.NotFound` for an unknown run.
        """
        active = self._active.get(pod)
        if active is not None and active.record.run_id == run_id:
            await active.finished.wait()
            return active.record.copy()
        record = self.record(pod, run_id)
        if record is None:
            raise NotFound(f"pod {pod} has no run {run_id}")
        return record

    async def wait_idle(self, pod: str) -> None:
        """Wait until the pod has no run queued or running."""
        while (active := self._active.get(pod)) is not None:
            await active.finished.wait()

    def forget_pod(self, pod: str) -> None:
        """Drop the records of a deleted pod. RunBusy while it has a run."""
        self._check_serving()
        self._refuse_busy(pod)
        if self._history.pop(pod, None) is not None:
            self._notify(pod)
            self._start_task(self._persist, pod)

    def rename_pod(self, old: str, new: str) -> None:
        """Carry a renamed pod's records over. RunBusy while either name has a run."""
        self._check_serving()
        self._refuse_busy(old)
        self._refuse_busy(new)
        records = self._history.pop(old, [])
        for record in records:
            record.pod = new
        if records:
            self._history[new] = records
        else:
            self._history.pop(new, None)
        self._notify(old)
        self._notify(new)
        self._start_task(self._persist, old)
        self._start_task(self._persist, new)

    # -- bookkeeping -------------------------------------------------------

    def _refuse_busy(self, pod: str) -> None:
        active = self._active.get(pod)
        if active is not None:
            raise RunBusy(
                f"pod {pod} already has a run {active.record.state.value} ({active.record.run_id})"
            )

    def _notify(self, pod: str) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(pod)
        except Exception:
            log.exception("the on_change callback failed for pod %s", pod)

    def _start_queued(self) -> None:
        if self._phase is not _Phase.SERVING:
            return
        started = False
        while self._queue and self._running < self.max_parallel:
            active = self._queue.pop(0)
            active.started = True
            active.record.state = RunState.RUNNING
            active.record.started_at = utc_now()
            active.record.position = None
            self._running += 1
            self._start_task(self._execute, active)
            self._notify(active.record.pod)
            started = True
        if started:
            self._renumber()

    def _renumber(self) -> None:
        for place, active in enumerate(self._queue, start=1):
            if active.record.position != place:
                active.record.position = place
                self._notify(active.record.pod)

    def _add_history(self, record: RunRecord) -> None:
        history = self._history.setdefault(record.pod, [])
        history.append(record)
        del history[: -self.history_limit]

    def _conclude_early(self, active: _Active, state: RunState, reason: str) -> None:
        """Finish a run that never started."""
        active.record.state = state
        active.record.reason = reason
        active.record.finished_at = utc_now()
        self._publish(active)

    def _publish(self, active: _Active) -> None:
        """Move a finished run from the active set to its pod's history."""
        if active.published:
            return
        active.published = True
        record = active.record
        record.position = None
        del self._active[record.pod]
        if active.started:
            self._running -= 1
        self._add_history(record)
        active.finished.set()
        self._notify(record.pod)
        self._start_queued()

    async def _persist(self, pod: str) -> None:
        """Write the pod's records to the state directory.

        Each call takes its snapshot only once it holds the lock, so when
        calls overlap the last write carries the newest state.
        """
        async with self._save_lock:
            records = [r.to_state() for r in self._history.get(pod, [])]
            active = self._active.get(pod)
            if active is not None:
                records.append(active.record.to_state())
            try:
                await trio.to_thread.run_sync(self._state.save, pod, records)
            except OSError as exc:
                log.error("cannot save the run records of pod %s: %s", pod, exc)
            else:
                self._unsaved.discard(pod)

    # -- one run -----------------------------------------------------------

    async def _execute(self, active: _Active) -> None:
        record = active.record
        try:
            await self._run(active)
        except trio.Cancelled:
            self._kill_hard(active)
            if not record.finished:
                record.state = RunState.INTERRUPTED
                record.reason = f"{INTERRUPTED_REASON}; it did not stop in time and was killed"
                record.finished_at = utc_now()
            self._publish(active)
            self._unsaved.add(record.pod)
            raise
        except Exception as exc:
            log.exception(
                "run %s of pod %s failed inside the run engine", record.run_id, record.pod
            )
            self._kill_hard(active)
            if active.log is not None:
                await active.log.aclose()
            record.state = RunState.FAILED
            record.reason = f"internal error of the run engine: {describe(exc)}"
            record.finished_at = record.finished_at or utc_now()
            self._publish(active)
            await self._persist(record.pod)

    def _kill_hard(self, active: _Active) -> None:
        proc = active.process
        if proc is not None and proc.returncode is None:
            signal_group(proc.pid, signal.SIGKILL)

    async def _run(self, active: _Active) -> None:
        record, req = active.record, active.request
        runlog = active.log = RunLog(req.log_path, self._io_limiter, req.open_log)
        await runlog.open()
        await runlog.write(self._scrub_whole(req, record, self._header(record)))
        try:
            proc = await self._spawn(active)
        except OSError as exc:
            record.state = RunState.FAILED
            record.reason = spawn_failure(exc, req.argv, req.cwd)
            log.info(
                "run %s of pod %s could not start: %s", record.run_id, record.pod, record.reason
            )
            await self._finish(active, runlog, _Tail())
            return
        log.info("run %s of pod %s started (pid %d)", record.run_id, record.pod, proc.pid)
        self._notify(record.pod)
        await self._persist(record.pod)

        tail = _Tail()
        assert proc.stdout is not None
        async with trio.open_nursery() as nursery:
            drained = trio.Event()
            nursery.start_soon(
                self._pump, proc.stdout, runlog, _Scrub(req.scrubber, record), tail, drained
            )
            await self._wait_or_stop(active, proc)
            await self._clear_group(record, proc.pid)
            with trio.move_on_after(_DRAIN_TIMEOUT):
                await drained.wait()
            if not drained.is_set():
                record.warnings.append(
                    "a process that left the run's process group kept its output open; "
                    "later output was not logged"
                )
            nursery.cancel_scope.cancel()
        await proc.stdout.aclose()

        assert proc.returncode is not None
        self._classify(active, proc.returncode, tail.text())
        await self._finish(active, runlog, tail)

    async def _spawn(self, active: _Active) -> trio.Process:
        record, req = active.record, active.request
        env = run_env(
            self._base_env,
            req.env,
            {"SOVR_POD": record.pod, "SOVR_RUN_ID": record.run_id, "SOVR_LOG": req.log_path},
        )
        # trio starts Popen in a worker thread: the child's chdir into the pod
        # root is a FUSE request this very loop has to answer.
        proc = await trio.lowlevel.open_process(
            req.argv,
            cwd=req.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=make_preexec(ignored_signals()),
        )
        active.process = proc
        record.pid = proc.pid
        record.proc_start = start_time(proc.pid)
        record.boot_id = self._boot_id
        return proc

    async def _pump(
        self,
        stream: trio.abc.ReceiveStream,
        runlog: RunLog,
        scrub: _Scrub,
        tail: _Tail,
        drained: trio.Event,
    ) -> None:
        """Copy the output into the log until end of file."""
        while chunk := await stream.receive_some(_CHUNK):
            data = scrub.feed(bytes(chunk))
            tail.add(data)
            await runlog.write(data)
        data = scrub.flush()
        tail.add(data)
        await runlog.write(data)
        drained.set()

    async def _wait_or_stop(self, active: _Active, proc: trio.Process) -> None:
        """Return once the process has exited, stopping it first if asked or timed out."""
        timeout = active.request.timeout
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        async with trio.open_nursery() as nursery:

            async def on_stop() -> None:
                await active.stop_requested.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_stop)
            with trio.move_on_at(deadline):
                await proc.wait()
            nursery.cancel_scope.cancel()
        if proc.returncode is not None:
            return
        if active.request_stop(_Stop.TIMEOUT):
            log.info("run %s of pod %s timed out", active.record.run_id, active.record.pod)
        active.stopped_by = active.stop
        await self._escalate(active, proc)

    async def _escalate(self, active: _Active, proc: trio.Process) -> None:
        record = active.record
        steps = (
            (signal.SIGINT, self.grace_int),
            (signal.SIGTERM, self.grace_term),
            (signal.SIGKILL, math.inf),
        )
        for signum, grace in steps:
            record.stopped_with = signum.name
            log.info("stopping run %s of pod %s with %s", record.run_id, record.pod, signum.name)
            signal_group(proc.pid, signum)
            self._notify(record.pod)
            with trio.move_on_after(grace):
                await proc.wait()
                return

    async def _clear_group(self, record: RunRecord, pgid: int) -> None:
        """Stop what the run left in its process group after its main process ended."""
        members = await trio.to_thread.run_sync(group_members, pgid)
        if not members:
            return
        log.info(
            "run %s of pod %s left %d process(es) behind; stopping them",
            record.run_id,
            record.pod,
            len(members),
        )
        used = await self._stop_group(pgid)
        if used is not None:
            record.warnings.append(
                f"{len(members)} process(es) still in the run's process group after it ended "
                f"were stopped with {used}"
            )

    async def _stop_group(self, pgid: int) -> str | None:
        """Escalate signals on a group whose members are not our children; the last one used."""
        used = None
        steps = (
            (signal.SIGINT, self.grace_int),
            (signal.SIGTERM, self.grace_term),
            (signal.SIGKILL, _KILL_WAIT),
        )
        for signum, grace in steps:
            if not signal_group(pgid, signum):
                return used
            used = signum.name
            if await self._wait_group_gone(pgid, grace):
                return used
        log.warning("process group %d is still there after SIGKILL", pgid)
        return used

    async def _wait_group_gone(self, pgid: int, within: float) -> bool:
        # The members are not our children (or no longer), so there is no
        # exit to wait for: look again until they are gone.
        with trio.move_on_after(within):
            while True:
                if not await trio.to_thread.run_sync(group_members, pgid):
                    return True
                await trio.sleep(_POLL)
        return False

    def _classify(self, active: _Active, returncode: int, tail: str) -> None:
        record, req = active.record, active.request
        if returncode < 0:
            record.signal = signal_name(-returncode)
        else:
            record.exit_code = returncode
        stopped = f"; stopped with {record.stopped_with}" if record.stopped_with else ""
        if active.stopped_by is _Stop.CANCEL:
            record.state, record.reason = RunState.CANCELLED, f"cancelled{stopped}"
            return
        if active.stopped_by is _Stop.TIMEOUT:
            record.state = RunState.FAILED
            record.reason = f"timed out after {req.timeout:g} s{stopped}"
            return
        if active.stopped_by is _Stop.SHUTDOWN:
            record.state, record.reason = RunState.INTERRUPTED, f"{INTERRUPTED_REASON}{stopped}"
            return
        verdict = None
        if req.classify is not None:
            try:
                verdict = req.classify(returncode, tail)
            except Exception:
                log.exception("classifying run %s failed", record.run_id)
        if returncode == 0:
            record.state = RunState.FAILED if verdict else RunState.SUCCEEDED
            record.reason = verdict
            return
        record.state = RunState.FAILED
        if returncode > 0:
            record.reason = f"exited with status {returncode}"
        else:
            record.reason = f"killed by {record.signal}"
        if verdict:
            record.reason += f": {verdict}"

    async def _finish(self, active: _Active, runlog: RunLog, tail: _Tail) -> None:
        record, req = active.record, active.request
        record.finished_at = utc_now()
        if req.after_exit is not None:
            await self._after_exit(req.after_exit, record)
        footer = self._footer(record, runlog.warnings, newline=not tail.ends_line())
        await runlog.write(self._scrub_whole(req, record, footer))
        await runlog.aclose()
        record.warnings.extend(w for w in runlog.warnings if w not in record.warnings)
        log.info(
            "run %s of pod %s %s%s",
            record.run_id,
            record.pod,
            record.state.value,
            f": {record.reason}" if record.reason else "",
        )
        self._publish(active)
        await self._persist(record.pod)

    async def _after_exit(
        self, hook: Callable[[RunRecord], Awaitable[None]], record: RunRecord
    ) -> None:
        try:
            with trio.fail_after(self.after_exit_timeout):
                await hook(record.copy())
        except trio.TooSlowError:
            log.warning("the after-exit step of run %s took too long; abandoned", record.run_id)
            record.warnings.append(
                f"the after-exit step did not finish within {self.after_exit_timeout:g} s"
            )
        except Exception as exc:
            log.warning("the after-exit step of run %s failed", record.run_id, exc_info=True)
            record.warnings.append(f"the after-exit step failed: {describe(exc)}")

    # -- log text ----------------------------------------------------------

    @staticmethod
    def _header(record: RunRecord) -> bytes:
        # One line whatever the arguments hold: JSON escapes their newlines.
        return (
            f"=== sovrfs run {record.run_id} of pod {record.pod} started "
            f"{format_time(record.started_at)}: {json.dumps(record.argv, ensure_ascii=False)}\n"
        ).encode()

    @staticmethod
    def _footer(record: RunRecord, log_warnings: list[str], *, newline: bool) -> bytes:
        lines = ["\n"] if newline else []
        for warning in [*record.warnings, *log_warnings]:
            lines.append(f"=== warning: {warning}\n")
        outcome = f"=== sovrfs run {record.run_id} {record.state.value}"
        if record.reason:
            outcome += f": {record.reason}"
        lines.append(f"{outcome} (finished {format_time(record.finished_at)})\n")
        return "".join(lines).encode()

    @staticmethod
    def _scrub_whole(req: RunRequest, record: RunRecord, data: bytes) -> bytes:
        scrub = _Scrub(req.scrubber, record)
        return scrub.feed(data) + scrub.flush()
