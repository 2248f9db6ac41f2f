"""Tasks: recipes that chain compute pods.

A task recipe lists pods (sharing references or local pod names) instead of
a ``golem`` section. Running it runs the pods one after another: before step
*n* starts, the output directory of step *n-1* is copied into step *n*'s
``payload/external/``, and the task's own ``payload`` entries (if any) are
fetched into every step. A step that does not succeed stops the chain, and
the task's status says which step and why.

A sharing reference is forked the first time the task needs it; which pod
holds it is remembered per task pod in the daemon's state directory, so a
second run of the task reuses those pods (and their earlier outputs) instead
of forking again.

The chain is driven by one background job per running task, started in the
nursery of :meth:`Tasks.serve`. The status is kept in memory: after a daemon
restart a task shows no status until it runs again (its steps' runs keep
their own records).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ..errors import NotFound, RecipeError, RunBusy, RunError, SovrError, describe
from ..recipe import Recipe, Task, is_sharing_ref
from ..runs.record import RunRecord, RunState
from . import tree
from .payloads import external_dir

if TYPE_CHECKING:
    from ..app import App
    from ..store.base import PodStore
    from .payloads import Payloads

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One pod of a running task."""

    source: str
    pod: str | None = None
    run_id: str | None = None
    state: str = "pending"
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "pod": self.pod,
            "run_id": self.run_id,
            "state": self.state,
            "reason": self.reason,
        }


@dataclass
class TaskRun:
    pod: str
    name: str
    steps: list[Step]
    state: str = "running"
    reason: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state != "running"

    def finish(self, state: str, reason: str | None = None) -> None:
        self.state = state
        self.reason = reason
        self.finished_at = time.time()

    def to_json(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "task": self.name,
            "state": self.state,
            "reason": self.reason,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "steps": [s.to_json() for s in self.steps],
        }


class Tasks:
    """Runs task pods. ``fork(ref) -> pod name`` forks a shared pod for a step."""

    def __init__(
        self,
        store: PodStore,
        app: App,
        payloads: Payloads,
        io: Callable[..., Awaitable[Any]],
        fork: Callable[[str], Awaitable[str]],
        state_file: Path,
    ) -> None:
        self.store = store
        self.app = app
        self.payloads = payloads
        self._io = io
        self._fork = fork
        self._state_file = state_file
        self._runs: dict[str, TaskRun] = {}
        self._nursery: trio.Nursery | None = None
        self._map_lock = trio.Lock()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the background jobs of running tasks until cancelled."""
        if self._nursery is not None:
            raise RuntimeError("the task service is already serving")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    @property
    def serving(self) -> bool:
        """Whether :meth:`serve` is running (tasks can start)."""
        return self._nursery is not None

    def status(self, pod: str) -> dict[str, Any] | None:
        run = self._runs.get(pod)
        return run.to_json() if run is not None else None

    def busy(self, pod: str) -> bool:
        run = self._runs.get(pod)
        return run is not None and not run.finished

    async def start(self, pod: str, task: Task) -> RunRecord:
        """Start the task in ``pod``; return the record of its first step's run."""
        run = self._runs.get(pod)
        if run is not None and not run.finished:
            done = sum(s.state == RunState.SUCCEEDED.value for s in run.steps)
            raise RunBusy(
                f"task {run.name} in pod {pod} is already running "
                f"(step {done + 1} of {len(run.steps)})"
            )
        nursery = self._nursery
        if nursery is None:
            raise RunError("tasks cannot run: the daemon's task service is not running")
        run = TaskRun(pod, task.name, [Step(source) for source in task.pods])
        self._runs[pod] = run
        log.info("task %s in pod %s started (%d pods)", task.name, pod, len(run.steps))
        try:
            record = await self._start_step(run, task, 0)
        except SovrError as exc:
            self._fail(run, 0, describe(exc))
            raise
        nursery.start_soon(self._follow, run, task, record, name=f"task:{pod}")
        return record

    async def cancel(self, pod: str) -> bool:
        """Stop a running task (its current step's run too); False if none runs."""
        run = self._runs.get(pod)
        if run is None or run.finished:
            return False
        run.finish("cancelled", "cancelled by the user")
        for step in run.steps:
            if (
                step.pod is not None
                and step.run_id is not None
                and step.state in ("queued", "running")
            ):
                await self.app.engine.cancel(step.pod)
        log.info("task %s in pod %s cancelled", run.name, pod)
        return True

    # -- the chain -----------------------------------------------------------

    async def _follow(self, run: TaskRun, task: Task, record: RunRecord) -> None:
        index = 0
        try:
            while True:
                step = run.steps[index]
                assert step.pod is not None
                final = await self.app.engine.wait(step.pod, record.run_id)
                step.state = final.state.value
                step.reason = final.reason
                if run.finished:
                    return
                if final.state is not RunState.SUCCEEDED:
                    why = final.reason or final.state.value
                    self._fail(run, index, f"run {final.run_id} {final.state.value}: {why}")
                    return
                index += 1
                if index == len(run.steps):
                    run.finish("succeeded")
                    log.info("task %s in pod %s succeeded", run.name, run.pod)
                    return
                try:
                    record = await self._start_step(run, task, index)
                except SovrError as exc:
                    self._fail(run, index, describe(exc))
                    return
        except Exception as exc:
            # A bug must not take the daemon's background service down with it.
            log.error("task %s in pod %s broke: %s", run.name, run.pod, exc, exc_info=True)
            self._fail(run, index, f"internal error: {exc}")

    def _fail(self, run: TaskRun, index: int, reason: str) -> None:
        step = run.steps[index]
        if step.state in ("pending", "queued", "running"):
            step.state = "failed"
        step.reason = step.reason or reason
        where = step.pod or step.source
        run.finish("failed", f"step {index + 1} of {len(run.steps)} ({where}): {reason}")
        log.info("task %s in pod %s failed: %s", run.name, run.pod, run.reason)

    async def _start_step(self, run: TaskRun, task: Task, index: int) -> RunRecord:
        step = run.steps[index]
        step.state = "preparing"
        step.pod = await self._resolve(run.pod, step.source, index)
        _, recipe = await self.app.load_recipe(step.pod)
        if not isinstance(recipe, Recipe):
            raise RecipeError(f"pods[{index}]: pod {step.pod} holds a task; tasks do not nest")
        if index > 0:
            previous = run.steps[index - 1]
            assert previous.pod is not None
            await self._hand_over(previous.pod, step.pod, recipe)
        if task.payload:
            await self.payloads.fetch_all(
                step.pod, task.payload, external_dir(recipe), field="payload"
            )
        request = await self.app.build_request(step.pod, recipe)
        request.meta["task"] = {"pod": run.pod, "name": run.name, "step": index + 1}
        record = await self.app.engine.submit(request)
        step.run_id = record.run_id
        step.state = record.state.value
        log.info("task %s step %d: run %s of pod %s", run.name, index + 1, record.run_id, step.pod)
        return record

    async def _hand_over(self, src_pod: str, dst_pod: str, dst_recipe: Recipe) -> None:
        """Copy ``src_pod``'s output into ``dst_pod``'s external payload directory."""
        _, src_recipe = await self.app.load_recipe(src_pod)
        if not isinstance(src_recipe, Recipe):
            raise RecipeError(f"pod {src_pod} holds a task, not a compute pod")
        src_root = self.app.pod_root(src_pod)
        dst_root = self.app.pod_root(dst_pod)
        await self._io(
            _copy_output, src_root, src_recipe.golem.output_dir, dst_root, external_dir(dst_recipe)
        )
        log.debug("copied output of %s into %s", src_pod, dst_pod)

    async def _resolve(self, task_pod: str, source: str, index: int) -> str:
        """The local pod that runs ``source`` (forked now if it is a reference)."""
        if not is_sharing_ref(source):
            try:
                await self.store.stat(source, "/")
            except NotFound:
                raise NotFound(f"pods[{index}]: no pod named {source}") from None
            return source
        ref = source.lower()
        async with self._map_lock:
            mapping = await trio.to_thread.run_sync(self._load_map)
            known = mapping.get(task_pod, {}).get(ref)
            if known is not None:
                try:
                    await self.store.stat(known, "/")
                    return known
                except NotFound:
                    pass
            pod = await self._fork(ref)
            mapping.setdefault(task_pod, {})[ref] = pod
            await trio.to_thread.run_sync(self._save_map, mapping)
        return pod

    def _load_map(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_map(self, mapping: dict[str, dict[str, str]]) -> None:
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(mapping, indent=1, sort_keys=True))
        os.replace(tmp, self._state_file)


def _copy_output(src_root: str, output_rel: str, dst_root: str, target_rel: str) -> None:
    try:
        src = tree.resolve(src_root, output_rel, shown=output_rel + "/")
    except NotFound:
        return  # the step wrote no output: nothing to hand over
    target = tree.resolve(dst_root, target_rel, create=True, shown=target_rel + "/")
    tree.merge(src, target)
