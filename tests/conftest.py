"""Shared pytest set-up: fixtures live in tests/support/, one module per real
part the tests start (a FUSE mount, the FairOS-DFS dev server, yagna)."""

import logging

import pytest

pytest_plugins = [
    "tests.support.mount",
    "tests.support.dfs",
    "tests.support.yagna",
]


@pytest.fixture(autouse=True)
def _no_unexpected_warnings(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> object:
    """Fail a test that logs a WARNING or worse from sovrfs it did not expect.

    A test that provokes a warning on purpose marks it with
    ``@pytest.mark.expect_warnings``.
    """
    caplog.set_level(logging.INFO, logger="sovrfs")
    yield
    if caplog.handler.level > logging.WARNING:
        return
    if request.node.get_closest_marker("expect_warnings"):
        return
    bad = [
        r
        for r in caplog.get_records("call")
        if r.levelno >= logging.WARNING and r.name.startswith("sovrfs")
    ]
    assert not bad, "unexpected warnings: " + "; ".join(r.getMessage() for r in bad)
