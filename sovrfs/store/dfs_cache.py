"""The local side of the FairOS-DFS store: cached file copies and their journal.

Every file the store has downloaded or written lives as one local file under
``<cache>/files/``; a small SQLite database, ``<cache>/journal.sqlite3``, says
which pod path each copy holds, whether it still has to be uploaded, and which
size and mtime the server had when the copy matched it. A row is committed
before the write it covers is acknowledged, so after a crash of the daemon
(``kill -9``) a new store finds every dirty copy and uploads it: no repair
tool, no lost acknowledged write. The database runs in WAL mode with
``synchronous=NORMAL``: a commit survives the daemon's crash at once and a
power cut once the WAL is synced; ``fsync()`` on a file does not depend on
it, since it uploads the file before it returns.

An entry is *dirty* while the journal row says so: from the moment a file is
opened for writing until an upload of its final content succeeded. A file
opened for writing but closed unchanged is marked clean again.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..errors import PodStoreError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (
    pod TEXT NOT NULL,
    path TEXT NOT NULL,
    fid TEXT NOT NULL,
    dirty INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    remote_size INTEGER,
    remote_mtime INTEGER,
    PRIMARY KEY (pod, path)
)
"""


@dataclass(eq=False)
class CachedFile:
    """One local copy of a pod file and its upload state."""

    pod: str
    path: str
    fid: str
    mode: int
    #: Bumped whenever the local content changes; equal to ``uploaded`` when clean.
    generation: int = 0
    uploaded: int = 0
    #: (size, mtime) the server listed when this copy matched it; mtime None = adopt next.
    remote_size: int | None = None
    remote_mtime: int | None = None
    opens: int = 0
    writers: int = 0
    #: Whether the journal row currently says dirty.
    journal_dirty: bool = False
    last_used: float = field(default_factory=time.monotonic)
    changed_at: float = 0.0
    retries: int = 0
    next_try: float = 0.0
    error: PodStoreError | None = None
    error_reported: bool = True
    #: Digest of the bytes last uploaded, to recognise a close after fsync that changed nothing.
    uploaded_digest: str | None = None
    #: Set once the file was unlinked or its pod deleted: never upload again.
    gone: bool = False
    #: Size of the local copy as last seen (when it was written, closed or uploaded).
    local_bytes: int = 0

    @property
    def dirty(self) -> bool:
        return self.generation != self.uploaded

    def touch_content(self) -> None:
        self.generation += 1
        self.changed_at = time.monotonic()
        self.next_try = 0.0
        self.retries = 0

    def failed(self, exc: PodStoreError, *, permanent: bool) -> None:
        self.error = exc
        self.error_reported = False
        self.retries += 1
        delay = math.inf if permanent else min(2.0**self.retries, 60.0)
        self.next_try = time.monotonic() + delay


class Journal:
    """The SQLite file that makes dirty state survive a crash.

    Every call runs in a worker thread (SQLite commits wait for the disk);
    one lock keeps them in order.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = trio.Lock()

    async def open(self) -> list[tuple[str, str, str, int, int, int | None, int | None]]:
        """Open (creating if needed) and return every row."""

        def _open() -> list[tuple[str, str, str, int, int, int | None, int | None]]:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            self._db = db
            return list(
                db.execute(
                    "SELECT pod, path, fid, dirty, mode, remote_size, remote_mtime FROM cache"
                )
            )

        async with self._lock:
            return await trio.to_thread.run_sync(_open)

    async def close(self) -> None:
        async with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                await trio.to_thread.run_sync(db.close)

    async def _run(self, sql: str, *args: object) -> None:
        async with self._lock:
            db = self._db
            if db is None:
                return
            await trio.to_thread.run_sync(db.execute, sql, args)

    async def put(self, entry: CachedFile, *, dirty: bool) -> None:
        await self._run(
            "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?, ?, ?)",
            entry.pod,
            entry.path,
            entry.fid,
            int(dirty),
            entry.mode,
            entry.remote_size,
            entry.remote_mtime,
        )
        entry.journal_dirty = dirty

    async def remove(self, pod: str, path: str) -> None:
        await self._run("DELETE FROM cache WHERE pod = ? AND path = ?", pod, path)

    async def rename(self, pod: str, old: str, new: str) -> None:
        await self._run("UPDATE cache SET path = ? WHERE pod = ? AND path = ?", new, pod, old)


class FileCache:
    """The directory of cached copies: names, sizes and eviction.

    Entries are indexed by their directory, and the total size is kept as
    copies change, so neither a listing nor a cache-limit check has to visit
    every cached file.
    """

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.files = root / "files"
        self.limit = limit
        #: (pod, path) -> copy; change it only through the methods below.
        self.entries: dict[tuple[str, str], CachedFile] = {}
        self._by_dir: dict[tuple[str, str], dict[str, CachedFile]] = {}
        self._bytes = 0
        # Every copy changed since it was last known clean; pruned lazily.
        self._changed: dict[CachedFile, None] = {}

    def local_path(self, entry: CachedFile) -> Path:
        return self.files / entry.fid

    def new_fid(self) -> str:
        return os.urandom(12).hex()

    def add(self, entry: CachedFile, size: int) -> None:
        """Record ``entry`` (its local copy holds ``size`` bytes)."""
        old = self.entries.get((entry.pod, entry.path))
        if old is not None:
            self._forget(old)
        self.entries[(entry.pod, entry.path)] = entry
        parent, name = _split(entry.path)
        self._by_dir.setdefault((entry.pod, parent), {})[name] = entry
        entry.local_bytes = size
        self._bytes += size

    def touch(self, entry: CachedFile) -> None:
        """The local content of ``entry`` changed: it has to be uploaded."""
        entry.touch_content()
        self._changed[entry] = None

    def queued(self) -> list[CachedFile]:
        """The copies waiting for an upload, oldest change first."""
        for entry in [e for e in self._changed if not e.dirty or e.gone]:
            del self._changed[entry]
        return list(self._changed)

    def resize(self, entry: CachedFile, size: int) -> None:
        """The local copy of ``entry`` now holds ``size`` bytes."""
        if self.entries.get((entry.pod, entry.path)) is entry:
            self._bytes += size - entry.local_bytes
        entry.local_bytes = size

    def move(self, entry: CachedFile, path: str) -> None:
        """``entry`` now stands for ``path`` in the same pod."""
        self._forget(entry)
        entry.path = path
        self.add(entry, entry.local_bytes)

    def in_dir(self, pod: str, path: str) -> list[tuple[str, CachedFile]]:
        """The copies whose parent directory is ``path``."""
        return list(self._by_dir.get((pod, path), {}).items())

    def size_of(self, entry: CachedFile) -> int:
        """The size of the local copy on disk now (it may be open for writing)."""
        try:
            return self.local_path(entry).stat().st_size
        except FileNotFoundError:
            return 0

    def total_bytes(self) -> int:
        return self._bytes

    def evictable(self) -> list[CachedFile]:
        """Clean, closed copies, least recently used first."""
        found = [
            e for e in self.entries.values() if not e.dirty and not e.journal_dirty and e.opens == 0
        ]
        return sorted(found, key=lambda e: e.last_used)

    def drop_local(self, entry: CachedFile) -> None:
        self._forget(entry)
        self.local_path(entry).unlink(missing_ok=True)

    def _forget(self, entry: CachedFile) -> None:
        if self.entries.get((entry.pod, entry.path)) is not entry:
            return
        del self.entries[(entry.pod, entry.path)]
        parent, name = _split(entry.path)
        siblings = self._by_dir.get((entry.pod, parent), {})
        siblings.pop(name, None)
        if not siblings:
            self._by_dir.pop((entry.pod, parent), None)
        self._bytes -= entry.local_bytes


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent or "/", name
