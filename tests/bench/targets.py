"""The file systems a benchmark compares, each giving a work directory.

Every target keeps its files on the same disk, below one bench directory, so
the differences measured are those of the layers in between:

- ``sovrfs``: a sovrfs daemon on an embedded store, working inside one pod;
- ``plain``: a directory on the disk itself, no FUSE at all;
- ``bindfs``: bindfs mirroring a plain directory, the thinnest FUSE layer;
- ``rclone``: ``rclone mount --vfs-cache-mode writes`` of a local directory,
  a FUSE file system that keeps its own cache, as sovrfs does for FairOS-DFS.

The sovrfs daemon runs as users run it: without ``--debug`` (the test mounts
log every request, which costs time a user never pays).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.mount import MOUNT_TIMEOUT, Mount, force_unmount, make_mount

#: Target names, in the order of every table and plot.
TARGETS = ("sovrfs", "plain", "bindfs", "rclone")


@dataclass(eq=False)
class QuietMount(Mount):
    """A test :class:`Mount` whose daemon logs only what a user would see."""

    debug: bool = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def start_sovrfs(root: Path) -> QuietMount:
    """A sovrfs daemon on a fresh embedded store below ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    base = make_mount(root)
    mount = QuietMount(base.path, base.home, base.store_dir)
    mount.start()
    return mount


def wait_mounted(path: Path, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(path):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not mount {path}:\n{log.read_text()}")
        time.sleep(0.05)


def stop_fuse(path: Path, proc: subprocess.Popen[bytes] | None) -> None:
    """Unmount a FUSE file system the way users do, and wait for its process."""
    result = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, check=False)
    if result.returncode != 0:
        force_unmount(path)
    if proc is not None:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Target:
    """One file system under test and the directory the workloads use in it."""

    name: str
    workdir: Path
    #: The directory on the disk that holds this target's files.
    backing: Path
    mount: QuietMount | None = None
    proc: subprocess.Popen[bytes] | None = None
    mountpoint: Path | None = None
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.mount is not None:
            self.mount.umount()
        elif self.mountpoint is not None:
            stop_fuse(self.mountpoint, self.proc)


def open_sovrfs(root: Path) -> Target:
    mount = start_sovrfs(root / "sovrfs")
    pod = mount.path / "bench"
    pod.mkdir()
    return Target("sovrfs", pod, mount.store_dir / "bench", mount=mount)


def open_plain(root: Path) -> Target:
    workdir = root / "plain" / "bench"
    workdir.mkdir(parents=True)
    return Target("plain", workdir, workdir)


def open_bindfs(root: Path) -> Target:
    src, dst = root / "bindfs" / "src", root / "bindfs" / "mnt"
    src.mkdir(parents=True)
    dst.mkdir()
    log = root / "bindfs" / "bindfs.log"
    with open(log, "wb") as log_fh:
        # -f keeps bindfs in the foreground, so it is our child to wait for.
        proc = subprocess.Popen(
            ["bindfs", "-f", str(src), str(dst)],
            stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh,
        )  # fmt: skip
    wait_mounted(dst, proc, "bindfs", log)
    return Target("bindfs", dst, src, proc=proc, mountpoint=dst)


def open_rclone(root: Path) -> Target:
    base = root / "rclone"
    src, dst, cache = base / "src", base / "mnt", base / "cache"
    for path in (src, dst, cache):
        path.mkdir(parents=True)
    log = base / "rclone.log"
    argv = [
        "rclone", "mount", str(src), str(dst), "--vfs-cache-mode", "writes",
        "--cache-dir", str(cache), "--log-file", str(log),
    ]  # fmt: skip
    # A local path is a remote of its own; an empty config file keeps the
    # user's rclone.conf out of the measurement.
    env = dict(os.environ, RCLONE_CONFIG=str(base / "rclone.conf"))
    (base / "rclone.conf").write_text("")
    with open(base / "rclone.out", "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    wait_mounted(dst, proc, "rclone", base / "rclone.out")
    return Target("rclone", dst, src, proc=proc, mountpoint=dst)


OPENERS = {"sovrfs": open_sovrfs, "plain": open_plain, "bindfs": open_bindfs, "rclone": open_rclone}


@contextlib.contextmanager
def open_targets(root: Path, names: tuple[str, ...] = TARGETS) -> Iterator[list[Target]]:
    """Mount every target below ``root``; unmount them all on the way out."""
    targets: list[Target] = []
    try:
        for name in names:
            targets.append(OPENERS[name](root))
        yield targets
    finally:
        for target in reversed(targets):
            try:
                target.stop()
            except Exception as exc:  # one stuck mount must not keep the others
                print(f"bench: stopping {target.name}: {exc}", file=sys.stderr)
                if target.mount is not None:
                    target.mount.stop()


def remove_tree(path: Path) -> str | None:
    """Delete a work tree between samples (not timed); say if some of it stayed."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return None
    left = sum(len(files) + len(dirs) for _, dirs, files in os.walk(path))
    return f"{path} could not be removed ({left} entries left in it)"
