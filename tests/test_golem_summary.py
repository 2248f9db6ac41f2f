"""Classifying a finished requestor run from its exit status and yapapi's log lines.

The texts are the lines yapapi 0.13.1's summary logger writes, in the default
log format of ``yapapi.log.enable_default_logger``.
"""

from __future__ import annotations

from sovrfs.golem import GolemService
from sovrfs.golem.summary import classify

P = "[2026-12-03T13:05:58.381+0000 {level} yapapi.summary] "

SUCCESS = "\n".join(
    [
        P.format(level="INFO") + "[Job 1] Agreement proposed to provider 'p1' (0xabc)",
        P.format(level="INFO") + "[Job 1] Agreement confirmed by provider 'p1'",
        P.format(level="INFO") + "[Job 1] Job finished in 42.1s",
        P.format(level="INFO") + "[Job 1] Negotiated 1 agreement with 1 provider",
        P.format(level="INFO") + "Total cost: 0.0123",
        P.format(level="INFO") + "Golem engine has shut down",
    ]
)

TIMED_OUT = "\n".join(
    [
        P.format(level="WARNING")
        + "No offers have been collected from the market for 20s. Make sure you're using the"
        " latest released versions of yagna and yapapi, and the correct subnet. ",
        P.format(level="ERROR") + "[Job 1] Job failed, reason: Job timed out after 0:00:30",
        P.format(level="INFO") + "[Job 1] Negotiated 0 agreements with 0 providers",
        P.format(level="INFO") + "Total cost: 0",
        P.format(level="INFO") + "Golem engine has shut down",
    ]
)


def test_success() -> None:
    assert classify(0, SUCCESS) is None


def test_exit_zero_but_timed_out_without_offers() -> None:
    assert classify(0, TIMED_OUT) == (
        "job timed out after 0:00:30: no offers from the market in 20s; "
        "no provider agreed (0 agreements)"
    )


def test_exit_zero_but_job_failed() -> None:
    text = P.format(level="ERROR") + "[Job 1] Job failed, reason: Activity failed 3 times\n"
    assert classify(0, text) == "job failed: Activity failed 3 times"


def test_exit_zero_but_offers_without_response() -> None:
    text = "\n".join(
        [
            P.format(level="WARNING") + "2 offers have been collected from the market, but no "
            "provider has responded for 40s. Make sure you're using the latest released versions",
            P.format(level="INFO") + "[Job 1] Negotiated 0 agreements with 0 providers",
        ]
    )
    assert classify(0, text) == (
        "job ended without an agreement: 2 offers from the market, but no provider responded; "
        "no provider agreed (0 agreements)"
    )


def test_cancelled() -> None:
    text = "\n".join(
        [
            P.format(level="WARNING") + "[Job 1] Job cancelled",
            P.format(level="INFO") + "[Job 1] Negotiated 0 agreements with 0 providers",
            P.format(level="WARNING") + "Execution interrupted by CancelledError",
        ]
    )
    assert classify(0, text) == "job cancelled: no provider agreed (0 agreements)"
    assert classify(130, text) == (
        "requestor exited with status 130; job cancelled: no provider agreed (0 agreements)"
    )


def test_payment_failure_after_success() -> None:
    text = (
        SUCCESS
        + "\n"
        + P.format(level="ERROR")
        + ("Failed to accept an invoice or a debit note from 'p1', reason: allocation exhausted")
    )
    assert classify(0, text) == "paying a provider failed: allocation exhausted"


def test_nonzero_exit_reasons() -> None:
    assert classify(-9, "") == "requestor killed by SIGKILL"
    assert classify(2, "") == "requestor exited with status 2"
    assert classify(1, "/bin/sh: 1: gftp: not found\n") == (
        "requestor exited with status 1: gftp is not installed or not on PATH"
    )
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "script/hello.py", line 3, in <module>\n'
        "    import yapapi\n"
        "ModuleNotFoundError: No module named 'yapapi'\n"
    )
    assert classify(1, traceback) == (
        "requestor exited with status 1: ModuleNotFoundError: No module named 'yapapi'"
    )


def test_service_delegates(tmp_path: object) -> None:
    service = GolemService(tmp_path, mode="off")  # type: ignore[arg-type]
    assert service.classify(0, TIMED_OUT) == classify(0, TIMED_OUT)
