"""The protocol through the command line, on a real mount of the embedded store."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.support.mount import Mount

pytestmark = pytest.mark.mount


def compute_pod(mount: Mount, name: str, code: str, *, public: bool = True) -> Path:
    pod = mount.path / name
    pod.mkdir()
    (pod / "script").mkdir()
    (pod / "script" / "main.py").write_text(code)
    recipe = {
        "name": name,
        "description": f"the {name} pod",
        "public": public,
        "golem": {"exec": f"{sys.executable} script/main.py"},
        "sovr": {"golem": {"node": False}},
    }
    (pod / f"{name}.recipe").write_text(json.dumps(recipe))
    return pod


def test_persist_fork_pods_and_registry(mounted: Mount) -> None:
    pod = compute_pod(mounted, "shareme", "print('hi')\n")
    (pod / "payload").mkdir()
    (pod / "payload" / "data.txt").write_text("payload bytes")
    out = mounted.cli("persist", "shareme").stdout
    ref = re.search(r"sharing reference ([0-9a-f]{64})", out)
    assert ref is not None, out
    assert (pod / ".sovr" / "ref").read_text().strip() == ref.group(1)
    out = mounted.cli("fork", ref.group(1), "--name", "mycopy").stdout
    assert "mycopy" in out
    assert (mounted.path / "mycopy" / "payload" / "data.txt").read_text() == "payload bytes"
    # A name clash picks another name and never overwrites.
    out = mounted.cli("fork", ref.group(1), "--name", "mycopy").stdout
    assert "mycopy-fork" in out
    bad = mounted.cli("fork", "not-a-reference", check=False)
    assert bad.returncode != 0 and bad.stderr.strip()
    mounted.cli("registry", "--rebuild")
    listing = mounted.cli("pods").stdout
    assert "shareme" in listing and "mycopy" in listing


def test_private_pod_is_persisted_but_not_shared(mounted: Mount) -> None:
    compute_pod(mounted, "private", "print('x')\n", public=False)
    out = mounted.cli("persist", "private").stdout
    assert "not shared" in out
    assert (mounted.path / "private" / ".sovr" / "ref").read_text() == ""


def test_persist_self_prints_a_reference(mounted: Mount) -> None:
    out = mounted.cli("persist-self").stdout
    ref = re.search(r"sharing reference ([0-9a-f]{64})", out)
    assert ref is not None, out
    assert (mounted.path / "Sovr" / "sovrfs" / "cli.py").is_file()


def test_task_chains_pods(mounted: Mount, tmp_path: Path) -> None:
    first = (
        "import pathlib\n"
        "pathlib.Path('output').mkdir(exist_ok=True)\n"
        "pathlib.Path('output/numbers.txt').write_text('1 2 3')\n"
    )
    second = (
        "import pathlib\n"
        "numbers = next(pathlib.Path('payload/external').rglob('numbers.txt')).read_text()\n"
        "pathlib.Path('output').mkdir(exist_ok=True)\n"
        "total = sum(int(n) for n in numbers.split())\n"
        "pathlib.Path('output/sum.txt').write_text(str(total))\n"
    )
    compute_pod(mounted, "step1", first, public=False)
    compute_pod(mounted, "step2", second, public=False)
    task = tmp_path / "chain.json"
    task.write_text(json.dumps({"name": "chain", "pods": ["step1", "step2"]}))
    mounted.cli("task", str(task))
    status = mounted.wait_run("chain", timeout=120)

    def task_done() -> dict[str, object] | None:
        data = mounted.pod_status("chain").get("task") or {}
        return data if data.get("state") in ("succeeded", "failed") else None

    from tests.support.mount import wait_until

    task_state = wait_until(task_done, timeout=120)
    assert task_state["state"] == "succeeded", (status, task_state)
    assert (mounted.path / "step2" / "output" / "sum.txt").read_text() == "6"
