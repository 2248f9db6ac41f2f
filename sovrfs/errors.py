"""The exceptions sovrfs raises, and the one place where they become errnos.

The tree, by state rather than by cause::

    SovrError
     ├── PodStoreError            a pod store refused or failed an operation
     │    ├── NotFound            (ENOENT) no such pod, directory or file
     │    ├── AlreadyExists       (EEXIST)
     │    ├── NotEmpty            (ENOTEMPTY)
     │    ├── NotADirectory       (ENOTDIR)
     │    ├── IsADirectory        (EISDIR)
     │    ├── InvalidName         (EINVAL) a name the store cannot hold
     │    ├── NameTooLong         (ENAMETOOLONG)
     │    ├── ReadOnly            (EROFS) a received (shared) pod
     │    ├── NotSupported        (EOPNOTSUPP / ENOTSUP) the store has no such feature
     │    ├── PermissionDenied    (EACCES / EPERM)
     │    ├── CrossPod            (EXDEV) pods are separate drives
     │    ├── NoSpace             (ENOSPC)
     │    └── StoreUnavailable    (EIO / ETIMEDOUT) the backend did not answer in time
     ├── RecipeError              a recipe is invalid; ``str()`` names the field
     ├── ArchiveRejected          (EINVAL) an archive is unsafe or broken; nothing was extracted
     ├── RunError                 a run cannot be started or controlled
     │    ├── RunBusy             (EBUSY) the pod is already running
     │    └── PreflightFailed     a Golem requirement is missing
     └── ConfigError              invalid configuration; names the key

Only :func:`errno_of` decides which errno an exception becomes; the FUSE
handlers call it and nothing else.
"""

from __future__ import annotations

import errno
import os


class SovrError(Exception):
    """Base of every error sovrfs raises on purpose."""

    errno: int = errno.EIO


class PodStoreError(SovrError):
    """A pod store refused or failed an operation."""


class NotFound(PodStoreError):
    errno = errno.ENOENT


class AlreadyExists(PodStoreError):
    errno = errno.EEXIST


class NotEmpty(PodStoreError):
    errno = errno.ENOTEMPTY


class NotADirectory(PodStoreError):
    errno = errno.ENOTDIR


class IsADirectory(PodStoreError):
    errno = errno.EISDIR


class InvalidName(PodStoreError):
    errno = errno.EINVAL


class NameTooLong(PodStoreError):
    errno = errno.ENAMETOOLONG


class ReadOnly(PodStoreError):
    errno = errno.EROFS


class NotSupported(PodStoreError):
    errno = errno.EOPNOTSUPP


class PermissionDenied(PodStoreError):
    errno = errno.EACCES


class CrossPod(PodStoreError):
    errno = errno.EXDEV


class NoSpace(PodStoreError):
    errno = errno.ENOSPC


class StoreUnavailable(PodStoreError):
    """The backend could not be reached or did not answer in time."""

    errno = errno.EIO


class RecipeError(SovrError):
    """A recipe failed validation. The message names the field and the problem."""

    errno = errno.EINVAL


class ArchiveRejected(SovrError):
    """An archive was refused as unsafe or broken; nothing was extracted.

    ``reason`` is a short code a caller can test (``"path-escape"``,
    ``"symlink"``, ``"too-large"``, ...; :mod:`sovrfs.archive` lists them) and
    ``entry`` the offending member's name, when one is to blame.
    """

    errno = errno.EINVAL

    def __init__(self, message: str, *, reason: str, entry: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.entry = entry


class RunError(SovrError):
    """A run cannot be started or controlled."""


class RunBusy(RunError):
    errno = errno.EBUSY


class PreflightFailed(RunError):
    """A requirement of the run (Golem node, key, helper binary) is missing."""

    errno = errno.EINVAL


class ConfigError(SovrError):
    """Invalid configuration; the message names the key."""

    errno = errno.EINVAL


_OS_ERRORS: dict[int, type[PodStoreError]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: AlreadyExists,
    errno.ENOTEMPTY: NotEmpty,
    errno.ENOTDIR: NotADirectory,
    errno.EISDIR: IsADirectory,
    errno.ENAMETOOLONG: NameTooLong,
    errno.EROFS: ReadOnly,
    errno.EXDEV: CrossPod,
    errno.ENOSPC: NoSpace,
    errno.EDQUOT: NoSpace,
    errno.EACCES: PermissionDenied,
    errno.EPERM: PermissionDenied,
}


def from_os_error(exc: OSError) -> PodStoreError:
    """Wrap an ``OSError`` from the local disk in the matching store error.

    The original errno is kept, so EPERM stays EPERM although it shares a class
    with EACCES, and an errno without a class of its own passes through as is.
    """
    cls = _OS_ERRORS.get(exc.errno or 0, PodStoreError)
    err = cls(exc.strerror or str(exc))
    if exc.errno:
        err.errno = exc.errno
    err.__cause__ = exc
    return err


def errno_of(exc: BaseException) -> int:
    """The errno a FUSE handler answers for ``exc``; EIO for anything unforeseen."""
    if isinstance(exc, SovrError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def describe(exc: BaseException) -> str:
    """A one-line text for users: the message, or the errno's name when there is none."""
    text = str(exc)
    if text:
        return text
    return os.strerror(errno_of(exc))
