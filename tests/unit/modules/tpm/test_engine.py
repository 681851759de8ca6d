"""Command framing, handle resolution, password authorization and dictionary-attack protection."""

from __future__ import annotations

import struct

import pytest
from tpm_test_helpers import cmd, pw, rc_of

from svsm.modules.tpm import Tpm

CC_STARTUP, CC_GETRANDOM, CC_READPUBLIC, CC_CREATEPRIMARY = 0x144, 0x17B, 0x173, 0x131
CC_CONTEXTSAVE, CC_NV_DEFINE, CC_NV_WRITE, CC_NV_READ = 0x162, 0x12A, 0x137, 0x14E
CC_DA_RESET, CC_DA_PARAMS, CC_HCA = 0x139, 0x13A, 0x129
OWNER, LOCKOUT, NULL = 0x40000001, 0x4000000A, 0x40000007

SEALED_TPL = bytes.fromhex("0008000b00000052000000100000")


def create_primary_params(tpl: bytes = SEALED_TPL, auth: bytes = b"", data: bytes = b"") -> bytes:
    sens = struct.pack(">H", len(auth)) + auth + struct.pack(">H", len(data)) + data
    return struct.pack(">H", len(sens)) + sens + struct.pack(">H", len(tpl)) + tpl + b"\x00\x00" + b"\x00" * 4


def nv_define_params(index: int, attrs: int, size: int, auth: bytes = b"") -> bytes:
    pub = struct.pack(">IHIHH", index, 0x000B, attrs, 0, size)
    return struct.pack(">H", len(auth)) + auth + struct.pack(">H", len(pub)) + pub


def test_error_responses_are_ten_bytes_in_reference_order() -> None:
    t = Tpm()
    assert t.execute(b"\x00\xc1" + bytes(8)) == bytes.fromhex("80010000000a0000001e")  # TPM 1.2 tag
    assert rc_of(t.execute(bytes.fromhex("80010000000d0000017b0010"))) == 0x142  # size mismatch
    assert rc_of(t.execute(cmd(0x1FF))) == 0x143  # unknown command
    assert rc_of(t.execute(cmd(CC_GETRANDOM, params=b"\x00\x08"))) == 0x100  # not started
    assert rc_of(t.execute(cmd(CC_STARTUP, params=b"\x00\x00"))) == 0
    assert rc_of(t.execute(cmd(CC_STARTUP, params=b"\x00\x00"))) == 0x100  # started twice
    assert rc_of(t.execute(cmd(CC_STARTUP + 0, params=b"\x00\x05"))) == 0x100
    assert t.statistics().internal_failures == 0


def test_startup_state_without_saved_state_is_value() -> None:
    t = Tpm()
    assert rc_of(t.execute(cmd(CC_STARTUP, params=b"\x00\x01"))) == 0x1C4


def test_parameter_errors_carry_their_number(run) -> None:
    assert rc_of(run(CC_GETRANDOM, params=b"\x00")) == 0x1DA  # INSUFFICIENT, parameter 1
    assert rc_of(run(CC_GETRANDOM, params=b"\x00\x08\x00")) == 0x095  # trailing bytes: plain SIZE
    rsp = run(CC_GETRANDOM, params=b"\x01\x00")
    assert rc_of(rsp) == 0 and struct.unpack(">H", rsp[10:12])[0] == 64  # capped at the largest digest


def test_handle_errors(run) -> None:
    assert rc_of(run(CC_READPUBLIC, (0x80000005,))) == 0x910  # REFERENCE_H0
    assert rc_of(run(CC_READPUBLIC, (0x81000001,))) == 0x18B  # HANDLE, handle 1
    assert rc_of(run(CC_READPUBLIC, (OWNER,))) == 0x184  # VALUE, handle 1
    assert rc_of(run(CC_CREATEPRIMARY, (0x40000003,), create_primary_params(), pw())) == 0x184


def test_auth_area_checks(run) -> None:
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params())) == 0x125  # AUTH_MISSING
    nonce_pw = struct.pack(">IH", 0x40000009, 2) + b"ab" + b"\x01\x00\x00"
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), nonce_pw)) == 0x98F  # NONCE, session 1
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), pw(attrs=0x21))) == 0x982  # ATTRIBUTES
    # an extra session must do audit/encrypt/decrypt, which TPM_RS_PW cannot: ATTRIBUTES, session 2
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), pw() * 2)) == 0xA82
    unknown = struct.pack(">IH", 0x02000042, 0) + b"\x01\x00\x00"
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), unknown)) == 0x918  # REFERENCE_S0
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), pw())) == 0
    rsp = run(CC_CONTEXTSAVE, (0x80000000,), b"", pw())
    assert rc_of(rsp) == 0x145  # AUTH_CONTEXT: ContextSave allows no sessions


def test_authorization_size_is_checked_before_sessions_are_refused(tpm) -> None:
    """swtpm/libtpms differential (TPMIO items 1, 2): a bad authorizationSize is TPM_RC_SIZE, and it is
    read and checked before a command that allows no sessions answers AUTH_CONTEXT."""
    assert rc_of(tpm.execute(bytes.fromhex("8002000000170000017ab4e0799b2de2b6635244e217ba"))) == 0x095
    assert rc_of(tpm.execute(cmd(0x17A, (), struct.pack(">III", 6, 0x100, 1), b"\x00" * 8))) == 0x095  # < 9
    assert rc_of(tpm.execute(bytes.fromhex("80020000000a00000161"))) == 0x09A  # ContextLoad: no authorizationSize
    flush = bytes.fromhex("80020000000e000001650025df8d")
    assert rc_of(tpm.execute(flush)) == 0x095  # FlushContext: authorizationSize past the end
    assert rc_of(tpm.execute(cmd(0x165, (), struct.pack(">I", 0x80000000), pw()))) == 0x145  # well formed


def test_password_session_response_and_wrong_password(run) -> None:
    rsp = run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), pw(attrs=0))
    assert rc_of(rsp) == 0 and rsp.endswith(b"\x00\x00\x01\x00\x00")  # continueSession forced to 1
    assert rc_of(run(CC_HCA, (OWNER,), b"\x00\x03abc", pw())) == 0
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), pw(b"abd"))) == 0x9A2  # BAD_AUTH
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), pw(b"abc\x00\x00"))) == 0  # zeros stripped


def test_dictionary_attack_lockout_reset_and_recovery(tpm: Tpm, run, clock) -> None:
    idx = 0x01000001
    attrs = 0x00060006  # OWNERWRITE|AUTHWRITE|OWNERREAD|AUTHREAD, DA-protected
    assert rc_of(run(CC_NV_DEFINE, (OWNER,), nv_define_params(idx, attrs, 8, b"right"), pw())) == 0
    write = b"\x00\x02hi\x00\x00"
    for _ in range(3):
        assert rc_of(run(CC_NV_WRITE, (idx, idx), write, pw(b"wrong"))) == 0x98E  # AUTH_FAIL
    assert rc_of(run(CC_NV_WRITE, (idx, idx), write, pw(b"right"))) == 0x921  # LOCKOUT
    assert tpm.statistics().failed_tries == 3
    clock.now += 1000  # recoveryTime: one failure forgiven
    assert rc_of(run(CC_NV_WRITE, (idx, idx), write, pw(b"right"))) == 0
    assert rc_of(run(CC_NV_WRITE, (idx, idx), write, pw(b"wrong"))) == 0x98E
    assert rc_of(run(CC_DA_RESET, (LOCKOUT,), b"", pw())) == 0
    assert tpm.statistics().failed_tries == 0
    # owner auth is DA-exempt: wrong owner password never locks
    for _ in range(5):
        assert rc_of(run(CC_NV_WRITE, (OWNER, idx), write, pw(b"x"))) == 0x9A2


def test_lockout_auth_failure_locks_lockout_hierarchy(run, clock) -> None:
    assert rc_of(run(CC_HCA, (LOCKOUT,), b"\x00\x02lk", pw())) == 0
    assert rc_of(run(CC_DA_RESET, (LOCKOUT,), b"", pw(b"no"))) == 0x98E
    assert rc_of(run(CC_DA_RESET, (LOCKOUT,), b"", pw(b"lk"))) == 0x921
    clock.now += 1000  # lockoutRecovery
    assert rc_of(run(CC_DA_RESET, (LOCKOUT,), b"", pw(b"lk"))) == 0
    assert rc_of(run(CC_DA_PARAMS, (LOCKOUT,), struct.pack(">III", 1, 0, 0), pw(b"lk"))) == 0


def test_object_slots_run_out_with_object_memory(run) -> None:
    from svsm.modules.tpm._entities import MAX_OBJECTS
    assert MAX_OBJECTS >= 16
    for _ in range(MAX_OBJECTS):
        assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), pw())) == 0
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), pw())) == 0x902


def test_statistics_count_commands(tpm: Tpm, run) -> None:
    before = tpm.statistics()
    run(CC_GETRANDOM, params=b"\x00\x04")
    run(0x1FF)
    after = tpm.statistics()
    assert (after.commands - before.commands, after.errors - before.errors) == (2, 1)


@pytest.mark.parametrize("bad", [b"", b"\x80", b"\x80\x01\x00\x00\x00\x0a\x00\x00"])
def test_short_commands(tpm: Tpm, bad: bytes) -> None:
    rsp = tpm.execute(bad)
    assert len(rsp) == 10 and rc_of(rsp) in (0x01E, 0x142)


def test_tpma_cc_values_match_the_reference(run) -> None:
    rsp = run(0x17A, params=struct.pack(">III", 2, 0x11F, 254))
    count = struct.unpack(">I", rsp[15:19])[0]
    attrs = {v & 0xFFFF: v for v in struct.unpack(f">{count}I", rsp[19:19 + 4 * count])}
    assert attrs[0x131] == 0x12000131 and attrs[0x157] == 0x12000157 and attrs[0x176] == 0x14000176
    assert attrs[0x137] == 0x04400137 and attrs[0x182] == 0x02400182 and attrs[0x165] == 0x00000165
    assert rsp[10] == 0  # moreData clear: all commands fit


def test_capability_paging_and_groups(run) -> None:
    rsp = run(0x17A, params=struct.pack(">III", 6, 0x100, 3))
    assert rsp[10] == 1 and struct.unpack(">I", rsp[15:19])[0] == 3  # moreData set
    rsp = run(0x17A, params=struct.pack(">III", 6, 0x12E, 127))
    assert rsp[10] == 0 and struct.unpack(">II", rsp[19:27]) == (0x12E, 1024)  # stays inside the fixed group
    assert rc_of(run(0x17A, params=struct.pack(">III", 0x77, 0, 1))) == 0x1C4


def test_session_nonce_size_is_checked(run) -> None:
    params = b"\x00\x10" + bytes(16) + b"\x00\x00" + b"\x00" + b"\x00\x10" + b"\x00\x0b"
    rsp = run(0x176, (0x40000007, 0x40000007), params)
    handle = struct.unpack(">I", rsp[10:14])[0]
    short = struct.pack(">IH", handle, 8) + bytes(8) + b"\x01\x00\x00"
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), short)) == 0x995  # SIZE, session 1


def test_powered_off_tpm_fails_every_command() -> None:
    t = Tpm(auto_start=False)
    assert rc_of(t.execute(bytes.fromhex("80010000000c000001440000"))) == 0x101
    t.power_on()
    assert rc_of(t.execute(bytes.fromhex("80010000000c000001440000"))) == 0
    t.power_off()
    assert rc_of(t.execute(cmd(CC_GETRANDOM, params=b"\x00\x08"))) == 0x101


def test_extra_session_without_a_purpose_is_rejected(run) -> None:
    params = b"\x00\x10" + bytes(16) + b"\x00\x00" + b"\x00" + b"\x00\x10" + b"\x00\x0b"
    handle = struct.unpack(">I", run(0x176, (0x40000007, 0x40000007), params)[10:14])[0]
    extra = struct.pack(">IH", handle, 16) + bytes(16) + b"\x01\x00\x00"  # continueSession only
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), pw() + extra)) == 0xA82
    no_sym = struct.pack(">IH", handle, 16) + bytes(16) + b"\x21\x00\x00"  # decrypt, but symmetric NULL
    assert rc_of(run(CC_CREATEPRIMARY, (OWNER,), create_primary_params(), pw() + no_sym)) == 0xA96


def test_session_handle_type_is_checked_while_unmarshalling(tpm) -> None:
    """TPMI_SH_AUTH_SESSION: a handle that is neither TPM_RS_PW nor an HMAC/policy session fails with
    VALUE (session 1) before its nonce is read (swtpm/libtpms differential, TPMIO item 7)."""
    garbage = bytes.fromhex("80020000001800000143000000091313131313131313131313")
    assert rc_of(tpm.execute(garbage[:2] + struct.pack(">I", len(garbage)) + garbage[6:])) == 0x984
    assert rc_of(tpm.execute(cmd(0x143, (), b"\x01", struct.pack(">IH", 0x01000000, 0) + b"\x01\x00\x00"))) == 0x984
    unloaded = struct.pack(">IH", 0x02000042, 0) + b"\x01\x00\x00"
    assert rc_of(tpm.execute(cmd(0x143, (), b"\x01", unloaded))) == 0x918  # a session type, not loaded


def test_every_handle_is_range_checked_before_any_is_looked_up(tpm) -> None:
    """The reference unmarshals all handles, then looks them up (swtpm/libtpms differential, TPMIO item 6)."""
    start_session = bytes.fromhex("8001000000120000017680000000c825635c")  # tpmKey not loaded, bind garbage
    assert rc_of(tpm.execute(start_session)) == 0x284  # VALUE on handle 2, not REFERENCE_H0
    increment = cmd(0x134, (0x01500000, 0x13131313), b"", pw())  # missing index, then a non-NV handle
    assert rc_of(tpm.execute(increment)) == 0x284
    assert rc_of(tpm.execute(cmd(0x134, (0x01500000, 0x01500000), b"", pw()))) == 0x18B  # HANDLE, handle 1
    body = struct.pack(">II", 0x134, 0x01500000) + b"\x01\x50"  # handle 2 cut short: INSUFFICIENT on handle 2
    assert rc_of(tpm.execute(struct.pack(">HI", 0x8001, 6 + len(body)) + body)) == 0x29A
