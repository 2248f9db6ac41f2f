"""External payloads: fetched from shared pods into payload/external/, hostile ones refused."""

from __future__ import annotations

import errno
import io
import os
import stat
import zipfile

import pytest

from sovrfs.errors import ArchiveRejected, SovrError
from sovrfs.protocol.payloads import cache_pod_name
from sovrfs.recipe import Recipe, parse_recipe
from tests.test_protocol_env import WATCHDOG_RENAME_RACE, Proto, listing, proto, recipe

__all__ = ["proto"]

pytestmark = WATCHDOG_RENAME_RACE

LIST_PAYLOAD = """
import os, pathlib
root = pathlib.Path('payload/external')
names = sorted(str(p.relative_to(root)) for p in root.rglob('*'))
pathlib.Path('output').mkdir(exist_ok=True)
pathlib.Path('output/seen.txt').write_text('\\n'.join(names))
"""


def zip_bytes(members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buf.getvalue()


def file_member(name: str, mode: int = 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 5, 1, 12, 0, 0))
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


async def publish(env: Proto, name: str, files: dict[str, bytes | str]) -> str:
    """A pod someone else shared: made, then published as it is."""
    await env.make_pod(name, None, files)
    ref: str = await env.store.share_pod(name)
    return ref


async def consumer(env: Proto, name: str, payload: list[dict[str, str]]) -> Recipe:
    doc = recipe(name, golem={"payload": payload})
    await env.make_pod(name, doc, {"script/run.py": LIST_PAYLOAD})
    parsed = parse_recipe(await env.store.read_bytes(name, f"/{name}.recipe"))
    assert isinstance(parsed, Recipe)
    return parsed


async def test_external_payloads_zip_file_and_directory(proto: Proto) -> None:
    env = proto
    images = zip_bytes(
        [
            (file_member("images/a.png"), b"A" * 5000),
            (file_member("images/b.png", 0o600), b"B" * 7000),
        ]
    )
    ref = await publish(
        env,
        "images",
        {
            "images.zip": images,
            "jake/lime.txt": "lime\n",
            "set/one.txt": "1",
            "set/sub/two.txt": "2",
        },
    )
    payload = [
        {"ref": ref, "data": "/images.zip"},
        {"ref": ref, "data": "/jake/lime.txt"},
        {"ref": ref, "data": "set"},
    ]
    doc = await consumer(env, "xcep", payload)

    status = await env.run("xcep")

    assert status["state"] == "succeeded", status
    seen = (await env.fs((env.pod("xcep") / "output" / "seen.txt").read_text)).split("\n")
    assert seen == [
        "images",
        "images/a.png",
        "images/b.png",
        "lime.txt",
        "set",
        "set/one.txt",
        "set/sub",
        "set/sub/two.txt",
    ]
    external = env.pod("xcep") / "payload" / "external"
    got = await env.fs(listing, external)
    assert got["images/b.png"] == ("file", 0o600, b"B" * 7000)
    assert got["lime.txt"][2] == b"lime\n"
    # One cache pod per reference, forked once and marked as someone else's.
    pods = [p.name for p in await env.store.list_pods()]
    assert pods.count(cache_pod_name(ref)) == 1

    # Unchanged payloads are left alone on the next run.
    notes = await env.protocol.prepare_payloads("xcep", doc)
    assert len(notes) == 3 and all(n.endswith(": unchanged") for n in notes), notes
    assert await env.fs(listing, external) == got

    # A payload file changed in the pod is brought back to the shared bytes.
    await env.fs((external / "images" / "a.png").write_bytes, b"tampered")
    await env.fs((external / "lime.txt").write_text, "tampered")
    notes = await env.protocol.prepare_payloads("xcep", doc)
    assert "unpacked 2 files" in notes[0] and "copied" in notes[1] and "unchanged" in notes[2]
    assert await env.fs(listing, external) == got
    leftovers = [n for n in await env.fs(os.listdir, external) if n.startswith(".")]
    assert leftovers == []


async def test_missing_payload_stops_the_run(proto: Proto) -> None:
    env = proto
    ref = await publish(env, "sparse", {"here.txt": "x"})
    doc = await consumer(env, "needy", [{"ref": ref, "data": "/not-there.zip"}])

    with pytest.raises(SovrError) as info:
        await env.protocol.prepare_payloads("needy", doc)
    assert info.value.errno == errno.ENOENT
    assert "golem.payload[0]" in str(info.value) and "not-there.zip" in str(info.value)
    with pytest.raises(OSError) as run:
        await env.fs(open, env.pod("needy") / ".sovr" / "run", "w")
    assert run.value.errno == errno.ENOENT
    assert env.engine.current("needy") is None or env.engine.current("needy").pid is None


def bomb() -> bytes:
    return zip_bytes([(file_member("zeros.bin"), bytes(20 << 20))])


HOSTILE = {
    "zip-slip": (
        lambda: zip_bytes([(file_member("ok.txt"), b"ok"), (file_member("../../evil.txt"), b"x")]),
        "path-escape",
    ),
    "absolute": (
        lambda: zip_bytes([(file_member("/tmp/sovrfs-proto-evil/evil.txt"), b"x")]),
        "path-escape",
    ),
    "symlink-member": (
        lambda: zip_bytes(
            [
                (
                    _link_member("link"),
                    b"/etc/passwd",
                ),
                (file_member("link/evil.txt"), b"x"),
            ]
        ),
        "symlink",
    ),
    "bomb": (bomb, "ratio"),
}


def _link_member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 5, 1, 12, 0, 0))
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def outside_listing(env: Proto) -> dict[str, object]:
    """Everything in the test's directory except the payload target and the store's
    own state (forking the cache pod is expected to write snapshots, and
    FairOS-DFS keeps its cached copies and journal in ``dfs-cache``), plus the
    victim pod as the mount shows it, where an escaping member would land on
    a store that keeps no directory tree of its own."""

    def skip(rel: str) -> bool:
        return rel in ("mnt", "state", "store/.sovrfs", "dfs-cache") or rel == (
            "store/victim/payload/external"
        )

    outside = listing(env.tmp, skip)
    pod = listing(env.pod("victim"), lambda rel: rel in (".sovr", "payload/external"))
    outside.update({f"mnt/victim/{rel}": entry for rel, entry in pod.items()})
    return outside


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_archive_payload_writes_nothing(proto: Proto, case: str) -> None:
    env = proto
    make, reason = HOSTILE[case]
    ref = await publish(env, f"hostile-{case}", {"data.zip": make()})
    doc = await consumer(env, "victim", [{"ref": ref, "data": "/data.zip"}])
    await env.protocol.payloads.cache_pod(ref)
    await env.fs((env.pod("victim") / "payload" / "external").mkdir, parents=True)
    before = await env.fs(outside_listing, env)

    with pytest.raises(SovrError) as info:
        await env.protocol.prepare_payloads("victim", doc)

    assert info.value.errno == errno.EINVAL
    cause = info.value.__cause__
    assert isinstance(cause, ArchiveRejected) and cause.reason == reason
    assert "golem.payload[0]" in str(info.value)
    assert await env.fs(outside_listing, env) == before
    assert await env.fs(os.listdir, env.pod("victim") / "payload" / "external") == []
    assert not await env.fs(os.path.lexists, "/tmp/sovrfs-proto-evil")

    # Through the control file the run is refused the same way, and nothing ran.
    with pytest.raises(OSError) as run:
        await env.fs(open, env.pod("victim") / ".sovr" / "run", "w")
    assert run.value.errno == errno.EINVAL
    assert not await env.fs((env.pod("victim") / "output").exists)


async def test_symlinks_are_never_followed(proto: Proto) -> None:
    env = proto
    outside = env.tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the user's own file")

    # A shared pod whose payload is a link to the host's files.
    await env.make_pod("linker", None, {"real.txt": "r"})
    if "symlink" not in env.store.features:
        # No link can be made in such a store, so none can be followed.
        with pytest.raises(OSError) as refused:
            await env.fs(os.symlink, str(outside / "secret.txt"), env.pod("linker") / "data.txt")
        assert refused.value.errno == errno.EOPNOTSUPP
        assert not await env.fs(os.path.lexists, env.pod("linker") / "data.txt")
        assert sorted(os.listdir(outside)) == ["secret.txt"]
        return
    await env.fs(os.symlink, str(outside / "secret.txt"), env.pod("linker") / "data.txt")
    ref = await env.store.share_pod("linker")
    doc = await consumer(env, "reader", [{"ref": ref, "data": "/data.txt"}])
    with pytest.raises(SovrError) as info:
        await env.protocol.prepare_payloads("reader", doc)
    assert info.value.errno == errno.ELOOP
    assert "symbolic link" in str(info.value)

    # A pod whose payload directory is a link out of the pod: never written through.
    ref2 = await publish(env, "plain", {"data.txt": "d"})
    doc2 = await consumer(env, "linked", [{"ref": ref2, "data": "/data.txt"}])
    await env.fs(os.symlink, str(outside), env.pod("linked") / "payload")
    with pytest.raises(SovrError) as info2:
        await env.protocol.prepare_payloads("linked", doc2)
    assert info2.value.errno == errno.ELOOP
    assert sorted(os.listdir(outside)) == ["secret.txt"]
