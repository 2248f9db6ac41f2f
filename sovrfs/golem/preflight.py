"""Checks made before a run whose recipe needs Golem.

Each failure raises :class:`~sovrfs.errors.PreflightFailed` with a reason that
says what to do; the run engine shows it in the pod's ``.sovr/status``. The
checks are ordered so the first failure is the one to fix first: the node,
then the helper binary, then the payment settings.

The payment check is static: yagna 0.17 registers a sending account for a
network only when the first allocation on it is made, so its account list
says nothing about whether a network would work.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from typing import Any, Final

from sovrfs.errors import PreflightFailed

from .env import DEFAULT_PAYMENT_DRIVER, GolemSettings, parse_settings
from .yagna import YagnaNode

log = logging.getLogger(__name__)

# The networks yagna 0.17's erc20 driver knows, by what paying on them costs.
TEST_NETWORKS: Final = frozenset({"hoodi", "holesky", "sepolia", "amoy"})
REAL_NETWORKS: Final = frozenset({"polygon", "mainnet"})
RETIRED_NETWORKS: Final = frozenset({"goerli", "mumbai", "rinkeby"})

GFTP_HELP: Final = (
    "gftp is not on the run's PATH; yapapi needs it for every job. Install it from the "
    "golem-requestor release archive of yagna (it ships yagna and gftp) and put its "
    "directory on PATH"
)


async def preflight(
    node: YagnaNode, settings: GolemSettings | Mapping[str, Any] | None, path_env: str
) -> None:
    """Raise PreflightFailed unless a run with ``settings`` can use Golem."""
    parsed = parse_settings(settings)
    if not parsed.node:
        return
    await node.ensure_ready()
    check_gftp(path_env)
    check_payment(parsed)
    log.debug("preflight passed: %s/%s on subnet %s", parsed.driver, parsed.network, parsed.subnet)


def check_gftp(path_env: str) -> str:
    """The gftp the run will start; PreflightFailed if there is none."""
    found = shutil.which("gftp", path=path_env)
    if found is None:
        raise PreflightFailed(GFTP_HELP)
    return found


def check_payment(settings: GolemSettings) -> None:
    """The recipe's payment driver and network are ones yagna 0.17 can pay on."""
    if settings.driver != DEFAULT_PAYMENT_DRIVER:
        raise PreflightFailed(
            f"sovr.golem.payment_driver: yagna 0.17 has no {settings.driver!r} driver; "
            f"use {DEFAULT_PAYMENT_DRIVER!r}"
        )
    network = settings.network
    if network in RETIRED_NETWORKS:
        raise PreflightFailed(
            f"sovr.golem.payment_network: {network!r} is a retired testnet; use 'hoodi' "
            "(or leave the key out)"
        )
    if network not in TEST_NETWORKS | REAL_NETWORKS:
        known = ", ".join(sorted(TEST_NETWORKS | REAL_NETWORKS))
        raise PreflightFailed(
            f"sovr.golem.payment_network: yagna does not pay on {network!r}; use one of {known}"
        )
    if network in REAL_NETWORKS and settings.budget is None:
        raise PreflightFailed(
            f"sovr.golem.budget: paying on {network!r} spends real GLM; set a budget explicitly"
        )
