"""Sphinx extension: the command-line reference, rendered from the CLI's own parser.

``.. sovrfs-cli::`` imports the parser factory named by the ``sovrfs_cli_parser``
setting (``"module:function"``, default ``sovrfs.cli:build_parser``) and writes
one section per subcommand: its help line and its ``--help`` output as a
literal block. The page can then never disagree with the program.

If the parser cannot be imported or built the build stops with an error: a
reference page quietly missing its content is worse than a failed build.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

#: Help is wrapped at this width whatever the terminal that runs the build.
HELP_WIDTH = "88"
UNDERLINES = "-~^'"


def load_parser(spec: str) -> argparse.ArgumentParser:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        factory: Callable[[], argparse.ArgumentParser] = getattr(
            module, func_name or "build_parser"
        )
        parser = factory()
    except Exception as exc:
        raise ExtensionError(
            f"sovrfs-cli: cannot build the command-line parser from {spec!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(parser, argparse.ArgumentParser):
        raise ExtensionError(f"sovrfs-cli: {spec!r} returned {parser!r}, not an ArgumentParser")
    return parser


def subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) for each subcommand, aliases left out."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen or helps.get(name) == argparse.SUPPRESS:
                    continue
                seen.add(id(sub))
                yield name, " ".join(helps.get(name, "").split()), sub


def format_help(parser: argparse.ArgumentParser) -> str:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:
        return parser.format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def render(parser: argparse.ArgumentParser, depth: int = 0) -> list[str]:
    """reStructuredText for ``parser`` and, below it, each of its subcommands."""
    lines = ["::", ""]
    lines += ["    " + line for line in format_help(parser).rstrip().splitlines()]
    lines.append("")
    for _name, help_text, sub in subcommands(parser):
        title = sub.prog
        lines += [title, UNDERLINES[min(depth, len(UNDERLINES) - 1)] * len(title), ""]
        if help_text:
            lines += [help_text[:1].upper() + help_text[1:] + ".", ""]
        lines += render(sub, depth + 1)
    return lines


class SovrfsCli(SphinxDirective):
    has_content = False
    option_spec: dict[str, Any] = {}

    def run(self) -> list[nodes.Node]:
        spec = self.config.sovrfs_cli_parser
        parser = load_parser(spec)
        text = render(parser)
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(text, source=f"<{spec}>"), container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("sovrfs_cli_parser", "sovrfs.cli:build_parser", "env")
    app.add_directive("sovrfs-cli", SovrfsCli)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
