"""Secrets: where they are read from, which files are refused, and log masking."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sovrfs import secrets
from sovrfs.config import load_config
from sovrfs.errors import ConfigError
from sovrfs.secrets import (
    SecretFilter,
    known_secrets,
    read_private_file,
    read_secret,
    register_secret,
    setup_logging,
)


def secret_file(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_env_var_first(tmp_path: Path) -> None:
    pw = secret_file(tmp_path / "pw", "from-file\n", 0o600)
    value = read_secret("test password", env_var="T_PW", file=pw, env={"T_PW": "from-env"})
    assert value == "from-env"
    assert "from-env" in known_secrets()


def test_file_0600_accepted_and_newline_stripped(tmp_path: Path) -> None:
    pw = secret_file(tmp_path / "pw", "s3cret-file\n", 0o600)
    assert read_secret("test password", env_var="T_PW", file=pw, env={}) == "s3cret-file"
    assert "s3cret-file" in known_secrets()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_readable_by_others_refused_with_fix(tmp_path: Path, mode: int) -> None:
    pw = secret_file(tmp_path / "pw", "open-secret\n", mode)
    with pytest.raises(ConfigError) as info:
        read_secret("test password", env_var="T_PW", file=pw, env={})
    message = str(info.value)
    assert str(pw) in message
    assert f"fix: chmod 600 {pw}" in message
    assert f"{mode:04o}" in message
    assert "open-secret" not in message


def test_file_owned_by_someone_else_refused(tmp_path: Path) -> None:
    pw = secret_file(tmp_path / "pw", "theirs\n", 0o600)
    os.chown(pw, 65534, 65534)
    assert os.geteuid() != 65534
    with pytest.raises(ConfigError) as info:
        read_private_file(pw)
    message = str(info.value)
    assert str(pw) in message
    assert "owned by uid 65534" in message
    assert f"chmod 600 {pw}" in message


def test_directory_and_fifo_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        read_private_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_private_file(fifo)


def test_missing_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_secret("test password", env_var="T_PW", file=tmp_path / "none", env={})
    empty = secret_file(tmp_path / "empty", "\n", 0o600)
    with pytest.raises(ConfigError, match="is empty"):
        read_secret("test password", env_var="T_PW", file=empty, env={})


def test_systemd_credential_before_file(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    # systemd owns this directory; sovrfs checks no permissions here.
    secret_file(creds / "dfs-password", "from-credential\n", 0o644)
    pw = secret_file(tmp_path / "pw", "from-file\n", 0o600)
    value = read_secret(
        "test password",
        env_var="T_PW",
        file=pw,
        credential="dfs-password",
        env={"CREDENTIALS_DIRECTORY": str(creds)},
    )
    assert value == "from-credential"
    # A credential the unit did not load falls through to the file.
    value = read_secret(
        "test password",
        env_var="T_PW",
        file=pw,
        credential="other",
        env={"CREDENTIALS_DIRECTORY": str(creds)},
    )
    assert value == "from-file"


def test_nothing_found_says_where_to_put_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(ConfigError) as info:
        read_secret("test password", env_var="T_PW", credential="dfs-password", prompt=True, env={})
    message = str(info.value)
    assert "T_PW" in message
    assert "dfs-password" in message


def test_config_reads_password_through_secret_file(tmp_path: Path) -> None:
    pw = secret_file(tmp_path / "pw", "cfg-secret\n", 0o600)
    conf = tmp_path / "config.toml"
    conf.write_text(f"[dfs]\nurl = 'http://127.0.0.1:9090'\npassword_file = '{pw}'\n")
    assert load_config(conf, env={}).dfs_password() == "cfg-secret"
    env = {"SOVRFS_DFS_PASSWORD": "env-secret"}
    assert load_config(conf, env=env).dfs_password() == "env-secret"


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)
    secrets._handler = None


def make_record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"boom {args[0]}")
        except RuntimeError as e:
            exc_info = (type(e), e, e.__traceback__)
    return logging.LogRecord("sovrfs.test", logging.INFO, __file__, 1, msg, args, exc_info)


def test_secret_filter_masks_message_args_and_traceback() -> None:
    register_secret("tr0ub4dor&3")
    record = make_record("login with %s as %s", "tr0ub4dor&3", "alice", exc=True)
    assert SecretFilter().filter(record)
    assert record.getMessage() == "login with ******** as alice"
    assert record.exc_text is not None
    assert "tr0ub4dor&3" not in record.exc_text
    assert "boom ********" in record.exc_text


def test_secret_filter_masks_longest_first() -> None:
    register_secret("abcd")
    register_secret("abcdefgh")
    record = make_record("key=abcdefgh")
    SecretFilter().filter(record)
    assert record.getMessage() == "key=********"


def test_setup_logging_masks_and_sets_levels(root_logging: None) -> None:
    register_secret("pa55-in-a-log")
    out = io.StringIO()
    setup_logging(False, stream=out)
    logging.getLogger("sovrfs.test").info("password is %s", "pa55-in-a-log")
    logging.getLogger("sovrfs.test").debug("hidden at INFO")
    logging.getLogger("httpx").info("HTTP Request: GET /")
    text = out.getvalue()
    assert "INFO sovrfs.test: password is ********" in text
    assert "pa55-in-a-log" not in text
    assert "hidden at INFO" not in text
    assert "HTTP Request" not in text

    out = io.StringIO()
    setup_logging(True, stream=out)
    # The test set-up pins the "sovrfs" logger at INFO; a sibling shows the root level.
    logging.getLogger("test.debug").debug("shown with --debug")
    logging.getLogger("httpx").debug("HTTP Request: GET /")
    text = out.getvalue()
    assert "DEBUG test.debug: shown with --debug" in text
    assert "HTTP Request" in text
    assert len([h for h in logging.getLogger().handlers if h.filters]) == 1


@pytest.mark.expect_warnings
def test_journal_prefix_only_when_stderr_is_the_journal(
    root_logging: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging(False, stream=stream)
        log = logging.getLogger("sovrfs.test")
        log.info("mounted")
        log.warning("degraded")
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
        stream.flush()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines[0] == "<6>INFO sovrfs.test: mounted"
    assert lines[1] == "<4>WARNING sovrfs.test: degraded"
    assert lines[2] == "<3>ERROR sovrfs.test: failed"
    assert all(line.startswith("<3>") for line in lines[2:])

    # The same variable inherited by a process whose stderr is elsewhere.
    out = io.StringIO()
    setup_logging(False, stream=out)
    logging.getLogger("sovrfs.test").info("mounted")
    assert not out.getvalue().startswith("<")
