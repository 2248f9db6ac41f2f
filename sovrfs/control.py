"""The virtual control files: how users drive sovrfs through the mount.

::

    MOUNT/.sovr/            fork, status.json, registry.json
    MOUNT/<pod>/.sovr/      run, cancel, status, log, persist, ref, refresh, runs/

Nothing here is ever stored in a pod. A control file either *reads* (its
content is made when it is opened, so one ``read`` sequence sees one
consistent text) or *acts*:

* ``run``, ``cancel``, ``persist`` and ``refresh`` act when they are opened
  for writing, so ``touch`` and ``echo > FILE`` both trigger exactly once and
  the caller's ``open()`` itself fails with the errno (``EBUSY`` for a pod that
  is already running, ``EINVAL`` for a bad recipe, with the reason in
  ``.sovr/status``).
* ``fork`` takes the sharing reference written to it and acts when a whole
  line has arrived (or at ``close()`` for text without a newline), so the
  error reaches the ``write()`` of ``echo REF > .sovr/fork``.

The :class:`Controller` is the one object the FUSE layer asks about anything
virtual; it owns the link to the run engine and the protocol.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import NotFound, PermissionDenied, SovrError
from .store.base import Attr, Kind

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger(__name__)

#: How long the answer to "is this pod a compute pod?" is trusted.
_COMPUTE_TTL = 1.0


def _now_ns() -> int:
    return time.time_ns()


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


class VHandle:
    """An open control file."""

    direct_io = True

    async def read(self, off: int, size: int) -> bytes:
        return b""

    async def write(self, off: int, data: bytes) -> int:
        raise PermissionDenied("this control file is read-only")

    async def flush(self) -> None:
        pass

    async def release(self) -> None:
        pass


class BytesHandle(VHandle):
    """Serves a text fixed when the file was opened."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    async def read(self, off: int, size: int) -> bytes:
        return self.content[off : off + size]


class Virtual:
    """A control file or directory."""

    kind = Kind.FILE
    mode = 0o444

    def __init__(self) -> None:
        self.created_ns = _now_ns()

    def _attr(self, size: int, mode: int | None = None) -> Attr:
        t = self.created_ns
        nlink = 2 if self.kind is Kind.DIR else 1
        return Attr(self.kind, self.mode if mode is None else mode, size, t, t, t, nlink=nlink)

    async def getattr(self) -> Attr:
        return self._attr(0)

    async def lookup(self, name: str) -> Virtual | None:
        return None

    async def list(self) -> list[tuple[str, Virtual]]:
        return []

    async def open(self, flags: int) -> VHandle:
        raise PermissionDenied("not a file")

    async def readlink(self) -> str:
        raise NotFound("not a symbolic link")


class VirtualDir(Virtual):
    kind = Kind.DIR
    mode = 0o755

    def __init__(self, entries: dict[str, Virtual] | None = None) -> None:
        super().__init__()
        self.entries = entries or {}

    async def lookup(self, name: str) -> Virtual | None:
        return self.entries.get(name)

    async def list(self) -> list[tuple[str, Virtual]]:
        return sorted(self.entries.items())


class ReadFile(Virtual):
    """A file whose text is made by ``render`` each time it is opened."""

    def __init__(self, render: Callable[[], Awaitable[bytes]]) -> None:
        super().__init__()
        self.render = render

    async def getattr(self) -> Attr:
        # Rendering here gives `ls -l` a true size; renderers are in-memory
        # and cheap, and the size is never cached (attr timeout 0).
        return self._attr(len(await self.render()))

    async def open(self, flags: int) -> VHandle:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionDenied("this control file is read-only")
        return BytesHandle(await self.render())


class _ActionFile(Virtual):
    """A control file that acts on writes; reading it shows what it does."""

    mode = 0o644

    def __init__(self, help_text: str) -> None:
        super().__init__()
        self.help = help_text.encode()

    async def getattr(self) -> Attr:
        return self._attr(len(self.help))

    async def open(self, flags: int) -> VHandle:
        if flags & (os.O_WRONLY | os.O_RDWR):
            return await self._open_for_writing()
        return BytesHandle(self.help)

    async def _open_for_writing(self) -> VHandle:
        raise NotImplementedError


class TriggerFile(_ActionFile):
    """Acts when opened for writing, so the open itself reports a refusal."""

    def __init__(self, action: Callable[[], Awaitable[object]], help_text: str) -> None:
        super().__init__(help_text)
        self.action = action

    async def _open_for_writing(self) -> VHandle:
        await self.action()
        return _SinkHandle()


class _SinkHandle(VHandle):
    """What was written to a trigger file after it acted: accepted and ignored."""

    async def write(self, off: int, data: bytes) -> int:
        return len(data)


class InputFile(_ActionFile):
    """Acts on each line written to it (``echo REF > .sovr/fork``)."""

    def __init__(self, action: Callable[[str], Awaitable[None]], help_text: str) -> None:
        super().__init__(help_text)
        self.action = action

    async def _open_for_writing(self) -> VHandle:
        return _LineHandle(self.action)


class _LineHandle(VHandle):
    def __init__(self, action: Callable[[str], Awaitable[None]]) -> None:
        self.action = action
        self.buffer = b""

    async def write(self, off: int, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) > 64 * 1024:
            self.buffer = b""
            raise SovrError("too much input for a control file")
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            await self._act(line)
        return len(data)

    async def _act(self, line: bytes) -> None:
        text = line.decode(errors="replace").strip()
        if text:
            await self.action(text)

    async def flush(self) -> None:
        line, self.buffer = self.buffer, b""
        await self._act(line)


class LogFile(Virtual):
    """``.sovr/log``: the current or last run's log, read from the pod."""

    def __init__(self, app: App, pod: str) -> None:
        super().__init__()
        self.app = app
        self.pod = pod

    def _path(self) -> str | None:
        return self.app.log_path_of(self.pod)

    async def getattr(self) -> Attr:
        path = self._path()
        if path is None:
            return self._attr(len(_NO_RUN))
        try:
            attr = await self.app.store.stat(self.pod, path)
        except NotFound:
            return self._attr(0)
        return self._attr(attr.size)

    async def open(self, flags: int) -> VHandle:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionDenied("the log is written by the run")
        path = self._path()
        if path is None:
            return BytesHandle(_NO_RUN)
        try:
            fd = await self.app.store.open_file(self.pod, path, os.O_RDONLY)
        except NotFound:
            return BytesHandle(b"")
        return _StoreFileHandle(self.app, self.pod, path, fd)


_NO_RUN = b"no run yet: write or touch .sovr/run to start one\n"


class _StoreFileHandle(VHandle):
    def __init__(self, app: App, pod: str, path: str, fd: int) -> None:
        self.app = app
        self.pod = pod
        self.path = path
        self.fd = fd

    async def read(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    async def release(self) -> None:
        await self.app.store.close_file(self.pod, self.path, self.fd, written=False)


class RunsDir(Virtual):
    """``.sovr/runs/``: one JSON record per finished run."""

    kind = Kind.DIR
    mode = 0o555

    def __init__(self, app: App, pod: str) -> None:
        super().__init__()
        self.app = app
        self.pod = pod
        self._files: dict[str, ReadFile] = {}

    def _file(self, run_id: str) -> ReadFile:
        file = self._files.get(run_id)
        if file is None:

            async def render() -> bytes:
                record = self.app.engine.record(self.pod, run_id)
                return _json_bytes(record.to_json() if record is not None else {})

            file = self._files[run_id] = ReadFile(render)
        return file

    async def list(self) -> list[tuple[str, Virtual]]:
        return [
            (f"{r.run_id}.json", self._file(r.run_id)) for r in self.app.engine.history(self.pod)
        ]

    async def lookup(self, name: str) -> Virtual | None:
        if not name.endswith(".json"):
            return None
        run_id = name[: -len(".json")]
        if self.app.engine.record(self.pod, run_id) is None:
            return None
        return self._file(run_id)


class Controller:
    """Builds and caches the virtual trees; answers the FUSE layer's questions."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._root: VirtualDir | None = None
        self._pod_dirs: dict[str, VirtualDir] = {}
        self._compute: dict[str, tuple[bool, float]] = {}

    # -- the mount root ----------------------------------------------------

    def root_dir(self) -> VirtualDir:
        if self._root is None:
            app = self.app
            self._root = VirtualDir(
                {
                    "fork": InputFile(
                        app.fork_from_control,
                        "write a sharing reference (64 hex characters) here to fork "
                        "that pod:  echo REF > .sovr/fork\n",
                    ),
                    "status.json": ReadFile(lambda: app.render_status()),
                    "registry.json": ReadFile(lambda: app.render_registry()),
                    "rebuild-registry": TriggerFile(
                        app.rebuild_registry,
                        "write or touch this file to rescan every pod into the registry\n",
                    ),
                    "persist-self": TriggerFile(
                        app.persist_self,
                        "write or touch this file to persist sovrfs's own source in pod Sovr\n",
                    ),
                    "refresh": InputFile(
                        app.refresh_from_control,
                        'write a pod name here (or "*" for all) to drop cached listings '
                        "so changes made elsewhere show\n",
                    ),
                    "import": InputFile(
                        app.import_from_control,
                        "write LEGACY_POD NEW_POD here to turn a pod persisted by the "
                        "original tool into a compute pod\n",
                    ),
                }
            )
        return self._root

    # -- pods --------------------------------------------------------------

    async def is_compute_pod(self, pod: str, entries: list[str] | None = None) -> bool:
        cached = self._compute.get(pod)
        now = time.monotonic()
        if entries is None and cached is not None and cached[1] > now:
            return cached[0]
        if entries is None:
            try:
                entries = [name for name, _ in await self.app.store.listdir(pod, "/")]
            except NotFound:
                return False
        compute = any(n.endswith(".recipe") and n != ".recipe" for n in entries)
        self._compute[pod] = (compute, now + _COMPUTE_TTL)
        return compute

    async def pod_dir(self, pod: str, entries: list[str] | None = None) -> VirtualDir | None:
        if not await self.is_compute_pod(pod, entries):
            return None
        vdir = self._pod_dirs.get(pod)
        if vdir is None:
            vdir = self._pod_dirs[pod] = self._make_pod_dir(pod)
        return vdir

    def _make_pod_dir(self, pod: str) -> VirtualDir:
        app = self.app
        return VirtualDir(
            {
                "run": TriggerFile(
                    lambda: app.start_run(pod), "write or touch this file to start a run\n"
                ),
                "cancel": TriggerFile(
                    lambda: app.cancel_run(pod), "write or touch this file to stop the run\n"
                ),
                "persist": TriggerFile(
                    lambda: app.persist(pod),
                    "write or touch this file to persist the pod (and share it if public)\n",
                ),
                "refresh": TriggerFile(
                    lambda: app.refresh(pod),
                    "write or touch this file to drop cached listings of this pod\n",
                ),
                "status": ReadFile(lambda: app.render_pod_status(pod)),
                "ref": ReadFile(lambda: app.render_ref(pod)),
                "log": LogFile(app, pod),
                "runs": RunsDir(app, pod),
            }
        )

    def tree_changed(self, pod: str, path: str, *, external: bool = False) -> None:
        """Something in ``pod`` changed at ``path`` (by this mount or from outside)."""
        if path.count("/") == 1 and path.endswith(".recipe"):
            self._compute.pop(pod, None)
            self.app.recipe_changed(pod)

    def file_saved(self, pod: str, path: str) -> None:
        """A file was written and closed through the mount (auto-run hook)."""
        self.app.file_saved(pod, path)

    def check_idle(self, pod: str) -> None:
        """Refuse (EBUSY) to remove or rename a pod that has a queued or running run."""
        self.app.check_idle(pod)

    async def pod_removed(self, pod: str) -> None:
        self._compute.pop(pod, None)
        self._pod_dirs.pop(pod, None)
        await self.app.pod_removed(pod)

    async def pod_renamed(self, old: str, new: str) -> None:
        self._compute.pop(old, None)
        self._pod_dirs.pop(old, None)
        await self.app.pod_renamed(old, new)

    # -- extended attributes -------------------------------------------------

    _XATTRS = ("state", "run_id", "reason", "recipe", "ref")

    async def pod_xattr_names(self, pod: str) -> list[str]:
        if not await self.is_compute_pod(pod):
            return []
        return [f"user.sovr.{name}" for name in self._XATTRS]

    async def pod_xattr(self, pod: str, name: str) -> bytes | None:
        if not name.startswith("user.sovr."):
            return None
        key = name[len("user.sovr.") :]
        if key not in self._XATTRS or not await self.is_compute_pod(pod):
            return None
        facts = await self.app.pod_facts(pod)
        value = facts.get(key)
        # An unset fact is "no such attribute": the store then answers ENODATA.
        return None if value is None else str(value).encode()
