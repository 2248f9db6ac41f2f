"""The mount sequence: from a configuration to a served mount and back.

Kept apart from the command line (:mod:`sovrfs.cli`), which only parses
arguments and decides between foreground and background. The order of a
clean stop matters: runs are stopped while the mount still answers (their
logs are written through it), then the kernel mount goes, then the store
finishes its uploads, then a managed yagna stops.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import pyfuse3
import trio

from . import notify
from .app import App, AppSettings
from .config import Config
from .control import Controller
from .errors import ConfigError, SovrError, describe
from .fs import MountOptions, Operations
from .golem import GolemService
from .runs import RunEngine
from .store.base import PodStore
from .store.embedded import EmbeddedStore

log = logging.getLogger(__name__)

#: Mount options sovrfs understands itself; the rest of the FUSE mount
#: helper's generic options are accepted and ignored.
_IGNORED_OPTIONS = frozenset(
    {"defaults", "rw", "user", "users", "nouser", "auto", "noauto", "_netdev", "nofail",
     "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "atime", "noatime",
     "relatime"}
)  # fmt: skip


class MountState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    MOUNTED = "mounted"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class MountRequest:
    mountpoint: Path
    config: Config
    #: ``-o`` options left after the ones the config absorbed.
    fuse_options: set[str] = field(default_factory=set)
    drain_uploads: bool = True


def parse_mount_options(text: str | None) -> tuple[dict[str, Any], set[str]]:
    """Split ``-o a,b=c`` into config overrides and extra FUSE options."""
    overrides: dict[str, Any] = {}
    extra: set[str] = set()
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key in _IGNORED_OPTIONS:
            continue
        if key in ("allow_other", "writeback_cache", "debug"):
            overrides[f"mount.{key}"] = value.lower() not in ("0", "false", "no") if value else True
        elif key in ("attr_timeout", "entry_timeout"):
            overrides[f"mount.{key}"] = value
        elif key in ("store", "cache_dir", "state_dir"):
            overrides[key] = value
        elif key in ("dfs_url", "dfs_user"):
            overrides[f"dfs.{key[4:]}"] = value
        elif key in ("ro", "allow_root", "default_permissions", "noforget"):
            extra.add(item)
        else:
            raise ConfigError(f"-o {key}: unknown mount option")
    return overrides, extra


def mount_entry(path: Path) -> tuple[str, str] | None:
    """(filesystem type, "major:minor") of a mount at ``path``, read without touching it.

    ``stat`` on a mount whose daemon died while the kernel still waits for it
    hangs, so the mount table is consulted instead.
    """
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        fields = line.split()
        mount_point = fields[4].encode().decode("unicode_escape")
        if mount_point == target:
            fstype = fields[fields.index("-") + 1]
            return fstype, fields[2]
    return None


def _abort_connection(device: str) -> bool:
    """Abort a FUSE connection through fusectl (root only); True if it was done."""
    minor = device.split(":")[1]
    control = Path("/sys/fs/fuse/connections")
    if not (control / minor).exists():
        subprocess.run(["mount", "-t", "fusectl", "none", str(control)], capture_output=True)
    try:
        (control / minor / "abort").write_text("1")
    except OSError:
        return False
    return True


def check_mountpoint(path: Path, pid_file: Path | None = None) -> str | None:
    """Make ``path`` usable as a mount point; returns a note for the user, if any.

    A mount point left behind by a killed daemon either answers every call
    with ENOTCONN ("Transport endpoint is not connected") or, if the kernel
    still waits for the dead daemon, hangs. Both are cleaned up here: the
    connection is aborted (as root) and the mount removed lazily, so a shell
    sitting in it does not block this.
    """
    entry = mount_entry(path)
    if entry is not None:
        fstype, device = entry
        owner = _read_pid(pid_file) if pid_file is not None else None
        if owner is not None and _alive(owner):
            raise ConfigError(f"{path} is already mounted by sovrfs (daemon pid {owner})")
        if not fstype.startswith("fuse"):
            raise ConfigError(f"mount point {path}: something is already mounted there")
        _abort_connection(device)
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)
        if mount_entry(path) is not None:
            raise ConfigError(f"mount point {path}: a dead mount is in the way; unmount it first")
        note = f"{path} was left mounted by a daemon that died; cleaned it up"
    else:
        note = None
    try:
        os.stat(path)
    except OSError as exc:
        raise ConfigError(f"mount point {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise ConfigError(f"mount point {path}: not a directory")
    return note


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[-1][:1] not in ("Z", "X")
    except OSError:
        return False


def pid_file_for(state_dir: Path, mountpoint: Path) -> Path:
    """Where the daemon serving ``mountpoint`` records its pid."""
    name = str(Path(os.path.realpath(mountpoint))).strip("/").replace("/", "-") or "root"
    return state_dir / "mounts" / f"{name}.pid"


def build_store(config: Config) -> PodStore:
    if config.dfs.url:
        from .store.dfs import DfsStore

        if not config.dfs.user:
            raise ConfigError("dfs.user: required with dfs.url (--user NAME)")
        cache = Path(config.cache_dir) / "dfs" / _safe_name(f"{config.dfs.url}-{config.dfs.user}")
        return DfsStore(
            config.dfs.url,
            config.dfs.user,
            config.dfs_password(),
            cache,
            timeout=config.dfs.request_timeout,
            attr_ttl=config.dfs.attr_ttl,
            cache_limit=config.dfs.cache_size,
        )
    return EmbeddedStore(config.store)


class Daemon:
    """One mount, from start to clean stop."""

    def __init__(self, request: MountRequest) -> None:
        self.request = request
        self.state = MountState.NEW
        self.config = request.config
        self.mountpoint = str(request.mountpoint.resolve())
        # Resolved now: once mounted, path look-ups on the mount point need
        # the FUSE loop, which does not run yet while mounting.
        self.pid_file = pid_file_for(Path(self.config.state_dir), Path(self.mountpoint))
        self.store = build_store(self.config)
        runs = self.config.runs
        state_dir = Path(self.config.state_dir)
        self.engine = RunEngine(
            state_dir / "runs" / _store_key(self.store),
            max_parallel=runs.max_parallel,
            grace_int=runs.grace_int,
            grace_term=runs.grace_term,
            on_change=self._run_changed,
        )
        self.golem = self._build_golem()
        self.app = App(
            self.store,
            self.engine,
            self.golem,
            AppSettings(
                mountpoint=self.mountpoint,
                state_dir=state_dir / _store_key(self.store),
                max_parallel=runs.max_parallel,
                default_timeout=runs.default_timeout or None,
                grace_int=runs.grace_int,
                grace_term=runs.grace_term,
            ),
        )
        mount = self.config.mount
        self.operations = Operations(
            self.store,
            Controller(self.app),
            MountOptions(
                attr_timeout=mount.attr_timeout,
                entry_timeout=mount.entry_timeout,
                writeback_cache=mount.writeback_cache,
            ),
        )
        self.app.operations = self.operations

    def _build_golem(self) -> GolemService | None:
        golem = self.config.golem
        if golem.mode == "off":
            return None
        app_key = None
        if golem.mode == "external":
            app_key = self.config.golem_appkey()
        return GolemService(
            Path(platformdirs.user_data_dir("sovrfs")) / "yagna",
            api_url=golem.api_url if golem.mode == "external" else None,
            app_key=app_key,
            mode=golem.mode,
        )

    def _run_changed(self, pod: str) -> None:
        """The run engine changed a pod's state: the control files must be re-read."""
        self.operations.control_changed(pod)

    def _fuse_options(self) -> set[str]:
        options = set(pyfuse3.default_options)
        options |= {"fsname=sovrfs", "subtype=sovrfs"}
        if self.config.mount.allow_other:
            options.add("allow_other")
        options |= self.request.fuse_options
        return options

    async def run(self) -> None:
        """Mount, serve until unmounted or signalled, then stop cleanly."""
        self.state = MountState.STARTING
        await self.store.start()
        try:
            pyfuse3.init(self.operations, self.mountpoint, self._fuse_options())
        except RuntimeError as exc:
            await self.store.aclose()
            raise SovrError(f"cannot mount {self.mountpoint}: {exc}") from exc
        pid_file = self.pid_file
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
        unmounted = False
        try:
            async with trio.open_nursery() as nursery:
                self.operations.nursery = nursery
                nursery.start_soon(self._serve_fuse, nursery)
                async with trio.open_nursery() as app_nursery:
                    await app_nursery.start(self.app.serve)
                    app_nursery.start_soon(self.operations.serve_changes)
                    app_nursery.start_soon(self._wait_ready)
                    nursery.start_soon(self._watch_signals, app_nursery)
                # The app stopped (signal): runs are down, now let the kernel go.
                self.state = MountState.STOPPING
                notify.stopping()
                pyfuse3.terminate()
            unmounted = True
        finally:
            self.operations.nursery = None
            pyfuse3.close(unmount=True)
            pid_file.unlink(missing_ok=True)
            with trio.CancelScope(shield=True):
                await self._finish(unmounted)

    async def _serve_fuse(self, nursery: trio.Nursery) -> None:
        await pyfuse3.main()
        # The kernel mount went away (fusermount -u): stop everything else.
        log.info("%s was unmounted", self.mountpoint)
        nursery.cancel_scope.cancel()

    async def _wait_ready(self) -> None:
        # Ready only once the mount answers: stat it from a thread, which the
        # FUSE loop (this very thread) serves.
        await trio.to_thread.run_sync(os.stat, self.mountpoint)
        _raise_readahead(Path(self.mountpoint))
        self.state = MountState.MOUNTED
        log.info("mounted %s (%s store)", self.mountpoint, self.store.kind)
        notify.ready(f"serving {self.mountpoint}")

    async def _watch_signals(self, app_nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("%s received: unmounting %s", signal.Signals(signum).name, self.mountpoint)
                app_nursery.cancel_scope.cancel()
                return

    async def _finish(self, unmounted: bool) -> None:
        self.state = MountState.STOPPING
        try:
            await self.store.aclose()
        except SovrError as exc:
            log.error("the store did not close cleanly: %s", describe(exc))
        if self.golem is not None:
            await self.golem.aclose()
        self.state = MountState.STOPPED
        log.info("stopped serving %s", self.mountpoint)


#: Readahead for the mount, in KiB. The kernel's default for FUSE (128 KiB)
#: makes every sequential read a round trip through the daemon per 128 KiB;
#: 1 MiB requests read about four times faster here (see docs/bench.rst).
READ_AHEAD_KB = 1024


def _raise_readahead(mountpoint: Path) -> None:
    """Let the kernel read ahead in large requests (root only; best effort)."""
    entry = mount_entry(mountpoint)
    if entry is None:
        return
    try:
        Path(f"/sys/class/bdi/{entry[1]}/read_ahead_kb").write_text(f"{READ_AHEAD_KB}\n")
    except OSError as exc:
        log.debug("readahead left at the kernel's default: %s", exc)


def _safe_name(raw: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)[:120]


def _store_key(store: PodStore) -> str:
    """A directory name telling stores apart in the state directory."""
    status = store.status()
    return _safe_name(
        f"{status.get('kind')}-{status.get('url') or status.get('path')}-{status.get('user', '')}"
    )


def serve(request: MountRequest) -> None:
    """Run a daemon in this process until it stops (the foreground mode)."""
    daemon = Daemon(request)
    trio.run(daemon.run)
