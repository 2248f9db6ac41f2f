"""The engine's state directory: one JSON file per pod with its run records.

A pod's file holds its finished runs (oldest first, capped) and the run in
flight, with the pid, process start time and boot id the next daemon needs to
recognise left-over processes. Files are replaced atomically (temporary file,
fsync, rename, fsync of the directory), so a crash leaves the old or the new
file, never a torn one. All functions here block; the engine calls them from
a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .record import RunRecord

log = logging.getLogger(__name__)

FORMAT = 1


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.pods_dir = self.path / "runs"

    def _file(self, pod: str) -> Path:
        return self.pods_dir / f"{quote(pod, safe='')}.json"

    def load_all(self) -> dict[str, list[RunRecord]]:
        """Every pod's records. An unreadable file is reported and skipped."""
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        pods: dict[str, list[RunRecord]] = {}
        for file in sorted(self.pods_dir.glob("*.json")):
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
                pod = str(data.get("pod") or unquote(file.stem))
                pods[pod] = [RunRecord.from_state(item) for item in data["runs"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable run records %s: %s", file, exc)
        return pods

    def save(self, pod: str, records: list[dict[str, Any]]) -> None:
        """Replace the pod's file with ``records`` (from :meth:`RunRecord.to_state`).

        With no records the file is deleted.
        """
        target = self._file(pod)
        if not records:
            target.unlink(missing_ok=True)
            return
        data: dict[str, Any] = {
            "format": FORMAT,
            "pod": pod,
            "runs": records,
        }
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.pods_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename is durable only once the directory itself is on disk.
        dir_fd = os.open(self.pods_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
