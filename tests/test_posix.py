"""POSIX behaviour through a real mount: the contract every pod store keeps.

Each test works in a fresh pod of a mount shared by the module. Features a
store lacks (FairOS-DFS has no symlinks, hard links, xattrs or owners) are
checked to fail cleanly with EOPNOTSUPP/EPERM instead.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.dfs import DfsServer, signup
from tests.support.mount import Mount, make_mount

pytestmark = pytest.mark.mount

_counter = itertools.count()


@pytest.fixture(scope="module", params=["embedded", pytest.param("dfs", marks=pytest.mark.dfs)])
def fs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """A mount of each pod store: the same tests hold for both."""
    tmp = tmp_path_factory.mktemp(f"posix-{request.param}")
    if request.param == "dfs":
        server: DfsServer = request.getfixturevalue("dfs_process")
        if not server.running:
            server.start()
        server.resume()
        user = signup(server.url)
        mount = make_mount(
            tmp,
            "--dfs",
            user.url,
            "--user",
            user.username,
            env={"SOVRFS_DFS_PASSWORD": user.password},
        )
    else:
        mount = make_mount(tmp)
    mount.start()
    try:
        yield mount
    finally:
        mount.stop()


@pytest.fixture
def pod(fs: Mount) -> Path:
    path = fs.path / f"pod{next(_counter)}"
    path.mkdir()
    return path


def has(fs: Mount, feature: str) -> bool:
    return feature in fs.status()["store"].get(
        "features", ["symlink", "hardlink", "xattr", "owner"]
    )


def expect_errno(code: int, fn: object, *args: object) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got {info.value!r}"


# -- files -------------------------------------------------------------------


def test_create_read_write_at_offsets(pod: Path) -> None:
    f = pod / "f"
    f.write_bytes(b"hello world")
    assert f.read_bytes() == b"hello world"
    fd = os.open(f, os.O_RDWR)
    try:
        os.pwrite(fd, b"W", 6)
        os.pwrite(fd, b"!", 20)  # past the end: a hole of zeros
        assert os.pread(fd, 100, 0) == b"hello World" + b"\0" * 9 + b"!"
    finally:
        os.close(fd)
    assert f.stat().st_size == 21


def test_append_goes_to_the_end(pod: Path) -> None:
    f = pod / "log"
    f.write_text("a\n")
    with open(f, "a") as one, open(f, "a") as two:
        one.write("b\n")
        one.flush()
        two.write("c\n")
        two.flush()
    assert f.read_text() == "a\nb\nc\n"


def test_truncate_and_ftruncate(pod: Path) -> None:
    f = pod / "t"
    f.write_bytes(b"0123456789")
    os.truncate(f, 4)
    assert f.read_bytes() == b"0123"
    with open(f, "r+b") as fh:
        fh.truncate(8)
        fh.seek(0)
        assert fh.read() == b"0123\0\0\0\0"
    with open(f, "wb"):
        pass
    assert f.stat().st_size == 0


def test_large_file_round_trip(pod: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    f = pod / "big"
    f.write_bytes(data)
    assert f.read_bytes() == data
    with open(f, "rb") as fh:
        fh.seek(1024 * 1024 + 5)
        assert fh.read(4096) == data[1024 * 1024 + 5 : 1024 * 1024 + 5 + 4096]


def test_unlinked_open_file_stays_readable(pod: Path) -> None:
    f = pod / "gone"
    f.write_bytes(b"still here")
    with open(f, "rb") as fh:
        f.unlink()
        assert not f.exists()
        assert fh.read() == b"still here"
    assert "gone" not in os.listdir(pod)


def test_create_exclusive_and_errors(pod: Path) -> None:
    f = pod / "x"
    f.write_text("1")
    expect_errno(errno.EEXIST, os.open, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    expect_errno(errno.ENOENT, os.open, pod / "missing", os.O_RDONLY)
    expect_errno(errno.ENOENT, os.stat, pod / "no" / "such")
    expect_errno(errno.ENOTDIR, os.stat, f / "child")
    expect_errno(errno.ENOTDIR, os.listdir, f)
    expect_errno(errno.EISDIR, os.open, pod, os.O_WRONLY)
    expect_errno(errno.ENAMETOOLONG, os.open, pod / ("n" * 256), os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.ENOENT, os.unlink, pod / "missing")
    expect_errno(errno.EISDIR, os.unlink, pod)


def test_fsync_and_statfs(pod: Path) -> None:
    f = pod / "durable"
    with open(f, "wb") as fh:
        fh.write(b"x" * 10000)
        fh.flush()
        os.fsync(fh.fileno())
        os.fdatasync(fh.fileno())
    st = os.statvfs(pod)
    assert st.f_bsize > 0 and st.f_blocks > 0 and st.f_namemax == 255


# -- directories -----------------------------------------------------------------


def test_mkdir_rmdir(pod: Path) -> None:
    d = pod / "d"
    d.mkdir()
    expect_errno(errno.EEXIST, os.mkdir, d)
    (d / "f").write_text("x")
    expect_errno(errno.ENOTEMPTY, os.rmdir, d)
    expect_errno(errno.ENOTDIR, os.rmdir, d / "f")
    (d / "f").unlink()
    d.rmdir()
    assert not d.exists()
    expect_errno(errno.ENOENT, os.rmdir, d)
    expect_errno(errno.ENOENT, os.mkdir, pod / "a" / "b")


def test_listing_with_many_entries(pod: Path) -> None:
    names = {f"file-{i:04d}" for i in range(600)}
    for name in names:
        (pod / name).write_text(name)
    listed = set(os.listdir(pod))
    assert listed == names, (sorted(names - listed)[:5], sorted(listed - names)[:5])
    for entry in os.scandir(pod):
        assert entry.stat().st_size == len(entry.name)


def test_rename_files_and_directories(pod: Path) -> None:
    (pod / "a").write_text("A")
    (pod / "b").write_text("B")
    os.rename(pod / "a", pod / "b")  # replaces
    assert (pod / "b").read_text() == "A" and not (pod / "a").exists()
    (pod / "d1" / "sub").mkdir(parents=True)
    (pod / "d1" / "sub" / "f").write_text("deep")
    os.rename(pod / "d1", pod / "d2")
    assert (pod / "d2" / "sub" / "f").read_text() == "deep"
    (pod / "empty").mkdir()
    os.rename(pod / "d2", pod / "empty")  # an empty directory is replaced
    assert (pod / "empty" / "sub" / "f").read_text() == "deep"
    (pod / "full").mkdir()
    (pod / "full" / "x").write_text("x")
    expect_errno(errno.ENOTEMPTY, os.rename, pod / "empty", pod / "full")
    expect_errno(errno.ENOTDIR, os.rename, pod / "empty", pod / "b")
    expect_errno(errno.EISDIR, os.rename, pod / "b", pod / "full")
    os.rename(pod / "b", pod / "empty" / "sub" / "moved")
    assert (pod / "empty" / "sub" / "moved").read_text() == "A"


def test_rename_of_open_file_keeps_handle(pod: Path) -> None:
    f = pod / "open"
    with open(f, "w") as fh:
        fh.write("one ")
        fh.flush()
        os.rename(f, pod / "renamed")
        fh.write("two")
    assert (pod / "renamed").read_text() == "one two"


def test_rename_between_pods_is_exdev(fs: Mount, pod: Path) -> None:
    other = fs.path / f"other{next(_counter)}"
    other.mkdir()
    (pod / "f").write_text("x")
    expect_errno(errno.EXDEV, os.rename, pod / "f", other / "f")
    expect_errno(errno.EXDEV, os.link, pod / "f", other / "f") if has(fs, "hardlink") else None


# -- attributes --------------------------------------------------------------------


def test_chmod_and_utimens(fs: Mount, pod: Path) -> None:
    f = pod / "m"
    f.write_text("x")
    os.chmod(f, 0o640)
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))  # accepted by every store
    if has(fs, "times"):
        assert f.stat().st_mtime_ns == 2_000_000_000
    d = pod / "dir"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o751)
    assert stat.S_IMODE(d.stat().st_mode) == 0o751


def test_chown(fs: Mount, pod: Path) -> None:
    f = pod / "owned"
    f.write_text("x")
    if not has(fs, "owner"):
        expect_errno(errno.EOPNOTSUPP, os.chown, f, 65534, 65534)
        return
    os.chown(f, 65534, 65534)
    st = f.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_mtime_moves_on_write(pod: Path) -> None:
    f = pod / "w"
    f.write_text("1")
    os.utime(f, ns=(0, 0))
    f.write_text("2")
    assert f.stat().st_mtime_ns > 0


# -- links and xattrs ----------------------------------------------------------------


def test_symlinks(fs: Mount, pod: Path) -> None:
    (pod / "target").write_text("t")
    if not has(fs, "symlink"):
        expect_errno(errno.EOPNOTSUPP, os.symlink, "target", pod / "link")
        return
    os.symlink("target", pod / "link")
    assert os.readlink(pod / "link") == "target"
    assert (pod / "link").read_text() == "t"
    assert stat.S_ISLNK(os.lstat(pod / "link").st_mode)
    os.symlink("nowhere", pod / "dangling")
    expect_errno(errno.ENOENT, os.stat, pod / "dangling")
    expect_errno(errno.EEXIST, os.symlink, "x", pod / "link")
    (pod / "link").unlink()
    assert (pod / "target").exists()


def test_hard_links(fs: Mount, pod: Path) -> None:
    a = pod / "a"
    a.write_text("shared")
    if not has(fs, "hardlink"):
        expect_errno(errno.EOPNOTSUPP, os.link, a, pod / "b")
        return
    os.link(a, pod / "b")
    assert a.stat().st_ino == (pod / "b").stat().st_ino
    assert a.stat().st_nlink == 2
    with open(pod / "b", "a") as fh:
        fh.write("!")
    assert a.read_text() == "shared!"
    a.unlink()
    assert (pod / "b").stat().st_nlink == 1
    assert (pod / "b").read_text() == "shared!"
    expect_errno(errno.EPERM, os.link, pod, pod / "dirlink")


def test_user_xattrs(fs: Mount, pod: Path) -> None:
    f = pod / "x"
    f.write_text("x")
    if not has(fs, "xattr"):
        expect_errno(errno.EOPNOTSUPP, os.setxattr, f, "user.k", b"v")
        return
    os.setxattr(f, "user.k", b"v")
    assert os.getxattr(f, "user.k") == b"v"
    assert "user.k" in os.listxattr(f)
    os.removexattr(f, "user.k")
    expect_errno(errno.ENODATA, os.getxattr, f, "user.k")
    expect_errno(errno.ENODATA, os.removexattr, f, "user.k")


# -- pods at the mount root ------------------------------------------------------------


def test_pods_are_root_directories(fs: Mount) -> None:
    name = f"newpod{next(_counter)}"
    (fs.path / name).mkdir()
    assert name in os.listdir(fs.path)
    if fs.status()["store"]["kind"] == "embedded":
        assert (fs.store_dir / name).is_dir()
    os.rename(fs.path / name, fs.path / f"{name}-renamed")
    assert (fs.path / f"{name}-renamed").is_dir() and not (fs.path / name).exists()
    (fs.path / f"{name}-renamed" / "f").write_text("x")
    expect_errno(errno.ENOTEMPTY, os.rmdir, fs.path / f"{name}-renamed")
    (fs.path / f"{name}-renamed" / "f").unlink()
    os.rmdir(fs.path / f"{name}-renamed")
    assert f"{name}-renamed" not in os.listdir(fs.path)


def test_invalid_pod_names(fs: Mount) -> None:
    expect_errno(errno.EINVAL, os.mkdir, fs.path / "-dash")
    expect_errno(errno.EINVAL, os.mkdir, fs.path / "sp ace")
    expect_errno(errno.ENAMETOOLONG, os.mkdir, fs.path / ("p" * 65))
    expect_errno(errno.EACCES, os.open, fs.path / "file", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EEXIST, os.mkdir, fs.path / ".sovr")


def test_rm_r_of_a_pod(fs: Mount) -> None:
    pod = fs.path / f"doomed{next(_counter)}"
    (pod / "a" / "b").mkdir(parents=True)
    (pod / "a" / "b" / "f").write_text("x")
    subprocess.run(["rm", "-r", str(pod)], check=True)
    assert not pod.exists()


# -- real tools --------------------------------------------------------------------------


def test_editor_atomic_save(pod: Path) -> None:
    f = pod / "doc.txt"
    f.write_text("v1")
    tmp = pod / ".doc.txt.swp"
    with open(tmp, "w") as fh:
        fh.write("v2")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, f)
    assert f.read_text() == "v2"
    assert sorted(os.listdir(pod)) == ["doc.txt"]


def test_git_clone_and_commit(pod: Path, tmp_path: Path) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", HOME=str(tmp_path))  # fmt: skip
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["git", "init", "-q", str(src)], check=True, env=env)
    (src / "README").write_text("hello\n")
    subprocess.run(["git", "-C", str(src), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(src), "commit", "-qm", "one"], check=True, env=env)
    subprocess.run(["git", "clone", "-q", str(src), str(pod / "clone")], check=True, env=env)
    (pod / "clone" / "new.txt").write_text("new\n")
    subprocess.run(["git", "-C", str(pod / "clone"), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(pod / "clone"), "commit", "-qm", "two"], check=True, env=env)
    out = subprocess.run(["git", "-C", str(pod / "clone"), "log", "--oneline"], check=True,
                         env=env, capture_output=True, text=True).stdout  # fmt: skip
    assert len(out.splitlines()) == 2
    fsck = subprocess.run(["git", "-C", str(pod / "clone"), "fsck"], env=env, capture_output=True)
    assert fsck.returncode == 0, fsck.stderr


def _tree(root: Path, times: bool = True) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            out[str(p.relative_to(root))] = (
                stat.S_IMODE(st.st_mode),
                st.st_mtime_ns // 10**9 if times else 0,
                data,
            )
    return out


def _sample_tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.txt").write_text("x" * 1000)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    os.chmod(root / "a", 0o750)
    (root / "empty").mkdir()
    for p in [root / "run.sh", root / "a" / "b" / "x.txt"]:
        os.utime(p, (1_600_000_000, 1_600_000_000))


def test_tar_extract_cp_a_rsync_a(fs: Mount, pod: Path, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    _sample_tree(src)
    times = has(fs, "times")
    # Without owners and times in the store, ask the tools for what it keeps.
    keep = [] if has(fs, "owner") else ["--no-same-owner"]
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(tmp_path / "t.tar"), "tree"], check=True)
    subprocess.run(["tar", "-C", str(pod), *keep, "-xf", str(tmp_path / "t.tar")], check=True)
    assert _tree(pod / "tree", times) == _tree(src, times)
    cp_mode = "-a" if has(fs, "owner") else "-r --preserve=mode"
    subprocess.run(["cp", *cp_mode.split(), str(src), str(pod / "cp")], check=True)
    assert _tree(pod / "cp", times) == _tree(src, times)
    rsync_mode = ["-a"] if has(fs, "owner") else ["-rp"]
    subprocess.run(["rsync", *rsync_mode, f"{src}/", f"{pod / 'rs'}/"], check=True)
    assert _tree(pod / "rs", times) == _tree(src, times)


# -- the store behind the mount ----------------------------------------------------------


@contextlib.contextmanager
def other_session(fs: Mount) -> Iterator[httpx.Client]:
    """A FairOS-DFS session of the mount's user that is not the daemon's."""
    args = fs.extra_args
    url, user = args[args.index("--dfs") + 1], args[args.index("--user") + 1]
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post(
            "/v2/user/login", json={"userName": user, "password": fs.env["SOVRFS_DFS_PASSWORD"]}
        )
        assert response.status_code == 200, response.text
        client.headers["Authorization"] = f"Bearer {response.json()['accessToken']}"
        try:
            yield client
        finally:
            client.post("/v1/user/logout")


def outside_upload(other: httpx.Client, pod: str, name: str, data: bytes) -> None:
    response = other.post(
        "/v1/file/upload",
        data={"podName": pod, "dirPath": "/", "blockSize": "1000000", "overwrite": "true"},
        files={"files": (name, data)},
    )
    assert response.status_code == 200, response.text


def outside_delete(other: httpx.Client, pod: str, path: str) -> None:
    response = other.request("DELETE", "/v1/file/delete", json={"podName": pod, "filePath": path})
    assert response.status_code == 200, response.text


def check_outside_changes_after_refresh(fs: Mount, pod: Path) -> None:
    """FairOS-DFS: a change made through another session shows after a refresh.

    The server caches a pod's metadata per session and never tells one
    session what another changed; ``sovrfs refresh POD`` (or a line written
    to ``.sovr/refresh``) is how such changes show.
    """
    f = pod / "ext"
    # fsync uploads at once: the queue may be busy with other tests' files.
    for path, data in ((f, b"before"), (pod / "doomed", b"removed from outside")):
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    assert f.read_text() == "before"
    assert sorted(os.listdir(pod)) == ["doomed", "ext"]

    with other_session(fs) as other:
        outside_upload(other, pod.name, "ext", b"after, and longer")
        outside_upload(other, pod.name, "new-outside", b"n")
        outside_delete(other, pod.name, "/doomed")
    fs.cli("refresh", pod.name)
    assert f.read_text() == "after, and longer"
    assert (pod / "new-outside").read_text() == "n"
    assert sorted(os.listdir(pod)) == ["ext", "new-outside"]
    assert not (pod / "doomed").exists()

    # The root control file does the same.
    with other_session(fs) as other:
        outside_delete(other, pod.name, "/new-outside")
        outside_upload(other, pod.name, "ext", b"third")
    (fs.path / ".sovr" / "refresh").write_text(pod.name + "\n")
    assert sorted(os.listdir(pod)) == ["ext"]
    assert f.read_text() == "third"


def test_outside_changes_show_within_a_second(fs: Mount, pod: Path) -> None:
    if fs.status()["store"]["kind"] == "fairos-dfs":
        check_outside_changes_after_refresh(fs, pod)
        return
    f = pod / "ext"
    f.write_text("before")
    assert f.read_text() == "before"
    backing = fs.store_dir / pod.name / "ext"
    backing.write_text("after, and longer")
    (fs.store_dir / pod.name / "new-outside").write_text("n")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        if f.read_text() == "after, and longer" and (pod / "new-outside").exists():
            break
        time.sleep(0.05)
    assert f.read_text() == "after, and longer"
    assert (pod / "new-outside").read_text() == "n"
    (fs.store_dir / pod.name / "new-outside").unlink()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and "new-outside" in os.listdir(pod):
        time.sleep(0.05)
    assert "new-outside" not in os.listdir(pod)


# -- permissions -----------------------------------------------------------------------


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory other users can traverse (pytest's own are private)."""
    path = Path(tempfile.mkdtemp(prefix="sovrfs-perm-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_permissions_are_checked_for_other_users(open_tmp: Path) -> None:
    """With allow_other, the kernel checks modes (default_permissions) for other users."""
    mount = make_mount(open_tmp, "-o", "allow_other")
    mount.start()
    try:
        os.chmod(mount.home, 0o700)
        pod = mount.path / "perm"
        pod.mkdir()
        os.chmod(pod, 0o755)
        (pod / "private").write_text("secret")
        os.chmod(pod / "private", 0o600)
        (pod / "public").write_text("hello")
        os.chmod(pod / "public", 0o644)
        assert as_nobody("cat", str(pod / "public")).stdout == "hello"
        denied = as_nobody("cat", str(pod / "private"))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        denied = as_nobody("touch", str(pod / "new"))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    finally:
        mount.stop()


def test_mount_is_private_by_default(open_tmp: Path) -> None:
    mount = make_mount(open_tmp)
    mount.start()
    try:
        assert as_nobody("ls", str(open_tmp)).returncode == 0  # the way there is open
        denied = as_nobody("ls", str(mount.path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    finally:
        mount.stop()
