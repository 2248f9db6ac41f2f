"""Ready-made compute pods that ``sovrfs init POD --template NAME`` copies.

A template is a directory of this package holding a ``*.recipe`` file; the
rest of its tree (``script/``, ``payload/``, ...) is copied with it. Files named
``.keep`` only exist so that empty directories survive packaging: the
directory is created, the file is not copied.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..errors import AlreadyExists, NotADirectory, NotFound, RecipeError
from ..recipe import RECIPE_SUFFIX, find_recipe, parse_recipe
from ..store.base import check_pod_name

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent
_SKIP_FILES = {".keep"}
_SKIP_DIRS = {"__pycache__"}


def list_templates() -> list[str]:
    """The names of the templates shipped with sovrfs, sorted."""
    names = []
    for entry in TEMPLATES_DIR.iterdir():
        if entry.is_dir() and not entry.name.startswith(("_", ".")) and _recipe_of(entry):
            names.append(entry.name)
    return sorted(names)


def _recipe_of(template: Path) -> str | None:
    names = [p.name for p in template.iterdir() if p.is_file()]
    try:
        return find_recipe(names)
    except RecipeError:
        # Two recipes: not a usable template, and not worth failing the others.
        return None


def copy_template(
    name: str, dest_dir: str | os.PathLike[str], *, pod_name: str | None = None
) -> list[str]:
    """Copy template ``name`` into ``dest_dir``; return the files copied.

    ``dest_dir`` is created if missing; an existing one keeps its content, but
    a file the template would overwrite is refused (``AlreadyExists``) before
    anything is copied. With ``pod_name`` the recipe is renamed
    ``<pod_name>.recipe`` and its ``name`` set to match, as recipe names are
    unique among a user's pods. Returned paths are relative, ``/``-separated.
    """
    if name not in list_templates():
        raise NotFound(f"no template named {name!r}; there are: {', '.join(list_templates())}")
    if pod_name is not None:
        check_pod_name(pod_name)
    src = TEMPLATES_DIR / name
    dest = Path(dest_dir)
    recipe_file = _recipe_of(src)
    assert recipe_file is not None
    plan = _plan(src, recipe_file, pod_name)

    if dest.exists() and not dest.is_dir():
        raise NotADirectory(f"{dest} is not a directory")
    taken = [rel for rel, _ in plan if rel and os.path.lexists(dest / rel)]
    if taken:
        raise AlreadyExists(f"{dest / taken[0]} already exists")

    dest.mkdir(parents=True, exist_ok=True)
    copied: list[str] = []
    for rel, origin in plan:
        target = dest / rel
        if origin.is_dir():
            target.mkdir(exist_ok=True)
        elif origin.name == recipe_file and pod_name is not None:
            recipe = parse_recipe(origin.read_bytes(), source=str(origin))
            renamed = recipe.model_copy(update={"name": pod_name})
            target.write_text(renamed.to_json(), encoding="utf-8")
            copied.append(rel)
        else:
            shutil.copyfile(origin, target)
            shutil.copymode(origin, target)
            copied.append(rel)
    log.debug("copied template %s into %s (%d files)", name, dest, len(copied))
    return copied


def _plan(src: Path, recipe_file: str, pod_name: str | None) -> list[tuple[str, Path]]:
    """``(relative target, origin)`` for every directory and file, parents first."""
    plan: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        base = Path(dirpath)
        rel_dir = base.relative_to(src).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        if prefix:
            plan.append((rel_dir, base))
        for filename in sorted(filenames):
            if filename in _SKIP_FILES or filename.endswith(".pyc"):
                continue
            target = filename
            if not prefix and filename == recipe_file and pod_name is not None:
                target = pod_name + RECIPE_SUFFIX
            plan.append((prefix + target, base / filename))
    return plan
