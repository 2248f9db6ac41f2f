"""systemd readiness notification (sd_notify(3)) without a library.

The daemon tells systemd when the mount answers (``READY=1``), what it is
doing (``STATUS=...``) and that it is shutting down (``STOPPING=1``). While
the upload queue drains on stop it can ask for more time with
:func:`extend_timeout`, so ``TimeoutStopSec=`` need not cover the worst case.

Each message is one non-blocking ``sendto`` on a datagram socket, so calling
these from the trio loop is fine. Without ``NOTIFY_SOCKET`` (not started by a
``Type=notify`` unit) every function does nothing and returns False.

The unit uses ``NotifyAccess=main``: only the process systemd started may
notify, so these must be called from the daemon process itself, and children
(runs, a managed yagna) should not inherit ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

NOTIFY_ENV = "NOTIFY_SOCKET"


def _address(value: str) -> str | None:
    if value.startswith("@"):
        # Abstract namespace: systemd writes the leading NUL byte as "@".
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(state: str) -> bool:
    """Send ``state`` (``"KEY=VALUE"`` lines) to systemd; True when it was sent."""
    value = os.environ.get(NOTIFY_ENV)
    if not value:
        return False
    address = _address(value)
    if address is None:
        log.warning("cannot notify systemd: unsupported %s address %r", NOTIFY_ENV, value)
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(state.encode("utf-8"), address)
        except OSError as exc:
            # systemd then times the unit out; say why in the journal.
            log.warning("cannot notify systemd at %s: %s", value, exc.strerror or exc)
            return False
    log.debug("notified systemd: %s", state.replace("\n", " "))
    return True


def _status_line(text: str) -> str:
    # A status is one line; a newline would start a new assignment.
    return "STATUS=" + " ".join(text.splitlines())


def ready(status: str | None = None) -> bool:
    """The service is up: the mount answers requests."""
    lines = ["READY=1"]
    if status:
        lines.append(_status_line(status))
    return notify("\n".join(lines))


def stopping(status: str | None = None) -> bool:
    """The service has begun to shut down."""
    lines = ["STOPPING=1"]
    if status:
        lines.append(_status_line(status))
    return notify("\n".join(lines))


def status(text: str) -> bool:
    """A one-line status, shown by ``systemctl status``."""
    return notify(_status_line(text))


def extend_timeout(seconds: float) -> bool:
    """Ask systemd to wait ``seconds`` more for the current start or stop to finish."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")
