"""What a mounted sovrfs does, apart from being a filesystem.

:class:`App` ties the pod store, the run engine, Golem and the compute-pod
protocol together. The control files (:mod:`sovrfs.control`) call its
methods; so does nothing else, which keeps one path from a user's request to
its effect. Every method that a control file calls either finishes its work
or raises a :class:`~sovrfs.errors.SovrError` whose errno the user's
``open()``/``write()`` then returns, with the reason kept for
``.sovr/status``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from . import __version__
from .errors import (
    AlreadyExists,
    NotFound,
    PreflightFailed,
    RecipeError,
    RunBusy,
    SovrError,
    describe,
)
from .golem import GolemService, SecretSet, StreamScrubber
from .protocol import Protocol
from .recipe import Recipe, Task, autorun_matcher, exec_argv, find_recipe, parse_recipe
from .runs import RunEngine, RunRecord, RunRequest
from .secrets import known_secrets
from .store.base import Change, PodStore

log = logging.getLogger(__name__)


@dataclass
class AppSettings:
    mountpoint: str
    state_dir: Path
    max_parallel: int = 2
    default_timeout: float | None = None
    grace_int: float = 5.0
    grace_term: float = 5.0


@dataclass
class _Autorun:
    matcher: Any
    debounce: float
    pending: bool = False
    last_poke: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


class App:
    """The daemon's behaviour behind the control files."""

    def __init__(
        self,
        store: PodStore,
        engine: RunEngine,
        golem: GolemService | None,
        settings: AppSettings,
    ) -> None:
        self.store = store
        self.engine = engine
        self.golem = golem
        self.settings = settings
        self.protocol = Protocol(store, self)
        self.started_at = time.time()
        self.last_fork: dict[str, Any] | None = None
        self.last_persist: dict[str, dict[str, Any]] = {}
        self.last_error: dict[str, Any] | None = None
        self.persist_self_ref: str | None = None
        self._autorun: dict[str, _Autorun] = {}
        self._autorun_send, self._autorun_recv = trio.open_memory_channel[str](100)
        self._forked_file = settings.state_dir / "forked.json"
        self._forked: set[str] = self._load_forked()
        self.operations: Any = None  # the FUSE Operations, for status

    # -- lifecycle ---------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work: the run engine and the auto-run debouncer."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.engine.serve)
            await nursery.start(self.protocol.serve)
            nursery.start_soon(self._serve_autorun)
            task_status.started()

    def pod_root(self, pod: str) -> str:
        return os.path.join(self.settings.mountpoint, pod)

    # -- recipes -----------------------------------------------------------

    async def load_recipe(self, pod: str) -> tuple[str, Recipe | Task]:
        """The pod's recipe file name and its parsed content."""
        names = [name for name, _ in await self.store.listdir(pod, "/")]
        recipe_file = find_recipe(names)
        if recipe_file is None:
            raise RecipeError("(root): no *.recipe file in the pod")
        data = await self.store.read_bytes(pod, "/" + recipe_file)
        try:
            return recipe_file, parse_recipe(data, source=f"{pod}/{recipe_file}")
        except RecipeError as exc:
            raise RecipeError(f"{recipe_file}: {exc}") from None

    # -- runs --------------------------------------------------------------

    async def start_run(self, pod: str, *, by_user: bool = True) -> RunRecord:
        """Start the pod's run (``.sovr/run``). EBUSY while one runs, EINVAL for a bad recipe."""
        current = self.engine.current(pod)
        if current is not None and not current.finished:
            raise RunBusy(f"pod {pod} is already {current.state.value} ({current.run_id})")
        try:
            _, recipe = await self.load_recipe(pod)
            if isinstance(recipe, Task):
                return await self.protocol.start_task(pod, recipe)
            request = await self.build_request(pod, recipe)
        except RunBusy:
            raise
        except SovrError as exc:
            self.engine.record_failure(pod, describe(exc))
            log.info("run of %s refused: %s", pod, describe(exc))
            raise
        if by_user:
            self._mark_trusted(pod)
        record = await self.engine.submit(request)
        log.info("run %s of pod %s %s", record.run_id, pod, record.state.value)
        return record

    async def build_request(self, pod: str, recipe: Recipe) -> RunRequest:
        """Everything the engine needs to run ``recipe`` in ``pod``."""
        root = self.pod_root(pod)
        golem = recipe.golem
        argv = exec_argv(recipe, root)
        bin_dir = os.path.dirname(sys.executable)
        env = {
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
            "SOVR_POD": pod,
            "SOVR_POD_ROOT": root,
            "SOVR_OUTPUT": os.path.join(root, golem.output_dir),
            "SOVR_PAYLOAD": os.path.join(root, golem.payload_dir),
            "SOVR_MOUNT": self.settings.mountpoint,
        }
        settings = recipe.sovr.golem.model_dump(exclude_none=True)
        scrubber = classify = after_exit = None
        if recipe.sovr.golem.node:
            if self.golem is None:
                raise PreflightFailed(
                    "this recipe needs a Golem node (sovr.golem.node) but Golem is "
                    "turned off in the configuration ([golem] mode = off)"
                )
            await self.golem.preflight(settings, env["PATH"])
            env.update(self.golem.run_environment(settings))
            secrets = SecretSet([*self.golem.secrets(), *known_secrets()])
            scrubber = partial(StreamScrubber, secrets)
            classify = self.golem.classify
            after_exit = self._release_after(time.time())
        for problem in await self.protocol.prepare_payloads(pod, recipe):
            log.info("pod %s: %s", pod, problem)
        timeout = recipe.sovr.timeout or self.settings.default_timeout
        log_dir = os.path.join(root, golem.log_dir)
        return RunRequest(
            pod=pod,
            argv=argv,
            cwd=root,
            env=env,
            log_path=os.path.join(log_dir, "{run_id}.log"),
            open_log=partial(self._open_log, pod),
            timeout=timeout,
            scrubber=scrubber,
            classify=classify,
            after_exit=after_exit,
            meta={"recipe": recipe.name},
        )

    async def _open_log(self, pod: str, mount_path: str) -> tuple[int, Any]:
        """Open a run's log in the pod store itself, never through the mount.

        A daemon holding a file open on its own mount cannot die cleanly: the
        kernel would flush that file to the dead daemon and wait forever.
        """
        path = "/" + mount_path[len(self.pod_root(pod)) :].strip("/")
        parent = posixpath.dirname(path)
        await self._makedirs(pod, parent)
        fd = await self.store.open_file(
            pod, path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
        )

        async def close() -> None:
            await self.store.close_file(pod, path, fd, written=True)
            if self.operations is not None:
                await self.operations.apply_change(Change(pod, path))

        if self.operations is not None:
            await self.operations.apply_change(Change(pod, path))
        return fd, close

    async def _makedirs(self, pod: str, path: str) -> None:
        if path in ("", "/"):
            return
        try:
            await self.store.stat(pod, path)
            return
        except NotFound:
            pass
        await self._makedirs(pod, posixpath.dirname(path))
        with contextlib.suppress(AlreadyExists):
            await self.store.mkdir(pod, path, 0o755)

    def _release_after(self, since: float) -> Any:
        async def release(record: RunRecord) -> None:
            # Even SIGINT can leave an allocation behind when it lands while
            # the requestor is still starting; releasing is always safe, as
            # only allocations made since this run started are touched.
            if self.golem is not None and record.stopped_with is not None:
                released = await self.golem.release_allocations(since)
                if released:
                    log.info("released %d Golem allocation(s) of run %s", released, record.run_id)

        return release

    async def cancel_run(self, pod: str) -> None:
        if await self.protocol.cancel_task(pod):
            log.info("task of pod %s cancelled", pod)
            return
        record = await self.engine.cancel(pod)
        if record is None:
            raise NotFound(f"pod {pod} has no queued or running run")
        log.info("run %s of pod %s cancelled", record.run_id, pod)

    def log_path_of(self, pod: str) -> str | None:
        """The pod path of the current or last run's log, if there was a run."""
        record = self.engine.current(pod)
        if record is None or not record.log:
            return None
        log_rel = record.log
        return log_rel if log_rel.startswith("/") else "/" + log_rel

    # -- auto-run ----------------------------------------------------------

    def file_saved(self, pod: str, path: str) -> None:
        """A file was saved through the mount; start a run if the recipe asks for it."""
        try:
            self._autorun_send.send_nowait(f"{pod}\0{path}")
        except trio.WouldBlock:
            log.debug("auto-run queue full; dropped save of %s:%s", pod, path)

    async def _serve_autorun(self) -> None:
        async with trio.open_nursery() as nursery:
            async for item in self._autorun_recv:
                pod, _, path = item.partition("\0")
                await self._consider_autorun(pod, path, nursery)

    def recipe_changed(self, pod: str) -> None:
        """The pod's recipe file was written, replaced or removed."""
        self._autorun.pop(pod, None)

    async def _consider_autorun(self, pod: str, path: str, nursery: trio.Nursery) -> None:
        state = self._autorun.get(pod)
        if state is None:
            # Pods without a (valid) recipe or without auto-run are remembered
            # too, so their saves cost nothing until the recipe changes.
            state = _Autorun(None, 0.0)
            try:
                _, recipe = await self.load_recipe(pod)
            except (SovrError, OSError):
                recipe = None
            if isinstance(recipe, Recipe) and recipe.sovr.autorun is not None:
                state = _Autorun(autorun_matcher(recipe), recipe.sovr.autorun.debounce)
            self._autorun[pod] = state
        if state.matcher is None or not state.matcher(path.lstrip("/")):
            return
        if pod in self._forked:
            log.info("pod %s was forked: auto-run waits until you start one run yourself", pod)
            return
        state.last_poke = trio.current_time()
        if not state.pending:
            state.pending = True
            nursery.start_soon(self._fire_autorun, pod, state)

    async def _fire_autorun(self, pod: str, state: _Autorun) -> None:
        # Wait until the saves have been quiet for the debounce time, then one
        # run; if a run is going, wait for it and run once more after it.
        while True:
            await trio.sleep_until(state.last_poke + state.debounce)
            if trio.current_time() >= state.last_poke + state.debounce:
                break
        state.pending = False
        current = self.engine.current(pod)
        if current is not None and not current.finished:
            await self.engine.wait(pod, current.run_id)
        try:
            await self.start_run(pod, by_user=False)
        except (SovrError, OSError) as exc:
            log.info("auto-run of %s not started: %s", pod, describe(exc))
        except Exception:
            # A task of the app's nursery: letting this out would unmount.
            log.exception("auto-run of %s failed", pod)

    # -- forked pods never run on their own --------------------------------

    def _load_forked(self) -> set[str]:
        try:
            return set(json.loads(self._forked_file.read_text()))
        except (OSError, ValueError):
            return set()

    def _save_forked(self) -> None:
        self._forked_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._forked_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self._forked)))
        os.replace(tmp, self._forked_file)

    def mark_forked(self, pod: str) -> None:
        self._forked.add(pod)
        self._save_forked()

    def _mark_trusted(self, pod: str) -> None:
        if pod in self._forked:
            self._forked.discard(pod)
            self._save_forked()

    # -- pods --------------------------------------------------------------

    def check_idle(self, pod: str) -> None:
        """Refuse (EBUSY) to remove or rename a pod while it runs."""
        if self.engine.busy(pod):
            raise RunBusy(f"pod {pod} has a queued or running run; cancel it first")

    async def pod_removed(self, pod: str) -> None:
        self._autorun.pop(pod, None)
        self.engine.forget_pod(pod)
        if pod in self._forked:
            self._forked.discard(pod)
            self._save_forked()

    async def pod_renamed(self, old: str, new: str) -> None:
        self._autorun.pop(old, None)
        self.engine.rename_pod(old, new)
        if old in self._forked:
            self._forked.discard(old)
            self._forked.add(new)
            self._save_forked()

    async def refresh(self, pod: str | None = None) -> None:
        await self.store.refresh(pod)
        if self.operations is None:
            return
        await self.operations.apply_change(Change(pod or "", None))
        # The kernel keeps the attributes and pages of every file it has
        # seen, and a file this mount wrote a moment ago looks like an echo of
        # its own work: each known entry of the pod is checked again.
        known: list[tuple[str, str]] = []
        for node in list(self.operations.inodes):
            if node.virtual is not None or node.pod is None or pod not in (None, node.pod):
                continue
            with contextlib.suppress(NotFound):
                known.append(self.operations.inodes.locate(node))
        for name, path in sorted(known):
            await self.operations.apply_change(Change(name, path), explicit=True)

    async def refresh_from_control(self, line: str) -> None:
        pod = line.strip()
        await self.refresh(None if pod in ("", "*") else pod)

    # -- the protocol --------------------------------------------------------

    async def persist(self, pod: str) -> None:
        try:
            result = await self.protocol.persist(pod)
        except SovrError as exc:
            self.last_persist[pod] = {"ok": False, "error": describe(exc), "at": time.time()}
            raise
        self.last_persist[pod] = {"ok": True, **result.to_json(), "at": time.time()}
        log.info("pod %s persisted%s", pod, f", shared as {result.ref}" if result.ref else "")

    async def fork_from_control(self, ref: str) -> None:
        started = time.time()
        try:
            name = await self.protocol.fork(ref)
        except SovrError as exc:
            self.last_fork = {"ref": ref, "ok": False, "error": describe(exc), "at": started}
            raise
        self.last_fork = {"ref": ref, "ok": True, "pod": name, "at": started}
        log.info("forked %s as pod %s", ref.split()[0], name)

    async def _remember(self, what: str, action: Any) -> Any:
        """Run a root control action, keeping its outcome for status.json."""
        try:
            result = await action
        except SovrError as exc:
            self.last_error = {"operation": what, "error": describe(exc), "at": time.time()}
            raise
        self.last_error = None
        return result

    async def import_from_control(self, line: str) -> None:
        words = line.split()
        if len(words) != 2:
            from .errors import InvalidName

            raise InvalidName("write two words to .sovr/import: LEGACY_POD NEW_POD")
        await self._remember("import", self.protocol.import_legacy(words[0], words[1]))
        log.info("imported legacy pod %s as %s", words[0], words[1])

    async def rebuild_registry(self) -> None:
        await self._remember("registry rebuild", self.protocol.rebuild_registry())

    async def persist_self(self) -> None:
        self.persist_self_ref = await self._remember("persist-self", self.protocol.persist_self())
        log.info("sovrfs %s persisted in pod Sovr as %s", __version__, self.persist_self_ref)

    # -- what control files show ---------------------------------------------

    async def render_status(self) -> bytes:
        data: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "mountpoint": self.settings.mountpoint,
            "started_at": self.started_at,
            "store": {**self.store.status(), "features": sorted(self.store.features)},
            "runs": self.engine.summary(),
            "golem": self.golem.status() if self.golem is not None else {"mode": "off"},
            "last_fork": self.last_fork,
            "last_error": self.last_error,
            "persist_self_ref": self.persist_self_ref,
            "operations": self.protocol.progress(),
        }
        if self.operations is not None:
            data["fuse"] = self.operations.stats()
        return _json_bytes(data)

    async def render_registry(self) -> bytes:
        return _json_bytes(await self.protocol.registry())

    async def render_pod_status(self, pod: str) -> bytes:
        record = self.engine.current(pod)
        data: dict[str, Any] = (
            record.to_json() if record is not None else {"pod": pod, "state": "idle"}
        )
        task = self.protocol.task_status(pod)
        if task is not None:
            # A task pod runs nothing itself: its state is the task's.
            data["task"] = task
            if record is None:
                data.update(state=task["state"], reason=task.get("reason"))
        if pod in self.last_persist:
            data["persist"] = self.last_persist[pod]
        return _json_bytes(data)

    async def render_ref(self, pod: str) -> bytes:
        ref = await self.protocol.pod_ref(pod)
        return f"{ref}\n".encode() if ref else b""

    async def pod_facts(self, pod: str) -> dict[str, Any]:
        record = self.engine.current(pod)
        facts: dict[str, Any] = {
            "state": record.state.value if record is not None else "idle",
            "run_id": record.run_id if record is not None else None,
            "reason": record.reason if record is not None else None,
            "ref": await self.protocol.pod_ref(pod),
        }
        try:
            _, recipe = await self.load_recipe(pod)
            facts["recipe"] = recipe.name
        except (SovrError, OSError):
            facts["recipe"] = None
        return facts
