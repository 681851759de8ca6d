"""The in-memory copy-on-write B+tree over ``(namespace, key)`` that mirrors the sealed index.

Nodes that are on disk carry their :class:`BlockRef` and are never modified: a change copies the
path from the root down (the copies have ``ref = None`` until the commit writes them), and the
replaced extents are collected in :attr:`Index.freed` to be released once the commit is durable.
Abandoning a batch is therefore just restoring the old root.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from ._format import BLOCKREF, NODE_CAPACITY, NODE_HEADER, BlockRef, LeafEntry

__all__ = ["Index", "Node"]

Key = tuple[bytes, bytes]


def _ekey(e: LeafEntry) -> Key:
    return (e.ns, e.key)


class Node:
    """A leaf (``level == 0``, items are :class:`LeafEntry`) or an internal node (items are Nodes)."""

    __slots__ = ("level", "items", "ref", "size")

    def __init__(self, level: int, items: list, ref: BlockRef | None = None) -> None:
        self.level = level
        self.items = items
        self.ref = ref
        self.size = 0
        self.resize()

    def resize(self) -> None:
        """Recompute the serialized size after a change."""
        if self.level == 0:
            self.size = NODE_HEADER.size + sum(e.wire_size for e in self.items)
        else:
            self.size = NODE_HEADER.size + BLOCKREF.size * len(self.items)

    def min_key(self) -> Key:
        """Smallest key below this node."""
        n = self
        while n.level:
            n = n.items[0]
        return _ekey(n.items[0])


def _split(items: list, size_of) -> tuple[list, list]:
    total = sum(size_of(i) for i in items)
    acc = 0
    for cut, item in enumerate(items):
        acc += size_of(item)
        if acc * 2 >= total:
            break
    cut = min(max(cut, 1), len(items) - 1)
    return items[:cut], items[cut:]


class Index:
    """The record index: lookups, ordered scans, and copy-on-write updates.

    :param root: the tree as loaded (or an empty leaf).
    """

    def __init__(self, root: Node) -> None:
        self.root = root
        #: Extents that the new tree no longer references (records and nodes).
        self.freed: list[BlockRef] = []

    # -- reading -------------------------------------------------------------------------------
    def lookup(self, k: Key) -> LeafEntry | None:
        """The entry for ``k``, or None."""
        node = self.root
        while node.level:
            node = node.items[self._child(node, k)]
        i = bisect.bisect_left(node.items, k, key=_ekey)
        if i < len(node.items) and _ekey(node.items[i]) == k:
            return node.items[i]
        return None

    def scan(self, lo: Key) -> Iterator[LeafEntry]:
        """Entries with key >= ``lo`` in order."""
        yield from self._scan(self.root, lo)

    def _scan(self, node: Node, lo: Key) -> Iterator[LeafEntry]:
        if node.level == 0:
            yield from node.items[bisect.bisect_left(node.items, lo, key=_ekey):]
            return
        for child in node.items[self._child(node, lo):]:
            yield from self._scan(child, lo)

    @staticmethod
    def _child(node: Node, k: Key) -> int:
        return max(0, bisect.bisect_right(node.items, k, key=Node.min_key) - 1)

    # -- copy-on-write updates ----------------------------------------------------------------
    def _writable(self, node: Node) -> Node:
        if node.ref is None:
            return node
        self.freed.append(node.ref)
        return Node(node.level, list(node.items))

    def _path(self, k: Key) -> list[tuple[Node, int]]:
        """Make the root-to-leaf path for ``k`` writable; returns ``[(node, child index)...]``."""
        self.root = self._writable(self.root)
        node, path = self.root, []
        while node.level:
            i = self._child(node, k)
            node.items[i] = self._writable(node.items[i])
            path.append((node, i))
            node = node.items[i]
        path.append((node, -1))
        return path

    def put(self, entry: LeafEntry) -> LeafEntry | None:
        """Insert or replace; returns the replaced entry (its extent goes to :attr:`freed`)."""
        k = _ekey(entry)
        path = self._path(k)
        leaf = path[-1][0]
        i = bisect.bisect_left(leaf.items, k, key=_ekey)
        old = None
        if i < len(leaf.items) and _ekey(leaf.items[i]) == k:
            old = leaf.items[i]
            leaf.items[i] = entry
            self.freed.append(old.ref)
            leaf.size += entry.wire_size - old.wire_size
        else:
            leaf.items.insert(i, entry)
            leaf.size += entry.wire_size
        self._rebalance(path)
        return old

    def delete(self, k: Key) -> LeafEntry | None:
        """Remove ``k`` if present; returns the removed entry."""
        if self.lookup(k) is None:
            return None
        path = self._path(k)
        leaf = path[-1][0]
        i = bisect.bisect_left(leaf.items, k, key=_ekey)
        old = leaf.items.pop(i)
        self.freed.append(old.ref)
        leaf.size -= old.wire_size
        self._rebalance(path)
        return old

    def _rebalance(self, path: list[tuple[Node, int]]) -> None:
        """Split overfull and merge underfull nodes bottom-up, then fix the root."""
        for depth in range(len(path) - 1, 0, -1):
            node = path[depth][0]
            parent, i = path[depth - 1]
            if node.size > NODE_CAPACITY:
                a, b = _split(node.items, self._item_size(node))
                parent.items[i:i + 1] = [Node(node.level, a), Node(node.level, b)]
            elif not node.items:
                parent.items.pop(i)
            elif node.size < NODE_CAPACITY // 4 and len(parent.items) > 1:
                j = i + 1 if i + 1 < len(parent.items) else i - 1
                sib = parent.items[j]
                if node.size + sib.size - NODE_HEADER.size <= NODE_CAPACITY * 3 // 4:
                    sib = self._writable(sib)
                    lo, hi = (node, sib) if j > i else (sib, node)
                    merged = Node(node.level, lo.items + hi.items)
                    parent.items[min(i, j):max(i, j) + 1] = [merged]
            parent.resize()
        while self.root.size > NODE_CAPACITY:
            a, b = _split(self.root.items, self._item_size(self.root))
            self.root = Node(self.root.level + 1, [Node(self.root.level, a), Node(self.root.level, b)])
        while self.root.level and len(self.root.items) <= 1:
            self.root = self.root.items[0] if self.root.items else Node(0, [])

    @staticmethod
    def _item_size(node: Node):
        if node.level == 0:
            return lambda e: e.wire_size
        return lambda n: BLOCKREF.size

    def dirty(self) -> list[Node]:
        """Nodes without an extent, children before parents (the order they must be written)."""
        out: list[Node] = []

        def walk(n: Node) -> None:
            if n.ref is not None:
                return
            if n.level:
                for c in n.items:
                    walk(c)
            out.append(n)

        if self.root.items:
            walk(self.root)
        return out

    def depth(self) -> int:
        """Levels of the tree (1 for a single leaf)."""
        return self.root.level + 1
