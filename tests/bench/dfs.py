"""FairOS-DFS through sovrfs, against the real dev server (``python -m tests.bench.dfs``).

What it measures, each at two sizes:

* API requests per workload, counted by the daemon's client (``status.json``);
* ``ls -l`` of a directory of many files: requests for a cold listing (a
  refresh, then ``ls -l``) and for a warm one (target: one listing call, then
  none);
* ``cp -r`` of many small files: time until ``cp`` returns (local speed) and
  until the upload queue has drained, against a bare httpx client uploading
  the same files one by one (the server allows one write at a time per pod);
* large-file upload (write + fsync) and cold download through the mount,
  against a bare httpx upload/download of the same bytes (target >= 0.9x).

The report is appended to ``docs/bench-report.rst`` as its own section, so
the benchmark still writes one report file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.bench.runner import checkout
from tests.support.dfs import URL, DfsServer, DfsUser, ensure_binary, healthy, port_in_use, signup
from tests.support.mount import Mount, make_mount, wait_until

REPORT = Path(__file__).resolve().parents[2] / "docs" / "bench-report.rst"


@dataclass
class Result:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, workload: str, size: str, value: str, target: str = "") -> None:
        self.rows.append((workload, size, value, target))
        print(f"{workload:<42} {size:<14} {value:<34} {target}", flush=True)


@contextmanager
def dev_server() -> Iterator[str]:
    """The dev server: the one already answering on :9090, or one started here."""
    if healthy(URL):
        yield URL
        return
    if port_in_use():
        raise SystemExit("port 9090 is taken by something that is not a FairOS-DFS dev server")
    with tempfile.TemporaryDirectory(prefix="sovrfs-bench-dfs-") as work:
        server = DfsServer(ensure_binary(), Path(work))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def requests(mount: Mount) -> dict[str, int]:
    counts: dict[str, int] = mount.status()["store"].get("requests", {})
    return counts


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    keys = set(before) | set(after)
    out = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return {k: v for k, v in sorted(out.items()) if v}


def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def describe(counts: dict[str, int]) -> str:
    return f"{total(counts)} ({', '.join(f'{k} {v}' for k, v in counts.items())})"


def drained(mount: Mount) -> bool:
    return mount.status()["store"]["upload_queue"]["files"] == 0


def refresh(mount: Mount, pod: str) -> None:
    (mount.path / ".sovr" / "refresh").write_text(pod + "\n")


def bare_upload(user: DfsUser, token: str, pod: str, local: Path) -> float:
    with httpx.Client(base_url=user.url, timeout=600) as client, local.open("rb") as fh:
        start = time.perf_counter()
        response = client.post(
            "/v1/file/upload",
            data={"podName": pod, "dirPath": "/", "blockSize": "4000000", "overwrite": "true"},
            files={"files": ("bare-" + local.name, fh)},
            headers={"Authorization": f"Bearer {token}"},
        )
        elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed


def bare_download(user: DfsUser, token: str, pod: str, name: str) -> float:
    with httpx.Client(base_url=user.url, timeout=600) as client:
        start = time.perf_counter()
        with client.stream(
            "GET",
            "/v1/file/download",
            params={"podName": pod, "filePath": "/" + name},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            response.raise_for_status()
            for _ in response.iter_bytes(1 << 20):
                pass
        return time.perf_counter() - start


def login(user: DfsUser) -> str:
    response = httpx.post(
        user.url + "/v2/user/login",
        json={"userName": user.username, "password": user.password},
        timeout=30,
    )
    response.raise_for_status()
    token: str = response.json()["accessToken"]
    return token


def bench_listing(mount: Mount, result: Result, files: int) -> None:
    pod = f"ls{files}"
    (mount.path / pod).mkdir()
    for i in range(files):
        (mount.path / pod / f"f{i:05d}").write_bytes(b"x" * 100)
    wait_until(lambda: drained(mount), timeout=1800, interval=0.5)
    # The refresh itself already asks the server again (it closes the pod
    # and re-reads its root), so the cold count spans refresh and listing.
    before = requests(mount)
    refresh(mount, pod)
    listing = subprocess.run(["ls", "-l", str(mount.path / pod)], capture_output=True, check=True)
    assert listing.stdout.count(b"\n") >= files
    cold = delta(before, requests(mount))
    before = requests(mount)
    subprocess.run(["ls", "-l", str(mount.path / pod)], capture_output=True, check=True)
    warm = delta(before, requests(mount))
    listing_calls = cold.get("GET /v1/dir/ls", 0)
    result.add("refresh + ls -l (cold): requests", f"{files} files", describe(cold),
               "met" if listing_calls == 1 else f"not met ({listing_calls} listings)")  # fmt: skip
    result.add("ls -l again (warm): requests", f"{files} files", describe(warm),
               "met" if total(warm) == 0 else "not met")  # fmt: skip


def bare_small_uploads(user: DfsUser, token: str, pod: str, src: Path) -> float:
    """Seconds for a minimal client to upload ``src``'s files one by one."""
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=user.url, timeout=600, headers=auth) as client:
        start = time.perf_counter()
        client.post("/v1/dir/mkdir", json={"podName": pod, "dirPath": "/bare"}).raise_for_status()
        for path in sorted(src.iterdir()):
            client.post(
                "/v1/file/upload",
                data={"podName": pod, "dirPath": "/bare", "blockSize": "1000000"},
                files={"files": (path.name, path.read_bytes())},
            ).raise_for_status()
        return time.perf_counter() - start


def bench_small_files(mount: Mount, user: DfsUser, result: Result, files: int, tmp: Path) -> None:
    src = tmp / f"small{files}"
    src.mkdir()
    for i in range(files):
        (src / f"s{i:05d}.txt").write_bytes(os.urandom(2048))
    pod = f"cp{files}"
    (mount.path / pod).mkdir()
    before = requests(mount)
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(mount.path / pod / "tree")], check=True)
    returned = time.perf_counter() - start
    wait_until(lambda: drained(mount), timeout=1800, interval=0.2)
    drained_at = time.perf_counter() - start
    counts = delta(before, requests(mount))
    local = tmp / f"local{files}"
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(local)], check=True)
    plain = time.perf_counter() - start
    bare = bare_small_uploads(user, login(user), pod, src)
    result.add("cp -r small files: cp returns", f"{files} x 2 KiB",
               f"{returned:.2f} s (plain disk {plain:.2f} s)")  # fmt: skip
    ratio = bare / drained_at
    result.add("cp -r small files: queue drained", f"{files} x 2 KiB",
               f"{drained_at:.1f} s vs bare httpx {bare:.1f} s = {ratio:.2f}x")  # fmt: skip
    result.add("cp -r small files: requests", f"{files} x 2 KiB",
               f"{describe(counts)}; {total(counts) / files:.1f} per file")  # fmt: skip


def bench_throughput(mount: Mount, user: DfsUser, result: Result, mib: int, tmp: Path) -> None:
    pod = f"big{mib}"
    (mount.path / pod).mkdir()
    local = tmp / f"big{mib}.bin"
    local.write_bytes(os.urandom(mib << 20))
    wait_until(lambda: drained(mount), timeout=600, interval=0.2)
    start = time.perf_counter()
    with open(local, "rb") as src, open(mount.path / pod / local.name, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    up = time.perf_counter() - start
    token = login(user)
    bare_up = bare_upload(user, token, pod, local)
    refresh(mount, pod)
    # Reading through the mount downloads the whole file into the cache first.
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    start = time.perf_counter()
    with open(mount.path / pod / local.name, "rb") as fh:
        while fh.read(1 << 20):
            pass
    down = time.perf_counter() - start
    bare_down = bare_download(user, token, pod, local.name)
    up_ratio = bare_up / up
    down_ratio = bare_down / down
    result.add("upload (write + fsync) vs bare httpx", f"{mib} MiB",
               f"{mib / up:.1f} vs {mib / bare_up:.1f} MiB/s = {up_ratio:.2f}x",
               "met" if up_ratio >= 0.9 else "not met")  # fmt: skip
    result.add("cold download (read) vs bare httpx", f"{mib} MiB",
               f"{mib / down:.1f} vs {mib / bare_down:.1f} MiB/s = {down_ratio:.2f}x",
               "met" if down_ratio >= 0.9 else "not met")  # fmt: skip


def rst(result: Result, quick: bool) -> str:
    from sovrfs import __version__

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "",
        "FairOS-DFS through the mount",
        "----------------------------",
        "",
        "Against the real FairOS-DFS dev server (in-memory, on this machine), "
        "measured by ``python -m tests.bench.dfs"
        + (" --quick" if quick else "")
        + "`` (part of ``make bench``). Request counts come from the daemon's own "
        "client counters in ``.sovr/status.json``.",
        "",
        f":measured: {when}, sovrfs {__version__}, {checkout()}",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - workload",
        "     - size",
        "     - measured",
        "     - target",
    ]
    for row in result.rows:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell or ' '}" for cell in row[1:])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.dfs")
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--no-report", action="store_true", help="do not touch the report")
    args = parser.parse_args(argv)
    listing_sizes = (100, 300) if args.quick else (300, 1000)
    small_sizes = (30, 100) if args.quick else (100, 300)
    big_sizes = (8, 32) if args.quick else (32, 128)
    result = Result()
    with dev_server() as url, tempfile.TemporaryDirectory(prefix="sovrfs-bench-dfs-") as work:
        tmp = Path(work)
        user = signup(url)
        mount = make_mount(
            tmp,
            "--dfs",
            url,
            "--user",
            user.username,
            env={"SOVRFS_DFS_PASSWORD": user.password, "SOVRFS_DFS_ATTR_TTL": "30"},
        )
        mount.start()
        try:
            for files in listing_sizes:
                bench_listing(mount, result, files)
            for files in small_sizes:
                bench_small_files(mount, user, result, files, tmp)
            for mib in big_sizes:
                bench_throughput(mount, user, result, mib, tmp)
        finally:
            mount.stop()
    if not args.no_report and REPORT.exists():
        REPORT.write_text(REPORT.read_text().rstrip("\n") + "\n" + rst(result, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
