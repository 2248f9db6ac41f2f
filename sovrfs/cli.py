"""The ``sovrfs`` command line.

``mount`` and ``umount`` start and stop a daemon; every other command talks to
a running daemon only through its control files in the mount (no second
channel), so anything the CLI does a script can do with ``touch`` and ``cat``.

A pod is named either by its path (``~/sovrfs/wordcount``, ``.``) or by its
name, looked up in the mount given with ``--mount`` (default: ``$SOVRFS_MOUNTPOINT``
or ``~/sovrfs``).
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, InvalidName, SovrError, describe

DEFAULT_MOUNT = Path(os.environ.get("SOVRFS_MOUNTPOINT", "~/sovrfs")).expanduser()
CONTROL = ".sovr"
_FINISHED = {"succeeded", "failed", "cancelled", "interrupted"}


class CliError(Exception):
    """A failure to report to the user as one line, with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- finding mounts and pods ---------------------------------------------------


def find_mount_root(start: Path) -> Path | None:
    """The sovrfs mount holding ``start``: the nearest ancestor with ``.sovr/status.json``."""
    cur = start.resolve()
    for candidate in (cur, *cur.parents):
        if (candidate / CONTROL / "status.json").is_file():
            return candidate
    return None


def resolve_pod(spec: str, mount: Path | None) -> tuple[Path, str]:
    """(mount root, pod name) for a pod given by path or by name."""
    path = Path(spec).expanduser()
    if "/" in spec or spec in (".", "..") or (path.is_dir() and not mount):
        root = find_mount_root(path)
        if root is None:
            raise CliError(f"{spec}: not inside a sovrfs mount")
        rel = path.resolve().relative_to(root)
        if not rel.parts:
            raise CliError(f"{spec}: the mount root is not a pod")
        return root, rel.parts[0]
    root = mount_root(mount)
    if not (root / spec).is_dir():
        raise CliError(f"no pod named {spec!r} in {root}")
    return root, spec


def mount_root(mount: Path | None) -> Path:
    root = (mount or DEFAULT_MOUNT).expanduser()
    if not (root / CONTROL / "status.json").is_file():
        raise CliError(f"{root} is not a running sovrfs mount (start one: sovrfs mount {root})")
    return root


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(f"{path}: not found") from None
    except ValueError as exc:
        raise CliError(f"{path}: unreadable ({exc})") from None


def touch_control(path: Path, what: str, explain: Callable[[], str | None] | None = None) -> None:
    """Open a trigger control file for writing: the daemon acts on the open."""
    try:
        fd = os.open(path, os.O_WRONLY)
        os.close(fd)
    except OSError as exc:
        reason = explain() if explain is not None else None
        text = reason or exc.strerror or str(exc)
        raise CliError(f"{what}: {text}", 2 if exc.errno == errno.EBUSY else 1) from None


def write_control(path: Path, line: str, what: str, explain: Callable[[], str | None]) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(line + "\n")
    except OSError as exc:
        raise CliError(f"{what}: {explain() or exc.strerror}") from None


# -- commands ------------------------------------------------------------------


def cmd_mount(args: argparse.Namespace) -> int:
    from .config import load_config
    from .daemon import (
        MountRequest,
        check_mountpoint,
        mount_entry,
        parse_mount_options,
        pid_file_for,
        serve,
    )
    from .secrets import setup_logging

    overrides, extra = parse_mount_options(args.options)
    if args.store:
        overrides["store"] = args.store
    if args.dfs:
        overrides["dfs.url"] = args.dfs
    if args.user:
        overrides["dfs.user"] = args.user
    if args.debug:
        overrides["mount.debug"] = True
    config = load_config(args.config, overrides=overrides)
    mountpoint = Path(args.mountpoint).expanduser()
    if not os.path.lexists(mountpoint) and mount_entry(mountpoint) is None:
        raise CliError(f"mount point {mountpoint} does not exist (create it with mkdir)")
    if config.dfs.url:
        # Ask for the password now, on the terminal, not in the background child.
        password = config.dfs_password(prompt=sys.stdin.isatty())
        os.environ["SOVRFS_DFS_PASSWORD"] = password
    if not args.foreground:
        return _mount_in_background(args, mountpoint)
    setup_logging(args.debug or config.mount.debug)
    logging.getLogger("watchdog").setLevel(logging.INFO)
    # A crash below Python (libfuse, a C extension) leaves the mount dead with
    # nothing in the log; this puts every thread's stack there instead.
    faulthandler.enable()
    note = check_mountpoint(mountpoint, pid_file_for(config.state_dir, mountpoint))
    if note:
        print(f"sovrfs: {note}", file=sys.stderr)
    serve(MountRequest(mountpoint, config, extra))
    return 0


def _mount_in_background(args: argparse.Namespace, mountpoint: Path) -> int:
    """Start the daemon as a child and return once its mount answers."""
    from .config import default_state_dir

    argv = [sys.executable, "-m", "sovrfs", "mount", str(mountpoint), "-f"]
    for flag, value in (
        ("--store", args.store),
        ("--dfs", args.dfs),
        ("--user", args.user),
        ("-o", args.options),
        ("--config", args.config),
    ):
        if value:
            argv += [flag, str(value)]
    if args.debug:
        argv.append("--debug")
    log_dir = default_state_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / (str(mountpoint.resolve()).strip("/").replace("/", "-") + ".log")
    with tempfile.TemporaryDirectory(prefix="sovrfs-notify-") as tmp:
        sock_path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(0.2)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        with open(log_file, "ab") as log_fh:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                message = sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                message = ""
            if "READY=1" in message:
                print(f"mounted {mountpoint} (daemon pid {child.pid}, log {log_file})")
                return 0
            if child.poll() is not None:
                tail = log_file.read_text(errors="replace").splitlines()[-5:]
                raise CliError("the daemon did not start:\n  " + "\n  ".join(tail))
        child.terminate()
        raise CliError(f"the daemon did not become ready in time; see {log_file}")


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).expanduser().resolve()
    pid = None
    status_file = mountpoint / CONTROL / "status.json"
    if status_file.is_file():
        pid = read_json(status_file).get("pid")
        if not args.no_wait:
            _drain_uploads(status_file, args.timeout)
    result = subprocess.run(
        ["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        message = result.stderr.strip() or "fusermount3 failed"
        if "not mounted" in message or "not found in" in message:
            raise CliError(f"{mountpoint} is not mounted")
        raise CliError(f"cannot unmount {mountpoint}: {message}")
    if pid and not args.no_wait:
        _wait_for_exit(int(pid))
    print(f"unmounted {mountpoint}")
    return 0


def _queue(status_file: Path) -> dict[str, Any]:
    queue: dict[str, Any] = read_json(status_file).get("store", {}).get("upload_queue") or {}
    return queue


def _drain_uploads(status_file: Path, timeout: float) -> None:
    """Show the upload queue draining; on timeout say what is left (it stays journaled)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    queue = _queue(status_file)
    if not queue.get("files"):
        return
    start_bytes = queue.get("bytes", 0)
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("uploading {task.fields[files]} file(s)"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[error]}"),
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task("uploads", total=start_bytes or 1, files=queue["files"], error="")
        while queue.get("files") and time.monotonic() < deadline:
            time.sleep(0.2)
            queue = _queue(status_file)
            left = queue.get("bytes", 0)
            error = queue.get("last_error") or ""
            progress.update(
                task,
                completed=max(0, start_bytes - left),
                files=queue.get("files", 0),
                error=f"(retrying: {error})" if error else "",
            )
    if queue.get("files"):
        print(
            f"sovrfs: gave up waiting after {timeout:.0f} s: {queue['files']} file(s), "
            f"{queue.get('bytes', 0)} bytes not uploaded yet"
            + (f" (last error: {queue['last_error']})" if queue.get("last_error") else "")
            + "; they stay in the cache and are uploaded by the next mount",
            file=sys.stderr,
        )


def _wait_for_exit(pid: int) -> None:
    """Wait until the daemon has finished (its store is then closed)."""
    while _alive(pid):
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def cmd_init(args: argparse.Namespace) -> int:
    from .templates import copy_template, list_templates

    template = args.template
    if template not in list_templates():
        raise CliError(f"no template {template!r}; choose one of: {', '.join(list_templates())}")
    root = mount_root(args.mount) if "/" not in args.pod else None
    target = Path(args.pod).expanduser() if root is None else root / args.pod
    if target.exists():
        raise CliError(f"{target} already exists")
    try:
        target.mkdir()
    except OSError as exc:
        raise CliError(f"cannot create pod {target.name}: {exc.strerror}") from None
    try:
        copy_template(template, target, pod_name=target.name)
    except InvalidName:
        copy_template(template, target)
    print(f"created compute pod {target} from template {template}")
    return 0


def _pod_status(root: Path, pod: str) -> dict[str, Any]:
    data: dict[str, Any] = read_json(root / pod / CONTROL / "status")
    return data


def cmd_run(args: argparse.Namespace) -> int:
    root, pod = resolve_pod(args.pod, args.mount)
    ctl = root / pod / CONTROL
    if not ctl.is_dir():
        raise CliError(f"pod {pod} has no recipe: not a compute pod")

    def reason() -> str | None:
        return str(_pod_status(root, pod).get("reason") or "") or None

    touch_control(ctl / "run", f"cannot start {pod}", reason)
    status = _pod_status(root, pod)
    print(f"run {status.get('run_id')} of {pod}: {status.get('state')}", file=sys.stderr)
    if not args.wait:
        return 0
    return _follow(root, pod, str(status.get("run_id")))


def _follow(root: Path, pod: str, run_id: str) -> int:
    """Stream the run's log until it finishes; the run's exit status is ours."""
    log_file = root / pod / CONTROL / "log"
    offset = 0
    while True:
        status = _pod_status(root, pod)
        try:
            with open(log_file, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except OSError:
            chunk = b""
        if chunk:
            offset += len(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        if status.get("run_id") == run_id and status.get("state") in _FINISHED and not chunk:
            break
        time.sleep(0.2)
    state = status.get("state")
    reason = f" ({status['reason']})" if status.get("reason") else ""
    print(f"run {run_id} of {pod}: {state}{reason}", file=sys.stderr)
    if state == "succeeded":
        return 0
    code = status.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    root, pod = resolve_pod(args.pod, args.mount)
    touch_control(root / pod / CONTROL / "cancel", f"cannot cancel {pod}")
    print(f"cancelling {pod}")
    return 0


def cmd_persist(args: argparse.Namespace) -> int:
    root, pod = resolve_pod(args.pod, args.mount)
    touch_control(root / pod / CONTROL / "persist", f"cannot persist {pod}")
    ref = (root / pod / CONTROL / "ref").read_text().strip()
    print(
        f"persisted {pod}" + (f"; sharing reference {ref}" if ref else " (not public: not shared)")
    )
    return 0


def cmd_fork(args: argparse.Namespace) -> int:
    root = mount_root(args.mount)
    line = args.ref + (f" {args.name}" if args.name else "")

    def reason() -> str | None:
        last = read_json(root / CONTROL / "status.json").get("last_fork") or {}
        return str(last.get("error") or "") or None

    write_control(root / CONTROL / "fork", line, "fork failed", reason)
    last = read_json(root / CONTROL / "status.json").get("last_fork") or {}
    print(f"forked {args.ref} as pod {last.get('pod')}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    root = mount_root(args.mount)
    write_control(
        root / CONTROL / "import",
        f"{args.pod} {args.dest}",
        f"cannot import {args.pod}",
        lambda: str(read_json(root / CONTROL / "status.json").get("last_error") or "") or None,
    )
    print(f"imported {args.pod} as compute pod {args.dest}")
    return 0


def cmd_pods(args: argparse.Namespace) -> int:
    root = mount_root(args.mount)
    registry = read_json(root / CONTROL / "registry.json")
    rows = [
        [
            str(p.get("pod", "")),
            str(p.get("name", "")),
            str(p.get("description") or ""),
            "yes" if p.get("public") else "no",
            ", ".join(r[:12] + "…" for r in p.get("refs", [])),
            str(p.get("last_run") or ""),
        ]
        for p in registry.get("pods", [])
    ]
    _table(["pod", "name", "description", "public", "refs", "last run"], rows)
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    root = mount_root(args.mount)
    if args.rebuild:
        touch_control(root / CONTROL / "rebuild-registry", "cannot rebuild the registry")
    print(json.dumps(read_json(root / CONTROL / "registry.json"), indent=2))
    return 0


def cmd_persist_self(args: argparse.Namespace) -> int:
    root = mount_root(args.mount)
    touch_control(root / CONTROL / "persist-self", "cannot persist sovrfs itself")
    ref = read_json(root / CONTROL / "status.json").get("persist_self_ref")
    print(f"sovrfs {__version__} persisted in pod Sovr; sharing reference {ref}")
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    from .recipe import Task, parse_recipe

    root = mount_root(args.mount)
    source = Path(args.file)
    try:
        task = parse_recipe(source.read_bytes(), source=str(source))
    except OSError as exc:
        raise CliError(f"{source}: {exc.strerror}") from None
    except SovrError as exc:
        raise CliError(f"{source}: {describe(exc)}") from None
    if not isinstance(task, Task):
        raise CliError(f"{source}: not a task (it has no 'pods' list)")
    pod = args.pod or task.name
    pod_dir = root / pod
    if not pod_dir.exists():
        pod_dir.mkdir()
    shutil.copyfile(source, pod_dir / f"{pod}.recipe")
    args.pod = str(pod_dir)
    return cmd_run(args)


def cmd_status(args: argparse.Namespace) -> int:
    root = mount_root(Path(args.mountpoint) if args.mountpoint else args.mount)
    status = read_json(root / CONTROL / "status.json")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    store = status.get("store", {})
    golem = status.get("golem", {})
    _table(
        ["mount", "store", "daemon", "golem"],
        [[str(root), _store_line(store), f"pid {status.get('pid')}", _golem_line(golem)]],
    )
    runs = status.get("runs", {})
    rows = []
    for pod in sorted(p.name for p in root.iterdir() if (p / CONTROL / "status").is_file()):
        st = _pod_status(root, pod)
        rows.append([pod, str(st.get("state")), str(st.get("run_id") or ""),
                     str(st.get("reason") or "")])  # fmt: skip
    if rows:
        _table(["pod", "state", "run", "reason"], rows)
    if runs:
        print(f"runs: {runs.get('running', 0)} running, {runs.get('queued', 0)} queued")
    uploads = store.get("upload_queue")
    if uploads:
        _table(
            ["queued files", "queued bytes", "retries", "last error", "uploaded"],
            [[str(uploads.get("files", 0)), str(uploads.get("bytes", 0)),
              str(uploads.get("retries", 0)), str(uploads.get("last_error") or ""),
              f"{uploads.get('uploaded_files', 0)} files"]],
        )  # fmt: skip
    return 0


def _store_line(store: dict[str, Any]) -> str:
    if store.get("kind") == "embedded":
        return f"embedded ({store.get('path')})"
    return f"{store.get('kind')} {store.get('url', '')} user {store.get('user', '')}"


def _golem_line(golem: dict[str, Any]) -> str:
    if golem.get("mode") == "off":
        return "off"
    state = golem.get("state", "")
    why = golem.get("reason") or golem.get("why_not")
    return f"{golem.get('mode', '')} {state}" + (f" ({why})" if why else "")


def _table(headers: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers, show_lines=False)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def cmd_refresh(args: argparse.Namespace) -> int:
    root, pod = resolve_pod(args.pod, args.mount)
    write_control(
        root / CONTROL / "refresh",
        pod,
        f"cannot refresh {pod}",
        lambda: None,
    )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from .config import load_config

    print(load_config(args.config).show(), end="")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from .completion import complete_script

    print(complete_script(build_parser(), args.shell))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Mount the embedded store, create the offline demo pod and run it."""
    mountpoint = Path(args.mountpoint).expanduser()
    mountpoint.mkdir(parents=True, exist_ok=True)
    if not (mountpoint / CONTROL / "status.json").is_file():
        mount_args = build_parser().parse_args(["mount", str(mountpoint)])
        cmd_mount(mount_args)
    pod = mountpoint / "wordcount-demo"
    if not pod.exists():
        cmd_init(build_parser().parse_args(["init", str(pod), "--template", "wordcount"]))
    status = cmd_run(build_parser().parse_args(["run", str(pod), "--wait"]))
    report = pod / "output" / "report.txt"
    if report.is_file():
        print(f"\n{report}:\n" + report.read_text())
    print(f"The mount stays up at {mountpoint}; stop it with: sovrfs umount {mountpoint}")
    return status


# -- the parser ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sovrfs",
        description="Mount FairOS-DFS pods as a directory tree and run compute pods on Golem.",
    )
    parser.add_argument("--version", action="version", version=f"sovrfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if name not in ("mount", "umount", "config", "completion", "demo"):
            p.add_argument("--mount", "-m", type=Path, help=f"the mount (default {DEFAULT_MOUNT})")
        return p

    p = add("mount", cmd_mount, "mount the pods at MOUNTPOINT")
    p.add_argument("mountpoint")
    p.add_argument("--store", help="embedded store directory (default: XDG data dir)")
    p.add_argument("--dfs", metavar="URL", help="FairOS-DFS server instead of the embedded store")
    p.add_argument("--user", help="FairOS-DFS user name (password: SOVRFS_DFS_PASSWORD or file)")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-o", dest="options", metavar="OPTS", help="mount options, comma separated")
    p.add_argument("--config", type=Path, help="config file (default: XDG config dir)")
    p.add_argument("--debug", action="store_true", help="log every request")

    p = add("umount", cmd_umount, "unmount, after everything written is safe in the store")
    p.add_argument("mountpoint")
    p.add_argument("--no-wait", action="store_true", help="do not wait for uploads to finish")
    p.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for uploads (default 600)"
    )

    p = add("init", cmd_init, "create a compute pod from a template")
    p.add_argument("pod")
    p.add_argument("--template", "-t", default="wordcount", help="template name")

    p = add("run", cmd_run, "start a pod's run")
    p.add_argument("pod")
    p.add_argument("--wait", "-w", action="store_true", help="stream the log until the run ends")

    p = add("cancel", cmd_cancel, "stop a pod's run")
    p.add_argument("pod")

    p = add("persist", cmd_persist, "persist a pod (and share it if its recipe is public)")
    p.add_argument("pod")

    p = add("fork", cmd_fork, "fork a shared pod by its sharing reference")
    p.add_argument("ref")
    p.add_argument("--name", help="name of the new pod (default: the shared pod's name)")

    p = add("import", cmd_import, "turn a pod persisted by the original tool into a compute pod")
    p.add_argument("pod")
    p.add_argument("dest")

    add("pods", cmd_pods, "list compute pods")

    p = add("registry", cmd_registry, "show the compute-pod registry")
    p.add_argument("--rebuild", action="store_true", help="scan every pod first")

    add("persist-self", cmd_persist_self, "persist and share sovrfs's own source in pod Sovr")

    p = add("task", cmd_task, "run a task file: pods in order, outputs chained")
    p.add_argument("file")
    p.add_argument("--pod", help="pod to hold the task (default: the task's name)")
    p.add_argument("--wait", "-w", action="store_true", help="wait until the task ends")

    p = add("status", cmd_status, "show the daemon, runs, uploads and Golem")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--json", action="store_true", help="print status.json as is")

    p = add("refresh", cmd_refresh, "drop cached listings so changes made elsewhere show")
    p.add_argument("pod")

    p = add("config", cmd_config, "show the effective configuration (secrets hidden)")
    p.add_argument("action", choices=["show"])
    p.add_argument("--config", type=Path, help="config file")

    p = add("completion", cmd_completion, "print a shell completion script")
    p.add_argument("shell", choices=["bash", "zsh"])

    p = add("demo", cmd_demo, "mount the embedded store and run the offline demo pod")
    p.add_argument("mountpoint", nargs="?", default=str(DEFAULT_MOUNT))
    return parser


_COMMANDS = [
    "mount",
    "umount",
    "init",
    "run",
    "cancel",
    "persist",
    "fork",
    "import",
    "pods",
    "registry",
    "persist-self",
    "task",
    "status",
    "refresh",
    "config",
    "completion",
    "demo",
]


def _from_mount_helper(argv: list[str]) -> list[str]:
    """Translate ``sovrfs SOURCE MOUNTPOINT -o OPTS`` (the FUSE mount helper's call).

    SOURCE is ``embedded``, ``embedded:/path/to/store`` or ``dfs:URL#USER``.
    """
    source, mountpoint, *rest = argv
    out = ["mount", mountpoint]
    if source.startswith("embedded:"):
        out += ["--store", source[len("embedded:") :]]
    elif source.startswith("dfs:"):
        url, _, user = source[len("dfs:") :].partition("#")
        out += ["--dfs", url, "--user", user]
    elif source not in ("embedded", "sovrfs"):
        raise CliError(f"unknown source {source!r}: use embedded, embedded:DIR or dfs:URL#USER")
    return out + rest


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = set(_COMMANDS)
    try:
        if (
            len(args_list) >= 2
            and args_list[0] not in commands
            and not args_list[0].startswith("-")
        ):
            args_list = _from_mount_helper(args_list)
        args = parser.parse_args(args_list)
        status: int = args.func(args)
        return status
    except CliError as exc:
        print(f"sovrfs: {exc}", file=sys.stderr)
        return exc.status
    except (ConfigError, SovrError) as exc:
        print(f"sovrfs: {describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
