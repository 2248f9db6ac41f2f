"""The compute-pod protocol: persist, share, fork, payloads, registry, tasks.

This is the seed's Sovr protocol on top of a pod store and a mount::

    persist POD      sync the pod, record its recipe in the registry, share
                     it when the recipe is public, publish golem.output.share
    fork REF [NAME]  bring a shared pod in as the user's own (never runs by itself)
    payloads         before a run, fetch golem.payload refs into payload/external/
    registry         ComputePodRegistry/Registry.json and SharedPods/SharedPods.json
    import POD DEST  turn a pod persisted by the original tool (zip) into a live one
    persist-self     publish sovrfs's own source as the pod "Sovr"
    tasks            run pods in a chain, each one's output feeding the next

Two rules shape the code. Pod-level operations (create, share, fork, sync)
go through the :class:`~sovrfs.store.base.PodStore` API; copying trees goes
through the *mount* with ordinary file calls in worker threads
(:mod:`.tree`), since the daemon serving those calls is this very process:
a blocking call on the trio thread would wait for a FUSE reply that only the
trio thread can give. Those threads have a capacity limiter of their own, so
they can never take all of trio's default worker threads, which the store
needs to answer them.

Modules: :mod:`.books` (the two bookkeeping files), :mod:`.payloads`,
:mod:`.tasks`, :mod:`.tree` (blocking tree work), :mod:`.progress`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .. import __version__
from ..errors import (
    AlreadyExists,
    InvalidName,
    NotADirectory,
    NotFound,
    RecipeError,
    from_os_error,
)
from ..recipe import (
    CONTROL_DIR,
    LEGACY_RECIPE_FILE,
    RECIPE_SUFFIX,
    REGISTRY_POD,
    SHARED_PODS_POD,
    Recipe,
    SharedPodRecord,
    Task,
    check_unique_names,
    find_recipe,
    is_sharing_ref,
    legacy_pod,
    parse_recipe,
)
from ..store.base import POD_NAME_MAX, check_pod_name
from . import tree
from .books import Books
from .payloads import Payloads
from .progress import Operation, Progress
from .tasks import Tasks

if TYPE_CHECKING:
    from ..app import App
    from ..runs.record import RunRecord
    from ..store.base import PodStore

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The pod that persist-self fills with sovrfs's source.
SELF_POD = "Sovr"
#: Suffix of the pod that golem.output.share publishes.
OUTPUT_SUFFIX = "-output"
#: Threads copying through the mount at once. Small on purpose: each one
#: keeps FUSE requests, and the store's own worker threads, busy.
IO_THREADS = 2


def _protect_control(rel: str) -> bool:
    """Never touch a pod root's virtual control directory."""
    return rel == CONTROL_DIR


def with_suffix(name: str, suffix: str) -> str:
    """``name + suffix``, shortening ``name`` so the result is a valid pod name."""
    room = POD_NAME_MAX - len(suffix.encode())
    base = name.encode()[:room].decode(errors="ignore").rstrip("-.")
    return base + suffix


@dataclass(frozen=True)
class PersistResult:
    """What a persist did."""

    pod: str
    recipe: str
    #: The pod's new sharing reference, when its recipe is public.
    ref: str | None = None
    #: The pod that golem.output.share was published as, and its reference.
    output_pod: str | None = None
    output_ref: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "recipe": self.recipe,
            "ref": self.ref,
            "output_pod": self.output_pod,
            "output_ref": self.output_ref,
        }


class Protocol:
    """The compute-pod protocol of one mounted store (see the module docstring)."""

    def __init__(self, store: PodStore, app: App) -> None:
        self.store = store
        self.app = app
        self.books = Books(store)
        self._progress = Progress()
        self._io_limiter = trio.CapacityLimiter(IO_THREADS)
        self._fork_lock = trio.Lock()
        self._scan_problems: dict[str, list[str]] = {}
        self.payloads = Payloads(store, app, self._progress, self._io, self._fork_as)
        self.tasks = Tasks(
            store, app, self.payloads, self._io, self.fork, self._state_dir() / "tasks.json"
        )

    def _state_dir(self) -> Path:
        return Path(self.app.settings.state_dir)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work (the jobs of running tasks), until cancelled."""
        await self.tasks.serve(task_status=task_status)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking tree work (through the mount) in a worker thread.

        The thread is abandoned on cancellation: when the daemon stops, the
        mount goes away under it and its calls fail at once.
        """
        try:
            return await trio.to_thread.run_sync(
                functools.partial(fn, *args), limiter=self._io_limiter, abandon_on_cancel=True
            )
        except OSError as exc:
            raise from_os_error(exc) from exc

    def progress(self) -> list[dict[str, Any]]:
        """Long operations under way, for ``status.json``."""
        return self._progress.snapshot()

    # -- pods ----------------------------------------------------------------

    async def _exists(self, pod: str) -> bool:
        try:
            await self.store.stat(pod, "/")
        except NotFound:
            return False
        return True

    async def _root_names(self, pod: str) -> list[str]:
        return [name for name, _ in await self.store.listdir(pod, "/")]

    async def _copy_tree(
        self, op: Operation, src: str, dst: str, exclude: tree.Filter | None = None
    ) -> tree.Changes:
        op.phase = "copy"
        op.set_total(*await self._io(tree.tree_size, src, exclude))
        return await self._io(
            functools.partial(tree.mirror, exclude=exclude, protect=_protect_control, op=op),
            src,
            dst,
        )

    # -- persist -------------------------------------------------------------

    async def persist(self, pod: str) -> PersistResult:
        """Make the pod durable, register it, share it if public, publish its output share."""
        _, recipe = await self.app.load_recipe(pod)
        with self._progress.track("persist", pod) as op:
            op.phase = "sync"
            await self.store.sync(pod)
            op.phase = "register"
            await self.books.register(pod, recipe)
            ref = output_pod = output_ref = None
            if recipe.public:
                op.phase = "share"
                ref = await self.store.share_pod(pod)
                await self.books.add_shared(pod, recipe, ref)
            if isinstance(recipe, Recipe) and recipe.golem.output_share is not None:
                output_pod, output_ref = await self._share_output(pod, recipe, op)
        log.info(
            "pod %s persisted%s%s",
            pod,
            f", shared as {ref}" if ref else "",
            f", output shared as {output_pod} {output_ref}" if output_ref else "",
        )
        return PersistResult(pod, recipe.name, ref, output_pod, output_ref)

    async def _share_output(self, pod: str, recipe: Recipe, op: Operation) -> tuple[str, str]:
        share = recipe.golem.output_share
        assert share is not None
        out_pod = with_suffix(pod, OUTPUT_SUFFIX)
        src = await self._io(_share_source, self.app.pod_root(pod), share)
        if await self._exists(out_pod):
            shared = await self.books.shared()
            ours = any(r.recipe.get("output_of") == pod for r in shared.get(out_pod, []))
            if not ours:
                raise AlreadyExists(
                    f"golem.output.share: pod {out_pod} exists and is not the output pod of "
                    f"{pod}; rename or remove it to publish the output"
                )
        else:
            await self.store.create_pod(out_pod)
        await self._copy_tree(op, src, self.app.pod_root(out_pod))
        op.phase = "share output"
        await self.store.sync(out_pod)
        ref = await self.store.share_pod(out_pod)
        about = {
            "name": out_pod,
            "description": f"{share}/ of compute pod {pod} ({recipe.name})",
            "public": True,
            "output_of": pod,
        }
        await self.books.add_shared(out_pod, about, ref)
        return out_pod, ref

    async def pod_ref(self, pod: str) -> str | None:
        """The pod's latest sharing reference, if it was ever shared."""
        refs = await self.books.refs(pod)
        return refs[-1] if refs else None

    # -- fork ----------------------------------------------------------------

    async def fork(self, ref_line: str) -> str:
        """Fork the pod shared as ``REF`` (``"REF"`` or ``"REF NAME"``); return its name.

        The name is ``NAME``, else the name the pod was shared under; if a pod
        of that name exists, ``<name>-fork``, ``<name>-fork-2``, ... is used
        instead, so nothing is ever overwritten. The new pod never runs by
        itself: runs start only on request.
        """
        words = ref_line.split()
        if not 1 <= len(words) <= 2:
            raise InvalidName(f"expected 'REF' or 'REF NAME', got {ref_line.strip()[:100]!r}")
        ref = words[0]
        if not is_sharing_ref(ref):
            raise InvalidName(f"not a sharing reference (64 hexadecimal digits): {ref[:80]!r}")
        ref = ref.lower()
        wanted = check_pod_name(words[1]) if len(words) == 2 else None
        if wanted is None:
            wanted = check_pod_name(await self.store.shared_pod_name(ref))
        name = await self._fork_as(ref, wanted, free=True)
        if name != wanted:
            log.info("pod %s exists already; forked %s as %s", wanted, ref, name)
        return name

    async def _fork_as(self, ref: str, name: str, *, free: bool = False) -> str:
        """Fork ``ref`` into ``name`` (or, with ``free``, the first free variant of it)."""
        with self._progress.track("fork", name) as op:
            async with self._fork_lock:
                candidates = _fork_names(name) if free else iter([name])
                for candidate in candidates:
                    if free and await self._exists(candidate):
                        continue
                    op.pod = candidate
                    try:
                        await self.store.fork_pod(ref, candidate)
                    except AlreadyExists:
                        if not free:
                            raise
                        continue
                    self.app.mark_forked(candidate)
                    log.info("forked %s as pod %s", ref, candidate)
                    return candidate
        raise AlreadyExists(f"no free name for a fork of {ref} as {name}")  # pragma: no cover

    # -- payloads ------------------------------------------------------------

    async def prepare_payloads(self, pod: str, recipe: Recipe) -> list[str]:
        """Fetch the recipe's external payloads into ``payload/external/``; return notes."""
        return await self.payloads.prepare(pod, recipe)

    # -- registry ------------------------------------------------------------

    async def registry(self) -> dict[str, Any]:
        """The compute-pod registry as ``MOUNT/.sovr/registry.json`` shows it."""
        problems: list[str] = []
        try:
            registered = await self.books.registry()
        except RecipeError as exc:
            registered = {}
            problems.append(f"Registry.json: {exc}")
        try:
            shared = await self.books.shared()
        except RecipeError as exc:
            shared = {}
            problems.append(f"SharedPods.json: {exc}")
        existing = {info.name for info in await self.store.list_pods()}

        recipes: dict[str, Recipe | Task] = {}
        pod_problems: dict[str, list[str]] = {}
        for pod, entry in registered.items():
            pod_problems[pod] = []
            try:
                recipes[pod] = parse_recipe(json.dumps(entry).encode(), source=pod)
            except RecipeError as exc:
                pod_problems[pod].extend(str(exc).splitlines())
        for problem in check_unique_names(recipes):
            pod_problems[problem.pod].append(problem.message)
        for pod, found in self._scan_problems.items():
            pod_problems.setdefault(pod, []).extend(found)

        pods = []
        for pod in sorted(pod_problems):
            entry = registered.get(pod, {})
            legacy = False
            if pod not in existing:
                pod_problems[pod].append("the pod no longer exists")
            else:
                legacy = legacy_pod(await self._root_names(pod), pod=pod) is not None
            pods.append(
                {
                    "pod": pod,
                    "name": entry.get("name"),
                    "description": entry.get("description"),
                    "public": bool(entry.get("public", False)),
                    "task": "pods" in entry and "golem" not in entry,
                    "refs": [r.sharing_reference for r in shared.get(pod, [])],
                    "last_run": self._last_run(pod),
                    "legacy": legacy,
                    "output": _output_of(pod, shared),
                    "problems": list(dict.fromkeys(pod_problems[pod])),
                }
            )
        return {"pods": pods, "problems": problems}

    def _last_run(self, pod: str) -> str | None:
        task = self.tasks.status(pod)
        if task is not None:
            return str(task["state"])
        record = self.app.engine.current(pod)
        return record.state.value if record is not None else None

    async def rebuild_registry(self) -> dict[str, Any]:
        """Scan every pod for a recipe (or a legacy recipe.json + zip); rewrite Registry.json."""
        found: dict[str, Recipe | Task | dict[str, Any]] = {}
        problems: dict[str, list[str]] = {}
        with self._progress.track("registry", "*") as op:
            pods = [p.name for p in await self.store.list_pods()]
            op.files_total = len(pods)
            for pod in pods:
                if pod not in (REGISTRY_POD, SHARED_PODS_POD):
                    await self._scan_pod(pod, found, problems)
                op.add(files=1)
            await self.books.replace_registry(found)
        self._scan_problems = problems
        log.info("registry rebuilt: %d compute pods, %d with problems", len(found), len(problems))
        return await self.registry()

    async def _scan_pod(
        self,
        pod: str,
        found: dict[str, Recipe | Task | dict[str, Any]],
        problems: dict[str, list[str]],
    ) -> None:
        try:
            names = await self._root_names(pod)
            recipe_file = find_recipe(names)
            legacy = legacy_pod(names, pod=pod) or legacy_pod(names)
            if recipe_file is None and legacy is None:
                return
            source = recipe_file or LEGACY_RECIPE_FILE
            data = await self.store.read_bytes(pod, "/" + source)
        except RecipeError as exc:
            problems[pod] = str(exc).splitlines()
            return
        except NotFound:
            return  # removed while scanning
        try:
            found[pod] = parse_recipe(data, source=f"{pod}/{source}")
        except RecipeError as exc:
            problems[pod] = [f"{source}: {line}" for line in str(exc).splitlines()]
            if recipe_file is None:
                # The original tool never validated recipe.json; keep what it
                # holds, as that tool's registry would.
                raw = _json_object(data)
                if raw is not None:
                    found[pod] = raw

    # -- import of legacy pods -----------------------------------------------

    async def import_legacy(self, pod: str, dest: str) -> None:
        """Unpack a pod persisted by the original tool into the new compute pod ``dest``."""
        check_pod_name(dest)
        names = await self._root_names(pod)
        legacy = legacy_pod(names, pod=pod) or legacy_pod(names)
        if legacy is None:
            raise RecipeError(
                f"(root): pod {pod} is not a pod of the original tool: it needs "
                f"{LEGACY_RECIPE_FILE} and one .zip at its root (and no *.recipe)"
            )
        recipe_file, zip_file = legacy
        data = await self.store.read_bytes(pod, "/" + recipe_file)
        try:
            recipe = parse_recipe(data, source=f"{pod}/{recipe_file}")
        except RecipeError as exc:
            raise RecipeError(f"{recipe_file}: {exc}") from None
        await self.store.create_pod(dest)
        try:
            with self._progress.track("import", dest) as op:
                zip_path = os.path.join(self.app.pod_root(pod), zip_file)
                op.set_total(*await self._io(tree.zip_totals, zip_path))
                op.phase = "unpack"
                await self._io(tree.unpack_zip, zip_path, self.app.pod_root(dest), op)
                op.phase = "recipe"
                await self._io(
                    _write_recipe,
                    self.app.pod_root(dest),
                    recipe.name + RECIPE_SUFFIX,
                    recipe.to_json().encode(),
                )
                await self.store.sync(dest)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.store.delete_pod(dest)
            raise
        log.info("imported legacy pod %s as compute pod %s", pod, dest)

    # -- persist-self --------------------------------------------------------

    async def persist_self(self) -> str:
        """Publish this sovrfs's source as the pod ``Sovr``; return its sharing reference."""
        package, keep = await trio.to_thread.run_sync(_self_source)
        top = package.parent

        def exclude(rel: str) -> bool:
            first, _, rest = rel.partition("/")
            return first not in keep or (bool(rest) and _secret_or_junk(rest))

        if not await self._exists(SELF_POD):
            await self.store.create_pod(SELF_POD)
        with self._progress.track("persist-self", SELF_POD) as op:
            await self._copy_tree(op, str(top), self.app.pod_root(SELF_POD), exclude)
            op.phase = "share"
            await self.store.sync(SELF_POD)
            ref = await self.store.share_pod(SELF_POD)
        about = {
            "name": SELF_POD,
            "description": f"source of sovrfs {__version__}",
            "version": __version__,
            "public": True,
        }
        await self.books.add_shared(SELF_POD, about, ref)
        log.info("sovrfs %s source persisted as pod %s, shared as %s", __version__, SELF_POD, ref)
        return ref

    # -- tasks ---------------------------------------------------------------

    async def start_task(self, pod: str, task: Task) -> RunRecord:
        """Start a task pod's chain; return the record of its first step's run."""
        return await self.tasks.start(pod, task)

    async def cancel_task(self, pod: str) -> bool:
        """Stop a running task; ``False`` if the pod runs no task."""
        return await self.tasks.cancel(pod)

    def task_status(self, pod: str) -> dict[str, Any] | None:
        """Per-step status of the pod's running or last task, if any."""
        return self.tasks.status(pod)


def _fork_names(name: str) -> Any:
    yield name
    yield with_suffix(name, "-fork")
    n = 2
    while True:
        yield with_suffix(name, f"-fork-{n}")
        n += 1


#: What persist-self never publishes inside the package: caches, build
#: leftovers, and anything that could hold a secret or a local setting.
_JUNK_DIRS = {"__pycache__", ".venv", "venv", "build", "dist", "node_modules"}
_SECRET_SUFFIXES = (
    ".pyc", ".pyo", ".so.tmp", ".egg-info", ".env", ".ini", ".cfg", ".conf", ".toml",
    ".yaml", ".yml", ".pem", ".key", ".p12", ".pfx", ".crt", ".kdbx", ".db", ".sqlite",
    ".log", ".swp", ".bak",
)  # fmt: skip


def _secret_or_junk(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return (
        name.startswith(".")
        or name in _JUNK_DIRS
        or name.lower().endswith(_SECRET_SUFFIXES)
        or name.lower() in {"credentials", "secrets.json", "config.json", "keystore"}
    )


def _share_source(root: str, share: str) -> str:
    src = tree.resolve(root, share, shown=f"golem.output.share: {share}/")
    if not os.path.isdir(src):
        raise NotADirectory(f"golem.output.share: {share} is not a directory")
    return src


def _self_source() -> tuple[Path, set[str]]:
    """The package directory, and the top-level names persist-self publishes."""
    package = Path(__file__).resolve().parent.parent
    top = package.parent
    keep = {package.name}
    keep.update(name for name in ("pyproject.toml", "README.md") if (top / name).is_file())
    return package, keep


def _write_recipe(root: str, name: str, data: bytes) -> None:
    names = os.listdir(root)
    if find_recipe(names) is not None:
        log.info("the archive brought its own recipe; %s not written", name)
        return
    tree.write_file(os.path.join(root, name), data)


def _output_of(pod: str, shared: dict[str, list[SharedPodRecord]]) -> dict[str, Any] | None:
    """The pod that ``pod``'s output share was published as, with its references."""
    for name, records in shared.items():
        refs = [r.sharing_reference for r in records if r.recipe.get("output_of") == pod]
        if refs:
            return {"pod": name, "refs": refs}
    return None


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


__all__ = ["SELF_POD", "PersistResult", "Protocol"]
