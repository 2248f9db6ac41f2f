"""A Golem requestor pod started through the mount, against a real yagna.

Offline there is no provider and no chain, so the requestor cannot get far;
what is checked is the whole path: the daemon reaches the external yagna,
hands the run its connection, scrubs the key from the log, and ends the run
with a truthful status instead of "succeeded".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.mount import make_mount
from tests.support.yagna import ExternalYagna

pytestmark = [pytest.mark.yagna, pytest.mark.mount]


def test_requestor_pod_through_the_mount(
    tmp_path: Path, external_yagna: ExternalYagna, gftp_dir: Path
) -> None:
    mount = make_mount(
        tmp_path,
        env={
            "SOVRFS_GOLEM_MODE": "external",
            "SOVRFS_GOLEM_API_URL": external_yagna.api_url,
            "SOVRFS_GOLEM_APPKEY": external_yagna.app_key,
            "PATH": f"{gftp_dir}:{os.environ['PATH']}",
        },
    )
    mount.start()
    try:
        mount.cli("init", "hello", "--template", "hello-world")
        recipe_file = mount.path / "hello" / "hello.recipe"
        recipe = json.loads(recipe_file.read_text())
        recipe["sovr"]["timeout"] = 120
        recipe_file.write_text(json.dumps(recipe))
        fd = os.open(mount.path / "hello" / ".sovr" / "run", os.O_WRONLY)
        os.close(fd)
        status = mount.wait_run("hello", timeout=180)
        assert status["state"] == "failed", status
        assert status["reason"]
        log_text = (mount.path / "hello" / ".sovr" / "log").read_text()
        assert external_yagna.app_key not in log_text
        assert external_yagna.app_key not in (mount.path / "hello" / ".sovr" / "status").read_text()
        golem = mount.status()["golem"]
        assert external_yagna.app_key not in json.dumps(golem)
        assert golem.get("state") == "ready", golem
    finally:
        mount.stop()
