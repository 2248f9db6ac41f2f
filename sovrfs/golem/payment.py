"""Budget allocations through yagna's payment API.

yapapi reserves the run's budget as an allocation when it starts and releases
it when it shuts down. A requestor interrupted with SIGINT does that itself; one
stopped with SIGTERM or SIGKILL leaves the allocation reserved, so the run
engine calls :func:`release_allocations` after a hard stop.

Allocations belong to the node's identity, not to an app key, so the only
handle on "this run's allocations" is their creation time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import httpx

from sovrfs.errors import RunError

from .yagna import YagnaNode

log = logging.getLogger(__name__)

ALLOCATIONS = "/payment-api/v1/allocations"


def _created(allocation: dict[str, Any]) -> float:
    stamp = str(allocation.get("timestamp") or allocation.get("createdTs") or "")
    # yagna writes nanoseconds; datetime takes at most microseconds.
    head, _, rest = stamp.rstrip("Z").partition(".")
    fraction = rest[:6]
    parsed = datetime.fromisoformat(head + (f".{fraction}" if fraction else ""))
    return parsed.replace(tzinfo=UTC).timestamp()


async def list_allocations(node: YagnaNode, since: float = 0.0) -> list[dict[str, Any]]:
    """The node's allocations created at or after ``since`` (a Unix time)."""
    await node.ensure_ready()
    params = {}
    if since > 0:
        after = datetime.fromtimestamp(since - 1, UTC)
        params["afterTimestamp"] = after.isoformat().replace("+00:00", "Z")
    response = await node.request("GET", ALLOCATIONS, params=params)
    _check(response, "listing allocations")
    allocations: list[dict[str, Any]] = response.json()
    return [a for a in allocations if _created(a) >= since]


async def release_allocations(node: YagnaNode, since: float, until: float | None = None) -> int:
    """Release every allocation created between ``since`` and ``until``; return how many."""
    released = 0
    for allocation in await list_allocations(node, since):
        if until is not None and _created(allocation) > until:
            continue
        allocation_id = allocation["allocationId"]
        response = await node.request("DELETE", f"{ALLOCATIONS}/{allocation_id}")
        if response.status_code == 404:
            # Released meanwhile, by yapapi or by its timeout.
            continue
        _check(response, f"releasing allocation {allocation_id}")
        log.info(
            "released budget allocation %s (%s %s)",
            allocation_id,
            allocation.get("remainingAmount"),
            allocation.get("paymentPlatform"),
        )
        released += 1
    return released


def _check(response: httpx.Response, doing: str) -> None:
    if response.is_success:
        return
    raise RunError(f"{doing} failed: yagna answered HTTP {response.status_code}")
