"""The Golem templates: seed-compatible recipes, complete pod trees, valid scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sovrfs.golem import parse_settings
from sovrfs.recipe import Recipe, parse_recipe

TEMPLATES = Path(__file__).parent.parent / "sovrfs" / "templates"
SEED = Path("/work/shared/seed")


@pytest.mark.parametrize("name", ["hello-world", "blender"])
def test_template_is_a_complete_compute_pod(name: str) -> None:
    root = TEMPLATES / name
    recipe = json.loads((root / f"{name}.recipe").read_text())
    seed = json.loads((SEED / "recipe-blender.json").read_text())
    assert set(seed) <= set(recipe)
    assert set(seed["golem"]) == set(recipe["golem"])
    assert recipe["name"] == name
    golem = recipe["golem"]
    for key in ("script", "payload", "output", "log"):
        assert (root / golem[key]).is_dir(), key
        # Packaging drops empty directories: each one keeps a file.
        assert any((root / golem[key]).iterdir()), key
    program = golem["exec"].split()[1]
    assert (root / program).is_file()
    parsed = parse_recipe((root / f"{name}.recipe").read_bytes())
    assert isinstance(parsed, Recipe)
    # What the run engine hands over is what the Golem layer accepts.
    settings = parse_settings(parsed.sovr.golem.model_dump(exclude_none=True))
    assert settings.node is True
    assert settings.budget is not None


@pytest.mark.parametrize("script", ["hello-world/script/hello.py", "blender/script/blender.py"])
def test_script_compiles_and_imports_yapapi(script: str) -> None:
    source = TEMPLATES / script
    check = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('requestor', {str(source)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert callable(module.main)\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


def test_blender_without_scene_says_what_to_do(tmp_path: Path) -> None:
    pod = tmp_path / "pod"
    (pod / "payload").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, str(TEMPLATES / "blender" / "script" / "blender.py")],
        cwd=pod,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no .blend scene in payload/" in done.stderr
