"""The inode table on its own: names, hard links, renames and freeing."""

from __future__ import annotations

import pytest

from sovrfs.inodes import InodeTable
from sovrfs.store.base import Kind


def test_hard_links_share_a_node_by_identity() -> None:
    table = InodeTable()
    pod = table.child(table.root, "p", Kind.DIR, pod="p")
    first = table.child(pod, "a", Kind.FILE, pod="p", identity=7)
    second = table.child(pod, "b", Kind.FILE, pod="p", identity=7)
    assert first is second
    assert sorted(name for _, name in first.names) == ["a", "b"]
    other = table.child(pod, "c", Kind.FILE, pod="p", identity=8)
    assert other is not first


def test_renaming_a_directory_moves_what_is_below() -> None:
    table = InodeTable()
    pod = table.child(table.root, "p", Kind.DIR, pod="p")
    src = table.child(pod, "src", Kind.DIR, pod="p")
    leaf = table.child(src, "leaf", Kind.FILE, pod="p")
    table.move(pod, "src", pod, "dst")
    assert table.locate(leaf) == ("p", "/dst/leaf")
    assert table.find("p", "/src/leaf") is None
    assert table.find("p", "/dst/leaf") is leaf


def test_a_file_node_has_no_children_and_takes_none() -> None:
    table = InodeTable()
    pod = table.child(table.root, "p", Kind.DIR, pod="p")
    a = table.child(pod, "a", Kind.FILE, pod="p")
    b = table.child(pod, "b", Kind.FILE, pod="p")
    assert a.children == {} and b.children == {}
    with pytest.raises(TypeError):
        a.children["x"] = b
    with pytest.raises(TypeError):
        a.children.setdefault("x", b)
    assert b.children == {}


def test_forgotten_nodes_are_freed_and_parents_with_them() -> None:
    table = InodeTable()
    pod = table.child(table.root, "p", Kind.DIR, pod="p")
    pod.lookups = 1
    sub = table.child(pod, "sub", Kind.DIR, pod="p")
    leaf = table.child(sub, "leaf", Kind.FILE, pod="p", identity=1)
    leaf.lookups = 1
    before = len(table)
    table.forget(leaf.ino, 1)
    # The leaf goes, and so does its directory, which nobody looked up.
    assert len(table) == before - 2
    assert table.find("p", "/sub") is None
