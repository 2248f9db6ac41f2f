"""The protocol's bookkeeping: ``Registry.json`` and ``SharedPods.json``.

Both live in pods of their own, under the names the original tool gave them
(``ComputePodRegistry`` and ``SharedPods``), so a user's pods persisted by
that tool are read, not lost. Every update is a read-modify-write of a JSON
file: one lock serialises them, and the new text is written to a temporary
file in the same pod and renamed over the old one, so a crash leaves the old
or the new file, never half of one.

A file that cannot be read is not overwritten blindly: it is renamed aside
(``Registry.json.unreadable-<time>``) with a WARNING, and bookkeeping starts
afresh, so what it held can still be recovered by hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import trio

from ..errors import AlreadyExists, NotFound, RecipeError
from ..recipe import (
    REGISTRY_FILE,
    REGISTRY_POD,
    SHARED_PODS_FILE,
    SHARED_PODS_POD,
    Recipe,
    SharedPodRecord,
    Task,
    add_shared_pod,
    dump_registry,
    dump_shared_pods,
    load_registry,
    load_shared_pods,
)
from ..store.base import PodStore

log = logging.getLogger(__name__)

Registry = dict[str, dict[str, Any]]
Shared = dict[str, list[SharedPodRecord]]


class Books:
    """Reads and updates the registry and the shared-pod list of one store."""

    def __init__(self, store: PodStore) -> None:
        self.store = store
        self._lock = trio.Lock()
        # SharedPods.json is read for every `.sovr/ref` and user.sovr.ref, so
        # its parsed form is kept while the file's size and mtime stay the same.
        self._shared_cache: tuple[tuple[int, int], Shared] | None = None

    # -- reading -----------------------------------------------------------

    async def _read(self, pod: str, name: str) -> bytes:
        try:
            return await self.store.read_bytes(pod, "/" + name)
        except NotFound:
            return b""

    async def registry(self) -> Registry:
        """``Registry.json``: pod name -> recipe JSON. Raises ``RecipeError`` if unreadable."""
        return load_registry(await self._read(REGISTRY_POD, REGISTRY_FILE))

    async def shared(self) -> Shared:
        """``SharedPods.json``: pod name -> its publications. ``RecipeError`` if unreadable."""
        try:
            attr = await self.store.stat(SHARED_PODS_POD, "/" + SHARED_PODS_FILE)
        except NotFound:
            return {}
        key = (attr.size, attr.mtime_ns)
        if self._shared_cache is not None and self._shared_cache[0] == key:
            return self._shared_cache[1]
        shared = load_shared_pods(await self._read(SHARED_PODS_POD, SHARED_PODS_FILE))
        self._shared_cache = (key, shared)
        return shared

    async def refs(self, pod: str) -> list[str]:
        """Every sharing reference recorded for ``pod``, oldest first."""
        try:
            shared = await self.shared()
        except RecipeError as exc:
            log.debug("%s unreadable: %s", SHARED_PODS_FILE, exc)
            return []
        return [r.sharing_reference for r in shared.get(pod, [])]

    # -- updating ----------------------------------------------------------

    async def update_registry(self, change: Callable[[Registry], None]) -> None:
        """Apply ``change`` to the registry and write it back."""
        async with self._lock:
            registry = await self._load_for_update(REGISTRY_POD, REGISTRY_FILE, load_registry)
            change(registry)
            await self._write(REGISTRY_POD, REGISTRY_FILE, dump_registry(registry))

    async def register(self, pod: str, recipe: Recipe | Task) -> None:
        def change(registry: Registry) -> None:
            registry[pod] = recipe.to_dict()

        await self.update_registry(change)

    async def replace_registry(
        self, registry: Mapping[str, Recipe | Task | dict[str, Any]]
    ) -> None:
        async with self._lock:
            await self._write(REGISTRY_POD, REGISTRY_FILE, dump_registry(registry))

    async def add_shared(
        self, pod: str, recipe: Recipe | Task | Mapping[str, Any], ref: str
    ) -> None:
        """Record one publication of ``pod`` (kept once per reference)."""
        async with self._lock:
            shared = await self._load_for_update(
                SHARED_PODS_POD, SHARED_PODS_FILE, load_shared_pods
            )
            records = shared.get(pod, [])
            # Sharing unchanged content again gives the same reference; the
            # list keeps one record per reference, the latest last.
            shared[pod] = [r for r in records if r.sharing_reference != ref]
            add_shared_pod(shared, pod, recipe, ref)
            await self._write(SHARED_PODS_POD, SHARED_PODS_FILE, dump_shared_pods(shared))
            self._shared_cache = None

    async def _load_for_update(self, pod: str, name: str, load: Callable[[bytes], Any]) -> Any:
        data = await self._read(pod, name)
        try:
            return load(data)
        except RecipeError as exc:
            aside = f"{name}.unreadable-{int(time.time())}"
            log.warning(
                "%s/%s is unreadable (%s); moved aside as %s, starting a new one",
                pod,
                name,
                str(exc).splitlines()[0],
                aside,
            )
            await self.store.rename(pod, "/" + name, "/" + aside)
            return load(b"")

    async def _write(self, pod: str, name: str, data: bytes) -> None:
        try:
            await self.store.create_pod(pod)
            log.info("created pod %s for the protocol's bookkeeping", pod)
        except AlreadyExists:
            pass
        tmp = f"/.{name}.tmp"
        await self.store.write_bytes(pod, tmp, data)
        await self.store.rename(pod, tmp, "/" + name)
        await self.store.sync(pod)
