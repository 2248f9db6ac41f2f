"""Content-addressed snapshots: exact round trips, dedup, and damage detection."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

import pytest

from sovrfs.errors import AlreadyExists, InvalidName, NotFound, PodStoreError
from sovrfs.snapshot import SnapshotStore

T0 = 1_650_000_000_123_456_789


def tree(root: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Every entry with its full mode, mtime in ns, size and content or link target."""
    out: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    st = root.lstat()
    out["."] = (st.st_mode, st.st_mtime_ns, 0, None)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            body: bytes | str | None = None
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = path.read_bytes()
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, size, body)
    return out


def make_pod(root: Path) -> Path:
    pod = root / "pod"
    (pod / "script").mkdir(parents=True)
    (pod / "payload" / "deep" / "er").mkdir(parents=True)
    (pod / "output").mkdir()
    (pod / ".sovr-not-control").mkdir()
    (pod / "script" / "run.py").write_text("print('hi')\n")
    os.chmod(pod / "script" / "run.py", 0o755)
    (pod / "payload" / "big.bin").write_bytes(os.urandom(3 * (1 << 20) + 17))
    (pod / "payload" / "deep" / "er" / "same1.txt").write_text("same content\n")
    (pod / "payload" / "same2.txt").write_text("same content\n")
    (pod / "payload" / "secret.txt").write_text("only me\n")
    os.chmod(pod / "payload" / "secret.txt", 0o600)
    (pod / "output" / "empty").write_bytes(b"")
    os.chmod(pod / "output" / "empty", 0o444)
    (pod / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name\n")
    os.symlink("../script/run.py", pod / "payload" / "link")
    os.symlink("/nonexistent/absolute", pod / "dangling")
    os.chmod(pod / "payload" / "deep", 0o750)
    os.chmod(pod / "output", 0o700)
    # Distinct nanosecond mtimes everywhere, directories last (their content
    # changes them), links without following them.
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(pod), reverse=True)):
        for j, name in enumerate(filenames + dirnames):
            path = os.path.join(dirpath, name)
            os.utime(path, ns=(T0 + i * 1000 + j, T0 + i * 1000 + j), follow_symlinks=False)
        os.utime(dirpath, ns=(T0 - i, T0 - i))
    return pod


def test_round_trip_preserves_bytes_modes_and_times(tmp_path: Path) -> None:
    pod = make_pod(tmp_path)
    store = SnapshotStore(tmp_path / "store")
    before = tree(pod)

    ref = store.freeze(pod, name="pod")
    assert re.fullmatch(r"[0-9a-f]{64}", ref)
    assert store.exists(ref)
    assert tree(pod) == before  # freezing touches nothing

    store.restore(ref, tmp_path / "fork")
    assert tree(tmp_path / "fork") == before
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fork", "pod", "store"]


def test_reference_is_the_hash_of_the_manifest(tmp_path: Path) -> None:
    pod = make_pod(tmp_path)
    store = SnapshotStore(tmp_path / "store")
    ref = store.freeze(pod, name="pod")
    data = (tmp_path / "store" / "refs" / f"{ref}.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == ref
    doc = json.loads(data)
    kinds = {e["path"]: e["kind"] for e in doc["entries"]}
    assert kinds["payload/link"] == "symlink"
    assert kinds["payload/deep"] == "dir"
    assert kinds["payload/big.bin"] == "file"


def test_info(tmp_path: Path) -> None:
    pod = make_pod(tmp_path)
    store = SnapshotStore(tmp_path / "store")
    ref = store.freeze(pod, name="my-pod")
    info = store.info(ref)
    assert info["name"] == "my-pod"
    assert info["files"] == 7
    assert info["bytes"] == sum(
        p.stat().st_size for p in pod.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["created"])


def test_exclude_drops_whole_subtrees(tmp_path: Path) -> None:
    pod = make_pod(tmp_path)
    store = SnapshotStore(tmp_path / "store")
    ref = store.freeze(pod, name="pod", exclude=lambda rel: rel == "payload" or rel.endswith(".py"))
    store.restore(ref, tmp_path / "fork")
    assert not (tmp_path / "fork" / "payload").exists()
    assert not (tmp_path / "fork" / "script" / "run.py").exists()
    assert (tmp_path / "fork" / "script").is_dir()


def test_identical_content_is_stored_once(tmp_path: Path) -> None:
    pod = make_pod(tmp_path)
    store = SnapshotStore(tmp_path / "store")
    objects = tmp_path / "store" / "objects"

    first = store.freeze(pod, name="pod")
    count = sum(1 for p in objects.rglob("*") if p.is_file())
    # 7 files, two of them with the same content.
    assert count == 6

    (pod / "payload" / "new.txt").write_text("new\n")
    second = store.freeze(pod, name="pod")
    assert second != first
    assert sum(1 for p in objects.rglob("*") if p.is_file()) == count + 1


def object_of(store_root: Path, ref: str, path: str) -> Path:
    doc = json.loads((store_root / "refs" / f"{ref}.json").read_bytes())
    obj = next(e["object"] for e in doc["entries"] if e["path"] == path)
    return store_root / "objects" / obj[:2] / obj[2:]


def test_damaged_object_is_detected(tmp_path: Path) -> None:
    pod = make_pod(tmp_path)
    store = SnapshotStore(tmp_path / "store")
    ref = store.freeze(pod, name="pod")
    victim = object_of(tmp_path / "store", ref, "payload/big.bin")
    os.chmod(victim, 0o644)
    with victim.open("r+b") as f:
        f.seek(2 << 20)
        byte = f.read(1)
        f.seek(2 << 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(PodStoreError, match="damaged"):
        store.restore(ref, tmp_path / "fork")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_object_is_detected(tmp_path: Path) -> None:
    pod = make_pod(tmp_path)
    store = SnapshotStore(tmp_path / "store")
    ref = store.freeze(pod, name="pod")
    object_of(tmp_path / "store", ref, "script/run.py").unlink()
    with pytest.raises(PodStoreError, match="missing"):
        store.restore(ref, tmp_path / "fork")
    assert not (tmp_path / "fork").exists()


def test_tampered_manifest_is_detected(tmp_path: Path) -> None:
    pod = make_pod(tmp_path)
    store = SnapshotStore(tmp_path / "store")
    ref = store.freeze(pod, name="pod")
    path = tmp_path / "store" / "refs" / f"{ref}.json"
    path.write_bytes(path.read_bytes().replace(b'"name":"pod"', b'"name":"pwn"'))
    with pytest.raises(PodStoreError, match="hash mismatch"):
        store.restore(ref, tmp_path / "fork")
    with pytest.raises(PodStoreError):
        store.info(ref)


def plant_manifest(store_root: Path, entries: list[dict[str, object]]) -> str:
    """Store a hand-made manifest under its true reference, as an attacker could."""
    doc = {
        "format": "sovrfs-snapshot-1",
        "name": "evil",
        "created_ns": 0,
        "root": {"mode": 0o755, "mtime_ns": 0},
        "entries": entries,
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    ref = hashlib.sha256(data).hexdigest()
    (store_root / "refs" / f"{ref}.json").write_bytes(data)
    return ref


EMPTY = hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    "entries",
    [
        [{"path": "../evil", "kind": "file", "mode": 0o644, "mtime_ns": 0, "size": 0}],
        [{"path": "/tmp/evil", "kind": "file", "mode": 0o644, "mtime_ns": 0, "size": 0}],
        [
            {"path": "a", "kind": "symlink", "mode": 0o777, "mtime_ns": 0, "size": 4},
            {"path": "a/evil", "kind": "file", "mode": 0o644, "mtime_ns": 0, "size": 0},
        ],
        [{"path": "x/evil", "kind": "file", "mode": 0o644, "mtime_ns": 0, "size": 0}],
        [
            {"path": "a", "kind": "dir", "mode": 0o755, "mtime_ns": 0, "size": 0},
            {"path": "a", "kind": "dir", "mode": 0o755, "mtime_ns": 0, "size": 0},
        ],
    ],
    ids=["dotdot", "absolute", "through-symlink", "no-parent", "repeated"],
)
def test_hostile_manifest_is_refused(tmp_path: Path, entries: list[dict[str, object]]) -> None:
    store = SnapshotStore(tmp_path / "store")
    for entry in entries:
        if entry["kind"] == "file":
            entry["object"] = EMPTY
        if entry["kind"] == "symlink":
            entry["target"] = "/tmp"
    ref = plant_manifest(tmp_path / "store", entries)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(PodStoreError):
        store.restore(ref, work / "fork")
    assert list(work.iterdir()) == []


def test_bad_references(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store")
    assert not store.exists("nope")
    assert not store.exists("0" * 64)
    with pytest.raises(InvalidName):
        store.restore("../../etc/passwd", tmp_path / "fork")
    with pytest.raises(NotFound):
        store.restore("0" * 64, tmp_path / "fork")
    pod = make_pod(tmp_path)
    ref = store.freeze(pod, name="pod")
    assert store.exists(ref.upper())
    with pytest.raises(AlreadyExists):
        store.restore(ref, pod)
