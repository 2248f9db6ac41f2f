"""Blocking tree work on mount paths: copy, mirror, compare, unpack.

Everything here runs in a worker thread. The paths are paths *through the
mount* (``MOUNT/<pod>/...``), so each call becomes FUSE requests that the
daemon's trio loop serves while the thread waits; that keeps the kernel's
caches coherent and works the same for every pod store.

Pods can come from strangers, so a symbolic link inside one is never followed:
an absolute link on a FUSE mount resolves against the host's root, and
following it would copy (or write) the user's own files. Directories on the
way to a source or target are checked with ``lstat`` one component at a time
(:func:`resolve`), and trees are walked without following links; a link is
copied as a link.

Files are written to a temporary name in the target directory and renamed
over the old one, so a reader never sees half a file, and a copy keeps the
source's permission bits and modification time. That is what makes the
quick check of :func:`same_file` (same size, same modification time) a fair
test of "already there", as rsync uses it; where a store cannot keep the
time, the bytes are compared instead.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..archive import extract_zip
from ..errors import NotADirectory, NotFound, PodStoreError
from .progress import Operation

_CHUNK = 1 << 20
#: Prefix of the temporary names this module creates next to their targets.
TEMP_PREFIX = ".sovr-tmp-"

Filter = Callable[[str], bool]


@dataclass
class Changes:
    """What a copy did: entries written and entries removed."""

    written: int = 0
    removed: int = 0

    def __iadd__(self, other: Changes) -> Changes:
        self.written += other.written
        self.removed += other.removed
        return self

    @property
    def any(self) -> bool:
        return bool(self.written or self.removed)


def _link_error(shown: str) -> PodStoreError:
    err = PodStoreError(f"{shown} is a symbolic link; sovrfs does not follow links there")
    err.errno = errno.ELOOP
    return err


def resolve(root: str, rel: str, *, create: bool = False, shown: str | None = None) -> str:
    """The path of ``rel`` below ``root``, refusing symbolic links on the way.

    Every component must exist (or, with ``create``, is made as a directory)
    and none may be a link; the last one may be a file or a directory.
    ``shown`` names the path in error messages.
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise NotFound(f"{shown or rel}: leaves the pod")
    path = root
    done: list[str] = []
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        done.append(part)
        where = "/".join(done)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                raise NotFound(f"{shown or rel}: {where} does not exist") from None
            os.mkdir(path, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise _link_error(where)
        last = i == len(parts) - 1
        if not stat.S_ISDIR(st.st_mode) and (create or not last):
            raise NotADirectory(f"{shown or rel}: {where} is not a directory")
    return path


def tree_size(src: str, exclude: Filter | None = None) -> tuple[int, int]:
    """Number of regular files and their bytes below ``src`` (links not followed)."""
    st = os.lstat(src)
    if stat.S_ISREG(st.st_mode):
        return 1, st.st_size
    files = nbytes = 0
    stack = [(src, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                rel = prefix + entry.name
                if exclude is not None and exclude(rel):
                    continue
                est = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(est.st_mode):
                    stack.append((entry.path, rel + "/"))
                elif stat.S_ISREG(est.st_mode):
                    files += 1
                    nbytes += est.st_size
    return files, nbytes


def same_file(src: str, src_st: os.stat_result, dst: str) -> bool:
    """Whether ``dst`` is a regular file holding what the file ``src`` holds.

    Same size and modification time count as the same, as rsync's quick check
    does. A store that cannot set modification times (FairOS-DFS keeps the
    server's) never passes that check after a copy, so a file of the same size
    but another time is compared byte for byte instead of copied again.
    """
    try:
        dst_st = os.lstat(dst)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(dst_st.st_mode) or dst_st.st_size != src_st.st_size:
        return False
    if dst_st.st_mtime_ns == src_st.st_mtime_ns:
        return True
    if not _same_bytes(src, dst):
        return False
    # A store that keeps times takes the source's, so the quick check holds next time.
    os.utime(dst, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
    return True


def _same_bytes(one: str, two: str) -> bool:
    with open(one, "rb", opener=_open_nofollow) as a, open(two, "rb", opener=_open_nofollow) as b:
        while True:
            chunk = a.read(_CHUNK)
            if chunk != b.read(_CHUNK):
                return False
            if not chunk:
                return True


def _open_nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def remove(path: str) -> None:
    """Remove a file, link or whole directory tree (even one made read-only)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            sub = os.path.join(root, name)
            if not os.path.islink(sub):
                os.chmod(sub, 0o700)
    os.chmod(path, 0o700)
    shutil.rmtree(path)


def copy_file(src: str, dst: str, op: Operation | None = None) -> None:
    """Copy one regular file over ``dst``, keeping mode and modification time."""
    src_st = os.lstat(src)
    parent, name = os.path.split(dst)
    tmp = os.path.join(parent, f"{TEMP_PREFIX}{secrets.token_hex(4)}-{name}"[:255])
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while chunk := os.read(fd_in, _CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd_out, view) :]
                if op is not None:
                    op.add(nbytes=len(chunk))
            os.fchmod(fd_out, stat.S_IMODE(src_st.st_mode) & 0o777)
        finally:
            os.close(fd_out)
        os.utime(tmp, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
        if os.path.isdir(dst) and not os.path.islink(dst):
            remove(dst)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd_in)
    if op is not None:
        op.add(files=1)


def place(
    src: str,
    dst: str,
    *,
    exclude: Filter | None = None,
    op: Operation | None = None,
    rel: str = "",
) -> Changes:
    """Make ``dst`` a copy of the entry ``src`` (file, directory or link).

    A directory is mirrored: entries of ``dst`` that ``src`` lacks are
    removed. Files that :func:`same_file` finds unchanged are not copied.
    ``exclude`` gets paths relative to the top of the copy and leaves them
    out (on both sides). Returns what changed.
    """
    src_st = os.lstat(src)
    if stat.S_ISREG(src_st.st_mode):
        if same_file(src, src_st, dst):
            _fix_mode(dst, src_st)
            if op is not None:
                op.add(files=1, nbytes=src_st.st_size)
            return Changes()
        copy_file(src, dst, op)
        return Changes(written=1)
    if stat.S_ISLNK(src_st.st_mode):
        target = os.readlink(src)
        if os.path.islink(dst) and os.readlink(dst) == target:
            return Changes()
        remove(dst)
        os.symlink(target, dst)
        return Changes(written=1)
    if stat.S_ISDIR(src_st.st_mode):
        return mirror(src, dst, exclude=exclude, op=op, rel=rel)
    # FIFOs, sockets and devices have no content to carry.
    return Changes()


def mirror(
    src: str,
    dst: str,
    *,
    exclude: Filter | None = None,
    protect: Filter | None = None,
    op: Operation | None = None,
    rel: str = "",
) -> Changes:
    """Make the directory ``dst`` hold exactly what ``src`` holds.

    ``protect`` names entries of ``dst`` (relative paths) that are never
    touched, such as a pod's virtual ``.sovr``. ``dst`` is created if missing.
    """
    src_st = os.lstat(src)
    changes = Changes()
    try:
        dst_st = os.lstat(dst)
    except FileNotFoundError:
        dst_st = None
    if dst_st is not None and not stat.S_ISDIR(dst_st.st_mode):
        remove(dst)
        dst_st = None
    if dst_st is None:
        os.mkdir(dst, 0o700)
        changes.written += 1
    elif stat.S_IMODE(dst_st.st_mode) & 0o700 != 0o700:
        os.chmod(dst, stat.S_IMODE(dst_st.st_mode) | 0o700)

    wanted: set[str] = set()
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        sub = rel + entry.name
        if (exclude is not None and exclude(sub)) or (protect is not None and protect(sub)):
            continue
        wanted.add(entry.name)
        changes += place(
            entry.path, os.path.join(dst, entry.name), exclude=exclude, op=op, rel=sub + "/"
        )
    for name in sorted(os.listdir(dst)):
        sub = rel + name
        if name in wanted or (protect is not None and protect(sub)):
            continue
        remove(os.path.join(dst, name))
        changes.removed += 1

    _fix_mode(dst, src_st)
    if changes.any or os.lstat(dst).st_mtime_ns != src_st.st_mtime_ns:
        os.utime(dst, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
    return changes


def merge(src_dir: str, dst_dir: str, *, op: Operation | None = None) -> Changes:
    """Place every entry of ``src_dir`` into ``dst_dir``, keeping ``dst_dir``'s others."""
    changes = Changes()
    for entry in sorted(os.scandir(src_dir), key=lambda e: e.name):
        changes += place(entry.path, os.path.join(dst_dir, entry.name), op=op)
    return changes


def _fix_mode(dst: str, src_st: os.stat_result) -> None:
    mode = stat.S_IMODE(src_st.st_mode) & 0o777
    if stat.S_IMODE(os.lstat(dst).st_mode) & 0o777 != mode:
        os.chmod(dst, mode)


# -- zip payloads ----------------------------------------------------------------


def zip_totals(zip_path: str) -> tuple[int, int]:
    """Files and bytes an archive declares (for progress; not trusted for safety)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError):
        return 0, 0
    return len(infos), sum(i.file_size for i in infos)


def zip_matches(zip_path: str, target: str) -> bool:
    """Whether every member of the archive is already in ``target`` with the same bytes.

    Sizes and CRC-32 checksums of the files in ``target`` are compared with
    the archive's central directory, so an unchanged payload is not unpacked
    again. Anything unusual (an unsafe name, a link, a missing file) answers
    ``False`` and leaves the verdict to :func:`~sovrfs.archive.extract_zip`.
    """
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError):
        return False
    if not infos:
        return False
    for info in infos:
        name = info.filename
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts or ".." in parts or name.startswith("/") or "\\" in name:
            return False
        path = os.path.join(target, *parts)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if info.is_dir():
            if not stat.S_ISDIR(st.st_mode):
                return False
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != info.file_size:
            return False
        if _crc32(path) != info.CRC:
            return False
    return True


def _crc32(path: str) -> int:
    crc = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while chunk := os.read(fd, _CHUNK):
            crc = zlib.crc32(chunk, crc)
    finally:
        os.close(fd)
    return crc


def unpack_zip(zip_path: str, target: str, op: Operation | None = None) -> list[str]:
    """Unpack an archive from a stranger into the directory ``target``.

    The archive is checked and unpacked by :func:`~sovrfs.archive.extract_zip`
    into a staging directory *inside* ``target``, so even its temporary files
    never land outside; only when it passed as a whole are its top-level
    entries moved into ``target``, replacing entries of the same name.
    Returns the files unpacked, relative to ``target``.
    """
    staging = os.path.join(target, f"{TEMP_PREFIX}unpack-{secrets.token_hex(4)}")
    os.mkdir(staging, 0o700)
    try:
        content = os.path.join(staging, "content")
        files = extract_zip(zip_path, content)
        for name in sorted(os.listdir(content)):
            final = os.path.join(target, name)
            remove(final)
            os.rename(os.path.join(content, name), final)
    finally:
        remove(staging)
    if op is not None:
        op.add(files=len(files), nbytes=sum(_size(os.path.join(target, f)) for f in files))
    return files


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def write_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write a small file whole, through a temporary name."""
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f"{TEMP_PREFIX}{secrets.token_hex(4)}-{name}"[:255])
    try:
        Path(tmp).write_bytes(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
