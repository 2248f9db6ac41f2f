"""The pod-store interface: what the FUSE layer, the run engine and the protocol
need from a place that keeps pods.

A pod store is shaped like FairOS-DFS: a user owns *pods* (separate drives),
each pod is a tree of directories and files addressed by absolute POSIX paths
(``"/"``, ``"/script/run.py"``), and a pod can be *shared* (published under a
64-hex-character reference) and *forked* from such a reference. Two
implementations exist: :mod:`sovrfs.store.embedded` keeps pods as directories
on the local disk, :mod:`sovrfs.store.dfs` talks to a FairOS-DFS server.

File contents always travel through the local disk: :meth:`PodStore.open_file`
returns a file descriptor of a local file (the pod's own file for the embedded
store, a cached copy for FairOS-DFS) and the FUSE layer reads and writes it
with ``pread``/``pwrite``. :meth:`PodStore.close_file` tells the store whether
the file was written, so a remote store knows what to upload.

Every method raises only :class:`sovrfs.errors.PodStoreError` subclasses for
conditions a caller can act on (``NotFound``, ``AlreadyExists``, ...). A store
that lacks a feature (symlinks, hard links, extended attributes, owners)
raises ``NotSupported`` and leaves the feature out of :attr:`PodStore.features`.
"""

from __future__ import annotations

import abc
import enum
import os
import posixpath
import re
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import trio

from ..errors import InvalidName, NameTooLong, NotFound, NotSupported

#: Longest pod name FairOS-DFS accepts (bytes); the embedded store uses the same.
POD_NAME_MAX = 64
#: Longest single path component sovrfs accepts (bytes), as on most local filesystems.
NAME_MAX = 255

_POD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True, slots=True)
class Attr:
    """Attributes of one entry, in the units the kernel wants.

    ``mode`` holds the permission bits only (``0o7777``); the kind says what
    the entry is. ``uid``/``gid`` of ``None`` mean "the mount owner's".
    ``identity`` is a stable key shared by every name of one object (hard
    links); ``None`` means the object is known by its path alone.
    """

    kind: Kind
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    nlink: int = 1
    uid: int | None = None
    gid: int | None = None
    identity: Hashable | None = None


@dataclass(frozen=True, slots=True)
class PodInfo:
    name: str
    #: A received (shared) pod: readable, every write fails with EROFS.
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    blocks_avail: int
    files: int
    files_free: int
    name_max: int = NAME_MAX


@dataclass(frozen=True, slots=True)
class Change:
    """Something changed in the store behind the mount's back.

    ``path`` is ``None`` when the pod itself appeared, vanished or must be
    re-read as a whole.
    """

    pod: str
    path: str | None = None


@dataclass(slots=True)
class SetAttr:
    """The attributes a ``setattr`` changes; ``None`` leaves one as it is."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def check_pod_name(name: str) -> str:
    """Return ``name`` if it can name a pod, else raise ``InvalidName``/``NameTooLong``.

    Pod names become top-level directory names and FairOS-DFS pod names, so
    they must be a single path component that both accept, and must not look
    like the daemon's own entries (a leading dot is reserved).
    """
    if len(name.encode()) > POD_NAME_MAX:
        raise NameTooLong(f"pod name longer than {POD_NAME_MAX} bytes: {name!r}")
    if not _POD_NAME.match(name):
        raise InvalidName(
            f"invalid pod name {name!r}: use letters, digits and . _ @ + -, "
            "not starting with a dot or dash"
        )
    return name


def check_component(name: str) -> str:
    """Return ``name`` if it is a valid single path component."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidName(f"invalid file name {name!r}")
    if len(name.encode(errors="surrogateescape")) > NAME_MAX:
        raise NameTooLong(f"file name longer than {NAME_MAX} bytes")
    return name


def join(parent: str, name: str) -> str:
    """Join a pod path and one component (``join("/", "a") == "/a"``)."""
    return posixpath.join(parent, name)


def split(path: str) -> tuple[str, str]:
    """Split a pod path into its parent and last component."""
    parent, name = posixpath.split(path)
    return parent or "/", name


def normalize(path: str) -> str:
    """Make ``path`` an absolute, normalised pod path; refuse ones that leave the pod."""
    if "\0" in path:
        raise InvalidName("path contains a NUL byte")
    norm = posixpath.normpath("/" + path.lstrip("/"))
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


class PodStore(abc.ABC):
    """A place that keeps pods. See the module docstring for the contract."""

    #: Short name shown in status output: ``"embedded"`` or ``"fairos-dfs"``.
    kind: ClassVar[str]
    #: Optional features this store has: ``"symlink"``, ``"hardlink"``,
    #: ``"xattr"``, ``"owner"``, and ``"times"`` (keeps the times ``utimens``
    #: sets, nanosecond resolution).
    features: frozenset[str] = frozenset()

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect, log in, replay journals. Called once before any other method."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Finish pending work (uploads) and release every resource."""

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary of the store's state for ``.sovr/status.json``."""
        return {"kind": self.kind}

    async def changes(self) -> AsyncIterator[Change]:
        """Yield changes made behind the mount's back, for cache invalidation.

        The default yields nothing and returns once cancelled.
        """
        await trio.sleep_forever()
        yield Change("")  # pragma: no cover - unreachable, makes this a generator

    # -- pods ------------------------------------------------------------

    @abc.abstractmethod
    async def list_pods(self) -> list[PodInfo]: ...

    @abc.abstractmethod
    async def create_pod(self, pod: str) -> None: ...

    @abc.abstractmethod
    async def delete_pod(self, pod: str) -> None:
        """Delete a pod and everything in it."""

    @abc.abstractmethod
    async def rename_pod(self, old: str, new: str) -> None: ...

    async def pod_info(self, pod: str) -> PodInfo:
        for info in await self.list_pods():
            if info.name == pod:
                return info
        raise NotFound(f"no pod named {pod!r}")

    # -- the tree --------------------------------------------------------

    @abc.abstractmethod
    async def stat(self, pod: str, path: str) -> Attr:
        """Attributes of ``path``; a symlink is not followed."""

    @abc.abstractmethod
    async def listdir(self, pod: str, path: str) -> list[tuple[str, Attr]]:
        """The entries of a directory with their attributes, sorted by name."""

    @abc.abstractmethod
    async def mkdir(self, pod: str, path: str, mode: int) -> Attr: ...

    @abc.abstractmethod
    async def rmdir(self, pod: str, path: str) -> None:
        """Remove an empty directory (``NotEmpty`` otherwise)."""

    @abc.abstractmethod
    async def unlink(self, pod: str, path: str) -> None: ...

    @abc.abstractmethod
    async def rename(self, pod: str, old: str, new: str, *, replace: bool = True) -> None:
        """Rename within one pod. An existing target is replaced as POSIX
        ``rename`` does, unless ``replace`` is false (then ``AlreadyExists``)."""

    @abc.abstractmethod
    async def setattr(self, pod: str, path: str, changes: SetAttr) -> Attr: ...

    async def symlink(self, pod: str, path: str, target: str) -> Attr:
        raise NotSupported("this pod store has no symbolic links")

    async def readlink(self, pod: str, path: str) -> str:
        raise NotSupported("this pod store has no symbolic links")

    async def link(self, pod: str, existing: str, new: str) -> Attr:
        raise NotSupported("this pod store has no hard links")

    async def getxattr(self, pod: str, path: str, name: str) -> bytes:
        raise NotSupported("this pod store has no extended attributes")

    async def setxattr(self, pod: str, path: str, name: str, value: bytes) -> None:
        raise NotSupported("this pod store has no extended attributes")

    async def listxattr(self, pod: str, path: str) -> list[str]:
        return []

    async def removexattr(self, pod: str, path: str, name: str) -> None:
        raise NotSupported("this pod store has no extended attributes")

    @abc.abstractmethod
    async def statfs(self) -> StatFs: ...

    # -- file contents ---------------------------------------------------

    @abc.abstractmethod
    async def open_file(self, pod: str, path: str, flags: int, mode: int = 0o644) -> int:
        """Open ``path`` and return a descriptor of a local file holding its bytes.

        ``flags`` are ``os.open`` flags (``O_CREAT``, ``O_EXCL``, ``O_TRUNC``,
        ``O_APPEND``, access mode). With ``O_APPEND`` the descriptor must append
        (Linux ``pwrite`` on such a descriptor writes at the end, which is what
        an appending writer expects). The caller owns the descriptor until it
        hands it back through :meth:`close_file`.
        """

    @abc.abstractmethod
    async def close_file(self, pod: str, path: str, fd: int, *, written: bool) -> None:
        """Give back a descriptor from :meth:`open_file`.

        ``written`` says whether anything was written through it. A remote store
        queues the upload here; an upload failure it already knows about is
        raised so that ``close()`` reports it.
        """

    async def flush_file(self, pod: str, path: str, fd: int, *, written: bool) -> None:  # noqa: B027
        """A ``close()`` of one descriptor of the file (there may be more).

        Must not wait for slow work: a remote store queues the upload here.
        An upload failure it already knows about is raised, so that the
        application's ``close()`` reports it.
        """

    @abc.abstractmethod
    async def fsync_file(self, pod: str, path: str, fd: int, *, written: bool) -> None:
        """Make the file's current bytes durable in the store (uploaded, for remote stores)."""

    async def read_bytes(self, pod: str, path: str) -> bytes:
        """The whole content of a file (small files: recipes, registries)."""
        fd = await self.open_file(pod, path, os.O_RDONLY)
        try:
            chunks = []
            while chunk := await trio.to_thread.run_sync(os.read, fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await self.close_file(pod, path, fd, written=False)

    async def write_bytes(self, pod: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Replace a file's content (creating it), durably."""
        fd = await self.open_file(pod, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                n = await trio.to_thread.run_sync(os.write, fd, view)
                view = view[n:]
            await self.fsync_file(pod, path, fd, written=True)
        finally:
            await self.close_file(pod, path, fd, written=True)

    # -- sharing ---------------------------------------------------------

    @abc.abstractmethod
    async def share_pod(self, pod: str) -> str:
        """Publish the pod's current content; return its 64-hex sharing reference."""

    @abc.abstractmethod
    async def fork_pod(self, ref: str, new_pod: str) -> None:
        """Create ``new_pod`` as the user's own writable copy of a shared pod."""

    @abc.abstractmethod
    async def shared_pod_name(self, ref: str) -> str:
        """The name the pod behind ``ref`` had when it was shared."""

    async def sync(self, pod: str | None = None) -> None:  # noqa: B027 - optional hook
        """Wait until everything written (to ``pod``, or to every pod) is durable."""

    async def refresh(self, pod: str | None = None) -> None:  # noqa: B027 - optional hook
        """Drop cached listings and contents so changes made elsewhere show."""
