"""Fixtures around the real yagna binary, offline.

yagna only opens its REST API without the internet when its relay address is
on loopback, so every yagna here gets ``YA_NET_RELAY_HOST`` and
``YA_NET_BIND_URL`` on 127.0.0.1 and ports of its own. The chain stand-in
(:mod:`tests.support.golem_chain`) answers the Ethereum calls yagna makes
before it grants a budget allocation, and the gftp stand-in
(:mod:`tests.support.golem_gftp`) is what yapapi starts for every job.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sovrfs.golem import GolemService
from sovrfs.golem.yagna import yagna_binary

from . import golem_gftp
from .golem_chain import ChainStandIn, chain_stand_in

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def offline_env(data_dir: Path, api_port: int, gsb_port: int) -> dict[str, str]:
    """The environment of a yagna that stays on loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YAGNA_", "GSB_", "YA_NET"))}
    env.update(
        YAGNA_DATADIR=str(data_dir),
        YAGNA_API_URL=f"http://127.0.0.1:{api_port}",
        GSB_URL=f"tcp://127.0.0.1:{gsb_port}",
        YA_NET_RELAY_HOST=f"127.0.0.1:{free_port()}",
        YA_NET_BIND_URL="udp://127.0.0.1:0",
    )
    return env


def me_status(api_url: str, key: str) -> int:
    """HTTP status of GET /me, 0 if nothing answers."""
    request = urllib.request.Request(api_url + "/me", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def yagna_pids(data_dir: Path) -> list[int]:
    """Every live yagna process working on ``data_dir``."""
    mine = f"YAGNA_DATADIR={data_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if b"yagna" in cmdline.split(b"\0")[0] and mine in environ and ") Z" not in stat:
            pids.append(int(entry.name))
    return pids


@dataclass
class ExternalYagna:
    """A yagna started by hand, as a user would run one."""

    api_url: str
    gsb_url: str
    app_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]


@pytest.fixture
def yagna_path() -> str:
    path = yagna_binary()
    assert path is not None, "yagna from golem-node is not installed"
    return path


@pytest.fixture(scope="session")
def golem_chain() -> Iterator[ChainStandIn]:
    with chain_stand_in() as chain:
        yield chain


@pytest.fixture
def gftp_dir(tmp_path: Path) -> Path:
    """A directory holding the gftp stand-in, to put on a run's PATH."""
    bin_dir = tmp_path / "gftp-bin"
    golem_gftp.install(bin_dir, sys.executable)
    return bin_dir


@pytest.fixture
def run_path(gftp_dir: Path) -> str:
    """A run's PATH: the gftp stand-in, this venv (python3 with yapapi), the system."""
    venv_bin = Path(sys.executable).parent
    return os.pathsep.join([str(gftp_dir), str(venv_bin), os.environ.get("PATH", "/usr/bin:/bin")])


@pytest.fixture
def external_yagna(tmp_path: Path, yagna_path: str) -> Iterator[ExternalYagna]:
    """A yagna the test starts itself, with a key set at start-up."""
    data_dir = tmp_path / "external-yagna"
    data_dir.mkdir()
    key = secrets.token_hex(16)
    env = offline_env(data_dir, free_port(), free_port())
    env["YAGNA_AUTOCONF_APPKEY"] = key
    with (data_dir / "out.log").open("wb") as out:
        process = subprocess.Popen(
            [yagna_path, "service", "run", "--disable-metrics-push"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node = ExternalYagna(env["YAGNA_API_URL"], env["GSB_URL"], key, data_dir, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while me_status(node.api_url, key) != 200:
            assert process.poll() is None, (data_dir / "out.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "external yagna did not come up"
            time.sleep(0.2)
        yield node
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


@pytest.fixture
async def managed_golem(tmp_path: Path, golem_chain: ChainStandIn) -> AsyncIterator[GolemService]:
    """A ready GolemService with a managed, offline yagna that can make allocations."""
    service = GolemService(
        tmp_path / "yagna", mode="managed", offline=True, extra_env=golem_chain.geth_env()
    )
    try:
        await service.ensure_ready()
        yield service
    finally:
        await service.aclose()
    assert yagna_pids(tmp_path / "yagna") == []
