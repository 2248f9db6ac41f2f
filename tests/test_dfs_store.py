"""DfsStore against the real FairOS-DFS dev server: every PodStore method, the
cache, the upload queue, crash replay and server faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from sovrfs.errors import (
    AlreadyExists,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    ReadOnly,
    StoreUnavailable,
)
from sovrfs.store.base import Kind, PodInfo, SetAttr
from sovrfs.store.dfs import DfsStore
from sovrfs.store.dfs_api import DfsClient
from tests.support.dfs import DfsServer, DfsUser, signup

pytestmark = pytest.mark.dfs

WAIT = 60  # bound for every wait in these tests
REPO = Path(__file__).resolve().parents[1]


def make_store(user: DfsUser, cache: Path, **options: object) -> DfsStore:
    return DfsStore(user.url, user.username, user.password, cache, **options)  # type: ignore[arg-type]


@pytest.fixture
async def store(dfs_user: DfsUser, tmp_path: Path) -> AsyncIterator[DfsStore]:
    s = make_store(dfs_user, tmp_path / "cache", timeout=30)
    await s.start()
    await s.create_pod("p")
    try:
        yield s
    finally:
        await s.aclose()


async def remote_bytes(user: DfsUser, pod: str, path: str, tmp: Path) -> bytes:
    async with DfsClient(user.url, user.username, user.password, timeout=30) as c:
        await c.file_download(pod, path, tmp / "check")
    return await trio.Path(tmp / "check").read_bytes()


async def write_file(store: DfsStore, path: str, data: bytes, mode: int = 0o644) -> None:
    """Create (or truncate) ``path`` in pod ``p``, write ``data`` and close it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = await store.open_file("p", path, flags, mode)
    os.write(fd, data)
    await store.close_file("p", path, fd, written=True)


async def test_round_trip_of_every_method(
    store: DfsStore, dfs_user: DfsUser, tmp_path: Path
) -> None:
    assert PodInfo("p") in await store.list_pods()
    root = await store.stat("p", "/")
    assert root.kind is Kind.DIR and root.mode == 0o755
    await store.mkdir("p", "/d", 0o750)
    assert (await store.stat("p", "/d")).mode == 0o750
    await store.write_bytes("p", "/d/f", b"content", mode=0o640)
    assert await store.read_bytes("p", "/d/f") == b"content"
    attr = await store.stat("p", "/d/f")
    assert (attr.kind, attr.size, attr.mode) == (Kind.FILE, 7, 0o640)
    assert await remote_bytes(dfs_user, "p", "/d/f", tmp_path) == b"content"
    assert [n for n, _ in await store.listdir("p", "/d")] == ["f"]

    attr = await store.setattr("p", "/d/f", SetAttr(mode=0o600, size=3))
    assert (attr.size, attr.mode) == (3, 0o600)
    await store.sync("p")
    assert await remote_bytes(dfs_user, "p", "/d/f", tmp_path) == b"con"

    await store.rename("p", "/d/f", "/g")
    await store.rename("p", "/d", "/e")
    assert [n for n, _ in await store.listdir("p", "/")] == ["e", "g"]
    await store.unlink("p", "/g")
    await store.rmdir("p", "/e")
    assert await store.listdir("p", "/") == []

    with pytest.raises(NotSupported):
        await store.symlink("p", "/l", "/x")
    with pytest.raises(NotSupported):
        await store.link("p", "/a", "/b")
    with pytest.raises(NotSupported):
        await store.setxattr("p", "/", "user.x", b"1")
    with pytest.raises(NotSupported):
        await store.setattr("p", "/", SetAttr(uid=0))
    assert store.features == frozenset()
    assert (await store.statfs()).blocks_avail > 0

    await store.rename_pod("p", "q")
    assert [i.name for i in await store.list_pods()] == ["q"]
    await store.delete_pod("q")
    assert await store.list_pods() == []
    status = store.status()
    assert status["kind"] == "fairos-dfs" and status["user"] == dfs_user.username
    assert dfs_user.password not in repr(status)


async def test_posix_checks_the_server_lacks(store: DfsStore) -> None:
    await store.mkdir("p", "/a", 0o755)
    await store.mkdir("p", "/a/b", 0o755)
    await store.mkdir("p", "/b", 0o755)
    await store.write_bytes("p", "/a/b/f", b"x")
    with pytest.raises(NotEmpty):
        await store.rmdir("p", "/a/b")
    with pytest.raises(NotFound):
        await store.mkdir("p", "/missing/x", 0o755)
    with pytest.raises(NotFound):
        await store.open_file("p", "/missing/f", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(InvalidName):
        await store.write_bytes("p", "/index.dfs", b"x")
    with pytest.raises(InvalidName):
        await store.mkdir("p", "/a/index.dfs", 0o755)
    with pytest.raises(AlreadyExists):
        await store.mkdir("p", "/a/b/f", 0o755)
    with pytest.raises(IsADirectory):
        await store.open_file("p", "/a", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(NotADirectory):
        await store.listdir("p", "/a/b/f")
    with pytest.raises(NotFound):
        await store.rename("p", "/a/b/f", "/nodir/f")
    with pytest.raises(AlreadyExists):
        await store.rename("p", "/a/b", "/b", replace=False)

    # The grandparent bug: removing /a/b must leave /b and /a consistent.
    await store.unlink("p", "/a/b/f")
    await store.rmdir("p", "/a/b")
    assert [n for n, _ in await store.listdir("p", "/")] == ["a", "b"]
    await store.rmdir("p", "/a")
    assert [n for n, _ in await store.listdir("p", "/")] == ["b"]


async def test_rename_replaces_like_posix(store: DfsStore) -> None:
    await store.write_bytes("p", "/x", b"new")
    await store.write_bytes("p", "/y", b"old")
    await store.rename("p", "/x", "/y")
    assert await store.read_bytes("p", "/y") == b"new"
    assert [n for n, _ in await store.listdir("p", "/")] == ["y"]
    await store.mkdir("p", "/d1", 0o755)
    await store.mkdir("p", "/d2", 0o755)
    await store.write_bytes("p", "/d2/f", b"")
    with pytest.raises(NotEmpty):
        await store.rename("p", "/d1", "/d2")
    await store.unlink("p", "/d2/f")
    await store.rename("p", "/d1", "/d2")
    assert [n for n, _ in await store.listdir("p", "/")] == ["d2", "y"]
    with pytest.raises(IsADirectory):
        await store.rename("p", "/y", "/d2")


async def test_dir_move_keeps_siblings(store: DfsStore) -> None:
    for path in ("/a", "/a/b", "/a/c", "/a/b/c", "/a/b/c/x"):
        await store.mkdir("p", path, 0o755)
    await store.write_bytes("p", "/a/b/c/x/f", b"deep")
    await store.rename("p", "/a/b", "/b2")
    assert [n for n, _ in await store.listdir("p", "/a")] == ["c"]
    assert [n for n, _ in await store.listdir("p", "/b2")] == ["c"]
    assert await store.read_bytes("p", "/b2/c/x/f") == b"deep"
    assert [n for n, _ in await store.listdir("p", "/")] == ["a", "b2"]


async def test_odd_names_survive_upload(store: DfsStore, dfs_user: DfsUser, tmp_path: Path) -> None:
    for name in ('q"uote', "ctl\x01x", "back\\slash", "unié", "pct%22"):
        await store.write_bytes("p", "/" + name, name.encode())
    names = [n for n, _ in await store.listdir("p", "/")]
    assert names == sorted(['q"uote', "ctl\x01x", "back\\slash", "unié", "pct%22"])
    store._listings.clear()
    assert [n for n, _ in await store.listdir("p", "/")] == names
    assert await remote_bytes(dfs_user, "p", '/q"uote', tmp_path) == b'q"uote'


async def test_writes_are_local_until_uploaded(dfs_user: DfsUser, tmp_path: Path) -> None:
    store = make_store(dfs_user, tmp_path / "cache", upload_delay=3600)
    await store.start()
    try:
        await store.create_pod("p")
        before = store.client.requests.total()
        await write_file(store, "/f", b"queued", 0o644)
        # Creating and writing took no request beyond the parent listing.
        assert store.client.requests.total() - before <= 1
        assert (await store.stat("p", "/f")).size == 6
        assert store.status()["upload_queue"]["files"] == 1
        await store.sync()
        assert store.status()["upload_queue"]["files"] == 0
        assert await remote_bytes(dfs_user, "p", "/f", tmp_path) == b"queued"
    finally:
        await store.aclose()


async def test_uploads_keep_the_directory_listing(dfs_user: DfsUser, tmp_path: Path) -> None:
    """Creating files while earlier ones upload does not list the directory again.

    A finished upload goes into the cached listing of its directory, so a copy
    of many files into one directory costs one listing, not one per file.
    """
    store = make_store(dfs_user, tmp_path / "cache", upload_delay=0.0, attr_ttl=60)
    await store.start()
    try:
        await store.create_pod("p")
        await store.mkdir("p", "/d", 0o700)
        listings = 0
        for i in range(12):
            await write_file(store, f"/d/f{i}", b"x" * i, 0o600)
            if i == 0:  # the first create lists "/" and "/d"; none may follow
                listings = store.client.requests["GET /v1/dir/ls"]
            if i % 4 == 3:
                with trio.fail_after(WAIT):
                    await store.wait_uploaded()
        with trio.fail_after(WAIT):
            await store.wait_uploaded()
        listed = dict(await store.listdir("p", "/d"))
        assert sorted(listed) == sorted(f"f{i}" for i in range(12))
        assert all(listed[f"f{i}"].size == i for i in range(12))
        assert store.client.requests["GET /v1/dir/ls"] == listings
        # What the cache says is what the server has.
        await store.refresh("p")
        remote = dict(await store.listdir("p", "/d"))
        assert {n: a.size for n, a in remote.items()} == {n: a.size for n, a in listed.items()}
    finally:
        await store.aclose()


async def test_background_upload_and_drain_on_close(dfs_user: DfsUser, tmp_path: Path) -> None:
    store = make_store(dfs_user, tmp_path / "cache", upload_delay=0.1)
    await store.start()
    await store.create_pod("p")
    await write_file(store, "/bg", b"background")
    with trio.fail_after(WAIT):
        await store.wait_uploaded()
    await write_file(store, "/drain", b"drained")
    await store.aclose()
    assert await remote_bytes(dfs_user, "p", "/bg", tmp_path) == b"background"
    assert await remote_bytes(dfs_user, "p", "/drain", tmp_path) == b"drained"


@pytest.mark.expect_warnings
async def test_upload_worker_survives_its_own_failures(
    dfs_user: DfsUser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake-up time already past, or a bug in the loop, never ends the daemon.

    The worker is a trio system task: anything escaping it would end the
    whole process and leave a dead mount behind.
    """
    store = make_store(dfs_user, tmp_path / "cache", upload_delay=0.1)
    due = store._due
    calls = 0

    def flaky_due() -> tuple[list[object], float]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return [], 0.0  # a wake-up time long past
        if calls == 2:
            raise RuntimeError("simulated bug in the upload loop")
        return due()  # type: ignore[return-value]

    monkeypatch.setattr(store, "_due", flaky_due)
    await store.start()
    await store.create_pod("p")
    await write_file(store, "/after", b"still uploaded")
    with trio.fail_after(WAIT):
        await store.wait_uploaded()
    await store.aclose()
    assert calls > 2
    assert await remote_bytes(dfs_user, "p", "/after", tmp_path) == b"still uploaded"


async def test_download_is_cached_and_reused(
    store: DfsStore, dfs_user: DfsUser, tmp_path: Path
) -> None:
    async with DfsClient(dfs_user.url, dfs_user.username, dfs_user.password) as c:
        await trio.Path(tmp_path / "src").write_bytes(b"remote data")
        await c.file_upload("p", "/", "r", tmp_path / "src")
    # Our session's server-side cache hides the other session's upload until refresh.
    with pytest.raises(NotFound):
        await store.read_bytes("p", "/r")
    await store.refresh("p")
    assert await store.read_bytes("p", "/r") == b"remote data"
    assert await store.read_bytes("p", "/r") == b"remote data"
    store._listings.clear()
    assert await store.read_bytes("p", "/r") == b"remote data"
    assert store.client.requests["GET /v1/file/download"] == 1
    # refresh() forgets clean copies and listings: the next read downloads again.
    await store.refresh("p")
    assert await store.read_bytes("p", "/r") == b"remote data"
    assert store.client.requests["GET /v1/file/download"] == 2


async def test_cache_limit_evicts_clean_copies(dfs_user: DfsUser, tmp_path: Path) -> None:
    store = make_store(dfs_user, tmp_path / "cache", cache_limit=150_000, upload_delay=3600)
    await store.start()
    try:
        await store.create_pod("p")
        for i in range(4):
            await store.write_bytes("p", f"/f{i}", bytes([i]) * 100_000)
        assert store.status()["cache"]["bytes"] <= 150_000
        # Dirty copies are never evicted, however far over the limit.
        for i in range(4):
            await write_file(store, f"/g{i}", b"g" * 100_000)
        assert store.status()["upload_queue"]["files"] == 4
        for i in range(4):
            assert await store.read_bytes("p", f"/f{i}") == bytes([i]) * 100_000
        await store.sync()
        assert store.status()["cache"]["bytes"] <= 150_000
    finally:
        await store.aclose()


async def test_received_pod_is_read_only(
    store: DfsStore, dfs_user: DfsUser, tmp_path: Path
) -> None:
    await store.write_bytes("p", "/f", b"mine")
    ref = await store.share_pod("p")
    assert len(ref) == 64
    assert await store.shared_pod_name(ref) == "p"
    await store.fork_pod(ref, "forked")
    assert await store.read_bytes("forked", "/f") == b"mine"
    with pytest.raises(InvalidName):
        await store.fork_pod("zz" * 10, "bad")
    assert "bad" not in [i.name for i in await store.list_pods()]

    other = signup(dfs_user.url)
    async with DfsClient(other.url, other.username, other.password) as c:
        await c.pod_receive(ref)
    bob = make_store(other, tmp_path / "bob")
    await bob.start()
    try:
        assert await bob.list_pods() == [PodInfo("p", read_only=True)]
        assert await bob.read_bytes("p", "/f") == b"mine"
        with pytest.raises(ReadOnly):
            await bob.write_bytes("p", "/f", b"theirs")
        with pytest.raises(ReadOnly):
            await bob.mkdir("p", "/d", 0o755)
        with pytest.raises(ReadOnly):
            await bob.unlink("p", "/f")
    finally:
        await bob.aclose()


@pytest.mark.expect_warnings
async def test_upload_failure_surfaces_through_fsync(store: DfsStore) -> None:
    await store.mkdir("p", "/d", 0o755)
    fd = await store.open_file("p", "/d/f", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"doomed")
    # Someone else removes the directory behind our back.
    await store.client.dir_rmdir("p", "/d")
    with pytest.raises(NotFound):
        await store.fsync_file("p", "/d/f", fd, written=True)
    assert store.status()["upload_queue"]["last_error"]
    await store.close_file("p", "/d/f", fd, written=False)
    await store.unlink("p", "/d/f")
    assert store.status()["upload_queue"]["files"] == 0


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys, trio
    from sovrfs.store.dfs import DfsStore

    async def main():
        url, user, cache = sys.argv[1:4]
        password = os.environ["DFS_TEST_PASSWORD"]
        store = DfsStore(url, user, password, cache, upload_delay=3600)
        await store.start()
        await store.create_pod("p")
        await store.write_bytes("p", "/synced", b"fsynced data")
        fd = await store.open_file("p", "/queued", os.O_WRONLY | os.O_CREAT, 0o640)
        os.write(fd, b"closed but never uploaded")
        await store.close_file("p", "/queued", fd, written=True)
        print("ready", flush=True)
        await trio.sleep_forever()

    trio.run(main)
    """
)


async def test_journal_replay_after_kill(dfs_user: DfsUser, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-c",
            CRASH_SCRIPT,
            dfs_user.url,
            dfs_user.username,
            str(cache),
        ],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "DFS_TEST_PASSWORD": dfs_user.password},
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(WAIT):
            line = await proc.stdout.receive_some(100)
        assert line.strip() == b"ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        with trio.fail_after(WAIT):
            await proc.wait()
        await proc.stdout.aclose()
    async with DfsClient(dfs_user.url, dfs_user.username, dfs_user.password) as c:
        assert [e.name for e in await c.dir_ls("p", "/")] == ["synced"]

    store = make_store(dfs_user, cache)
    await store.start()
    try:
        assert store.status()["upload_queue"]["files"] == 1
        await store.sync()
    finally:
        await store.aclose()
    assert await remote_bytes(dfs_user, "p", "/queued", tmp_path) == b"closed but never uploaded"
    assert await remote_bytes(dfs_user, "p", "/synced", tmp_path) == b"fsynced data"
    async with DfsClient(dfs_user.url, dfs_user.username, dfs_user.password) as c:
        assert (await c.file_stat("p", "/queued"))["mode"] & 0o7777 == 0o640


async def test_aclose_without_waiting_keeps_the_queue(dfs_user: DfsUser, tmp_path: Path) -> None:
    store = make_store(dfs_user, tmp_path / "cache", upload_delay=3600)
    await store.start()
    await store.create_pod("p")
    await write_file(store, "/f", b"later")
    await store.aclose(wait=False)
    again = make_store(dfs_user, tmp_path / "cache")
    await again.start()
    try:
        await again.sync()
    finally:
        await again.aclose()
    assert await remote_bytes(dfs_user, "p", "/f", tmp_path) == b"later"


@pytest.mark.expect_warnings
async def test_paused_server_mid_upload(dfs_faults: DfsServer, tmp_path: Path) -> None:
    user = signup(dfs_faults.url)
    store = make_store(user, tmp_path / "cache", timeout=30)
    await store.start()
    try:
        await store.create_pod("p")
        data = os.urandom(20_000_000)
        fd = await store.open_file("p", "/big", os.O_WRONLY | os.O_CREAT)
        os.write(fd, data)

        async def pause_then_resume() -> None:
            await trio.sleep(0.2)
            dfs_faults.pause()
            await trio.sleep(2)
            dfs_faults.resume()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pause_then_resume)
            with trio.fail_after(WAIT):
                await store.fsync_file("p", "/big", fd, written=True)
        await store.close_file("p", "/big", fd, written=False)
        assert await remote_bytes(user, "p", "/big", tmp_path) == data
    finally:
        await store.aclose()


@pytest.mark.expect_warnings
async def test_stopped_server_gives_store_unavailable(
    dfs_faults: DfsServer, tmp_path: Path
) -> None:
    user = signup(dfs_faults.url)
    store = make_store(user, tmp_path / "cache", timeout=3, upload_delay=0)
    await store.start()
    try:
        await store.create_pod("p")
        await store.write_bytes("p", "/cached", b"still readable")
        dfs_faults.pause()
        with trio.fail_after(WAIT):
            with pytest.raises(StoreUnavailable):
                await store.mkdir("p", "/d", 0o755)
            # The cached copy is served without the server.
            store._listings.clear()
            assert await store.read_bytes("p", "/cached") == b"still readable"
            fd = await store.open_file("p", "/cached", os.O_WRONLY | os.O_TRUNC)
            os.write(fd, b"written while down")
            with pytest.raises(StoreUnavailable):
                await store.fsync_file("p", "/cached", fd, written=True)
            await store.close_file("p", "/cached", fd, written=False)
        dfs_faults.resume()
        with trio.fail_after(WAIT):
            await store.wait_uploaded()
        assert await remote_bytes(user, "p", "/cached", tmp_path) == b"written while down"
        dfs_faults.stop()
        with trio.fail_after(WAIT), pytest.raises(StoreUnavailable):
            await store.mkdir("p", "/e", 0o755)
    finally:
        await store.aclose(wait=False)
