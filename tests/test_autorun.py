"""The auto-run debouncer (on trio's virtual clock) and its path patterns."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from sovrfs.autorun import Debouncer, matches
from sovrfs.errors import RecipeError, RunBusy
from sovrfs.runs import RunEngine, RunRequest, RunState

BOUND = 30.0


async def wait_until(check: Callable[[], bool]) -> None:
    while True:
        if check():
            return
        await trio.sleep(0.01)


class Fires:
    """What a debouncer fired, and when (virtual time)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, pod: str) -> None:
        self.calls.append((pod, trio.current_time()))

    @property
    def pods(self) -> list[str]:
        return [pod for pod, _ in self.calls]


async def test_a_burst_of_pokes_fires_once_after_the_last(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fires = Fires()
    debouncer = Debouncer(1.0, fires)
    await nursery.start(debouncer.serve)

    for _ in range(5):
        debouncer.poke("p")
        await trio.sleep(0.5)
    last_poke = trio.current_time() - 0.5
    assert fires.calls == []
    await trio.sleep(10)

    assert fires.pods == ["p"]
    assert fires.calls[0][1] == pytest.approx(last_poke + 1.0)


async def test_pokes_further_apart_than_the_delay_fire_each(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fires = Fires()
    debouncer = Debouncer(1.0, fires)
    await nursery.start(debouncer.serve)

    debouncer.poke("p")
    await trio.sleep(3)
    debouncer.poke("p")
    await trio.sleep(3)
    assert fires.pods == ["p", "p"]


async def test_pods_are_debounced_separately(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fires = Fires()
    debouncer = Debouncer(1.0, fires)
    await nursery.start(debouncer.serve)

    debouncer.poke("a")
    await trio.sleep(0.5)
    debouncer.poke("b")
    debouncer.poke("a")
    await trio.sleep(5)
    assert sorted(fires.pods) == ["a", "b"]

    debouncer.poke("gone")
    debouncer.forget("gone")
    await trio.sleep(5)
    assert "gone" not in fires.pods


async def test_a_poke_before_serve_is_kept(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fires = Fires()
    debouncer = Debouncer(1.0, fires)
    debouncer.poke("p")
    await nursery.start(debouncer.serve)
    await trio.sleep(5)
    assert fires.pods == ["p"]


async def test_busy_pod_runs_once_more_after_its_run(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    running = trio.Event()  # set: the pod's run has ended
    attempts: list[str] = []

    async def fire(pod: str) -> None:
        attempts.append("busy" if not running.is_set() else "ran")
        if not running.is_set():
            raise RunBusy(f"pod {pod} already has a run running")

    async def wait_idle(pod: str) -> None:
        await running.wait()

    debouncer = Debouncer(1.0, fire, wait_idle=wait_idle)
    await nursery.start(debouncer.serve)
    for _ in range(3):  # three saves, each one a burst of its own, all during the run
        debouncer.poke("p")
        await trio.sleep(2)
    assert attempts == ["busy", "busy", "busy"]
    assert debouncer.waiting_for_run("p")

    running.set()
    await trio.sleep(5)
    assert attempts == ["busy", "busy", "busy", "ran"]
    assert not debouncer.pending("p")


async def test_without_wait_idle_a_busy_poke_is_dropped(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    attempts = 0

    async def fire(pod: str) -> None:
        nonlocal attempts
        attempts += 1
        raise RunBusy("busy")

    debouncer = Debouncer(1.0, fire)
    await nursery.start(debouncer.serve)
    debouncer.poke("p")
    await trio.sleep(10)
    assert attempts == 1 and not debouncer.pending("p")


async def test_a_failing_fire_does_not_stop_the_debouncer(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    calls: list[str] = []

    async def fire(pod: str) -> None:
        calls.append(pod)
        if pod == "bad":
            raise RecipeError("golem.exec: missing")

    debouncer = Debouncer(1.0, fire)
    await nursery.start(debouncer.serve)
    debouncer.poke("bad")
    await trio.sleep(5)
    debouncer.poke("good")
    await trio.sleep(5)
    assert calls == ["bad", "good"]


async def test_with_the_run_engine(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Saves during a real run give exactly one more run, after it ends."""
    pod_dir = tmp_path / "p"
    pod_dir.mkdir()
    engine = RunEngine(tmp_path / "state", grace_int=0.2, grace_term=0.2)
    await nursery.start(engine.serve)
    wait_go = "import os, time\nwhile not os.path.exists('go'): time.sleep(0.01)"

    def request(script: str) -> RunRequest:
        return RunRequest(
            pod="p",
            argv=[sys.executable, "-c", script],
            cwd=str(pod_dir),
            env={},
            log_path=str(pod_dir / "logs" / "{run_id}.log"),
        )

    async def fire(pod: str) -> None:
        await engine.submit(request("print('after the save')"))

    first = await engine.submit(request(wait_go))
    debouncer = Debouncer(0.05, fire, wait_idle=engine.wait_idle)
    await nursery.start(debouncer.serve)
    with trio.fail_after(BOUND):
        for _ in range(3):
            debouncer.poke("p")
            await trio.sleep(0.1)
        await wait_until(lambda: debouncer.waiting_for_run("p"))
        assert engine.current("p").run_id == first.run_id  # type: ignore[union-attr]

        (pod_dir / "go").touch()
        await engine.wait("p", first.run_id)
        await wait_until(lambda: len(engine.history("p")) == 2 and not debouncer.pending("p"))

    history = engine.history("p")
    assert [r.state for r in history] == [RunState.SUCCEEDED, RunState.SUCCEEDED]
    assert history[0].run_id == first.run_id
    assert history[1].started_at >= history[0].finished_at  # type: ignore[operator]


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        (["script/**"], "script/run.py", True),
        (["script/**"], "script/lib/util.py", True),
        (["script/**"], "payload/script/x", False),
        (["*.py"], "run.py", True),
        (["*.py"], "script/run.py", False),
        (["**/*.py"], "script/lib/util.py", True),
        (["**/*.py"], "run.py", True),
        (["**/*.py"], "script/util.pyc", False),
        (["script/*.py"], "script/run.py", True),
        (["script/*.py"], "script/lib/util.py", False),
        (["payload/[!x]*.txt"], "payload/a.txt", True),
        (["payload/[!x]*.txt"], "payload/x.txt", False),
        (["script/**/test_*.py"], "script/test_a.py", True),
        (["script/**/test_*.py"], "script/a/b/test_a.py", True),
        (["output/**", "*.md"], "README.md", True),
        ([], "script/run.py", False),
        (["**"], "", False),
        (["./script/**"], "/script/run.py", True),
    ],
)
def test_matches(patterns: list[str], path: str, expected: bool) -> None:
    assert matches(patterns, path) is expected


async def test_a_pod_can_have_its_own_delay(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fires = Fires()
    debouncer = Debouncer(1.0, fires)
    await nursery.start(debouncer.serve)
    debouncer.poke("slow", delay=10)
    debouncer.poke("fast")
    await trio.sleep(5)
    assert fires.pods == ["fast"]
    await trio.sleep(10)
    assert fires.pods == ["fast", "slow"]
    assert fires.calls[1][1] == pytest.approx(10)
