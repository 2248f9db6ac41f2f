"""The yagna node: managed start and stop, keys, external mode, run environment."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import trio

from sovrfs.errors import PreflightFailed
from sovrfs.golem import GolemService
from sovrfs.golem.yagna import KEY_FILE

from .support.yagna import ExternalYagna, me_status, yagna_pids

pytestmark = pytest.mark.yagna


async def test_managed_start_stop_and_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "yagna"
    service = GolemService(data_dir, mode="managed", offline=True)
    assert service.status()["state"] == "stopped"
    try:
        await service.ensure_ready()
        status = service.status()
        key = service.secrets()[0]
        assert status["state"] == "ready"
        assert status["managed"] is True
        assert status["reachable"] is True
        assert status["node_id"].startswith("0x")
        assert status["api_url"].startswith("http://127.0.0.1:")
        assert key not in json.dumps(status)
        assert me_status(status["api_url"], key) == 200
        assert me_status(status["api_url"], "not-the-key") == 401
        key_file = data_dir / KEY_FILE
        assert key_file.read_text().strip() == key
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert yagna_pids(data_dir) == [status["pid"]]
        # A second call only checks the node still answers.
        await service.ensure_ready()
        assert service.status()["pid"] == status["pid"]
    finally:
        await service.aclose()
    assert yagna_pids(data_dir) == []
    assert me_status(status["api_url"], key) == 0
    assert service.status()["state"] == "stopped"

    # A restart on the same data keeps the key and the node's identity.
    again = GolemService(data_dir, mode="managed", offline=True)
    try:
        await again.ensure_ready()
        assert again.secrets() == [key]
        assert again.status()["node_id"] == status["node_id"]
    finally:
        await again.aclose()
    assert yagna_pids(data_dir) == []


@pytest.mark.expect_warnings
async def test_managed_start_stops_yagna_left_by_killed_daemon(tmp_path: Path) -> None:
    data_dir = tmp_path / "yagna"
    first = GolemService(data_dir, mode="managed", offline=True)
    second = GolemService(data_dir, mode="managed", offline=True)
    try:
        await first.ensure_ready()
        left_behind = first.status()["pid"]
        # The first daemon "dies" without stopping its yagna; the next start
        # on the same data must not run two nodes on one database.
        await second.ensure_ready()
        assert yagna_pids(data_dir) == [second.status()["pid"]]
        assert left_behind not in yagna_pids(data_dir)
    finally:
        await second.aclose()
        await first.aclose()
    assert yagna_pids(data_dir) == []


@pytest.mark.expect_warnings
async def test_managed_yagna_that_dies_is_reported_and_restarted(tmp_path: Path) -> None:
    data_dir = tmp_path / "yagna"
    service = GolemService(data_dir, mode="managed", offline=True)
    try:
        await service.ensure_ready()
        pid = service.status()["pid"]
        os.kill(pid, 9)
        # status() notices on its own, without a request; the death of
        # another process has no event to wait on, so poll it.
        with trio.fail_after(10):
            while service.status()["state"] == "ready":  # noqa: ASYNC110
                await trio.sleep(0.05)
        status = service.status()
        assert status["state"] == "failed"
        assert status["reachable"] is False
        assert "exited with status -9" in status["reason"]
        await service.ensure_ready()
        assert service.status()["state"] == "ready"
        assert service.status()["pid"] != pid
    finally:
        await service.aclose()
    assert yagna_pids(data_dir) == []


async def test_external_yagna_is_used_not_managed(
    tmp_path: Path, external_yagna: ExternalYagna
) -> None:
    service = GolemService(
        tmp_path / "unused",
        api_url=external_yagna.api_url,
        app_key=external_yagna.app_key,
        mode="external",
    )
    await service.ensure_ready()
    status = service.status()
    assert status["managed"] is False
    assert status["reachable"] is True
    assert status["pid"] is None
    assert status["api_url"] == external_yagna.api_url
    await service.aclose()
    # Closing sovrfs's side leaves the user's yagna running.
    assert external_yagna.process.poll() is None
    assert me_status(external_yagna.api_url, external_yagna.app_key) == 200
    assert not (tmp_path / "unused").exists()


async def test_auto_mode_finds_yagna_named_by_environment(
    tmp_path: Path, external_yagna: ExternalYagna, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YAGNA_API_URL", external_yagna.api_url)
    monkeypatch.setenv("YAGNA_APPKEY", external_yagna.app_key)
    service = GolemService(tmp_path / "managed", mode="auto", offline=True)
    try:
        await service.ensure_ready()
        assert service.status()["managed"] is False
        assert service.status()["api_url"] == external_yagna.api_url
    finally:
        await service.aclose()
    assert not (tmp_path / "managed").exists()


async def test_auto_mode_starts_one_when_environment_key_is_wrong(
    tmp_path: Path, external_yagna: ExternalYagna, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YAGNA_API_URL", external_yagna.api_url)
    monkeypatch.setenv("YAGNA_APPKEY", "wrong-key")
    service = GolemService(tmp_path / "managed", mode="auto", offline=True)
    try:
        await service.ensure_ready()
        assert service.status()["managed"] is True
        assert service.status()["api_url"] != external_yagna.api_url
    finally:
        await service.aclose()
    assert yagna_pids(tmp_path / "managed") == []


async def test_off_mode_refuses(tmp_path: Path) -> None:
    service = GolemService(tmp_path / "yagna", mode="off")
    with pytest.raises(PreflightFailed, match="turned off"):
        await service.ensure_ready()
    assert service.status()["state"] == "failed"
    assert service.status()["reachable"] is False
    assert service.run_environment({"node": False}) == {}
    await service.aclose()


async def test_environment_reaches_child(tmp_path: Path, external_yagna: ExternalYagna) -> None:
    service = GolemService(
        tmp_path, api_url=external_yagna.api_url, app_key=external_yagna.app_key, mode="external"
    )
    await service.ensure_ready()
    settings = {"subnet": "devnet-beta", "budget": 2, "job_timeout": 30}
    env = service.run_environment(settings)
    assert env == {
        "YAGNA_APPKEY": external_yagna.app_key,
        "YAGNA_API_URL": external_yagna.api_url,
        "YAGNA_SUBNET": "devnet-beta",
        "YAGNA_PAYMENT_DRIVER": "erc20",
        "YAGNA_PAYMENT_NETWORK": "hoodi",
        "SOVR_GOLEM_BUDGET": "2",
        "SOVR_GOLEM_JOB_TIMEOUT": "30",
    }
    # The child reads the variables and reaches the node with them, and
    # yapapi's own configuration picks them up.
    child = (
        "import json, os, urllib.request\n"
        "from yapapi.config import ApiConfig\n"
        "from yapapi import engine\n"
        "cfg = ApiConfig()\n"
        "req = urllib.request.Request(cfg.api_url + '/me',"
        " headers={'Authorization': 'Bearer ' + cfg.app_key})\n"
        "me = json.load(urllib.request.urlopen(req, timeout=10))\n"
        "print(json.dumps({'id': me['identity'], 'network': engine.DEFAULT_NETWORK,"
        " 'subnet': engine.DEFAULT_SUBNET}))\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("YAGNA_")}
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-c", child], env={**base, **env}, capture_stdout=True
        )
    seen = json.loads(done.stdout)
    assert seen == {
        "id": service.status()["node_id"],
        "network": "hoodi",
        "subnet": "devnet-beta",
    }
    await service.aclose()


async def test_run_environment_before_ready_refuses(tmp_path: Path) -> None:
    service = GolemService(tmp_path, mode="managed", offline=True)
    with pytest.raises(PreflightFailed, match="not ready"):
        service.run_environment({})
    assert service.secrets() == []
    await service.aclose()
