#!/usr/bin/env python3
"""Hello world on Golem: run one small command on a provider and keep its output.

Run by sovrfs from the pod root. The connection to the Golem node and the
payment settings come from the environment sovrfs prepares (YAGNA_APPKEY,
YAGNA_API_URL, YAGNA_SUBNET, YAGNA_PAYMENT_DRIVER, YAGNA_PAYMENT_NETWORK) and
the recipe's ``sovr.golem`` keys (SOVR_GOLEM_BUDGET, SOVR_GOLEM_JOB_TIMEOUT).
The same script runs by hand: set those variables and start it from the pod
root.

The exit status is 0 only when every task produced a result; a job that found
no provider, timed out or failed exits 1.
"""

import asyncio
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

from yapapi import Golem, Task, WorkContext, events
from yapapi.log import enable_default_logger
from yapapi.payload import vm
from yapapi.payload.vm import DEFAULT_REPOSITORY_URL
from yapapi.script import Script

# The hello-world image of yapapi's own examples (it has /bin/sh).
IMAGE_HASH = "d646d7b93083d817846c2ae5c62c72ca0507782385a2e29291a3d376"
POD_ROOT = Path.cwd()
OUTPUT = POD_ROOT / "output"
PAYLOAD = POD_ROOT / "payload"


Steps = AsyncGenerator[Script, Awaitable[list[events.CommandEvent]]]


def _greeting() -> str:
    name_file = PAYLOAD / "name.txt"
    name = name_file.read_text().strip() if name_file.exists() else "world"
    return f"Hello, {name}, from a Golem provider"


async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Steps:
    async for task in tasks:
        script = context.new_script()
        greeting = script.run("/bin/sh", "-c", f"echo '{task.data}'; uname -a; date -u")
        yield script
        result = await greeting
        task.accept_result(result=result.stdout)


def report(event: events.Event) -> None:
    """One progress line a user can follow in the pod's .sovr/log."""
    if isinstance(event, events.SubscriptionCreated):
        print("demand published; waiting for offers", flush=True)
    elif isinstance(event, events.AgreementConfirmed):
        print(f"agreement confirmed with {event.provider_info.name}", flush=True)


async def main() -> int:
    budget = float(os.environ.get("SOVR_GOLEM_BUDGET", "1.0"))
    job_timeout = timedelta(seconds=float(os.environ.get("SOVR_GOLEM_JOB_TIMEOUT", "600")))
    package = await vm.repo(
        image_hash=IMAGE_HASH,
        repository_url=os.environ.get("SOVR_GOLEM_REGISTRY_URL", DEFAULT_REPOSITORY_URL),
        min_mem_gib=0.5,
        min_storage_gib=1.0,
    )
    tasks: list[Task[Any, Any]] = [Task(data=_greeting())]
    finished = 0
    async with Golem(
        budget=budget,
        subnet_tag=os.environ.get("YAGNA_SUBNET") or "public",
        payment_driver=os.environ.get("YAGNA_PAYMENT_DRIVER"),
        payment_network=os.environ.get("YAGNA_PAYMENT_NETWORK"),
    ) as golem:
        golem.add_event_consumer(report, ["SubscriptionCreated", "AgreementConfirmed"])
        async for task in golem.execute_tasks(
            worker, tasks, payload=package, timeout=job_timeout, max_workers=1
        ):
            OUTPUT.mkdir(exist_ok=True)
            (OUTPUT / "hello.txt").write_text(task.result or "")
            print(task.result, end="", flush=True)
            finished += 1
    return 0 if finished == len(tasks) else 1


if __name__ == "__main__":
    enable_default_logger()
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        # Golem's context manager has already cancelled the job and released
        # the budget by the time the interrupt reaches here.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
