"""FairOS-DFS through a real mount: crash safety, unmount, status and secrets."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.dfs import DfsServer, DfsUser, signup
from tests.support.mount import Mount, make_mount, wait_until

pytestmark = [pytest.mark.dfs, pytest.mark.mount]


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
