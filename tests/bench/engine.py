"""What only sovrfs has: how fast a run starts, and the daemon's memory.

Run latency is measured from just before the ``open()`` of ``.sovr/run`` to

- *start*: the moment the exec itself runs, which the exec writes down
  (``sh -c 'date +%s.%N > output/t'``; the shell's own start-up counts
  against sovrfs, so the figure errs high);
- *succeeded*: the ``finished_at`` the daemon records for a ``/bin/true``
  run (millisecond precision), so the bench's polling interval does not
  inflate it.

Memory is the daemon's peak resident set (``VmHWM``) after it served a pod of
many small files: a full ``find`` and ``ls -lR`` through the mount (which
makes the kernel hold an inode, and the daemon a node, for every file) and a
few runs of the pod.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .targets import QuietMount, start_sovrfs
from .workloads import Stopwatch, drop_caches

FINISHED = ("succeeded", "failed", "cancelled", "interrupted")
RUN_TIMEOUT = 60.0
POLL = 0.01


def make_compute_pod(pod: Path, exec_: str) -> None:
    """A compute pod (in the mount or straight in the store) running ``exec_``."""
    pod.mkdir(parents=True, exist_ok=True)
    (pod / "output").mkdir(exist_ok=True)
    recipe = {"name": pod.name, "golem": {"exec": exec_}, "sovr": {"golem": {"node": False}}}
    (pod / f"{pod.name}.recipe").write_text(json.dumps(recipe))


def pod_status(pod: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((pod / ".sovr" / "status").read_text())
    return data


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class RunTiming:
    open_returned: float
    started: float | None
    succeeded: float


def one_run(pod: Path, marker: Path | None = None) -> RunTiming:
    """Start a run of ``pod`` and wait for it; seconds from the open to each event."""
    before = pod_status(pod).get("run_id")
    if marker is not None:
        marker.unlink(missing_ok=True)
    t0 = time.time()
    fd = os.open(pod / ".sovr" / "run", os.O_WRONLY)
    opened = time.time()
    os.close(fd)
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        status = pod_status(pod)
        if status.get("run_id") != before and status.get("state") in FINISHED:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"run of {pod.name} did not finish: {status}")
        time.sleep(POLL)
    if status["state"] != "succeeded":
        raise RuntimeError(f"run of {pod.name} ended {status['state']}: {status}")
    started = float(marker.read_text()) - t0 if marker is not None else None
    return RunTiming(opened - t0, started, _epoch(status["finished_at"]) - t0)


def percentile(values: list[float], q: int) -> float:
    """The ``q``-th percentile (inclusive method: within the observed range)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class Latency:
    runs: int
    #: (p50, p95) in seconds.
    open_returned: tuple[float, float]
    to_start: tuple[float, float]
    to_succeeded: tuple[float, float]
    #: Starting the same exec directly with subprocess, for scale.
    direct_spawn: tuple[float, float]
    start_samples: list[float]
    succeeded_samples: list[float]


def _p50_p95(values: list[float]) -> tuple[float, float]:
    return percentile(values, 50), percentile(values, 95)


def direct_spawn(marker: Path, count: int) -> list[float]:
    """How long the exec takes to start when nothing stands in between."""
    out = []
    for _ in range(count):
        t0 = time.time()
        subprocess.run(["sh", "-c", f"date +%s.%N > {marker}"], check=True)
        out.append(float(marker.read_text()) - t0)
    return out


def run_latency(mount: QuietMount, count: int) -> Latency:
    """``count`` timed runs of each kind of pod, after one untimed warm-up run."""
    start_pod = mount.path / f"lat-start-{count}"
    done_pod = mount.path / f"lat-done-{count}"
    make_compute_pod(start_pod, "sh -c 'date +%s.%N > output/t'")
    make_compute_pod(done_pod, "/bin/true")
    # Through the mount, as the exec writes it: removing it in the store
    # behind the kernel's cached entry would make the next write fail.
    marker = start_pod / "output" / "t"
    one_run(start_pod, marker)
    one_run(done_pod)
    starts = [one_run(start_pod, marker) for _ in range(count)]
    dones = [one_run(done_pod) for _ in range(count)]
    spawn = direct_spawn(mount.home / "spawn-t", count)
    to_start = [t.started for t in starts if t.started is not None]
    to_succeeded = [t.succeeded for t in dones]
    return Latency(
        runs=count,
        open_returned=_p50_p95([t.open_returned for t in starts + dones]),
        to_start=_p50_p95(to_start),
        to_succeeded=_p50_p95(to_succeeded),
        direct_spawn=_p50_p95(spawn),
        start_samples=to_start,
        succeeded_samples=to_succeeded,
    )


# -- memory ----------------------------------------------------------------------


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


@dataclass
class Memory:
    files: int
    rss_mounted_mib: float
    hwm_mib: float
    rss_end_mib: float
    find_s: float
    ls_s: float
    plain_find_s: float
    plain_ls_s: float
    run_s: float


def fill_pod(pod: Path, files: int, per_dir: int = 1000) -> None:
    """``files`` files of 512 bytes, ``per_dir`` to a directory, written on the disk."""
    data = b"m" * 512
    for i in range(files):
        if i % per_dir == 0:
            folder = pod / "data" / f"d{i // per_dir:04d}"
            folder.mkdir(parents=True)
        with open(folder / f"f{i:07d}", "wb") as fh:
            fh.write(data)


def _timed_listing(argv: list[str], expect_files: int | None = None) -> float:
    drop_caches()
    with Stopwatch() as sw:
        result = subprocess.run(argv, check=True, capture_output=True)
    if expect_files is not None:
        found = result.stdout.count(b"\n")
        if found < expect_files:
            raise RuntimeError(f"{argv[0]} found {found} files, expected {expect_files}")
    return sw.seconds


def memory(root: Path, files: int, runs: int = 5) -> Memory:
    """Peak daemon memory serving a pod of ``files`` small files."""
    store_pod = root / "store" / "mem"
    make_compute_pod(store_pod, "/bin/true")
    fill_pod(store_pod, files)
    plain_find = _timed_listing(["find", str(store_pod), "-type", "f"], files)
    plain_ls = _timed_listing(["ls", "-lR", str(store_pod)])
    mount = start_sovrfs(root)
    try:
        pid = mount.pid
        rss_mounted = proc_status_kib(pid, "VmRSS")
        pod = mount.path / "mem"
        find = _timed_listing(["find", str(pod), "-type", "f"], files)
        ls = _timed_listing(["ls", "-lR", str(pod)])
        with Stopwatch() as sw:
            for _ in range(runs):
                one_run(pod)
        hwm = proc_status_kib(pid, "VmHWM")
        rss_end = proc_status_kib(pid, "VmRSS")
    finally:
        try:
            mount.umount()
        except Exception as exc:
            print(f"bench: unmounting {mount.path}: {exc}", file=sys.stderr)
            mount.stop()
    return Memory(
        files=files,
        rss_mounted_mib=rss_mounted / 1024,
        hwm_mib=hwm / 1024,
        rss_end_mib=rss_end / 1024,
        find_s=find,
        ls_s=ls,
        plain_find_s=plain_find,
        plain_ls_s=plain_ls,
        run_s=sw.seconds / runs,
    )
