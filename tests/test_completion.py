"""Shell completion generated from an argparse parser, tried in real bash and zsh.

The parser here is a stand-in with every shape the sovrfs CLI uses (nested
subcommands, aliases, choices, option values, hidden options), so these tests
do not depend on the CLI's exact commands.
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sovrfs.completion import complete_script


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sovrfs", description="Mount pods.")
    parser.add_argument("--config", metavar="FILE", help="config file (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="log each request")
    parser.add_argument("--hidden-knob", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    mount = sub.add_parser("mount", help="mount the pods: [here] MOUNTPOINT")
    mount.add_argument("mountpoint")
    mount.add_argument("--dfs", metavar="URL", help="FairOS-DFS server")
    mount.add_argument("-o", dest="opts", action="append", help="mount options")
    mount.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    sub.add_parser("umount", help="unmount").add_argument("mountpoint")
    run = sub.add_parser("run", help="start a run", aliases=["start"])
    run.add_argument("pod")
    run.add_argument("--wait", action="store_true", help="wait for the run's end")
    golem = sub.add_parser("golem", help="Golem node")
    golem.add_argument("--mode", choices=["auto", "managed", "external", "off"], help="how")
    config = sub.add_parser("config", help="configuration")
    show = config.add_subparsers(dest="config_command").add_parser("show", help="print it")
    show.add_argument("--secrets", action="store_true", help="say which secrets are set")
    sub.add_parser("task", help="run a task").add_argument("files", nargs="+", help="task files")
    sub.add_parser("completion", help="completion").add_argument("shell", choices=["bash", "zsh"])
    sub.add_parser("pods", help="list pods")
    return parser


COMMANDS = ["completion", "config", "golem", "mount", "pods", "run", "start", "task", "umount"]

# (command line before the cursor, expected candidates), the same for both shells.
CASES = [
    ("sovrfs ", COMMANDS),
    ("sovrfs mo", ["mount"]),
    ("sovrfs st", ["start"]),
    ("sovrfs --config x.toml mo", ["mount"]),
    ("sovrfs --", ["--config", "--debug", "--help"]),
    ("sovrfs config ", ["show"]),
    ("sovrfs config show --", ["--help", "--secrets"]),
    ("sovrfs golem --mode ", ["auto", "external", "managed", "off"]),
    ("sovrfs golem --mode m", ["managed"]),
    ("sovrfs completion ", ["bash", "zsh"]),
    ("sovrfs start --w", ["--wait"]),
    ("sovrfs mount --dfs http://h:9090 --f", ["--foreground"]),
]


def bash_complete(script: Path, line: str) -> list[str]:
    words = line.split(" ")
    program = f"""
        source {script}
        COMP_WORDS=({" ".join(f"'{w}'" for w in words)})
        COMP_CWORD={len(words) - 1}
        _sovrfs
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stderr == ""
    return sorted(w for w in result.stdout.splitlines() if w)


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bash") / "sovrfs"
    path.write_text(complete_script(build_parser(), "bash"))
    return path


def test_bash_script_is_valid(bash_script: Path) -> None:
    subprocess.run(["bash", "-n", str(bash_script)], check=True, timeout=30)
    assert "complete -o default -F _sovrfs sovrfs" in bash_script.read_text()


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_bash_completes(bash_script: Path, line: str, expected: list[str]) -> None:
    assert bash_complete(bash_script, line) == expected


def test_bash_leaves_paths_to_readline(bash_script: Path) -> None:
    # Empty: `complete -o default` then completes file and directory names.
    assert bash_complete(bash_script, "sovrfs mount ") == []
    assert bash_complete(bash_script, "sovrfs --config ") == []
    assert "--hidden-knob" not in bash_script.read_text()


# zsh: the real completion system, driven through a pseudo-terminal. Every
# candidate that reaches compadd is printed between markers.
ZSH_SETUP = r"""
PS1='<prompt>'
unsetopt prompt_sp prompt_cr
fpath=({fpath} $fpath)
autoload -U compinit && compinit -u -D
compadd () {{
  if [[ ${{@[1,(i)(-|--)]}} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  typeset -a hits
  builtin compadd -A hits "$@"
  local ret=$? h
  for h in $hits; do print -rn -- "<hit>$h</hit>" >&2; done
  return $ret
}}
_capture() {{ zle complete-word; print -rn -- "<do""ne>" >&2; zle kill-whole-line; }}
zle -N _capture
bindkey '^I' _capture
print -n '<rea''dy>'
"""


class Zsh:
    def __init__(self, fpath: Path) -> None:
        zsh = shutil.which("zsh")
        assert zsh, "zsh is missing: install the Debian package 'zsh'"
        self.fd, child = pty.openpty()
        env = {"PATH": os.environ["PATH"], "TERM": "dumb", "HOME": str(fpath)}
        self.proc = subprocess.Popen(
            [zsh, "-f", "-i"],
            stdin=child,
            stdout=child,
            stderr=child,
            env=env,
            start_new_session=True,
        )
        os.close(child)
        os.write(self.fd, ZSH_SETUP.format(fpath=fpath).encode())
        self.read_until("<ready>")

    def read_until(self, token: str, timeout: float = 30) -> str:
        buf = b""
        deadline = time.monotonic() + timeout
        while token.encode() not in buf:
            left = deadline - time.monotonic()
            assert left > 0, f"zsh did not print {token}: {buf.decode(errors='replace')}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                buf += os.read(self.fd, 65536)
        return buf.decode(errors="replace")

    def complete(self, line: str) -> list[str]:
        os.write(self.fd, line.encode() + b"\t")
        return sorted(set(re.findall(r"<hit>(.*?)</hit>", self.read_until("<done>"))))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self.fd)


@pytest.fixture(scope="module")
def zsh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zsh]:
    fpath = tmp_path_factory.mktemp("zsh")
    (fpath / "_sovrfs").write_text(complete_script(build_parser(), "zsh"))
    shell = Zsh(fpath)
    yield shell
    shell.close()


def test_zsh_script_is_valid(tmp_path: Path) -> None:
    script = tmp_path / "_sovrfs"
    script.write_text(complete_script(build_parser(), "zsh"))
    subprocess.run(["zsh", "-n", str(script)], check=True, timeout=30)
    assert script.read_text().startswith("#compdef sovrfs\n")


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_zsh_completes(zsh: Zsh, line: str, expected: list[str]) -> None:
    found = zsh.complete(line)
    if line.endswith("-") or line.endswith("--f") or line.endswith("--w"):
        # zsh offers the short spellings too where they fit the prefix.
        assert [w for w in found if w.startswith("--")] == expected
    else:
        assert found == expected


def test_zsh_mount_options_and_help_texts(zsh: Zsh) -> None:
    assert zsh.complete("sovrfs mount -") == ["--dfs", "--foreground", "--help", "-f", "-h", "-o"]
    script = complete_script(build_parser(), "zsh")
    assert "'mount:mount the pods\\: [here] MOUNTPOINT'" not in script
    assert "'mount:mount the pods: [here] MOUNTPOINT'" in script
    assert "'--wait[wait for the run'\\''s end]'" in script
    assert "hidden-knob" not in script


def test_unknown_shell() -> None:
    with pytest.raises(ValueError, match="fish"):
        complete_script(build_parser(), "fish")


# The CLI reference in the docs is rendered from the same parser by the
# Sphinx extension in docs/_ext; tried here on the stand-in parser above.

ROOT = Path(__file__).resolve().parent.parent


def sphinx_build(tmp_path: Path, parser_spec: str) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'docs' / '_ext')!r})\n"
        "extensions = ['sovrfs_cli']\n"
    )
    (src / "index.rst").write_text("Command line\n============\n\n.. sovrfs-cli::\n")
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "text",
         "-D", f"sovrfs_cli_parser={parser_spec}", str(src), str(tmp_path / "out")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def test_cli_reference_renders_every_command(tmp_path: Path) -> None:
    result = sphinx_build(tmp_path, "tests.test_completion:build_parser")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "index.txt").read_text()
    for title in ("sovrfs mount", "sovrfs run", "sovrfs config", "sovrfs config show"):
        assert f"\n{title}\n" in text, title
    assert "usage: sovrfs config show [-h] [--secrets]" in text
    assert "--dfs URL" in text
    assert "Mount the pods: [here] MOUNTPOINT." in text
    # An alias is not a command of its own.
    assert "\nsovrfs start\n" not in text
    assert "hidden-knob" not in text


def test_cli_reference_fails_loudly_without_a_parser(tmp_path: Path) -> None:
    result = sphinx_build(tmp_path, "tests.no_such_module:build_parser")
    assert result.returncode != 0
    assert "cannot build the command-line parser from 'tests.no_such_module:build_parser'" in (
        result.stderr
    )


def test_docs_use_the_real_cli_parser() -> None:
    conf = (ROOT / "docs" / "conf.py").read_text()
    assert 'sovrfs_cli_parser = "sovrfs.cli:build_parser"' in conf
    assert ".. sovrfs-cli::" in (ROOT / "docs" / "cli.rst").read_text()
