"""Fixtures that run the real FairOS-DFS dev server (``dfs dev``) for the tests.

The dev server keeps everything in memory and always listens on port 9090, so
one server serves the whole session, tests that use it never run in parallel,
and every test signs up a fresh user. Fault tests reach the process through
:class:`DfsServer` (``dfs_process`` fixture): pause/resume freeze it with
SIGSTOP/SIGCONT, stop/restart end it (a restart loses every user and pod).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

PORT = 9090
URL = f"http://127.0.0.1:{PORT}"
REPO = Path(__file__).resolve().parents[2]
VERSION = "v0.10.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
BUILD_TIMEOUT = 1200.0


def binary_path() -> Path:
    """Where ``make dfs-server`` puts the binary (the Makefile's CACHE_HOME rule)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "sovrfs" / f"fairos-dfs-{VERSION}" / "dfs"


def ensure_binary() -> Path:
    path = binary_path()
    if not path.exists():
        subprocess.run(["make", "dfs-server"], cwd=REPO, check=True, timeout=BUILD_TIMEOUT)
    if not path.exists():
        pytest.fail(f"`make dfs-server` did not produce {path}")
    return path


def port_in_use(port: int = PORT) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def healthy(url: str = URL, timeout: float = 2.0) -> bool:
    try:
        response = httpx.get(url + "/", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text.strip() == "OK"


class DfsServer:
    """One ``dfs dev`` process with a private HOME and config file."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.url = URL
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "dfs.log"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if port_in_use():
            pytest.fail(
                f"port {PORT} is already in use; the FairOS-DFS dev server needs it "
                "(stop the other `dfs dev`, e.g. a `make dfs-dev`, and retry)"
            )
        env = dict(os.environ, HOME=str(self.workdir))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "dev", "--config", str(self.workdir / "dfs.yaml")],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not healthy(self.url, timeout=1.0):
            if self.proc.poll() is not None:
                pytest.fail(f"dfs dev exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"dfs dev did not answer within {START_TIMEOUT}s; see {self.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGINT
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop and start again: every user, pod and token is gone afterwards."""
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class DfsUser(NamedTuple):
    url: str
    username: str
    password: str


def signup(url: str = URL) -> DfsUser:
    """Create a fresh user on the server (usernames: lowercase, digits, ``_-``)."""
    user = DfsUser(url, "u" + secrets.token_hex(6), "pw-" + secrets.token_hex(12))
    response = httpx.post(
        url + "/v2/user/signup",
        json={"userName": user.username, "password": user.password},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    # Drop the session signup opened: the code under test logs in itself.
    token = response.json()["accessToken"]
    httpx.post(url + "/v1/user/logout", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return user


@pytest.fixture(scope="session")
def dfs_process() -> Iterator[DfsServer]:
    """The session's dev server process (started on first use, stopped at the end)."""
    binary = ensure_binary()
    with tempfile.TemporaryDirectory(prefix="sovrfs-dfs-") as workdir:
        server = DfsServer(binary, Path(workdir))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def dfs_server(dfs_process: DfsServer) -> str:
    """Base URL of the session's dev server."""
    return dfs_process.url


def _ensure_running(server: DfsServer) -> None:
    if server.running:
        server.resume()
    else:
        server.start()


@pytest.fixture
def dfs_user(dfs_process: DfsServer) -> DfsUser:
    """A freshly signed-up user: ``(url, username, password)``."""
    _ensure_running(dfs_process)
    return signup(dfs_process.url)


@pytest.fixture
def dfs_faults(dfs_process: DfsServer) -> Iterator[DfsServer]:
    """The server process for a fault test; running (and resumed) again afterwards.

    A test that stops or restarts the server loses every user: sign up after
    the restart.
    """
    _ensure_running(dfs_process)
    try:
        yield dfs_process
    finally:
        _ensure_running(dfs_process)
