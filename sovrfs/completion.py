"""Shell completion scripts for bash and zsh, generated from an argparse parser.

The parser is the one source of truth: the script is made from its
subcommands, options, choices and help texts, so it never falls behind the
CLI. Install one with, for example::

    sovrfs completion bash > ~/.local/share/bash-completion/completions/sovrfs
    sovrfs completion zsh > ~/.zfunc/_sovrfs    # a directory in $fpath

What a value completes to is read from its name: choices complete to the
choices, names that mean a directory (``MOUNTPOINT``, ``DIR``) to
directories, names that are clearly not paths (``URL``, ``REF``, ``USER``,
numbers) to nothing, and everything else to file names.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["file", "dir", "none", "choices"]
SHELLS = ("bash", "zsh")

_DIR_WORDS = re.compile(r"dir|mountpoint|mnt|folder", re.IGNORECASE)
_NONE_WORDS = re.compile(
    r"url|ref|user|name|key|template|mode|id$|count|seconds|timeout|size|num|port|host|opts?$",
    re.IGNORECASE,
)


@dataclass
class Value:
    """What an option's value or a positional argument completes to."""

    kind: Kind
    label: str
    choices: list[str] = field(default_factory=list)


@dataclass
class Option:
    strings: list[str]
    help: str
    value: Value | None
    repeat: bool


@dataclass
class Positional:
    value: Value
    help: str
    many: bool
    optional: bool


@dataclass
class Command:
    path: tuple[str, ...]
    help: str
    options: list[Option] = field(default_factory=list)
    positionals: list[Positional] = field(default_factory=list)
    subcommands: dict[str, Command] = field(default_factory=dict)


def complete_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``parser``'s program in ``shell`` (``bash`` or ``zsh``)."""
    prog = parser.prog.split()[0]
    tree = describe(parser, (), "")
    if shell == "bash":
        return _bash(prog, tree)
    if shell == "zsh":
        return _zsh(prog, tree)
    raise ValueError(f"no completion for shell {shell!r}: choose one of {', '.join(SHELLS)}")


def describe(parser: argparse.ArgumentParser, path: tuple[str, ...], help: str) -> Command:
    """The command tree of ``parser``: what completion needs and nothing else."""
    command = Command(path, help)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            # Help texts live on pseudo-actions, present only for commands
            # that were given one; aliases share their command's parser.
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            by_parser = {id(action.choices[n]): h for n, h in helps.items() if n in action.choices}
            for name, sub in action.choices.items():
                text = helps.get(name, by_parser.get(id(sub), ""))
                if text == argparse.SUPPRESS:
                    continue
                text = " ".join(text.split())
                command.subcommands[name] = describe(sub, (*path, name), text)
        elif action.option_strings:
            command.options.append(_option(action))
        else:
            command.positionals.append(_positional(action))
    return command


def _help_text(action: argparse.Action) -> str:
    text = action.help or ""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        # argparse's own %(default)s and friends; a stray % stays as written.
        text = text % {**vars(action), "default": action.default}
    return " ".join(text.split())


def _value(action: argparse.Action) -> Value:
    label = action.metavar if isinstance(action.metavar, str) else action.dest
    label = label.lower()
    if action.choices is not None:
        return Value("choices", label, [str(c) for c in action.choices])
    if action.type in (int, float) or _NONE_WORDS.search(label):
        return Value("none", label)
    if _DIR_WORDS.search(label):
        return Value("dir", label)
    return Value("file", label)


def _option(action: argparse.Action) -> Option:
    takes_value = action.nargs != 0
    repeat = isinstance(action, argparse._AppendAction | argparse._CountAction)
    value = _value(action) if takes_value else None
    return Option(list(action.option_strings), _help_text(action), value, repeat)


def _positional(action: argparse.Action) -> Positional:
    many = action.nargs in ("*", "+", argparse.REMAINDER)
    optional = action.nargs in ("?", "*")
    return Positional(_value(action), _help_text(action), many, optional)


def _walk(command: Command) -> list[Command]:
    found = [command]
    for sub in command.subcommands.values():
        found.extend(_walk(sub))
    return found


# bash


def _bash(prog: str, tree: Command) -> str:
    func = "_" + _ident(prog)
    commands = _walk(tree)
    out = [
        f"# bash completion for {prog}, generated from its argument parser.",
        f"{func}() {{",
        '    local cur prev path="" npos=0 skip=0 i w',
        "    COMPREPLY=()",
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    # Walk the words before the cursor: follow subcommands, skip option",
        "    # values, count positional arguments.",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w="${COMP_WORDS[i]}"',
        "        if ((skip)); then skip=0; continue; fi",
        '        case "$path|$w" in',
    ]
    for command in commands:
        for name, sub in command.subcommands.items():
            pattern, target = _bq(_key(command.path, name)), _bq(_key(sub.path))
            out.append(f"            {pattern}) path={target}; npos=0; continue ;;")
    valued = [
        _bq(_key(command.path, string))
        for command in commands
        for option in command.options
        if option.value is not None
        for string in option.strings
    ]
    if valued:
        out.append(f"            {'|'.join(valued)}) skip=1; continue ;;")
    out += [
        "        esac",
        '        [[ "$w" == -* ]] || npos=$((npos + 1))',
        "    done",
        '    case "$path|$prev" in',
    ]
    for command in commands:
        for option in command.options:
            if option.value is not None:
                pattern = "|".join(_bq(_key(command.path, s)) for s in option.strings)
                out.append(f"        {pattern}) {_bash_value(option.value)} ;;")
    out += [
        "    esac",
        '    if [[ "$cur" == -* ]]; then',
        '        case "$path" in',
    ]
    for command in commands:
        words = [s for option in command.options for s in option.strings]
        out.append(f"            {_bq(_key(command.path))}) {_bash_words(words)} ;;")
    out += [
        "        esac",
        "        return 0",
        "    fi",
        '    case "$path" in',
    ]
    for command in commands:
        if command.subcommands:
            out.append(
                f"        {_bq(_key(command.path))}) {_bash_words(list(command.subcommands))} ;;"
            )
        elif command.positionals:
            out.append(f"        {_bq(_key(command.path))})")
            out.append('            case "$npos" in')
            for index, positional in enumerate(command.positionals):
                pattern = "*" if positional.many else str(index)
                out.append(f"                {pattern}) {_bash_value(positional.value)} ;;")
                if positional.many:
                    break
            out.append("            esac ;;")
        else:
            out.append(f"        {_bq(_key(command.path))}) {_bash_value(Value('none', ''))} ;;")
    out += [
        "    esac",
        "    return 0",
        "}",
        f"complete -o default -F {func} {prog}",
        "",
    ]
    return "\n".join(out)


def _bash_value(value: Value) -> str:
    # compopt fails outside a completion call; that is harmless, so hush it.
    if value.kind == "choices":
        return f"{_bash_words(value.choices)}"
    if value.kind == "dir":
        return "compopt +o default -o dirnames 2>/dev/null; return 0"
    if value.kind == "none":
        return "compopt +o default 2>/dev/null; return 0"
    # File names: leave COMPREPLY empty and readline's default completes them.
    return "return 0"


def _bash_words(words: list[str]) -> str:
    joined = " ".join(w for w in words if w and not any(c.isspace() for c in w))
    return f'COMPREPLY=($(compgen -W {_bq(joined)} -- "$cur")); return 0'


def _key(path: tuple[str, ...], last: str | None = None) -> str:
    return " ".join(path) + (f"|{last}" if last is not None else "")


def _bq(text: str) -> str:
    """Quote for bash, inside double quotes (patterns stay literal)."""
    return '"' + re.sub(r'(["\\$`])', r"\\\1", text) + '"'


def _ident(text: str) -> str:
    return re.sub(r"\W", "_", text)


# zsh


def _zsh(prog: str, tree: Command) -> str:
    func = "_" + _ident(prog)
    out = [
        f"#compdef {prog}",
        f"# zsh completion for {prog}, generated from its argument parser.",
        "",
    ]
    for command in _walk(tree):
        out += _zsh_function(func, command)
    out += [
        "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then",
        f'    {func} "$@"',
        "else",
        f"    compdef {func} {prog}",
        "fi",
        "",
    ]
    return "\n".join(out)


def _zsh_name(func: str, path: tuple[str, ...]) -> str:
    return func + "".join("__" + _ident(part) for part in path)


def _zsh_function(func: str, command: Command) -> list[str]:
    name = _zsh_name(func, command.path)
    specs = [spec for option in command.options for spec in _zsh_option(option)]
    out = [f"{name}() {{"]
    if command.subcommands:
        out += [
            '    local curcontext="$curcontext" state state_descr line ret=1',
            "    typeset -A opt_args",
        ]
        specs += ["'1:command:->command'", "'*::argument:->argument'"]
        out.append("    _arguments -C -s -S \\")
        out += [f"        {spec} \\" for spec in specs[:-1]]
        out += [f"        {specs[-1]} && ret=0", "    case $state in", "        command)"]
        out.append("            local -a commands=(")
        for sub_name, sub in command.subcommands.items():
            entry = _zsh_escape(sub_name, ":") + (":" + sub.help if sub.help else "")
            out.append(f"                {_zq(entry)}")
        out += [
            "            )",
            f"            _describe -t commands {_zq(' '.join(command.path) or 'command')} "
            "commands && ret=0 ;;",
            "        argument)",
            '            curcontext="${curcontext%:*:*}:' + name[1:] + '-$line[1]:"',
            "            case $line[1] in",
        ]
        for sub_name, sub in command.subcommands.items():
            out.append(f"                {_zq(sub_name)}) {_zsh_name(func, sub.path)} && ret=0 ;;")
        out += ["            esac ;;", "    esac", "    return ret", "}", ""]
        return out
    specs += _zsh_positionals(command.positionals)
    if not specs:
        return [*out, "    _message 'no arguments'", "}", ""]
    out.append("    _arguments -s -S \\")
    out += [f"        {spec} \\" for spec in specs[:-1]]
    out += [f"        {specs[-1]}", "}", ""]
    return out


def _zsh_option(option: Option) -> list[str]:
    help = "[" + _zsh_escape(option.help, "[]") + "]"
    if option.repeat:
        exclude = "*"
    elif len(option.strings) > 1:
        exclude = "(" + " ".join(option.strings) + ")"
    else:
        exclude = ""
    specs = []
    for string in option.strings:
        # Help ends the command line: nothing else makes sense with it.
        spec = ("(- *)" if string in ("-h", "--help") else exclude) + string
        if option.value is not None:
            spec += "=" if string.startswith("--") else "+"
        spec += help
        if option.value is not None:
            spec += ":" + _zsh_escape(option.value.label, ":") + ":" + _zsh_action(option.value)
        specs.append(_zq(spec))
    return specs


def _zsh_positionals(positionals: list[Positional]) -> list[str]:
    specs = []
    for index, positional in enumerate(positionals, start=1):
        label = _zsh_escape(positional.help or positional.value.label, ":")
        action = _zsh_action(positional.value)
        if positional.many:
            specs.append(_zq(f"*:{label}:{action}"))
            break
        colon = "::" if positional.optional else ":"
        specs.append(_zq(f"{index}{colon}{label}:{action}"))
    return specs


def _zsh_action(value: Value) -> str:
    if value.kind == "choices":
        return "(" + " ".join(_zsh_escape(c, " ()") for c in value.choices) + ")"
    if value.kind == "dir":
        return "_files -/"
    if value.kind == "file":
        return "_files"
    return " "


def _zsh_escape(text: str, chars: str) -> str:
    text = text.replace("\\", "\\\\")
    for char in chars:
        text = text.replace(char, "\\" + char)
    return text


def _zq(text: str) -> str:
    """Quote for zsh in single quotes."""
    return "'" + text.replace("'", "'\\''") + "'"
