"""The Golem node: an external yagna, or one sovrfs starts and stops itself.

A :class:`YagnaNode` is in one of four states::

    STOPPED ──ensure_ready()──> STARTING ──/me answers──> READY
       ^                           │                        │
       └──────── aclose() ─────────┴── exits / times out ──>FAILED (reason)

``ensure_ready()`` is lazy and idempotent: the first run that needs Golem
starts the node, later calls only check that it still answers. A FAILED node
is retried by the next ``ensure_ready()``, so a yagna that comes up later (or a
fixed key) heals without a daemon restart.

A managed yagna runs with its own data directory, loopback ports picked at
start, and an app key sovrfs creates once and keeps (mode 0600) next to the
data; yagna learns the key from ``YAGNA_AUTOCONF_APPKEY`` on every start, as
it does not persist autoconfigured keys. Its output goes to a file in the data
directory rather than a pipe, so no task has to drain it. The child runs in a
session of its own (a terminal's Ctrl-C reaches the daemon, which then stops
yagna in order); a pid file lets the next start stop a yagna left behind by a
daemon that was killed outright.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, NoReturn

import httpx
import trio

from sovrfs.errors import ConfigError, PreflightFailed

log = logging.getLogger(__name__)

Mode = Literal["auto", "managed", "external", "off"]

DEFAULT_API_URL: Final = "http://127.0.0.1:7465"
KEY_FILE: Final = "sovrfs-appkey"
PID_FILE: Final = "sovrfs-yagna.pid"
OUTPUT_FILE: Final = "sovrfs-yagna.out"
# Long enough for a first start on a slow disk (measured: about 4 s).
READY_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 15.0
PROBE_TIMEOUT: Final = 5.0


class NodeState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


def yagna_binary() -> str | None:
    """The yagna next to this interpreter (golem-node installs it there), else on PATH."""
    beside = Path(sys.executable).with_name("yagna")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    from shutil import which

    return which("yagna")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class YagnaNode:
    """One yagna daemon as seen by sovrfs; see the module docstring for the states.

    ``mode`` chooses where the node comes from:

    ``external``
        use the yagna at ``api_url`` (else ``YAGNA_API_URL``, else
        127.0.0.1:7465) with ``app_key`` (else ``YAGNA_APPKEY``); never start one.
    ``managed``
        always start a private yagna with its data in ``data_dir``.
    ``auto``
        an explicit ``api_url`` means external; otherwise use the yagna the
        environment names if it answers with the key, and start a managed one
        if not.
    ``off``
        Golem is not used; ``ensure_ready()`` refuses.

    ``offline`` keeps a managed yagna off the Golem network (a loopback relay
    address and UDP bind): its API then comes up without the internet, which
    is what tests and air-gapped machines want, but it finds no providers.
    ``extra_env`` is added to a managed yagna's environment (for example an
    Ethereum RPC endpoint such as ``HOODI_GETH_ADDR``).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        api_url: str | None = None,
        app_key: str | None = None,
        mode: Mode = "auto",
        offline: bool = False,
        extra_env: Mapping[str, str] | None = None,
        binary: str | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        if mode not in ("auto", "managed", "external", "off"):
            raise ConfigError(f"golem.mode: {mode!r} is not one of auto, managed, external, off")
        self.data_dir = Path(data_dir)
        self.mode: Mode = mode
        self.offline = offline
        self._explicit_url = api_url
        self._extra_env = dict(extra_env or {})
        self._binary = binary
        self._ready_timeout = ready_timeout
        self._external_url = (api_url or os.environ.get("YAGNA_API_URL") or DEFAULT_API_URL).rstrip(
            "/"
        )
        self._external_key = app_key or os.environ.get("YAGNA_APPKEY")

        self.state = NodeState.STOPPED
        self.reason: str | None = None
        self.node_id: str | None = None
        self.managed = mode == "managed"
        self.api_url: str | None = None
        self.gsb_url: str | None = None
        self.app_key: str | None = None
        self._process: trio.Process | None = None
        self._client: httpx.AsyncClient | None = None
        self._lock = trio.Lock()

    # -- public --------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def ensure_ready(self) -> None:
        """Return once the node answers with a valid key; else raise PreflightFailed."""
        async with self._lock:
            if self.mode == "off":
                self._fail("Golem is turned off (golem mode 'off')")
            if self.state is NodeState.READY and await self._still_ready():
                return
            if self.mode == "external" or (self.mode == "auto" and self._explicit_url):
                await self._use_external()
            elif self.mode == "managed":
                await self._start_managed()
            elif await self._probe_external():
                return
            else:
                await self._start_managed()

    async def aclose(self) -> None:
        """Stop a managed yagna (terminate, then kill) and close the HTTP client."""
        with trio.CancelScope(shield=True):
            await self._stop_process()
            if self._client is not None:
                await self._client.aclose()
                self._client = None
        if self.state is not NodeState.FAILED:
            self.state = NodeState.STOPPED
        log.debug("yagna node closed")

    async def __aenter__(self) -> YagnaNode:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def status(self) -> dict[str, Any]:
        """What ``.sovr/status.json`` shows; never the key."""
        if self._process is not None and self._process.poll() is not None:
            self._process_exited()
        return {
            "mode": self.mode,
            "managed": self.managed,
            "state": self.state.value,
            "reachable": self.state is NodeState.READY,
            "api_url": self.api_url or (self._external_url if self.mode == "external" else None),
            "node_id": self.node_id,
            "pid": self.pid,
            "reason": self.reason,
        }

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call the node's REST API with the app key; ``path`` starts with '/'."""
        if self.api_url is None or self.app_key is None:
            raise PreflightFailed("the Golem node is not ready")
        log.debug("yagna %s %s", method, path)
        return await self._http().request(
            method, self.api_url + path, headers=_auth(self.app_key), **kwargs
        )

    # -- external ------------------------------------------------------------

    async def _probe_external(self) -> bool:
        """In auto mode: is a yagna named by the environment usable as it is?"""
        if not self._external_key:
            log.debug("no YAGNA_APPKEY set: not looking for a running yagna")
            return False
        try:
            node_id = await self._whoami(self._external_url, self._external_key)
        except PreflightFailed as exc:
            log.info("not using the yagna at %s (%s); starting one", self._external_url, exc)
            return False
        self._ready(self._external_url, self._external_key, node_id, managed=False)
        return True

    async def _use_external(self) -> None:
        self.managed = False
        self.api_url = self._external_url
        if not self._external_key:
            self._fail(
                "no app key for the yagna at "
                f"{self._external_url}: create one with `yagna app-key create sovrfs` "
                "and set YAGNA_APPKEY (or the golem app_key setting)"
            )
        try:
            node_id = await self._whoami(self._external_url, self._external_key)
        except PreflightFailed as exc:
            self._fail(str(exc))
        self._ready(self._external_url, self._external_key, node_id, managed=False)

    async def _still_ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            self._process_exited()
            return False
        assert self.api_url is not None and self.app_key is not None
        try:
            await self._whoami(self.api_url, self.app_key)
        except PreflightFailed as exc:
            log.warning("the Golem node stopped answering: %s", exc)
            self.state, self.reason = NodeState.FAILED, str(exc)
            return False
        return True

    async def _whoami(self, url: str, key: str) -> str:
        """The node id behind ``url`` for ``key``; PreflightFailed says what is wrong."""
        try:
            response = await self._http().get(
                url + "/me", headers=_auth(key), timeout=PROBE_TIMEOUT
            )
        except httpx.TransportError as exc:
            raise PreflightFailed(
                f"no yagna answers at {url} ({type(exc).__name__}): start it with "
                "`yagna service run`, or let sovrfs manage one (golem mode auto or managed)"
            ) from exc
        if response.status_code == 401:
            raise PreflightFailed(
                f"the yagna at {url} rejected the app key: list valid keys with "
                "`yagna app-key list` and set YAGNA_APPKEY to one of them"
            )
        if response.status_code != 200:
            raise PreflightFailed(
                f"the yagna at {url} answered /me with HTTP {response.status_code}"
            )
        try:
            identity = response.json()["identity"]
        except (ValueError, KeyError, TypeError):
            identity = None
        if not isinstance(identity, str):
            raise PreflightFailed(f"what answers at {url} is not a yagna (no identity in /me)")
        return identity

    # -- managed -------------------------------------------------------------

    async def _start_managed(self) -> None:
        self.managed = True
        binary = self._binary or yagna_binary()
        if binary is None:
            self._fail("the yagna binary was not found: install the golem-node package")
        await self._stop_process()
        await trio.to_thread.run_sync(self._prepare_data_dir)
        await self._stop_leftover()

        key = await trio.to_thread.run_sync(self._ensure_key)
        api_url = f"http://127.0.0.1:{_free_port()}"
        gsb_url = f"tcp://127.0.0.1:{_free_port()}"
        env = self._child_env(api_url, gsb_url, key)
        self.state, self.reason = NodeState.STARTING, None
        self.api_url, self.gsb_url, self.app_key = api_url, gsb_url, key
        log.info("starting a managed yagna (API %s, data %s)", api_url, self.data_dir)

        output = self.data_dir / OUTPUT_FILE
        # One start's output: yagna keeps its own rotated logs in the data dir.
        with output.open("wb") as sink:
            self._process = await trio.lowlevel.open_process(
                [binary, "service", "run", "--disable-metrics-push"],
                env=env,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.data_dir / PID_FILE).write_text(f"{self._process.pid}\n")
        await self._wait_ready(api_url, key, output)

    def _child_env(self, api_url: str, gsb_url: str, key: str) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            # The daemon's own connection settings must not leak into its child.
            if not name.startswith(("YAGNA_", "GSB_", "YA_NET_"))
        }
        env.update(
            YAGNA_DATADIR=str(self.data_dir),
            YAGNA_API_URL=api_url,
            GSB_URL=gsb_url,
            YAGNA_AUTOCONF_APPKEY=key,
        )
        if self.offline:
            # A relay address on loopback keeps yagna from looking the relay
            # up on the internet (it gives up and exits after ~100 s otherwise).
            env.update(
                YA_NET_RELAY_HOST=f"127.0.0.1:{_free_port()}",
                YA_NET_BIND_URL="udp://127.0.0.1:0",
            )
        env.update(self._extra_env)
        return env

    async def _wait_ready(self, api_url: str, key: str, output: Path) -> None:
        assert self._process is not None
        delay = 0.1
        with trio.move_on_after(self._ready_timeout) as scope:
            while True:
                if self._process.poll() is not None:
                    code = self._process.returncode
                    self._process = None
                    self._fail(
                        f"the managed yagna exited with status {code} before its API came up; "
                        f"see {output}"
                    )
                try:
                    node_id = await self._whoami(api_url, key)
                    break
                except PreflightFailed:
                    await trio.sleep(delay)
                    delay = min(delay * 2, 1.0)
        if scope.cancelled_caught:
            await self._stop_process()
            self._fail(
                f"the managed yagna did not answer within {self._ready_timeout:g} s; see {output}"
            )
        self._ready(api_url, key, node_id, managed=True)

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _ensure_key(self) -> str:
        path = self.data_dir / KEY_FILE
        try:
            key = path.read_text().strip()
        except FileNotFoundError:
            key = ""
        if not key:
            key = secrets.token_hex(16)
            # Created 0600 from the start, never widened by a later chmod.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(key + "\n")
            log.info("created an app key for the managed yagna in %s", path)
        os.chmod(path, 0o600)
        return key

    def _leftover_pid(self) -> int | None:
        """A yagna a killed daemon left running on this data directory, if any."""
        path = self.data_dir / PID_FILE
        try:
            pid = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        path.unlink(missing_ok=True)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        mine = f"YAGNA_DATADIR={self.data_dir}".encode()
        if not cmdline[0].endswith(b"yagna") or mine not in environ:
            return None
        return pid

    async def _stop_leftover(self) -> None:
        pid = await trio.to_thread.run_sync(self._leftover_pid)
        if pid is None:
            return
        log.warning("stopping yagna %d left running by an earlier sovrfs", pid)
        # Not our child: there is nothing to wait on but its /proc entry.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            with trio.move_on_after(STOP_TIMEOUT):
                while _alive(pid):  # noqa: ASYNC110
                    await trio.sleep(0.1)
            if not _alive(pid):
                return
        self._fail(f"yagna {pid} left by an earlier sovrfs does not stop; stop it by hand")

    async def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            log.info("stopping the managed yagna (pid %d)", process.pid)
            process.terminate()
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.poll() is None:
                log.warning(
                    "yagna %d ignored SIGTERM for %g s; killing it", process.pid, STOP_TIMEOUT
                )
                process.kill()
                await process.wait()
        (self.data_dir / PID_FILE).unlink(missing_ok=True)

    # -- state ---------------------------------------------------------------

    def _ready(self, url: str, key: str, node_id: str, *, managed: bool) -> None:
        first = self.state is not NodeState.READY or self.node_id != node_id
        self.state, self.reason = NodeState.READY, None
        self.api_url, self.app_key, self.node_id, self.managed = url, key, node_id, managed
        if first:
            kind = "managed" if managed else "external"
            log.info("Golem node ready: %s yagna %s at %s", kind, node_id, url)

    def _fail(self, reason: str) -> NoReturn:
        self.state, self.reason = NodeState.FAILED, reason
        raise PreflightFailed(reason)

    def _process_exited(self) -> None:
        assert self._process is not None
        code = self._process.returncode
        self._process = None
        (self.data_dir / PID_FILE).unlink(missing_ok=True)
        self.state = NodeState.FAILED
        self.reason = (
            f"the managed yagna exited with status {code}; see {self.data_dir / OUTPUT_FILE}"
        )
        log.warning("%s", self.reason)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=PROBE_TIMEOUT))
        return self._client


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent counts as stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
