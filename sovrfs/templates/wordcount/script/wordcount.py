#!/usr/bin/env python3
"""Count the words in every text file of the pod's payload.

Runs from the pod root (``python3 script/wordcount.py``), needs nothing but
Python 3's standard library and no network. It reads the payload and output
directory names from the pod's recipe, walks the payload recursively
(``payload/external/`` included, hidden files left out), treats a file as text
when its start holds no NUL byte and decodes as UTF-8, and writes
``report.txt`` (for people) and ``report.json`` (for the next pod of a task)
into the output directory. Progress goes to stdout, one line per file.

Exit status: 0 on success, 1 when the payload directory is missing, 2 when it
holds no text file.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import json
import os
import re
import sys
import time
from pathlib import Path

WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")
SAMPLE = 8192
TOP = 25


def recipe_dirs(root: Path) -> tuple[str, str]:
    """The payload and output directories the pod's recipe names."""
    payload, output = "payload", "output"
    for recipe in sorted(root.glob("*.recipe")):
        try:
            golem = json.loads(recipe.read_text(encoding="utf-8")).get("golem", {})
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(golem.get("payload"), str):
            payload = golem["payload"]
        if isinstance(golem.get("output"), str):
            output = golem["output"]
        break
    return payload, output


def is_text(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            sample = f.read(SAMPLE)
    except OSError:
        return False
    if b"\0" in sample:
        return False
    try:
        # final=False: the sample may end in the middle of a character.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def text_files(payload: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(payload):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if not name.startswith(".") and path.is_file() and is_text(path):
                found.append(path)
    return sorted(found)


def count(path: Path, totals: collections.Counter[str]) -> dict[str, int]:
    words = lines = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            lines += 1
            found = WORD.findall(line.lower())
            words += len(found)
            totals.update(found)
    return {"words": words, "lines": lines, "bytes": path.stat().st_size}


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def render(report: dict[str, object], per_file: list[dict[str, object]]) -> str:
    lines = [
        "Word count report",
        "=================",
        "",
        f"files:          {report['files']}",
        f"words:          {report['total_words']}",
        f"distinct words: {report['distinct_words']}",
        "",
        "words  file",
    ]
    lines += [f"{entry['words']:>6}  {entry['path']}" for entry in per_file]
    lines += ["", f"Top {TOP} words", ""]
    top = report["top"]
    assert isinstance(top, list)
    lines += [f"{n:>6}  {word}" for word, n in top]
    return "\n".join(lines) + "\n"


def main() -> int:
    root = Path.cwd()
    default_payload, default_output = recipe_dirs(root)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload", default=default_payload, help="directory to read")
    parser.add_argument("--output", default=default_output, help="directory for the reports")
    args = parser.parse_args()
    payload, output = root / args.payload, root / args.output

    if not payload.is_dir():
        print(f"wordcount: no payload directory {args.payload}/ in {root}", file=sys.stderr)
        return 1
    files = text_files(payload)
    if not files:
        print(
            f"wordcount: no text files under {args.payload}/ - put some .txt files there "
            "(or list an external payload in the recipe) and run again",
            file=sys.stderr,
        )
        return 2

    print(f"wordcount: {len(files)} text files under {args.payload}/", flush=True)
    started = time.monotonic()
    totals: collections.Counter[str] = collections.Counter()
    per_file: list[dict[str, object]] = []
    for i, path in enumerate(files, 1):
        rel = path.relative_to(payload).as_posix()
        stats = count(path, totals)
        per_file.append({"path": rel, **stats})
        print(f"[{i}/{len(files)}] {rel}: {stats['words']} words", flush=True)

    report: dict[str, object] = {
        "run": os.environ.get("SOVR_RUN_ID"),
        "files": len(files),
        "total_words": sum(totals.values()),
        "distinct_words": len(totals),
        "top": [[word, n] for word, n in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))][
            :TOP
        ],
        "per_file": per_file,
    }
    output.mkdir(parents=True, exist_ok=True)
    write_atomically(
        output / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    )
    write_atomically(output / "report.txt", render(report, per_file))
    print(
        f"wordcount: {report['total_words']} words ({report['distinct_words']} distinct) "
        f"in {len(files)} files, {time.monotonic() - started:.2f}s; "
        f"wrote {args.output}/report.txt and {args.output}/report.json",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
