"""Persist, share and fork: the round trip between two users' pods."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import trio

from sovrfs.errors import AlreadyExists, InvalidName, NotFound, RecipeError
from sovrfs.recipe import is_sharing_ref
from tests.test_protocol_env import (
    WATCHDOG_RENAME_RACE,
    Proto,
    forks_keep_modes,
    listing,
    proto,
    recipe,
    shares_are_snapshots,
    trigger,
    without_modes,
)

__all__ = ["proto"]

pytestmark = WATCHDOG_RENAME_RACE


def no_control(rel: str) -> bool:
    return rel == ".sovr"


async def read_json(env: Proto, path: Path) -> object:
    return json.loads(await env.fs(path.read_text))


async def make_rich_pod(env: Proto, name: str) -> Path:
    root = await env.make_pod(
        name,
        recipe(name),
        {
            "script/run.py": "print('hello')\n",
            "payload/data.bin": bytes(range(256)) * 1000,
            "payload/deep/er/x.txt": "deep\n",
            "notes.txt": "private-ish\n",
        },
    )

    def modes() -> None:
        (root / "script" / "run.py").chmod(0o755)
        (root / "notes.txt").chmod(0o600)
        (root / "payload" / "deep").chmod(0o750)
        (root / "empty").mkdir(mode=0o700)
        (root / "empty").chmod(0o700)

    await env.fs(modes)
    return root


async def test_persist_share_fork_round_trip(proto: Proto) -> None:
    env = proto
    root = await make_rich_pod(env, "alpha")

    result = await env.protocol.persist("alpha")

    assert result.pod == "alpha" and result.recipe == "alpha"
    assert result.ref is not None and is_sharing_ref(result.ref)
    registry = json.loads(await env.store.read_bytes("ComputePodRegistry", "/Registry.json"))
    assert registry["alpha"]["name"] == "alpha"
    shared = json.loads(await env.store.read_bytes("SharedPods", "/SharedPods.json"))
    assert [r["sharing_reference"] for r in shared["alpha"]] == [result.ref]
    ref_text = await env.fs((root / ".sovr" / "ref").read_text)
    assert ref_text.strip() == result.ref
    assert await env.protocol.pod_ref("alpha") == result.ref

    # Another user forks it by reference: alpha exists here, so the fork is alpha-fork.
    name = await env.protocol.fork(result.ref)
    assert name == "alpha-fork"
    original = await env.fs(listing, root, no_control)
    forked = await env.fs(listing, env.pod(name), no_control)
    assert original["script/run.py"][1] == 0o755
    assert original["notes.txt"][1] == 0o600
    assert original["payload/deep"][1] == 0o750
    if forks_keep_modes(env.store):
        assert forked == original
    else:
        assert without_modes(forked) == without_modes(original)
    # Control files are virtual: nothing of them was stored or shared.
    assert ".sovr" not in [n for n, _ in await env.store.listdir(name, "/")]
    forked_marks = json.loads((env.tmp / "state" / "forked.json").read_text())
    assert name in forked_marks

    # Never overwrite: the next clash gets -fork-2; an explicit name is used as given.
    assert await env.protocol.fork(result.ref) == "alpha-fork-2"
    assert await env.protocol.fork(f"{result.ref.upper()} beta") == "beta"
    beta = await env.fs(listing, env.pod("beta"), no_control)
    if forks_keep_modes(env.store):
        assert beta == original
    else:
        assert without_modes(beta) == without_modes(original)


async def test_control_files_persist_and_fork(proto: Proto) -> None:
    env = proto
    root = await env.make_pod("viactl", recipe("viactl"), {"script/run.py": "pass\n"})

    await env.fs(trigger, root / ".sovr" / "persist")
    ref = (await env.fs((root / ".sovr" / "ref").read_text)).strip()
    assert is_sharing_ref(ref)

    def fork(line: str) -> None:
        with open(env.path / ".sovr" / "fork", "w") as f:
            f.write(line + "\n")

    await env.fs(fork, f"{ref} copied")
    assert await env.fs((env.pod("copied") / "script" / "run.py").read_text) == "pass\n"
    status = await read_json(env, env.path / ".sovr" / "status.json")
    assert isinstance(status, dict)
    assert status["last_fork"]["ok"] and status["last_fork"]["pod"] == "copied"

    with pytest.raises(OSError) as info:
        await env.fs(fork, "not-a-reference")
    assert info.value.errno == errno.EINVAL
    status = await read_json(env, env.path / ".sovr" / "status.json")
    assert isinstance(status, dict)
    assert "not a sharing reference" in status["last_fork"]["error"]


@pytest.mark.parametrize(
    "line",
    ["abc", "0" * 63, "g" * 64, "", f"{'a' * 64} name extra", f"{'a' * 64} .hidden"],
)
async def test_fork_refuses_malformed_input(proto: Proto, line: str) -> None:
    with pytest.raises(InvalidName) as info:
        await proto.protocol.fork(line)
    assert info.value.errno == errno.EINVAL
    assert [p.name for p in await proto.store.list_pods()] == []


async def test_fork_of_unknown_reference(proto: Proto) -> None:
    with pytest.raises(NotFound):
        await proto.protocol.fork("ab" * 32)


async def test_fork_of_broken_recipe_runs_nothing(proto: Proto) -> None:
    env = proto
    marker = env.tmp / "ran"
    bad = {"name": "shady", "public": True, "golem": {"script": "script"}}
    await env.make_pod(
        "shady",
        bad,
        {"script/run.py": f"open({str(marker)!r}, 'w').write('ran')\n"},
    )
    # Someone else published it as it is; persist would refuse a broken recipe.
    with pytest.raises(RecipeError):
        await env.protocol.persist("shady")
    ref = await env.store.share_pod("shady")

    name = await env.protocol.fork(ref)
    assert name == "shady-fork"
    await trio.sleep(0.2)
    assert env.engine.current(name) is None

    with pytest.raises(OSError) as info:
        await env.fs(trigger, env.pod(name) / ".sovr" / "run")
    assert info.value.errno == errno.EINVAL
    status = await read_json(env, env.pod(name) / ".sovr" / "status")
    assert isinstance(status, dict)
    assert status["state"] == "failed"
    assert "golem.exec: missing" in status["reason"]
    assert status["pid"] is None and status["started_at"] is None
    assert not marker.exists()


async def test_private_pod_is_registered_not_shared(proto: Proto) -> None:
    env = proto
    doc = recipe("quiet")
    doc["public"] = False
    root = await env.make_pod("quiet", doc, {"script/run.py": "pass\n"})

    result = await env.protocol.persist("quiet")

    assert result.ref is None and result.output_ref is None
    registry = json.loads(await env.store.read_bytes("ComputePodRegistry", "/Registry.json"))
    assert registry["quiet"]["public"] is False
    assert await env.protocol.pod_ref("quiet") is None
    assert await env.fs((root / ".sovr" / "ref").read_text) == ""


RUN_RESULTS = """
import os, pathlib
out = pathlib.Path('output')
(out / 'results').mkdir(parents=True, exist_ok=True)
(out / 'results' / 'r.txt').write_text('result ' + os.environ['SOVR_RUN_ID'])
(out / 'results' / 'run.bin').write_bytes(bytes(range(256)))
(out / 'scratch.txt').write_text('not shared')
"""


async def test_output_share(proto: Proto) -> None:
    env = proto
    doc = recipe("gamma", golem={"output": {"share": "output/results"}})
    doc["public"] = False
    root = await env.make_pod("gamma", doc, {"script/run.py": RUN_RESULTS})
    status = await env.run("gamma")
    assert status["state"] == "succeeded", status

    result = await env.protocol.persist("gamma")

    # The pod itself is private; its output share is published all the same.
    assert result.ref is None
    assert result.output_pod == "gamma-output"
    assert result.output_ref is not None and is_sharing_ref(result.output_ref)
    assert await env.protocol.pod_ref("gamma-output") == result.output_ref
    await env.protocol.rebuild_registry()
    entry = next(e for e in (await env.protocol.registry())["pods"] if e["pod"] == "gamma")
    assert entry["output"] == {"pod": "gamma-output", "refs": [result.output_ref]}
    copy = await env.protocol.fork(f"{result.output_ref} gamma-results")
    results = await env.fs(listing, root / "output" / "results")
    copied = await env.fs(listing, env.pod(copy))
    if forks_keep_modes(env.store):
        assert copied == results
    else:
        assert without_modes(copied) == without_modes(results)
    assert "scratch.txt" not in await env.fs(os.listdir, env.pod(copy))

    # Persist again after the output changed: the output pod follows it.
    def change() -> None:
        (root / "output" / "results" / "r.txt").unlink()
        (root / "output" / "results" / "new.txt").write_text("new")

    await env.fs(change)
    again = await env.protocol.persist("gamma")
    assert again.output_pod == "gamma-output"
    if shares_are_snapshots(env.store):
        assert again.output_ref != result.output_ref
    else:
        assert again.output_ref == result.output_ref
    assert sorted(await env.fs(os.listdir, env.pod("gamma-output"))) == ["new.txt", "run.bin"]
    # Whatever the reference, a fork of the new one has the new output.
    later = await env.protocol.fork(f"{again.output_ref} gamma-later")
    assert sorted(await env.fs(os.listdir, env.pod(later))) == ["new.txt", "run.bin"]


async def test_output_share_refusals(proto: Proto) -> None:
    env = proto
    doc = recipe("delta", golem={"output": {"share": "output/results"}})
    await env.make_pod("delta", doc, {"script/run.py": "pass\n"})

    with pytest.raises(NotFound) as info:
        await env.protocol.persist("delta")
    assert "golem.output.share" in str(info.value)

    # A pod of the output pod's name that is not delta's output is never overwritten.
    await env.fs((env.pod("delta") / "output" / "results").mkdir, parents=True)
    await env.make_pod("delta-output", None, {"mine.txt": "mine"})
    with pytest.raises(AlreadyExists) as clash:
        await env.protocol.persist("delta")
    assert "delta-output" in str(clash.value)
    assert await env.fs(os.listdir, env.pod("delta-output")) == ["mine.txt"]
