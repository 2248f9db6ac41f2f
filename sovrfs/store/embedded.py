"""The embedded pod store: pods are directories on the local disk.

Layout of the store directory::

    STORE/
      <pod>/              one directory per pod, its tree as the user sees it
      .sovrfs/
        snapshots/        content-addressed snapshots made by share_pod()

Pod names never start with a dot, so the store's own ``.sovrfs`` directory can
never clash with a pod. Every operation is a direct system call on the pod's
directory: local disk calls take microseconds, so they run on the trio thread
as the pyfuse3 pass-through example does; only whole-tree work (snapshots,
forks, deleting a pod) goes to a worker thread.

Changes made to the store directory by other programs are watched with
watchdog (inotify) and reported through :meth:`EmbeddedStore.changes`, so the
FUSE layer can drop the kernel's cached entries for those paths.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import stat as stat_mod
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import trio

from ..errors import (
    AlreadyExists,
    InvalidName,
    NotADirectory,
    NotFound,
    from_os_error,
)
from .base import (
    Attr,
    Change,
    Kind,
    PodInfo,
    PodStore,
    SetAttr,
    StatFs,
    check_pod_name,
    normalize,
)

log = logging.getLogger(__name__)

_META_DIR = ".sovrfs"


@contextlib.contextmanager
def _local_errors() -> Iterator[None]:
    """Turn the local disk's ``OSError`` into the matching pod-store error."""
    try:
        yield
    except OSError as exc:
        raise from_os_error(exc) from exc


def attr_from_stat(st: os.stat_result) -> Attr:
    """Turn an ``lstat`` result into an :class:`Attr`."""
    if stat_mod.S_ISDIR(st.st_mode):
        kind = Kind.DIR
    elif stat_mod.S_ISLNK(st.st_mode):
        kind = Kind.SYMLINK
    else:
        kind = Kind.FILE
    return Attr(
        kind=kind,
        mode=stat_mod.S_IMODE(st.st_mode),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        atime_ns=st.st_atime_ns,
        nlink=st.st_nlink,
        uid=st.st_uid,
        gid=st.st_gid,
        # One int rather than a (dev, ino) tuple: the mount keeps one per
        # known entry, and at 100,000 entries the tuples alone cost ~10 MiB.
        identity=(st.st_dev << 64) | st.st_ino,
    )


class EmbeddedStore(PodStore):
    """Pods kept as directories below ``root``."""

    kind = "embedded"
    features = frozenset({"symlink", "hardlink", "xattr", "owner", "times"})

    def __init__(self, root: Path, *, watch: bool = True) -> None:
        self.root = Path(root)
        self._watch = watch
        self._change_send, self._change_recv = trio.open_memory_channel[Change](1000)
        self._observer: Any = None
        self.snapshots_dir = self.root / _META_DIR / "snapshots"

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        with _local_errors():
            self.root.mkdir(parents=True, exist_ok=True)
            self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise from_os_error(
                PermissionError(errno.EACCES, f"store directory {self.root} is not writable")
            )
        if self._watch:
            self._start_watching()

    async def aclose(self) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            observer.stop()
            await trio.to_thread.run_sync(observer.join, 5)
        self._change_send.close()

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.root), "watching": self._observer is not None}

    def _start_watching(self) -> None:
        from watchdog import events
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        token = trio.lowlevel.current_trio_token()
        store = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = [event.src_path]
                dest = getattr(event, "dest_path", "")
                if dest:
                    paths.append(dest)
                for raw in paths:
                    change = store._change_for(os.fsdecode(raw))
                    if change is not None:
                        try:
                            token.run_sync_soon(store._post_change, change)
                        except trio.RunFinishedError:
                            return

        observer = Observer()
        # Only what changes names or finished contents. Opens, reads and each
        # single write (the mount's own among them) would cost an event each;
        # attribute changes show once the kernel's one-second cache expires.
        watched = [
            events.FileCreatedEvent,
            events.DirCreatedEvent,
            events.FileDeletedEvent,
            events.DirDeletedEvent,
            events.FileMovedEvent,
            events.DirMovedEvent,
            events.FileClosedEvent,
        ]
        observer.schedule(Handler(), str(self.root), recursive=True, event_filter=watched)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def _change_for(self, local: str) -> Change | None:
        try:
            rel = Path(local).relative_to(self.root)
        except ValueError:
            return None
        parts = rel.parts
        if not parts or parts[0] == _META_DIR:
            return None
        if len(parts) == 1:
            return Change(parts[0], None)
        return Change(parts[0], "/" + "/".join(parts[1:]))

    def _post_change(self, change: Change) -> None:
        try:
            self._change_send.send_nowait(change)
        except trio.WouldBlock:
            # A burst bigger than the buffer: the consumer will catch up with
            # the later events; a dropped one only delays an invalidation
            # until the attribute timeout expires.
            log.debug("change buffer full, dropped %s", change)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            # Nobody follows the changes any more: the mount is stopping.
            pass

    async def changes(self) -> AsyncIterator[Change]:
        async with self._change_recv:
            async for change in self._change_recv:
                yield change

    # -- paths -----------------------------------------------------------

    def pod_dir(self, pod: str) -> Path:
        return self.root / pod

    def local_path(self, pod: str, path: str) -> str:
        """The local path of ``path`` in ``pod`` (not checked for existence)."""
        norm = normalize(path)
        if norm == "/":
            return os.path.join(self.root, pod)
        return os.path.join(self.root, pod, norm[1:])

    def _existing_pod(self, pod: str) -> str:
        local = os.path.join(self.root, pod)
        if pod.startswith(".") or not os.path.isdir(local):
            raise NotFound(f"no pod named {pod!r}")
        return local

    # -- pods ------------------------------------------------------------

    async def list_pods(self) -> list[PodInfo]:
        with _local_errors():
            names = sorted(
                e.name
                for e in os.scandir(self.root)
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
            )
        return [PodInfo(n) for n in names]

    async def create_pod(self, pod: str) -> None:
        check_pod_name(pod)
        try:
            os.mkdir(os.path.join(self.root, pod), 0o755)
        except FileExistsError:
            raise AlreadyExists(f"pod {pod!r} already exists") from None
        except OSError as exc:
            raise from_os_error(exc) from exc

    async def delete_pod(self, pod: str) -> None:
        local = self._existing_pod(pod)
        # Move aside first so the pod vanishes at once even if deleting a
        # big tree takes a while.
        doomed = self.root / _META_DIR / f"deleting-{pod}-{os.getpid()}-{id(self)}"
        with _local_errors():
            os.rename(local, doomed)
        await trio.to_thread.run_sync(shutil.rmtree, doomed, True)

    async def rename_pod(self, old: str, new: str) -> None:
        check_pod_name(new)
        src = self._existing_pod(old)
        dst = os.path.join(self.root, new)
        if os.path.lexists(dst):
            raise AlreadyExists(f"pod {new!r} already exists")
        with _local_errors():
            os.rename(src, dst)

    # -- the tree --------------------------------------------------------

    async def stat(self, pod: str, path: str) -> Attr:
        local = self.local_path(pod, path)
        with _local_errors():
            st = os.lstat(local)
        return attr_from_stat(st)

    async def listdir(self, pod: str, path: str) -> list[tuple[str, Attr]]:
        local = self.local_path(pod, path)
        out = []
        with _local_errors(), os.scandir(local) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing
                out.append((entry.name, attr_from_stat(st)))
        out.sort(key=lambda item: item[0])
        return out

    async def mkdir(self, pod: str, path: str, mode: int) -> Attr:
        local = self.local_path(pod, path)
        with _local_errors():
            os.mkdir(local, mode)
            return attr_from_stat(os.lstat(local))

    async def rmdir(self, pod: str, path: str) -> None:
        if normalize(path) == "/":
            raise InvalidName("cannot remove a pod's root directory")
        with _local_errors():
            os.rmdir(self.local_path(pod, path))

    async def unlink(self, pod: str, path: str) -> None:
        with _local_errors():
            os.unlink(self.local_path(pod, path))

    async def rename(self, pod: str, old: str, new: str, *, replace: bool = True) -> None:
        src = self.local_path(pod, old)
        dst = self.local_path(pod, new)
        with _local_errors():
            if replace:
                os.rename(src, dst)
            else:
                _rename_noreplace(src, dst)

    async def setattr(self, pod: str, path: str, changes: SetAttr) -> Attr:
        local = self.local_path(pod, path)
        with _local_errors():
            if changes.size is not None:
                os.truncate(local, changes.size)
            if changes.mode is not None:
                os.chmod(local, changes.mode, follow_symlinks=False)
            if changes.uid is not None or changes.gid is not None:
                os.chown(
                    local,
                    -1 if changes.uid is None else changes.uid,
                    -1 if changes.gid is None else changes.gid,
                    follow_symlinks=False,
                )
            if changes.atime_ns is not None or changes.mtime_ns is not None:
                st = os.lstat(local)
                atime = st.st_atime_ns if changes.atime_ns is None else changes.atime_ns
                mtime = st.st_mtime_ns if changes.mtime_ns is None else changes.mtime_ns
                os.utime(local, ns=(atime, mtime), follow_symlinks=False)
            return attr_from_stat(os.lstat(local))

    async def symlink(self, pod: str, path: str, target: str) -> Attr:
        local = self.local_path(pod, path)
        with _local_errors():
            os.symlink(target, local)
            return attr_from_stat(os.lstat(local))

    async def readlink(self, pod: str, path: str) -> str:
        with _local_errors():
            return os.readlink(self.local_path(pod, path))

    async def link(self, pod: str, existing: str, new: str) -> Attr:
        src = self.local_path(pod, existing)
        dst = self.local_path(pod, new)
        with _local_errors():
            os.link(src, dst, follow_symlinks=False)
            return attr_from_stat(os.lstat(dst))

    async def getxattr(self, pod: str, path: str, name: str) -> bytes:
        with _local_errors():
            return os.getxattr(self.local_path(pod, path), name, follow_symlinks=False)

    async def setxattr(self, pod: str, path: str, name: str, value: bytes) -> None:
        with _local_errors():
            os.setxattr(self.local_path(pod, path), name, value, follow_symlinks=False)

    async def listxattr(self, pod: str, path: str) -> list[str]:
        with _local_errors():
            return os.listxattr(self.local_path(pod, path), follow_symlinks=False)

    async def removexattr(self, pod: str, path: str, name: str) -> None:
        with _local_errors():
            os.removexattr(self.local_path(pod, path), name, follow_symlinks=False)

    async def statfs(self) -> StatFs:
        st = os.statvfs(self.root)
        return StatFs(
            block_size=st.f_frsize,
            blocks=st.f_blocks,
            blocks_free=st.f_bfree,
            blocks_avail=st.f_bavail,
            files=st.f_files,
            files_free=st.f_ffree,
            name_max=min(st.f_namemax, 255),
        )

    # -- file contents ---------------------------------------------------

    async def open_file(self, pod: str, path: str, flags: int, mode: int = 0o644) -> int:
        local = self.local_path(pod, path)
        # O_NOFOLLOW: the kernel resolves symlinks itself before asking us, so
        # a symlink here was swapped in behind our back; never follow it out
        # of the store.
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(local, flags, mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotADirectory(f"{path} is a symbolic link") from exc
            raise from_os_error(exc) from exc

    async def close_file(self, pod: str, path: str, fd: int, *, written: bool) -> None:
        with _local_errors():
            os.close(fd)

    async def fsync_file(self, pod: str, path: str, fd: int, *, written: bool) -> None:
        with _local_errors():
            await trio.to_thread.run_sync(os.fsync, fd)

    # -- sharing ---------------------------------------------------------

    def _snapshots(self) -> Any:
        from ..snapshot import SnapshotStore

        return SnapshotStore(self.snapshots_dir)

    async def share_pod(self, pod: str) -> str:
        local = self._existing_pod(pod)
        snapshots = self._snapshots()
        ref: str = await trio.to_thread.run_sync(
            lambda: snapshots.freeze(Path(local), name=pod, exclude=None)
        )
        log.info("pod %s shared as %s", pod, ref)
        return ref

    async def fork_pod(self, ref: str, new_pod: str) -> None:
        check_pod_name(new_pod)
        snapshots = self._snapshots()
        if not snapshots.exists(ref):
            raise NotFound(f"no shared pod with reference {ref}")
        dest = os.path.join(self.root, new_pod)
        if os.path.lexists(dest):
            raise AlreadyExists(f"pod {new_pod!r} already exists")
        await trio.to_thread.run_sync(snapshots.restore, ref, Path(dest))

    async def shared_pod_name(self, ref: str) -> str:
        snapshots = self._snapshots()
        if not snapshots.exists(ref):
            raise NotFound(f"no shared pod with reference {ref}")
        info = snapshots.info(ref)
        return str(info["name"])


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(src: str, dst: str) -> None:
    """``rename`` that fails with EEXIST instead of replacing ``dst`` (renameat2)."""
    res = _libc.renameat2(
        _AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE
    )
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


def is_empty_dir(local: str) -> bool:
    with os.scandir(local) as it:
        return next(it, None) is None
