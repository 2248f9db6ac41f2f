"""The pod store on a FairOS-DFS server, with a local write-back cache.

The server holds whole files only (no ranged reads, no usable partial
writes), so file contents live in local cache files (:mod:`.dfs_cache`):
``open_file`` downloads a file once and hands out a descriptor of the copy;
writes go to the copy at local-disk speed; a background worker uploads dirty
copies a moment after they are closed, and ``fsync_file`` uploads at once and
raises the failure, if any. The journal makes dirty copies survive a crash and
:meth:`DfsStore.start` queues them again.

The namespace is the server's, read through ``dir/ls`` (one request per
directory, attributes included) and kept for ``attr_ttl`` seconds. Local
copies that are dirty overlay that listing, so a file that is still queued is
listed with its local size.

The server gets a few things wrong and the store corrects them before it
asks (see ``docs/fairos-dfs.rst`` for what the tests found):

* ``dir/rmdir`` is recursive: POSIX rmdir lists first and refuses a
  non-empty directory.
* Removing a nested directory drops its name from the *grandparent's* entry
  list; removing it after moving it to the pod root is correct.
* Moving a directory drops each of its subdirectories' names from the old
  parent's entry list; subdirectories whose names would collide are moved
  aside first and back afterwards.
* mkdir and uploads do not check for a file and a directory of one name,
  nor for the directory's own metadata file ``index.dfs``.
* A rename target is never replaced, and a missing target parent is noticed
  only after the metadata moved.

All mutations of one pod run under one lock: the server updates directory
entry lists without locking, and the store's own read-check-write sequences
need the same guarantee.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import trio

from ..errors import (
    AlreadyExists,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    PermissionDenied,
    PodStoreError,
    ReadOnly,
    StoreUnavailable,
)
from .base import (
    NAME_MAX,
    Attr,
    Kind,
    PodInfo,
    PodStore,
    SetAttr,
    StatFs,
    check_component,
    check_pod_name,
    join,
    normalize,
    split,
)
from .dfs_api import (
    BLOCK_SIZE_MAX,
    BLOCK_SIZE_MIN,
    DfsClient,
    Entry,
    check_sharing_ref,
    file_digest,
)
from .dfs_cache import CachedFile, FileCache, Journal

log = logging.getLogger(__name__)

#: The name under which the server keeps a directory's own metadata.
RESERVED_NAME = "index.dfs"
#: Mode the server gives every uploaded file.
SERVER_FILE_MODE = 0o600
#: Mode the server gives every new directory.
SERVER_DIR_MODE = 0o700
#: Seconds after a call found the server unreachable during which cached
#: listings are served without asking it again.
OFFLINE_GRACE = 10.0
#: The server reports mode 0 for a pod's root directory; this is shown instead.
ROOT_MODE = 0o755
_TEMP_PREFIX = ".sovrfs-tmp-"


def _is_write(flags: int) -> bool:
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & (os.O_CREAT | os.O_TRUNC))


def _needs_rename(name: str) -> bool:
    # Multipart filenames with `"`, `\` or control characters arrive altered
    # (`"` -> `%22`): such files are uploaded under a plain name and renamed.
    return any(ch in '"\\' or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)


@contextlib.contextmanager
def _unknown_ref(ref: str) -> Iterator[None]:
    """Turn the server's answer for a reference nobody shared into ``NotFound``.

    The server answers HTTP 500 with ``<call>: Not Found`` when no pod is
    shared under ``ref``; every other failure passes unchanged.
    """
    try:
        yield
    except PodStoreError as exc:
        if type(exc) is not PodStoreError or not str(exc).endswith(": Not Found"):
            raise
        raise NotFound(f"no pod is shared as {ref}") from exc


def _attr_of(entry: Entry) -> Attr:
    kind = Kind.DIR if entry.is_dir else Kind.FILE
    return Attr(
        kind=kind,
        mode=entry.mode or (SERVER_DIR_MODE if entry.is_dir else SERVER_FILE_MODE),
        size=entry.size,
        mtime_ns=entry.mtime * 1_000_000_000,
        ctime_ns=max(entry.mtime, entry.atime, entry.ctime) * 1_000_000_000,
        atime_ns=entry.atime * 1_000_000_000,
        nlink=2 if entry.is_dir else 1,
    )


class DfsStore(PodStore):
    """Pods on a FairOS-DFS server (``url``), as user ``user``.

    ``cache_dir`` holds the cached copies and the journal (the daemon passes a
    directory under the XDG cache home). Options:

    ``timeout``
        seconds one server call may take, retries included; a dead or hung
        server gives ``StoreUnavailable`` after that long.
    ``attr_ttl``
        seconds a directory listing (and the attributes in it) is reused.
    ``cache_limit``
        bytes of clean cached copies to keep; dirty ones are never evicted.
    ``upload_delay``
        seconds a closed dirty file waits before the background upload, so a
        burst of writes becomes one upload.
    ``block_size``
        upload block size, 1 000 000 to 8 000 000 bytes.
    ``signup``
        create the user when it does not exist (dev servers).
    """

    kind = "fairos-dfs"
    features: frozenset[str] = frozenset()

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        cache_dir: str | os.PathLike[str],
        *,
        timeout: float = 60.0,
        attr_ttl: float = 5.0,
        cache_limit: int = 2 << 30,
        upload_delay: float = 1.0,
        block_size: int = 4_000_000,
        signup: bool = False,
    ) -> None:
        if not BLOCK_SIZE_MIN <= block_size <= BLOCK_SIZE_MAX:
            raise ValueError(f"block_size must be {BLOCK_SIZE_MIN}..{BLOCK_SIZE_MAX}")
        self.url = url
        self.user = user
        self.client = DfsClient(url, user, password, timeout=timeout)
        self.cache_dir = Path(cache_dir)
        self.attr_ttl = attr_ttl
        self.upload_delay = upload_delay
        self.block_size = block_size
        self._signup = signup
        self._cache = FileCache(self.cache_dir, cache_limit)
        self._journal = Journal(self.cache_dir / "journal.sqlite3")
        self._listings: dict[tuple[str, str], tuple[float, dict[str, Entry]]] = {}
        #: Bumped whenever a listing is dropped, so a listing fetched across a
        #: change is used once but never cached.
        self._listing_epoch = 0
        self._roots: dict[str, tuple[float, Attr]] = {}
        #: Until when the server counts as unreachable after a call timed out.
        self._offline_until = 0.0
        self._shared: set[str] = set()
        self._pod_locks: dict[str, trio.Lock] = collections.defaultdict(trio.Lock)
        self._open_locks: dict[tuple[str, str], trio.Lock] = collections.defaultdict(trio.Lock)
        self._fds: dict[int, tuple[CachedFile, bool]] = {}
        self._wakeup = trio.Event()
        self._worker_scope: trio.CancelScope | None = None
        self._worker_done = trio.Event()
        self._state = "new"
        self._progress = trio.Event()
        self._uploads_done = 0
        self._bytes_uploaded = 0

    def __repr__(self) -> str:
        return f"<DfsStore {self.user}@{self.url} {self._state}>"

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Log in, replay the journal and start the upload worker."""
        if self._state != "new":
            raise RuntimeError(f"DfsStore.start() called on a {self._state} store")
        await trio.Path(self._cache.files).mkdir(parents=True, exist_ok=True)
        await self._replay_journal()
        try:
            await self.client.login()
        except PermissionDenied as exc:
            if not (self._signup and "no user available" in str(exc)):
                raise
            log.info("creating FairOS-DFS user %s on %s", self.user, self.url)
            await self.client.signup()
        await self.list_pods()
        self._state = "running"
        trio.lowlevel.spawn_system_task(self._run_worker, name=f"{self!r} uploads")
        if any(e.dirty for e in self._cache.entries.values()):
            log.info("uploading files left dirty by an earlier run")

    async def aclose(self, *, wait: bool = True) -> None:
        """Upload what is dirty (unless ``wait`` is false), stop the worker, log out.

        What cannot be uploaded stays in the journal for the next start.
        """
        if self._state in ("closed", "new"):
            self._state = "closed"
            await self._journal.close()
            await self.client.aclose()
            return
        self._state = "closing"
        if wait:
            # _upload skips a copy that became clean or gone meanwhile.
            for entry in self._cache.queued():
                try:
                    await self._upload(entry)
                except PodStoreError as exc:
                    log.error(
                        "could not upload %s:%s before closing (%s); it stays queued",
                        entry.pod,
                        entry.path,
                        exc,
                    )
        if self._worker_scope is not None:
            self._worker_scope.cancel()
        with trio.move_on_after(10):
            await self._worker_done.wait()
        self._state = "closed"
        await self._journal.close()
        await self.client.aclose()

    def status(self) -> dict[str, Any]:
        dirty = self._cache.queued()
        errors = [e for e in dirty if e.error is not None]
        last_error = max(errors, key=lambda e: e.next_try, default=None)
        return {
            "kind": self.kind,
            "url": self.url,
            "user": self.user,
            "state": self._state,
            "upload_queue": {
                "files": len(dirty),
                "bytes": sum(self._cache.size_of(e) for e in dirty),
                "retries": sum(e.retries for e in dirty),
                "last_error": str(last_error.error) if last_error else None,
                "uploaded_files": self._uploads_done,
                "uploaded_bytes": self._bytes_uploaded,
            },
            "cache": {
                "dir": str(self.cache_dir),
                "bytes": self._cache.total_bytes(),
                "limit": self._cache.limit,
                "files": len(self._cache.entries),
            },
            "requests": dict(self.client.requests),
        }

    async def _replay_journal(self) -> None:
        rows = await self._journal.open()
        known: set[str] = set()
        for pod, path, fid, dirty, mode, rsize, rmtime in rows:
            entry = CachedFile(pod, path, fid, mode, remote_size=rsize, remote_mtime=rmtime)
            try:
                size = self._cache.local_path(entry).stat().st_size
            except FileNotFoundError:
                if dirty:
                    log.error(
                        "cached copy of dirty %s:%s is missing; its changes are lost", pod, path
                    )
                await self._journal.remove(pod, path)
                continue
            self._cache.add(entry, size)
            if dirty:
                entry.journal_dirty = True
                self._cache.touch(entry)
                entry.changed_at = 0.0  # changed before the crash: upload at once
            known.add(fid)
        # Copies without a row are downloads a crash interrupted.
        await trio.to_thread.run_sync(self._remove_strays, known)

    def _remove_strays(self, known: set[str]) -> None:
        with os.scandir(self._cache.files) as found:
            for child in found:
                if child.name not in known:
                    os.unlink(child.path)

    # -- upload worker ---------------------------------------------------

    async def _run_worker(self) -> None:
        # A system task: an exception escaping it would end the whole daemon
        # and leave a dead mount, so a failure of the loop itself is logged
        # and the loop started again.
        with trio.CancelScope() as scope:
            self._worker_scope = scope
            while True:
                try:
                    await self._upload_loop()
                except Exception:
                    log.exception("the upload worker failed; restarting it in a second")
                    await trio.sleep(1.0)
        self._worker_done.set()

    def _due(self) -> tuple[list[CachedFile], float]:
        now = time.monotonic()
        due, wake = [], math.inf
        for entry in self._cache.queued():
            if entry.writers:
                continue
            at = max(entry.changed_at + self.upload_delay, entry.next_try)
            if at <= now:
                due.append(entry)
            else:
                wake = min(wake, at)
        return due, wake

    async def _upload_loop(self) -> None:
        while True:
            due, wake = self._due()
            for entry in due:
                try:
                    await self._upload(entry)
                except PodStoreError:
                    pass  # recorded on the entry and logged by _upload
                except Exception:
                    log.exception("upload of %s:%s crashed", entry.pod, entry.path)
            if due:
                continue
            self._wakeup = trio.Event()
            # ``wake`` may already have passed while the list was made.
            with trio.move_on_after(max(0.0, min(wake - time.monotonic(), 60.0))):
                await self._wakeup.wait()

    def _kick(self) -> None:
        self._wakeup.set()

    async def _upload(self, entry: CachedFile) -> None:
        """Upload ``entry`` now if it is dirty; raise (and record) a failure."""
        try:
            async with self._pod_locks[entry.pod]:
                await self._upload_locked(entry)
        finally:
            self._progress.set()
            self._progress = trio.Event()

    async def wait_uploaded(self) -> None:
        """Wait until the background worker has uploaded every dirty copy.

        Unlike :meth:`sync` this uploads nothing itself; the caller bounds the wait.
        """
        while self._cache.queued():
            await self._progress.wait()

    async def _upload_locked(self, entry: CachedFile) -> None:
        if not entry.dirty or entry.gone:
            return
        generation = entry.generation
        local = self._cache.local_path(entry)
        parent, name = split(entry.path)
        try:
            size = (await trio.Path(local).stat()).st_size
            if _needs_rename(name):
                temp = join(parent, _TEMP_PREFIX + secrets.token_hex(8))
                digest = await self.client.file_upload(
                    entry.pod, parent, split(temp)[1], local, block_size=self.block_size
                )
                with contextlib.suppress(NotFound):
                    await self.client.file_delete(entry.pod, entry.path)
                await self.client.file_rename(entry.pod, temp, entry.path)
            else:
                digest = await self.client.file_upload(
                    entry.pod, parent, name, local, block_size=self.block_size
                )
            if entry.mode != SERVER_FILE_MODE:
                await self.client.file_chmod(entry.pod, entry.path, entry.mode)
        except PodStoreError as exc:
            permanent = not isinstance(exc, StoreUnavailable)
            entry.failed(exc, permanent=permanent)
            level = logging.ERROR if permanent or entry.retries >= 5 else logging.WARNING
            log.log(
                level,
                "upload of %s:%s failed (%s)%s",
                entry.pod,
                entry.path,
                exc,
                "; kept in the cache" if permanent else "; will retry",
            )
            raise
        except OSError as exc:
            err = PodStoreError(f"cached copy of {entry.path} unreadable: {exc}")
            err.__cause__ = exc
            entry.failed(err, permanent=True)
            log.error("upload of %s:%s failed: %s", entry.pod, entry.path, exc)
            raise err from exc
        entry.uploaded = generation
        entry.uploaded_digest = digest
        entry.error = None
        entry.retries = 0
        entry.remote_size, entry.remote_mtime = size, None
        self._uploads_done += 1
        self._bytes_uploaded += size
        self._cache.resize(entry, size)
        self._list_upload(entry, size)
        log.debug("uploaded %s:%s (%d bytes)", entry.pod, entry.path, size)
        if not entry.dirty and not entry.writers:
            await self._journal.put(entry, dirty=False)
            await self._evict()

    async def _flush(self, pod: str, prefix: str | None = None) -> None:
        """Upload dirty copies of ``pod`` (under directory ``prefix``); caller holds the lock."""
        for entry in self._cache.queued():
            if entry.pod != pod:
                continue
            if prefix is None or prefix == "/" or entry.path.startswith(prefix + "/"):
                await self._upload_locked(entry)

    async def _evict(self) -> None:
        total = self._cache.total_bytes()
        if total <= self._cache.limit:
            return
        for entry in self._cache.evictable():
            if total <= self._cache.limit:
                break
            total -= entry.local_bytes
            self._cache.drop_local(entry)
            await self._journal.remove(entry.pod, entry.path)
            log.debug("evicted %s:%s from the cache", entry.pod, entry.path)

    # -- pods ------------------------------------------------------------

    async def list_pods(self) -> list[PodInfo]:
        own, shared = await self.client.pod_ls()
        self._shared = set(shared) - set(own)
        infos = [PodInfo(name) for name in own]
        infos += [PodInfo(name, read_only=True) for name in sorted(self._shared)]
        return sorted(infos, key=lambda info: info.name)

    def _check_writable(self, pod: str) -> None:
        if pod in self._shared:
            raise ReadOnly(f"pod {pod!r} was received from someone else and is read-only")

    async def create_pod(self, pod: str) -> None:
        check_pod_name(pod)
        await self.client.pod_new(pod)
        # Files queued for a pod the server lost (a restarted dev server
        # forgets everything) gave up waiting; the pod is back, so try again.
        retry = [e for e in self._cache.queued() if e.pod == pod and e.next_try > time.monotonic()]
        if retry:
            log.info("pod %s is back: retrying %d queued uploads", pod, len(retry))
            for entry in retry:
                entry.next_try = 0.0
            self._kick()

    async def delete_pod(self, pod: str) -> None:
        async with self._pod_locks[pod]:
            await self.client.pod_delete(pod)
            await self._drop_pod(pod)
        self._shared.discard(pod)

    async def rename_pod(self, old: str, new: str) -> None:
        """FairOS-DFS cannot rename a pod: copy it (server-side fork), then delete the old one."""
        check_pod_name(new)
        self._check_writable(old)
        async with self._pod_locks[old]:
            await self._flush(old)
            await self.client.pod_fork(old, new)
            await self.client.pod_delete(old)
            await self._drop_pod(old)

    async def _drop_pod(self, pod: str) -> None:
        for entry in [e for e in self._cache.entries.values() if e.pod == pod]:
            entry.gone = True
            self._cache.drop_local(entry)
            await self._journal.remove(pod, entry.path)
        self._forget_pod(pod)

    # -- listings ----------------------------------------------------------

    def _forget_dir(self, pod: str, path: str) -> None:
        self._listing_epoch += 1
        self._listings.pop((pod, path), None)

    def _list_upload(self, entry: CachedFile, size: int) -> None:
        """Put a finished upload into the cached listing of its directory.

        Dropping that listing instead would make the next lookup there list
        the whole directory again: during a copy of many files into one
        directory, every create would wait for a listing that grows with
        the copy.
        """
        self._listing_epoch += 1  # a listing under way may predate the upload
        parent, name = split(entry.path)
        cached = self._listings.get((entry.pod, parent))
        if cached is None:
            return
        now = int(time.time())
        old = cached[1].get(name)
        created = old.ctime if old is not None and not old.is_dir else now
        cached[1][name] = Entry(name, False, entry.mode, size, created, now, now)

    def _forget_tree(self, pod: str, path: str) -> None:
        self._listing_epoch += 1
        for key in [k for k in self._listings if k[0] == pod]:
            if path == "/" or key[1] == path or key[1].startswith(path + "/"):
                del self._listings[key]

    def _forget_pod(self, pod: str) -> None:
        self._forget_tree(pod, "/")
        self._roots.pop(pod, None)

    def _unreachable(self) -> bool:
        """Whether the server failed to answer a moment ago (stale metadata is served)."""
        return time.monotonic() < self._offline_until

    def _went_unreachable(self, what: str) -> None:
        # Without this every lookup of a cached file would wait the whole
        # request timeout again before falling back to the cache.
        if not self._unreachable():
            log.warning("server unreachable; serving %s and other metadata from the cache", what)
        self._offline_until = time.monotonic() + OFFLINE_GRACE

    async def _remote_listing(self, pod: str, path: str) -> dict[str, Entry]:
        cached = self._listings.get((pod, path))
        if cached is not None and (cached[0] > time.monotonic() or self._unreachable()):
            return cached[1]
        epoch = self._listing_epoch
        try:
            entries = await self.client.dir_ls(pod, path)
        except StoreUnavailable:
            if cached is None:
                raise
            self._went_unreachable(f"the listing of {pod}:{path}")
            return cached[1]
        except NotFound:
            self._forget_dir(pod, path)
            raise
        self._offline_until = 0.0
        listing = {e.name: e for e in entries if e.name != RESERVED_NAME}
        if epoch == self._listing_epoch:
            # Cached only if nothing changed while the request was under way.
            self._listings[(pod, path)] = (time.monotonic() + self.attr_ttl, listing)
        self._adopt_mtimes(pod, path, listing)
        return listing

    def _adopt_mtimes(self, pod: str, path: str, listing: dict[str, Entry]) -> None:
        # After an upload the server's mtime is unknown until the next listing;
        # we are the only writer, so the first listing that shows our size is ours.
        for name, entry in listing.items():
            cached = self._cache.entries.get((pod, join(path, name)))
            if (
                cached is not None
                and not cached.dirty
                and cached.remote_mtime is None
                and cached.remote_size == entry.size
            ):
                cached.remote_mtime = entry.mtime

    def _local_attr(self, entry: CachedFile) -> Attr:
        st = os.stat(self._cache.local_path(entry))
        return Attr(
            kind=Kind.FILE,
            mode=entry.mode,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            atime_ns=st.st_atime_ns,
        )

    def _overlay(self, pod: str, path: str) -> Iterable[tuple[str, CachedFile]]:
        """Local copies in directory ``path`` whose content the server does not have yet."""
        for name, entry in self._cache.in_dir(pod, path):
            if entry.dirty or entry.writers:
                yield name, entry

    async def listdir(self, pod: str, path: str) -> list[tuple[str, Attr]]:
        path = normalize(path)
        # dir/ls of a file's path makes the server drop the connection without
        # an answer (its handler panics), so the kind is checked first.
        if path != "/" and (await self._lookup(pod, path)).kind is not Kind.DIR:
            raise NotADirectory(f"{pod}:{path} is not a directory")
        # Take the overlay both before and after asking the server: an upload
        # that finishes while the listing is on its way is in neither the
        # listing nor the later overlay.
        pending = dict(self._overlay(pod, path))
        remote = await self._remote_listing(pod, path)
        pending.update(self._overlay(pod, path))
        attrs = {name: _attr_of(entry) for name, entry in remote.items()}
        for name, cached in pending.items():
            if not cached.gone:
                attrs[name] = self._local_attr(cached)
        # The server's listing is best effort: under load it leaves out
        # entries whose metadata it failed to fetch. A file this store wrote
        # and has not removed still exists, so it is listed from the cache.
        for name, cached in self._cache.in_dir(pod, path):
            if name not in attrs and not cached.gone:
                attrs[name] = self._local_attr(cached)
        return sorted(attrs.items())

    async def _lookup(self, pod: str, path: str) -> Attr:
        if path == "/":
            return await self._root_attr(pod)
        parent, name = split(path)
        cached = self._cache.entries.get((pod, path))
        if cached is not None and (cached.dirty or cached.writers) and not cached.gone:
            return self._local_attr(cached)
        listing = await self._remote_listing(pod, parent)
        entry = listing.get(name)
        if entry is None:
            # An upload may have finished while the listing was on its way,
            # or the server's best-effort listing left the file out.
            cached = self._cache.entries.get((pod, path))
            if cached is not None and not cached.gone:
                return self._local_attr(cached)
            raise NotFound(f"{pod}:{path}: no such file or directory")
        return _attr_of(entry)

    async def _root_attr(self, pod: str) -> Attr:
        cached = self._roots.get(pod)
        if cached is not None and (cached[0] > time.monotonic() or self._unreachable()):
            return cached[1]
        try:
            info = await self.client.dir_stat(pod, "/")
        except StoreUnavailable:
            if cached is None:
                raise
            self._went_unreachable(f"pod {pod}")
            return cached[1]
        self._offline_until = 0.0
        seconds = [int(info.get(k) or 0) for k in ("modificationTime", "creationTime")]
        attr = Attr(
            kind=Kind.DIR,
            mode=(int(info.get("mode") or 0) & 0o7777) or ROOT_MODE,
            size=0,
            mtime_ns=seconds[0] * 1_000_000_000,
            ctime_ns=max(seconds) * 1_000_000_000,
            atime_ns=int(info.get("accessTime") or 0) * 1_000_000_000,
            nlink=2,
        )
        self._roots[pod] = (time.monotonic() + self.attr_ttl, attr)
        return attr

    async def stat(self, pod: str, path: str) -> Attr:
        return await self._lookup(pod, normalize(path))

    async def _find(self, pod: str, path: str) -> Attr | None:
        try:
            return await self._lookup(pod, path)
        except NotFound:
            return None

    async def _check_new_name(self, pod: str, path: str) -> tuple[str, str]:
        """Check that ``path`` can be created: valid name, parent a directory."""
        if path == "/":
            raise AlreadyExists("the pod root exists")
        parent, name = split(path)
        check_component(name)
        if name == RESERVED_NAME:
            raise InvalidName(f"{RESERVED_NAME!r} is reserved by FairOS-DFS")
        if parent == "/":
            return parent, name
        parent_attr = await self._lookup(pod, parent)
        if parent_attr.kind is not Kind.DIR:
            raise NotADirectory(f"{pod}:{parent} is not a directory")
        return parent, name

    # -- the tree --------------------------------------------------------

    async def mkdir(self, pod: str, path: str, mode: int) -> Attr:
        path = normalize(path)
        self._check_writable(pod)
        async with self._pod_locks[pod]:
            parent, _ = await self._check_new_name(pod, path)
            if await self._find(pod, path) is not None:
                raise AlreadyExists(f"{pod}:{path} exists")
            await self.client.dir_mkdir(pod, path)
            self._forget_dir(pod, parent)
            if mode & 0o7777 != SERVER_DIR_MODE:
                await self.client.dir_chmod(pod, path, mode)
        now = time.time_ns()
        return Attr(Kind.DIR, mode & 0o7777, 0, now, now, now, nlink=2)

    async def rmdir(self, pod: str, path: str) -> None:
        path = normalize(path)
        self._check_writable(pod)
        if path == "/":
            raise InvalidName("a pod's root directory cannot be removed; delete the pod")
        async with self._pod_locks[pod]:
            attr = await self._lookup(pod, path)
            if attr.kind is not Kind.DIR:
                raise NotADirectory(f"{pod}:{path} is not a directory")
            self._forget_dir(pod, path)
            if await self.listdir(pod, path):
                raise NotEmpty(f"{pod}:{path} is not empty")
            await self._remove_empty_dir(pod, path)

    async def _remove_empty_dir(self, pod: str, path: str) -> None:
        parent = split(path)[0]
        if parent == "/":
            await self.client.dir_rmdir(pod, path)
        else:
            # The server drops a nested directory's name from the grandparent's
            # entry list; from the pod root it removes it correctly.
            temp = "/" + _TEMP_PREFIX + secrets.token_hex(8)
            await self.client.dir_rename(pod, path, temp)
            self._forget_dir(pod, parent)
            await self.client.dir_rmdir(pod, temp)
        self._forget_tree(pod, path)
        self._forget_dir(pod, parent)
        self._forget_dir(pod, "/")

    async def unlink(self, pod: str, path: str) -> None:
        path = normalize(path)
        self._check_writable(pod)
        async with self._pod_locks[pod]:
            attr = await self._lookup(pod, path)
            if attr.kind is Kind.DIR:
                raise IsADirectory(f"{pod}:{path} is a directory")
            await self._delete_file(pod, path)

    async def _delete_file(self, pod: str, path: str) -> None:
        cached = self._cache.entries.get((pod, path))
        try:
            await self.client.file_delete(pod, path)
        except NotFound:
            # A copy that was never uploaded exists only here.
            if cached is None or not (cached.dirty or cached.journal_dirty):
                raise
        if cached is not None:
            cached.gone = True
            self._cache.drop_local(cached)
            await self._journal.remove(pod, path)
        self._forget_dir(pod, split(path)[0])

    async def rename(self, pod: str, old: str, new: str, *, replace: bool = True) -> None:
        old, new = normalize(old), normalize(new)
        self._check_writable(pod)
        if old == new:
            await self.stat(pod, old)
            return
        if old == "/" or new.startswith(old.rstrip("/") + "/"):
            raise InvalidName(f"cannot move {pod}:{old} into itself")
        async with self._pod_locks[pod]:
            src = await self._lookup(pod, old)
            await self._check_new_name(pod, new)
            dst = await self._find(pod, new)
            if dst is not None:
                await self._clear_target(pod, new, src, dst, replace=replace)
            if src.kind is Kind.DIR:
                await self._flush(pod, old)
                await self._move_dir(pod, old, new)
                moved = self._rekey(pod, old, new, tree=True)
            else:
                cached = self._cache.entries.get((pod, old))
                if cached is not None:
                    await self._upload_locked(cached)
                await self.client.file_rename(pod, old, new)
                moved = self._rekey(pod, old, new, tree=False)
            for path in (split(old)[0], split(new)[0]):
                self._forget_dir(pod, path)
            self._forget_tree(pod, old)
            self._forget_tree(pod, new)
            for before, after in moved:
                await self._journal.rename(pod, before, after)

    async def _clear_target(
        self, pod: str, new: str, src: Attr, dst: Attr, *, replace: bool
    ) -> None:
        if not replace:
            raise AlreadyExists(f"{pod}:{new} exists")
        if src.kind is Kind.DIR and dst.kind is not Kind.DIR:
            raise NotADirectory(f"{pod}:{new} is not a directory")
        if src.kind is not Kind.DIR and dst.kind is Kind.DIR:
            raise IsADirectory(f"{pod}:{new} is a directory")
        if dst.kind is Kind.DIR:
            self._forget_dir(pod, new)
            if await self.listdir(pod, new):
                raise NotEmpty(f"{pod}:{new} is not empty")
            await self._remove_empty_dir(pod, new)
        else:
            await self._delete_file(pod, new)

    async def _move_dir(self, pod: str, old: str, new: str) -> None:
        """``dir/rename`` without the server's loss of sibling entries.

        Moving ``old`` drops the name of each of its subdirectories from the
        old parent's entry list. Subdirectories whose name the old parent
        also holds are moved aside to unique names first and back after.
        """
        parent = split(old)[0]
        children = await self.client.dir_ls(pod, old)
        siblings = {e.name for e in await self.client.dir_ls(pod, parent)}
        siblings.add(split(new)[1])
        clashes = [e.name for e in children if e.is_dir and e.name in siblings]
        aside = {name: _TEMP_PREFIX + secrets.token_hex(8) for name in clashes}
        for name, temp in aside.items():
            await self._move_dir(pod, join(old, name), join(old, temp))
        await self.client.dir_rename(pod, old, new)
        for name, temp in aside.items():
            await self._move_dir(pod, join(new, temp), join(new, name))

    def _rekey(self, pod: str, old: str, new: str, *, tree: bool) -> list[tuple[str, str]]:
        moved = []
        single = self._cache.entries.get((pod, old))
        if single is not None:
            moved.append((old, new, single))
        if tree:
            for (epod, epath), entry in self._cache.entries.items():
                if epod == pod and epath.startswith(old + "/"):
                    moved.append((epath, new + epath[len(old) :], entry))
        for _, after, entry in moved:
            self._cache.move(entry, after)
        return [(before, after) for before, after, _ in moved]

    async def setattr(self, pod: str, path: str, changes: SetAttr) -> Attr:
        path = normalize(path)
        if changes.uid is not None or changes.gid is not None:
            raise NotSupported("FairOS-DFS has no file owners")
        if changes.mode is not None or changes.size is not None:
            self._check_writable(pod)
        attr = await self.stat(pod, path)
        if changes.size is not None:
            if attr.kind is Kind.DIR:
                raise IsADirectory(f"{pod}:{path} is a directory")
            await self._truncate(pod, path, changes.size)
        if changes.mode is not None:
            await self._chmod(pod, path, attr.kind, changes.mode & 0o7777)
        # Times: the server sets them itself and has no call to change them.
        return await self.stat(pod, path)

    async def _truncate(self, pod: str, path: str, size: int) -> None:
        fd = await self.open_file(pod, path, os.O_WRONLY)
        try:
            await trio.to_thread.run_sync(os.ftruncate, fd, size)
        finally:
            await self.close_file(pod, path, fd, written=True)

    async def _chmod(self, pod: str, path: str, kind: Kind, mode: int) -> None:
        async with self._pod_locks[pod]:
            if kind is Kind.DIR:
                await self.client.dir_chmod(pod, path, mode)
                if path == "/":
                    self._roots.pop(pod, None)
                self._forget_dir(pod, split(path)[0])
                return
            cached = self._cache.entries.get((pod, path))
            if cached is not None:
                cached.mode = mode
                if cached.dirty or cached.journal_dirty:
                    # Applied by the upload that is still to come.
                    await self._journal.put(cached, dirty=True)
                    return
                await self._journal.put(cached, dirty=False)
            await self.client.file_chmod(pod, path, mode)
            self._forget_dir(pod, split(path)[0])

    async def statfs(self) -> StatFs:
        # The server has no notion of capacity; report plenty.
        return StatFs(
            block_size=4096,
            blocks=1 << 32,
            blocks_free=1 << 31,
            blocks_avail=1 << 31,
            files=1 << 32,
            files_free=1 << 31,
            name_max=NAME_MAX,
        )

    # -- file contents ---------------------------------------------------

    async def open_file(self, pod: str, path: str, flags: int, mode: int = 0o644) -> int:
        path = normalize(path)
        writing = _is_write(flags)
        if writing:
            self._check_writable(pod)
        async with self._open_locks[(pod, path)]:
            entry = await self._entry_for_open(pod, path, flags, mode)
            local = self._cache.local_path(entry)
            if writing and not entry.journal_dirty:
                await self._journal.put(entry, dirty=True)
            fd = await trio.to_thread.run_sync(
                os.open, local, (flags & os.O_ACCMODE) | os.O_CLOEXEC
            )
            if writing and flags & os.O_TRUNC and os.fstat(fd).st_size:
                os.ftruncate(fd, 0)
                self._cache.touch(entry)
        entry.opens += 1
        entry.writers += writing
        entry.last_used = time.monotonic()
        self._fds[fd] = (entry, writing)
        await self._evict()
        return fd

    async def _entry_for_open(self, pod: str, path: str, flags: int, mode: int) -> CachedFile:
        entry = self._cache.entries.get((pod, path))
        creating = bool(flags & os.O_CREAT)
        if entry is not None and (entry.dirty or entry.journal_dirty or entry.opens):
            if creating and flags & os.O_EXCL:
                raise AlreadyExists(f"{pod}:{path} exists")
            return entry
        try:
            attr = await self._find(pod, path)
        except StoreUnavailable:
            if entry is None:
                raise
            log.warning("server unreachable; serving the cached copy of %s:%s", pod, path)
            return entry
        if attr is None:
            if not creating:
                raise NotFound(f"{pod}:{path}: no such file")
            await self._check_new_name(pod, path)
            return await self._new_entry(pod, path, mode & 0o7777)
        if attr.kind is Kind.DIR:
            raise IsADirectory(f"{pod}:{path} is a directory")
        if creating and flags & os.O_EXCL:
            raise AlreadyExists(f"{pod}:{path} exists")
        remote = self._listings.get((pod, split(path)[0]), (0.0, {}))[1].get(split(path)[1])
        if entry is not None and remote is not None and self._matches(entry, remote):
            return entry
        if entry is not None:
            self._cache.drop_local(entry)
        if _is_write(flags) and flags & os.O_TRUNC:
            # The old content is about to be thrown away: no need to fetch it.
            return await self._new_entry(pod, path, attr.mode)
        return await self._download(pod, path, attr, remote)

    @staticmethod
    def _matches(entry: CachedFile, remote: Entry) -> bool:
        return entry.remote_size == remote.size and entry.remote_mtime in (None, remote.mtime)

    async def _new_entry(self, pod: str, path: str, mode: int) -> CachedFile:
        entry = CachedFile(pod, path, self._cache.new_fid(), mode)
        local = self._cache.local_path(entry)
        await trio.to_thread.run_sync(local.write_bytes, b"")
        self._cache.touch(entry)
        self._cache.add(entry, 0)
        await self._journal.put(entry, dirty=True)
        self._kick()
        return entry

    async def _download(self, pod: str, path: str, attr: Attr, remote: Entry | None) -> CachedFile:
        entry = CachedFile(pod, path, self._cache.new_fid(), attr.mode)
        local = self._cache.local_path(entry)
        partial = local.with_suffix(".part")
        try:
            size = await self.client.file_download(pod, path, partial)
            await trio.Path(partial).rename(local)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
        entry.remote_size = size
        entry.remote_mtime = remote.mtime if remote is not None else None
        self._cache.add(entry, size)
        await self._journal.put(entry, dirty=False)
        log.debug("downloaded %s:%s (%d bytes)", pod, path, size)
        return entry

    def _take_fd(self, fd: int) -> tuple[CachedFile, bool]:
        try:
            return self._fds[fd]
        except KeyError:
            raise PodStoreError(f"descriptor {fd} was not opened by this store") from None

    async def close_file(self, pod: str, path: str, fd: int, *, written: bool) -> None:
        entry, writing = self._take_fd(fd)
        del self._fds[fd]
        if writing:
            self._cache.resize(entry, os.fstat(fd).st_size)
        os.close(fd)
        entry.opens -= 1
        entry.writers -= writing
        if written:
            await self._mark_written(entry)
        if entry.gone:
            return
        if entry.dirty:
            self._kick()
        elif not entry.writers and entry.journal_dirty:
            await self._journal.put(entry, dirty=False)
            await self._evict()
        if entry.error is not None and not entry.error_reported:
            entry.error_reported = True
            raise entry.error

    async def _mark_written(self, entry: CachedFile) -> None:
        """Note that ``entry``'s content may have changed since its last upload.

        ``written`` covers a descriptor's whole life; after an fsync uploaded
        it the content may well be unchanged (write, fsync, close), which the
        digest of the uploaded bytes tells without a second upload.
        """
        if not entry.dirty and entry.uploaded_digest is not None and not entry.gone:
            local = self._cache.local_path(entry)
            digest = await trio.to_thread.run_sync(file_digest, local)
            if digest == entry.uploaded_digest:
                return
        self._cache.touch(entry)

    async def fsync_file(self, pod: str, path: str, fd: int, *, written: bool) -> None:
        entry, _ = self._take_fd(fd)
        if written:
            await self._mark_written(entry)
        if entry.gone or not entry.dirty:
            return
        await trio.to_thread.run_sync(os.fsync, fd)
        try:
            await self._upload(entry)
        except PodStoreError:
            entry.error_reported = True
            raise

    # -- sharing ---------------------------------------------------------

    async def share_pod(self, pod: str) -> str:
        async with self._pod_locks[pod]:
            await self._flush(pod)
            return await self.client.pod_share(pod)

    async def fork_pod(self, ref: str, new_pod: str) -> None:
        ref = check_sharing_ref(ref)
        check_pod_name(new_pod)
        with _unknown_ref(ref):
            await self.client.pod_fork_from_reference(ref, new_pod)

    async def shared_pod_name(self, ref: str) -> str:
        ref = check_sharing_ref(ref)
        with _unknown_ref(ref):
            info = await self.client.pod_receiveinfo(ref)
        return str(info["podName"])

    async def sync(self, pod: str | None = None) -> None:
        failures: list[PodStoreError] = []
        for entry in self._cache.queued():
            if pod in (None, entry.pod):
                try:
                    await self._upload(entry)
                except PodStoreError as exc:
                    failures.append(exc)
        if failures:
            raise failures[0]

    async def refresh(self, pod: str | None = None) -> None:
        """Forget listings and clean copies; close the pod(s) on the server.

        The server caches each pod's metadata per session and never notices
        changes made by other sessions until the pod is closed.
        """
        pods = (
            [pod] if pod is not None else sorted({k[0] for k in self._listings} | set(self._roots))
        )
        for name in pods:
            self._forget_pod(name)
            for entry in [e for e in self._cache.entries.values() if e.pod == name]:
                if not entry.dirty and not entry.journal_dirty and not entry.opens:
                    self._cache.drop_local(entry)
                    await self._journal.remove(name, entry.path)
            async with self._pod_locks[name]:
                await self.client.pod_close(name)
        if pod is None:
            await self.list_pods()
