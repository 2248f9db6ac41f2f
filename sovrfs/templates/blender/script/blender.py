#!/usr/bin/env python3
"""Render frames of a Blender scene on Golem providers.

Run by sovrfs from the pod root. The scene is the first ``*.blend`` file in
``payload/`` (or ``payload/external/`` for an external payload); what to
render is read from ``payload/render.json``::

    {"frames": [1, 2, 3], "resolution": [800, 600], "samples": 32,
     "output_format": "PNG"}

Each frame is one task; frames render on several providers in parallel and
land in ``output/`` as ``frame-0001.png`` and so on. The Golem connection and
payment settings come from the environment sovrfs prepares (YAGNA_APPKEY,
YAGNA_API_URL, YAGNA_SUBNET, YAGNA_PAYMENT_DRIVER, YAGNA_PAYMENT_NETWORK,
SOVR_GOLEM_BUDGET, SOVR_GOLEM_JOB_TIMEOUT).

The exit status is 0 only when every frame was rendered.
"""

import asyncio
import json
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from yapapi import Golem, Task, WorkContext, events
from yapapi.log import enable_default_logger
from yapapi.payload import vm
from yapapi.payload.vm import DEFAULT_REPOSITORY_URL
from yapapi.script import Script

# The Blender image of yapapi's examples; its entry point reads
# /golem/work/params.json and writes /golem/output/out<frame>.<ext>.
IMAGE_HASH = "9a3b5d67b0b27746283cb5f287c13eab1beaa12d92a9f536b747c7ae"
POD_ROOT = Path.cwd()
PAYLOAD = POD_ROOT / "payload"
OUTPUT = POD_ROOT / "output"
DEFAULTS = {"frames": [1], "resolution": [400, 300], "samples": 0, "output_format": "PNG"}


Steps = AsyncGenerator[Script, Awaitable[list[events.CommandEvent]]]


def find_scene() -> Path:
    for folder in (PAYLOAD, PAYLOAD / "external"):
        scenes = sorted(folder.glob("*.blend")) if folder.is_dir() else []
        if scenes:
            return scenes[0]
    raise SystemExit("no .blend scene in payload/ or payload/external/: add one and run again")


def read_settings() -> dict[str, Any]:
    path = PAYLOAD / "render.json"
    settings = dict(DEFAULTS)
    if path.exists():
        settings.update(json.loads(path.read_text()))
    return settings


def report(event: events.Event) -> None:
    """Progress lines a user can follow in the pod's .sovr/log."""
    if isinstance(event, events.SubscriptionCreated):
        print("demand published; waiting for offers", flush=True)
    elif isinstance(event, events.AgreementConfirmed):
        print(f"agreement confirmed with {event.provider_info.name}", flush=True)


Worker = Callable[[WorkContext, AsyncIterator[Task[Any, Any]]], Steps]


def make_worker(scene: Path, settings: dict[str, Any]) -> Worker:
    extension = settings["output_format"].lower()

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Steps:
        script = context.new_script()
        script.upload_file(str(scene), "/golem/resource/scene.blend")
        async for task in tasks:
            frame = task.data
            params = {
                "scene_file": "/golem/resource/scene.blend",
                "resolution": settings["resolution"],
                "use_compositing": False,
                "crops": [
                    {"outfilebasename": "out", "borders_x": [0.0, 1.0], "borders_y": [0.0, 1.0]}
                ],
                "samples": settings["samples"],
                "frames": [frame],
                "output_format": settings["output_format"],
                "RESOURCES_DIR": "/golem/resources",
                "WORK_DIR": "/golem/work",
                "OUTPUT_DIR": "/golem/output",
            }
            script.upload_json(params, "/golem/work/params.json")
            script.run("/golem/entrypoints/run-blender.sh")
            target = OUTPUT / f"frame-{frame:04d}.{extension}"
            script.download_file(f"/golem/output/out{frame:04d}.{extension}", str(target))
            try:
                yield script
                task.accept_result(result=str(target))
            except Exception as error:
                # Give the frame back for another provider, and end this
                # activity: its state after a failed script is unknown.
                task.reject_result(reason=str(error), retry=True)
                raise
            script = context.new_script()

    return worker


async def main() -> int:
    scene = find_scene()
    settings = read_settings()
    OUTPUT.mkdir(exist_ok=True)
    package = await vm.repo(
        image_hash=IMAGE_HASH,
        repository_url=os.environ.get("SOVR_GOLEM_REGISTRY_URL", DEFAULT_REPOSITORY_URL),
        min_mem_gib=0.5,
        min_storage_gib=2.0,
    )
    frames = [int(frame) for frame in settings["frames"]]
    job_timeout = timedelta(seconds=float(os.environ.get("SOVR_GOLEM_JOB_TIMEOUT", "1800")))
    rendered = 0
    async with Golem(
        budget=float(os.environ.get("SOVR_GOLEM_BUDGET", "5.0")),
        subnet_tag=os.environ.get("YAGNA_SUBNET") or "public",
        payment_driver=os.environ.get("YAGNA_PAYMENT_DRIVER"),
        payment_network=os.environ.get("YAGNA_PAYMENT_NETWORK"),
    ) as golem:
        golem.add_event_consumer(report, ["SubscriptionCreated", "AgreementConfirmed"])
        tasks: list[Task[Any, Any]] = [Task(data=frame) for frame in frames]
        async for task in golem.execute_tasks(
            make_worker(scene, settings),
            tasks,
            payload=package,
            timeout=job_timeout,
            max_workers=min(len(frames), 3),
        ):
            print(f"frame {task.data} rendered: {task.result}", flush=True)
            rendered += 1
    print(f"{rendered} of {len(frames)} frames rendered", flush=True)
    return 0 if rendered == len(frames) else 1


if __name__ == "__main__":
    enable_default_logger()
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        # Golem's context manager has already cancelled the job and released
        # the budget by the time the interrupt reaches here.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
