"""The FairOS-DFS store's local file cache: its size total and directory index.

The store asks the cache for "how many bytes are cached" on every open and
after every upload, and for "which copies are in this directory" on every
listing; both answers are kept up to date as copies come and go instead of
being recomputed from every cached file.
"""

from __future__ import annotations

from pathlib import Path

from sovrfs.store.dfs_cache import CachedFile, FileCache


def copy(cache: FileCache, path: str, size: int, pod: str = "p") -> CachedFile:
    entry = CachedFile(pod, path, cache.new_fid(), 0o644)
    cache.local_path(entry).write_bytes(b"x" * size)
    cache.add(entry, size)
    return entry


def test_total_follows_adds_resizes_and_drops(tmp_path: Path) -> None:
    cache = FileCache(tmp_path, limit=1 << 20)
    cache.files.mkdir()
    a = copy(cache, "/a", 10)
    b = copy(cache, "/d/b", 20)
    assert cache.total_bytes() == 30
    cache.resize(a, 100)
    assert cache.total_bytes() == 120
    cache.drop_local(b)
    assert cache.total_bytes() == 100
    assert not cache.local_path(b).exists()
    # Dropping twice, or resizing a dropped copy, does not count it again.
    cache.drop_local(b)
    cache.resize(b, 1000)
    assert cache.total_bytes() == 100


def test_replacing_a_path_counts_only_the_new_copy(tmp_path: Path) -> None:
    cache = FileCache(tmp_path, limit=1 << 20)
    cache.files.mkdir()
    copy(cache, "/a", 10)
    newer = copy(cache, "/a", 4)
    assert cache.entries[("p", "/a")] is newer
    assert cache.total_bytes() == 4
    assert [name for name, _ in cache.in_dir("p", "/")] == ["a"]


def test_directory_index_follows_moves(tmp_path: Path) -> None:
    cache = FileCache(tmp_path, limit=1 << 20)
    cache.files.mkdir()
    a = copy(cache, "/src/a", 1)
    copy(cache, "/src/b", 2)
    copy(cache, "/src/b", 2, pod="other")
    assert sorted(name for name, _ in cache.in_dir("p", "/src")) == ["a", "b"]
    cache.move(a, "/dst/renamed")
    assert [name for name, _ in cache.in_dir("p", "/src")] == ["b"]
    assert cache.in_dir("p", "/dst") == [("renamed", a)]
    assert cache.entries[("p", "/dst/renamed")] is a
    assert ("p", "/src/a") not in cache.entries
    assert cache.total_bytes() == 5
    assert cache.in_dir("p", "/nowhere") == []


def test_queue_holds_changed_copies_until_clean_or_gone(tmp_path: Path) -> None:
    cache = FileCache(tmp_path, limit=1 << 20)
    cache.files.mkdir()
    a = copy(cache, "/a", 1)
    b = copy(cache, "/b", 1)
    c = copy(cache, "/c", 1)
    assert cache.queued() == []
    for entry in (a, b, c):
        cache.touch(entry)
    assert cache.queued() == [a, b, c]
    a.uploaded = a.generation  # uploaded
    b.gone = True  # unlinked
    assert cache.queued() == [c]
    cache.touch(a)  # written again after its upload
    assert cache.queued() == [c, a]
