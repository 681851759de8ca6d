"""ContextSave/ContextLoad/FlushContext: integrity, replay of session contexts, reset semantics."""

from __future__ import annotations

import struct

from tpm_test_helpers import pw, rc_of

SAVE, LOAD, FLUSH, START_SESSION, GETRANDOM = 0x162, 0x161, 0x165, 0x176, 0x17B
STARTUP_CLEAR = bytes.fromhex("80010000000c000001440000")
SEALED = bytes.fromhex("0008000b00000052000000100000")


def primary(run, hier: int = 0x40000001) -> int:
    params = b"\x00\x04\x00\x00\x00\x00" + struct.pack(">H", len(SEALED)) + SEALED + b"\x00\x00" + bytes(4)
    rsp = run(0x131, (hier,), params, pw())
    assert rc_of(rsp) == 0
    return struct.unpack(">I", rsp[10:14])[0]


def start_session(run) -> int:
    params = b"\x00\x10" + bytes(16) + b"\x00\x00" + b"\x00" + b"\x00\x10" + b"\x00\x0b"
    rsp = run(START_SESSION, (0x40000007, 0x40000007), params)
    assert rc_of(rsp) == 0
    return struct.unpack(">I", rsp[10:14])[0]


def test_object_context_round_trip_and_tamper(run) -> None:
    h = primary(run)
    ctx = run(SAVE, (h,))[10:]
    assert rc_of(run(FLUSH, params=struct.pack(">I", h))) == 0
    assert rc_of(run(FLUSH, params=struct.pack(">I", h))) == 0x1CB  # HANDLE, parameter 1
    rsp = run(LOAD, params=ctx)
    assert rc_of(rsp) == 0 and struct.unpack(">I", rsp[10:14])[0] == h
    bad = bytearray(ctx)
    bad[-1] ^= 1
    assert rc_of(run(LOAD, params=bytes(bad))) == 0x1DF  # INTEGRITY, parameter 1


def test_null_hierarchy_contexts_die_at_tpm_reset(tpm, run) -> None:
    h = primary(run, 0x40000007)
    ctx = run(SAVE, (h,))[10:]
    tpm.reset()
    assert rc_of(tpm.execute(STARTUP_CLEAR)) == 0
    assert rc_of(run(LOAD, params=ctx)) == 0x1DF
    h2 = primary(run)
    ctx2 = run(SAVE, (h2,))[10:]
    tpm.reset()
    tpm.execute(STARTUP_CLEAR)
    assert rc_of(run(LOAD, params=ctx2)) == 0  # owner objects survive


def test_session_context_cannot_be_loaded_twice(run) -> None:
    s = start_session(run)
    ctx = run(SAVE, (s,))[10:]
    rsp = run(0x17A, params=struct.pack(">III", 1, 0x03000000, 10))  # saved sessions are listed
    assert struct.pack(">I", s) in rsp
    assert rc_of(run(GETRANDOM, params=b"\x00\x01", sessions=struct.pack(">IH", s, 16) + bytes(16) + b"\x21\x00\x00")) \
        == 0x918  # a saved session cannot be used: REFERENCE_S0
    assert rc_of(run(LOAD, params=ctx)) == 0
    assert rc_of(run(LOAD, params=ctx)) == 0x1CB  # replay refused: HANDLE, parameter 1
    ctx2 = run(SAVE, (s,))[10:]
    assert rc_of(run(FLUSH, params=struct.pack(">I", s))) == 0
    assert rc_of(run(LOAD, params=ctx2)) == 0x1CB


def test_flush_rejects_other_handle_types(run) -> None:
    assert rc_of(run(FLUSH, params=struct.pack(">I", 0x40000001))) == 0x1C4
    assert rc_of(run(FLUSH, params=struct.pack(">I", 0x81000000))) == 0x1C4


def test_no_sessions_allowed_on_context_commands(run) -> None:
    assert rc_of(run(FLUSH, params=struct.pack(">I", 0x80000000), sessions=pw())) == 0x145
    assert rc_of(run(LOAD, params=b"", sessions=pw())) == 0x145
