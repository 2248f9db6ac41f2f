"""Benchmarks of sovrfs against the local disk and other FUSE file systems.

Run them with ``make bench`` (or ``python -m tests.bench``); they are not
tests, and nothing here is named so that pytest would collect it. Importing
the package or any of its modules starts nothing: mounts are made by
:func:`tests.bench.runner.main` only.

Modules, one per concern:

- :mod:`~tests.bench.targets` — the file systems compared: the sovrfs mount,
  a plain directory, bindfs and ``rclone mount``;
- :mod:`~tests.bench.workloads` — the file workloads, run the same way on
  every target;
- :mod:`~tests.bench.engine` — what only sovrfs has: run-start latency and
  the daemon's memory while serving a large pod;
- :mod:`~tests.bench.results` — measurements, medians, ratios and the
  pass/fail checks of the performance targets;
- :mod:`~tests.bench.report` — the terminal table, the reStructuredText
  report and the plots;
- :mod:`~tests.bench.runner` — the command line and the order of the work.
"""
