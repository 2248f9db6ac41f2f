"""The recipe's Golem settings and the environment a run's requestor gets.

A recipe's Golem extension keys sit under ``recipe["sovr"]["golem"]``, next to
the seed's own ``golem`` block, so recipes written for the original CLI stay
valid. Every key is optional; :class:`GolemSettings` fills in defaults that
keep yapapi and yagna on the same payment platform, because the two disagree
when left alone (yagna 0.17 pays on hoodi, yapapi 0.13 asks for holesky).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import pydantic

from sovrfs.errors import RecipeError

DEFAULT_SUBNET: Final = "public"
DEFAULT_PAYMENT_DRIVER: Final = "erc20"
# The network yagna 0.17 initialises on start-up; yapapi 0.13 would pick
# holesky, so the run environment always names one explicitly.
DEFAULT_PAYMENT_NETWORK: Final = "hoodi"


class GolemSettings(pydantic.BaseModel):
    """The ``sovr.golem`` keys of a recipe."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True)

    node: bool = True
    subnet: str = pydantic.Field(default=DEFAULT_SUBNET, min_length=1)
    payment_driver: str = pydantic.Field(default=DEFAULT_PAYMENT_DRIVER, min_length=1)
    payment_network: str | None = pydantic.Field(default=None, min_length=1)
    budget: float | None = pydantic.Field(default=None, gt=0)
    job_timeout: float | None = pydantic.Field(default=None, gt=0)

    @pydantic.field_validator("budget", "job_timeout", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # JSON has one number type: accept 2 as well as 2.0, but not True.
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    @property
    def network(self) -> str:
        """The payment network the run pays on."""
        return (self.payment_network or DEFAULT_PAYMENT_NETWORK).lower()

    @property
    def driver(self) -> str:
        return self.payment_driver.lower()


def parse_settings(settings: GolemSettings | Mapping[str, Any] | None) -> GolemSettings:
    """Validate ``recipe["sovr"]["golem"]``; errors name the key, as recipe errors do."""
    if isinstance(settings, GolemSettings):
        return settings
    if settings is None:
        return GolemSettings()
    if not isinstance(settings, Mapping):
        raise RecipeError("sovr.golem: must be an object")
    try:
        return GolemSettings.model_validate(dict(settings))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RecipeError(f"sovr.golem.{where}: {first['msg'].lower()}") from None


def run_environment(
    settings: GolemSettings | Mapping[str, Any] | None,
    *,
    api_url: str,
    app_key: str,
    gsb_url: str | None = None,
) -> dict[str, str]:
    """The variables a requestor needs to reach the node and pay as the recipe says."""
    parsed = parse_settings(settings)
    env = {
        "YAGNA_APPKEY": app_key,
        "YAGNA_API_URL": api_url,
        "YAGNA_SUBNET": parsed.subnet,
        "YAGNA_PAYMENT_DRIVER": parsed.driver,
        "YAGNA_PAYMENT_NETWORK": parsed.network,
    }
    if gsb_url:
        env["GSB_URL"] = gsb_url
    if parsed.budget is not None:
        env["SOVR_GOLEM_BUDGET"] = _number(parsed.budget)
    if parsed.job_timeout is not None:
        env["SOVR_GOLEM_JOB_TIMEOUT"] = _number(parsed.job_timeout)
    return env


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
