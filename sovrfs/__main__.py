"""``python -m sovrfs``: the same as the ``sovrfs`` command."""

import sys

from .cli import main

sys.exit(main())
