"""The run's log file, written while the run goes on.

The log normally lies inside the pod, that is on the daemon's own FUSE mount:
every open and write goes through a worker thread, because a write blocking
the trio loop would wait for a FUSE request that only the same loop can
answer. Writes are unbuffered, so ``tail -f`` sees each chunk as it arrives.

A failing log (full disk, read-only directory) never stops the run: the bytes
are dropped, counted, and the failure is kept in :attr:`RunLog.warnings` for
the run's record. When writing works again, a note says how much was lost.
"""

from __future__ import annotations

import errno
import logging
import os

import trio

log = logging.getLogger(__name__)


class RunLog:
    def __init__(self, path: str, limiter: trio.CapacityLimiter) -> None:
        self.path = path
        self.warnings: list[str] = []
        self._limiter = limiter
        self._fd: int | None = None
        self._lost = 0
        self._failed_errnos: set[int] = set()

    async def open(self) -> None:
        try:
            self._fd = await trio.to_thread.run_sync(self._open_blocking, limiter=self._limiter)
        except OSError as exc:
            self._fail(f"cannot open the log {self.path}", exc, dropping=True)

    def _open_blocking(self) -> int:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    async def write(self, data: bytes) -> None:
        """Append ``data``; never raises."""
        if not data:
            return
        if self._fd is None:
            self._lost += len(data)
            return
        if self._lost:
            data = f"\n[sovrfs: {self._lost} bytes of output were lost]\n".encode() + data
        try:
            await trio.to_thread.run_sync(
                self._write_blocking, self._fd, data, limiter=self._limiter
            )
        except OSError as exc:
            self._lost += len(data)
            self._fail(f"cannot write the log {self.path}", exc, dropping=True)
        else:
            self._lost = 0

    @staticmethod
    def _write_blocking(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    async def aclose(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            await trio.to_thread.run_sync(os.close, fd, limiter=self._limiter)
        except OSError as exc:
            # Remote stores upload on close; a failure here means the log may not be kept.
            self._fail(f"cannot close the log {self.path}", exc, dropping=False)

    @property
    def lost(self) -> int:
        return self._lost

    def _fail(self, doing: str, exc: OSError, *, dropping: bool) -> None:
        code = exc.errno or errno.EIO
        if code in self._failed_errnos:
            return
        self._failed_errnos.add(code)
        text = f"{doing}: {exc.strerror or exc}"
        if dropping:
            text += "; the run goes on, its output is dropped until the log can be written"
        self.warnings.append(text)
        log.warning("%s", text)
