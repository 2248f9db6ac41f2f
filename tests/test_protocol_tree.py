"""The blocking tree helpers and progress entries, on plain local directories."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sovrfs.errors import NotADirectory, NotFound, PodStoreError
from sovrfs.protocol import tree, with_suffix
from sovrfs.protocol.progress import Progress
from tests.test_protocol_env import listing


def make_tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("f")
    (root / "top.bin").write_bytes(b"\0" * 3000)
    (root / "top.bin").chmod(0o640)
    (root / "a").chmod(0o750)
    os.symlink("/etc/passwd", root / "link")


def test_mirror_copies_prunes_and_protects(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_tree(src)
    dst.mkdir()
    (dst / ".sovr").mkdir()
    (dst / "stale.txt").write_text("old")
    progress = Progress()

    with progress.track("copy", "dst") as op:
        op.set_total(*tree.tree_size(str(src)))
        changes = tree.mirror(str(src), str(dst), protect=lambda rel: rel == ".sovr", op=op)
        assert progress.snapshot()[0]["bytes_done"] == 3001
        assert (op.files_done, op.files_total, op.bytes_total) == (2, 2, 3001)

    assert progress.snapshot() == []
    assert changes.removed == 1 and changes.written >= 4
    assert listing(dst, lambda rel: rel == ".sovr") == listing(src)
    assert (dst / ".sovr").is_dir()
    # Links are copied as links, never followed.
    assert os.readlink(dst / "link") == "/etc/passwd"
    # A second mirror of an unchanged tree writes nothing.
    assert not tree.mirror(str(src), str(dst), protect=lambda rel: rel == ".sovr").any


def test_resolve_refuses_links_and_files(tmp_path: Path) -> None:
    make_tree(tmp_path)
    os.symlink(tmp_path / "a", tmp_path / "alias")
    assert tree.resolve(str(tmp_path), "a/b/f.txt") == str(tmp_path / "a" / "b" / "f.txt")
    with pytest.raises(PodStoreError) as link:
        tree.resolve(str(tmp_path), "alias/b")
    assert link.value.errno == errno.ELOOP
    with pytest.raises(NotADirectory):
        tree.resolve(str(tmp_path), "top.bin/x")
    with pytest.raises(NotFound):
        tree.resolve(str(tmp_path), "missing/x")
    made = tree.resolve(str(tmp_path), "new/deeper", create=True)
    assert Path(made).is_dir()


def test_output_pod_names_stay_valid() -> None:
    assert with_suffix("gamma", "-output") == "gamma-output"
    long = "p" * 64
    assert with_suffix(long, "-output") == "p" * 57 + "-output"
    assert len(with_suffix(long, "-fork-12").encode()) == 64


def test_same_size_other_time_is_compared_by_content(tmp_path: Path) -> None:
    # A store that cannot keep modification times (FairOS-DFS) must not get
    # every unchanged file copied again: the bytes decide.
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"same bytes")
    dst.write_bytes(b"same bytes")
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))
    os.utime(dst, ns=(2_000_000_000, 2_000_000_000))

    assert not tree.place(str(src), str(dst)).any
    # Where the time can be set, it is, so the next check is the quick one.
    assert dst.stat().st_mtime_ns == 1_000_000_000

    dst.write_bytes(b"other byte")
    os.utime(dst, ns=(2_000_000_000, 2_000_000_000))
    assert tree.place(str(src), str(dst)).written == 1
    assert dst.read_bytes() == b"same bytes"
