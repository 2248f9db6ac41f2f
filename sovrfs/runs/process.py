"""Process-level helpers of the run engine: environment, spawning, process groups.

Every run gets its own session (``start_new_session``), so its pid is also its
process-group id and one ``killpg`` reaches everything it started, unless a
descendant deliberately leaves the session.

A restarted daemon finds runs of its predecessor only by the pids written in
the state directory. A pid alone is not an identity (the kernel recycles
them), so the engine also records the process start time from
``/proc/<pid>/stat`` and the kernel's boot id, and signals a group only when
both still match.
"""

from __future__ import annotations

import os
import pwd
import signal
from collections.abc import Callable, Mapping

#: Signals whose "ignored" disposition survives ``exec``. A daemon started in
#: the background of a non-interactive shell has SIGINT and SIGQUIT ignored, and
#: a child that inherits that can never be interrupted (yapapi requestors rely
#: on SIGINT to stop their session cleanly).
_RESETTABLE = frozenset(
    {signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}
)


def base_env() -> dict[str, str]:
    """The minimal environment a run starts from (not the daemon's whole one).

    ``PYTHONUNBUFFERED`` makes Python scripts write their output as they go,
    so the log grows live instead of in 8 KiB steps.
    """
    home = os.environ.get("HOME")
    if not home:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            home = "/"
    return {
        "PATH": os.environ.get("PATH") or os.defpath,
        "HOME": home,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }


def run_env(
    base: Mapping[str, str], extra: Mapping[str, str], ids: Mapping[str, str]
) -> dict[str, str]:
    env = dict(base)
    env.update(extra)
    env.update(ids)
    return env


def ignored_signals() -> frozenset[int]:
    """The signals this process ignores, read from the kernel (``SigIgn``).

    Read from ``/proc`` rather than :func:`signal.getsignal`, which does not
    see dispositions set by C libraries.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("SigIgn:"):
                    mask = int(line.split()[1], 16)
                    return frozenset(s for s in _RESETTABLE if mask & (1 << (s - 1)))
    except OSError:
        pass
    return frozenset()


def make_preexec(ignored: frozenset[int]) -> Callable[[], None]:
    """A ``preexec_fn`` that gives the child default dispositions and an empty mask.

    It runs between fork and exec, so it does nothing but two system calls.
    """

    def restore() -> None:
        for signum in ignored:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())

    return restore


def spawn_failure(exc: OSError, argv: list[str], cwd: str) -> str:
    """Why a run could not start, in words for ``.sovr/status``."""
    what = exc.strerror or str(exc)
    if exc.filename == cwd:
        return f"cannot enter the pod directory {cwd}: {what}"
    if isinstance(exc, FileNotFoundError):
        return f"cannot start {argv[0]!r}: no such file or command"
    if isinstance(exc, PermissionError):
        return f"cannot start {argv[0]!r}: not executable ({what})"
    return f"cannot start {argv[0]!r}: {what}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (after the command name)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; it ends at the last ')'.
    return text[text.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot, or None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``. Blocking: scans /proc."""
    if not signal_group(pgid, 0):
        return []
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None or len(fields) < 3:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def group_is_ours(pgid: int, recorded_start: int | None, recorded_boot: str | None) -> bool:
    """Whether the group ``pgid`` is still the one a run recorded. Blocking.

    While the leader lives, its start time decides. Once it is gone, the
    kernel keeps the number reserved for as long as the group has members, so
    members that started no earlier than the recorded leader are its
    descendants.
    """
    if recorded_start is None or recorded_boot is None or recorded_boot != boot_id():
        return False
    leader_start = start_time(pgid)
    if leader_start is not None:
        fields = _stat_fields(pgid)
        return leader_start == recorded_start and fields is not None and int(fields[2]) == pgid
    members = group_members(pgid)
    return bool(members) and all((start_time(pid) or 0) >= recorded_start for pid in members)
