"""Zip archives from strangers: unpack them safely, and pack pods the legacy way.

External payloads are zips fetched from other people's pods, and the original
tool persisted whole pods as zips, so every archive sovrfs opens is treated as
hostile. :func:`extract_zip` checks the whole central directory before it
writes a byte, then streams each member into a fresh temporary directory beside
the destination while counting the bytes really produced, and moves the result
into place only when the entire archive passed. A refused archive therefore
leaves nothing behind but a temporary directory that is removed again.

Refusals raise :class:`~sovrfs.errors.ArchiveRejected` with one of these
``reason`` codes:

==================  ===========================================================
``not-a-zip``       the file is not a readable zip archive
``encrypted``       a member is encrypted
``unsupported``     a member uses a compression method Python cannot read
``bad-name``        a member name is empty, has a NUL or an over-long component
``path-escape``     a member would land outside the destination (``..``, an
                    absolute path, a drive letter, a backslash)
``duplicate``       two members have the same path, or one lies under a file
``symlink``         a member is a symbolic link
``special-file``    a member is a device, FIFO or socket
``too-many-files``  more members than ``max_files``
``too-large``       the members add up to more than ``max_total_bytes``
``ratio``           a member expands more than ``max_ratio`` times (a zip bomb)
``corrupt``         a member's data does not match its header (size or CRC)
``dest-conflict``   the destination already holds an entry of that name
==================  ===========================================================

Both functions block; the daemon calls them through ``trio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import struct
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ArchiveRejected

log = logging.getLogger(__name__)

#: Defaults for :func:`extract_zip`, sized for payloads (image sets, models).
DEFAULT_MAX_TOTAL_BYTES = 8 << 30
DEFAULT_MAX_FILES = 100_000
DEFAULT_MAX_RATIO = 250.0
#: Members smaller than this are never refused for their ratio: a small file of
#: zeros compresses a thousandfold but costs nothing.
RATIO_GRACE_BYTES = 1 << 20

_CHUNK = 1 << 20
_EXT_TIMESTAMP = 0x5455
_DRIVE = re.compile(r"[A-Za-z]:")
_READABLE = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


@dataclass(frozen=True, slots=True)
class _Member:
    info: zipfile.ZipInfo
    path: str
    is_dir: bool
    mode: int
    mtime_ns: int


def extract_zip(
    zip_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    overwrite: bool = False,
) -> list[str]:
    """Unpack ``zip_path`` into ``dest_dir``; return the regular files written.

    The returned paths are relative to ``dest_dir``, with ``/`` separators, in
    archive order. ``dest_dir``'s parent must exist. When ``dest_dir`` already
    exists the archive's top-level entries are moved into it; one that is
    already there is refused (``dest-conflict``) unless ``overwrite`` is true,
    in which case the old entry is replaced as a whole.

    Permission bits are kept (never setuid, setgid or sticky; directories stay
    accessible to their owner) and so are modification times. Files are not
    fsynced: an archive can always be unpacked again.
    """
    zip_path, dest = Path(zip_path), Path(dest_dir)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = _check_members(zf, max_total_bytes, max_files, max_ratio)
            if dest.exists():
                _check_conflicts(dest, members, overwrite)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unzip-", dir=dest.parent))
            try:
                files = _extract_all(zf, members, tmp, max_total_bytes, max_ratio)
                _move_into_place(tmp, dest, overwrite)
            finally:
                if tmp.exists():
                    _remove_tree(tmp)
    except ArchiveRejected as exc:
        log.debug("refused archive %s: %s (%s)", zip_path, exc, exc.reason)
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        log.debug("refused archive %s: %s", zip_path, exc)
        raise ArchiveRejected(
            f"{zip_path.name}: not a readable zip archive: {exc}", reason="not-a-zip"
        ) from exc
    log.debug("extracted %d files from %s into %s", len(files), zip_path, dest)
    return files


def _check_members(
    zf: zipfile.ZipFile, max_total_bytes: int, max_files: int, max_ratio: float
) -> list[_Member]:
    """Every refusal that the central directory alone can justify."""
    infos = zf.infolist()
    if len(infos) > max_files:
        raise ArchiveRejected(
            f"archive has {len(infos)} members, more than the limit of {max_files}",
            reason="too-many-files",
        )
    members: list[_Member] = []
    seen: set[str] = set()
    files: set[str] = set()
    parents: set[str] = set()
    total = 0
    for info in infos:
        member = _check_member(info, max_ratio)
        if member.path in seen:
            raise ArchiveRejected(
                f"{info.filename}: appears twice in the archive",
                reason="duplicate",
                entry=info.filename,
            )
        seen.add(member.path)
        (parents if member.is_dir else files).add(member.path)
        parts = member.path.split("/")
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
        total += info.file_size
        if total > max_total_bytes:
            raise ArchiveRejected(
                f"archive expands to more than {max_total_bytes} bytes",
                reason="too-large",
                entry=info.filename,
            )
        members.append(member)
    if clash := sorted(files & parents):
        raise ArchiveRejected(
            f"{clash[0]}: is a file in the archive and also a directory of other members",
            reason="duplicate",
            entry=clash[0],
        )
    return members


def _check_member(info: zipfile.ZipInfo, max_ratio: float) -> _Member:
    name = info.filename
    path = _safe_path(name)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise ArchiveRejected(f"{name}: is a symbolic link", reason="symlink", entry=name)
    if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
        raise ArchiveRejected(
            f"{name}: is a device, FIFO or socket", reason="special-file", entry=name
        )
    if info.flag_bits & 0x1:
        raise ArchiveRejected(f"{name}: is encrypted", reason="encrypted", entry=name)
    if info.compress_type not in _READABLE:
        raise ArchiveRejected(
            f"{name}: compression method {info.compress_type} is not supported",
            reason="unsupported",
            entry=name,
        )
    is_dir = info.is_dir() or kind == stat.S_IFDIR
    if is_dir and info.file_size:
        raise ArchiveRejected(f"{name}: a directory with data", reason="corrupt", entry=name)
    if info.file_size > RATIO_GRACE_BYTES and info.file_size > max_ratio * info.compress_size:
        raise ArchiveRejected(
            f"{name}: expands from {info.compress_size} to {info.file_size} bytes, "
            f"more than {max_ratio:g} times",
            reason="ratio",
            entry=name,
        )
    perms = stat.S_IMODE(mode) & 0o777
    if not perms:
        # Archives made on other systems carry no Unix mode at all.
        perms = 0o755 if is_dir else 0o644
    return _Member(info, path, is_dir, perms, _mtime_ns(info))


def _safe_path(name: str) -> str:
    """The member's path relative to the destination, or a refusal."""
    if "\\" in name or _DRIVE.match(name) or name.startswith("/"):
        raise ArchiveRejected(
            f"{name}: would be written outside the destination", reason="path-escape", entry=name
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRejected(
            f"{name}: would be written outside the destination", reason="path-escape", entry=name
        )
    if not parts or "\0" in name:
        raise ArchiveRejected(f"{name!r}: is not a usable name", reason="bad-name", entry=name)
    if any(len(p.encode(errors="surrogateescape")) > 255 for p in parts):
        raise ArchiveRejected(
            f"{name}: has a name component longer than 255 bytes", reason="bad-name", entry=name
        )
    return "/".join(parts)


def _mtime_ns(info: zipfile.ZipInfo) -> int:
    """The member's modification time: the Unix timestamp extra field if there
    is one (seconds, UTC), else the DOS time, which is local time."""
    extra = info.extra
    while len(extra) >= 4:
        tag, size = struct.unpack("<HH", extra[:4])
        data = extra[4 : 4 + size]
        if tag == _EXT_TIMESTAMP and len(data) >= 5 and data[0] & 1:
            return int(struct.unpack("<l", data[1:5])[0]) * 1_000_000_000
        extra = extra[4 + size :]
    try:
        return int(time.mktime((*info.date_time, 0, 0, -1))) * 1_000_000_000
    except (OverflowError, ValueError):
        return 0


def _check_conflicts(dest: Path, members: list[_Member], overwrite: bool) -> None:
    if not dest.is_dir():
        raise ArchiveRejected(f"{dest} exists and is not a directory", reason="dest-conflict")
    if overwrite:
        return
    tops = sorted({m.path.split("/")[0] for m in members})
    taken = [t for t in tops if os.path.lexists(dest / t)]
    if taken:
        raise ArchiveRejected(
            f"{dest} already has {', '.join(taken)}", reason="dest-conflict", entry=taken[0]
        )


def _extract_all(
    zf: zipfile.ZipFile, members: list[_Member], tmp: Path, max_total: int, max_ratio: float
) -> list[str]:
    files: list[str] = []
    total = 0
    for member in members:
        target = tmp / member.path
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        total += _extract_file(zf, member, target, max_total - total, max_ratio)
        os.chmod(target, member.mode)
        os.utime(target, ns=(member.mtime_ns, member.mtime_ns))
        files.append(member.path)

    # Directory modes and times last, deepest first: writing into a directory
    # changes its mtime, and a read-only mode would stop the writes below it.
    explicit = {m.path: m for m in members if m.is_dir}
    dirs = {str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_dir()}
    for rel in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        dir_member = explicit.get(rel)
        mode = (dir_member.mode if dir_member else 0o755) | 0o700
        os.chmod(tmp / rel, mode)
        if dir_member:
            os.utime(tmp / rel, ns=(dir_member.mtime_ns, dir_member.mtime_ns))
    return files


def _extract_file(
    zf: zipfile.ZipFile, member: _Member, target: Path, budget: int, max_ratio: float
) -> int:
    """Stream one member to ``target``, counting what decompression really yields."""
    info = member.info
    limit = min(info.file_size, budget)
    written = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with zf.open(info) as src:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise _overrun(member, written, budget, info.file_size)
                if written > RATIO_GRACE_BYTES and written > max_ratio * info.compress_size:
                    raise ArchiveRejected(
                        f"{info.filename}: expands more than {max_ratio:g} times",
                        reason="ratio",
                        entry=info.filename,
                    )
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
    except zipfile.BadZipFile as exc:
        raise ArchiveRejected(
            f"{info.filename}: damaged: {exc}", reason="corrupt", entry=info.filename
        ) from exc
    finally:
        os.close(fd)
    if written != info.file_size:
        raise ArchiveRejected(
            f"{info.filename}: holds {written} bytes, its header says {info.file_size}",
            reason="corrupt",
            entry=info.filename,
        )
    return written


def _overrun(member: _Member, written: int, budget: int, declared: int) -> ArchiveRejected:
    name = member.info.filename
    if written > declared:
        return ArchiveRejected(
            f"{name}: yields more than the {declared} bytes its header says",
            reason="corrupt",
            entry=name,
        )
    return ArchiveRejected(
        f"archive expands to more than the limit ({budget} bytes left at {name})",
        reason="too-large",
        entry=name,
    )


def _move_into_place(tmp: Path, dest: Path, overwrite: bool) -> None:
    if not dest.exists():
        # Between the existence check and here another writer could create
        # dest; rename then fails (non-empty) or replaces an empty directory,
        # both harmless.
        tmp.rename(dest)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    try:
        for entry in sorted(tmp.iterdir()):
            old = dest / entry.name
            if os.path.lexists(old):
                if not overwrite:
                    raise ArchiveRejected(
                        f"{dest} already has {entry.name}", reason="dest-conflict", entry=entry.name
                    )
                old.rename(trash / entry.name)
            entry.rename(old)
    finally:
        _remove_tree(trash)


def _remove_tree(path: Path) -> None:
    """Remove a tree even where a directory lost its owner's write permission."""
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            sub = os.path.join(root, name)
            # os.walk lists symlinks to directories among dirs; chmod would follow them.
            if not os.path.islink(sub):
                os.chmod(sub, 0o700)
    shutil.rmtree(path)


def make_zip(
    src_dir: str | os.PathLike[str],
    zip_path: str | os.PathLike[str],
    *,
    exclude: Callable[[str], bool] | None = None,
) -> list[str]:
    """Pack ``src_dir``'s content into ``zip_path`` as the original tool did.

    Members are relative to ``src_dir`` (no top-level folder), in sorted order,
    with Unix modes and a Unix timestamp. ``exclude`` gets each relative path
    (``/``-separated) and drops it, with everything below a directory. Symbolic
    links and special files are left out, since :func:`extract_zip` refuses them.
    The archive is written beside ``zip_path`` and renamed over it when complete.
    Returns the members written.
    """
    src, out = Path(src_dir), Path(zip_path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    own = {os.path.abspath(out), os.path.abspath(tmp)}
    written: list[str] = []
    skipped: list[str] = []
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, rel in _walk(src, exclude):
                st = path.lstat()
                if os.path.abspath(path) in own:
                    continue
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                    skipped.append(rel)
                    continue
                _add(zf, path, rel, st)
                written.append(rel)
            raw.flush()
            os.fsync(raw.fileno())
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if skipped:
        log.info("left %d symbolic links or special files out of %s", len(skipped), out.name)
    return written


def _walk(src: Path, exclude: Callable[[str], bool] | None) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    stack = [(src, "")]
    while stack:
        directory, prefix = stack.pop()
        for entry in sorted(os.scandir(directory), key=lambda e: e.name, reverse=True):
            rel = prefix + entry.name
            if exclude is not None and exclude(rel):
                continue
            found.append((Path(entry.path), rel))
            if entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), rel + "/"))
    return sorted(found, key=lambda item: item[1])


def _add(zf: zipfile.ZipFile, path: Path, rel: str, st: os.stat_result) -> None:
    is_dir = stat.S_ISDIR(st.st_mode)
    info = zipfile.ZipInfo.from_file(path, rel, strict_timestamps=False)
    info.external_attr = (stat.S_IFMT(st.st_mode) | stat.S_IMODE(st.st_mode) & 0o777) << 16
    if -(2**31) <= int(st.st_mtime) < 2**31:
        info.extra = struct.pack("<HHBl", _EXT_TIMESTAMP, 5, 1, int(st.st_mtime))
    if is_dir:
        zf.writestr(info, b"")
        return
    info.compress_type = zipfile.ZIP_DEFLATED
    with path.open("rb") as src, zf.open(info, "w") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
