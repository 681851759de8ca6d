"""The copy-on-write B+tree: invariants under random updates, and old trees left untouched."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.modules.persist._format import NODE_CAPACITY, BlockRef, LeafEntry
from svsm.modules.persist._index import Index, Node

REF = BlockRef(2, 1, 28, bytes(32))


def entry(key: bytes, gen: int = 1) -> LeafEntry:
    return LeafEntry(b"ns", key, gen, 0, REF)


def check(index: Index, model: dict[bytes, int]) -> None:
    def walk(n: Node, level: int) -> list[LeafEntry]:
        assert n.level == level and n.size <= NODE_CAPACITY
        if level == 0:
            return list(n.items)
        assert n.items, "empty internal node"
        out = []
        for c in n.items:
            assert c.items, "empty child"
            out += walk(c, level - 1)
        return out

    got = walk(index.root, index.root.level)
    assert [e.key for e in got] == sorted(model)
    assert all(index.lookup((b"ns", k)).generation == g for k, g in model.items())


def commit(index: Index) -> None:
    """Pretend every dirty node was written (gives it an extent)."""
    for i, n in enumerate(index.dirty()):
        n.ref = BlockRef(100 + i, 1, 28, bytes(32))
    index.freed = []


keys = st.binary(min_size=1, max_size=250)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), keys), max_size=300))
def test_random_updates_keep_invariants(ops) -> None:
    index, model = Index(Node(0, [])), {}
    for gen, (is_put, key) in enumerate(ops):
        if is_put:
            index.put(entry(key, gen))
            model[key] = gen
        else:
            assert (index.delete((b"ns", key)) is None) == (key not in model)
            model.pop(key, None)
        if gen % 7 == 0:
            commit(index)
    check(index, model)
    assert [e.key for e in index.scan((b"ns", b""))] == sorted(model)


def test_copy_on_write_leaves_committed_tree_unchanged() -> None:
    index = Index(Node(0, []))
    for i in range(400):
        index.put(entry(b"%04d" % i + b"x" * 60))
    commit(index)
    assert index.depth() >= 2
    old_root = index.root
    before = [e.key for e in Index(old_root).scan((b"", b""))]
    index.put(entry(b"0100" + b"x" * 60, gen=9))
    index.delete((b"ns", b"0200" + b"x" * 60))
    assert index.root is not old_root
    assert [e.key for e in Index(old_root).scan((b"", b""))] == before
    assert Index(old_root).lookup((b"ns", b"0100" + b"x" * 60)).generation == 1
    # the replaced record, the replaced entry's path and the deleted entry are queued for release
    assert REF in index.freed and any(r.lba >= 100 for r in index.freed)


def test_deleting_everything_collapses_to_an_empty_leaf() -> None:
    index = Index(Node(0, []))
    ks = [b"%05d" % i * 10 for i in range(300)]
    for k in ks:
        index.put(entry(k))
    commit(index)
    for k in ks:
        index.delete((b"ns", k))
    assert index.root.level == 0 and index.root.items == [] and index.dirty() == []
