"""Templates: discovery, copying, and the offline wordcount pod doing real work."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sovrfs.errors import AlreadyExists, InvalidName, NotFound
from sovrfs.recipe import Recipe, exec_argv, find_recipe, parse_recipe
from sovrfs.templates import TEMPLATES_DIR, copy_template, list_templates


def test_wordcount_is_listed_and_only_recipe_dirs_count() -> None:
    names = list_templates()
    assert "wordcount" in names
    assert names == sorted(names)
    for name in names:
        assert find_recipe(os.listdir(TEMPLATES_DIR / name)) is not None
    assert "__pycache__" not in names


def test_wordcount_recipe_runs_offline() -> None:
    recipe = parse_recipe((TEMPLATES_DIR / "wordcount" / "wordcount.recipe").read_bytes())
    assert isinstance(recipe, Recipe)
    assert recipe.name == "wordcount"
    assert recipe.sovr.golem.node is False
    assert exec_argv(recipe, "/pods/wc") == ["python3", "script/wordcount.py"]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_copy_skips_keep_files_but_keeps_their_directories(tmp_path: Path) -> None:
    dest = tmp_path / "pod"
    copied = copy_template("wordcount", dest)

    assert "wordcount.recipe" in copied
    assert "script/wordcount.py" in copied
    assert not any(p.endswith(".keep") for p in copied)
    assert (dest / "output").is_dir() and list((dest / "output").iterdir()) == []
    assert (dest / "logs").is_dir() and list((dest / "logs").iterdir()) == []
    assert sorted(copied) == sorted(p for p in listing(dest) if (dest / p).is_file())


def test_copy_with_pod_name_renames_the_recipe(tmp_path: Path) -> None:
    dest = tmp_path / "my-count"
    copy_template("wordcount", dest, pod_name="my-count")
    assert find_recipe(os.listdir(dest)) == "my-count.recipe"
    original = json.loads((TEMPLATES_DIR / "wordcount" / "wordcount.recipe").read_text())
    renamed = json.loads((dest / "my-count.recipe").read_text())
    assert renamed == {**original, "name": "my-count"}


def test_copy_refuses_to_overwrite_and_changes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "pod"
    (dest / "script").mkdir(parents=True)
    (dest / "script" / "wordcount.py").write_text("mine\n")
    before = listing(dest)
    with pytest.raises(AlreadyExists):
        copy_template("wordcount", dest)
    assert listing(dest) == before
    assert (dest / "script" / "wordcount.py").read_text() == "mine\n"


def test_unknown_template_and_bad_pod_name(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="wordcount"):
        copy_template("no-such-template", tmp_path / "pod")
    with pytest.raises(InvalidName):
        copy_template("wordcount", tmp_path / "pod", pod_name="../evil")
    assert list(tmp_path.iterdir()) == []


def run_pod(pod: Path) -> subprocess.CompletedProcess[str]:
    recipe = parse_recipe(next(pod.glob("*.recipe")).read_bytes())
    assert isinstance(recipe, Recipe)
    return subprocess.run(
        exec_argv(recipe, str(pod)),
        cwd=pod,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_wordcount_counts_the_payload(tmp_path: Path) -> None:
    pod = tmp_path / "wc"
    copy_template("wordcount", pod)
    external = pod / "payload" / "external" / "more"
    external.mkdir(parents=True)
    (external / "notes.md").write_text("Nation nation NATION, don't stop.\n")
    (external / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (pod / "payload" / ".hidden.txt").write_text("hidden words never count\n")

    done = run_pod(pod)

    assert done.returncode == 0, done.stderr
    report = json.loads((pod / "output" / "report.json").read_text())
    paths = [f["path"] for f in report["per_file"]]
    assert paths == [
        "external/more/notes.md",
        "gettysburg-address.txt",
        "pride-and-prejudice-chapter-1.txt",
    ]
    assert report["files"] == 3
    assert report["total_words"] == sum(f["words"] for f in report["per_file"])
    top = dict(report["top"])
    # Five times in the address, three in the notes.
    assert top["nation"] == 8
    assert "hidden" not in top
    assert report["per_file"][0]["words"] == 5  # nation x3, don't, stop
    text = (pod / "output" / "report.txt").read_text()
    assert "external/more/notes.md" in text
    assert f"words:          {report['total_words']}" in text
    # One progress line per file, then the summary.
    lines = done.stdout.splitlines()
    assert lines[0] == "wordcount: 3 text files under payload/"
    assert lines[1].startswith("[1/3] external/more/notes.md: 5 words")
    assert lines[-1].startswith(f"wordcount: {report['total_words']} words")


def test_wordcount_without_text_fails_clearly(tmp_path: Path) -> None:
    pod = tmp_path / "wc"
    copy_template("wordcount", pod)
    for path in (pod / "payload").iterdir():
        path.unlink()
    (pod / "payload" / "data.bin").write_bytes(bytes(range(256)))

    done = run_pod(pod)

    assert done.returncode == 2
    assert "no text files under payload/" in done.stderr
    assert list((pod / "output").iterdir()) == []
