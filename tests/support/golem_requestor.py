"""A minimal yapapi requestor in the style of yapapi's examples (test-only).

Like those examples it exits 0 whatever became of the job, which is exactly
the case sovrfs must still report as failed. It logs at DEBUG to stderr, as a
user debugging a run would, so the app key turns up in its output.
"""

import asyncio
import logging
import os
import sys
from datetime import timedelta

from yapapi import Golem, Task
from yapapi.payload import vm


async def worker(context, tasks):  # type: ignore[no-untyped-def]
    async for task in tasks:
        script = context.new_script()
        result = script.run("/bin/echo", "hello")
        yield script
        task.accept_result(result=(await result).stdout)


async def main() -> None:
    package = await vm.repo(
        image_hash="ab" * 28, repository_url=os.environ["SOVR_GOLEM_REGISTRY_URL"]
    )
    timeout = timedelta(seconds=float(os.environ["SOVR_GOLEM_JOB_TIMEOUT"]))
    async with Golem(budget=float(os.environ["SOVR_GOLEM_BUDGET"])) as golem:
        async for task in golem.execute_tasks(worker, [Task(data=None)], package, timeout=timeout):
            print(task.result)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.DEBUG,
        stream=sys.stderr,
        format="[%(asctime)s %(levelname)s %(name)s] %(message)s",
    )
    asyncio.run(main())
