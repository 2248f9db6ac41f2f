"""The run engine: compute pods' commands as supervised, logged, recorded runs.

It knows nothing of FUSE, recipes or Golem. A caller (the FUSE layer, wired to
the control files ``.sovr/run``, ``.sovr/cancel``, ``.sovr/status`` and
``.sovr/runs/``) turns a recipe into a :class:`RunRequest` and hands it to
:meth:`RunEngine.submit`; the engine queues it, starts it in its own process
group, writes its output live into the pod's log, stops it on cancel or
timeout (SIGINT, then SIGTERM, then SIGKILL) and keeps a :class:`RunRecord`
of it in a state directory that survives daemon restarts.

Modules, from the top down: :mod:`.engine` (the engine and one run's life),
:mod:`.record` (requests, records, run ids), :mod:`.logfile` (the live log),
:mod:`.process` (environment, signals, process groups), :mod:`.state` (the
state directory).
"""

from .engine import INTERRUPTED_REASON, RunEngine
from .record import RunRecord, RunRequest, RunState, StreamScrubber, new_run_id

__all__ = [
    "INTERRUPTED_REASON",
    "RunEngine",
    "RunRecord",
    "RunRequest",
    "RunState",
    "StreamScrubber",
    "new_run_id",
]
