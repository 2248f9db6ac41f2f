"""Keep secrets out of run logs.

A requestor's output is captured in chunks as it is produced, and a secret can
be cut in two by a chunk boundary (yapapi's debug log writes the app key into
every request line). :class:`StreamScrubber` therefore holds back the last few
bytes of each chunk, just fewer than the longest secret, until it knows they
do not start one.

Secrets come from several owners (the Golem app key, the FairOS-DFS password),
so they are collected in one :class:`SecretSet` that scrubbers consult; a
secret added while a stream is being scrubbed applies from the next chunk on.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Iterable

MASK = b"***"


class SecretSet:
    """The secrets to mask; safe to extend from any thread."""

    def __init__(self, secrets: Iterable[str | bytes] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[bytes] = set()
        self._version = 0
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | bytes) -> None:
        """Mask ``secret`` from now on, also in its URL-encoded form."""
        forms = {secret.encode() if isinstance(secret, str) else secret}
        text = secret if isinstance(secret, str) else secret.decode(errors="replace")
        forms.add(urllib.parse.quote(text, safe="").encode())
        forms.add(urllib.parse.quote_plus(text).encode())
        with self._lock:
            new = {form for form in forms if form} - self._secrets
            if new:
                self._secrets |= new
                self._version += 1

    def snapshot(self) -> tuple[int, frozenset[bytes]]:
        with self._lock:
            return self._version, frozenset(self._secrets)


class Scrubber:
    """Mask every secret of a :class:`SecretSet` in complete texts."""

    def __init__(self, secrets: SecretSet) -> None:
        self._secrets = secrets
        self._version = -1
        self._pattern: re.Pattern[bytes] | None = None
        self.longest = 0

    def _refresh(self) -> re.Pattern[bytes] | None:
        version, secrets = self._secrets.snapshot()
        if version != self._version:
            self._version = version
            # Longest first, so a secret that contains another is masked whole.
            ordered = sorted(secrets, key=len, reverse=True)
            self._pattern = re.compile(b"|".join(map(re.escape, ordered))) if ordered else None
            self.longest = len(ordered[0]) if ordered else 0
        return self._pattern

    def scrub(self, data: bytes) -> bytes:
        pattern = self._refresh()
        return pattern.sub(MASK, data) if pattern else data

    def scrub_text(self, text: str) -> str:
        return self.scrub(text.encode(errors="surrogateescape")).decode(errors="surrogateescape")


class StreamScrubber:
    """Mask secrets in a stream fed in arbitrary chunks.

    ``feed()`` returns what is safe to write now; ``flush()`` returns the rest
    once the stream has ended. The concatenated output equals
    ``Scrubber.scrub()`` of the concatenated input.
    """

    def __init__(self, secrets: SecretSet) -> None:
        self._scrubber = Scrubber(secrets)
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        pattern = self._scrubber._refresh()
        if pattern is None:
            self._held = b""
            return data
        # A secret starting before `limit` lies wholly inside `data`; one
        # starting at or after it may still continue in the next chunk.
        limit = len(data) - (self._scrubber.longest - 1)
        out: list[bytes] = []
        pos = 0
        for match in pattern.finditer(data):
            if match.start() >= limit:
                break
            out += (data[pos : match.start()], MASK)
            pos = match.end()
        cut = max(pos, limit)
        out.append(data[pos:cut])
        self._held = data[cut:]
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._held = self._held, b""
        return self._scrubber.scrub(rest)
