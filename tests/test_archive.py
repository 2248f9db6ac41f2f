"""Unpacking hostile zips: every refusal leaves the filesystem as it was."""

from __future__ import annotations

import os
import stat
import struct
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from sovrfs.archive import extract_zip, make_zip
from sovrfs.errors import ArchiveRejected

LIMITS = {"max_total_bytes": 10 << 20, "max_files": 50, "max_ratio": 100.0}


def listing(root: Path) -> dict[str, tuple[int, int, bytes | str | None]]:
    """Every entry below ``root`` with its mode, size and content (or link target)."""
    out: dict[str, tuple[int, int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                body: bytes | str | None = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = path.read_bytes()
            else:
                body = None
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, body)
    return out


def build_zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with warnings.catch_warnings():
        # zipfile warns about the duplicate names the hostile corpus needs.
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for info, data in members:
                zf.writestr(info, data)
    return path


def member(name: str, mode: int = stat.S_IFREG | 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2020, 5, 17, 12, 30, 0))
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def symlink_member(name: str) -> zipfile.ZipInfo:
    return member(name, stat.S_IFLNK | 0o777)


def many(n: int) -> list[tuple[zipfile.ZipInfo | str, bytes]]:
    return [(f"f{i}.txt", b"x") for i in range(n)]


def bomb() -> list[tuple[zipfile.ZipInfo | str, bytes]]:
    return [("zeros.bin", bytes(5 << 20))]


HOSTILE: dict[str, tuple[Callable[[], list[tuple[zipfile.ZipInfo | str, bytes]]], str, str]] = {
    "zip-slip": (lambda: [("ok.txt", b"a"), ("../evil.txt", b"x")], "path-escape", "../evil.txt"),
    "deep-slip": (lambda: [("a/b/../../../evil", b"x")], "path-escape", "a/b/../../../evil"),
    "absolute": (lambda: [("/tmp/evil.txt", b"x")], "path-escape", "/tmp/evil.txt"),
    "drive-letter": (lambda: [("C:/evil.txt", b"x")], "path-escape", "C:/evil.txt"),
    "backslash": (lambda: [("..\\..\\evil.txt", b"x")], "path-escape", "..\\..\\evil.txt"),
    "symlink-escape": (
        lambda: [(symlink_member("link"), b"../../etc"), ("link/passwd", b"x")],
        "symlink",
        "link",
    ),
    "fifo": (lambda: [(member("pipe", stat.S_IFIFO | 0o644), b"")], "special-file", "pipe"),
    "device": (lambda: [(member("dev", stat.S_IFCHR | 0o644), b"")], "special-file", "dev"),
    "zip-bomb": (bomb, "ratio", "zeros.bin"),
    "too-many-files": (lambda: many(51), "too-many-files", ""),
    "duplicate": (lambda: [("a.txt", b"1"), ("a.txt", b"2")], "duplicate", "a.txt"),
    "duplicate-dot": (lambda: [("a.txt", b"1"), ("./a.txt", b"2")], "duplicate", "./a.txt"),
    "file-under-file": (lambda: [("a", b"1"), ("a/b", b"2")], "duplicate", "a"),
    "long-name": (lambda: [("x" * 300, b"1")], "bad-name", "x" * 300),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_nothing_changes(tmp_path: Path, case: str) -> None:
    build, reason, entry = HOSTILE[case]
    zip_path = build_zip(tmp_path / "in.zip", build())
    work = tmp_path / "work"
    work.mkdir()
    (work / "existing.txt").write_text("keep me")
    before = listing(tmp_path)

    with pytest.raises(ArchiveRejected) as info:
        extract_zip(zip_path, work / "dest", **LIMITS)  # type: ignore[arg-type]

    assert info.value.reason == reason, str(info.value)
    if entry:
        assert info.value.entry == entry
    assert listing(tmp_path) == before
    assert not (tmp_path.parent / "evil.txt").exists()


def test_too_large_in_total(tmp_path: Path) -> None:
    zip_path = build_zip(tmp_path / "in.zip", [(f"{i}.bin", os.urandom(1 << 20)) for i in range(3)])
    before = listing(tmp_path)
    with pytest.raises(ArchiveRejected) as info:
        extract_zip(
            zip_path, tmp_path / "dest", max_total_bytes=2 << 20, max_files=10, max_ratio=10
        )
    assert info.value.reason == "too-large"
    assert listing(tmp_path) == before


def test_encrypted_member_is_refused(tmp_path: Path) -> None:
    zip_path = build_zip(tmp_path / "in.zip", [("secret.txt", b"x")])
    raw = bytearray(zip_path.read_bytes())
    # Set the "encrypted" flag bit in the local and central headers.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.index(signature) + offset
        raw[at] |= 0x1
    zip_path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveRejected) as info:
        extract_zip(zip_path, tmp_path / "dest", **LIMITS)  # type: ignore[arg-type]
    assert info.value.reason == "encrypted"
    assert not (tmp_path / "dest").exists()


def test_lying_size_header_is_caught_while_streaming(tmp_path: Path) -> None:
    """A central directory that declares a small size cannot smuggle in more."""
    data = b"hello world, " * 1000
    zip_path = build_zip(tmp_path / "in.zip", [("a.txt", b"tiny"), ("liar.txt", data)])
    raw = bytearray(zip_path.read_bytes())
    central = raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02") + 4)
    # Uncompressed size sits 24 bytes into a central directory header.
    raw[central + 24 : central + 28] = struct.pack("<I", 100)
    zip_path.write_bytes(bytes(raw))
    before = listing(tmp_path)
    with pytest.raises(ArchiveRejected) as info:
        extract_zip(zip_path, tmp_path / "dest", **LIMITS)  # type: ignore[arg-type]
    assert info.value.reason == "corrupt"
    assert listing(tmp_path) == before


def test_not_a_zip(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(ArchiveRejected) as info:
        extract_zip(bogus, tmp_path / "dest", **LIMITS)  # type: ignore[arg-type]
    assert info.value.reason == "not-a-zip"


def test_good_archive_keeps_modes_and_times(tmp_path: Path) -> None:
    members: list[tuple[zipfile.ZipInfo | str, bytes]] = [
        (member("images/", stat.S_IFDIR | 0o750), b""),
        (member("images/cat.jpg", stat.S_IFREG | 0o640), b"meow"),
        (member("run.sh", stat.S_IFREG | 0o4755), b"#!/bin/sh\n"),
        (member("./notes/readme.txt", stat.S_IFREG | 0o644), b"notes"),
    ]
    zip_path = build_zip(tmp_path / "in.zip", members)
    dest = tmp_path / "dest"

    files = extract_zip(zip_path, dest, **LIMITS)  # type: ignore[arg-type]

    assert files == ["images/cat.jpg", "run.sh", "notes/readme.txt"]
    assert (dest / "images/cat.jpg").read_bytes() == b"meow"
    assert stat.S_IMODE((dest / "images/cat.jpg").stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "images").stat().st_mode) == 0o750
    # setuid never survives.
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    expected = time.mktime((2020, 5, 17, 12, 30, 0, 0, 0, -1))
    assert (dest / "images/cat.jpg").stat().st_mtime == expected
    assert (dest / "images").stat().st_mtime == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "in.zip"]


def test_existing_destination_merges_or_refuses(tmp_path: Path) -> None:
    dest = tmp_path / "external"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    first = build_zip(tmp_path / "a.zip", [("images/a.jpg", b"a")])
    assert extract_zip(first, dest, **LIMITS) == ["images/a.jpg"]  # type: ignore[arg-type]
    assert (dest / "old.txt").read_text() == "old"

    second = build_zip(tmp_path / "b.zip", [("images/b.jpg", b"b")])
    before = listing(tmp_path)
    with pytest.raises(ArchiveRejected) as info:
        extract_zip(second, dest, **LIMITS)  # type: ignore[arg-type]
    assert info.value.reason == "dest-conflict"
    assert listing(tmp_path) == before

    extract_zip(second, dest, overwrite=True, **LIMITS)  # type: ignore[arg-type]
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["b.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "b.zip", "external"]


def test_make_zip_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "pod"
    (src / "script").mkdir(parents=True)
    (src / "script/run.py").write_text("print('hi')\n")
    os.chmod(src / "script/run.py", 0o755)
    (src / "payload").mkdir()
    (src / "payload/data.bin").write_bytes(os.urandom(3000))
    (src / "empty").mkdir()
    os.symlink("script/run.py", src / "link")
    os.utime(src / "payload/data.bin", (1_600_000_000, 1_600_000_000))
    zip_path = src / "pod.zip"  # inside the source, as the original tool could do

    members = make_zip(src, zip_path, exclude=lambda rel: rel == "empty")

    assert members == ["payload", "payload/data.bin", "script", "script/run.py"]
    out = tmp_path / "out"
    extract_zip(zip_path, out, **LIMITS)  # type: ignore[arg-type]
    assert (out / "payload/data.bin").read_bytes() == (src / "payload/data.bin").read_bytes()
    assert stat.S_IMODE((out / "script/run.py").stat().st_mode) == 0o755
    assert (out / "payload/data.bin").stat().st_mtime == 1_600_000_000
    assert not (out / "link").exists()
    assert not (out / "empty").exists()
    assert sorted(p.name for p in src.iterdir()) == [
        "empty",
        "link",
        "payload",
        "pod.zip",
        "script",
    ]
