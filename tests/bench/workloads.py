"""The file workloads, the same code on every target.

Each workload works in a fresh directory below the target's work directory
and writes what each of its phases measured into the ``phases`` dict it is
given, phase by phase, so that when a phase fails (a workload raises) the
phases before it still count and the failed one is the first one missing.
Phases that measure the file system rather than the kernel's caches start
from cold caches: dirty pages are written out and the page, dentry and inode
caches dropped first (root only; as another user the caches stay warm, and
the report says so).
"""

from __future__ import annotations

import os
import random
import subprocess
import sysconfig
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
CHUNK = MiB

#: The Python standard library the tree workloads are cut from (the one this
#: Python runs on): real source files of every size in a real layout.
STDLIB = Path(sysconfig.get_paths()["stdlib"])
#: Stdlib packages for the smaller tree.
SMALL_TREE_PACKAGES = (
    "asyncio", "concurrent", "ctypes", "email", "html", "http", "importlib", "json",
    "logging", "multiprocessing", "sqlite3", "unittest", "urllib", "xml", "xmlrpc",
)  # fmt: skip
#: Left out of the larger tree: installed packages and compiled objects are
#: not a source tree, and the test suite would make the bench too long.
TREE_EXCLUDES = ("site-packages", "test", "lib-dynload", "__pycache__")


#: The phases of each workload, in order.
PHASES = {
    "sequential": ("write", "read"),
    "small files": ("create", "stat", "read", "delete"),
    "source tree": ("extract", "git", "rm"),
}


class WorkloadError(Exception):
    """A workload step failed on a target (a command exited non-zero, bad data)."""


def can_drop_caches() -> bool:
    return os.geteuid() == 0


def drop_caches() -> None:
    """Write dirty pages out and forget cached pages, dentries and inodes."""
    os.sync()
    if can_drop_caches():
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


# -- 1. one large file -----------------------------------------------------------


def sequential(base: Path, size_mib: int, phases: dict[str, float]) -> None:
    """Write ``size_mib`` MiB in 1 MiB writes and fsync, then read it back cold.

    Measures MB/s (10**6 bytes per second) for ``write`` and ``read``.
    """
    path = base / "large.bin"
    block = os.urandom(CHUNK)
    with Stopwatch() as write:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(size_mib):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
    megabytes = size_mib * MiB / 1e6
    phases["write"] = megabytes / write.seconds
    drop_caches()
    total = 0
    with Stopwatch() as read:
        fd = os.open(path, os.O_RDONLY)
        try:
            while chunk := os.read(fd, CHUNK):
                total += len(chunk)
        finally:
            os.close(fd)
    if total != size_mib * MiB:
        raise WorkloadError(f"read back {total} bytes of {size_mib * MiB}")
    phases["read"] = megabytes / read.seconds
    os.unlink(path)


# -- 2. many small files ---------------------------------------------------------


def small_files(base: Path, count: int, phases: dict[str, float], seed: int = 1) -> None:
    """Create, stat, read and delete ``count`` files of 1-4 KiB in one directory."""
    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.randint(1024, 4096)) for _ in range(count)]
    root = base / "small"
    root.mkdir()
    names = [str(root / f"f{i:06d}.dat") for i in range(count)]
    with Stopwatch() as sw:
        for name, data in zip(names, payloads, strict=True):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)
    phases["create"] = sw.seconds
    drop_caches()
    with Stopwatch() as sw:
        for name in names:
            os.stat(name)
    phases["stat"] = sw.seconds
    drop_caches()
    read_bytes = 0
    with Stopwatch() as sw:
        for name in names:
            fd = os.open(name, os.O_RDONLY)
            read_bytes += len(os.read(fd, 8192))
            os.close(fd)
    if read_bytes != sum(map(len, payloads)):
        raise WorkloadError(f"read back {read_bytes} bytes of {sum(map(len, payloads))}")
    phases["read"] = sw.seconds
    drop_caches()
    with Stopwatch() as sw:
        for name in names:
            os.unlink(name)
    phases["delete"] = sw.seconds
    os.rmdir(root)


# -- 3-5. a source tree: extract, commit, remove ------------------------------------


@dataclass(frozen=True)
class Tarball:
    path: Path
    files: int
    megabytes: float


def make_tarball(dest: Path, packages: tuple[str, ...] | None) -> Tarball:
    """Pack the stdlib (or only ``packages`` of it) into ``dest``, once per bench."""
    files = 0
    size = 0

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        nonlocal files, size
        parts = Path(info.name).parts
        if any(p in TREE_EXCLUDES or p.startswith("config-") for p in parts):
            return None
        if info.isfile():
            files += 1
            size += info.size
        return info

    with tarfile.open(dest, "w") as tar:
        if packages is None:
            tar.add(STDLIB, arcname="stdlib", filter=keep)
        else:
            for name in packages:
                tar.add(STDLIB / name, arcname=f"stdlib/{name}", filter=keep)
    return Tarball(dest, files, size / 1e6)


GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _sh(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        said = result.stderr.strip().splitlines()
        raise WorkloadError(
            f"{' '.join(argv[:3])} exited {result.returncode}: {said[-1] if said else ''}"
        )


def source_tree(base: Path, tarball: Tarball, home: Path, phases: dict[str, float]) -> None:
    """``tar -xf``, then ``git init; git add -A; git commit``, then ``rm -r``."""
    root = base / "tree"
    root.mkdir()
    # A home of its own keeps the user's git configuration out of it.
    env = dict(os.environ, HOME=str(home), **GIT_ENV)
    with Stopwatch() as sw:
        _sh(["tar", "-xf", str(tarball.path)], root)
    phases["extract"] = sw.seconds
    tree = root / "stdlib"
    with Stopwatch() as sw:
        _sh(["git", "init", "-q"], tree, env)
        _sh(["git", "add", "-A"], tree, env)
        _sh(["git", "commit", "-q", "-m", "bench"], tree, env)
    phases["git"] = sw.seconds
    with Stopwatch() as sw:
        _sh(["rm", "-r", str(root)], base)
    phases["rm"] = sw.seconds


#: A workload bound to its size: ``fn(work_dir, phases)``.
Workload = Callable[[Path, dict[str, float]], None]
