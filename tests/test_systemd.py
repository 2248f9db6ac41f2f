"""The systemd units (checked by systemd-analyze) and the readiness protocol."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sovrfs import notify

UNITS = Path(__file__).resolve().parent.parent / "systemd"
USER_UNIT = UNITS / "sovrfs@.service"
SYSTEM_UNIT = UNITS / "sovrfs-system@.service"


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing: install the Debian package 'systemd'"
    return path


def settings(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file (comments skipped), by key."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def verify(unit: Path, *, user: bool, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = [analyze(), "verify", "--man=no"]
    if user:
        args.insert(1, "--user")
    return subprocess.run(
        [*args, str(unit)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def fake_home(tmp_path: Path) -> Path:
    """A home with ~/.local/bin/sovrfs (verify checks that ExecStart is executable)."""
    home = tmp_path / "home"
    exe = home / ".local" / "bin" / "sovrfs"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return home


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runtime"
    path.mkdir(mode=0o700)
    return path


def test_user_unit_verifies(tmp_path: Path, fake_home: Path, runtime_dir: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    shutil.copy(USER_UNIT, units / USER_UNIT.name)
    # An instance, as `systemd-escape --path ~/pods` names it: verify then
    # expands %f and %h and checks the resolved ExecStart.
    instance = units / "sovrfs@home-alice-pods.service"
    env = {"HOME": str(fake_home), "XDG_RUNTIME_DIR": str(runtime_dir)}
    result = verify(instance, user=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_user_unit_with_credential_line_enabled_verifies(
    tmp_path: Path, fake_home: Path, runtime_dir: Path
) -> None:
    text = USER_UNIT.read_text()
    assert "\n#LoadCredential=dfs-password:" in text
    units = tmp_path / "units"
    units.mkdir()
    (units / "sovrfs@.service").write_text(text.replace("\n#LoadCredential=", "\nLoadCredential="))
    env = {"HOME": str(fake_home), "XDG_RUNTIME_DIR": str(runtime_dir)}
    result = verify(units / "sovrfs@home-alice-pods.service", user=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_system_unit_verifies(tmp_path: Path, fake_home: Path) -> None:
    # The unit runs /usr/local/bin/sovrfs, an install step of the system
    # service that a test machine does not have: verify a copy pointing at a
    # stand-in, and check the path itself separately.
    text = SYSTEM_UNIT.read_text()
    assert "\nExecStart=/usr/local/bin/sovrfs mount %f -f\n" in text
    stand_in = fake_home / ".local" / "bin" / "sovrfs"
    units = tmp_path / "units"
    units.mkdir()
    (units / SYSTEM_UNIT.name).write_text(text.replace("/usr/local/bin/sovrfs", str(stand_in)))
    result = verify(units / "sovrfs-system@srv-pods.service", user=False, env={})
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_catches_a_broken_unit(tmp_path: Path, fake_home: Path, runtime_dir: Path) -> None:
    """The checks above mean something: a wrong value is reported."""
    units = tmp_path / "units"
    units.mkdir()
    text = USER_UNIT.read_text().replace("Type=notify", "Type=notifyy")
    (units / "sovrfs@.service").write_text(text)
    env = {"HOME": str(fake_home), "XDG_RUNTIME_DIR": str(runtime_dir)}
    result = verify(units / "sovrfs@home-alice-pods.service", user=True, env=env)
    assert "notifyy" in result.stdout + result.stderr


@pytest.mark.parametrize("unit", [USER_UNIT, SYSTEM_UNIT], ids=lambda p: p.name)
def test_unit_runs_foreground_with_readiness_and_clean_stop(unit: Path) -> None:
    found = settings(unit)
    assert found["Type"] == ["notify"]
    assert found["NotifyAccess"] == ["main"]
    assert found["ExecStart"][0].endswith("/sovrfs mount %f -f")
    assert found["Restart"] == ["on-failure"]
    # SIGTERM to the daemon only: it stops its own runs and yagna in order.
    assert found["KillMode"] == ["mixed"]
    assert found["TimeoutStopSec"] == ["10min"]
    assert "ExecStop" not in found
    assert found["ExecStopPost"] == ["-/bin/fusermount3 -u -z -q %f"]


def test_user_unit_finds_a_user_install() -> None:
    assert settings(USER_UNIT)["ExecStart"] == ["%h/.local/bin/sovrfs mount %f -f"]
    assert settings(USER_UNIT)["WantedBy"] == ["default.target"]


def test_system_unit_runs_as_a_user_without_a_private_mount_namespace() -> None:
    found = settings(SYSTEM_UNIT)
    assert found["User"] == ["sovrfs"]
    assert found["WantedBy"] == ["multi-user.target"]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "DynamicUser"):
        assert key not in found, key


# The readiness protocol, against a socket standing in for systemd.


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # AF_UNIX paths are limited to 108 bytes: keep it short.
    with tempfile.TemporaryDirectory(prefix="sd-") as tmp:
        path = os.path.join(tmp, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(10)
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            yield sock


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_and_stopping(listener: socket.socket) -> None:
    assert notify.ready()
    assert receive(listener) == ["READY=1"]
    assert notify.ready(status="mounted at /pods")
    assert receive(listener) == ["READY=1", "STATUS=mounted at /pods"]
    assert notify.status("draining 3 uploads\nnow")
    assert receive(listener) == ["STATUS=draining 3 uploads now"]
    assert notify.extend_timeout(30)
    assert receive(listener) == ["EXTEND_TIMEOUT_USEC=30000000"]
    assert notify.stopping()
    assert receive(listener) == ["STOPPING=1"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sovrfs-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready()
        assert receive(sock) == ["READY=1"]


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify.ready()
    assert not notify.stopping()
    assert not notify.status("x")


@pytest.mark.expect_warnings
def test_gone_socket_warns_but_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="sd-") as tmp:
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(tmp, "nobody"))
        assert not notify.ready()


# The contract the units rely on, with the real daemon: READY=1 once the mount
# answers, and SIGTERM (what `systemctl stop` sends) unmounts and exits 0.


@pytest.mark.mount
def test_daemon_under_notify_protocol(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log_path = tmp_path / "stderr"
    with (
        tempfile.TemporaryDirectory(prefix="sd-") as sock_dir,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        log_path.open("w") as log_file,
    ):
        sock.bind(os.path.join(sock_dir, "notify"))
        sock.settimeout(60)
        st = os.fstat(log_file.fileno())
        env = {
            **os.environ,
            "NOTIFY_SOCKET": os.path.join(sock_dir, "notify"),
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "SOVRFS_STORE": str(tmp_path / "store"),
            "SOVRFS_STATE_DIR": str(tmp_path / "state"),
            "SOVRFS_CACHE_DIR": str(tmp_path / "cache"),
            "SOVRFS_GOLEM_MODE": "off",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "sovrfs", "mount", str(mountpoint), "-f"],
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=log_file,
            cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            ready = sock.recv(4096).decode().split("\n")
            assert ready[0] == "READY=1", log_path.read_text()
            # Ready means mounted and answering, not merely started.
            assert os.path.ismount(mountpoint)
            assert (mountpoint / ".sovr" / "status.json").is_file()
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096).decode().split("\n")[0] == "STOPPING=1"
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    assert not os.path.ismount(mountpoint)
    lines = log_path.read_text().splitlines()
    # stderr is the "journal": every line carries its syslog priority.
    assert lines, "the daemon logged nothing"
    assert all(line.startswith("<") for line in lines), lines
    assert any(line.startswith("<6>INFO sovrfs.daemon: mounted ") for line in lines), lines
