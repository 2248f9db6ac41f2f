"""Preflight: every requirement a Golem run has, and the reason given when it is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sovrfs.errors import PreflightFailed, RecipeError
from sovrfs.golem import GolemService, parse_settings

from .support.golem_chain import ChainStandIn
from .support.yagna import ExternalYagna, free_port

pytestmark = pytest.mark.yagna


def _external(tmp_path: Path, node: ExternalYagna, key: str | None = None) -> GolemService:
    return GolemService(
        tmp_path / "unused", api_url=node.api_url, app_key=key or node.app_key, mode="external"
    )


async def test_passes_with_node_key_gftp_and_default_payment(
    tmp_path: Path, external_yagna: ExternalYagna, run_path: str
) -> None:
    service = _external(tmp_path, external_yagna)
    await service.preflight({}, run_path)
    await service.preflight({"payment_network": "holesky", "subnet": "public"}, run_path)
    await service.preflight({"payment_network": "polygon", "budget": 0.5}, run_path)
    await service.aclose()


async def test_yagna_down(tmp_path: Path, run_path: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    service = GolemService(tmp_path, api_url=url, app_key="some-key", mode="external")
    with pytest.raises(
        PreflightFailed, match=rf"no yagna answers at {re.escape(url)}.*yagna service run"
    ):
        await service.preflight({}, run_path)
    status = service.status()
    assert status["state"] == "failed"
    assert status["reachable"] is False
    assert status["reason"].startswith("no yagna answers")
    await service.aclose()


async def test_external_without_key(
    tmp_path: Path, external_yagna: ExternalYagna, run_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("YAGNA_APPKEY", raising=False)
    service = GolemService(tmp_path, api_url=external_yagna.api_url, mode="external")
    with pytest.raises(PreflightFailed, match=r"no app key .*yagna app-key create"):
        await service.preflight({}, run_path)
    await service.aclose()


async def test_bad_key(tmp_path: Path, external_yagna: ExternalYagna, run_path: str) -> None:
    service = _external(tmp_path, external_yagna, key="0123456789abcdef")
    with pytest.raises(PreflightFailed, match=r"rejected the app key.*yagna app-key list"):
        await service.preflight({}, run_path)
    assert "0123456789abcdef" not in str(service.status())
    await service.aclose()


async def test_no_gftp(tmp_path: Path, external_yagna: ExternalYagna) -> None:
    service = _external(tmp_path, external_yagna)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with pytest.raises(PreflightFailed, match="gftp is not on the run's PATH"):
        await service.preflight({}, str(empty))
    await service.aclose()


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"payment_network": "goerli"}, "'goerli' is a retired testnet"),
        ({"payment_network": "rinkeby"}, "'rinkeby' is a retired testnet"),
        ({"payment_network": "nowhere"}, "yagna does not pay on 'nowhere'"),
        ({"payment_driver": "zksync"}, "no 'zksync' driver"),
        ({"payment_network": "polygon"}, "spends real GLM; set a budget"),
    ],
)
async def test_payment_mismatch(
    tmp_path: Path,
    external_yagna: ExternalYagna,
    run_path: str,
    settings: dict[str, object],
    reason: str,
) -> None:
    service = _external(tmp_path, external_yagna)
    with pytest.raises(PreflightFailed, match=reason):
        await service.preflight(settings, run_path)
    await service.aclose()


async def test_recipe_without_golem_node_needs_nothing(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    service = GolemService(tmp_path, api_url=url, app_key="k", mode="external")
    await service.preflight({"node": False}, str(tmp_path))
    assert service.status()["state"] == "stopped"
    await service.aclose()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"budget": -1}, "sovr.golem.budget: "),
        ({"budget": "1"}, "sovr.golem.budget: "),
        ({"node": "yes"}, "sovr.golem.node: "),
        ({"subnet": ""}, "sovr.golem.subnet: "),
        ({"budgte": 1}, "sovr.golem.budgte: extra inputs are not permitted"),
        ([], "sovr.golem: must be an object"),
    ],
)
def test_settings_errors_name_the_key(settings: object, message: str) -> None:
    with pytest.raises(RecipeError) as caught:
        parse_settings(settings)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


def test_settings_defaults_keep_yapapi_and_yagna_together() -> None:
    settings = parse_settings({})
    assert settings.node is True
    assert (settings.subnet, settings.driver, settings.network) == ("public", "erc20", "hoodi")
    assert parse_settings({"payment_network": "Holesky"}).network == "holesky"
    assert parse_settings({"budget": 3}).budget == 3.0


async def test_something_else_answering_is_not_taken_for_yagna(
    tmp_path: Path, golem_chain: ChainStandIn, run_path: str
) -> None:
    service = GolemService(tmp_path, api_url=golem_chain.url, app_key="k", mode="external")
    with pytest.raises(PreflightFailed, match="answered /me with HTTP 404"):
        await service.preflight({}, run_path)
    await service.aclose()
