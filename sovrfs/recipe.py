"""The recipe: the JSON file that makes a pod a compute pod, and the task format.

A pod whose root holds one ``*.recipe`` file is a compute pod. The schema is the
seed's (``name``, ``description``, ``version``, ``author``, ``public`` and a
``golem`` section with ``exec``, ``script``, ``payload``, ``output``, ``log``);
sovrfs's own additions live under one top-level key, ``"sovr"``. A recipe with
a top-level ``pods`` list instead of ``golem`` is a :class:`Task`.

Everything a user wrote is kept: keys sovrfs does not know survive
:meth:`Recipe.to_json`, so a recipe written by the original tool or a newer
sovrfs comes back unchanged apart from formatting.

Validation never raises anything but :class:`~sovrfs.errors.RecipeError`, whose
message holds one problem per line, each naming the field first::

    golem.exec: missing
    golem.payload[1].ref: not a sharing reference

A recipe file larger than :data:`MAX_RECIPE_BYTES` is refused before parsing,
so a hostile pod cannot make the daemon parse a huge document.

The module also reads and writes the bookkeeping files of the original tool
(``ComputePodRegistry``/``Registry.json`` and ``SharedPods``/``SharedPods.json``)
and recognises a pod that tool persisted as a zip (:func:`legacy_pod`).
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
)
from pydantic_core import ErrorDetails

from .errors import InvalidName, NameTooLong, RecipeError
from .store.base import check_pod_name

log = logging.getLogger(__name__)

#: Largest recipe (or task) file sovrfs parses, in bytes. Real recipes are a
#: few hundred bytes; the limit only keeps hostile files from costing memory.
MAX_RECIPE_BYTES = 1 << 20
#: Deepest nesting of JSON objects and lists accepted anywhere in a recipe.
MAX_DEPTH = 32
#: Longest ``golem.exec`` command, in characters.
MAX_EXEC_CHARS = 16384
#: Longest path accepted in a recipe field, in bytes; one component may have 255.
MAX_PATH_BYTES = 4096
#: Most external payload entries, task pods or auto-run patterns in one list.
MAX_LIST_ITEMS = 256
#: Upper bounds of the numeric ``sovr`` settings (seconds, seconds, GLM).
MAX_TIMEOUT = 7 * 24 * 3600
MAX_DEBOUNCE = 3600
MAX_BUDGET = 1_000_000

#: File name of the registry and shared-pod bookkeeping, as the original tool named them.
REGISTRY_POD = "ComputePodRegistry"
REGISTRY_FILE = "Registry.json"
SHARED_PODS_POD = "SharedPods"
SHARED_PODS_FILE = "SharedPods.json"
#: The recipe copy the original tool left at the root of a persisted pod.
LEGACY_RECIPE_FILE = "recipe.json"

RECIPE_SUFFIX = ".recipe"
#: ``[@]`` in ``golem.exec`` stands for the pod root followed by ``/``.
ROOT_MARKER = "[@]"
#: The directory of a pod that holds the daemon's virtual control files.
CONTROL_DIR = ".sovr"

_SHARING_REF = re.compile(r"[0-9a-fA-F]{64}")
_ID_LIKE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_sharing_ref(value: str) -> bool:
    """Whether ``value`` has the shape of a sharing reference (64 hex digits)."""
    return _SHARING_REF.fullmatch(value) is not None


# -- field checks --------------------------------------------------------------
#
# Each check raises ValueError with the problem only; the field's name is added
# from pydantic's location when the errors are formatted.


def _path_problem(value: str, *, absolute_ok: bool) -> str | None:
    if not value:
        return "must not be empty"
    if "\0" in value:
        return "contains a NUL character"
    if "\\" in value:
        return "must use / to separate directories, not \\"
    if len(value.encode(errors="surrogatepass")) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    if value.startswith("/") and not absolute_ok:
        return "must be a path relative to the pod root, not an absolute path"
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "must stay inside the pod"
    if any(len(p.encode(errors="surrogatepass")) > 255 for p in parts):
        return "has a path component longer than 255 bytes"
    return None


def _pod_dir(value: str) -> str:
    """A directory inside the pod, given relative to its root."""
    if problem := _path_problem(value, absolute_ok=False):
        raise ValueError(problem)
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError("must name a directory inside the pod, not the pod root")
    if parts[0] == CONTROL_DIR:
        raise ValueError(f"{CONTROL_DIR}/ is reserved for the daemon's control files")
    return value


def _other_pod_file(value: str) -> str:
    """A file inside another pod; absolute paths are the norm there."""
    if problem := _path_problem(value, absolute_ok=True):
        raise ValueError(problem)
    if not [p for p in value.split("/") if p not in ("", ".")]:
        raise ValueError("must name a file in that pod, not its root")
    return value


def _pattern(value: str) -> str:
    """A glob pattern relative to the pod root."""
    if problem := _path_problem(value, absolute_ok=False):
        raise ValueError(problem)
    try:
        re.compile(_glob_regex(value))
    except re.error as exc:
        raise ValueError(f"not a valid pattern: {exc.msg}") from None
    return value


def _sharing_ref(value: str) -> str:
    if not is_sharing_ref(value):
        raise ValueError("not a sharing reference (64 hexadecimal digits)")
    return value.lower()


def _pod_name(value: str) -> str:
    try:
        check_pod_name(value)
    except NameTooLong:
        raise ValueError("longer than 64 bytes") from None
    except InvalidName:
        raise ValueError(
            "not a valid pod name (letters, digits and . _ @ + -, not starting with a dot or dash)"
        ) from None
    return value


def _task_pod(value: str) -> str:
    if is_sharing_ref(value):
        return value.lower()
    try:
        check_pod_name(value)
    except (InvalidName, NameTooLong):
        raise ValueError("neither a sharing reference nor a pod name") from None
    return value


def _exec_command(value: str) -> str:
    if len(value) > MAX_EXEC_CHARS:
        raise ValueError(f"longer than {MAX_EXEC_CHARS} characters")
    _split_exec(value)
    return value


def _identifier(value: str) -> str:
    if len(value) > 64 or not _ID_LIKE.fullmatch(value):
        raise ValueError("must be a short name of letters, digits and . _ -")
    return value


def _bounded(*, gt: float | None = None, ge: float | None = None, le: float) -> PlainValidator:
    """A JSON number within bounds, kept as written (an int stays an int)."""

    def check(value: object) -> float:
        # bool is an int subclass in Python, but `true` is not a number in JSON.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        if gt is not None and not value > gt:
            raise ValueError(f"must be greater than {gt:g}")
        if ge is not None and not value >= ge:
            raise ValueError(f"must be at least {ge:g}")
        if value > le:
            raise ValueError(f"must be at most {le:g}")
        return value

    return PlainValidator(check)


def _split_exec(command: str) -> list[str]:
    if "\0" in command:
        raise ValueError("contains a NUL character")
    try:
        argv = shlex.split(command, posix=True)
    except ValueError as exc:
        # shlex says "No closing quotation" or "No escaped character".
        raise ValueError(f"cannot be split into words: {str(exc).lower()}") from None
    if not argv:
        raise ValueError("empty command")
    return argv


PodDir = Annotated[str, AfterValidator(_pod_dir)]
ShortText = Annotated[str, Field(max_length=65536)]


class _Open(BaseModel):
    """A section of the seed's schema: unknown keys are kept as written."""

    model_config = ConfigDict(extra="allow", strict=True)


class _Closed(BaseModel):
    """A section sovrfs owns: an unknown key there is a typo, and an error."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ExternalPayload(_Open):
    """One external payload: a file in another (shared) pod, fetched before a run."""

    ref: Annotated[str, AfterValidator(_sharing_ref)]
    data: Annotated[str, AfterValidator(_other_pod_file)]


class OutputShare(_Open):
    """Output sharing: on persist, the directory ``share`` is published as a pod."""

    share: PodDir


def _payload_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "=dir"
    if isinstance(value, list):
        return "=external"
    return None


def _output_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "=dir"
    if isinstance(value, dict | OutputShare):
        return "=share"
    return None


# The tags of these unions start with "=" so that the error formatter can drop
# them from a field's location: no key of the schema starts with "=".
Payload = Annotated[
    Union[  # noqa: UP007 - tagged members need the explicit Union form
        Annotated[PodDir, Tag("=dir")],
        Annotated[
            Annotated[list[ExternalPayload], Field(min_length=1, max_length=MAX_LIST_ITEMS)],
            Tag("=external"),
        ],
    ],
    Discriminator(
        _payload_kind,
        custom_error_type="payload_type",
        custom_error_message='must be a directory name or a list of {"ref", "data"} objects',
    ),
]
Output = Annotated[
    Union[  # noqa: UP007
        Annotated[PodDir, Tag("=dir")],
        Annotated[OutputShare, Tag("=share")],
    ],
    Discriminator(
        _output_kind,
        custom_error_type="output_type",
        custom_error_message='must be a directory name or a {"share": DIR} object',
    ),
]


class Golem(_Open):
    """The ``golem`` section: what a run executes and where its files are."""

    exec: Annotated[str, AfterValidator(_exec_command)]
    script: PodDir = "script"
    payload: Payload = "payload"
    output: Output = "output"
    log: PodDir = "logs"

    @property
    def external_payloads(self) -> list[ExternalPayload]:
        """The external payload entries; empty for an internal payload."""
        return list(self.payload) if isinstance(self.payload, list) else []

    @property
    def payload_dir(self) -> str:
        """The payload directory; external payloads land in its ``external/``."""
        return _norm(self.payload) if isinstance(self.payload, str) else "payload"

    @property
    def output_dir(self) -> str:
        """Where the run writes its results (``output`` in the sharing form)."""
        return _norm(self.output) if isinstance(self.output, str) else "output"

    @property
    def output_share(self) -> str | None:
        """The directory published as a pod of its own on persist, if any."""
        return _norm(self.output.share) if isinstance(self.output, OutputShare) else None

    @property
    def log_dir(self) -> str:
        return _norm(self.log)

    @property
    def script_dir(self) -> str:
        return _norm(self.script)


class Autorun(_Closed):
    """``sovr.autorun``: start a run when a file matching a pattern is saved."""

    patterns: Annotated[
        list[Annotated[str, Field(max_length=1024), AfterValidator(_pattern)]],
        Field(min_length=1, max_length=MAX_LIST_ITEMS),
    ]
    debounce: Annotated[float, _bounded(ge=0, le=MAX_DEBOUNCE)] = 1.0


class GolemOptions(_Closed):
    """``sovr.golem``: what the run needs from Golem."""

    node: bool = True
    subnet: Annotated[str, AfterValidator(_identifier)] | None = None
    payment_network: Annotated[str, AfterValidator(_identifier)] | None = None
    payment_driver: Annotated[str, AfterValidator(_identifier)] | None = None
    budget: Annotated[float, _bounded(gt=0, le=MAX_BUDGET)] | None = None


class SovrOptions(_Closed):
    """The ``sovr`` section: every sovrfs extension of the seed's schema."""

    timeout: Annotated[float, _bounded(gt=0, le=MAX_TIMEOUT)] | None = None
    autorun: Autorun | None = None
    golem: GolemOptions = Field(default_factory=GolemOptions)


class _Document(_Open):
    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON data: the keys it was given (or set), unknown ones too."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude_unset=True)
        return data

    def to_json(self) -> str:
        """The recipe as the text of a ``*.recipe`` file."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


class Recipe(_Document):
    """A compute pod's recipe."""

    name: Annotated[str, AfterValidator(_pod_name)]
    description: ShortText | None = None
    version: ShortText | None = None
    author: ShortText | None = None
    public: bool = False
    golem: Golem
    sovr: SovrOptions = Field(default_factory=SovrOptions)


class Task(_Document):
    """A task: pods run in order, each one's output fed to the next one's payload."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    description: ShortText | None = None
    version: ShortText | None = None
    author: ShortText | None = None
    public: bool = False
    #: Shared with every pod of the task (the original tool's task format).
    payload: (
        Annotated[list[ExternalPayload], Field(min_length=1, max_length=MAX_LIST_ITEMS)] | None
    ) = None
    pods: Annotated[
        list[Annotated[str, AfterValidator(_task_pod)]],
        Field(min_length=1, max_length=MAX_LIST_ITEMS),
    ]


def _norm(path: str) -> str:
    return posixpath.normpath(path.strip("/"))


# -- parsing -------------------------------------------------------------------


def parse_recipe(data: bytes, *, source: str = "recipe") -> Recipe | Task:
    """Validate the bytes of a recipe or task file.

    ``source`` names the file in log messages. Raises :class:`RecipeError`
    listing every problem found, one ``field: problem`` per line.
    """
    problems = _problems(data)
    if isinstance(problems, Recipe | Task):
        return problems
    log.debug("%s: invalid recipe: %s", source, "; ".join(problems))
    raise RecipeError("\n".join(problems))


def _problems(data: bytes) -> Recipe | Task | list[str]:
    if len(data) > MAX_RECIPE_BYTES:
        return [f"(root): larger than {MAX_RECIPE_BYTES} bytes, the limit for a recipe"]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [f"(root): not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}"]
    try:
        doc = json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        return [f"(root): not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"]
    except RecursionError:
        return ["(root): not valid JSON: nested too deeply"]
    except ValueError as exc:
        return [f"(root): not valid JSON: {exc}"]
    if not isinstance(doc, dict):
        return ["(root): must be a JSON object"]
    if too_deep := _too_deep(doc):
        return [too_deep]

    is_task = "pods" in doc and "golem" not in doc
    model: type[Recipe | Task] = Task if is_task else Recipe
    problems: list[str] = []
    result: Recipe | Task | None = None
    try:
        result = model.model_validate(doc)
    except ValidationError as exc:
        problems.extend(_format(err) for err in exc.errors())
    if not is_task and "golem" not in doc:
        problems = [
            "golem: missing (a compute pod has golem, a task has pods)"
            if p == "golem: missing"
            else p
            for p in problems
        ]
    if "golem" in doc and "pods" in doc:
        problems.append("pods: not allowed together with golem (a task has pods, not golem)")
    if problems:
        return list(dict.fromkeys(problems))
    assert result is not None
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    # int() refuses more than 4300 digits with a message about interpreter
    # settings; this one says what is wrong with the recipe.
    if len(text) > 1000:
        raise ValueError(f"a number with {len(text)} digits")
    return int(text)


def _too_deep(doc: dict[str, Any]) -> str | None:
    stack: list[tuple[Any, int, str]] = [(v, 1, k) for k, v in doc.items()]
    while stack:
        value, depth, top = stack.pop()
        if depth > MAX_DEPTH:
            return f"{_key(top)}: nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((v, depth + 1, top) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, top) for v in value)
    return None


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


_MESSAGES: dict[str, str] = {
    "missing": "missing",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "extra_forbidden": "unknown key",
    "string_too_short": "must not be empty",
    "string_too_long": "longer than {max_length} characters",
    "too_short": "must have at least {min_length} entry",
    "too_long": "must have at most {max_length} entries",
}


def _format(err: ErrorDetails, where: str = "") -> str:
    """``golem.payload[1].ref: problem`` from one pydantic error; ``where``
    is the location of the validated value itself, if it is not the root."""
    for part in err["loc"]:
        if isinstance(part, int):
            where += f"[{part}]"
        elif not part.startswith("="):
            where += f".{_key(part)}" if where else _key(part)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "value_error":
        problem = str(ctx.get("error", err["msg"]))
    elif kind in _MESSAGES:
        problem = _MESSAGES[kind].format(**ctx)
    else:
        problem = err["msg"][:1].lower() + err["msg"][1:]
    return f"{where or '(root)'}: {problem}"


# -- helpers for the run engine and the protocol ----------------------------------


def exec_argv(recipe: Recipe, pod_root: str) -> list[str]:
    """The argument vector of ``golem.exec``, split as a shell would (no shell runs).

    ``[@]`` becomes ``pod_root`` followed by ``/``, as the seed uses it
    (``"python3 [@]script/run.py"``).
    """
    try:
        argv = _split_exec(recipe.golem.exec)
    except ValueError as exc:
        raise RecipeError(f"golem.exec: {exc}") from None
    prefix = pod_root.rstrip("/") + "/"
    return [word.replace(ROOT_MARKER, prefix) for word in argv]


def find_recipe(names: Iterable[str]) -> str | None:
    """The recipe file among a pod root's entry names; ``None`` if there is none.

    Raises :class:`RecipeError` when two or more names end in ``.recipe``: the
    pod is then neither a plain pod nor a runnable compute pod until one goes.
    """
    found = sorted(n for n in names if n.endswith(RECIPE_SUFFIX) and n != RECIPE_SUFFIX)
    if len(found) > 1:
        raise RecipeError(f"(root): more than one recipe file: {', '.join(found)}; keep one")
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class NameProblem:
    """A recipe ``name`` that clashes with another pod's or with its own pod's name."""

    pod: str
    kind: Literal["duplicate", "mismatch"]
    message: str


def check_unique_names(recipes: Mapping[str, Recipe | Task]) -> list[NameProblem]:
    """Compare the ``name`` of every pod's recipe (``pod name -> recipe``).

    A name that several pods' recipes share is a ``duplicate`` (the registry of
    the original tool keeps only one of them); a name that differs from its
    pod's name is a ``mismatch`` (normal for forks, worth showing). The list is
    sorted by pod name.
    """
    users: dict[str, list[str]] = {}
    for pod, recipe in recipes.items():
        users.setdefault(recipe.name, []).append(pod)
    problems: list[NameProblem] = []
    for pod in sorted(recipes):
        name = recipes[pod].name
        others = sorted(p for p in users[name] if p != pod)
        if others:
            message = f"name: {name!r} is also the name in pod {', '.join(others)}"
            problems.append(NameProblem(pod, "duplicate", message))
        if name != pod:
            message = f"name: {name!r} differs from the pod's name {pod!r}"
            problems.append(NameProblem(pod, "mismatch", message))
    return problems


def autorun_matcher(recipe: Recipe) -> Callable[[str], bool] | None:
    """A predicate telling whether a saved pod path should trigger an auto-run.

    ``None`` when the recipe has no ``sovr.autorun``. Paths are relative to the
    pod root. Files under the output and log directories and the control
    directory never match, or a run's own writes would start the next run.
    """
    autorun = recipe.sovr.autorun
    if autorun is None:
        return None
    golem = recipe.golem
    quiet = {golem.output_dir, golem.log_dir, CONTROL_DIR}
    regex = re.compile("|".join(f"(?:{_glob_regex(p)})" for p in autorun.patterns))

    def matches(path: str) -> bool:
        path = _norm(path)
        if any(path == q or path.startswith(q + "/") for q in quiet):
            return False
        return regex.fullmatch(path) is not None

    return matches


def _glob_regex(pattern: str) -> str:
    """A regular expression for a glob: ``*``, ``?`` and ``[...]`` stay within
    one path component, ``**`` as a whole component spans any number of them."""
    parts = [p for p in pattern.strip("/").split("/") if p not in ("", ".")]
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
        else:
            out.append(_component_regex(part) + ("" if last else "/"))
    return "".join(out)


def _component_regex(part: str) -> str:
    out = []
    i = 0
    while i < len(part):
        char = part[i]
        i += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            # A class ends at the first "]" that is not its first member.
            j = i + 1 if part[i : i + 1] in ("!", "^") else i
            j = part.find("]", j + 1)
            if j < 0:
                out.append(re.escape(char))
                continue
            body = part[i:j]
            negate = body[:1] in ("!", "^")
            # Escape what re would read as nested sets or set operations.
            body = "".join("\\" + c if c in "\\[&~|^" else c for c in body[negate:])
            out.append(f"(?!/)[{'^' if negate else ''}{body}]")
            i = j + 1
        else:
            out.append(re.escape(char))
    return "".join(out)


# -- the original tool's bookkeeping ---------------------------------------------


class SharedPodRecord(_Open):
    """One publication of a pod in ``SharedPods.json``."""

    recipe: dict[str, Any]
    sharing_reference: str


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    # The original tool treats a missing or empty file as an empty mapping.
    if not data.strip():
        return {}
    if len(data) > 64 * MAX_RECIPE_BYTES:
        raise RecipeError(f"(root): {what} larger than {64 * MAX_RECIPE_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8-sig"), parse_constant=_no_constant)
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise RecipeError(f"(root): {what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RecipeError(f"(root): {what} must be a JSON object")
    return doc


def load_registry(data: bytes) -> dict[str, dict[str, Any]]:
    """Read ``Registry.json``: pod name -> that pod's recipe, as JSON data.

    The recipes are kept as the file holds them (the original tool stored them
    unvalidated and sometimes added ``sharing_references``); validate one with
    ``parse_recipe(json.dumps(entry).encode())`` when it is needed.
    """
    doc = _load_object(data, REGISTRY_FILE)
    bad = [pod for pod, entry in doc.items() if not isinstance(entry, dict)]
    if bad:
        raise RecipeError("\n".join(f"{_key(pod)}: must be an object" for pod in bad))
    return doc


def dump_registry(registry: Mapping[str, Recipe | Task | Mapping[str, Any]]) -> bytes:
    """Write ``Registry.json`` in the original tool's format."""
    out = {pod: _as_json(entry) for pod, entry in sorted(registry.items())}
    return (json.dumps(out, indent=2, ensure_ascii=False) + "\n").encode()


def load_shared_pods(data: bytes) -> dict[str, list[SharedPodRecord]]:
    """Read ``SharedPods.json``: pod name -> every publication of that pod."""
    doc = _load_object(data, SHARED_PODS_FILE)
    shared: dict[str, list[SharedPodRecord]] = {}
    problems: list[str] = []
    for pod, records in doc.items():
        if not isinstance(records, list):
            problems.append(f"{_key(pod)}: must be a list")
            continue
        shared[pod] = []
        for i, record in enumerate(records):
            try:
                shared[pod].append(SharedPodRecord.model_validate(record))
            except ValidationError as exc:
                problems.extend(_format(err, f"{_key(pod)}[{i}]") for err in exc.errors())
    if problems:
        raise RecipeError("\n".join(problems))
    return shared


def dump_shared_pods(shared: Mapping[str, Iterable[SharedPodRecord]]) -> bytes:
    """Write ``SharedPods.json`` in the original tool's format."""
    out = {
        pod: [r.model_dump(mode="json", exclude_unset=False) for r in records]
        for pod, records in sorted(shared.items())
    }
    return (json.dumps(out, indent=2, ensure_ascii=False) + "\n").encode()


def add_shared_pod(
    shared: dict[str, list[SharedPodRecord]],
    pod: str,
    recipe: Recipe | Task | Mapping[str, Any],
    sharing_reference: str,
) -> None:
    """Record one more publication of ``pod``, as the original tool's persist did."""
    record = SharedPodRecord(recipe=_as_json(recipe), sharing_reference=sharing_reference)
    shared.setdefault(pod, []).append(record)


def _as_json(entry: Recipe | Task | Mapping[str, Any]) -> dict[str, Any]:
    return entry.to_dict() if isinstance(entry, Recipe | Task) else dict(entry)


def legacy_pod(names: Iterable[str], *, pod: str | None = None) -> tuple[str, str] | None:
    """Recognise a pod the original tool persisted: ``(recipe_file, zip_file)``.

    That tool zipped the pod's directory into ``<pod>.zip`` at the pod root and
    put the recipe beside it as ``recipe.json``. ``names`` are the pod root's
    entries; with ``pod`` given, the zip must be ``<pod>.zip``, otherwise the
    root must hold exactly one ``.zip``. A root that already has a ``*.recipe``
    is a live compute pod, not a legacy one.
    """
    names = list(names)
    if LEGACY_RECIPE_FILE not in names or any(n.endswith(RECIPE_SUFFIX) for n in names):
        return None
    if pod is not None:
        wanted = f"{pod}.zip"
        return (LEGACY_RECIPE_FILE, wanted) if wanted in names else None
    zips = [n for n in names if n.endswith(".zip") and n != ".zip"]
    return (LEGACY_RECIPE_FILE, zips[0]) if len(zips) == 1 else None
