"""Secrets (the FairOS-DFS password, the yagna app key) and the logging set-up
that keeps them out of every log line.

Where :func:`read_secret` looks, first match wins:

1. the environment variable (``SOVRFS_DFS_PASSWORD``);
2. a systemd credential, ``$CREDENTIALS_DIRECTORY/<name>``, which exists only
   when the unit asked for it with ``LoadCredential=`` and so is the more
   specific choice for that one service;
3. the secret file named in the config (``dfs.password_file``), which must be
   a regular file owned by the user running sovrfs and closed to group and
   others (``chmod 600``);
4. an interactive prompt, when the caller allows one and stdin is a terminal.

A secret is never taken from the command line, where every user of the
machine can read it in ``ps``. Each secret read is registered, and
:class:`SecretFilter` masks every registered secret in every log record.
"""

from __future__ import annotations

import getpass
import logging
import os
import stat
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from sovrfs.errors import ConfigError

log = logging.getLogger(__name__)

MASK = "********"

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Have every log record from now on show ``value`` as ``********``."""
    if value:
        with _lock:
            _secrets.add(value)


def known_secrets() -> list[str]:
    """The registered secrets, longest first (so a secret inside another is masked whole)."""
    with _lock:
        return sorted(_secrets, key=len, reverse=True)


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by ``********``."""
    for secret in known_secrets():
        text = text.replace(secret, MASK)
    return text


def read_secret(
    name: str,
    *,
    env_var: str,
    file: Path | None = None,
    credential: str | None = None,
    prompt: bool = False,
    env: Mapping[str, str] = os.environ,
) -> str:
    """Find the secret ``name`` (a phrase for messages, e.g. "FairOS-DFS password").

    Looks in ``env_var``, the systemd credential ``credential``, ``file``, and
    then prompts if ``prompt`` is true and stdin is a terminal. The secret is
    registered for masking. Raises ConfigError when a place is unsafe or
    unreadable, or when no place has the secret.
    """
    value = _find_secret(name, env_var, file, credential, prompt, env)
    register_secret(value)
    return value


def _find_secret(
    name: str,
    env_var: str,
    file: Path | None,
    credential: str | None,
    prompt: bool,
    env: Mapping[str, str],
) -> str:
    if env.get(env_var):
        log.debug("%s from the environment (%s)", name, env_var)
        return env[env_var]
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if credential and cred_dir:
        path = Path(cred_dir) / credential
        if path.exists():
            log.debug("%s from the systemd credential %s", name, credential)
            # systemd made the file and made it private; no ownership check.
            return _strip(name, path, path.read_text(encoding="utf-8"))
    if file is not None:
        log.debug("%s from %s", name, file)
        return _strip(name, file, read_private_file(file))
    if prompt and sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass(f"{name}: ")
        if value:
            return value
    tried = [f"the environment variable {env_var}"]
    if credential:
        tried.append(f"the systemd credential {credential}")
    tried.append("a secret file in the config" if file is None else str(file))
    raise ConfigError(f"no {name} found: set {', '.join(tried[:-1])} or {tried[-1]}")


def _strip(name: str, path: Path, text: str) -> str:
    # Editors add a final newline; a password never ends in one.
    value = text.rstrip("\r\n")
    if not value:
        raise ConfigError(f"{name}: {path} is empty")
    return value


def read_private_file(path: Path) -> str:
    """Read a secret file, refusing one that others could read or replace.

    It must be a regular file, owned by the current user, with no permission
    bits for group or others. The checks use the opened file itself, so the
    file cannot be swapped between check and read.
    """
    try:
        # O_NONBLOCK so a FIFO put in the file's place cannot hang us.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"secret file {path}: not found") from None
    except OSError as exc:
        raise ConfigError(f"secret file {path}: cannot open: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(f"secret file {path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_uid != os.geteuid():
            raise ConfigError(
                f"secret file {path}: owned by uid {st.st_uid}, not by the user running "
                f"sovrfs (uid {os.geteuid()}); fix: chown {os.geteuid()} {path} && chmod 600 {path}"
            )
        if st.st_mode & 0o077:
            raise ConfigError(
                f"secret file {path}: group or others may access it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); fix: chmod 600 {path}"
            )
        try:
            return f.read().decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"secret file {path}: not UTF-8 text") from None


class SecretFilter(logging.Filter):
    """Mask every registered secret in a log record: message, arguments, traceback.

    Install it on a handler, not a logger: a logger's filters do not see
    records that propagate up from child loggers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = known_secrets()
        if not secrets:
            return True
        message = record.getMessage()
        masked = _mask_with(message, secrets)
        if masked != message:
            record.msg = masked
            record.args = None
        if record.exc_info and not record.exc_text:
            # Format the traceback here so the handler uses the masked copy.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _mask_with(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = _mask_with(record.stack_info, secrets)
        return True


def _mask_with(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


# syslog priorities (sd-daemon(3)): journald reads a "<N>" prefix as the level.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_QUIET_LOGGERS = ("httpx", "httpcore")


class _JournalFormatter(logging.Formatter):
    """The one log format, each line prefixed with its syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        # Every line of a traceback gets the prefix, or journald files the
        # continuation lines at its default level.
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def _priority(levelno: int) -> int:
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def stderr_is_journal(stream: TextIO, env: Mapping[str, str] = os.environ) -> bool:
    """True when ``stream`` is the journal stream systemd gave us (``JOURNAL_STREAM``).

    The variable is inherited by children whose stderr may go elsewhere, so
    the device and inode must match the stream itself (systemd.exec(5)).
    """
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        # No file descriptor behind it (a StringIO, a closed stream).
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


_handler: logging.Handler | None = None


def setup_logging(debug: bool = False, *, stream: TextIO | None = None) -> logging.Handler:
    """Log to stderr with secrets masked: INFO, or DEBUG with ``--debug``.

    Calling it again replaces the handler it installed before. Under systemd,
    lines carry a ``<N>`` priority prefix and no timestamp (journald keeps
    both itself). Returns the handler.
    """
    global _handler
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    if stderr_is_journal(stream):
        handler.setFormatter(_JournalFormatter(LOG_FORMAT))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s " + LOG_FORMAT))
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in _QUIET_LOGGERS:
        # One line per request is too much for a daemon's journal.
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    _handler = handler
    return handler
