"""Runs started by saving a file: a debouncer and the path patterns that trigger it.

An editor saves in bursts (write a temporary file, rename it into place, touch
a backup, save the next buffer), so the FUSE layer calls
:meth:`Debouncer.poke` for every matching save and the debouncer fires once,
``delay`` seconds after the last poke of a pod.

What an editor user expects is one run that sees their last save. A save
while the pod is still running cannot start a run then (the engine answers
:class:`~sovrfs.errors.RunBusy`); with ``wait_idle`` the debouncer waits for
that run to end and then fires once more, however many saves came in
between. Without ``wait_idle`` such a save is dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from fnmatch import fnmatchcase

import trio

from .errors import RunBusy, SovrError, describe

log = logging.getLogger(__name__)


class Debouncer:
    """Fire ``fire(pod)`` once per burst of :meth:`poke` calls for that pod.

    ``wait_idle(pod)`` (typically :meth:`sovrfs.runs.RunEngine.wait_idle`)
    returns once the pod has no run; it lets a save made during a run start a
    new run when that one ends.
    """

    def __init__(
        self,
        delay: float,
        fire: Callable[[str], Awaitable[None]],
        *,
        wait_idle: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.delay = delay
        self._fire = fire
        self._wait_idle = wait_idle
        self._due: dict[str, float] = {}
        self._delays: dict[str, float] = {}
        self._wake = trio.Event()
        self._retrying: set[str] = set()

    def poke(self, pod: str, delay: float | None = None) -> None:
        """A matching file of ``pod`` was saved. Call from within the trio loop.

        ``delay`` overrides the debouncer's own for this pod (a recipe's
        ``debounce``).
        """
        if delay is None:
            self._delays.pop(pod, None)
        else:
            self._delays[pod] = delay
        self._due[pod] = trio.current_time() + (self.delay if delay is None else delay)
        self._wake.set()

    def forget(self, pod: str) -> None:
        """The pod is gone: drop its pending run."""
        self._due.pop(pod, None)
        self._delays.pop(pod, None)

    def pending(self, pod: str) -> bool:
        """Whether a run of ``pod`` is waiting for the end of a burst or of a run."""
        return pod in self._due or pod in self._retrying

    def waiting_for_run(self, pod: str) -> bool:
        """Whether a save of ``pod`` waits for the pod's current run to end."""
        return pod in self._retrying

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire due pods until cancelled."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                # A fresh event before looking at the deadlines, so a poke
                # that comes in while firing wakes the next wait.
                self._wake = trio.Event()
                now = trio.current_time()
                for pod, when in list(self._due.items()):
                    if when <= now:
                        del self._due[pod]
                        nursery.start_soon(self._run, pod, name=f"autorun:{pod}")
                with trio.move_on_at(min(self._due.values(), default=math.inf)):
                    await self._wake.wait()

    async def _run(self, pod: str) -> None:
        try:
            log.debug("auto-run of pod %s", pod)
            await self._fire(pod)
        except RunBusy:
            await self._retry_after_run(pod)
        except SovrError as exc:
            log.info("auto-run of pod %s not started: %s", pod, describe(exc))
        except Exception:
            log.exception("auto-run of pod %s failed", pod)

    async def _retry_after_run(self, pod: str) -> None:
        if self._wait_idle is None:
            log.info("auto-run of pod %s dropped: the pod is running", pod)
            return
        if pod in self._retrying:
            return
        log.info("pod %s is running; it runs again when the current run ends", pod)
        self._retrying.add(pod)
        try:
            await self._wait_idle(pod)
        finally:
            self._retrying.discard(pod)
        self.poke(pod, self._delays.get(pod))


def matches(patterns: Iterable[str], pod_relative_path: str) -> bool:
    """Whether a path inside a pod matches any of the glob ``patterns``.

    Patterns are relative to the pod root, as a recipe's ``sovr.autorun``
    gives them: ``*``, ``?`` and ``[...]`` match within one path component,
    and ``**`` as a whole component matches any number of components (none
    included). So ``script/**`` is everything under ``script/``, ``*.py`` a
    Python file at the root, ``**/*.py`` one anywhere.
    """
    parts = _components(pod_relative_path)
    if not parts:
        return False
    return any(_match(_components(pattern), parts) for pattern in patterns if pattern)


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _match(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _match(rest, parts[1:])
