"""Mounting through the FUSE mount helper, as an fstab line does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mount import force_unmount, wait_until

pytestmark = pytest.mark.mount

LINK = Path("/usr/local/bin/sovrfs")


@pytest.fixture
def sovrfs_on_system_path() -> Iterator[None]:
    """mount.fuse3 runs the helper with a fixed PATH: put sovrfs on it, as users install it."""
    installed = shutil.which("sovrfs", path="/usr/local/bin:/usr/bin:/bin")
    if installed is None:
        LINK.symlink_to(Path(sys.executable).parent / "sovrfs")
    try:
        yield
    finally:
        if installed is None:
            LINK.unlink()


def test_fstab_line_mounts_and_unmounts(tmp_path: Path, sovrfs_on_system_path: None) -> None:
    store = tmp_path / "store"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"embedded:{store} {mnt} fuse.sovrfs noauto,_netdev,attr_timeout=2 0 0\n")
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), SOVRFS_GOLEM_MODE="off",
               XDG_DATA_HOME=str(tmp_path / "data"), HOME=str(tmp_path))  # fmt: skip
    try:
        subprocess.run(["mount", "--fstab", str(fstab), str(mnt)], check=True, env=env, timeout=60)
        assert os.path.ismount(mnt)
        status = json.loads((mnt / ".sovr" / "status.json").read_text())
        assert status["store"]["path"] == str(store)
        (mnt / "pod").mkdir()
        (mnt / "pod" / "file").write_text("via fstab")
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
        wait_until(lambda: not os.path.ismount(mnt), timeout=30)
        assert (store / "pod" / "file").read_text() == "via fstab"
    finally:
        force_unmount(mnt)


def test_mount_type_option(tmp_path: Path, sovrfs_on_system_path: None) -> None:
    store = tmp_path / "store"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), SOVRFS_GOLEM_MODE="off",
               XDG_DATA_HOME=str(tmp_path / "data"), HOME=str(tmp_path))  # fmt: skip
    try:
        subprocess.run(
            ["mount", "-t", "fuse.sovrfs", f"embedded:{store}", str(mnt), "-o", "noatime"],
            check=True, env=env, timeout=60,
        )  # fmt: skip
        assert (mnt / ".sovr" / "status.json").is_file()
        result = subprocess.run(
            [sys.executable, "-m", "sovrfs", "umount", str(mnt)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert not os.path.ismount(mnt)
    finally:
        force_unmount(mnt)
