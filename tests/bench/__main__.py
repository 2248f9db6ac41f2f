"""``python -m tests.bench``: see :mod:`tests.bench.runner`."""

from .runner import main

raise SystemExit(main())
