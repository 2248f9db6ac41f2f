"""The Golem side of sovrfs: the yagna node, run preflight and the run environment.

:class:`GolemService` is the one object the daemon and the run engine hold.
It owns a :class:`~sovrfs.golem.yagna.YagnaNode` (an external yagna or one it
manages), checks a run's Golem requirements before the run starts, hands the
requestor its connection, reads the requestor's log to tell a failed Golem job
from a successful one, and releases budget a killed requestor left reserved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sovrfs.errors import PreflightFailed

from . import payment
from .env import GolemSettings, parse_settings
from .env import run_environment as _run_environment
from .preflight import preflight as _preflight
from .scrub import Scrubber, SecretSet, StreamScrubber
from .summary import classify as _classify
from .yagna import Mode, NodeState, YagnaNode

__all__ = [
    "GolemService",
    "GolemSettings",
    "NodeState",
    "Scrubber",
    "SecretSet",
    "StreamScrubber",
    "YagnaNode",
    "parse_settings",
]


class GolemService:
    """Golem for the daemon: lazy node start, preflight, environment, clean-up.

    ``data_dir`` is where a managed yagna keeps its data and key (the daemon
    passes ``$XDG_DATA_HOME/sovrfs/yagna``). ``offline`` and ``extra_env`` are
    passed to :class:`YagnaNode`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        api_url: str | None = None,
        app_key: str | None = None,
        mode: Mode = "auto",
        offline: bool = False,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.node = YagnaNode(
            data_dir,
            api_url=api_url,
            app_key=app_key,
            mode=mode,
            offline=offline,
            extra_env=extra_env,
        )

    async def ensure_ready(self) -> None:
        await self.node.ensure_ready()

    async def preflight(self, settings: Mapping[str, Any] | None, path_env: str) -> None:
        await _preflight(self.node, settings, path_env)

    def run_environment(self, settings: Mapping[str, Any] | None) -> dict[str, str]:
        """The variables to add to the requestor's environment; empty if it needs no node."""
        parsed = parse_settings(settings)
        if not parsed.node:
            return {}
        node = self.node
        if node.state is not NodeState.READY or node.api_url is None or node.app_key is None:
            raise PreflightFailed(node.reason or "the Golem node is not ready")
        return _run_environment(
            parsed, api_url=node.api_url, app_key=node.app_key, gsb_url=node.gsb_url
        )

    def secrets(self) -> list[str]:
        """What a run's log must never show."""
        return [self.node.app_key] if self.node.app_key else []

    def classify(self, exit_code: int, log_text: str) -> str | None:
        return _classify(exit_code, log_text)

    async def release_allocations(self, since: float, until: float | None = None) -> int:
        return await payment.release_allocations(self.node, since, until)

    def status(self) -> dict[str, Any]:
        return self.node.status()

    async def aclose(self) -> None:
        await self.node.aclose()
