"""The FUSE handlers called directly, without a kernel: fast checks of the
handler contract and of the inode table after each sequence of operations."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pyfuse3
import pytest
import trio

from sovrfs.app import App, AppSettings
from sovrfs.control import Controller
from sovrfs.fs import Operations
from sovrfs.inodes import InodeTable
from sovrfs.runs import RunEngine
from sovrfs.store.embedded import EmbeddedStore

ROOT = pyfuse3.ROOT_INODE


def ctx() -> pyfuse3.RequestContext:
    return pyfuse3.RequestContext()


@pytest.fixture
async def ops(tmp_path: Path) -> AsyncIterator[Operations]:
    store = EmbeddedStore(tmp_path / "store", watch=False)
    await store.start()
    engine = RunEngine(tmp_path / "runs")
    app = App(store, engine, None, AppSettings(str(tmp_path / "mnt"), tmp_path / "state"))
    operations = Operations(store, Controller(app))
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.serve)
        yield operations
        check_table(operations.inodes)
        nursery.cancel_scope.cancel()
    await store.aclose()


def check_table(table: InodeTable) -> None:
    """Every node with a name must be found again by walking from the root."""
    for node in table:
        if node is table.root or node.detached:
            continue
        for parent, name in node.names:
            assert parent.children.get(name) is node, (node, parent, name)
        if node.pod is not None and node.virtual is None:
            pod, path = table.locate(node)
            assert table.find(pod, path) is node


async def errno_of(coro: object) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await coro  # type: ignore[misc]
    return info.value.errno


async def test_pod_lifecycle(ops: Operations) -> None:
    entry = await ops.mkdir(ROOT, b"pod", 0o755, ctx())
    assert stat.S_ISDIR(entry.st_mode)
    assert await errno_of(ops.mkdir(ROOT, b"pod", 0o755, ctx())) == errno.EEXIST
    assert await errno_of(ops.mkdir(ROOT, b".hidden", 0o755, ctx())) == errno.EINVAL
    assert await errno_of(ops.mkdir(ROOT, b"x" * 65, 0o755, ctx())) == errno.ENAMETOOLONG
    assert await errno_of(ops.create(ROOT, b"file", 0o644, os.O_WRONLY, ctx())) == errno.EACCES
    await ops.rename(ROOT, b"pod", ROOT, b"renamed", 0, ctx())
    found = await ops.lookup(ROOT, b"renamed", ctx())
    assert found.st_ino == entry.st_ino
    await ops.rmdir(ROOT, b"renamed", ctx())
    assert await errno_of(ops.lookup(ROOT, b"renamed", ctx())) == errno.ENOENT


async def test_files_and_handles(ops: Operations) -> None:
    pod = await ops.mkdir(ROOT, b"p", 0o755, ctx())
    fi, entry = await ops.create(pod.st_ino, b"f", 0o600, os.O_RDWR, ctx())
    assert await ops.write(fi.fh, 0, b"hello") == 5
    assert await ops.read(fi.fh, 1, 3) == b"ell"
    await ops.flush(fi.fh)
    await ops.release(fi.fh)
    attr = await ops.getattr(entry.st_ino, ctx())
    assert attr.st_size == 5 and stat.S_IMODE(attr.st_mode) == 0o600
    fi2 = await ops.open(entry.st_ino, os.O_RDONLY, ctx())
    assert fi2.keep_cache  # unchanged since the last open: the kernel keeps its pages
    await ops.unlink(pod.st_ino, b"f", ctx())
    assert await ops.read(fi2.fh, 0, 10) == b"hello"  # still readable while open
    await ops.release(fi2.fh)
    await ops.forget([(entry.st_ino, 1)])
    assert await errno_of(ops.getattr(entry.st_ino, ctx())) == errno.ENOENT


async def test_directory_rename_moves_descendants(ops: Operations) -> None:
    pod = await ops.mkdir(ROOT, b"p", 0o755, ctx())
    a = await ops.mkdir(pod.st_ino, b"a", 0o755, ctx())
    b = await ops.mkdir(a.st_ino, b"b", 0o755, ctx())
    fi, f = await ops.create(b.st_ino, b"f", 0o644, os.O_WRONLY, ctx())
    await ops.release(fi.fh)
    await ops.rename(pod.st_ino, b"a", pod.st_ino, b"z", 0, ctx())
    assert ops.inodes.locate(ops.inodes.get(f.st_ino)) == ("p", "/z/b/f")
    assert await errno_of(ops.rmdir(pod.st_ino, b"z", ctx())) == errno.ENOTEMPTY
    assert (
        await errno_of(
            ops.rename(pod.st_ino, b"z", pod.st_ino, b"y", pyfuse3.RENAME_EXCHANGE, ctx())
        )
        == errno.EINVAL
    )


async def test_cross_pod_rename_is_exdev(ops: Operations) -> None:
    one = await ops.mkdir(ROOT, b"one", 0o755, ctx())
    two = await ops.mkdir(ROOT, b"two", 0o755, ctx())
    fi, _ = await ops.create(one.st_ino, b"f", 0o644, os.O_WRONLY, ctx())
    await ops.release(fi.fh)
    assert await errno_of(ops.rename(one.st_ino, b"f", two.st_ino, b"f", 0, ctx())) == errno.EXDEV
    assert await errno_of(ops.rename(one.st_ino, b"f", ROOT, b"f", 0, ctx())) == errno.EXDEV


async def test_hard_links_share_an_inode(ops: Operations) -> None:
    pod = await ops.mkdir(ROOT, b"p", 0o755, ctx())
    fi, f = await ops.create(pod.st_ino, b"f", 0o644, os.O_WRONLY, ctx())
    await ops.release(fi.fh)
    linked = await ops.link(f.st_ino, pod.st_ino, b"g", ctx())
    assert linked.st_ino == f.st_ino and linked.st_nlink == 2
    await ops.unlink(pod.st_ino, b"f", ctx())
    assert ops.inodes.locate(ops.inodes.get(f.st_ino)) == ("p", "/g")


async def test_control_dir_only_in_compute_pods(ops: Operations) -> None:
    pod = await ops.mkdir(ROOT, b"p", 0o755, ctx())
    assert await errno_of(ops.lookup(pod.st_ino, b".sovr", ctx())) == errno.ENOENT
    fi, _ = await ops.create(pod.st_ino, b"p.recipe", 0o644, os.O_WRONLY, ctx())
    await ops.write(fi.fh, 0, b'{"name": "p", "golem": {"exec": "true"}}')
    await ops.release(fi.fh)
    ctl = await ops.lookup(pod.st_ino, b".sovr", ctx())
    assert stat.S_ISDIR(ctl.st_mode)
    status = await ops.lookup(ctl.st_ino, b"status", ctx())
    handle = await ops.open(status.st_ino, os.O_RDONLY, ctx())
    assert handle.direct_io
    assert b'"state": "idle"' in await ops.read(handle.fh, 0, 4096)
    await ops.release(handle.fh)
    # Control files cannot be written to by accident or created anew.
    assert await errno_of(ops.open(status.st_ino, os.O_WRONLY, ctx())) == errno.EACCES
    assert await errno_of(ops.create(ctl.st_ino, b"new", 0o644, os.O_WRONLY, ctx())) == errno.EACCES
    assert await errno_of(ops.mkdir(pod.st_ino, b".sovr", 0o755, ctx())) == errno.EEXIST
