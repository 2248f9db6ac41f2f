"""Content-addressed snapshots: how the embedded store shares and forks pods.

Sharing a pod freezes its tree into a snapshot whose reference has the shape of
a Swarm reference (64 lowercase hex digits); forking restores a snapshot as a
new pod. The layout under the store's root::

    objects/ab/cdef...    file contents, named by their SHA-256 (first two hex
                          digits as a directory), stored once however many
                          snapshots hold them
    refs/<ref>.json       one manifest per snapshot; <ref> is the SHA-256 of
                          the manifest's bytes
    tmp/                  files being written; anything left here after a
                          crash is garbage

A manifest lists every entry of the tree with its path, kind, permission bits,
modification time, size and either its object or its link target, in the
canonical JSON form (sorted keys, no spaces, ASCII) that the reference hashes.

Crash safety comes from ordering: every object is written to ``tmp/``,
fsynced and renamed into place, and the directories that gained names are
fsynced, before the manifest is written the same way. A reference therefore
never exists without all of its objects. Restores verify every object's hash
while copying and build the tree in a temporary directory beside the target,
renamed into place only when complete.

Caveats: snapshots are never deleted (sharing is publication, and the objects
are shared between snapshots), so the store only grows; special files (FIFOs,
sockets, devices) are left out; hard links are restored as separate files;
only permission bits ``0o777`` are kept. Every method blocks; the daemon calls
them through ``trio.to_thread``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict, TypeVar

from .errors import AlreadyExists, InvalidName, NotFound, PodStoreError, from_os_error

log = logging.getLogger(__name__)

FORMAT = "sovrfs-snapshot-1"
_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_T = TypeVar("_T")


class SnapshotInfo(TypedDict):
    name: str
    files: int
    bytes: int
    #: When the snapshot was taken, ISO 8601 in UTC.
    created: str


EntryKind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a snapshot. Paths are ``str`` as :func:`os.fsdecode` gives
    them, so names that are not UTF-8 survive (as surrogate escapes)."""

    path: str
    kind: EntryKind
    mode: int
    mtime_ns: int
    size: int
    #: The content's SHA-256, for files (``"object"`` in the manifest).
    obj: str | None = None
    target: str | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "path": self.path,
            "kind": self.kind,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "size": self.size,
        }
        if self.obj is not None:
            data["object"] = self.obj
        if self.target is not None:
            data["target"] = self.target
        return data


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    created_ns: int
    root_mode: int
    root_mtime_ns: int
    entries: list[Entry]

    def canonical(self) -> bytes:
        """The bytes a reference hashes: sorted keys, no spaces, ASCII only."""
        data = {
            "format": FORMAT,
            "name": self.name,
            "created_ns": self.created_ns,
            "root": {"mode": self.root_mode, "mtime_ns": self.root_mtime_ns},
            "entries": [e.to_json() for e in self.entries],
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def from_json(cls, doc: object) -> Manifest:
        """Read a manifest; ``ValueError`` names what is wrong."""
        top = _obj(doc, "manifest", {"format", "name", "created_ns", "root", "entries"})
        if top["format"] != FORMAT:
            raise ValueError(f"unknown format {top['format']!r}")
        root = _obj(top["root"], "root", {"mode", "mtime_ns"})
        entries = top["entries"]
        if not isinstance(entries, list):
            raise ValueError("entries: not a list")
        return cls(
            name=_typed(top["name"], str, "name"),
            created_ns=_typed(top["created_ns"], int, "created_ns"),
            root_mode=_mode(root["mode"]),
            root_mtime_ns=_typed(root["mtime_ns"], int, "root.mtime_ns"),
            entries=[_entry(e) for e in entries],
        )


def _obj(value: object, what: str, keys: set[str]) -> dict[str, object]:
    if not isinstance(value, dict) or not keys <= value.keys():
        raise ValueError(f"{what}: not an object with {', '.join(sorted(keys))}")
    return value


def _typed(value: object, kind: type[_T], what: str) -> _T:
    # bool is an int in Python, never in a manifest.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{what}: not a {kind.__name__}")
    return value


def _mode(value: object) -> int:
    mode = _typed(value, int, "mode")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode {mode:o} out of range")
    return mode


def _entry(value: object) -> Entry:
    e = _obj(value, "entry", {"path", "kind", "mode", "mtime_ns", "size"})
    kind = e["kind"]
    if kind not in ("file", "dir", "symlink"):
        raise ValueError(f"entry kind {kind!r}")
    obj = e.get("object")
    if obj is not None and not (isinstance(obj, str) and _HEX64.fullmatch(obj)):
        raise ValueError(f"object {obj!r}")
    target = e.get("target")
    if target is not None and not (isinstance(target, str) and target):
        raise ValueError(f"link target {target!r}")
    size = _typed(e["size"], int, "size")
    if size < 0:
        raise ValueError("negative size")
    return Entry(
        path=_typed(e["path"], str, "path"),
        kind=kind,
        mode=_mode(e["mode"]),
        mtime_ns=_typed(e["mtime_ns"], int, "mtime_ns"),
        size=size,
        obj=obj,
        target=target,
    )


class SnapshotStore:
    """Snapshots kept under ``root`` (created if missing)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._refs = self.root / "refs"
        self._tmp = self.root / "tmp"
        for directory in (self._objects, self._refs, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)

    # -- freezing ------------------------------------------------------------

    def freeze(
        self, src_dir: Path, *, name: str, exclude: Callable[[str], bool] | None = None
    ) -> str:
        """Snapshot the tree under ``src_dir``; return its reference.

        ``exclude`` gets each path relative to ``src_dir`` (``/``-separated)
        and leaves it out, with everything below a directory.
        """
        src = Path(src_dir)
        try:
            root_st = src.stat()
            touched: set[Path] = set()
            entries = list(self._freeze_tree(src, exclude, touched))
            for directory in [*sorted(touched), self._objects]:
                _fsync_dir(directory)
            manifest = Manifest(
                name=name,
                created_ns=time.time_ns(),
                root_mode=stat.S_IMODE(root_st.st_mode) & 0o777,
                root_mtime_ns=root_st.st_mtime_ns,
                entries=entries,
            )
            data = manifest.canonical()
            ref = hashlib.sha256(data).hexdigest()
            self._write_atomically(self._refs / f"{ref}.json", data)
        except OSError as exc:
            raise from_os_error(exc) from exc
        size = sum(e.size for e in entries if e.kind == "file")
        log.debug("froze %s (%d entries, %d bytes) as %s", name, len(entries), size, ref)
        return ref

    def _freeze_tree(
        self, src: Path, exclude: Callable[[str], bool] | None, touched: set[Path]
    ) -> Iterator[Entry]:
        # Depth first in sorted order, so the manifest lists every directory
        # before its content and comes out the same for the same tree.
        stack: list[tuple[Path, str]] = [(src, "")]
        while stack:
            directory, prefix = stack.pop()
            subdirs: list[tuple[Path, str]] = []
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                rel = prefix + entry.name
                if exclude is not None and exclude(rel):
                    continue
                st = entry.stat(follow_symlinks=False)
                mode = stat.S_IMODE(st.st_mode) & 0o777
                if stat.S_ISDIR(st.st_mode):
                    yield Entry(path=rel, kind="dir", mode=mode, mtime_ns=st.st_mtime_ns, size=0)
                    subdirs.append((Path(entry.path), rel + "/"))
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(entry.path)
                    yield Entry(
                        path=rel,
                        kind="symlink",
                        mode=mode,
                        mtime_ns=st.st_mtime_ns,
                        size=len(os.fsencode(target)),
                        target=target,
                    )
                elif stat.S_ISREG(st.st_mode):
                    yield self._freeze_file(Path(entry.path), rel, touched)
                else:
                    log.debug("not snapshotting %s: not a file, directory or link", rel)
            stack.extend(reversed(subdirs))

    def _freeze_file(self, path: Path, rel: str, touched: set[Path]) -> Entry:
        # The object is hashed from the very bytes copied, so it stays
        # consistent even if the file changes while it is read.
        # O_NONBLOCK: a FIFO swapped in since the directory was listed must
        # not hang the freeze; it is refused below like any non-file.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PodStoreError(f"{rel} changed while it was snapshotted; try again")
            tmp_fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="obj-")
            try:
                digest = hashlib.sha256()
                size = 0
                while chunk := os.read(fd, _CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    _write_all(tmp_fd, chunk)
                obj = digest.hexdigest()
                final = self._object_path(obj)
                if final.exists():
                    os.unlink(tmp_name)
                else:
                    os.fsync(tmp_fd)
                    os.fchmod(tmp_fd, 0o444)
                    final.parent.mkdir(exist_ok=True)
                    os.rename(tmp_name, final)
                    touched.add(final.parent)
            except BaseException:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
                raise
            finally:
                os.close(tmp_fd)
        finally:
            os.close(fd)
        return Entry(
            path=rel,
            kind="file",
            mode=stat.S_IMODE(st.st_mode) & 0o777,
            mtime_ns=st.st_mtime_ns,
            size=size,
            obj=obj,
        )

    def _write_atomically(self, final: Path, data: bytes) -> None:
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="ref-")
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_name, final)
        _fsync_dir(final.parent)

    def _object_path(self, obj: str) -> Path:
        return self._objects / obj[:2] / obj[2:]

    # -- reading -------------------------------------------------------------

    def exists(self, ref: str) -> bool:
        """Whether a snapshot ``ref`` is stored here."""
        return (
            _HEX64.fullmatch(ref.lower()) is not None
            and (self._refs / f"{ref.lower()}.json").is_file()
        )

    def info(self, ref: str) -> SnapshotInfo:
        """Name, number of files, total bytes and creation time of a snapshot."""
        manifest = self.manifest(ref)
        files = [e for e in manifest.entries if e.kind == "file"]
        created = dt.datetime.fromtimestamp(manifest.created_ns / 1e9, tz=dt.UTC)
        return SnapshotInfo(
            name=manifest.name,
            files=len(files),
            bytes=sum(e.size for e in files),
            created=created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        )

    def manifest(self, ref: str) -> Manifest:
        """The verified manifest of ``ref``.

        Raises ``InvalidName`` for a malformed reference, ``NotFound`` for an
        unknown one and ``PodStoreError`` (EIO) for a damaged one.
        """
        ref = ref.strip().lower()
        if not _HEX64.fullmatch(ref):
            raise InvalidName(f"not a sharing reference: {ref[:80]!r}")
        try:
            data = (self._refs / f"{ref}.json").read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no snapshot {ref}") from None
        except OSError as exc:
            raise from_os_error(exc) from exc
        if hashlib.sha256(data).hexdigest() != ref:
            raise PodStoreError(f"snapshot {ref}: manifest is damaged (hash mismatch)")
        try:
            manifest = Manifest.from_json(json.loads(data))
        except (ValueError, RecursionError) as exc:
            raise PodStoreError(f"snapshot {ref}: manifest is not valid: {exc}") from None
        _check_entries(ref, manifest.entries)
        return manifest

    # -- restoring -----------------------------------------------------------

    def restore(self, ref: str, dest_dir: Path) -> None:
        """Recreate snapshot ``ref`` as the new directory ``dest_dir``.

        ``dest_dir`` must not exist; its parent must. Every object is checked
        against its hash while it is copied; on any problem nothing appears at
        ``dest_dir``.
        """
        manifest = self.manifest(ref)
        dest = Path(dest_dir)
        if os.path.lexists(dest):
            raise AlreadyExists(f"{dest} already exists")
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.restore-", dir=dest.parent))
        except OSError as exc:
            raise from_os_error(exc) from exc
        try:
            self._restore_into(ref, manifest, tmp)
            # Between the check above and here another writer could create
            # dest; rename then fails unless dest is an empty directory.
            tmp.rename(dest)
            _fsync_dir(dest.parent)
        except OSError as exc:
            raise from_os_error(exc) from exc
        finally:
            if tmp.exists():
                _remove_tree(tmp)
        log.debug("restored snapshot %s into %s", manifest.name, dest)

    def _restore_into(self, ref: str, manifest: Manifest, tmp: Path) -> None:
        dirs: list[Entry] = []
        links: list[Entry] = []
        for entry in manifest.entries:
            target = tmp / entry.path
            if entry.kind == "dir":
                target.mkdir(mode=0o700)
                dirs.append(entry)
            elif entry.kind == "symlink":
                links.append(entry)
            else:
                self._restore_file(ref, entry, target)
        # Links last, so that no file is ever written through one.
        for entry in links:
            assert entry.target is not None
            os.symlink(entry.target, tmp / entry.path)
            os.utime(tmp / entry.path, ns=(entry.mtime_ns,) * 2, follow_symlinks=False)
        # Directories deepest first: filling a directory changes its mtime.
        for entry in sorted(dirs, key=lambda e: e.path.count("/"), reverse=True):
            _fsync_dir(tmp / entry.path)
            os.chmod(tmp / entry.path, entry.mode)
            os.utime(tmp / entry.path, ns=(entry.mtime_ns,) * 2)
        _fsync_dir(tmp)
        os.chmod(tmp, manifest.root_mode)
        os.utime(tmp, ns=(manifest.root_mtime_ns,) * 2)

    def _restore_file(self, ref: str, entry: Entry, target: Path) -> None:
        assert entry.obj is not None
        try:
            src = os.open(self._object_path(entry.obj), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise PodStoreError(
                f"snapshot {ref}: object {entry.obj} of {entry.path} is missing"
            ) from None
        try:
            dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                digest = hashlib.sha256()
                size = 0
                while chunk := os.read(src, _CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    _write_all(dst, chunk)
                if digest.hexdigest() != entry.obj or size != entry.size:
                    raise PodStoreError(
                        f"snapshot {ref}: object {entry.obj} of {entry.path} is damaged"
                    )
                os.fsync(dst)
                os.fchmod(dst, entry.mode)
                os.utime(dst, ns=(entry.mtime_ns,) * 2)
            finally:
                os.close(dst)
        finally:
            os.close(src)


def _check_entries(ref: str, entries: list[Entry]) -> None:
    """Refuse a manifest that could write outside the target or through a link."""
    dirs = {""}
    seen: set[str] = set()
    for entry in entries:
        parts = entry.path.split("/")
        if entry.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise PodStoreError(f"snapshot {ref}: entry {entry.path!r} leaves the snapshot")
        if "\0" in entry.path or entry.path in seen:
            raise PodStoreError(f"snapshot {ref}: entry {entry.path!r} is invalid or repeated")
        # Every parent must be a directory listed earlier; a link or a file as
        # parent would let a later entry be written somewhere else.
        if "/".join(parts[:-1]) not in dirs:
            raise PodStoreError(f"snapshot {ref}: entry {entry.path!r} has no parent directory")
        if (entry.kind == "file") != (entry.obj is not None) or (entry.kind == "symlink") != (
            entry.target is not None
        ):
            raise PodStoreError(f"snapshot {ref}: entry {entry.path!r} is inconsistent")
        seen.add(entry.path)
        if entry.kind == "dir":
            dirs.add(entry.path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory holding the new name is.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Remove a half-restored tree, whatever modes its directories already got."""
    os.chmod(path, 0o700)
    for root, dirnames, _files in os.walk(path):
        for name in dirnames:
            sub = os.path.join(root, name)
            if not os.path.islink(sub):
                os.chmod(sub, 0o700)
    shutil.rmtree(path)
