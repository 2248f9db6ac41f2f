"""FairOS-DFS through a real mount: crash safety, unmount, status and secrets."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
import pytest

from tests.support.dfs import DfsServer, DfsUser, signup
from tests.support.mount import Mount, make_mount, wait_until

pytestmark = [pytest.mark.dfs, pytest.mark.mount]

T = TypeVar("T")


@pytest.fixture
def user(dfs_process: DfsServer) -> DfsUser:
    if not dfs_process.running:
        dfs_process.start()
    dfs_process.resume()
    return signup(dfs_process.url)


def dfs_mount(tmp_path: Path, user: DfsUser) -> Mount:
    return make_mount(
        tmp_path,
        "--dfs",
        user.url,
        "--user",
        user.username,
        env={"SOVRFS_DFS_PASSWORD": user.password},
    )


@pytest.fixture
def dmount(tmp_path: Path, user: DfsUser) -> Iterator[Mount]:
    mount = dfs_mount(tmp_path, user)
    mount.start()
    try:
        yield mount
    finally:
        mount.stop()


def server_file(user: DfsUser, pod: str, path: str) -> bytes | None:
    """A file's content as the server has it, through a session of our own."""
    with httpx.Client(base_url=user.url, timeout=30) as client:
        token = client.post(
            "/v2/user/login", json={"userName": user.username, "password": user.password}
        ).json()["accessToken"]
        headers = {"Authorization": f"Bearer {token}"}
        response = client.get(
            "/v1/file/download", params={"podName": pod, "filePath": path}, headers=headers
        )
        client.post("/v1/user/logout", headers=headers)
    return response.content if response.status_code == 200 else None


def test_fsynced_files_survive_kill_9(tmp_path: Path, user: DfsUser) -> None:
    mount = dfs_mount(tmp_path, user)
    mount.start()
    try:
        pod = mount.path / "safe"
        pod.mkdir()
        expected = {}
        for i in range(5):
            data = os.urandom(1000 + i)
            with open(pod / f"f{i}", "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            expected[f"f{i}"] = data
        # Written and closed but not fsynced: kept by the journal too.
        (pod / "closed").write_bytes(b"closed, not fsynced")
        expected["closed"] = b"closed, not fsynced"
        mount.kill()
        mount.remount()
        for name, data in expected.items():
            assert (pod / name).read_bytes() == data
        wait_until(lambda: mount.status()["store"]["upload_queue"]["files"] == 0, timeout=60)
        for name, data in expected.items():
            assert server_file(user, "safe", f"/{name}") == data
    finally:
        mount.stop()


def test_umount_waits_for_the_upload_queue(tmp_path: Path, user: DfsUser) -> None:
    mount = dfs_mount(tmp_path, user)
    mount.start()
    pod = mount.path / "queued"
    pod.mkdir()
    for i in range(20):
        (pod / f"small-{i}").write_text(f"file {i}\n")
    status = mount.status()["store"]
    assert "upload_queue" in status
    mount.umount()
    for i in range(20):
        assert server_file(user, "queued", f"/small-{i}") == f"file {i}\n".encode()


def test_no_secret_in_logs_status_or_argv(dmount: Mount, user: DfsUser) -> None:
    pod = dmount.path / "secretive"
    pod.mkdir()
    recipe = {
        "name": "secretive",
        "golem": {"exec": f'{sys.executable} -c "import os; print(sorted(os.environ))"'},
        "sovr": {"golem": {"node": False}},
    }
    (pod / "secretive.recipe").write_text(json.dumps(recipe))
    fd = os.open(pod / ".sovr" / "run", os.O_WRONLY)
    os.close(fd)
    dmount.wait_run("secretive")
    password = user.password.encode()
    texts = [
        (pod / ".sovr" / "status").read_bytes(),
        (pod / ".sovr" / "log").read_bytes(),
        (dmount.path / ".sovr" / "status.json").read_bytes(),
        dmount.log().encode(),
        dmount.cli("status").stdout.encode(),
        dmount.cli("config", "show").stdout.encode(),
    ]
    for text in texts:
        assert password not in text
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                assert password not in (proc / "cmdline").read_bytes()
            except OSError:
                continue
    # The run's environment does not carry the store's password either.
    assert b"SOVRFS_DFS_PASSWORD" not in (pod / ".sovr" / "log").read_bytes()


# -- faults ------------------------------------------------------------------

#: The request timeout the fault tests give the daemon (seconds).
REQUEST_TIMEOUT = 5
#: How long a call that needs a frozen server may take before the test gives
#: up on it: the timeout, a login retry and the kernel's queueing.
FAILS_WITHIN = 4 * REQUEST_TIMEOUT + 10


def fault_mount(tmp_path: Path, user: DfsUser) -> Mount:
    return make_mount(
        tmp_path,
        "--dfs",
        user.url,
        "--user",
        user.username,
        env={
            "SOVRFS_DFS_PASSWORD": user.password,
            "SOVRFS_DFS_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
        },
    )


def bounded(fn: Callable[[], T], timeout: float = FAILS_WITHIN) -> T:
    """Run a blocking file call in a thread; fail (not hang) if it does not return.

    A call stuck in the kernel cannot be interrupted, so its thread is left
    behind; the daemon's own teardown releases it.
    """
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(fn).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise AssertionError(f"{fn} did not return within {timeout} s") from None
    finally:
        pool.shutdown(wait=False)


def errno_of(fn: Callable[[], object]) -> int:
    def call() -> int:
        try:
            fn()
        except OSError as exc:
            return exc.errno or 0
        return 0

    return bounded(call)


def queue(mount: Mount) -> dict[str, Any]:
    status: dict[str, Any] = mount.status()["store"]["upload_queue"]
    return status


def drained(mount: Mount, timeout: float) -> None:
    wait_until(lambda: queue(mount)["files"] == 0, timeout=timeout)


def failing_upload(mount: Mount) -> dict[str, Any]:
    """The queue once an upload has failed and is waiting for its retry."""
    waiting: dict[str, Any] = wait_until(
        lambda: (q := queue(mount))["retries"] >= 1 and q["last_error"] and q,
        timeout=FAILS_WITHIN,
    )
    return waiting


def open_for_writing(pod: Path, names: list[str]) -> list[BinaryIO]:
    """Create the files while the server answers; their content comes later."""
    return [open(pod / name, "wb") for name in names]


def test_frozen_server_keeps_the_cache_and_queues_uploads(
    tmp_path: Path, user: DfsUser, dfs_faults: DfsServer
) -> None:
    mount = fault_mount(tmp_path, user)
    mount.start()
    try:
        pod = mount.path / "frozen"
        pod.mkdir()
        (pod / "cached.txt").write_text("read me while the server sleeps")
        drained(mount, timeout=60)
        assert (pod / "cached.txt").read_text() == "read me while the server sleeps"
        contents = {f"q{i}": os.urandom(10_000 + i) for i in range(4)}
        handles = open_for_writing(pod, list(contents))

        dfs_faults.pause()
        try:
            for fh, data in zip(handles, contents.values(), strict=True):
                fh.write(data)
                fh.close()
            # Cached files stay readable, the queue shows what waits and why.
            text = bounded(lambda: (pod / "cached.txt").read_text())
            assert text == "read me while the server sleeps"
            assert bounded(lambda: (pod / "q0").read_bytes()) == contents["q0"]
            waiting = failing_upload(mount)
            assert waiting["files"] == len(contents)
            assert waiting["bytes"] == sum(len(d) for d in contents.values())
            assert waiting["last_error"]
            # What needs the server fails with EIO instead of hanging.
            assert errno_of(lambda: (mount.path / "new-pod").mkdir()) == errno.EIO
            # Long after the listings' lifetime, cached files are still there.
            text = bounded(lambda: (pod / "cached.txt").read_text())
            assert text == "read me while the server sleeps"
            assert bounded(lambda: (pod / "q1").read_bytes()) == contents["q1"]
            assert queue(mount)["files"] == len(contents)
        finally:
            dfs_faults.resume()

        drained(mount, timeout=120)
        assert queue(mount)["last_error"] is None
        for name, data in contents.items():
            assert server_file(user, "frozen", f"/{name}") == data
        mount.umount()
    finally:
        mount.stop()


def signup_again(user: DfsUser) -> None:
    """Sign the same user up on a server that lost it: same name, same password."""
    response = httpx.post(
        user.url + "/v2/user/signup",
        json={"userName": user.username, "password": user.password},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    token = response.json()["accessToken"]
    httpx.post(
        user.url + "/v1/user/logout", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_server_restart_logs_in_again_and_uploads_the_queue(
    tmp_path: Path, user: DfsUser, dfs_faults: DfsServer
) -> None:
    mount = fault_mount(tmp_path, user)
    mount.start()
    try:
        pod = mount.path / "again"
        pod.mkdir()
        (pod / "before.txt").write_text("uploaded before the restart")
        drained(mount, timeout=60)
        data = os.urandom(50_000)
        (fh,) = open_for_writing(pod, ["after.bin"])

        dfs_faults.stop()
        fh.write(data)
        fh.close()
        waiting = failing_upload(mount)
        assert waiting["files"] == 1 and waiting["bytes"] == len(data)
        # The copy is still readable while the server is gone.
        assert bounded(lambda: (pod / "after.bin").read_bytes()) == data

        dfs_faults.start()
        signup_again(user)
        # The new server has no pod: made again through the mount (a new login).
        bounded(lambda: mount.cli("refresh", "again", check=False))
        wait_until(lambda: "again" not in os.listdir(mount.path), timeout=FAILS_WITHIN)
        bounded(lambda: pod.mkdir())
        drained(mount, timeout=120)
        assert server_file(user, "again", "/after.bin") == data
        assert (pod / "after.bin").read_bytes() == data
        mount.umount()
    finally:
        mount.stop()


#: The writer of the kill -9 test: writes, fsyncs and closes files in a loop
#: and records each name only after its fsync returned.
WRITER = """
import hashlib, os, sys
pod, ack, prefix = sys.argv[1:4]
with open(ack, "a") as log:
    for i in range(100_000):
        name = f"{prefix}-{i}"
        data = hashlib.sha256(name.encode()).digest() * (1 + i % 50)
        try:
            fd = os.open(os.path.join(pod, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.fsync(fd)
        except OSError:
            sys.exit(0)
        log.write(name + "\\n")
        log.flush()
        try:
            os.close(fd)
        except OSError:
            sys.exit(0)
"""


def expected_bytes(name: str) -> bytes:
    i = int(name.rsplit("-", 1)[1])
    return hashlib.sha256(name.encode()).digest() * (1 + i % 50)


def test_kill_9_while_writing_loses_no_fsynced_file(tmp_path: Path, user: DfsUser) -> None:
    mount = dfs_mount(tmp_path, user)
    ack = tmp_path / "acknowledged.txt"
    rng = random.Random()
    mount.start()
    try:
        (mount.path / "crashy").mkdir()
        for round_ in range(3):
            if round_:
                mount.remount()
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(mount.path / "crashy"), str(ack), f"r{round_}"]
            )
            try:
                # This round's writer must have had a file acknowledged first.
                tag = f"r{round_}-"
                wait_until(lambda tag=tag: ack.exists() and tag in ack.read_text(), timeout=60)
                time.sleep(rng.uniform(0.1, 2.0))
                mount.kill()
                writer.wait(timeout=60)
            finally:
                if writer.poll() is None:
                    writer.kill()
                    writer.wait(timeout=10)
        mount.remount()
        names = ack.read_text().split()
        assert {n.split("-")[0] for n in names} == {"r0", "r1", "r2"}
        drained(mount, timeout=120)
        for name in names:
            assert server_file(user, "crashy", f"/{name}") == expected_bytes(name), name
        mount.umount()
    finally:
        mount.stop()
