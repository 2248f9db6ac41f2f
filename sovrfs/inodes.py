"""The inode table: which kernel inode number stands for which pod entry.

The kernel knows entries by inode number; pod stores know them by pod and
path. A :class:`Node` is one inode. It does not store its path: it stores the
names it is known by, each a (parent node, name) pair, and its path is found
by walking up to the pod's node. Renaming a directory therefore renames
everything below it at once, without touching the descendants.

An entry whose store gives it an ``identity`` (the embedded store: device and
inode number of the local file) keeps one node for all its names, so hard
links share an inode number as they must. An entry whose identity changed
behind the mount's back (a file replaced from outside) gets a new node; the
old one is *detached* and answers from its last known attributes until the
kernel forgets it.

Lookup counts follow the FUSE rules: every reply that hands the kernel an
inode (lookup, create, mkdir, symlink, link, mknod, readdirplus entries)
increments it, ``forget`` decrements it, and a node with no lookups and no
open handles is dropped.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING

import pyfuse3

from .errors import NotFound
from .store.base import Attr, Kind

if TYPE_CHECKING:
    from .control import Virtual


class _NoChildren(dict[str, "Node"]):
    """The children of a node that is not a directory: always empty."""

    def __setitem__(self, name: str, node: Node) -> None:
        raise TypeError(f"{name!r}: only a directory node has children")

    def setdefault(self, name: str, default: Node | None = None) -> Node:  # type: ignore[override]
        raise TypeError(f"{name!r}: only a directory node has children")

    def update(self, *args: object, **kwargs: object) -> None:
        raise TypeError("only a directory node has children")


_NO_CHILDREN = _NoChildren()


class Node:
    """One inode known to the kernel (or about to be)."""

    __slots__ = (
        "attr",
        "children",
        "identity",
        "ino",
        "kind",
        "lookups",
        "names",
        "open_count",
        "pod",
        "version",
        "virtual",
    )

    def __init__(
        self,
        ino: int,
        kind: Kind,
        pod: str | None,
        *,
        identity: Hashable | None = None,
        virtual: Virtual | None = None,
    ) -> None:
        self.ino = ino
        self.kind = kind
        #: The pod this entry belongs to; ``None`` for the mount root and the
        #: root control directory.
        self.pod = pod
        self.identity = identity
        self.virtual = virtual
        self.names: list[tuple[Node, str]] = []
        #: Entries by name; files and symlinks share one empty mapping that
        #: refuses writes (most nodes are files, and each dict costs 64 bytes).
        self.children: dict[str, Node] = {} if kind is Kind.DIR else _NO_CHILDREN
        self.lookups = 0
        self.open_count = 0
        self.attr: Attr | None = None
        #: (size, mtime_ns) of a file when it was last opened or written, to
        #: decide whether the kernel may keep its cached pages.
        self.version: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"<Node {self.ino} {self.pod}:{self.name}>"

    @property
    def name(self) -> str | None:
        return self.names[0][1] if self.names else None

    @property
    def parent(self) -> Node | None:
        return self.names[0][0] if self.names else None

    @property
    def detached(self) -> bool:
        """True once the entry lost its last name (unlinked or replaced)."""
        return self.ino != pyfuse3.ROOT_INODE and not self.names


class InodeTable:
    """Every node the kernel may ask about, by inode number."""

    def __init__(self) -> None:
        self.root = Node(pyfuse3.ROOT_INODE, Kind.DIR, None)
        self.root.lookups = 1  # the kernel never forgets the root
        self._nodes: dict[int, Node] = {self.root.ino: self.root}
        self._by_identity: dict[Hashable, Node] = {}
        self._next_ino = pyfuse3.ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def get(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise NotFound(f"stale inode {ino}") from None

    def _new(
        self, kind: Kind, pod: str | None, identity: Hashable | None, virtual: Virtual | None
    ) -> Node:
        node = Node(self._next_ino, kind, pod, identity=identity, virtual=virtual)
        self._next_ino += 1
        self._nodes[node.ino] = node
        if identity is not None:
            self._by_identity[identity] = node
        return node

    def locate(self, node: Node) -> tuple[str, str]:
        """The (pod, path) of a node; ``NotFound`` for a detached one."""
        parts: list[str] = []
        cur = node
        while True:
            parent = cur.parent
            if parent is None:
                raise NotFound(f"{node!r} has no name any more")
            if parent is self.root:
                assert cur.name is not None
                parts.reverse()
                return cur.name, "/" + "/".join(parts)
            assert cur.name is not None
            parts.append(cur.name)
            cur = parent

    def path_of(self, parent: Node, name: str) -> tuple[str, str]:
        """The (pod, path) of entry ``name`` in directory ``parent``."""
        pod, ppath = self.locate(parent)
        return pod, (ppath.rstrip("/") + "/" + name)

    def child(
        self,
        parent: Node,
        name: str,
        kind: Kind,
        *,
        pod: str | None,
        identity: Hashable | None = None,
        virtual: Virtual | None = None,
    ) -> Node:
        """The node for ``name`` in ``parent``, creating or replacing it as needed.

        The caller counts the lookup.
        """
        node = parent.children.get(name)
        if node is not None:
            same = node.kind is kind and (
                identity is None or node.identity is None or node.identity == identity
            )
            if same and node.virtual is virtual:
                return node
            self.drop_name(parent, name)
        if identity is not None:
            linked = self._by_identity.get(identity)
            if linked is not None and linked.kind is kind and linked.virtual is None:
                linked.names.append((parent, name))
                parent.children[name] = linked
                return linked
        node = self._new(kind, pod, identity, virtual)
        node.names.append((parent, name))
        parent.children[name] = node
        return node

    def drop_name(self, parent: Node, name: str) -> Node | None:
        """Forget that ``parent`` has an entry ``name``; returns its node if known."""
        node = parent.children.pop(name, None)
        if node is None:
            return None
        node.names = [(p, n) for (p, n) in node.names if not (p is parent and n == name)]
        if (
            not node.names
            and node.identity is not None
            and (self._by_identity.get(node.identity) is node)
        ):
            del self._by_identity[node.identity]
        self._maybe_free(node)
        return node

    def move(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str) -> None:
        """Record a rename; whatever stood at the target loses that name."""
        node = old_parent.children.pop(old_name, None)
        if new_parent.children.get(new_name) is not node:
            self.drop_name(new_parent, new_name)
        if node is None:
            return
        node.names = [
            (new_parent, new_name) if (p is old_parent and n == old_name) else (p, n)
            for (p, n) in node.names
        ]
        new_parent.children[new_name] = node
        if node.pod is not None and old_parent is self.root:
            self._rename_pod(node, new_name)

    def _rename_pod(self, pod_node: Node, new_pod: str) -> None:
        old_pod = pod_node.pod
        stack = [pod_node]
        while stack:
            cur = stack.pop()
            if cur.pod == old_pod:
                cur.pod = new_pod
            stack.extend(cur.children.values())

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - count)
        self._maybe_free(node)

    def _maybe_free(self, node: Node) -> None:
        """Drop a node nobody refers to any more."""
        if node.lookups or node.open_count or node is self.root:
            return
        if node.names and node.children:
            # Still reachable and still the parent of known nodes: keep it so
            # their paths can be found.
            return
        self._nodes.pop(node.ino, None)
        if node.identity is not None and self._by_identity.get(node.identity) is node:
            del self._by_identity[node.identity]
        for parent, name in list(node.names):
            if parent.children.get(name) is node:
                del parent.children[name]
                self._maybe_free(parent)
        node.names = []

    def find(self, pod: str, path: str | None) -> Node | None:
        """The node of ``path`` in ``pod`` if the kernel knows it, without any I/O."""
        node = self.root.children.get(pod)
        if node is None or path is None:
            return node
        for part in path.strip("/").split("/"):
            if not part:
                continue
            node = node.children.get(part)
            if node is None:
                return None
        return node
