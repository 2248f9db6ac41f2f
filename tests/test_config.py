"""The config file, its environment variables and flags: precedence, errors, show()."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from sovrfs.config import all_keys, config_path, env_name, load_config
from sovrfs.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    return write(
        tmp_path / "config.toml",
        '[dfs]\nurl = "http://127.0.0.1:9090"\nuser = "alice"\n'
        "[runs]\nmax_parallel = 3\ngrace_int = 5\n",
    )


def test_defaults_follow_xdg_dirs(tmp_path: Path) -> None:
    env = {
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        config = load_config(env={})
    assert config.store == tmp_path / "data" / "sovrfs" / "pods"
    assert config.cache_dir == tmp_path / "cache" / "sovrfs"
    assert config.state_dir == tmp_path / "state" / "sovrfs"
    assert config.dfs.url is None
    assert config.dfs.cache_size == 10 << 30
    assert config.golem.mode == "auto"
    assert config.runs.max_parallel == 2
    assert config.mount.allow_other is False
    assert config.mount.writeback_cache is False
    assert config.source("runs.max_parallel") == "default"


def test_default_path_is_xdg_and_may_be_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_path(env={}) == tmp_path / "sovrfs" / "config.toml"
    config = load_config(env={})
    assert config.path is None


def test_config_env_var_names_the_file(conf: Path) -> None:
    config = load_config(env={"SOVRFS_CONFIG": str(conf)})
    assert config.path == conf
    assert config.dfs.user == "alice"


def test_flag_beats_env_beats_file_beats_default(conf: Path) -> None:
    config = load_config(
        conf,
        env={"SOVRFS_RUNS_MAX_PARALLEL": "7", "SOVRFS_DFS_USER": "bob"},
        overrides={"runs.max_parallel": 9, "dfs.url": None},
    )
    assert config.runs.max_parallel == 9
    assert config.source("runs.max_parallel") == "flag"
    assert config.dfs.user == "bob"
    assert config.source("dfs.user") == "env SOVRFS_DFS_USER"
    # A flag given as None was not given: the file's value stays.
    assert config.dfs.url == "http://127.0.0.1:9090"
    assert config.source("dfs.url") == f"file {conf}"
    assert config.runs.grace_int == 5.0
    assert config.runs.grace_term == 10.0
    assert config.source("runs.grace_term") == "default"


def test_env_names_cover_every_key() -> None:
    assert env_name("runs.max_parallel") == "SOVRFS_RUNS_MAX_PARALLEL"
    assert env_name("dfs.url") == "SOVRFS_DFS_URL"
    assert env_name("cache_dir") == "SOVRFS_CACHE_DIR"
    samples = {"golem.mode": "off"}
    for key in all_keys():
        if key in ("dfs.password", "golem.appkey"):
            continue
        value = samples.get(key, "true" if key.startswith("mount.") else "1")
        if key in ("mount.attr_timeout", "mount.entry_timeout"):
            value = "1"
        config = load_config(env={env_name(key): value})
        assert config.source(key) == f"env {env_name(key)}", key


def test_sizes_and_durations() -> None:
    config = load_config(
        env={},
        overrides={
            "dfs.cache_size": "1.5G",
            "dfs.request_timeout": "2m",
            "runs.default_timeout": "1h",
            "runs.grace_term": 3,
        },
    )
    assert config.dfs.cache_size == 3 << 29
    assert config.dfs.request_timeout == 120.0
    assert config.runs.default_timeout == 3600.0
    assert config.runs.grace_term == 3.0
    assert load_config(env={"SOVRFS_DFS_CACHE_SIZE": "512MiB"}).dfs.cache_size == 512 << 20


def test_relative_paths_in_the_file_are_next_to_it(tmp_path: Path) -> None:
    conf = write(tmp_path / "config.toml", 'store = "pods"\n[dfs]\npassword_file = "pw"\n')
    config = load_config(conf, env={})
    assert config.store == tmp_path / "pods"
    assert config.dfs.password_file == tmp_path / "pw"


def test_tilde_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(env={"SOVRFS_STORE": "~/pods"})
    assert config.store == tmp_path / "pods"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SOVRFS_RUNS_MAX_PARALLEL": "0"},
            "runs.max_parallel: must be at least 1 (from SOVRFS_RUNS_MAX_PARALLEL)",
        ),
        (
            {"SOVRFS_RUNS_MAX_PARALLEL": "many"},
            "runs.max_parallel: not a whole number: 'many' (from SOVRFS_RUNS_MAX_PARALLEL)",
        ),
        (
            {"SOVRFS_GOLEM_MODE": "sometimes"},
            "golem.mode: must be one of 'auto', 'managed', 'external' or 'off', "
            "not 'sometimes' (from SOVRFS_GOLEM_MODE)",
        ),
        (
            {"SOVRFS_MOUNT_ALLOW_OTHER": "perhaps"},
            "mount.allow_other: not true or false: 'perhaps' (from SOVRFS_MOUNT_ALLOW_OTHER)",
        ),
        (
            {"SOVRFS_DFS_CACHE_SIZE": "huge"},
            "dfs.cache_size: not a size",
        ),
        (
            {"SOVRFS_DFS_REQUEST_TIMEOUT": "0"},
            "dfs.request_timeout: must be more than 0 (from SOVRFS_DFS_REQUEST_TIMEOUT)",
        ),
        (
            {"SOVRFS_RUNS_GRACE_TERM": "soon"},
            "runs.grace_term: not a duration",
        ),
        ({"SOVRFS_DFS_URLL": "x"}, "dfs.urll: unknown key (from SOVRFS_DFS_URLL)"),
    ],
)
def test_bad_env_value_names_key_and_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert str(info.value).startswith(message)
    assert "(from SOVRFS_" in str(info.value)


def test_bad_file_value_names_key_and_file(tmp_path: Path) -> None:
    conf = write(tmp_path / "config.toml", "[runs]\nmax_parallel = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf, env={})
    assert str(info.value) == f"runs.max_parallel: must be at least 1 (from file {conf})"


def test_bad_flag_names_key_and_command_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides={"runs.max_parallel": -2})
    assert str(info.value) == "runs.max_parallel: must be at least 1 (from command line)"


def test_unknown_key_in_file(tmp_path: Path) -> None:
    conf = write(tmp_path / "config.toml", "[dfs]\nurl = 'http://x'\nusr = 'alice'\n")
    with pytest.raises(ConfigError, match=r"^dfs\.usr: unknown key \(from file "):
        load_config(conf, env={})


def test_unknown_section_and_top_key(tmp_path: Path) -> None:
    conf = write(tmp_path / "a.toml", "[fuse]\ndebug = true\n")
    with pytest.raises(ConfigError, match=r"^\[fuse\]: unknown section \(from file "):
        load_config(conf, env={})
    conf = write(tmp_path / "b.toml", "stor = '/tmp'\n")
    with pytest.raises(ConfigError, match=r"^stor: unknown key"):
        load_config(conf, env={})


def test_section_must_be_a_table(tmp_path: Path) -> None:
    conf = write(tmp_path / "a.toml", "dfs = 'http://x'\n")
    with pytest.raises(ConfigError, match=r"^dfs: must be a \[dfs\] table"):
        load_config(conf, env={})


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError, match=r"^runs\.parallel: unknown key \(from command line\)"):
        load_config(env={}, overrides={"runs.parallel": 3})


def test_unrelated_sovrfs_variables_are_ignored() -> None:
    env = {"SOVRFS_TEST_TOKEN": "x", "SOVRFS_POD": "p", "SOVRFS_MOUNTPOINT": "/m", "SOVRFS_DFS": ""}
    config = load_config(env=env)
    assert config.runs.max_parallel == 2


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    conf = write(tmp_path / "config.toml", "[dfs\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(conf, env={})


def test_named_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"\(from --config\): not found"):
        load_config(missing, env={})
    with pytest.raises(ConfigError, match=r"\(from SOVRFS_CONFIG\): not found"):
        load_config(env={"SOVRFS_CONFIG": str(missing)})


def test_secrets_refused_in_file_and_on_command_line(tmp_path: Path) -> None:
    conf = write(tmp_path / "config.toml", "[dfs]\npassword = 'hunter2'\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf, env={})
    assert "dfs.password: keep it out of the config file" in str(info.value)
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="never pass it on the command line"):
        load_config(env={}, overrides={"golem.appkey": "k"})


def test_secret_env_names(tmp_path: Path) -> None:
    config = load_config(env={"YAGNA_APPKEY": "yk", "SOVRFS_GOLEM_APPKEY": "sk"})
    assert config.golem.appkey is not None
    assert config.golem.appkey.get_secret_value() == "sk"
    assert config.golem_appkey() == "sk"
    config = load_config(env={"YAGNA_APPKEY": "yk"})
    assert config.source("golem.appkey") == "env YAGNA_APPKEY"
    assert config.golem_appkey() == "yk"


def test_show_hides_secrets_and_names_sources(conf: Path) -> None:
    config = load_config(
        conf,
        env={"SOVRFS_DFS_PASSWORD": "correct horse battery", "SOVRFS_MOUNT_DEBUG": "1"},
        overrides={"runs.max_parallel": 4},
    )
    text = config.show()
    assert "correct horse battery" not in text
    assert "correct horse battery" not in repr(config)
    assert "# password = (set, hidden)  # env SOVRFS_DFS_PASSWORD" in text
    assert "max_parallel = 4  # flag" in text
    assert f'user = "alice"  # file {conf}' in text
    assert "debug = true  # env SOVRFS_MOUNT_DEBUG" in text
    assert "grace_term = 10.0  # default" in text
    assert "# appkey = (not set)  # default" in text


def test_show_reads_back_as_the_same_config(conf: Path, tmp_path: Path) -> None:
    config = load_config(conf, env={"SOVRFS_DFS_CACHE_SIZE": "2G"})
    text = config.show()
    tomllib.loads(text)
    again = load_config(write(tmp_path / "shown.toml", text), env={})
    for key in all_keys():
        assert again.get(key) == config.get(key), key


def test_every_key_is_documented() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "operating.rst").read_text()
    for key in all_keys():
        if key in ("dfs.password", "golem.appkey"):
            assert env_name(key) in page, key
            continue
        name = key.rpartition(".")[2]
        assert f"   * - ``{name}``" in page, key
        assert env_name(key) in page, key
