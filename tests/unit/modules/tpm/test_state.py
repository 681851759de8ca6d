"""Whole-state save/restore, Shutdown(STATE)/Startup(STATE), and rejection of damaged state."""

from __future__ import annotations

import struct

import pytest
from tpm_test_helpers import FakeClock, cmd, pw, rc_of, seeded_rng

from svsm.modules.tpm import StateError, Tpm

STARTUP_CLEAR = bytes.fromhex("80010000000c000001440000")
STARTUP_STATE = bytes.fromhex("80010000000c000001440001")
SHUTDOWN_STATE = cmd(0x145, params=b"\x00\x01")
OWNER = 0x40000001
#: tpm2_createprimary's default RSA template (tpm.md 12).
RSA_SRK = bytes.fromhex("0001" "000b" "00030072" "0000" "0006" "0080" "0043" "0010" "0800" "00000000" "0000")


def create_primary(tpm: Tpm, tpl: bytes = RSA_SRK) -> bytes:
    params = b"\x00\x04\x00\x00\x00\x00" + struct.pack(">H", len(tpl)) + tpl + b"\x00\x00" + bytes(4)
    rsp = tpm.execute(cmd(0x131, (OWNER,), params, pw()))
    assert rc_of(rsp) == 0
    return rsp[-(2 + 34 + 5):-5]  # the Name TPM2B before the PW response session


def test_primary_survives_restart_from_saved_state(tpm: Tpm) -> None:
    name = create_primary(tpm)
    assert rc_of(tpm.execute(cmd(0x129, (OWNER,), b"\x00\x02pw", pw()))) == 0  # owner auth persists too
    blob = tpm.save_state()
    t2 = Tpm(state=blob, rng=seeded_rng(99), clock=FakeClock())
    assert rc_of(t2.execute(STARTUP_CLEAR)) == 0
    params = b"\x00\x04\x00\x00\x00\x00" + struct.pack(">H", len(RSA_SRK)) + RSA_SRK + b"\x00\x00" + bytes(4)
    rsp = t2.execute(cmd(0x131, (OWNER,), params, pw(b"pw")))
    assert rc_of(rsp) == 0 and rsp[-(2 + 34 + 5):-5] == name


def test_fresh_tpm_has_different_seeds() -> None:
    a, b = Tpm(rng=seeded_rng(1)), Tpm(rng=seeded_rng(2))
    for t in (a, b):
        t.execute(STARTUP_CLEAR)
    ecc = bytes.fromhex("0023000b00030072000000060080004300100003001000000000")
    assert create_primary(a, ecc) != create_primary(b, ecc)


def test_shutdown_state_resumes_pcrs() -> None:
    t = Tpm(rng=seeded_rng())
    t.execute(STARTUP_CLEAR)
    body = struct.pack(">IH", 1, 0x000B) + b"\x22" * 32
    assert rc_of(t.execute(cmd(0x182, (5,), body, pw()))) == 0
    pcr5 = t.pcrs.banks[0x000B][5]
    assert rc_of(t.execute(SHUTDOWN_STATE)) == 0
    t2 = Tpm(state=t.save_state())
    assert rc_of(t2.execute(STARTUP_STATE)) == 0
    assert t2.pcrs.banks[0x000B][5] == pcr5 and t2.restart_count == 1
    t2.reset()
    assert rc_of(t2.execute(STARTUP_CLEAR)) == 0 and t2.pcrs.banks[0x000B][5] == bytes(32)


def test_volatile_state_round_trip_keeps_objects_and_started(tpm: Tpm) -> None:
    create_primary(tpm)
    t2 = Tpm(state=tpm.save_state(include_volatile=True))
    assert t2.started and 0x80000000 in t2.objects
    assert rc_of(t2.execute(cmd(0x173, (0x80000000,)))) == 0
    assert rc_of(t2.execute(STARTUP_CLEAR)) == 0x100


@pytest.mark.parametrize("damage", ["truncate", "flip", "version", "magic", "empty"])
def test_damaged_state_is_rejected(tpm: Tpm, damage: str) -> None:
    blob = bytearray(tpm.save_state())
    if damage == "truncate":
        blob = blob[:-1]
    elif damage == "flip":
        blob[20] ^= 1
    elif damage == "version":
        blob[9] += 1
    elif damage == "magic":
        blob[0] ^= 0xFF
    else:
        blob = bytearray()
    with pytest.raises(StateError):
        Tpm(state=bytes(blob))


def test_clock_and_reset_count_persist(tpm: Tpm, clock: FakeClock) -> None:
    clock.now += 5
    t2 = Tpm(state=tpm.save_state(), clock=clock)
    assert t2.now_ms() >= 5000 and t2.reset_count == 1
    t2.execute(STARTUP_CLEAR)
    assert t2.reset_count == 2


def test_startup_clear_after_shutdown_state_is_a_restart() -> None:
    t = Tpm(rng=seeded_rng())
    t.execute(STARTUP_CLEAR)
    reset = t.reset_count
    assert rc_of(t.execute(SHUTDOWN_STATE)) == 0
    t.reset()
    assert rc_of(t.execute(STARTUP_CLEAR)) == 0
    assert (t.reset_count, t.restart_count) == (reset, 1)
    t.reset()
    assert rc_of(t.execute(STARTUP_CLEAR)) == 0  # no orderly state saved: a TPM Reset
    assert (t.reset_count, t.restart_count) == (reset + 1, 0)
