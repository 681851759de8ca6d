"""Fixtures for the TPM engine tests: a started engine, a raw command helper, and ESAPI over a Python TCTI."""

from __future__ import annotations

import random
import struct
from typing import Callable, Iterator

import pytest

from svsm.modules.tpm import Tpm


class FakeClock:
    """A settable monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def seeded_rng(seed: int = 1) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tpm(clock: FakeClock) -> Tpm:
    t = Tpm(rng=seeded_rng(), clock=clock)
    assert t.execute(bytes.fromhex("80010000000c000001440000")) == bytes.fromhex("80010000000a00000000")
    return t


def cmd(cc: int, handles: tuple[int, ...] = (), params: bytes = b"", sessions: bytes | None = None) -> bytes:
    """Build a command; ``sessions`` is the raw auth area entries (None: no sessions)."""
    body = b"".join(struct.pack(">I", h) for h in handles)
    if sessions is not None:
        body += struct.pack(">I", len(sessions)) + sessions
    body += params
    tag = 0x8001 if sessions is None else 0x8002
    return struct.pack(">HII", tag, 10 + len(body), cc) + body


def pw(auth: bytes = b"", attrs: int = 1) -> bytes:
    """A TPM_RS_PW auth entry."""
    return struct.pack(">IH", 0x40000009, 0) + bytes((attrs,)) + struct.pack(">H", len(auth)) + auth


def rc_of(rsp: bytes) -> int:
    return struct.unpack(">I", rsp[6:10])[0]


@pytest.fixture
def run(tpm: Tpm) -> Callable[..., bytes]:
    """run(cc, handles, params, sessions) -> response bytes."""
    def _run(cc: int, handles: tuple[int, ...] = (), params: bytes = b"", sessions: bytes | None = None) -> bytes:
        return tpm.execute(cmd(cc, handles, params, sessions))
    return _run


@pytest.fixture
def esys(tpm: Tpm) -> Iterator[object]:
    """tpm2-pytss ESAPI driving the engine in-process through a Python TCTI."""
    from svsm.sdk.testing import require_module
    require_module("tpm2_pytss")
    from tpm2_pytss import ESAPI
    from tpm2_pytss.TCTI import PyTCTI

    class EngineTCTI(PyTCTI):
        def __init__(self) -> None:
            super().__init__(max_size=4096)
            self._rsp = b""

        def do_transmit(self, command: bytes) -> None:
            self._rsp = tpm.execute(bytes(command))

        def do_receive(self, timeout: int) -> bytes:
            return self._rsp

    with ESAPI(EngineTCTI()) as e:
        yield e
