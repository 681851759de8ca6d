"""Stateful check of object and session lifecycles (create, save, load, flush) against a model."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule
from tpm_test_helpers import cmd, pw, rc_of, seeded_rng

from svsm.modules.tpm import Tpm

SEALED = bytes.fromhex("0008000b00000052000000100000")
PRIMARY = b"\x00\x04\x00\x00\x00\x00" + struct.pack(">H", len(SEALED)) + SEALED + b"\x00\x00" + bytes(4)
SESSION = b"\x00\x10" + bytes(16) + b"\x00\x00" + b"\x01" + b"\x00\x10" + b"\x00\x0b"  # policy session


class Lifecycle(RuleBasedStateMachine):
    objects = Bundle("objects")
    object_blobs = Bundle("object_blobs")
    sessions = Bundle("sessions")
    session_blobs = Bundle("session_blobs")

    def __init__(self) -> None:
        super().__init__()
        self.tpm = Tpm(rng=seeded_rng(11))
        self.tpm.execute(bytes.fromhex("80010000000c000001440000"))
        self.loaded: set[int] = set()
        self.live_sessions: dict[int, str] = {}

    def _handles(self, start: int) -> list[int]:
        rsp = self.tpm.execute(cmd(0x17A, params=struct.pack(">III", 1, start, 254)))
        n = struct.unpack(">I", rsp[15:19])[0]
        return list(struct.unpack(f">{n}I", rsp[19:19 + 4 * n]))

    @rule(target=objects)
    def create(self) -> int:
        rsp = self.tpm.execute(cmd(0x131, (0x40000001,), PRIMARY, pw()))
        assert rc_of(rsp) == 0
        h = struct.unpack(">I", rsp[10:14])[0]
        assert h not in self.loaded
        self.loaded.add(h)
        return h

    @rule(target=object_blobs, h=objects)
    def save_object(self, h: int) -> bytes:
        rsp = self.tpm.execute(cmd(0x162, (h,)))
        assert rc_of(rsp) == (0 if h in self.loaded else 0x910)
        return rsp[10:] if h in self.loaded else b""

    @rule(target=objects, blob=object_blobs)
    def load_object(self, blob: bytes) -> int:
        if not blob:
            return 0x80FFFFFF
        rsp = self.tpm.execute(cmd(0x161, params=blob))
        assert rc_of(rsp) == 0
        h = struct.unpack(">I", rsp[10:14])[0]
        self.loaded.add(h)
        return h

    @rule(h=consumes(objects))
    def flush_object(self, h: int) -> None:
        rc = rc_of(self.tpm.execute(cmd(0x165, params=struct.pack(">I", h))))
        assert rc == (0 if h in self.loaded else 0x1CB)
        self.loaded.discard(h)

    @rule(target=sessions)
    def start_session(self) -> int:
        rsp = self.tpm.execute(cmd(0x176, (0x40000007, 0x40000007), SESSION))
        assert rc_of(rsp) == 0
        h = struct.unpack(">I", rsp[10:14])[0]
        self.live_sessions[h] = "loaded"
        return h

    @rule(target=session_blobs, h=sessions)
    def save_session(self, h: int) -> tuple[int, bytes]:
        rsp = self.tpm.execute(cmd(0x162, (h,)))
        ok = self.live_sessions.get(h) == "loaded"
        assert rc_of(rsp) == (0 if ok else 0x910)
        if ok:
            self.live_sessions[h] = "saved"
        return (h, rsp[10:] if ok else b"")

    @rule(entry=consumes(session_blobs))
    def load_session(self, entry: tuple[int, bytes]) -> None:
        h, blob = entry
        if not blob:
            return
        rc = rc_of(self.tpm.execute(cmd(0x161, params=blob)))
        fresh = self.live_sessions.get(h) == "saved"
        # only the latest save of a still-saved session loads (no replay, no load after flush)
        assert (rc == 0) <= fresh
        if rc == 0:
            self.live_sessions[h] = "loaded"

    @rule(h=consumes(sessions))
    def flush_session(self, h: int) -> None:
        rc = rc_of(self.tpm.execute(cmd(0x165, params=struct.pack(">I", h))))
        assert rc == (0 if h in self.live_sessions else 0x1CB)
        self.live_sessions.pop(h, None)

    @invariant()
    def capabilities_match_the_model(self) -> None:
        assert set(self._handles(0x80000000)) == self.loaded
        loaded = {h for h, s in self.live_sessions.items() if s == "loaded"}
        saved = {h for h, s in self.live_sessions.items() if s == "saved"}
        assert set(self._handles(0x02000000)) == loaded
        assert set(self._handles(0x03000000)) == saved
        assert self.tpm.statistics().internal_failures == 0


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
