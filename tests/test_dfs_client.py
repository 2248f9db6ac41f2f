"""The FairOS-DFS client against the real dev server, and what the server really does.

Tests named ``test_server_*`` record a fact about the server that its source
only suggested (the UNCONFIRMED items of the API notes); the verdicts are
listed in ``docs/fairos-dfs.rst``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import httpx
import pytest

from sovrfs.errors import (
    AlreadyExists,
    InvalidName,
    NameTooLong,
    NotFound,
    PermissionDenied,
    PodStoreError,
    ReadOnly,
)
from sovrfs.store.dfs_api import DfsClient, DfsServerError, check_sharing_ref, store_error
from tests.support.dfs import DfsUser, signup

pytestmark = pytest.mark.dfs


@pytest.fixture
async def client(dfs_user: DfsUser) -> object:
    async with DfsClient(dfs_user.url, dfs_user.username, dfs_user.password, timeout=30) as c:
        yield c


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def test_pods_dirs_files_round_trip(client: DfsClient, tmp_path: Path) -> None:
    await client.pod_new("p1")
    assert await client.pod_ls() == (["p1"], [])
    assert len((await client.pod_stat("p1"))["address"]) == 40
    await client.dir_mkdir("p1", "/d")
    await client.dir_chmod("p1", "/d", 0o755)
    await client.file_upload("p1", "/d", "f.txt", _put(tmp_path / "src", b"hello"))
    await client.file_chmod("p1", "/d/f.txt", 0o640)
    [entry] = await client.dir_ls("p1", "/d")
    assert (entry.name, entry.is_dir, entry.size, entry.mode) == ("f.txt", False, 5, 0o640)
    [dentry] = await client.dir_ls("p1", "/")
    assert (dentry.name, dentry.is_dir, dentry.mode) == ("d", True, 0o755)
    assert (await client.file_stat("p1", "/d/f.txt"))["fileSize"] == "5"
    assert (await client.dir_stat("p1", "/d"))["noOfFiles"] == "1"
    assert await client.file_download("p1", "/d/f.txt", tmp_path / "out") == 5
    assert (tmp_path / "out").read_bytes() == b"hello"
    await client.file_rename("p1", "/d/f.txt", "/g.txt")
    await client.dir_rename("p1", "/d", "/e")
    assert [e.name for e in await client.dir_ls("p1", "/")] == ["e", "g.txt"]
    await client.file_delete("p1", "/g.txt")
    await client.dir_rmdir("p1", "/e")
    assert await client.dir_ls("p1", "/") == []
    await client.pod_close("p1")
    await client.pod_close("p1")  # not open any more: still fine
    await client.pod_delete("p1")
    assert await client.pod_ls() == ([], [])
    assert client.requests["POST /v1/file/upload"] == 1


async def test_error_mapping(client: DfsClient, tmp_path: Path) -> None:
    await client.pod_new("p")
    cases = [
        (client.pod_new("p"), AlreadyExists),
        (client.pod_new("x" * 65), NameTooLong),
        (client.dir_ls("nopod", "/"), NotFound),
        (client.dir_ls("p", "/missing"), NotFound),
        (client.dir_mkdir("p", "/a/b"), NotFound),
        (client.file_download("p", "/nofile", tmp_path / "x"), NotFound),
        (client.file_stat("p", "/nofile"), NotFound),
        (client.file_delete("p", "/nofile"), NotFound),
        (client.file_rename("p", "/nofile", "/other"), NotFound),
        (client.dir_mkdir("p", "/" + "d" * 101), NameTooLong),
        (client.pod_delete("nopod"), NotFound),
        (client.pod_share("nopod"), NotFound),
    ]
    for call, cls in cases:
        with pytest.raises(cls) as info:
            await call
        assert isinstance(info.value.__cause__, DfsServerError), info.value
    await client.dir_mkdir("p", "/a")
    with pytest.raises(AlreadyExists):
        await client.dir_mkdir("p", "/a")
    await client.file_upload("p", "/", "f", _put(tmp_path / "f", b"1"))
    await client.file_upload("p", "/", "g", _put(tmp_path / "g", b"2"))
    with pytest.raises(AlreadyExists):
        await client.file_rename("p", "/f", "/g")
    with pytest.raises(InvalidName):
        await client.dir_rmdir("p", "/")


def test_store_error_classifies_by_text() -> None:
    def mapped(status: int, message: str) -> PodStoreError:
        return store_error(DfsServerError("POST", "/x", status, message))

    assert isinstance(mapped(500, "file delete: operation not permitted: read only pod"), ReadOnly)
    assert isinstance(mapped(400, "read only feed"), ReadOnly)
    assert isinstance(mapped(401, "jwt: invalid token"), PermissionDenied)
    assert isinstance(mapped(500, "mkdir: directory not present"), NotFound)
    assert isinstance(mapped(500, "upload: payload size is too large. max"), NameTooLong)
    assert mapped(500, "upload: block size must be between 1").errno == errno.EINVAL
    other = mapped(500, "something unforeseen")
    assert type(other) is PodStoreError and other.errno == errno.EIO


async def test_relogin_after_logout(client: DfsClient) -> None:
    await client.pod_new("p")
    await client.logout()
    # The token is gone; a new request logs in again by itself.
    assert (await client.pod_ls())[0] == ["p"]
    # The server's session is gone but the token still passes: `user not logged-in`.
    stale = client._token
    await client.logout()
    client._token = stale
    assert (await client.pod_ls())[0] == ["p"]
    assert client.requests["POST /v2/user/login"] == 3


async def test_wrong_password_is_permission_denied(dfs_user: DfsUser) -> None:
    with pytest.raises(PermissionDenied):
        async with DfsClient(dfs_user.url, dfs_user.username, "wrong-password-x", timeout=10):
            pass
    with pytest.raises(PermissionDenied):
        async with DfsClient(dfs_user.url, "nosuchuser", "wrong-password-x", timeout=10):
            pass


async def test_no_cookies_are_kept(client: DfsClient) -> None:
    await client.pod_ls()
    assert len(client._http.cookies.jar) == 0


async def test_share_receive_fork(dfs_user: DfsUser, client: DfsClient, tmp_path: Path) -> None:
    await client.pod_new("src")
    await client.file_upload("src", "/", "f", _put(tmp_path / "f", b"shared"))
    ref = await client.pod_share("src")
    assert check_sharing_ref(ref) == ref
    info = await client.pod_receiveinfo(ref)
    assert info["podName"] == "src"
    await client.pod_fork_from_reference(ref, "copy")
    await client.file_download("copy", "/f", tmp_path / "o")
    assert (tmp_path / "o").read_bytes() == b"shared"

    other = signup(dfs_user.url)
    async with DfsClient(other.url, other.username, other.password, timeout=30) as bob:
        await bob.pod_receive(ref)
        assert await bob.pod_ls() == ([], ["src"])
        with pytest.raises(ReadOnly):
            await bob.file_delete("src", "/f")
        await bob.file_download("src", "/f", tmp_path / "b")
        assert (tmp_path / "b").read_bytes() == b"shared"
    with pytest.raises(InvalidName):
        await client.pod_fork_from_reference("not-a-ref", "bad")
    assert "bad" not in (await client.pod_ls())[0]


async def test_large_file_round_trip(client: DfsClient, tmp_path: Path) -> None:
    data = os.urandom(9_500_000)  # several blocks of every block size
    await client.pod_new("p")
    await client.file_upload("p", "/", "big", _put(tmp_path / "big", data), block_size=2_000_000)
    assert await client.file_download("p", "/big", tmp_path / "out") == len(data)
    assert (tmp_path / "out").read_bytes() == data


# -- what the server really does (UNCONFIRMED items of the API notes) --------


async def test_server_rmdir_drops_grandparent_entry(client: DfsClient) -> None:
    """Confirmed: rmdir /a/b removes `b` from `/`, leaves a stale `b` in /a."""
    await client.pod_new("p")
    for path in ("/a", "/a/b", "/b"):
        await client.dir_mkdir("p", path)
    await client.dir_rmdir("p", "/a/b")
    assert [e.name for e in await client.dir_ls("p", "/")] == ["a"]  # /b vanished
    assert await client.dir_ls("p", "/a") == []
    assert (await client.dir_stat("p", "/a"))["noOfDirectories"] == "1"  # stale entry
    with pytest.raises(NotFound):
        await client.dir_rmdir("p", "/a")


async def test_server_rmdir_workaround(client: DfsClient) -> None:
    """Moving the directory to the pod root first makes rmdir correct."""
    await client.pod_new("p")
    for path in ("/a", "/a/b", "/b"):
        await client.dir_mkdir("p", path)
    await client.dir_rename("p", "/a/b", "/tmp-x")
    await client.dir_rmdir("p", "/tmp-x")
    assert [e.name for e in await client.dir_ls("p", "/")] == ["a", "b"]
    assert (await client.dir_stat("p", "/a"))["noOfDirectories"] == "0"
    await client.dir_rmdir("p", "/a")


async def test_server_dir_rename_drops_sibling_named_like_a_subdir(client: DfsClient) -> None:
    """Confirmed: moving /a/b that holds c drops the sibling /a/c from /a's list.

    Deeper levels are unaffected (/a/x survives although /a/b/c/x moves too).
    """
    await client.pod_new("p")
    for path in ("/a", "/a/b", "/a/c", "/a/x", "/a/b/c", "/a/b/c/x"):
        await client.dir_mkdir("p", path)
    await client.dir_rename("p", "/a/b", "/b2")
    assert [e.name for e in await client.dir_ls("p", "/a")] == ["x"]  # /a/c lost
    assert [e.name for e in await client.dir_ls("p", "/b2/c")] == ["x"]


async def test_server_multipart_names(client: DfsClient, tmp_path: Path) -> None:
    """Confirmed: `"` and control characters in a multipart filename arrive as %XX."""
    await client.pod_new("p")
    src = _put(tmp_path / "f", b"x")
    with pytest.raises(InvalidName):
        await client.file_upload("p", "/", 'q"uote', src)
    async with httpx.AsyncClient(base_url=client.url) as raw:
        headers = {"Authorization": f"Bearer {client._token}"}
        for name in ('q"uote', "ctl\x01x"):
            response = await raw.post(
                "/v1/file/upload",
                headers=headers,
                data={"podName": "p", "dirPath": "/", "blockSize": "1000000"},
                files={"files": (name, b"x")},
            )
            assert response.status_code == 200
    names = [e.name for e in await client.dir_ls("p", "/")]
    assert names == ["ctl%01x", "q%22uote"]
    # file/rename carries the exact name in JSON.
    await client.file_upload("p", "/", "plain", src)
    await client.file_rename("p", "/plain", '/we"ird\x01\\')
    assert 'we"ird\x01\\' in [e.name for e in await client.dir_ls("p", "/")]


async def test_server_same_second_updates_do_not_fail(client: DfsClient, tmp_path: Path) -> None:
    """The dev server's mock Bee never answers `chunk already exists`: rapid
    overwrites of one file in one second all succeed and the last one wins."""
    await client.pod_new("p")
    for i in range(6):
        await client.file_upload("p", "/", "f", _put(tmp_path / "f", b"v%d" % i))
    await client.file_download("p", "/f", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"v5"


async def test_server_update_across_blocks(client: DfsClient, tmp_path: Path) -> None:
    """Confirmed: file/update rewrites a range that crosses a block boundary."""
    data = os.urandom(2_500_000)
    await client.pod_new("p")
    await client.file_upload("p", "/", "big", _put(tmp_path / "big", data))
    patch = b"Z" * 300_000
    response = await client._send(
        "POST",
        "/v1/file/update",
        content=_multipart_update("p", "/big", 900_000, patch),
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
        pod="p",
    )
    assert response["Responses"][0]["message"] == "updated successfully"
    await client.file_download("p", "/big", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data[:900_000] + patch + data[1_200_000:]


def _multipart_update(pod: str, path: str, offset: int, data: bytes) -> bytes:
    parts = [
        f'--b0undary\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in (("podName", pod), ("filePath", path), ("offset", str(offset)))
    ]
    parts.append(
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        + data
        + b"\r\n--b0undary--\r\n"
    )
    return b"".join(parts)


async def test_server_metadata_size_limit(client: DfsClient, tmp_path: Path) -> None:
    """Confirmed: a file's path and name must fit about 4 KB of metadata; beyond
    that the upload fails with `payload size is too large` (NameTooLong)."""
    await client.pod_new("p")
    src = _put(tmp_path / "f", b"x")
    path = ""
    for level in range(40):
        path += "/" + f"d{level:02d}" + "x" * 97
        await client.dir_mkdir("p", path)
        try:
            await client.file_upload("p", path, "f" * 200, src)
        except NameTooLong:
            break
    else:
        pytest.fail("no metadata limit found")
    assert 3000 < len(path) + 200 < 4096


async def test_server_delete_user_wrong_password(client: DfsClient) -> None:
    """Settled: deleting a user with a wrong password answers 500 (not 400)."""
    with pytest.raises(PodStoreError) as info:
        await client._send("DELETE", "/v2/user/delete", json={"password": "wrong-password-x"})
    cause = info.value.__cause__
    assert isinstance(cause, DfsServerError) and cause.status == 500


async def test_server_ls_of_a_file_path_drops_the_connection(
    client: DfsClient, tmp_path: Path
) -> None:
    """Found: dir/ls with a file's path gets no answer at all (the handler panics
    and the connection is closed), so callers must know the kind first."""
    await client.pod_new("p")
    await client.file_upload("p", "/", "f", _put(tmp_path / "f", b"x"))
    async with httpx.AsyncClient(base_url=client.url) as raw:
        with pytest.raises(httpx.RemoteProtocolError):
            await raw.get(
                "/v1/dir/ls",
                params={"podName": "p", "dirPath": "/f"},
                headers={"Authorization": f"Bearer {client._token}"},
            )
        assert (await raw.get("/")).text.strip() == "OK"
