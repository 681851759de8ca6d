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


class FakePsp:
    """Reports an anchor can check without the PSP model: HMAC over (measurement, report_data, vmpl).

    The real chain (ARK -> ASK -> VCEK, ECDSA P-384) is exercised in test_anchor_psp.py.
    """

    def __init__(self, measurement: bytes = b"M" * 48, secret: bytes = b"psp-secret") -> None:
        self.measurement, self._secret, self.vmpl = measurement, secret, 0

    def attest(self, report_data: bytes) -> tuple[bytes, bytes]:
        body = self.measurement + report_data + bytes([self.vmpl])
        import hmac as _h

        return body + _h.new(self._secret, body, "sha256").digest(), b""

    def verifier(self):
        import hmac as _h
        from types import SimpleNamespace

        from svsm.sdk.attestation import VerificationError

        def verify(report: bytes, vcek: bytes):
            body, tag = report[:-32], report[-32:]
            if len(report) != 48 + 64 + 1 + 32 or not _h.compare_digest(_h.new(self._secret, body, "sha256").digest(), tag):
                raise VerificationError("bad fake report")
            return SimpleNamespace(measurement=body[:48], report_data=body[48:112], vmpl=body[112], policy=0x30000)

        return verify


@pytest.fixture
def fake_psp() -> type[FakePsp]:
    return FakePsp
