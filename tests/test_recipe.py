"""The recipe schema: the seed's files, a hostile corpus, and the registry formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sovrfs.errors import RecipeError
from sovrfs.recipe import (
    MAX_RECIPE_BYTES,
    Recipe,
    Task,
    add_shared_pod,
    autorun_matcher,
    check_unique_names,
    dump_registry,
    dump_shared_pods,
    exec_argv,
    find_recipe,
    legacy_pod,
    load_registry,
    load_shared_pods,
    parse_recipe,
)

SEED = Path("/work/shared/seed")
REF = "da41f8dfd57e2e89df2dacd3b01c4a1dbc7c4a1df429f96743317e6a220c5fac"


def recipe(**fields: Any) -> dict[str, Any]:
    """A valid recipe with some fields replaced (``None`` removes one)."""
    doc: dict[str, Any] = {
        "name": "blender",
        "description": "renders",
        "version": "1.0",
        "author": "reza",
        "public": True,
        "golem": {"exec": "python3 script/blender.py"},
    }
    for key, value in fields.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def golem(**fields: Any) -> dict[str, Any]:
    return {"exec": "python3 script/run.py", **fields}


def problems(data: bytes | dict[str, Any]) -> list[str]:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    with pytest.raises(RecipeError) as info:
        parse_recipe(raw)
    return str(info.value).splitlines()


# -- the seed ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["recipe-blender", "recipe-hello-world", "recipe-ml-xception"])
def test_seed_recipes_parse_and_round_trip(name: str) -> None:
    text = (SEED / f"{name}.json").read_text()
    parsed = parse_recipe(text.encode(), source=name)
    assert isinstance(parsed, Recipe)
    assert parsed.public is True
    assert parsed.sovr.golem.node is True
    # The seed files are indented by two spaces, as to_json writes them.
    assert parsed.to_json() == text.rstrip("\n") + "\n"


def test_seed_external_payload() -> None:
    parsed = parse_recipe((SEED / "recipe-ml-xception.json").read_bytes())
    assert isinstance(parsed, Recipe)
    [payload] = parsed.golem.external_payloads
    assert payload.ref == REF
    assert payload.data == "/images.zip"
    assert parsed.golem.payload_dir == "payload"
    assert exec_argv(parsed, "/mnt/pods/xc") == [
        "python3",
        "/mnt/pods/xc/script/script.py",
        "--model",
        "xception",
        "--images",
        "/mnt/pods/xc/payload/external/images",
    ]


def test_seed_task() -> None:
    task = parse_recipe((SEED / "task-keras.json").read_bytes())
    assert isinstance(task, Task)
    assert task.name == "keras"
    assert len(task.pods) == 5
    assert task.to_dict() == json.loads((SEED / "task-keras.json").read_text())


def test_defaults() -> None:
    parsed = parse_recipe(json.dumps({"name": "p", "golem": {"exec": "true"}}).encode())
    assert isinstance(parsed, Recipe)
    g = parsed.golem
    assert (g.script, g.payload, g.output, g.log) == ("script", "payload", "output", "logs")
    assert parsed.public is False
    assert parsed.sovr.timeout is None and parsed.sovr.autorun is None
    # Defaults are not written back: the file stays as the user wrote it.
    assert parsed.to_dict() == {"name": "p", "golem": {"exec": "true"}}


def test_unknown_keys_survive_a_round_trip() -> None:
    doc = recipe(
        license="MIT",
        extra={"nested": [1, 2.5, None, {"x": "y"}]},
        golem=golem(logs="logs", gpu={"count": 2}, payload=[{"ref": REF, "data": "/a", "n": 1}]),
        sovr={"timeout": 30},
    )
    parsed = parse_recipe(json.dumps(doc).encode())
    assert parsed.to_dict() == doc
    assert json.loads(parsed.to_json()) == doc


def test_sovr_extensions() -> None:
    doc = recipe(
        golem=golem(output={"share": "output/results"}),
        sovr={
            "timeout": 3600,
            "autorun": {"patterns": ["script/**", "payload/*.txt"], "debounce": 2.5},
            "golem": {
                "node": False,
                "subnet": "public",
                "payment_network": "holesky",
                "payment_driver": "erc20",
                "budget": 0.5,
            },
        },
    )
    parsed = parse_recipe(json.dumps(doc).encode())
    assert isinstance(parsed, Recipe)
    assert parsed.sovr.timeout == 3600
    assert parsed.golem.output_dir == "output"
    assert parsed.golem.output_share == "output/results"
    options = parsed.sovr.golem
    assert (options.node, options.subnet, options.budget) == (False, "public", 0.5)
    assert parsed.to_dict() == doc


# -- the hostile corpus -----------------------------------------------------------

HOSTILE: dict[str, tuple[bytes | dict[str, Any], list[str]]] = {
    "exec-missing": (recipe(golem={}), ["golem.exec: missing"]),
    "exec-wrong-type": (recipe(golem={"exec": ["python3"]}), ["golem.exec: must be a string"]),
    "exec-empty": (recipe(golem={"exec": "   "}), ["golem.exec: empty command"]),
    "exec-unbalanced": (
        recipe(golem={"exec": "python3 'script/run.py"}),
        ["golem.exec: cannot be split into words: no closing quotation"],
    ),
    "exec-nul": (recipe(golem={"exec": "a\u0000b"}), ["golem.exec: contains a NUL character"]),
    "exec-huge": (
        recipe(golem={"exec": "x" * 20000}),
        ["golem.exec: longer than 16384 characters"],
    ),
    "name-missing": (recipe(name=None), ["name: missing"]),
    "name-path": (
        recipe(name="../etc"),
        [
            "name: not a valid pod name (letters, digits and . _ @ + -, "
            "not starting with a dot or dash)"
        ],
    ),
    "name-number": (recipe(name=7), ["name: must be a string"]),
    "public-string": (recipe(public="yes"), ["public: must be true or false"]),
    "golem-list": (recipe(golem=[]), ["golem: must be an object"]),
    "neither": (recipe(golem=None), ["golem: missing (a compute pod has golem, a task has pods)"]),
    "both": (
        recipe(pods=[REF]),
        ["pods: not allowed together with golem (a task has pods, not golem)"],
    ),
    "payload-bad-ref": (
        recipe(
            golem=golem(payload=[{"ref": REF, "data": "/a.zip"}, {"ref": "ej38b1", "data": "/b"}])
        ),
        ["golem.payload[1].ref: not a sharing reference (64 hexadecimal digits)"],
    ),
    "payload-entry-missing-data": (
        recipe(golem=golem(payload=[{"ref": REF}])),
        ["golem.payload[0].data: missing"],
    ),
    "payload-data-escape": (
        recipe(golem=golem(payload=[{"ref": REF, "data": "/../../x.zip"}])),
        ["golem.payload[0].data: must stay inside the pod"],
    ),
    "payload-number": (
        recipe(golem=golem(payload=5)),
        ['golem.payload: must be a directory name or a list of {"ref", "data"} objects'],
    ),
    "payload-empty-list": (
        recipe(golem=golem(payload=[])),
        ["golem.payload: must have at least 1 entry"],
    ),
    "payload-dir-escape": (
        recipe(golem=golem(payload="../other-pod")),
        ["golem.payload: must stay inside the pod"],
    ),
    "output-share-escape": (
        recipe(golem=golem(output={"share": "output/../../x"})),
        ["golem.output.share: must stay inside the pod"],
    ),
    "output-absolute": (
        recipe(golem=golem(output="/etc")),
        ["golem.output: must be a path relative to the pod root, not an absolute path"],
    ),
    "output-share-missing": (recipe(golem=golem(output={})), ["golem.output.share: missing"]),
    "log-control-dir": (
        recipe(golem=golem(log=".sovr/logs")),
        ["golem.log: .sovr/ is reserved for the daemon's control files"],
    ),
    "script-root": (
        recipe(golem=golem(script="./")),
        ["golem.script: must name a directory inside the pod, not the pod root"],
    ),
    "script-backslash": (
        recipe(golem=golem(script="..\\x")),
        ["golem.script: must use / to separate directories, not \\"],
    ),
    "timeout-huge": (recipe(sovr={"timeout": 1e308}), ["sovr.timeout: must be at most 604800"]),
    "timeout-zero": (recipe(sovr={"timeout": 0}), ["sovr.timeout: must be greater than 0"]),
    "timeout-string": (recipe(sovr={"timeout": "10"}), ["sovr.timeout: must be a number"]),
    "timeout-bool": (recipe(sovr={"timeout": True}), ["sovr.timeout: must be a number"]),
    "timeout-long-int": (
        recipe(sovr={"timeout": 10**500}),
        ["sovr.timeout: must be at most 604800"],
    ),
    "sovr-typo": (recipe(sovr={"timout": 5}), ["sovr.timout: unknown key"]),
    "budget-negative": (
        recipe(sovr={"golem": {"budget": -1}}),
        ["sovr.golem.budget: must be greater than 0"],
    ),
    "node-string": (
        recipe(sovr={"golem": {"node": "false"}}),
        ["sovr.golem.node: must be true or false"],
    ),
    "subnet-junk": (
        recipe(sovr={"golem": {"subnet": "a b;rm"}}),
        ["sovr.golem.subnet: must be a short name of letters, digits and . _ -"],
    ),
    "autorun-escape": (
        recipe(sovr={"autorun": {"patterns": ["script/*", "../**", "/etc/*"]}}),
        [
            "sovr.autorun.patterns[1]: must stay inside the pod",
            "sovr.autorun.patterns[2]: must be a path relative to the pod root, "
            "not an absolute path",
        ],
    ),
    "autorun-bad-class": (
        recipe(sovr={"autorun": {"patterns": ["data/[z-a].csv"]}}),
        ["sovr.autorun.patterns[0]: not a valid pattern: bad character range z-a"],
    ),
    "autorun-debounce": (
        recipe(sovr={"autorun": {"patterns": ["a"], "debounce": 1e9}}),
        ["sovr.autorun.debounce: must be at most 3600"],
    ),
    "several-at-once": (
        recipe(name=None, public=1, golem={"payload": [{"ref": "x", "data": "/a"}]}),
        [
            "name: missing",
            "public: must be true or false",
            "golem.exec: missing",
            "golem.payload[0].ref: not a sharing reference (64 hexadecimal digits)",
        ],
    ),
    "task-empty": ({"name": "t", "pods": []}, ["pods: must have at least 1 entry"]),
    "task-bad-pod": (
        {"name": "t", "pods": [REF, "not a pod!", 3]},
        ["pods[1]: neither a sharing reference nor a pod name", "pods[2]: must be a string"],
    ),
    "truncated": (
        b'{\n  "name": "x",\n  "golem": {',
        [
            "(root): not valid JSON: line 3 column 13: "
            "Expecting property name enclosed in double quotes"
        ],
    ),
    "empty-file": (b"", ["(root): not valid JSON: line 1 column 1: Expecting value"]),
    "not-an-object": (b"[1, 2]", ["(root): must be a JSON object"]),
    "non-utf8": (b'{"name": "caf\xe9"}', ["(root): not UTF-8 text: byte 0xe9 at offset 13"]),
    "nan": (b'{"name": NaN}', ["(root): not valid JSON: NaN is not a JSON number"]),
    "giant-integer": (
        b'{"sovr": {"timeout": ' + b"9" * 5000 + b"}}",
        ["(root): not valid JSON: a number with 5000 digits"],
    ),
    "deep-nesting-parser": (
        b'{"a": ' + b"[" * 100_000,
        ["(root): not valid JSON: nested too deeply"],
    ),
    "deep-nesting-value": (
        b'{"junk": ' + b"[" * 40 + b"]" * 40 + b"}",
        ["junk: nested deeper than 32 levels"],
    ),
    "too-big": (
        b'{"description": "' + b"x" * (100 << 20) + b'"}',
        [f"(root): larger than {MAX_RECIPE_BYTES} bytes, the limit for a recipe"],
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_recipe_names_the_field(case: str) -> None:
    data, expected = HOSTILE[case]
    assert problems(data) == expected


def test_every_problem_once_in_a_stable_order() -> None:
    doc = recipe(
        golem=golem(payload=[{"ref": "a", "data": "../b"}, {"ref": "c"}], output={"share": "/x"}),
        sovr={"timeout": -1, "nope": 1},
    )
    first = problems(doc)
    assert first == problems(doc)
    assert first == [
        "golem.payload[0].ref: not a sharing reference (64 hexadecimal digits)",
        "golem.payload[0].data: must stay inside the pod",
        "golem.payload[1].ref: not a sharing reference (64 hexadecimal digits)",
        "golem.payload[1].data: missing",
        "golem.output.share: must be a path relative to the pod root, not an absolute path",
        "sovr.timeout: must be greater than 0",
        "sovr.nope: unknown key",
    ]


def test_external_data_may_be_absolute_in_the_other_pod() -> None:
    doc = recipe(golem=golem(payload=[{"ref": REF.upper(), "data": "/jake/lime.zip"}]))
    parsed = parse_recipe(json.dumps(doc).encode())
    assert isinstance(parsed, Recipe)
    assert parsed.golem.external_payloads[0].ref == REF  # normalised to lower case


def test_byte_order_mark_is_accepted() -> None:
    data = b"\xef\xbb\xbf" + json.dumps(recipe()).encode()
    assert isinstance(parse_recipe(data), Recipe)


# -- helpers ---------------------------------------------------------------------


def test_exec_argv_splits_like_a_shell() -> None:
    parsed = parse_recipe(
        json.dumps(
            recipe(golem=golem(exec="python3 '[@]my script.py' --name \"a b\" $HOME"))
        ).encode()
    )
    assert isinstance(parsed, Recipe)
    assert exec_argv(parsed, "/pods/p/") == [
        "python3",
        "/pods/p/my script.py",
        "--name",
        "a b",
        "$HOME",
    ]


def test_exec_argv_refuses_a_broken_command() -> None:
    parsed = parse_recipe(json.dumps(recipe()).encode())
    assert isinstance(parsed, Recipe)
    broken = parsed.model_copy(update={"golem": parsed.golem.model_copy(update={"exec": '"'})})
    with pytest.raises(RecipeError, match=r"^golem\.exec: "):
        exec_argv(broken, "/pods/p")


def test_find_recipe() -> None:
    assert find_recipe(["script", "blender.recipe", "payload"]) == "blender.recipe"
    assert find_recipe(["script", "recipe.json", ".recipe"]) is None
    with pytest.raises(RecipeError, match=r"a\.recipe, b\.recipe"):
        find_recipe(["b.recipe", "x", "a.recipe"])


def test_check_unique_names() -> None:
    def named(name: str) -> Recipe:
        parsed = parse_recipe(json.dumps(recipe(name=name)).encode())
        assert isinstance(parsed, Recipe)
        return parsed

    found = check_unique_names(
        {"blender": named("blender"), "blender-2": named("blender"), "solo": named("solo")}
    )
    assert [(p.pod, p.kind) for p in found] == [
        ("blender", "duplicate"),
        ("blender-2", "duplicate"),
        ("blender-2", "mismatch"),
    ]
    assert found[0].message == "name: 'blender' is also the name in pod blender-2"


def test_autorun_matcher() -> None:
    doc = recipe(
        golem=golem(output="results"),
        sovr={"autorun": {"patterns": ["script/**", "payload/*.txt", "**/*.csv", "in/[!x]?.md"]}},
    )
    parsed = parse_recipe(json.dumps(doc).encode())
    assert isinstance(parsed, Recipe)
    matches = autorun_matcher(parsed)
    assert matches is not None
    assert matches("script/run.py")
    assert matches("script/lib/deep/util.py")
    assert matches("payload/a.txt")
    assert not matches("payload/sub/a.txt")
    assert matches("payload/sub/a.csv")
    assert matches("in/ab.md")
    assert not matches("in/xb.md")
    assert not matches("in/a/.md")
    # The run's own writes never start the next run.
    assert not matches("results/table.csv")
    assert not matches("logs/run.csv")
    assert not matches(".sovr/x.csv")
    assert autorun_matcher(parse_recipe(json.dumps(recipe()).encode())) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        (["script/**"], "script/run.py", True),
        (["script/**"], "payload/script/x", False),
        (["*.py"], "run.py", True),
        (["*.py"], "script/run.py", False),
        (["**/*.py"], "run.py", True),
        (["**/*.py"], "script/util.pyc", False),
        (["script/*.py"], "script/lib/util.py", False),
        (["script/**/test_*.py"], "script/test_a.py", True),
        (["script/**/test_*.py"], "script/a/b/test_a.py", True),
        (["output/**", "*.md"], "README.md", True),
        (["./script/**"], "/script/run.py", True),
    ],
)
def test_autorun_patterns(patterns: list[str], path: str, expected: bool) -> None:
    doc = recipe(sovr={"autorun": {"patterns": patterns}})
    parsed = parse_recipe(json.dumps(doc).encode())
    assert isinstance(parsed, Recipe)
    matches = autorun_matcher(parsed)
    assert matches is not None
    assert matches(path) is expected


# -- the original tool's bookkeeping ---------------------------------------------------


def test_registry_round_trip_keeps_what_the_original_tool_wrote() -> None:
    original = {
        "blender": {**recipe(), "sharing_references": [REF]},
        "weird": {"name": "weird", "golem": {"exec": "x", "logs": "logs"}, "mystery": 1},
    }
    registry = load_registry(json.dumps(original).encode())
    assert registry == original
    assert json.loads(dump_registry(registry)) == original
    assert load_registry(b"") == {}
    with pytest.raises(RecipeError, match=r"^blender: must be an object$"):
        load_registry(b'{"blender": 3}')
    with pytest.raises(RecipeError, match="not valid JSON"):
        load_registry(b"{")


def test_shared_pods_round_trip() -> None:
    original = {"blender": [{"recipe": recipe(), "sharing_reference": REF, "when": "then"}]}
    shared = load_shared_pods(json.dumps(original).encode())
    assert shared["blender"][0].sharing_reference == REF
    add_shared_pod(shared, "blender", parse_recipe(json.dumps(recipe()).encode()), "b" * 64)
    out = json.loads(dump_shared_pods(shared))
    assert out["blender"][0] == original["blender"][0]
    assert out["blender"][1] == {"recipe": recipe(), "sharing_reference": "b" * 64}
    with pytest.raises(RecipeError, match=r"^blender\[0\]\.sharing_reference: missing$"):
        load_shared_pods(json.dumps({"blender": [{"recipe": {}}]}).encode())


def test_legacy_pod() -> None:
    assert legacy_pod(["recipe.json", "blender.zip"]) == ("recipe.json", "blender.zip")
    assert legacy_pod(["recipe.json", "blender.zip"], pod="blender") == (
        "recipe.json",
        "blender.zip",
    )
    assert legacy_pod(["recipe.json", "other.zip"], pod="blender") is None
    assert legacy_pod(["recipe.json", "a.zip", "b.zip"]) is None
    assert legacy_pod(["blender.zip"]) is None
    assert legacy_pod(["recipe.json", "blender.zip", "blender.recipe"]) is None
