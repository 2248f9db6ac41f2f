"""The pyfuse3 request handlers: the mount as the kernel sees it.

Layout: the mount root holds one directory per pod, plus the virtual
``.sovr`` control directory; each compute pod's root holds a virtual ``.sovr``
too (see :mod:`sovrfs.control`). Everything else is passed to the pod store.

Only ``FUSEError`` leaves a handler: :func:`_errors` turns every store error
into its errno (through :func:`sovrfs.errors.errno_of`) and logs anything
unforeseen once, with its traceback, as EIO.

File contents go through local descriptors handed out by the store, so reads
and writes are a ``pread``/``pwrite`` each. The kernel caches attributes and
entries for :attr:`MountOptions.attr_timeout` seconds and keeps file pages
across opens while a file's size and mtime are unchanged; the store's change
feed (watchdog for the embedded store) invalidates those caches early when a
file is changed from outside the mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import posixpath
import stat as stat_mod
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import pyfuse3
import trio

from .errors import (
    AlreadyExists,
    CrossPod,
    NotEmpty,
    NotFound,
    PermissionDenied,
    SovrError,
    errno_of,
)
from .inodes import InodeTable, Node
from .store.base import Attr, Change, Kind, PodStore, SetAttr, check_component, check_pod_name

if TYPE_CHECKING:
    from .control import Controller, VHandle

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

CONTROL_DIR = ".sovr"

_KIND_BITS = {
    Kind.FILE: stat_mod.S_IFREG,
    Kind.DIR: stat_mod.S_IFDIR,
    Kind.SYMLINK: stat_mod.S_IFLNK,
}


@dataclass(slots=True)
class MountOptions:
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    writeback_cache: bool = False
    uid: int = os.getuid()
    gid: int = os.getgid()


def _errors(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Let only ``FUSEError`` out of a handler."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except SovrError as exc:
            log.debug("%s: %s (%s)", fn.__name__, exc, errno.errorcode.get(exc.errno, exc.errno))
            raise pyfuse3.FUSEError(errno_of(exc)) from exc
        except OSError as exc:
            log.debug("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno_of(exc)) from exc
        except Exception as exc:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from exc

    return wrapper


@dataclass(slots=True)
class FileHandle:
    node: Node
    fd: int
    pod: str
    written: bool = False


@dataclass(slots=True)
class VirtualHandle:
    node: Node
    handle: VHandle


@dataclass(slots=True)
class DirHandle:
    node: Node
    entries: list[tuple[str, Node, Attr]] | None = None


class Operations(pyfuse3.Operations):
    """The request handlers. One instance serves one mount."""

    supports_dot_lookup = False

    def __init__(
        self, store: PodStore, controller: Controller, options: MountOptions | None = None
    ) -> None:
        super().__init__()
        self.store = store
        self.controller = controller
        self.options = options or MountOptions()
        self.enable_writeback_cache = self.options.writeback_cache
        self.inodes = InodeTable()
        self._handles: dict[int, FileHandle | VirtualHandle | DirHandle] = {}
        self._next_fh = 1
        self._root_mtime_ns = time.time_ns()
        #: When the mount changed each (pod, path) itself; the store's change
        #: feed reports those changes too, and they need no invalidation.
        self._own_changes: dict[tuple[str, str], float] = {}
        #: Set by the daemon once mounted; invalidations run as its tasks.
        self.nursery: trio.Nursery | None = None

    # -- attributes ------------------------------------------------------

    def _entry(self, node: Node, attr: Attr, *, volatile: bool = False) -> pyfuse3.EntryAttributes:
        node.attr = attr
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.ino
        entry.generation = 0
        timeout = 0.0 if volatile else self.options.attr_timeout
        entry.attr_timeout = timeout
        entry.entry_timeout = 0.0 if volatile else self.options.entry_timeout
        entry.st_mode = _KIND_BITS[attr.kind] | attr.mode
        entry.st_nlink = attr.nlink
        entry.st_uid = self.options.uid if attr.uid is None else attr.uid
        entry.st_gid = self.options.gid if attr.gid is None else attr.gid
        entry.st_rdev = 0
        entry.st_size = attr.size
        entry.st_blksize = 128 * 1024
        entry.st_blocks = (attr.size + 511) // 512
        entry.st_atime_ns = attr.atime_ns
        entry.st_mtime_ns = attr.mtime_ns
        entry.st_ctime_ns = attr.ctime_ns
        return entry

    def _root_attr(self) -> Attr:
        t = self._root_mtime_ns
        return Attr(Kind.DIR, 0o755, 0, t, t, t, nlink=2)

    async def _attr_of(self, node: Node) -> tuple[Attr, bool]:
        """Current attributes of ``node`` and whether they must not be cached."""
        if node is self.inodes.root:
            return self._root_attr(), False
        if node.virtual is not None:
            return await node.virtual.getattr(), True
        if node.detached:
            if node.attr is None:
                raise NotFound("entry was removed")
            return node.attr, False
        pod, path = self.inodes.locate(node)
        return await self.store.stat(pod, path), False

    async def _reply(self, node: Node) -> pyfuse3.EntryAttributes:
        attr, volatile = await self._attr_of(node)
        return self._entry(node, attr, volatile=volatile)

    def _counted(self, node: Node, entry: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        return entry

    @_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._reply(self.inodes.get(inode))

    # -- lookup ----------------------------------------------------------

    async def _lookup_node(self, parent: Node, name: str) -> tuple[Node, Attr, bool]:
        if parent is self.inodes.root:
            if name == CONTROL_DIR:
                virtual = self.controller.root_dir()
                node = self.inodes.child(parent, name, Kind.DIR, pod=None, virtual=virtual)
                return node, await virtual.getattr(), True
            attr = await self.store.stat(name, "/")
            node = self.inodes.child(parent, name, Kind.DIR, pod=name)
            return node, attr, False
        if parent.virtual is not None:
            child = await parent.virtual.lookup(name)
            if child is None:
                raise NotFound(name)
            node = self.inodes.child(parent, name, child.kind, pod=parent.pod, virtual=child)
            return node, await child.getattr(), True
        pod, path = self.inodes.path_of(parent, name)
        if name == CONTROL_DIR and parent.parent is self.inodes.root:
            pod_dir = await self.controller.pod_dir(pod)
            if pod_dir is not None:
                node = self.inodes.child(parent, name, Kind.DIR, pod=pod, virtual=pod_dir)
                return node, await pod_dir.getattr(), True
        attr = await self.store.stat(pod, path)
        node = self.inodes.child(parent, name, attr.kind, pod=pod, identity=attr.identity)
        return node, attr, False

    @_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inodes.get(parent_inode)
        text = os.fsdecode(name)
        if text in (".", ".."):
            target = parent if text == "." else (parent.parent or self.inodes.root)
            return self._counted(target, await self._reply(target))
        node, attr, volatile = await self._lookup_node(parent, text)
        return self._counted(node, self._entry(node, attr, volatile=volatile))

    @_errors
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:  # type: ignore[override]
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    # -- helpers for changing the tree -----------------------------------

    def _writable_dir(self, parent: Node, name: str) -> tuple[str, str]:
        """(pod, path) for a new entry ``name`` in ``parent``; refuses virtual places."""
        if parent.virtual is not None:
            raise PermissionDenied("the control directory holds only its own files")
        check_component(name)
        if parent is self.inodes.root:
            raise PermissionDenied("the mount root holds only pods (directories)")
        if name == CONTROL_DIR and parent.parent is self.inodes.root:
            raise AlreadyExists(f"{CONTROL_DIR} is reserved for control files")
        return self.inodes.path_of(parent, name)

    async def _new_entry(self, parent: Node, name: str, attr: Attr) -> pyfuse3.EntryAttributes:
        assert parent.pod is not None
        node = self.inodes.child(parent, name, attr.kind, pod=parent.pod, identity=attr.identity)
        self._changed(parent.pod, self.inodes.locate(node)[1])
        return self._counted(node, self._entry(node, attr))

    async def _own(self, pod: str, path: str, ctx: pyfuse3.RequestContext) -> Attr | None:
        """Give a new entry to the calling user, as a local filesystem would."""
        if "owner" not in self.store.features or os.geteuid() != 0:
            return None
        if ctx.uid == 0 and ctx.gid == 0:
            return None
        return await self.store.setattr(pod, path, SetAttr(uid=ctx.uid, gid=ctx.gid))

    # -- directories -----------------------------------------------------

    @_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inodes.get(parent_inode)
        text = os.fsdecode(name)
        if parent is self.inodes.root:
            check_pod_name(text)
            await self.store.create_pod(text)
            self._root_mtime_ns = time.time_ns()
            log.info("pod %s created", text)
            attr = await self.store.stat(text, "/")
            node = self.inodes.child(parent, text, Kind.DIR, pod=text, identity=attr.identity)
            return self._counted(node, self._entry(node, attr))
        pod, path = self._writable_dir(parent, text)
        attr = await self.store.mkdir(pod, path, stat_mod.S_IMODE(mode))
        attr = await self._own(pod, path, ctx) or attr
        return await self._new_entry(parent, text, attr)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.inodes.get(parent_inode)
        text = os.fsdecode(name)
        if parent.virtual is not None or (
            text == CONTROL_DIR
            and (parent is self.inodes.root or parent.parent is self.inodes.root)
        ):
            # Removing the control directory does nothing, and says so by
            # succeeding: `rm -r POD` must be able to finish.
            return
        if parent is self.inodes.root:
            entries = await self.store.listdir(text, "/")
            if entries:
                raise NotEmpty(f"pod {text} is not empty")
            self.controller.check_idle(text)
            await self.controller.pod_removed(text)
            await self.store.delete_pod(text)
            self._root_mtime_ns = time.time_ns()
            log.info("pod %s removed", text)
        else:
            pod, path = self.inodes.path_of(parent, text)
            await self.store.rmdir(pod, path)
            self._changed(pod, path)
        self.inodes.drop_name(parent, text)

    @_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.inodes.get(inode)
        if node.kind is not Kind.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self._add_handle(DirHandle(node))

    async def _list(self, node: Node) -> list[tuple[str, Node, Attr]]:
        out: list[tuple[str, Node, Attr]] = []
        if node is self.inodes.root:
            root_dir = self.controller.root_dir()
            ctl = self.inodes.child(node, CONTROL_DIR, Kind.DIR, pod=None, virtual=root_dir)
            out.append((CONTROL_DIR, ctl, await root_dir.getattr()))
            for info in await self.store.list_pods():
                try:
                    attr = await self.store.stat(info.name, "/")
                except NotFound:
                    continue
                child = self.inodes.child(
                    node, info.name, Kind.DIR, pod=info.name, identity=attr.identity
                )
                out.append((info.name, child, attr))
            return out
        if node.virtual is not None:
            for name, virtual in await node.virtual.list():
                child = self.inodes.child(node, name, virtual.kind, pod=node.pod, virtual=virtual)
                out.append((name, child, await virtual.getattr()))
            return out
        pod, path = self.inodes.locate(node)
        entries = await self.store.listdir(pod, path)
        if path == "/":
            pod_dir = await self.controller.pod_dir(pod, entries=[n for n, _ in entries])
            if pod_dir is not None:
                ctl = self.inodes.child(node, CONTROL_DIR, Kind.DIR, pod=pod, virtual=pod_dir)
                out.append((CONTROL_DIR, ctl, await pod_dir.getattr()))
        for name, attr in entries:
            if path == "/" and name == CONTROL_DIR:
                continue
            child = self.inodes.child(node, name, attr.kind, pod=pod, identity=attr.identity)
            out.append((name, child, attr))
        return out

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._handles[fh]
        assert isinstance(handle, DirHandle)
        if handle.entries is None or start_id == 0:
            handle.entries = await self._list(handle.node)
        entries = handle.entries
        for index in range(start_id, len(entries)):
            name, node, attr = entries[index]
            volatile = node.virtual is not None
            entry = self._entry(node, attr, volatile=volatile)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry, index + 1):
                break
            node.lookups += 1

    @_errors
    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    @_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        handle = self._handles[fh]
        if handle.node.pod is not None and handle.node.virtual is None:
            await self.store.sync(handle.node.pod)

    # -- removing and renaming -------------------------------------------

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.inodes.get(parent_inode)
        text = os.fsdecode(name)
        if parent.virtual is not None:
            # Control files cannot be removed; succeeding keeps `rm -r POD` whole.
            return
        if parent is self.inodes.root:
            raise pyfuse3.FUSEError(errno.EISDIR)
        pod, path = self.inodes.path_of(parent, text)
        await self.store.unlink(pod, path)
        self._changed(pod, path)
        node = self.inodes.drop_name(parent, text)
        if node is not None and node.attr is not None and node.attr.nlink > 1:
            # Other names keep the object alive; let the kernel re-read nlink.
            self._invalidate_soon(node.ino)

    @_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self.inodes.get(parent_inode_old)
        new_parent = self.inodes.get(parent_inode_new)
        old = os.fsdecode(name_old)
        new = os.fsdecode(name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        replace = not flags & pyfuse3.RENAME_NOREPLACE
        root = self.inodes.root
        if old_parent is root or new_parent is root:
            if old_parent is not new_parent:
                raise CrossPod("pods are separate drives; copy between them instead")
            await self._rename_pod(old, new, replace=replace)
        else:
            if old_parent.virtual is not None or new_parent.virtual is not None:
                raise PermissionDenied("control files cannot be renamed")
            if old_parent.pod != new_parent.pod:
                raise CrossPod("pods are separate drives; copy between them instead")
            if old == CONTROL_DIR and old_parent.parent is root:
                raise PermissionDenied("control files cannot be renamed")
            pod, old_path = self.inodes.path_of(old_parent, old)
            _, new_path = self._writable_dir(new_parent, new)
            await self.store.rename(pod, old_path, new_path, replace=replace)
            self._changed(pod, old_path)
            self._changed(pod, new_path)
            moved = old_parent.children.get(old)
            if moved is not None and moved.kind is Kind.FILE:
                # An editor's atomic save ends with this rename: it is a save.
                self.controller.file_saved(pod, new_path)
        self.inodes.move(old_parent, old, new_parent, new)

    async def _rename_pod(self, old: str, new: str, *, replace: bool) -> None:
        check_pod_name(new)
        if old == CONTROL_DIR or new == CONTROL_DIR:
            raise PermissionDenied("the control directory cannot be renamed")
        self.controller.check_idle(old)
        pods = {info.name for info in await self.store.list_pods()}
        if new in pods:
            if not replace:
                raise AlreadyExists(f"pod {new} already exists")
            if await self.store.listdir(new, "/"):
                raise NotEmpty(f"pod {new} is not empty")
            await self.store.delete_pod(new)
        await self.store.rename_pod(old, new)
        await self.controller.pod_renamed(old, new)
        self._root_mtime_ns = time.time_ns()
        log.info("pod %s renamed to %s", old, new)

    # -- links -----------------------------------------------------------

    @_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inodes.get(parent_inode)
        text = os.fsdecode(name)
        pod, path = self._writable_dir(parent, text)
        attr = await self.store.symlink(pod, path, os.fsdecode(target))
        attr = await self._own(pod, path, ctx) or attr
        return await self._new_entry(parent, text, attr)

    @_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.inodes.get(inode)
        if node.virtual is not None:
            return os.fsencode(await node.virtual.readlink())
        pod, path = self.inodes.locate(node)
        return os.fsencode(await self.store.readlink(pod, path))

    @_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        parent = self.inodes.get(new_parent_inode)
        text = os.fsdecode(new_name)
        if node.virtual is not None or node.kind is Kind.DIR:
            raise pyfuse3.FUSEError(errno.EPERM)
        if node.pod != parent.pod:
            raise CrossPod("pods are separate drives")
        pod, existing = self.inodes.locate(node)
        pod, path = self._writable_dir(parent, text)
        attr = await self.store.link(pod, existing, path)
        entry = await self._new_entry(parent, text, attr)
        self._invalidate_soon(node.ino)
        return entry

    # -- attributes ------------------------------------------------------

    @_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        if node.virtual is not None:
            # `touch` on a control file sets its times; that is not a request.
            return await self._reply(node)
        if node is self.inodes.root:
            raise pyfuse3.FUSEError(errno.EPERM)
        changes = SetAttr()
        if fields.update_mode:
            changes.mode = stat_mod.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes.uid = attr.st_uid
        if fields.update_gid:
            changes.gid = attr.st_gid
        if fields.update_atime:
            changes.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            changes.mtime_ns = attr.st_mtime_ns
        handle = self._handles.get(fh) if fh is not None else None
        if fields.update_size:
            if isinstance(handle, FileHandle):
                os.ftruncate(handle.fd, attr.st_size)
                handle.written = True
                if changes.mtime_ns is None:
                    changes.mtime_ns = time.time_ns()
            else:
                changes.size = attr.st_size
        if node.detached:
            raise NotFound("entry was removed")
        pod, path = self.inodes.locate(node)
        new_attr = await self.store.setattr(pod, path, changes)
        return self._entry(node, new_attr)

    @_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = await self.store.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = st.block_size
        out.f_frsize = st.block_size
        out.f_blocks = st.blocks
        out.f_bfree = st.blocks_free
        out.f_bavail = st.blocks_avail
        out.f_files = st.files
        out.f_ffree = st.files_free
        out.f_favail = st.files_free
        out.f_namemax = st.name_max
        return out

    # -- extended attributes ---------------------------------------------

    def _xattr_target(self, node: Node) -> tuple[str, str]:
        if node.virtual is not None or node is self.inodes.root:
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        return self.inodes.locate(node)

    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(b"user."):
            # `ls -l` asks every file for its SELinux label and ACL; pods keep
            # user attributes only, and capabilities must never pass through.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        node = self.inodes.get(inode)
        text = os.fsdecode(name)
        if node.parent is self.inodes.root and node.pod is not None:
            value = await self.controller.pod_xattr(node.pod, text)
            if value is not None:
                return value
        pod, path = self._xattr_target(node)
        try:
            return await self.store.getxattr(pod, path, text)
        except NotFound:
            if node.detached:
                raise
            # ENOENT from getxattr means "no such attribute" to callers.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    @_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self.inodes.get(inode)
        names: list[str] = []
        if node.parent is self.inodes.root and node.pod is not None:
            names.extend(await self.controller.pod_xattr_names(node.pod))
        if node.virtual is None and node is not self.inodes.root:
            pod, path = self.inodes.locate(node)
            names.extend(n for n in await self.store.listxattr(pod, path) if n.startswith("user."))
        return [os.fsencode(n) for n in names]

    @_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self.inodes.get(inode)
        text = os.fsdecode(name)
        if text.startswith("user.sovr."):
            raise PermissionDenied("user.sovr.* attributes are read-only")
        pod, path = self._xattr_target(node)
        await self.store.setxattr(pod, path, text, value)

    @_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self.inodes.get(inode)
        pod, path = self._xattr_target(node)
        try:
            await self.store.removexattr(pod, path, os.fsdecode(name))
        except NotFound:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    # -- files -----------------------------------------------------------

    def _add_handle(self, handle: FileHandle | VirtualHandle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _file_info(self, fh: int, node: Node, attr: Attr | None) -> pyfuse3.FileInfo:
        version = (attr.size, attr.mtime_ns) if attr is not None else None
        keep = version is not None and node.version == version
        if version is not None:
            node.version = version
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=False)

    @_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.get(inode)
        if node.virtual is not None:
            vhandle = await node.virtual.open(flags)
            fh = self._add_handle(VirtualHandle(node, vhandle))
            node.open_count += 1
            return pyfuse3.FileInfo(fh=fh, direct_io=vhandle.direct_io, keep_cache=False)
        if node.kind is Kind.DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        pod, path = self.inodes.locate(node)
        fd = await self.store.open_file(pod, path, flags & ~(os.O_CREAT | os.O_EXCL))
        handle = FileHandle(node, fd, pod, written=bool(flags & os.O_TRUNC))
        node.open_count += 1
        fh = self._add_handle(handle)
        attr = node.attr
        if handle.written or attr is None:
            attr = await self.store.stat(pod, path)
        return self._file_info(fh, node, attr)

    @_errors
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.inodes.get(parent_inode)
        text = os.fsdecode(name)
        pod, path = self._writable_dir(parent, text)
        fd = await self.store.open_file(pod, path, flags | os.O_CREAT, stat_mod.S_IMODE(mode))
        try:
            attr = await self._own(pod, path, ctx) or await self.store.stat(pod, path)
        except BaseException:
            await self.store.close_file(pod, path, fd, written=True)
            raise
        entry = await self._new_entry(parent, text, attr)
        node = self.inodes.get(entry.st_ino)
        node.open_count += 1
        fh = self._add_handle(FileHandle(node, fd, pod, written=True))
        return self._file_info(fh, node, attr), entry

    def _file(self, fh: int) -> FileHandle:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle):
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if isinstance(handle, VirtualHandle):
            return await handle.handle.read(off, size)
        return os.pread(self._file(fh).fd, size, off)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles.get(fh)
        if isinstance(handle, VirtualHandle):
            return await handle.handle.write(off, buf)
        file = self._file(fh)
        file.written = True
        return os.pwrite(file.fd, buf, off)

    @_errors
    async def flush(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if isinstance(handle, VirtualHandle):
            await handle.handle.flush()
            return
        file = self._file(fh)
        if file.node.detached:
            return
        pod, path = self.inodes.locate(file.node)
        await self.store.flush_file(pod, path, file.fd, written=file.written)
        if file.written:
            self.controller.file_saved(pod, path)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handles.get(fh)
        if isinstance(handle, VirtualHandle):
            return
        file = self._file(fh)
        if file.node.detached:
            return
        pod, path = self.inodes.locate(file.node)
        await self.store.fsync_file(pod, path, file.fd, written=file.written)

    @_errors
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None or isinstance(handle, DirHandle):
            return
        node = handle.node
        node.open_count -= 1
        try:
            if isinstance(handle, VirtualHandle):
                await handle.handle.release()
                return
            if node.detached:
                await self.store.close_file(handle.pod, "", handle.fd, written=False)
                return
            pod, path = self.inodes.locate(node)
            await self.store.close_file(pod, path, handle.fd, written=handle.written)
            if handle.written:
                self._own_changes[(pod, path)] = time.monotonic()
                attr = await self.store.stat(pod, path)
                node.attr = attr
                node.version = (attr.size, attr.mtime_ns)
        finally:
            if not node.open_count and not node.lookups:
                self.inodes.forget(node.ino, 0)

    # -- cache invalidation ----------------------------------------------

    def _invalidate_soon(self, ino: int) -> None:
        """Drop the kernel's cached attributes and pages of ``ino`` (from a thread)."""
        if self.nursery is not None:
            self.nursery.start_soon(self._invalidate_inode, ino)

    def control_changed(self, pod: str) -> None:
        """A pod's control files show new content: drop what the kernel cached of them."""
        pod_node = self.inodes.find(pod, "/")
        ctl = pod_node.children.get(CONTROL_DIR) if pod_node is not None else None
        if ctl is not None:
            for child in list(ctl.children.values()):
                self._invalidate_soon(child.ino)

    def _changed(self, pod: str, path: str) -> None:
        """Record a change this mount made, and tell the controller.

        The store reports the change back, and also a change of the parent
        directory (its entries changed); neither needs the kernel told.
        """
        now = time.monotonic()
        if len(self._own_changes) > 10000:
            self._own_changes = {k: t for k, t in self._own_changes.items() if now - t < 2}
        self._own_changes[(pod, path)] = now
        self._own_changes[(pod, posixpath.dirname(path) or "/")] = now
        self.controller.tree_changed(pod, path)

    def _is_echo(self, pod: str, path: str, node: Node | None) -> bool:
        """Whether a reported change is the echo of this mount's own work."""
        if node is not None and node.open_count:
            return True
        when = self._own_changes.get((pod, path))
        return when is not None and time.monotonic() - when < 2.0

    async def _invalidate_inode(self, ino: int) -> None:
        # Called from a worker thread: invalidation can wait on the kernel,
        # which may need this very loop to answer other requests first.
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.debug("invalidate_inode(%s): %s", ino, exc)
        except Exception as exc:  # the session is gone during unmount
            log.debug("invalidate_inode(%s): %s", ino, exc)

    async def apply_change(self, change: Change, *, explicit: bool = False) -> None:
        """A store path changed behind the mount's back: drop what the kernel cached.

        Directory entries are invalidated only when the name now stands for
        something else (created, removed, replaced). Invalidating the entry of
        a directory that is still there would detach it in the kernel, and a
        process working in it would find its working directory gone.
        ``explicit`` (a refresh the user asked for) applies the change even
        where it looks like the echo of this mount's own recent work.
        """
        if change.pod == "":
            return
        path = change.path or "/"
        node = self.inodes.find(change.pod, path)
        if not explicit and self._is_echo(change.pod, path, node):
            return
        try:
            attr: Attr | None = await self.store.stat(change.pod, path)
        except SovrError:
            attr = None
        if node is not None:
            node.version = None
            await self._invalidate_inode(node.ino)
        replaced = (
            node is None
            or attr is None
            or attr.kind is not node.kind
            or (attr.identity is not None and node.identity not in (None, attr.identity))
        )
        if replaced:
            if path == "/":
                self._root_mtime_ns = time.time_ns()
                await self._invalidate_inode(self.inodes.root.ino)
                self._invalidate_entry(self.inodes.root, change.pod)
            else:
                parent_path, _, name = path.rpartition("/")
                parent = self.inodes.find(change.pod, parent_path or "/")
                if parent is not None:
                    await self._invalidate_inode(parent.ino)
                    self._invalidate_entry(parent, name)
        self.controller.tree_changed(change.pod, path, external=True)

    def _invalidate_entry(self, parent: Node, name: str) -> None:
        try:
            pyfuse3.invalidate_entry_async(parent.ino, os.fsencode(name), ignore_enoent=True)
        except Exception as exc:  # the notification queue is gone during unmount
            log.debug("invalidate_entry(%s, %s): %s", parent.ino, name, exc)

    async def serve_changes(self) -> None:
        """Follow the store's change feed until cancelled."""
        async for change in self.store.changes():
            try:
                await self.apply_change(change)
            except Exception:
                # One change the mount failed to apply costs a stale cache
                # entry for attr_timeout seconds; ending the feed would cost
                # every later one.
                log.exception("could not apply a change of %s:%s", change.pod, change.path)

    def stats(self) -> dict[str, Any]:
        return {"inodes": len(self.inodes), "open_handles": len(self._handles)}
