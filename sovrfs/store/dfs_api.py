"""A typed async client for the FairOS-DFS REST API (v0.10.1).

Only what sovrfs needs, written against the server's handlers rather than its
swagger file (the two disagree; see ``docs/fairos-dfs.rst``). Three rules
shape the module:

* **One session, Bearer token only.** The server's cookie is ``Secure`` and
  would be dropped over plain ``http://`` anyway, and a stale cookie would win
  over a fresh token inside the handlers, so the client keeps a cookie jar that
  accepts nothing. A request that finds the session gone (HTTP 401 or the text
  ``user not logged-in``) logs in again once and is retried.
* **Errors become states in one place.** :func:`store_error` reads the
  server's ``message`` text (the status code is not reliable: many "not
  found" answers are 500) and picks the most specific
  :class:`~sovrfs.errors.PodStoreError`, chaining the server error as cause.
* **Retries in one place.** :meth:`DfsClient._send` retries transient failures
  (connection errors, timeouts, the server's ``chunk already exists``) with
  jittered backoff until a deadline, so a dead or hung server becomes
  ``StoreUnavailable`` after :attr:`DfsClient.timeout` seconds, never a hang.

Mutating requests are serialised per pod: the server updates a directory's
entry list with an unlocked read-modify-write, so two concurrent uploads into
one directory can lose an entry.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import http.cookiejar
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import tenacity
import trio

from ..errors import (
    AlreadyExists,
    InvalidName,
    NameTooLong,
    NotFound,
    PermissionDenied,
    PodStoreError,
    ReadOnly,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

# httpx logs every request at INFO, with the full URL; the debug log of this
# module shows method and path instead, and never a header.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

#: Block sizes the server accepts for uploads (bytes, decimal megabytes).
BLOCK_SIZE_MIN = 1_000_000
BLOCK_SIZE_MAX = 8_000_000

_SHARING_REF = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1 << 20


class DfsServerError(Exception):
    """An error answer from the server; the cause chained to every mapped error."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


#: Substrings of the server's messages, most specific first, and what they mean.
_ERROR_TEXTS: tuple[tuple[str, type[PodStoreError]], ...] = (
    ("read only feed", ReadOnly),
    ("read only pod", ReadOnly),
    ("invalid password", PermissionDenied),
    ("no user available", PermissionDenied),
    ("jwt: invalid token", PermissionDenied),
    ("cookie:", PermissionDenied),
    ("user not logged-in", PermissionDenied),
    ("pod with fork name already exists", AlreadyExists),
    ("pod already exists", AlreadyExists),
    ("directory name already present", AlreadyExists),
    ("file already exist with new name", AlreadyExists),
    ("user name already present", AlreadyExists),
    ("too long directory name", NameTooLong),
    ("pod name too long", NameTooLong),
    # File metadata (path and name) must fit one 4 KiB chunk.
    ("payload size is too large", NameTooLong),
    ("invalid directory name", InvalidName),
    ("invalid file or directory name", InvalidName),
    ("invalid user name", InvalidName),
    ("pod does not exist", NotFound),
    ("could not find pod", NotFound),
    ("directory not present", NotFound),
    ("file not found in dfs", NotFound),
    ("file not present", NotFound),
)

#: Messages that are the client's fault (a bad argument): EINVAL, not EIO.
_INVALID_TEXTS = ("invalid mode", "wrong offset", "block size must be", "should be at least")

#: The server answers this when one feed is updated twice within one second
#: and its own retries ran out; waiting a moment and repeating helps.
_TRANSIENT_TEXT = "chunk already exists"


def store_error(exc: DfsServerError) -> PodStoreError:
    """The :class:`PodStoreError` for a server error answer, with ``exc`` as cause."""
    for text, cls in _ERROR_TEXTS:
        if text in exc.message:
            err = cls(exc.message)
            break
    else:
        err = PodStoreError(exc.message or f"HTTP {exc.status} from {exc.path}")
        if any(text in exc.message for text in _INVALID_TEXTS):
            err.errno = errno.EINVAL
        elif exc.status == 401:
            err = PermissionDenied(exc.message)
    err.__cause__ = exc
    return err


def check_sharing_ref(ref: str) -> str:
    """Return ``ref`` if it looks like a pod sharing reference (64 lowercase hex digits).

    The server must never see a malformed one: ``fork-from-reference``
    swallows the parse error and creates an empty pod.
    """
    ref = ref.strip().lower()
    if not _SHARING_REF.match(ref):
        raise InvalidName(f"not a sharing reference (64 hex digits): {ref[:80]!r}")
    return ref


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a ``dir/ls`` answer."""

    name: str
    is_dir: bool
    mode: int
    size: int
    ctime: int
    mtime: int
    atime: int


class _RejectAllCookies(http.cookiejar.DefaultCookiePolicy):
    """Keep no cookie: the server's cookie would shadow the Bearer token."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class _Transient(Exception):
    """A failure worth repeating the request for; carries the underlying error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _SessionGone(Exception):
    """The server no longer knows our session: log in again."""


def _is_safe_multipart_name(name: str) -> bool:
    # httpx and Go disagree on how `"`, backslash and control characters are
    # escaped in a multipart filename; such names are uploaded under a plain
    # name and renamed (the JSON body of file/rename carries any name).
    return not any(ch in '"\\' or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)


def file_digest(path: str | os.PathLike[str]) -> str:
    """BLAKE2b of a local file, comparable with :meth:`DfsClient.file_upload`'s result."""
    digest = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _retry_log_level(attempt: int) -> int:
    return logging.DEBUG if attempt < 3 else logging.INFO if attempt < 6 else logging.WARNING


class DfsClient:
    """One logged-in session of one FairOS-DFS user.

    ``timeout`` bounds every call, retries included: a server that does not
    answer makes the call raise :class:`StoreUnavailable` after that many
    seconds. Use as ``async with DfsClient(...) as client:`` or call
    :meth:`login` and :meth:`aclose` yourself.
    """

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self.timeout = timeout
        self._password = password
        self._token: str | None = None
        self._http = httpx.AsyncClient(
            base_url=self.url,
            cookies=http.cookiejar.CookieJar(policy=_RejectAllCookies()),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            follow_redirects=False,
        )
        self._pod_locks: dict[str, trio.Lock] = collections.defaultdict(trio.Lock)
        self._login_lock = trio.Lock()
        self._closed = False
        #: Requests sent, by ``"METHOD /path"``; retries count again.
        self.requests: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"<DfsClient {self.user}@{self.url}>"

    async def __aenter__(self) -> DfsClient:
        try:
            await self.login()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- sessions ----------------------------------------------------------

    async def signup(self) -> None:
        """Create the user (dev servers: the only way to get one); the session is live after."""
        body = await self._send(
            "POST",
            "/v2/user/signup",
            json={"userName": self.user, "password": self._password},
            auth=False,
        )
        self._token = body["accessToken"]

    async def login(self) -> None:
        body = await self._send(
            "POST",
            "/v2/user/login",
            json={"userName": self.user, "password": self._password},
            auth=False,
        )
        self._token = body["accessToken"]
        log.debug("logged in to %s as %s", self.url, self.user)

    async def logout(self) -> None:
        """End the session on the server (it closes our pods and flushes their feeds)."""
        if self._token is None:
            return
        try:
            await self._send("POST", "/v1/user/logout", relogin=False)
        finally:
            self._token = None

    async def aclose(self) -> None:
        """Log out (best effort) and close the connection pool."""
        if self._closed:
            return
        self._closed = True
        try:
            with trio.move_on_after(min(self.timeout, 10.0)):
                await self.logout()
        except PodStoreError as exc:
            log.debug("logout failed: %s", exc)
        finally:
            await self._http.aclose()

    async def user_stat(self) -> dict[str, Any]:
        return await self._send("GET", "/v1/user/stat")

    async def health(self) -> bool:
        """Whether the server answers ``GET /`` with OK (no retries, no login)."""
        try:
            with trio.fail_after(min(self.timeout, 10.0)):
                response = await self._http.get("/")
        except (httpx.HTTPError, trio.TooSlowError):
            return False
        return response.status_code == 200 and response.text.strip() == "OK"

    # -- pods ----------------------------------------------------------------

    async def pod_ls(self) -> tuple[list[str], list[str]]:
        """Own pods and received (read-only) pods, by name."""
        body = await self._send("GET", "/v1/pod/ls")
        return list(body.get("pods") or []), list(body.get("sharedPods") or [])

    async def pod_new(self, pod: str) -> None:
        await self._send("POST", "/v1/pod/new", json={"podName": pod}, pod=pod, idempotent=False)

    async def pod_delete(self, pod: str) -> None:
        await self._send(
            "DELETE", "/v1/pod/delete", json={"podName": pod}, pod=pod, idempotent=False
        )

    async def pod_close(self, pod: str) -> None:
        """Drop the session's caches of ``pod``; a pod that was not open is fine."""
        with contextlib.suppress(NotFound):
            await self._send("POST", "/v1/pod/close", json={"podName": pod}, pod=pod)

    async def pod_stat(self, pod: str) -> dict[str, Any]:
        return await self._send("GET", "/v1/pod/stat", params={"podName": pod})

    async def pod_share(self, pod: str, shared_name: str | None = None) -> str:
        body: dict[str, str] = {"podName": pod}
        if shared_name is not None:
            body["sharedPodName"] = shared_name
        answer = await self._send("POST", "/v1/pod/share", json=body, pod=pod)
        return str(answer["podSharingReference"])

    async def pod_receiveinfo(self, ref: str) -> dict[str, Any]:
        ref = check_sharing_ref(ref)
        return await self._send("GET", "/v1/pod/receiveinfo", params={"sharingRef": ref})

    async def pod_receive(self, ref: str) -> None:
        """Add the pod behind ``ref`` to our shared (read-only) pods."""
        ref = check_sharing_ref(ref)
        await self._send("GET", "/v1/pod/receive", params={"sharingRef": ref}, idempotent=False)

    async def pod_fork(self, pod: str, fork_name: str) -> None:
        await self._send(
            "POST",
            "/v1/pod/fork",
            json={"podName": pod, "forkName": fork_name},
            pod=fork_name,
            idempotent=False,
        )

    async def pod_fork_from_reference(self, ref: str, fork_name: str) -> None:
        ref = check_sharing_ref(ref)
        await self._send(
            "POST",
            "/v1/pod/fork-from-reference",
            json={"forkName": fork_name, "podSharingReference": ref},
            pod=fork_name,
            idempotent=False,
        )

    # -- directories -------------------------------------------------------

    async def dir_ls(self, pod: str, path: str) -> list[Entry]:
        """The entries of one directory, sorted by name, without duplicates."""
        body = await self._send("GET", "/v1/dir/ls", params={"podName": pod, "dirPath": path})
        entries: dict[str, Entry] = {}
        # The server lists children in random order and may repeat a name.
        for item in body.get("dirs") or []:
            entries.setdefault(item["name"], _entry(item, is_dir=True))
        for item in body.get("files") or []:
            entries.setdefault(item["name"], _entry(item, is_dir=False))
        return [entries[name] for name in sorted(entries)]

    async def dir_stat(self, pod: str, path: str) -> dict[str, Any]:
        return await self._send("GET", "/v1/dir/stat", params={"podName": pod, "dirPath": path})

    async def dir_mkdir(self, pod: str, path: str) -> None:
        await self._send(
            "POST",
            "/v1/dir/mkdir",
            json={"podName": pod, "dirPath": path},
            pod=pod,
            idempotent=False,
        )

    async def dir_rmdir(self, pod: str, path: str) -> None:
        """Remove a directory and **everything below it** (the server's rmdir is recursive)."""
        if path == "/":
            raise InvalidName("refusing to remove a pod's root directory")
        await self._send(
            "DELETE",
            "/v1/dir/rmdir",
            json={"podName": pod, "dirPath": path},
            pod=pod,
            idempotent=False,
        )

    async def dir_rename(self, pod: str, old: str, new: str) -> None:
        await self._send(
            "POST",
            "/v1/dir/rename",
            json={"podName": pod, "oldPath": old, "newPath": new},
            pod=pod,
            idempotent=False,
        )

    async def dir_chmod(self, pod: str, path: str, mode: int) -> None:
        body = {"podName": pod, "dirPath": path, "mode": str(mode & 0o7777)}
        await self._send("POST", "/v1/dir/chmod", json=body, pod=pod)

    # -- files -------------------------------------------------------------

    async def file_stat(self, pod: str, path: str) -> dict[str, Any]:
        return await self._send("GET", "/v1/file/stat", params={"podName": pod, "filePath": path})

    async def file_delete(self, pod: str, path: str) -> None:
        await self._send(
            "DELETE",
            "/v1/file/delete",
            json={"podName": pod, "filePath": path},
            pod=pod,
            idempotent=False,
        )

    async def file_rename(self, pod: str, old: str, new: str) -> None:
        await self._send(
            "POST",
            "/v1/file/rename",
            json={"podName": pod, "oldPath": old, "newPath": new},
            pod=pod,
            idempotent=False,
        )

    async def file_chmod(self, pod: str, path: str, mode: int) -> None:
        body = {"podName": pod, "filePath": path, "mode": str(mode & 0o7777)}
        await self._send("POST", "/v1/file/chmod", json=body, pod=pod)

    async def file_upload(
        self,
        pod: str,
        dir_path: str,
        name: str,
        source: str | os.PathLike[str],
        *,
        block_size: int = BLOCK_SIZE_MIN,
    ) -> str:
        """Upload the local file ``source`` as ``dir_path/name``, replacing any old one.

        Returns the BLAKE2b digest of the bytes the server accepted, so a
        caller can tell later whether the local file still holds them.
        Always with ``overwrite=true``: with ``false`` the server does not
        refuse but renames the old file to ``<seconds>_<name>``.
        """
        if not BLOCK_SIZE_MIN <= block_size <= BLOCK_SIZE_MAX:
            raise ValueError(f"block size {block_size} outside {BLOCK_SIZE_MIN}..{BLOCK_SIZE_MAX}")
        if not _is_safe_multipart_name(name):
            raise InvalidName(f"name needs a rename after upload: {name!r}")
        fields = {
            "podName": pod,
            "dirPath": dir_path,
            "blockSize": str(block_size),
            "overwrite": "true",
        }
        size = (await trio.Path(source).stat()).st_size
        boundary = secrets.token_hex(16)
        head, tail = _multipart_frame(boundary, fields, name)

        digests: list[hashlib.blake2b] = []

        async def body() -> AsyncIterator[bytes]:
            digest = hashlib.blake2b()
            digests.append(digest)
            yield head
            async with await trio.open_file(source, "rb") as f:
                sent = 0
                while chunk := await f.read(_READ_CHUNK):
                    sent += len(chunk)
                    digest.update(chunk)
                    yield chunk
            if sent != size:
                # The file changed under us; a short body would hang the server.
                raise StoreUnavailable(f"{source} changed size during upload")
            yield tail

        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        }
        await self._send(
            "POST", "/v1/file/upload", content=body, headers=headers, pod=pod, idempotent=True
        )
        return digests[-1].hexdigest()

    async def file_download(self, pod: str, path: str, target: str | os.PathLike[str]) -> int:
        """Download a whole file into the local file ``target``; return its size.

        The byte count is checked against ``Content-Length``: the server
        appends an error text to a body it already started when storage fails.
        """
        answer = await self._send(
            "GET",
            "/v1/file/download",
            params={"podName": pod, "filePath": path},
            download_to=os.fspath(target),
        )
        return int(answer["size"])

    # -- the one request path ---------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content: Any = None,
        headers: Mapping[str, str] | None = None,
        pod: str | None = None,
        idempotent: bool = True,
        auth: bool = True,
        relogin: bool = True,
        download_to: str | None = None,
    ) -> dict[str, Any]:
        """Send one request with retries, re-login and error mapping; return the JSON body.

        ``pod`` marks a mutating request, run under that pod's lock.
        ``idempotent=False`` repeats the request only when it cannot have
        reached the server (connection refused), so a lost answer never turns
        into a second mkdir or delete.
        """
        if self._closed and path != "/v1/user/logout":
            raise StoreUnavailable("the FairOS-DFS client is closed")
        request = _Request(method, path, json, params, content, headers, download_to)
        lock = self._pod_locks[pod] if pod is not None else None
        for attempt in range(2):
            try:
                if lock is None:
                    return await self._retrying(request, auth=auth, idempotent=idempotent)
                async with lock:
                    return await self._retrying(request, auth=auth, idempotent=idempotent)
            except _SessionGone as exc:
                if not (auth and relogin) or attempt:
                    raise store_error(_cause(exc)) from None
                log.info("FairOS-DFS session of %s ended; logging in again", self.user)
                await self._relogin()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _relogin(self) -> None:
        stale = self._token
        async with self._login_lock:
            if self._token is stale:
                await self.login()

    async def _retrying(self, request: _Request, *, auth: bool, idempotent: bool) -> dict[str, Any]:
        def transient(exc: BaseException) -> bool:
            if not isinstance(exc, _Transient):
                return False
            if idempotent:
                return True
            return isinstance(exc.cause, httpx.ConnectError | httpx.ConnectTimeout | DfsServerError)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.log(
                _retry_log_level(state.attempt_number),
                "%s %s failed (attempt %d): %s; retrying",
                request.method,
                request.path,
                state.attempt_number,
                exc,
            )

        retrying = tenacity.AsyncRetrying(
            sleep=trio.sleep,
            retry=tenacity.retry_if_exception(transient),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=5.0),
            stop=tenacity.stop_after_delay(self.timeout),
            before_sleep=before_sleep,
            reraise=True,
        )
        deadline = time.monotonic() + self.timeout
        try:
            async for try_ in retrying:
                with try_:
                    remaining = max(deadline - time.monotonic(), 0.1)
                    try:
                        with trio.fail_after(remaining):
                            return await self._once(request, auth=auth)
                    except trio.TooSlowError as exc:
                        raise _Transient(exc) from exc
        except _Transient as exc:
            cause = exc.cause
            if isinstance(cause, DfsServerError):
                raise store_error(cause) from None
            raise StoreUnavailable(
                f"FairOS-DFS at {self.url} did not answer {request.method} {request.path}: "
                f"{type(cause).__name__}: {cause}"
            ) from cause
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, request: _Request, *, auth: bool) -> dict[str, Any]:
        headers = dict(request.headers or {})
        if auth:
            if self._token is None:
                raise _SessionGone(DfsServerError(request.method, request.path, 401, "no session"))
            headers["Authorization"] = f"Bearer {self._token}"
        self.requests[f"{request.method} {request.path}"] += 1
        log.debug("%s %s", request.method, request.path)
        content = request.content() if callable(request.content) else request.content
        try:
            async with self._http.stream(
                request.method,
                request.path,
                json=request.json,
                params=request.params,
                content=content,
                headers=headers,
            ) as response:
                if response.status_code < 300 and request.download_to is not None:
                    return {"size": await _save_body(response, request.download_to)}
                await response.aread()
        except httpx.TransportError as exc:
            raise _Transient(exc) from exc
        if response.status_code < 300:
            body = response.json() if response.content.strip() else {}
            return body if isinstance(body, dict) else {"value": body}
        error = DfsServerError(
            request.method, request.path, response.status_code, _message_of(response)
        )
        log.debug("%s %s -> %d %s", request.method, request.path, error.status, error.message)
        if response.status_code == 401 or "user not logged-in" in error.message:
            raise _SessionGone(error)
        if _TRANSIENT_TEXT in error.message:
            raise _Transient(error)
        raise store_error(error)


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    json: Mapping[str, Any] | None
    params: Mapping[str, str] | None
    # bytes, or a callable returning a fresh async iterator (so a retry can resend it)
    content: Any
    headers: Mapping[str, str] | None
    download_to: str | None


def _cause(exc: BaseException) -> DfsServerError:
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, DfsServerError):
        return arg
    return DfsServerError("?", "?", 401, str(exc))


def _message_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"]).strip()
    return response.text.strip()


def _entry(item: Mapping[str, Any], *, is_dir: bool) -> Entry:
    return Entry(
        name=item["name"],
        is_dir=is_dir,
        mode=int(item.get("mode") or 0) & 0o7777,
        size=0 if is_dir else int(item.get("size") or 0),
        ctime=int(item.get("creationTime") or 0),
        mtime=int(item.get("modificationTime") or 0),
        atime=int(item.get("accessTime") or 0),
    )


def _multipart_frame(boundary: str, fields: Mapping[str, str], name: str) -> tuple[bytes, bytes]:
    """The bytes before and after the file content of an upload body."""
    parts = []
    for key, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        )
    parts.append(
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return "".join(parts).encode(), f"\r\n--{boundary}--\r\n".encode()


async def _save_body(response: httpx.Response, target: str) -> int:
    expected = response.headers.get("Content-Length")
    received = 0
    async with await trio.open_file(target, "wb") as f:
        async for chunk in response.aiter_bytes(_READ_CHUNK):
            received += len(chunk)
            await f.write(chunk)
    if expected is not None and received != int(expected):
        raise _Transient(
            DfsServerError(
                response.request.method,
                response.request.url.path,
                response.status_code,
                f"download: got {received} of {expected} bytes",
            )
        )
    return received
