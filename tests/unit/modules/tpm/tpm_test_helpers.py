"""Helpers shared by the TPM engine tests: raw command builders, a fake clock, a seeded RNG."""

from __future__ import annotations

import random
import struct
from typing import Callable


class FakeClock:
    """A settable monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def seeded_rng(seed: int = 1) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


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


