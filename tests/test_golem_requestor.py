"""Real yapapi requestors against the real yagna, offline.

The managed yagna gets an Ethereum JSON-RPC stand-in on loopback, so it grants
budget allocations, and the run's PATH holds a gftp stand-in. No provider
exists, so every job ends without an agreement; what is tested is what sovrfs
makes of that, and what becomes of the budget when a run is stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from sovrfs.golem import GolemService, SecretSet, StreamScrubber
from sovrfs.golem.payment import list_allocations

from .support.golem_chain import ChainStandIn

pytestmark = pytest.mark.yagna

TEMPLATES = Path(__file__).parent.parent / "sovrfs" / "templates"
MINIMAL = Path(__file__).parent / "support" / "golem_requestor.py"
RUN_TIMEOUT = 120


@dataclass
class Finished:
    code: int
    log: str
    raw: bytes
    started: float
    stopped_with_allocation: list[dict[str, Any]] = field(default_factory=list)


def _pod(tmp_path: Path, template: str) -> tuple[Path, dict[str, Any]]:
    pod = tmp_path / "pod"
    shutil.copytree(TEMPLATES / template, pod)
    recipe = json.loads((pod / f"{template}.recipe").read_text())
    return pod, recipe


async def _run(
    service: GolemService,
    chain: ChainStandIn,
    pod: Path,
    argv: list[str],
    settings: dict[str, Any],
    run_path: str,
    *,
    stop: signal.Signals | None = None,
    stop_after: bytes = b"",
) -> Finished:
    """Run a requestor as the run engine does: own session, scrubbed output."""
    await service.preflight(settings, run_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YAGNA_", "GSB_"))}
    env.update(service.run_environment(settings))
    env.update(PATH=run_path, SOVR_GOLEM_REGISTRY_URL=chain.url, PYTHONUNBUFFERED="1")
    program = shutil.which(argv[0], path=run_path)
    assert program is not None
    secrets = SecretSet(service.secrets())
    scrubber = StreamScrubber(secrets)
    raw: list[bytes] = []
    scrubbed: list[bytes] = []
    started = time.time()
    process = await trio.lowlevel.open_process(
        [program, *argv[1:]],
        cwd=pod,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    result = Finished(0, "", b"", started)

    async def read() -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.receive_some(4096):
            raw.append(chunk)
            scrubbed.append(scrubber.feed(chunk))
        scrubbed.append(scrubber.flush())

    async def stop_when_allocated() -> None:
        assert stop is not None
        # The allocation is yagna's state and the marker is in a pipe another
        # task reads: neither has an event to wait on, so poll them.
        while stop_after not in b"".join(raw):  # noqa: ASYNC110
            await trio.sleep(0.1)
        while not (found := await list_allocations(service.node, started)):  # noqa: ASYNC110
            await trio.sleep(0.2)
        result.stopped_with_allocation = found
        process.send_signal(stop)

    try:
        with trio.fail_after(RUN_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                if stop is not None:
                    nursery.start_soon(stop_when_allocated)
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    result.code = process.returncode
    result.raw = b"".join(raw)
    result.log = b"".join(scrubbed).decode()
    return result


async def test_template_runs_to_no_offers_and_is_failed(
    tmp_path: Path, managed_golem: GolemService, golem_chain: ChainStandIn, run_path: str
) -> None:
    pod, recipe = _pod(tmp_path, "hello-world")
    settings = {**recipe["sovr"]["golem"], "job_timeout": 3}
    done = await _run(
        managed_golem, golem_chain, pod, shlex.split(recipe["golem"]["exec"]), settings, run_path
    )
    assert "Job failed, reason: Job timed out after 0:00:03" in done.log, done.log
    assert done.code == 1
    assert managed_golem.classify(done.code, done.log) == (
        "requestor exited with status 1; job timed out after 0:00:03: "
        "no provider agreed (0 agreements)"
    )
    assert not (pod / "output" / "hello.txt").exists()
    # yapapi released its budget on the way out.
    assert await list_allocations(managed_golem.node, done.started) == []


async def test_requestor_exiting_zero_is_still_failed_and_key_is_scrubbed(
    tmp_path: Path, managed_golem: GolemService, golem_chain: ChainStandIn, run_path: str
) -> None:
    pod = tmp_path / "pod"
    pod.mkdir()
    settings = {"budget": 1, "job_timeout": 3}
    done = await _run(
        managed_golem, golem_chain, pod, ["python3", str(MINIMAL)], settings, run_path
    )
    assert done.code == 0, done.log
    assert managed_golem.classify(done.code, done.log) == (
        "job timed out after 0:00:03: no provider agreed (0 agreements)"
    )
    key = managed_golem.secrets()[0].encode()
    assert key in done.raw  # yapapi's debug output carries the key...
    assert key.decode() not in done.log  # ...and the run's log does not
    assert "Bearer ***" in done.log or "***" in done.log


async def test_sigint_cancels_and_releases_the_allocation(
    tmp_path: Path, managed_golem: GolemService, golem_chain: ChainStandIn, run_path: str
) -> None:
    pod, recipe = _pod(tmp_path, "hello-world")
    settings = {**recipe["sovr"]["golem"], "job_timeout": 120}
    done = await _run(
        managed_golem,
        golem_chain,
        pod,
        shlex.split(recipe["golem"]["exec"]),
        settings,
        run_path,
        stop=signal.SIGINT,
        stop_after=b"demand published",
    )
    assert len(done.stopped_with_allocation) == 1
    assert done.code == 130, done.log
    assert "Job cancelled" in done.log
    assert managed_golem.classify(done.code, done.log).startswith(
        "requestor exited with status 130; job cancelled"
    )
    assert await list_allocations(managed_golem.node, done.started) == []
    assert await managed_golem.release_allocations(done.started) == 0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
async def test_hard_stop_leaves_allocation_that_release_frees(
    tmp_path: Path,
    managed_golem: GolemService,
    golem_chain: ChainStandIn,
    run_path: str,
    stop: signal.Signals,
) -> None:
    pod, recipe = _pod(tmp_path, "hello-world")
    settings = {**recipe["sovr"]["golem"], "job_timeout": 120}
    done = await _run(
        managed_golem,
        golem_chain,
        pod,
        shlex.split(recipe["golem"]["exec"]),
        settings,
        run_path,
        stop=stop,
        stop_after=b"demand published",
    )
    assert done.code == -stop
    assert managed_golem.classify(done.code, done.log) == f"requestor killed by {stop.name}"
    left = await list_allocations(managed_golem.node, done.started)
    assert [a["allocationId"] for a in left] == [
        a["allocationId"] for a in done.stopped_with_allocation
    ]
    # An allocation from before the run is not this run's to release.
    assert await managed_golem.release_allocations(time.time() + 60) == 0
    assert await managed_golem.release_allocations(done.started) == 1
    assert await list_allocations(managed_golem.node, done.started) == []
    assert await managed_golem.release_allocations(done.started) == 0


def test_minimal_requestor_is_importable() -> None:
    # Guards against the test-only script drifting from yapapi's API.
    subprocess.run(
        [sys.executable, "-c", f"import runpy; runpy.run_path({str(MINIMAL)!r})"],
        check=True,
        timeout=60,
    )


async def test_blender_template_runs_to_no_offers_and_is_failed(
    tmp_path: Path, managed_golem: GolemService, golem_chain: ChainStandIn, run_path: str
) -> None:
    pod, recipe = _pod(tmp_path, "blender")
    # The scene is only uploaded once a provider agrees, so any bytes do.
    (pod / "payload" / "scene.blend").write_bytes(b"BLENDER-v300 stand-in")
    settings = {**recipe["sovr"]["golem"], "job_timeout": 3}
    done = await _run(
        managed_golem, golem_chain, pod, shlex.split(recipe["golem"]["exec"]), settings, run_path
    )
    assert "demand published; waiting for offers" in done.log, done.log
    assert "0 of 1 frames rendered" in done.log
    assert managed_golem.classify(done.code, done.log) == (
        "requestor exited with status 1; job timed out after 0:00:03: "
        "no provider agreed (0 agreements)"
    )
    assert await list_allocations(managed_golem.node, done.started) == []
