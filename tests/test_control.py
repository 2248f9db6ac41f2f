"""Compute pods through a real mount: control files, runs, status, recovery."""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.mount import Mount, make_mount, wait_until

pytestmark = pytest.mark.mount


def make_pod(mount: Mount, name: str, exec_: str, **sovr: Any) -> Path:
    """A compute pod whose run executes ``exec_`` (no Golem node needed)."""
    pod = mount.path / name
    pod.mkdir()
    recipe: dict[str, Any] = {
        "name": name,
        "golem": {"exec": exec_},
        "sovr": {"golem": {"node": False}, **sovr},
    }
    (pod / f"{name}.recipe").write_text(json.dumps(recipe))
    return pod


def py(code: str) -> str:
    """An exec line running ``code`` with this Python (no shell involved)."""
    return f"{sys.executable} -c {shlex.quote(code)}"


def touch(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY)
    os.close(fd)


def test_template_pod_runs_end_to_end(mounted: Mount) -> None:
    mounted.cli("init", "wc", "--template", "wordcount")
    pod = mounted.path / "wc"
    assert (pod / ".sovr").is_dir()
    assert json.loads((pod / ".sovr" / "status").read_text())["state"] == "idle"
    subprocess.run(["touch", str(pod / ".sovr" / "run")], check=True)
    status = mounted.wait_run("wc")
    assert status["state"] == "succeeded", status
    report = (pod / "output" / "report.txt").read_text()
    assert "words" in report.lower()
    log_text = (pod / ".sovr" / "log").read_text()
    assert log_text == (pod / status["log"]).read_text()
    assert status["log"].startswith("logs/") and status["run_id"] in status["log"]
    runs = os.listdir(pod / ".sovr" / "runs")
    assert runs == [f"{status['run_id']}.json"]
    assert os.getxattr(pod, "user.sovr.state") == b"succeeded"
    assert os.getxattr(pod, "user.sovr.recipe") == b"wc"  # init names the recipe after the pod
    # Control files never reach the store.
    assert not (mounted.store_dir / "wc" / ".sovr").exists()


def test_cli_run_wait_streams_the_log(mounted: Mount) -> None:
    make_pod(mounted, "hello", py("print('hello from the pod')"))
    result = mounted.cli("run", "hello", "--wait")
    assert "hello from the pod" in result.stdout
    failing = make_pod(mounted, "bad", py("import sys; print('oops'); sys.exit(3)"))
    result = mounted.cli("run", str(failing), "--wait", check=False)
    assert result.returncode == 3
    assert "oops" in result.stdout


def test_echo_and_touch_trigger_exactly_once(mounted: Mount) -> None:
    pod = make_pod(mounted, "once", py("print('x')"))
    subprocess.run(["bash", "-c", f"echo go > {pod}/.sovr/run"], check=True)
    mounted.wait_run("once")
    subprocess.run(["touch", str(pod / ".sovr" / "run")], check=True)
    mounted.wait_run("once")
    assert len(os.listdir(pod / ".sovr" / "runs")) == 2


def test_live_log_and_outputs(mounted: Mount) -> None:
    code = (
        "import time, pathlib\n"
        "pathlib.Path('output').mkdir(exist_ok=True)\n"
        "for i in range(5):\n"
        "    print('line', i, flush=True)\n"
        "    pathlib.Path('output', f'part{i}').write_text(str(i))\n"
        "    time.sleep(0.3)\n"
    )
    pod = make_pod(mounted, "live", py(code))
    touch(pod / ".sovr" / "run")
    wait_until(lambda: "line 1" in (pod / ".sovr" / "log").read_text(), timeout=20)
    assert mounted.pod_status("live")["state"] == "running"
    assert "line 4" not in (pod / ".sovr" / "log").read_text()
    status = mounted.wait_run("live")
    assert status["state"] == "succeeded"
    assert sorted(os.listdir(pod / "output")) == [f"part{i}" for i in range(5)]
    assert (mounted.store_dir / "live" / "output" / "part4").read_text() == "4"


def test_busy_pod_refuses_a_second_run(mounted: Mount) -> None:
    pod = make_pod(mounted, "busy", py("import time; time.sleep(30)"))
    touch(pod / ".sovr" / "run")
    with pytest.raises(OSError) as info:
        touch(pod / ".sovr" / "run")
    assert info.value.errno == errno.EBUSY
    touch(pod / ".sovr" / "cancel")
    status = mounted.wait_run("busy")
    assert status["state"] == "cancelled"
    assert status["stopped_with"] == "SIGINT"


def test_bad_recipe_is_einval_with_the_field_named(mounted: Mount) -> None:
    pod = mounted.path / "broken"
    pod.mkdir()
    (pod / "broken.recipe").write_text(json.dumps({"name": "broken", "golem": {}}))
    with pytest.raises(OSError) as info:
        touch(pod / ".sovr" / "run")
    assert info.value.errno == errno.EINVAL
    status = mounted.pod_status("broken")
    assert status["state"] == "failed"
    assert "golem.exec: missing" in status["reason"]
    result = mounted.cli("run", "broken", check=False)
    assert result.returncode != 0 and "golem.exec: missing" in result.stderr


HOSTILE_RECIPES: list[tuple[bytes, str]] = [
    (b'{"name": "h", "golem": {"exec": "x"', "not valid JSON"),
    (b'{"name": 5, "golem": {"exec": "x"}}', "name"),
    (b'{"name": "h", "golem": {"exec": "x", "output": "../escape"}}', "golem.output"),
    (b'{"name": "h", "golem": {"exec": "x", "log": "/etc"}}', "golem.log"),
    (b'{"name": "h", "golem": {"exec": "x"}, "sovr": {"timeout": 1e308}}', "sovr.timeout"),
    (b"\xff\xfe\x00garbage", "(root)"),
    (b"[" * 100000, "(root)"),
    (b'{"name": "h", "golem": {"exec": "unbalanced \\"quote"}}', "golem.exec"),
]


@pytest.mark.parametrize(("content", "field"), HOSTILE_RECIPES)
def test_hostile_recipes_give_clear_errors(mounted: Mount, content: bytes, field: str) -> None:
    pod = mounted.path / "hostile"
    pod.mkdir()
    (pod / "h.recipe").write_bytes(content)
    with pytest.raises(OSError) as info:
        touch(pod / ".sovr" / "run")
    assert info.value.errno == errno.EINVAL
    assert field in mounted.pod_status("hostile")["reason"]
    assert mounted.proc is not None and mounted.proc.poll() is None  # the daemon lives on
    assert mounted.status()["pid"] == mounted.proc.pid


def test_two_recipes_are_refused(mounted: Mount) -> None:
    pod = make_pod(mounted, "two", py("print(1)"))
    (pod / "second.recipe").write_text((pod / "two.recipe").read_text())
    with pytest.raises(OSError) as info:
        touch(pod / ".sovr" / "run")
    assert info.value.errno == errno.EINVAL
    assert "more than one recipe" in mounted.pod_status("two")["reason"]


def test_timeout_escalates(mounted: Mount) -> None:
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    make_pod(mounted, "slow", py(code), timeout=1)
    touch(mounted.path / "slow" / ".sovr" / "run")
    status = mounted.wait_run("slow", timeout=60)
    assert status["state"] == "failed"
    assert "timed out" in status["reason"]
    assert status["stopped_with"] in ("SIGTERM", "SIGKILL")


def test_queueing_beyond_the_limit(tmp_path: Path) -> None:
    mount = make_mount(tmp_path, env={"SOVRFS_RUNS_MAX_PARALLEL": "1"})
    mount.start()
    try:
        for name in ("q1", "q2"):
            make_pod(mount, name, py("import time; time.sleep(1.5); print('done')"))
        touch(mount.path / "q1" / ".sovr" / "run")
        touch(mount.path / "q2" / ".sovr" / "run")
        assert mount.pod_status("q2")["state"] == "queued"
        assert mount.status()["runs"]["queued"] == 1
        assert mount.wait_run("q1")["state"] == "succeeded"
        assert mount.wait_run("q2")["state"] == "succeeded"
    finally:
        mount.stop()


def test_restart_shows_interrupted_and_kills_the_orphans(tmp_path: Path) -> None:
    mount = make_mount(tmp_path)
    mount.start()
    try:
        pid_file = tmp_path / "child.pid"
        code = (
            f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
            "time.sleep(120)"
        )
        make_pod(mount, "victim", py(code))
        touch(mount.path / "victim" / ".sovr" / "run")
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=20)
        child = int(pid_file.read_text())
        mount.kill()
        # A killed daemon leaves "Transport endpoint is not connected" behind;
        # the next mount cleans it up.
        with pytest.raises(OSError) as info:
            os.listdir(mount.path / "victim")
        assert info.value.errno == errno.ENOTCONN
        mount.remount()
        status = mount.pod_status("victim")
        assert status["state"] == "interrupted"
        wait_until(lambda: not _alive(child), timeout=20)
    finally:
        mount.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(") ", 1)[-1][:1] != "Z"


def test_autorun_debounces_saves(mounted: Mount) -> None:
    pod = make_pod(
        mounted, "auto", py("print('auto run')"),
        autorun={"patterns": ["script/**"], "debounce": 0.5},
    )  # fmt: skip
    (pod / "script").mkdir()
    for i in range(5):
        (pod / "script" / "main.py").write_text(f"# edit {i}\n")
        time.sleep(0.05)
    wait_until(lambda: len(os.listdir(pod / ".sovr" / "runs")) >= 1, timeout=20)
    time.sleep(1.5)
    assert len(os.listdir(pod / ".sovr" / "runs")) == 1
    (pod / "output").mkdir(exist_ok=True)
    (pod / "output" / "ignored").write_text("outputs never trigger runs")
    time.sleep(1.0)
    assert len(os.listdir(pod / ".sovr" / "runs")) == 1


def test_run_environment(mounted: Mount) -> None:
    code = (
        "import os, json\n"
        "print(json.dumps({k: os.environ.get(k) for k in "
        "['SOVR_POD', 'SOVR_RUN_ID', 'SOVR_OUTPUT', 'SOVR_LOG']}))\n"
        "print('CWD', os.getcwd())\n"
    )
    pod = make_pod(mounted, "envpod", py(code))
    touch(pod / ".sovr" / "run")
    status = mounted.wait_run("envpod")
    text = (pod / ".sovr" / "log").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("{"))
    env = json.loads(line)
    assert env["SOVR_POD"] == "envpod"
    assert env["SOVR_RUN_ID"] == status["run_id"]
    assert env["SOVR_OUTPUT"] == str(pod / "output")
    assert f"CWD {pod}" in text


def test_cancel_with_nothing_running_is_an_error(mounted: Mount) -> None:
    pod = make_pod(mounted, "idle", py("print(1)"))
    with pytest.raises(OSError) as info:
        touch(pod / ".sovr" / "cancel")
    assert info.value.errno == errno.ENOENT


def test_status_command_prints_a_table(mounted: Mount) -> None:
    make_pod(mounted, "shown", py("print(1)"))
    touch(mounted.path / "shown" / ".sovr" / "run")
    mounted.wait_run("shown")
    result = mounted.cli("status")
    assert "shown" in result.stdout and "succeeded" in result.stdout


def test_plain_pods_have_no_control_dir(mounted: Mount) -> None:
    (mounted.path / "plain").mkdir()
    assert ".sovr" not in os.listdir(mounted.path / "plain")
    assert not (mounted.path / "plain" / ".sovr").exists()


def test_sigterm_unmounts_cleanly(tmp_path: Path) -> None:
    mount = make_mount(tmp_path)
    mount.start()
    (mount.path / "p").mkdir()
    (mount.path / "p" / "f").write_text("kept")
    assert mount.proc is not None
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(timeout=30) == 0
    assert not os.path.ismount(mount.path)
    assert (mount.store_dir / "p" / "f").read_text() == "kept"
