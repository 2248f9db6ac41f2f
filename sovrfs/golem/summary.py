"""Decide from a finished requestor's exit status and log whether its run failed.

A yapapi requestor often exits 0 although nothing was computed: yapapi logs a
failed or timed-out job and returns from ``execute_tasks`` normally, and
example scripts end without checking. So the log is read as well, for the
lines yapapi 0.13's summary logger (``yapapi.summary``) writes:

* ``Job failed, reason: Job timed out after 0:00:05``
* ``Job cancelled``
* ``Negotiated 0 agreements with 0 providers``
* ``No offers have been collected from the market for 20s. ...``
* ``3 offers have been collected from the market, but no provider has
  responded for 20s. ...``
* ``Failed to accept an invoice or a debit note from '...', reason: ...``
* ``Error when shutting down Golem engine: ...``
* ``Job finished in 12.3s`` (the success line)

The patterns ignore whatever prefix a log format puts before the message.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field

_JOB_FAILED = re.compile(r"Job failed, reason: (?P<reason>.*)$", re.M)
_TIMED_OUT = re.compile(r"(?:Job )?timed out after (?P<after>[\d:.]+)")
_CANCELLED = re.compile(r"\bJob cancelled\b")
_FINISHED = re.compile(r"\bJob finished in [\d.]+s")
_AGREEMENTS = re.compile(r"Negotiated (?P<count>\d+) agreements? with")
_NO_OFFERS = re.compile(r"No offers have been collected from the market for (?P<secs>\d+)s")
_NO_RESPONSE = re.compile(
    r"(?P<offers>\d+) offers? ha(?:s|ve) been collected from the market, "
    r"but no provider has responded for (?P<secs>\d+)s"
)
_PAYMENT_FAILED = re.compile(
    r"Failed to accept an invoice or a debit note from .*?, reason: (?P<reason>.*)$", re.M
)
_SHUTDOWN_FAILED = re.compile(r"Error when shutting down Golem engine: (?P<reason>.*)$", re.M)
_NO_GFTP = re.compile(r"gftp: (?:command )?not found|Please check if gftp is installed")
_TRACEBACK_LAST = re.compile(
    r"^Traceback \(most recent call last\):\n(?:[ \t].*\n|\n)*(?P<last>\S.*)$", re.M
)


@dataclass
class _Findings:
    failures: list[str] = field(default_factory=list)
    finished: int = 0
    cancelled: bool = False
    agreements: list[int] = field(default_factory=list)
    market: str | None = None


def _read(log_text: str) -> _Findings:
    found = _Findings()
    found.failures = [m["reason"].strip() for m in _JOB_FAILED.finditer(log_text)]
    found.finished = len(_FINISHED.findall(log_text))
    found.cancelled = bool(_CANCELLED.search(log_text))
    found.agreements = [int(m["count"]) for m in _AGREEMENTS.finditer(log_text)]
    if m := _NO_OFFERS.search(log_text):
        found.market = f"no offers from the market in {m['secs']}s"
    elif m := _NO_RESPONSE.search(log_text):
        found.market = f"{m['offers']} offers from the market, but no provider responded"
    return found


def _job_reason(found: _Findings) -> str | None:
    """The reason a job failed, from yapapi's summary lines; None if none failed."""
    if found.failures:
        reason = found.failures[0]
        if m := _TIMED_OUT.search(reason):
            reason = f"job timed out after {m['after']}"
        else:
            reason = f"job failed: {reason}"
    elif found.cancelled:
        reason = "job cancelled"
    elif found.agreements and found.finished == 0 and 0 in found.agreements:
        reason = "job ended without an agreement"
    elif found.market and found.finished == 0:
        reason = "job ended without offers"
    else:
        return None
    details = []
    if found.market:
        details.append(found.market)
    if 0 in found.agreements:
        details.append("no provider agreed (0 agreements)")
    return f"{reason}: {'; '.join(details)}" if details else reason


def classify(exit_code: int, log_text: str) -> str | None:
    """None when the run succeeded, else a one-line reason a user can act on."""
    found = _read(log_text)
    job = _job_reason(found)
    if exit_code == 0:
        if job:
            return job
        if m := _PAYMENT_FAILED.search(log_text):
            return f"paying a provider failed: {m['reason'].strip()}"
        if m := _SHUTDOWN_FAILED.search(log_text):
            return f"the Golem engine failed to shut down: {m['reason'].strip()}"
        return None
    if exit_code < 0:
        status = f"requestor killed by {_signal_name(-exit_code)}"
    else:
        status = f"requestor exited with status {exit_code}"
    if _NO_GFTP.search(log_text):
        return f"{status}: gftp is not installed or not on PATH"
    if job:
        return f"{status}; {job}"
    tracebacks = list(_TRACEBACK_LAST.finditer(log_text))
    if tracebacks:
        return f"{status}: {tracebacks[-1]['last'].strip()}"
    return status


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
