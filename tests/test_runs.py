"""The run engine with real child processes in temporary pod directories."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from sovrfs.errors import NotFound, RunBusy
from sovrfs.runs import INTERRUPTED_REASON, RunEngine, RunRecord, RunRequest, RunState
from sovrfs.runs.process import group_members, start_time

PY = sys.executable
GRACE = 0.2
#: Upper bound for any single wait in these tests (never reached when things work).
BOUND = 30.0

# Prints "ready", then waits until the file named by argv[1] exists.
WAIT_GO = textwrap.dedent(
    """
    import os, sys, time
    print("ready", flush=True)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    print("done", flush=True)
    """
)


def stubborn(*ignored: str) -> str:
    """A child that ignores the named signals and then sleeps."""
    lines = ["import signal, time"]
    lines += [f"signal.signal(signal.{name}, signal.SIG_IGN)" for name in ignored]
    lines += ["print('ready', flush=True)", "time.sleep(600)"]
    return "\n".join(lines)


class Engine:
    """A served engine plus what its ``on_change`` saw."""

    def __init__(self, engine: RunEngine, changes: list[str], root: Path) -> None:
        self.engine = engine
        self.changes = changes
        self.root = root

    def request(self, pod: str, argv: list[str], **kw: Any) -> RunRequest:
        pod_dir = self.root / pod
        pod_dir.mkdir(exist_ok=True)
        return RunRequest(
            pod=pod,
            argv=argv,
            cwd=str(pod_dir),
            env=kw.pop("env", {}),
            log_path=str(pod_dir / "logs" / "{run_id}.log"),
            **kw,
        )

    def log_text(self, record: RunRecord) -> str:
        assert record.log is not None
        return (self.root / record.pod / record.log).read_text()

    def output(self, record: RunRecord) -> str:
        """The log without its header line (which repeats the command)."""
        return self.log_text(record).partition("\n")[2]

    async def wait_log(self, record: RunRecord, needle: str) -> None:
        with trio.fail_after(BOUND):
            while True:
                try:
                    if needle in self.output(record):
                        return
                except FileNotFoundError:
                    pass
                await trio.sleep(0.01)


async def wait_until(check: Callable[[], bool]) -> None:
    with trio.fail_after(BOUND):
        while True:
            if check():
                return
            await trio.sleep(0.01)


def open_engine(tmp_path: Path, nursery: trio.Nursery, **kw: Any) -> Callable[[], Any]:
    async def start() -> Engine:
        changes: list[str] = []
        kw.setdefault("grace_int", GRACE)
        kw.setdefault("grace_term", GRACE)
        engine = RunEngine(tmp_path / "state", on_change=changes.append, **kw)
        await nursery.start(engine.serve)
        return Engine(engine, changes, tmp_path / "pods")

    (tmp_path / "pods").mkdir(exist_ok=True)
    return start


@pytest.fixture
async def eng(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Engine]:
    yield await open_engine(tmp_path, nursery)()


async def test_success_record_log_and_environment(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon's own environment must not leak into runs.
    monkeypatch.setenv("SOVR_TEST_DAEMON_ONLY", "secret")
    script = "import json, os; print(json.dumps(dict(os.environ)))"
    req = eng.request("hello", [PY, "-c", script], env={"SOVR_OUTPUT": "/x/output", "A": "1"})
    req.meta = {"recipe": "hello.recipe"}
    submitted = await eng.engine.submit(req)
    assert submitted.state in (RunState.QUEUED, RunState.RUNNING)

    with trio.fail_after(BOUND):
        record = await eng.engine.wait("hello", submitted.run_id)

    assert record.state is RunState.SUCCEEDED
    assert record.exit_code == 0 and record.signal is None and record.reason is None
    assert record.log == f"logs/{record.run_id}.log"
    lines = eng.log_text(record).splitlines()
    assert lines[0].startswith(f"=== sovrfs run {record.run_id} of pod hello started ")
    assert "python" in lines[0]
    assert lines[-1].startswith(f"=== sovrfs run {record.run_id} succeeded")
    env = json.loads(lines[1])
    assert env["SOVR_POD"] == "hello"
    assert env["SOVR_RUN_ID"] == record.run_id
    assert env["SOVR_OUTPUT"] == "/x/output"
    assert env["SOVR_LOG"] == str(eng.root / "hello" / record.log)
    assert env["A"] == "1"
    assert {"PATH", "HOME", "LANG"} <= env.keys()
    assert "SOVR_TEST_DAEMON_ONLY" not in env

    status = record.to_json()
    assert status["state"] == "succeeded"
    assert status["meta"] == {"recipe": "hello.recipe"}
    for key in ("queued_at", "started_at", "finished_at"):
        assert status[key].endswith("Z")
    assert status["pid"] == record.pid
    assert json.loads(json.dumps(status)) == status
    assert eng.engine.current("hello") == record
    assert eng.engine.history("hello") == [record]
    assert eng.engine.record("hello", record.run_id) == record
    assert "hello" in eng.changes


@pytest.mark.parametrize(
    ("script", "state", "exit_code", "sig", "reason"),
    [
        ("raise SystemExit(3)", "failed", 3, None, "exited with status 3"),
        ("import os; os.kill(os.getpid(), 9)", "failed", None, "SIGKILL", "killed by SIGKILL"),
    ],
)
async def test_exit_status(
    eng: Engine, script: str, state: str, exit_code: int | None, sig: str | None, reason: str
) -> None:
    submitted = await eng.engine.submit(eng.request("p", [PY, "-c", script]))
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", submitted.run_id)
    assert record.state == state
    assert record.exit_code == exit_code
    assert record.signal == sig
    assert record.reason == reason
    assert (
        eng.log_text(record)
        .splitlines()[-1]
        .startswith(f"=== sovrfs run {record.run_id} failed: {reason}")
    )


async def test_command_that_cannot_start(eng: Engine) -> None:
    pod_dir = eng.root / "p"
    pod_dir.mkdir()
    (pod_dir / "plain.txt").write_text("not a program\n")

    first = await eng.engine.submit(eng.request("p", ["./no-such-program"]))
    with trio.fail_after(BOUND):
        missing = await eng.engine.wait("p", first.run_id)
    assert missing.state is RunState.FAILED
    assert missing.reason == "cannot start './no-such-program': no such file or command"
    assert missing.pid is None
    assert "no such file or command" in eng.log_text(missing)

    second = await eng.engine.submit(eng.request("p", ["./plain.txt"]))
    with trio.fail_after(BOUND):
        not_exec = await eng.engine.wait("p", second.run_id)
    assert not_exec.state is RunState.FAILED
    assert not_exec.reason is not None
    assert not_exec.reason.startswith("cannot start './plain.txt': not executable")


async def test_log_grows_while_the_run_runs(eng: Engine) -> None:
    submitted = await eng.engine.submit(eng.request("p", [PY, "-c", WAIT_GO, "go"]))
    await eng.wait_log(submitted, "ready")

    # The child is now blocked until "go" exists: what the log holds was written live.
    assert eng.output(submitted) == "ready\n"
    running = eng.engine.current("p")
    assert running is not None and running.state is RunState.RUNNING
    assert running.pid is not None and running.to_json()["state"] == "running"

    (eng.root / "p" / "go").touch()
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", submitted.run_id)
    assert record.state is RunState.SUCCEEDED
    assert eng.output(record).startswith("ready\ndone\n=== sovrfs run ")


async def test_second_submit_is_busy(eng: Engine) -> None:
    req = eng.request("p", [PY, "-c", WAIT_GO, "go"])
    first = await eng.engine.submit(req)
    with pytest.raises(RunBusy) as caught:
        await eng.engine.submit(eng.request("p", [PY, "-c", "pass"]))
    assert caught.value.errno == errno.EBUSY
    with pytest.raises(RunBusy):
        eng.engine.record_failure("p", "golem.exec: missing")

    (eng.root / "p" / "go").touch()
    with trio.fail_after(BOUND):
        await eng.engine.wait("p", first.run_id)
    again = await eng.engine.submit(eng.request("p", [PY, "-c", "pass"]))
    with trio.fail_after(BOUND):
        assert (await eng.engine.wait("p", again.run_id)).state is RunState.SUCCEEDED


async def test_cancel_a_queued_run(tmp_path: Path, nursery: trio.Nursery) -> None:
    eng = await open_engine(tmp_path, nursery, max_parallel=1)()
    first = await eng.engine.submit(eng.request("a", [PY, "-c", WAIT_GO, "go"]))
    queued = await eng.engine.submit(eng.request("b", [PY, "-c", "print('ran')"]))
    assert queued.state is RunState.QUEUED and queued.position == 1

    cancelled = await eng.engine.cancel("b")
    assert cancelled is not None
    assert cancelled.state is RunState.CANCELLED
    assert cancelled.reason == "cancelled before it started"
    assert cancelled.pid is None and cancelled.started_at is None
    assert not (eng.root / "b" / "logs").exists()
    assert eng.engine.summary()["queued"] == 0

    (eng.root / "a" / "go").touch()
    with trio.fail_after(BOUND):
        await eng.engine.wait("a", first.run_id)
    assert eng.engine.current("b") == cancelled
    assert await eng.engine.cancel("a") is None
    assert await eng.engine.cancel("never-ran") is None


@pytest.mark.parametrize(
    ("ignored", "needed"),
    [
        ((), "SIGINT"),
        (("SIGINT",), "SIGTERM"),
        (("SIGINT", "SIGTERM"), "SIGKILL"),
    ],
)
async def test_cancel_escalates(eng: Engine, ignored: tuple[str, ...], needed: str) -> None:
    submitted = await eng.engine.submit(eng.request("p", [PY, "-c", stubborn(*ignored)]))
    await eng.wait_log(submitted, "ready")

    with trio.fail_after(BOUND):
        record = await eng.engine.cancel("p")
    assert record is not None
    assert record.state is RunState.CANCELLED
    assert record.stopped_with == needed
    assert record.reason == f"cancelled; stopped with {needed}"
    assert record.pid is not None and group_members(record.pid) == []
    assert f"cancelled: cancelled; stopped with {needed}" in eng.log_text(record)
    assert record.to_json()["stopped_with"] == needed


async def test_cancel_without_waiting(eng: Engine) -> None:
    submitted = await eng.engine.submit(eng.request("p", [PY, "-c", stubborn("SIGINT")]))
    await eng.wait_log(submitted, "ready")
    record = await eng.engine.cancel("p", wait=False)
    assert record is not None and record.state is RunState.RUNNING
    with trio.fail_after(BOUND):
        final = await eng.engine.wait("p", submitted.run_id)
    assert final.state is RunState.CANCELLED and final.stopped_with == "SIGTERM"


async def test_timeout(eng: Engine) -> None:
    req = eng.request("p", [PY, "-c", stubborn("SIGINT")], timeout=0.5)
    submitted = await eng.engine.submit(req)
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", submitted.run_id)
    assert record.state is RunState.FAILED
    assert record.reason == "timed out after 0.5 s; stopped with SIGTERM"
    assert record.stopped_with == "SIGTERM"
    assert record.signal == "SIGTERM"
    assert record.to_json()["timeout"] == 0.5


async def test_queue_beyond_max_parallel_drains_in_order(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    eng = await open_engine(tmp_path, nursery, max_parallel=2)()
    runs = {}
    for pod in ("a", "b", "c", "d"):
        runs[pod] = await eng.engine.submit(eng.request(pod, [PY, "-c", WAIT_GO, "go"]))
    assert [runs[p].state for p in "abcd"] == ["running", "running", "queued", "queued"]
    assert (runs["c"].position, runs["d"].position) == (1, 2)

    summary = eng.engine.summary()
    assert (summary["running"], summary["queued"]) == (2, 2)
    assert [r["run_id"] for r in summary["queued_runs"]] == [runs["c"].run_id, runs["d"].run_id]
    assert {r["pod"] for r in summary["running_runs"]} == {"a", "b"}
    assert eng.engine.current("c").to_json()["position"] == 1  # type: ignore[union-attr]

    (eng.root / "b" / "go").touch()
    with trio.fail_after(BOUND):
        await eng.engine.wait("b", runs["b"].run_id)
    # First in, first out: c takes the free slot, d moves up.
    assert eng.engine.current("c").state is RunState.RUNNING  # type: ignore[union-attr]
    assert eng.engine.current("d").position == 1  # type: ignore[union-attr]

    for pod in "acd":
        (eng.root / pod / "go").touch()
    with trio.fail_after(BOUND):
        for pod in "acd":
            assert (await eng.engine.wait(pod, runs[pod].run_id)).state is RunState.SUCCEEDED
    assert eng.engine.summary()["running"] == 0


async def test_scrubber_sees_a_secret_split_across_reads(eng: Engine) -> None:
    secret = b"hunter2"

    class Redact:
        def __init__(self) -> None:
            self.held = b""

        def feed(self, data: bytes) -> bytes:
            self.held = (self.held + data).replace(secret, b"*******")
            keep = len(secret) - 1
            out, self.held = self.held[:-keep], self.held[-keep:]
            return out

        def flush(self) -> bytes:
            out, self.held = self.held, b""
            return out

    # The child writes the first half, waits until the engine has logged what
    # came before it (so the halves arrive in separate reads), then the rest.
    script = textwrap.dedent(
        """
        import os, sys, time
        sys.stdout.write("before hun"); sys.stdout.flush()
        log = os.environ["SOVR_LOG"]
        while "befo" not in open(log).read():
            time.sleep(0.01)
        sys.stdout.write("ter2 after\\n"); sys.stdout.flush()
        """
    )
    req = eng.request("p", [PY, "-c", script, "hunter2"], scrubber=Redact)
    submitted = await eng.engine.submit(req)
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", submitted.run_id)
    text = eng.log_text(record)
    assert record.state is RunState.SUCCEEDED
    assert "before *******" + " after" in text
    assert "hunter2" not in text  # neither in the output nor in the header's argv


@pytest.mark.expect_warnings
async def test_a_broken_scrubber_drops_output_rather_than_leak_it(eng: Engine) -> None:
    class Broken:
        def feed(self, data: bytes) -> bytes:
            if b"secret" in data:
                raise ValueError("cannot parse")
            return data

        def flush(self) -> bytes:
            return b""

    script = "import time; print('secret', flush=True); time.sleep(0.2); print('after')"
    submitted = await eng.engine.submit(eng.request("p", [PY, "-c", script], scrubber=Broken))
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", submitted.run_id)
    assert record.state is RunState.SUCCEEDED
    assert "the log scrubber failed; the rest of the output was not logged" in record.warnings
    assert "after" not in eng.output(record) and "secret" not in eng.output(record)


async def test_classify_turns_exit_0_into_a_failure(eng: Engine) -> None:
    seen: list[tuple[int, str]] = []

    def classify(code: int, tail: str) -> str | None:
        seen.append((code, tail))
        return "the Golem market had no offers" if "no offers" in tail else None

    script = "print('Error: no offers for the demand')"
    submitted = await eng.engine.submit(eng.request("p", [PY, "-c", script], classify=classify))
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", submitted.run_id)
    assert record.state is RunState.FAILED
    assert record.exit_code == 0
    assert record.reason == "the Golem market had no offers"
    assert seen[0][0] == 0 and "no offers for the demand" in seen[0][1]

    failing = await eng.engine.submit(
        eng.request("p", [PY, "-c", script + "; raise SystemExit(2)"], classify=classify)
    )
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", failing.run_id)
    assert record.reason == "exited with status 2: the Golem market had no offers"


@pytest.mark.expect_warnings
async def test_log_on_a_full_disk_keeps_the_run_and_the_engine(eng: Engine) -> None:
    logs = eng.root / "p" / "logs"
    logs.mkdir(parents=True)
    (logs / "full.log").symlink_to("/dev/full")
    req = eng.request("p", [PY, "-c", "print('x' * 100000)"])
    req.log_path = str(logs / "full.log")
    submitted = await eng.engine.submit(req)
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", submitted.run_id)

    assert record.state is RunState.SUCCEEDED
    assert any("No space left on device" in w for w in record.warnings)
    assert record.to_json()["warnings"] == record.warnings

    # A log whose directory cannot be made: same story.
    (eng.root / "p" / "a-file").write_text("")
    req = eng.request("p", [PY, "-c", "print('hi')"])
    req.log_path = str(eng.root / "p" / "a-file" / "run.log")
    submitted = await eng.engine.submit(req)
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", submitted.run_id)
    assert record.state is RunState.SUCCEEDED
    assert any(w.startswith("cannot open the log") for w in record.warnings)

    # The engine still works.
    ok = await eng.engine.submit(eng.request("p", [PY, "-c", "print('fine')"]))
    with trio.fail_after(BOUND):
        assert (await eng.engine.wait("p", ok.run_id)).state is RunState.SUCCEEDED


async def test_after_exit_runs_once_the_group_is_gone(eng: Engine) -> None:
    calls: list[tuple[str | None, RunState, list[int]]] = []

    async def after_exit(record: RunRecord) -> None:
        assert record.pid is not None
        calls.append((record.stopped_with, record.state, group_members(record.pid)))

    req = eng.request("p", [PY, "-c", stubborn("SIGINT", "SIGTERM")], after_exit=after_exit)
    submitted = await eng.engine.submit(req)
    await eng.wait_log(submitted, "ready")
    with trio.fail_after(BOUND):
        record = await eng.engine.cancel("p")
    assert record is not None and record.stopped_with == "SIGKILL"
    assert calls == [("SIGKILL", RunState.CANCELLED, [])]


@pytest.mark.expect_warnings
async def test_failing_after_exit_is_recorded(eng: Engine) -> None:
    async def after_exit(record: RunRecord) -> None:
        raise RuntimeError("allocation release refused")

    req = eng.request("p", [PY, "-c", "pass"], after_exit=after_exit)
    submitted = await eng.engine.submit(req)
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", submitted.run_id)
    assert record.state is RunState.SUCCEEDED
    assert record.warnings == ["the after-exit step failed: allocation release refused"]


async def test_left_over_processes_are_stopped(eng: Engine) -> None:
    # A non-interactive shell starts background jobs with SIGINT ignored, so
    # the left-over sleep needs SIGTERM.
    script = "sleep 600 & echo started $!"
    submitted = await eng.engine.submit(eng.request("p", ["sh", "-c", script]))
    with trio.fail_after(BOUND):
        record = await eng.engine.wait("p", submitted.run_id)
    assert record.state is RunState.SUCCEEDED
    assert record.warnings == [
        "1 process(es) still in the run's process group after it ended were stopped with SIGTERM"
    ]
    assert record.pid is not None and group_members(record.pid) == []


async def test_children_do_not_inherit_an_ignored_sigint(eng: Engine) -> None:
    script = "import signal; print(signal.getsignal(signal.SIGINT))"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        submitted = await eng.engine.submit(eng.request("p", [PY, "-c", script]))
        with trio.fail_after(BOUND):
            record = await eng.engine.wait("p", submitted.run_id)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "default_int_handler" in eng.output(record)


async def test_record_failure_without_running(eng: Engine) -> None:
    record = eng.engine.record_failure("p", "golem.exec: missing", meta={"recipe": "p.recipe"})
    assert record.state is RunState.FAILED
    assert record.reason == "golem.exec: missing"
    assert record.pid is None and record.log is None
    assert eng.engine.current("p") == record
    assert eng.engine.history("p") == [record]
    assert "p" in eng.changes


async def test_wait_for_an_unknown_run(eng: Engine) -> None:
    with pytest.raises(NotFound):
        await eng.engine.wait("p", "20260101T000000Z-0000")


async def test_forget_and_rename(eng: Engine) -> None:
    first = await eng.engine.submit(eng.request("old", [PY, "-c", "pass"]))
    with trio.fail_after(BOUND):
        await eng.engine.wait("old", first.run_id)

    eng.engine.rename_pod("old", "new")
    assert eng.engine.current("old") is None
    renamed = eng.engine.history("new")
    assert [(r.run_id, r.pod) for r in renamed] == [(first.run_id, "new")]

    eng.engine.forget_pod("new")
    assert eng.engine.current("new") is None and eng.engine.history("new") == []

    busy = await eng.engine.submit(eng.request("busy", [PY, "-c", WAIT_GO, "go"]))
    with pytest.raises(RunBusy):
        eng.engine.forget_pod("busy")
    with pytest.raises(RunBusy):
        eng.engine.rename_pod("busy", "other")
    (eng.root / "busy" / "go").touch()
    with trio.fail_after(BOUND):
        await eng.engine.wait("busy", busy.run_id)


async def test_history_survives_a_restart(tmp_path: Path) -> None:
    (tmp_path / "pods").mkdir()
    async with trio.open_nursery() as nursery:
        eng = await open_engine(tmp_path, nursery)()
        done = await eng.engine.submit(eng.request("p", [PY, "-c", "pass"]))
        with trio.fail_after(BOUND):
            await eng.engine.wait("p", done.run_id)
        eng.engine.record_failure("q", "golem.payload: missing")
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        again = await open_engine(tmp_path, nursery)()
        history = again.engine.history("p")
        assert [r.run_id for r in history] == [done.run_id]
        assert history[0].state is RunState.SUCCEEDED
        assert again.engine.current("q").reason == "golem.payload: missing"  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_daemon_stop_interrupts_runs(tmp_path: Path) -> None:
    (tmp_path / "pods").mkdir()
    async with trio.open_nursery() as nursery:
        eng = await open_engine(tmp_path, nursery, max_parallel=1)()
        running = await eng.engine.submit(eng.request("a", [PY, "-c", stubborn("SIGINT")]))
        queued = await eng.engine.submit(eng.request("b", [PY, "-c", "pass"]))
        await eng.wait_log(running, "ready")
        nursery.cancel_scope.cancel()

    stopped = eng.engine.current("a")
    assert stopped is not None
    assert stopped.state is RunState.INTERRUPTED
    assert stopped.reason == f"{INTERRUPTED_REASON}; stopped with SIGTERM"
    assert stopped.pid is not None and group_members(stopped.pid) == []
    never = eng.engine.current("b")
    assert never is not None and never.state is RunState.INTERRUPTED and never.pid is None
    assert never.run_id == queued.run_id

    saved = json.loads((tmp_path / "state" / "runs" / "a.json").read_text())
    assert saved["runs"][-1]["state"] == "interrupted"


# -- restart after a crash ----------------------------------------------------

CRASHING_DAEMON = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import trio
    from sovrfs.runs import RunEngine, RunRequest

    async def main():
        state, pod_dir = Path(sys.argv[1]), Path(sys.argv[2])
        engine = RunEngine(state, grace_int=0.2, grace_term=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.serve)
            script = "import time; print('ready', flush=True); time.sleep(600)"
            await engine.submit(RunRequest(
                pod="p", argv=[sys.executable, "-c", script], cwd=str(pod_dir), env={},
                log_path=str(pod_dir / "logs" / "{run_id}.log")))
            saved = state / "runs" / "p.json"
            while True:
                run = json.loads(saved.read_text())["runs"][-1]
                # Wait for the child's output too: once its reader is gone, its
                # next write would kill it with SIGPIPE.
                log = pod_dir / run["log"]
                if run["pid"] and log.exists() and "\\nready" in log.read_text():
                    break
                await trio.sleep(0.01)
            print(run["pid"], flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)


async def crash_a_daemon_with_a_run(tmp_path: Path) -> int:
    """Start an engine in another process, let it start a run, SIGKILL it; the run's pid."""
    pod_dir = tmp_path / "pods" / "p"
    pod_dir.mkdir(parents=True)
    daemon = await trio.lowlevel.open_process(
        [PY, "-c", CRASHING_DAEMON, str(tmp_path / "state"), str(pod_dir)],
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).parent.parent),
    )
    assert daemon.stdout is not None
    try:
        with trio.fail_after(BOUND):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await daemon.stdout.receive_some()
                assert chunk, "the crashing daemon ended early"
                line += chunk
    finally:
        daemon.kill()
        with trio.fail_after(BOUND):
            await daemon.wait()
        await daemon.stdout.aclose()
    pid = int(line)
    assert group_members(pid) == [pid], "the run must outlive its daemon"
    return pid


async def test_restart_marks_interrupted_and_stops_the_left_over_group(tmp_path: Path) -> None:
    pid = await crash_a_daemon_with_a_run(tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            eng = await open_engine(tmp_path, nursery)()
            record = eng.engine.current("p")
            assert record is not None
            assert record.state is RunState.INTERRUPTED
            assert record.pid == pid
            assert record.reason is not None and record.reason.startswith(INTERRUPTED_REASON)
            await wait_until(lambda: group_members(pid) == [])
            await wait_until(lambda: eng.engine.current("p").stopped_with is not None)  # type: ignore[union-attr]
            record = eng.engine.current("p")
            assert record is not None
            assert record.stopped_with == "SIGINT"
            assert record.reason == (
                f"{INTERRUPTED_REASON}; its left-over processes were stopped with SIGINT"
            )
            assert eng.engine.summary()["running"] == 0
            nursery.cancel_scope.cancel()
    finally:
        if group_members(pid):
            os.killpg(pid, signal.SIGKILL)


async def test_restart_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    pid = await crash_a_daemon_with_a_run(tmp_path)
    saved = tmp_path / "state" / "runs" / "p.json"
    data = json.loads(saved.read_text())
    # The same pid with another start time: a different process that got the pid.
    assert data["runs"][-1]["proc_start"] == start_time(pid)
    data["runs"][-1]["proc_start"] -= 1
    saved.write_text(json.dumps(data))
    try:
        async with trio.open_nursery() as nursery:
            eng = await open_engine(tmp_path, nursery)()
            assert eng.engine.current("p").state is RunState.INTERRUPTED  # type: ignore[union-attr]
            # Stopping the engine waits for its recovery tasks to finish.
            nursery.cancel_scope.cancel()
        assert group_members(pid) == [pid]
        record = eng.engine.current("p")
        assert record is not None
        assert record.stopped_with is None and record.reason == INTERRUPTED_REASON
    finally:
        os.killpg(pid, signal.SIGKILL)
