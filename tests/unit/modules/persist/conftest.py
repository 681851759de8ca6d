"""Shared fixtures of the persistence tests: a seeded RNG, a fake clock, an in-memory disk."""

from __future__ import annotations

import itertools
import random

import pytest

from svsm.kernel.hw.blockdev import BlockDevice, MemoryImage
from svsm.modules.persist import Quota, Store

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
BIG = Quota(1 << 20, 1 << 30)


class Env:
    """A deterministic environment for one store: image, RNG, clock, key."""

    def __init__(self, blocks: int = 512, seed: int = 0) -> None:
        self.image = MemoryImage(blocks)
        self.rng = random.Random(seed).randbytes
        self._ticks = itertools.count(1_000_000_000, 1_000)
        self.key = KEY

    def clock(self) -> int:
        return next(self._ticks)

    def device(self, **kw) -> BlockDevice:
        return BlockDevice(self.image, **kw)

    def open(self, key: bytes | None = None, dev: BlockDevice | None = None, **kw) -> Store:
        kw.setdefault("default_quota", BIG)
        return Store.open(dev or self.device(), key or self.key, clock=self.clock, rng=self.rng, **kw)


@pytest.fixture
def env() -> Env:
    return Env()


@pytest.fixture
def make_env() -> type[Env]:
    """The :class:`Env` class, for tests that need several or a custom size."""
    return Env
