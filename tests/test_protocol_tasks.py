"""Tasks: pods run in a chain, each one's output fed to the next one's payload."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest
import trio

from tests.test_protocol_env import WAIT, WATCHDOG_RENAME_RACE, Proto, proto, recipe, trigger

__all__ = ["proto"]

pytestmark = WATCHDOG_RENAME_RACE

STEP = """
import pathlib, sys, time
gate = {gate!r}
if gate:
    deadline = time.monotonic() + 60
    while not pathlib.Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
ext = pathlib.Path('payload/external')
before = (ext / {src!r}).read_text() if {src!r} else ''
pathlib.Path('output').mkdir(exist_ok=True)
pathlib.Path('output/{dst}').write_text(before + {add!r})
"""


def step_script(src: str, dst: str, add: str, gate: str = "") -> str:
    return STEP.format(src=src, dst=dst, add=add, gate=gate)


async def wait_task(env: Proto, pod: str) -> dict[str, Any]:
    with trio.fail_after(WAIT):
        while True:
            status = env.protocol.task_status(pod)
            if status is not None and status["state"] != "running":
                result: dict[str, Any] = status
                return result
            await trio.sleep(0.05)


async def make_chain(env: Proto, gate: str = "") -> str:
    """Pods t1 -> t2 (used by its sharing reference) -> t3; returns t2's reference."""
    await env.make_pod("t1", recipe("t1"), {"script/run.py": step_script("", "a.txt", "1", gate)})
    await env.make_pod("t2", recipe("t2"), {"script/run.py": step_script("a.txt", "b.txt", "2")})
    await env.make_pod("t3", recipe("t3"), {"script/run.py": step_script("b.txt", "c.txt", "3")})
    persisted = await env.protocol.persist("t2")
    assert persisted.ref is not None
    return persisted.ref


async def test_three_pod_task(proto: Proto) -> None:
    env = proto
    gate = env.tmp / "gate"
    ref = await make_chain(env, str(gate))
    task = {"name": "chain", "description": "three pods", "pods": ["t1", ref, "t3"]}
    await env.make_pod("chain", None, {"chain.recipe": json.dumps(task)})

    await env.fs(trigger, env.pod("chain") / ".sovr" / "run")
    # While the task runs, a second request is refused as busy.
    with pytest.raises(OSError) as busy:
        await env.fs(trigger, env.pod("chain") / ".sovr" / "run")
    assert busy.value.errno == errno.EBUSY
    gate.touch()
    status = await wait_task(env, "chain")

    assert status["state"] == "succeeded", status
    assert [s["pod"] for s in status["steps"]] == ["t1", "t2-fork", "t3"]
    assert [s["state"] for s in status["steps"]] == ["succeeded"] * 3
    assert all(s["run_id"] for s in status["steps"])
    assert status["steps"][1]["source"] == ref
    c = await env.fs((env.pod("t3") / "output" / "c.txt").read_text)
    assert c == "123"
    b = await env.fs((env.pod("t3") / "payload" / "external" / "b.txt").read_text)
    assert b == "12"
    # The original t2 never ran: the task ran its fork.
    assert env.engine.current("t2") is None

    # A second run of the task reuses the pod it forked for the reference.
    await env.fs(trigger, env.pod("chain") / ".sovr" / "run")
    again = await wait_task(env, "chain")
    assert again["state"] == "succeeded", again
    assert [s["pod"] for s in again["steps"]] == ["t1", "t2-fork", "t3"]
    assert len(env.engine.history("t3")) == 2


async def test_failing_step_stops_the_chain(proto: Proto) -> None:
    env = proto
    await make_chain(env)
    await env.make_pod("failer", recipe("failer"), {"script/run.py": "raise SystemExit(3)\n"})
    task = {"name": "broken", "pods": ["t1", "failer", "t3"]}
    await env.make_pod("broken", None, {"broken.recipe": json.dumps(task)})

    await env.fs(trigger, env.pod("broken") / ".sovr" / "run")
    status = await wait_task(env, "broken")

    assert status["state"] == "failed"
    assert status["reason"].startswith("step 2 of 3 (failer): run ")
    assert [s["state"] for s in status["steps"]] == ["succeeded", "failed", "pending"]
    assert status["steps"][2]["run_id"] is None
    assert env.engine.current("t3") is None


async def test_task_refusals(proto: Proto) -> None:
    env = proto
    await env.make_pod("solo", recipe("solo"), {"script/run.py": "pass\n"})
    inner = {"name": "inner", "pods": ["solo"]}
    await env.make_pod("inner", None, {"inner.recipe": json.dumps(inner)})
    outer = {"name": "outer", "pods": ["inner", "solo"]}
    await env.make_pod("outer", None, {"outer.recipe": json.dumps(outer)})
    missing = {"name": "missing", "pods": ["solo", "nowhere"]}
    await env.make_pod("missing", None, {"missing.recipe": json.dumps(missing)})

    with pytest.raises(OSError) as nested:
        await env.fs(trigger, env.pod("outer") / ".sovr" / "run")
    assert nested.value.errno == errno.EINVAL
    outer_status = env.protocol.task_status("outer")
    assert outer_status is not None and "tasks do not nest" in outer_status["reason"]

    await env.fs(trigger, env.pod("missing") / ".sovr" / "run")
    status = await wait_task(env, "missing")
    assert status["state"] == "failed"
    assert "pods[1]: no pod named nowhere" in status["reason"]
