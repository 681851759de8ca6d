"""Crash tests: the workload both crash suites replay, and how to read a store back."""

from __future__ import annotations

import hashlib

import pytest

from svsm.modules.persist import Delete, Put, Store


def batch_for(gen: int) -> list[Put | Delete]:
    """The deterministic batch that produces generation ``gen`` (>= 2) from ``gen - 1``.

    Mixes single-block and multi-block records, overwrites, deletes and multi-record batches so
    that commits split and merge index nodes.
    """
    ops: list[Put | Delete] = []
    for j in range(1 + gen % 3):
        n = (gen * 7 + j * 13) % 41
        if (gen + j) % 5 == 0:
            ops.append(Delete("tpm" if n % 2 else "uefi", f"key-{n:03d}"))
        else:
            size = (gen * 997 + j * 331) % 9000
            value = hashlib.sha256(f"{gen}/{j}".encode()).digest() * (size // 32 + 1)
            ops.append(Put("tpm" if n % 2 else "uefi", f"key-{n:03d}" + "x" * (n * 5), value[:size]))
    return ops


def model_at(gen: int) -> dict[tuple[str, str], bytes]:
    """The exact contents a store must hold at ``gen`` (generation 1 is the empty store)."""
    model: dict[tuple[str, str], bytes] = {}
    for g in range(2, gen + 1):
        apply(model, batch_for(g))
    return model


def apply(model: dict[tuple[str, str], bytes], ops: list[Put | Delete]) -> None:
    for op in ops:
        if isinstance(op, Put):
            model[(op.ns, op.key)] = op.value
        else:
            model.pop((op.ns, op.key), None)


def contents(store: Store) -> dict[tuple[str, str], bytes]:
    """Everything the store holds, read and authenticated."""
    out = {}
    for ns in ("tpm", "uefi"):
        for key in store.list(ns):
            out[(ns, key)] = store.get(ns, key)
    return out


@pytest.fixture
def workload():
    class W:
        batch = staticmethod(batch_for)
        model = staticmethod(model_at)
        read = staticmethod(contents)
        apply_ops = staticmethod(apply)

    return W
