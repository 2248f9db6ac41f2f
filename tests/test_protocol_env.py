"""The environment of the protocol tests: a real mount served in the test's own process.

The protocol copies trees *through the mount*, from worker threads, while the
same trio loop serves the FUSE requests those copies cause; that is the
situation these tests recreate. ``proto`` builds the daemon's parts (store,
run engine, :class:`~sovrfs.app.App`, the pyfuse3 handlers) and mounts them
in-process, so a test can call :class:`~sovrfs.protocol.Protocol` directly
and still see every byte go through FUSE. A test that touches the mount
itself must do so from a thread too (:meth:`Proto.fs`): a blocking call on
the trio thread would wait for a reply only that thread can give.

The store is a fixture parameter; everything store-specific lives in
``_open_store``, so the same tests run on every pod store.

This module holds fixtures and helpers only; the tests import them.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import pytest
import trio

from sovrfs.app import App, AppSettings
from sovrfs.control import Controller
from sovrfs.fs import MountOptions, Operations
from sovrfs.runs import RunEngine
from sovrfs.store.base import PodStore
from sovrfs.store.dfs import DfsStore
from sovrfs.store.embedded import EmbeddedStore

T = TypeVar("T")

#: Every wait in these tests is bounded by this many seconds.
WAIT = 60.0

#: watchdog's inotify thread warns when a directory it watches is renamed while
#: it adds watches below it (a fork renames its restored tree into place). With
#: warnings turned into errors that warning kills the watch thread, which has
#: nothing to do with the behaviour under test; only this one message is let through.
WATCHDOG_RENAME_RACE = pytest.mark.filterwarnings(
    "ignore:Callback with id .* already exists for watch:RuntimeWarning"
)


def recipe(name: str, exec_: str = "python3 script/run.py", **extra: Any) -> dict[str, Any]:
    """A recipe that runs without a Golem node."""
    golem: dict[str, Any] = {
        "exec": exec_,
        "script": "script",
        "payload": "payload",
        "output": "output",
        "log": "logs",
    }
    golem.update(extra.pop("golem", {}))
    doc: dict[str, Any] = {
        "name": name,
        "description": f"test pod {name}",
        "version": "1.0",
        "author": "tests",
        "public": True,
        "golem": golem,
        "sovr": {"golem": {"node": False}},
    }
    doc.update(extra)
    return doc


def forks_keep_modes(store: PodStore) -> bool:
    """Whether a fork of a shared pod keeps the permission bits of its entries.

    FairOS-DFS forks on the server, and its fork gives every entry the
    server's default mode (files 0600, directories 0700); the content and the
    tree are kept (docs/fairos-dfs.rst).
    """
    return store.kind != "fairos-dfs"


def shares_are_snapshots(store: PodStore) -> bool:
    """Whether sharing a pod again after a change gives a new reference.

    The embedded store shares a snapshot, so each share has its own
    reference. FairOS-DFS gives a pod one reference for good, and a fork of
    it copies the pod as it is when forked.
    """
    return store.kind != "fairos-dfs"


def without_modes(tree: dict[str, Any]) -> dict[str, Any]:
    """A :func:`listing` with the permission bits left out: kind and content only."""
    return {rel: (entry[0], *entry[2:]) for rel, entry in tree.items()}


def trigger(path: Path) -> None:
    """Open a control file for writing, as ``touch`` and ``echo >`` do."""
    with open(path, "w"):
        pass


def listing(root: Path, skip: Callable[[str], bool] = lambda rel: False) -> dict[str, Any]:
    """Every entry below ``root``: kind, permission bits, and content or link target."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if skip(rel):
                if name in dirnames:
                    dirnames.remove(name)
                continue
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode)
            else:
                out[rel] = ("file", mode, path.read_bytes())
        dirnames[:] = [d for d in dirnames if not os.path.islink(Path(dirpath) / d)]
    return out


@dataclass
class Proto:
    """A mounted store with the daemon's parts, all in this process."""

    path: Path
    store: PodStore
    app: App
    engine: RunEngine
    tmp: Path

    @property
    def protocol(self) -> Any:
        return self.app.protocol

    async def fs(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking file work on the mount, from a thread."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    def pod(self, name: str) -> Path:
        return self.path / name

    async def make_pod(
        self,
        name: str,
        doc: dict[str, Any] | None,
        files: dict[str, bytes | str] | None = None,
        *,
        recipe_text: str | None = None,
    ) -> Path:
        """Create a pod through the mount with a recipe and files."""

        def make() -> Path:
            root = self.path / name
            root.mkdir()
            if recipe_text is not None:
                (root / f"{name}.recipe").write_text(recipe_text)
            elif doc is not None:
                (root / f"{name}.recipe").write_text(json.dumps(doc, indent=2))
            for rel, data in (files or {}).items():
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(data, str):
                    target.write_text(data)
                else:
                    target.write_bytes(data)
            return root

        return await self.fs(make)

    async def run(self, pod: str) -> dict[str, Any]:
        """Start a run through ``.sovr/run`` and wait for it; return ``.sovr/status``."""
        await self.fs(trigger, self.path / pod / ".sovr" / "run")
        return await self.wait_run(pod)

    async def wait_run(self, pod: str) -> dict[str, Any]:
        with trio.fail_after(WAIT):
            while True:
                record = self.engine.current(pod)
                if record is not None and record.finished:
                    status: dict[str, Any] = json.loads(
                        await self.fs((self.path / pod / ".sovr" / "status").read_text)
                    )
                    return status
                await trio.sleep(0.05)


def _open_store(request: pytest.FixtureRequest, tmp: Path) -> PodStore:
    kind = request.param
    if kind == "embedded":
        return EmbeddedStore(tmp / "store")
    if kind == "dfs":
        user = request.getfixturevalue("dfs_user")
        # The cache sits in the test's directory, as the daemon's sits in the
        # XDG cache home; tests that watch that directory leave it out.
        return DfsStore(user.url, user.username, user.password, tmp / "dfs-cache")
    raise AssertionError(f"unknown store kind {kind}")


@pytest.fixture(params=["embedded", pytest.param("dfs", marks=pytest.mark.dfs)])
async def proto(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Proto]:
    """A store mounted in-process at ``tmp_path/mnt`` with App, engine and protocol serving."""
    store = _open_store(request, tmp_path)
    await store.start()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    state = tmp_path / "state"
    holder: dict[str, Operations] = {}
    engine = RunEngine(
        state / "runs",
        max_parallel=2,
        grace_int=2.0,
        grace_term=2.0,
        on_change=lambda pod: holder["ops"].control_changed(pod),
    )
    app = App(store, engine, None, AppSettings(mountpoint=str(mnt), state_dir=state))
    ops = holder["ops"] = Operations(store, Controller(app), MountOptions())
    app.operations = ops
    pyfuse3.init(ops, str(mnt), set(pyfuse3.default_options) | {"fsname=sovrfs-test"})
    try:
        async with trio.open_nursery() as outer:
            ops.nursery = outer
            outer.start_soon(pyfuse3.main)
            async with trio.open_nursery() as inner:
                await inner.start(app.serve)
                if not app.protocol.tasks.serving:
                    await inner.start(app.protocol.serve)
                inner.start_soon(ops.serve_changes)
                await trio.to_thread.run_sync(os.stat, mnt)
                yield Proto(mnt, store, app, engine, tmp_path)
                inner.cancel_scope.cancel()
            pyfuse3.terminate()
    finally:
        ops.nursery = None
        pyfuse3.close(unmount=True)
        # Only after a failure can the mount still be there; a lazy unmount clears it.
        await trio.run_process(
            ["fusermount3", "-u", "-z", str(mnt)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        await store.aclose()
