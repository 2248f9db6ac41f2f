"""The run's log file, written while the run goes on.

The log lies inside the pod. The daemon hands an opener that writes it
straight into the pod store (see :attr:`RunRequest.open_log`); without one,
the path is opened as a local file. Every write goes through a worker thread
so a slow disk never stalls the trio loop. Writes are unbuffered, so
``tail -f`` sees each chunk as it arrives.

A failing log (full disk, read-only directory) never stops the run: the bytes
are dropped, counted, and the failure is kept in :attr:`RunLog.warnings` for
the run's record. When writing works again, a note says how much was lost.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from ..errors import SovrError

log = logging.getLogger(__name__)


Opener = Callable[[str], Awaitable[tuple[int, Callable[[], Awaitable[None]]]]]


class RunLog:
    def __init__(
        self, path: str, limiter: trio.CapacityLimiter, opener: Opener | None = None
    ) -> None:
        self.path = path
        self._opener = opener
        self._closer: Callable[[], Awaitable[None]] | None = None
        self.warnings: list[str] = []
        self._limiter = limiter
        self._fd: int | None = None
        self._lost = 0
        self._failed_errnos: set[int] = set()

    async def open(self) -> None:
        try:
            if self._opener is not None:
                self._fd, self._closer = await self._opener(self.path)
            else:
                self._fd = await trio.to_thread.run_sync(self._open_blocking, limiter=self._limiter)
        except SovrError as exc:
            error = OSError(exc.errno, str(exc))
            self._fail(f"cannot open the log {self.path}", error, dropping=True)
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
            if self._closer is not None:
                await self._closer()
            else:
                await trio.to_thread.run_sync(os.close, fd, limiter=self._limiter)
        except SovrError as exc:
            self._fail(
                f"cannot close the log {self.path}", OSError(exc.errno, str(exc)), dropping=False
            )
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
