"""Real FUSE mounts for tests: a sovrfs daemon in a subprocess.

The daemon runs as users run it (``python -m sovrfs mount ... -f``), with every
XDG directory inside the test's temporary directory, so tests never touch the
user's own store or state. ``kill()`` sends SIGKILL to test crash recovery;
``remount()`` starts a new daemon on the same store and state.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MOUNT_TIMEOUT = 60.0

#: Lines of a dead daemon's log attached to a failing test's report.
LOG_TAIL_LINES = 120

#: Mounts started by tests, for the failure report below.
_started: weakref.WeakSet[Mount] = weakref.WeakSet()


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


def force_unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)


@dataclass(eq=False)  # compared and hashed by identity (kept in a WeakSet)
class Mount:
    """A running sovrfs mount and the daemon behind it."""

    path: Path
    home: Path
    store_dir: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None
    #: Set when the test itself stops or kills the daemon.
    stopped_on_purpose: bool = False
    #: Run the daemon with ``--debug`` (every request in its log).
    debug: bool = True

    @property
    def state_dir(self) -> Path:
        return self.home / "state" / "sovrfs"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.home),
            XDG_DATA_HOME=str(self.home / "data"),
            XDG_STATE_HOME=str(self.home / "state"),
            XDG_CACHE_HOME=str(self.home / "cache"),
            XDG_CONFIG_HOME=str(self.home / "config"),
            SOVRFS_MOUNTPOINT=str(self.path),
            PYTHONUNBUFFERED="1",
        )
        env.setdefault("SOVRFS_GOLEM_MODE", "off")
        env.update(self.env)
        return env

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        # A mount point left by a killed daemon answers ENOTCONN to stat, so
        # no exist_ok (which stats): the daemon itself cleans it up.
        with contextlib.suppress(FileExistsError):
            self.path.mkdir(parents=True)
        self.log_file = self.home / f"daemon-{int(time.time() * 1000)}.log"
        self.stopped_on_purpose = False
        _started.add(self)
        argv = [sys.executable, "-m", "sovrfs", "mount", str(self.path), "-f"]
        argv += ["--debug"] * self.debug
        argv += ["--store", str(self.store_dir), *self.extra_args]
        with open(self.log_file, "wb") as log_fh:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh,
                env=self.environment(),
            )  # fmt: skip
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mount did not come up:\n{self.log()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            return (self.path / ".sovr" / "status.json").is_file()
        except OSError:  # the dead mount of a killed daemon, until cleaned up
            return False

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file else ""

    def died(self) -> bool:
        """Whether the daemon exited without the test asking it to."""
        return (
            self.proc is not None and self.proc.poll() is not None and not self.stopped_on_purpose
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / ".sovr" / "status.json").read_text())
        return data

    def pod_status(self, pod: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / pod / ".sovr" / "status").read_text())
        return data

    def wait_run(self, pod: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the pod's current run has finished; return its status."""

        def done() -> dict[str, Any] | None:
            st = self.pod_status(pod)
            finished = st.get("state") in ("succeeded", "failed", "cancelled", "interrupted")
            return st if finished else None

        result: dict[str, Any] = wait_until(done, timeout)
        return result

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "sovrfs", *args], capture_output=True, text=True,
            env=self.environment(), timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"sovrfs {' '.join(args)} failed: {result.stderr}{result.stdout}")
        return result

    def umount(self) -> None:
        """Unmount the way users do, and wait for the daemon to exit."""
        self.stopped_on_purpose = True
        result = self.cli("umount", str(self.path), check=False)
        assert result.returncode == 0, result.stderr
        if self.proc is not None:
            self.proc.wait(timeout=60)
            assert self.proc.returncode == 0, f"daemon exit {self.proc.returncode}:\n{self.log()}"

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would, leaving a dead mount point."""
        assert self.proc is not None
        self.stopped_on_purpose = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def remount(self) -> None:
        self.start()

    def stop(self) -> None:
        self.stopped_on_purpose = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        force_unmount(self.path)


def make_mount(tmp_path: Path, *extra_args: str, env: dict[str, str] | None = None) -> Mount:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return Mount(
        path=tmp_path / "mnt",
        home=home,
        store_dir=tmp_path / "store",
        extra_args=list(extra_args),
        env=dict(env or {}),
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the log of any daemon that died under a failing test.

    A daemon that exits on its own leaves only "Transport endpoint is not
    connected" in the test's output; its log says why.
    """
    report: pytest.TestReport = yield
    if report.failed:
        for mount in list(_started):
            if mount.died():
                assert mount.proc is not None
                report.sections.append(
                    (
                        f"sovrfs daemon at {mount.path} exited {mount.proc.returncode}",
                        mount.log_tail(),
                    )
                )
    return report


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Mount]:
    """A fresh embedded store mounted at ``tmp_path/mnt``."""
    mount = make_mount(tmp_path)
    mount.start()
    try:
        yield mount
    finally:
        mount.stop()


@pytest.fixture
def pod(mounted: Mount) -> Path:
    """An empty pod in a fresh mount."""
    path = mounted.path / "pod"
    path.mkdir()
    return path
