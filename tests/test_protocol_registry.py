"""The registry, legacy pods of the original tool, and persist-self."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import sovrfs
from sovrfs.archive import make_zip
from sovrfs.errors import AlreadyExists, ArchiveRejected, RecipeError
from sovrfs.protocol import SELF_POD
from sovrfs.recipe import is_sharing_ref
from tests.test_protocol_env import WATCHDOG_RENAME_RACE, Proto, listing, proto, recipe

__all__ = ["proto"]

pytestmark = WATCHDOG_RENAME_RACE

HELLO = """
import pathlib
pathlib.Path('output').mkdir(exist_ok=True)
text = pathlib.Path('payload/in.txt').read_text()
pathlib.Path('output/hello.txt').write_text('hello ' + text)
"""


async def make_legacy_pod(env: Proto, name: str, recipe_name: str = "oldie") -> dict[str, object]:
    """A pod as the original tool persisted it: recipe.json and <pod>.zip at the root."""
    src = env.tmp / f"{name}-src"
    (src / "script").mkdir(parents=True)
    (src / "payload").mkdir()
    (src / "script" / "run.py").write_text(HELLO)
    (src / "script" / "run.py").chmod(0o750)
    (src / "payload" / "in.txt").write_text("from the past")
    archive = env.tmp / f"{name}.zip"
    make_zip(src, archive)
    doc = recipe(recipe_name)
    await env.make_pod(
        name, None, {"recipe.json": json.dumps(doc), f"{name}.zip": archive.read_bytes()}
    )
    return listing(src)


async def test_rebuild_registry(proto: Proto) -> None:
    env = proto
    await make_legacy_pod(env, "legacy1")
    await env.make_pod("modern", recipe("modern"), {"script/run.py": "pass\n"})
    await env.make_pod("twin-a", recipe("twin"), {"script/run.py": "pass\n"})
    await env.make_pod("twin-b", recipe("twin"), {"script/run.py": "pass\n"})
    await env.make_pod("broken", None, recipe_text='{"name": "broken", "golem": {}}')
    await env.make_pod("photos", None, {"cat.jpg": b"\xff\xd8"})
    persisted = await env.protocol.persist("modern")

    shown = await env.protocol.rebuild_registry()

    pods = {entry["pod"]: entry for entry in shown["pods"]}
    assert sorted(pods) == ["broken", "legacy1", "modern", "twin-a", "twin-b"]
    assert pods["legacy1"]["legacy"] is True and pods["legacy1"]["name"] == "oldie"
    assert pods["legacy1"]["problems"] == ["name: 'oldie' differs from the pod's name 'legacy1'"]
    assert pods["modern"] == {
        "pod": "modern",
        "name": "modern",
        "description": "test pod modern",
        "public": True,
        "task": False,
        "refs": [persisted.ref],
        "last_run": None,
        "legacy": False,
        "output": None,
        "problems": [],
    }
    assert any("also the name in pod twin-b" in p for p in pods["twin-a"]["problems"])
    assert any("golem.exec: missing" in p for p in pods["broken"]["problems"])
    registry = json.loads(await env.store.read_bytes("ComputePodRegistry", "/Registry.json"))
    assert sorted(registry) == ["legacy1", "modern", "twin-a", "twin-b"]

    # The same view is what MOUNT/.sovr/registry.json shows, with the last run.
    await env.run("modern")
    text = await env.fs((env.path / ".sovr" / "registry.json").read_text)
    shown_again = {e["pod"]: e for e in json.loads(text)["pods"]}
    assert shown_again["modern"]["last_run"] == "succeeded"


@pytest.mark.expect_warnings
async def test_unreadable_registry_is_kept_aside(proto: Proto) -> None:
    env = proto
    await env.store.create_pod("ComputePodRegistry")
    await env.store.write_bytes("ComputePodRegistry", "/Registry.json", b"{not json")
    await env.make_pod("modern", recipe("modern"), {"script/run.py": "pass\n"})

    shown = await env.protocol.registry()
    assert shown["pods"] == [] and "Registry.json" in shown["problems"][0]

    await env.protocol.persist("modern")
    names = [n for n, _ in await env.store.listdir("ComputePodRegistry", "/")]
    aside = [n for n in names if n.startswith("Registry.json.unreadable-")]
    assert len(aside) == 1
    assert await env.store.read_bytes("ComputePodRegistry", "/" + aside[0]) == b"{not json"
    registry = json.loads(await env.store.read_bytes("ComputePodRegistry", "/Registry.json"))
    assert list(registry) == ["modern"]


async def test_import_legacy_pod(proto: Proto) -> None:
    env = proto
    original = await make_legacy_pod(env, "legacy1")

    await env.protocol.import_legacy("legacy1", "revived")

    root = env.pod("revived")
    names = sorted(await env.fs(os.listdir, root))
    assert names == [".sovr", "oldie.recipe", "payload", "script"]
    got = await env.fs(listing, root, lambda rel: rel in (".sovr", "oldie.recipe"))
    assert got == original
    status = await env.run("revived")
    assert status["state"] == "succeeded", status
    hello = await env.fs((root / "output" / "hello.txt").read_text)
    assert hello == "hello from the past"

    with pytest.raises(AlreadyExists):
        await env.protocol.import_legacy("legacy1", "revived")
    with pytest.raises(RecipeError) as info:
        await env.protocol.import_legacy("revived", "again")
    assert "not a pod of the original tool" in str(info.value)


async def test_import_of_hostile_legacy_zip_leaves_nothing(proto: Proto) -> None:
    env = proto
    evil = env.tmp / "evil.zip"
    import zipfile

    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("script/run.py", "pass\n")
        zf.writestr("../../escape.txt", "x")
    await env.make_pod(
        "trap", None, {"recipe.json": json.dumps(recipe("trap")), "trap.zip": evil.read_bytes()}
    )
    before = await env.fs(listing, env.tmp, lambda rel: rel in ("mnt", "state"))

    with pytest.raises(ArchiveRejected) as info:
        await env.protocol.import_legacy("trap", "caught")

    assert info.value.errno == errno.EINVAL and info.value.reason == "path-escape"
    assert "caught" not in [p.name for p in await env.store.list_pods()]
    after = await env.fs(listing, env.tmp, lambda rel: rel in ("mnt", "state"))
    assert after == before


async def test_persist_self(proto: Proto) -> None:
    env = proto
    package = Path(sovrfs.__file__).parent

    ref = await env.protocol.persist_self()

    assert is_sharing_ref(ref)
    assert await env.protocol.pod_ref(SELF_POD) == ref
    name = await env.protocol.fork(f"{ref} sovr-copy")
    copy = env.pod(name)
    top = sorted(await env.fs(os.listdir, copy))
    expected = ["sovrfs"] + [
        n for n in ("README.md", "pyproject.toml") if (package.parent / n).is_file()
    ]
    assert top == sorted(expected)
    mine = await env.fs((copy / "sovrfs" / "protocol" / "__init__.py").read_bytes)
    assert mine == (package / "protocol" / "__init__.py").read_bytes()
    assert (
        await env.fs((copy / "sovrfs" / "recipe.py").read_bytes)
        == (package / "recipe.py").read_bytes()
    )
    copied = await env.fs(listing, copy)
    assert not [p for p in copied if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in copied if any(part.startswith(".") for part in p.split("/"))]
    assert "sovrfs/py.typed" in copied

    # Persisting again replaces the previous content.
    await env.fs((env.pod(SELF_POD) / "stale.txt").write_text, "old")
    again = await env.protocol.persist_self()
    assert "stale.txt" not in await env.fs(os.listdir, env.pod(SELF_POD))
    assert is_sharing_ref(again)
    assert await env.protocol.pod_ref(SELF_POD) == again
