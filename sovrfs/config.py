"""The daemon's configuration: one TOML file, environment variables and flags.

Every setting has one dotted name (``dfs.url``, ``runs.max_parallel``) and can
come from four places. The later ones win::

    default  <  config file  <  environment (SOVRFS_DFS_URL)  <  command line

The file is ``$XDG_CONFIG_HOME/sovrfs/config.toml`` unless ``--config`` or
``SOVRFS_CONFIG`` names another; a file named that way must exist, the default
one may be absent. Every value remembers where it came from, so an error can
say which line to fix and ``sovrfs config show`` can print it.

Secrets are kept out of the file on purpose: a config file is often shared or
backed up with loose permissions. ``dfs.password`` and ``golem.appkey`` come
only from the environment (or the daemon's own prompt); otherwise their
``*_file`` siblings, checked by :mod:`sovrfs.secrets`, point at them.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
)

from sovrfs.errors import ConfigError

log = logging.getLogger(__name__)

APP_NAME = "sovrfs"
ENV_PREFIX = "SOVRFS_"
CONFIG_ENV = "SOVRFS_CONFIG"

#: Environment variables that hold secrets, by setting. ``YAGNA_APPKEY`` is
#: what every Golem tool reads, so it is honoured as a fallback.
SECRET_ENV: dict[str, tuple[str, ...]] = {
    "dfs.password": ("SOVRFS_DFS_PASSWORD",),
    "golem.appkey": ("SOVRFS_GOLEM_APPKEY", "YAGNA_APPKEY"),
}

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_size(value: object) -> object:
    """``"10G"`` → bytes. Suffixes are powers of 1024, as in rclone and du."""
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if not match:
            raise ValueError("not a size: use bytes or a number with K, M, G or T")
        number, unit = match.groups()
        return int(float(number) * _UNITS[unit.upper()])
    return value


def parse_duration(value: object) -> object:
    """``"90s"``, ``"5m"``, ``"2h"`` or a plain number of seconds."""
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError("not a duration: use seconds or a number with s, m, h or d")
        number, unit = match.groups()
        return float(number) * _SECONDS[(unit or "s").lower()]
    return value


def _expand_path(value: object) -> object:
    if isinstance(value, str):
        return Path(os.path.expandvars(os.path.expanduser(value)))
    return value


ByteSize = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
PositiveSeconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
ConfigPath = Annotated[Path, BeforeValidator(_expand_path), PlainSerializer(str)]


def default_store() -> Path:
    return platformdirs.user_data_path(APP_NAME) / "pods"


def default_cache_dir() -> Path:
    return platformdirs.user_cache_path(APP_NAME)


def default_state_dir() -> Path:
    return platformdirs.user_state_path(APP_NAME)


def default_config_path() -> Path:
    return platformdirs.user_config_path(APP_NAME) / "config.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DfsConfig(_Section):
    """``[dfs]``: the FairOS-DFS server. With no ``url`` the embedded store is used."""

    url: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    password_file: ConfigPath | None = None
    cache_size: ByteSize = 10 << 30
    request_timeout: PositiveSeconds = 30.0
    attr_ttl: Seconds = 1.0
    upload_retries: int = Field(default=5, ge=0)


class GolemConfig(_Section):
    """``[golem]``: how the daemon reaches a yagna node."""

    mode: Literal["auto", "managed", "external", "off"] = "auto"
    api_url: str = "http://127.0.0.1:7465"
    appkey: SecretStr | None = None
    appkey_file: ConfigPath | None = None
    subnet: str = "public"
    payment_network: str = "holesky"


class RunsConfig(_Section):
    """``[runs]``: compute-pod runs."""

    max_parallel: int = Field(default=2, ge=1)
    grace_int: Seconds = 10.0
    grace_term: Seconds = 10.0
    default_timeout: Seconds = 0.0


class MountConfig(_Section):
    """``[mount]``: FUSE options."""

    allow_other: bool = False
    writeback_cache: bool = False
    attr_timeout: Seconds = 1.0
    entry_timeout: Seconds = 1.0
    debug: bool = False


class _Settings(_Section):
    store: ConfigPath = Field(default_factory=default_store)
    cache_dir: ConfigPath = Field(default_factory=default_cache_dir)
    state_dir: ConfigPath = Field(default_factory=default_state_dir)
    dfs: DfsConfig = Field(default_factory=DfsConfig)
    golem: GolemConfig = Field(default_factory=GolemConfig)
    runs: RunsConfig = Field(default_factory=RunsConfig)
    mount: MountConfig = Field(default_factory=MountConfig)


_SECTIONS: dict[str, type[_Section]] = {
    "dfs": DfsConfig,
    "golem": GolemConfig,
    "runs": RunsConfig,
    "mount": MountConfig,
}
_TOP_KEYS = ("store", "cache_dir", "state_dir")
_SECRET_KEYS = frozenset(SECRET_ENV)
_PATH_KEYS = frozenset({*_TOP_KEYS, "dfs.password_file", "golem.appkey_file"})
#: Keys that must not come from a place where others may read them.
_SECRET_FROM = {
    "file": "keep it out of the config file; use {key}_file (chmod 600) or {env}",
    "flag": "never pass it on the command line; use {key}_file (chmod 600) or {env}",
}


def all_keys() -> list[str]:
    """Every setting's dotted name, in file order."""
    keys = list(_TOP_KEYS)
    for section, model in _SECTIONS.items():
        keys.extend(f"{section}.{name}" for name in model.model_fields)
    return keys


def env_name(key: str) -> str:
    """``runs.max_parallel`` → ``SOVRFS_RUNS_MAX_PARALLEL``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


class Config:
    """The effective settings plus where each one came from.

    Sections are attributes (``config.dfs.url``, ``config.runs.max_parallel``);
    :meth:`source` tells where a value came from and :meth:`show` prints all.
    """

    def __init__(self, settings: _Settings, sources: Mapping[str, str], path: Path | None) -> None:
        self._settings = settings
        self._sources = dict(sources)
        self.path = path
        """The config file that was read, or None when there was none."""

    @property
    def store(self) -> Path:
        return self._settings.store

    @property
    def cache_dir(self) -> Path:
        return self._settings.cache_dir

    @property
    def state_dir(self) -> Path:
        return self._settings.state_dir

    @property
    def dfs(self) -> DfsConfig:
        return self._settings.dfs

    @property
    def golem(self) -> GolemConfig:
        return self._settings.golem

    @property
    def runs(self) -> RunsConfig:
        return self._settings.runs

    @property
    def mount(self) -> MountConfig:
        return self._settings.mount

    def get(self, key: str) -> Any:
        """The value of a dotted key, e.g. ``config.get("dfs.url")``."""
        section, _, name = key.rpartition(".")
        owner: BaseModel = getattr(self._settings, section) if section else self._settings
        return getattr(owner, name)

    def source(self, key: str) -> str:
        """Where ``key`` came from: ``default``, ``file PATH``, ``env NAME`` or ``flag``."""
        return self._sources.get(key, "default")

    def dfs_password(self, *, prompt: bool = False) -> str:
        """The FairOS-DFS password, looked up as :func:`sovrfs.secrets.read_secret` does."""
        from sovrfs.secrets import read_secret

        return read_secret(
            "FairOS-DFS password",
            env_var="SOVRFS_DFS_PASSWORD",
            file=self.dfs.password_file,
            credential="dfs-password",
            prompt=prompt,
            env=_secret_env("SOVRFS_DFS_PASSWORD", self.dfs.password),
        )

    def golem_appkey(self) -> str:
        """The yagna app key for an external node, or ConfigError when none is set."""
        from sovrfs.secrets import read_secret

        return read_secret(
            "yagna app key",
            env_var="SOVRFS_GOLEM_APPKEY",
            file=self.golem.appkey_file,
            credential="golem-appkey",
            env=_secret_env("SOVRFS_GOLEM_APPKEY", self.golem.appkey),
        )

    def show(self) -> str:
        """The effective settings as TOML, each with its source as a comment.

        Secrets are never printed, only whether one is set. The output reads
        back as a valid config file (secrets are comments).
        """
        lines = ["# sovrfs configuration in effect"]
        lines.append(f"# config file: {self.path if self.path else '(none)'}")
        current = ""
        for key in all_keys():
            section, _, name = key.rpartition(".")
            if section != current:
                lines += ["", f"[{section}]"]
                current = section
            lines.append(self._show_line(key, name))
        return "\n".join(lines) + "\n"

    def _show_line(self, key: str, name: str) -> str:
        value = self.get(key)
        source = self.source(key)
        if key in _SECRET_KEYS:
            shown = "(set, hidden)" if value is not None else "(not set)"
            return f"# {name} = {shown}  # {source}"
        if value is None:
            return f"# {name} = (not set)  # {source}"
        return f"{name} = {_toml_value(value)}  # {source}"

    def __repr__(self) -> str:
        return f"Config(path={self.path!r}, {self._settings!r})"


def _secret_env(var: str, value: SecretStr | None) -> dict[str, str]:
    return {var: value.get_secret_value()} if value is not None else {}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def config_path(path: Path | None = None, *, env: Mapping[str, str] = os.environ) -> Path:
    """The config file to read: ``--config``, else ``SOVRFS_CONFIG``, else the XDG one."""
    if path is not None:
        return path
    if env.get(CONFIG_ENV):
        return Path(os.path.expanduser(env[CONFIG_ENV]))
    return default_config_path()


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, Any] = {},
) -> Config:
    """Read the config file, the ``SOVRFS_*`` environment and command-line overrides.

    ``path`` is the ``--config`` flag. ``overrides`` maps dotted keys to flag
    values; a value of None means the flag was not given. Raises ConfigError
    naming the key, the problem and where the bad value came from.
    """
    file_path = config_path(path, env=env)
    explicit = path is not None or bool(env.get(CONFIG_ENV))
    if path is not None:
        origin = "--config"
    elif explicit:
        origin = CONFIG_ENV
    else:
        origin = "default location"
    layers: dict[str, tuple[Any, str]] = {}
    read_path = _read_file(file_path, origin, explicit, layers)
    _read_env(env, layers)
    _read_overrides(overrides, layers)
    settings = _validate(layers)
    return Config(settings, {key: source for key, (_, source) in layers.items()}, read_path)


def _read_file(
    path: Path, origin: str, explicit: bool, layers: dict[str, tuple[Any, str]]
) -> Path | None:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} (from {origin}): not found") from None
        log.debug("no config file at %s; using defaults", path)
        return None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from None
    source = f"file {path}"
    for key, value in _flatten(data, source):
        if key in _SECRET_KEYS:
            hint = _SECRET_FROM["file"].format(key=key, env=SECRET_ENV[key][0])
            raise ConfigError(f"{key}: {hint} (from {source})")
        if key in _PATH_KEYS and isinstance(value, str):
            # A relative path in the file means "next to the file", whatever
            # directory the daemon was started from (systemd starts it in /).
            value = str(path.parent / os.path.expandvars(os.path.expanduser(value)))
        layers[key] = (value, source)
    return path


def _flatten(data: Mapping[str, Any], source: str) -> Iterator[tuple[str, Any]]:
    for name, value in data.items():
        if name in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: must be a [{name}] table (from {source})")
            for sub, sub_value in value.items():
                yield _known(f"{name}.{sub}", source), sub_value
        elif isinstance(value, dict):
            raise ConfigError(f"[{name}]: unknown section (from {source})")
        else:
            yield _known(name, source), value


def _known(key: str, source: str) -> str:
    if key not in all_keys():
        raise ConfigError(f"{key}: unknown key (from {source})")
    return key


def _read_env(env: Mapping[str, str], layers: dict[str, tuple[Any, str]]) -> None:
    """Take ``SOVRFS_<SECTION>_<KEY>`` variables.

    A variable whose section is known but whose key is not is a typo and an
    error; other ``SOVRFS_*`` names (``SOVRFS_CONFIG``, ones that other parts
    of sovrfs or its tests use) are not settings and are left alone.
    """
    by_env = {env_name(key): key for key in all_keys()}
    for key, names in SECRET_ENV.items():
        by_env.update(dict.fromkeys(names, key))
        # The first name that is set wins: SOVRFS_GOLEM_APPKEY over YAGNA_APPKEY.
        for name in names:
            if env.get(name):
                layers[key] = (env[name], f"env {name}")
                break
    for name, value in env.items():
        known = by_env.get(name)
        if known is not None:
            if known not in _SECRET_KEYS:
                layers[known] = (value, f"env {name}")
            continue
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, rest = name[len(ENV_PREFIX) :].lower().partition("_")
        if section in _SECTIONS and rest:
            raise ConfigError(f"{section}.{rest}: unknown key (from {name})")


def _read_overrides(overrides: Mapping[str, Any], layers: dict[str, tuple[Any, str]]) -> None:
    for key, value in overrides.items():
        _known(key, "command line")
        if value is None:
            continue
        if key in _SECRET_KEYS:
            hint = _SECRET_FROM["flag"].format(key=key, env=SECRET_ENV[key][0])
            raise ConfigError(f"{key}: {hint}")
        layers[key] = (value, "flag")


def _validate(layers: Mapping[str, tuple[Any, str]]) -> _Settings:
    data: dict[str, Any] = {}
    for key, (value, _) in layers.items():
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    try:
        return _Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(part) for part in err["loc"])
        where = layers.get(key, (None, "default"))[1]
        where = where.removeprefix("env ")
        if where == "flag":
            where = "command line"
        raise ConfigError(f"{key}: {_problem(err)} (from {where})") from None


def _problem(err: Any) -> str:
    """A short, plain statement of what is wrong with a value."""
    kind = err["type"]
    ctx = err.get("ctx", {})
    value = err.get("input")
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "greater_than":
        return f"must be more than {ctx['gt']}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"not a whole number: {value!r}"
    if kind in ("float_parsing", "float_type"):
        return f"not a number: {value!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"not true or false: {value!r}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, not {value!r}"
    if kind in ("string_type", "path_type"):
        return f"must be a string, not {value!r}"
    if kind == "value_error":
        return f"{ctx['error']}: {value!r}"
    return f"{err['msg'][:1].lower()}{err['msg'][1:]}: {value!r}"
