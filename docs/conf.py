"""Sphinx configuration for the sovrfs documentation.

Built with ``make docs`` (``sphinx-build -W --keep-going``): every warning
fails the build.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The checkout's own sovrfs, whether or not it is installed, and the local
# extension that renders the CLI reference from its parser.
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "_ext"))

from sovrfs import __version__  # noqa: E402

project = "sovrfs"
author = "the sovrfs authors"
copyright = "the sovrfs authors"
version = release = __version__

extensions = ["sovrfs_cli"]
sovrfs_cli_parser = "sovrfs.cli:build_parser"

root_doc = "index"
# Pages pulled into others with ``.. include::``, not pages of their own.
exclude_patterns = ["_build", "bench-report.rst"]
highlight_language = "none"
nitpicky = True

html_theme = "alabaster"
html_title = f"sovrfs {release}"
html_theme_options = {"description": "FairOS-DFS pods as a directory tree", "fixed_sidebar": True}
