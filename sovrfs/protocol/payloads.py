"""External payloads: files from other people's shared pods, fetched before a run.

A recipe's ``golem.payload`` may list ``{"ref": REF, "data": PATH}`` entries.
Before the run starts, each referenced pod is forked once into a *payload
cache pod* named ``payload-<first 12 hex digits of REF>`` and ``PATH`` is
copied from it into the running pod's ``payload/external/``; a ``.zip`` is
unpacked there instead. A shared snapshot never changes, so the cache pod is
reused for as long as it exists, and a target that already holds the same
bytes is left as it is.

The copy goes through the mount in a worker thread (see
:mod:`sovrfs.protocol.tree`); archives are unpacked by
:func:`sovrfs.archive.extract_zip`, which refuses hostile ones before writing
anything. Any failure stops the run before it starts, with an error that
names the payload entry and the reason.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ..errors import NotFound, RunError, SovrError, describe
from ..recipe import ExternalPayload, Recipe
from . import tree
from .progress import Operation, Progress

if TYPE_CHECKING:
    from ..app import App
    from ..store.base import PodStore

log = logging.getLogger(__name__)

T = TypeVar("T")
IO = Callable[..., Awaitable[Any]]

#: Prefix of the cache pods that hold forked payload sources.
CACHE_PREFIX = "payload-"


def cache_pod_name(ref: str) -> str:
    return CACHE_PREFIX + ref[:12].lower()


def external_dir(recipe: Recipe) -> str:
    """The running pod's directory for external payloads, relative to its root."""
    return posixpath.join(recipe.golem.payload_dir, "external")


class Payloads:
    def __init__(
        self, store: PodStore, app: App, progress: Progress, io: IO, fork_cache: IO
    ) -> None:
        self.store = store
        self.app = app
        self.progress = progress
        self._io = io
        self._fork_cache = fork_cache
        self._locks: dict[str, trio.Lock] = {}

    async def prepare(self, pod: str, recipe: Recipe) -> list[str]:
        """Fetch the recipe's external payloads into the pod; return one note per entry."""
        entries = recipe.golem.external_payloads
        if not entries:
            return []
        return await self.fetch_all(pod, entries, external_dir(recipe), field="golem.payload")

    async def fetch_all(
        self, pod: str, entries: Sequence[ExternalPayload], target_rel: str, *, field: str
    ) -> list[str]:
        notes = []
        for i, entry in enumerate(entries):
            try:
                notes.append(await self.fetch(pod, entry.ref, entry.data, target_rel))
            except SovrError as exc:
                err = RunError(
                    f"{field}[{i}] ({entry.data} from {entry.ref[:12]}...): {describe(exc)}"
                )
                err.errno = exc.errno
                raise err from exc
        return notes

    async def fetch(self, pod: str, ref: str, data: str, target_rel: str) -> str:
        """Bring ``data`` of the pod shared as ``ref`` into ``pod``'s ``target_rel``."""
        cache = await self.cache_pod(ref)
        source_root = self.app.pod_root(cache)
        pod_root = self.app.pod_root(pod)
        with self.progress.track("payload", pod) as op:
            op.phase = f"{cache}:{data}"
            note: str = await self._io(_place_payload, source_root, data, pod_root, target_rel, op)
        log.info("pod %s: payload %s from %s: %s", pod, data, ref[:12], note)
        return f"payload {data} from {ref[:12]}...: {note}"

    async def cache_pod(self, ref: str) -> str:
        """The pod holding a fork of ``ref``, forked now if there is none yet."""
        ref = ref.lower()
        name = cache_pod_name(ref)
        lock = self._locks.setdefault(ref, trio.Lock())
        async with lock:
            try:
                await self.store.stat(name, "/")
                return name
            except NotFound:
                pass
            await self._fork_cache(ref, name)
        return name


def _place_payload(
    source_root: str, data: str, pod_root: str, target_rel: str, op: Operation
) -> str:
    """The blocking part of :meth:`Payloads.fetch`; returns what was done."""
    source = tree.resolve(source_root, data, shown=data)
    target = tree.resolve(pod_root, target_rel, create=True, shown=target_rel + "/")
    name = os.path.basename(source.rstrip("/"))
    if os.path.isfile(source) and name.lower().endswith(".zip"):
        op.set_total(*tree.zip_totals(source))
        if tree.zip_matches(source, target):
            return "unchanged"
        files = tree.unpack_zip(source, target, op)
        return f"unpacked {len(files)} files into {target_rel}/"
    op.set_total(*tree.tree_size(source))
    changes = tree.place(source, os.path.join(target, name), op=op)
    if not changes.any:
        return "unchanged"
    return f"copied to {target_rel}/{name}"
