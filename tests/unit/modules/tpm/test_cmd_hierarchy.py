"""Hierarchy commands: Clear, ClearControl, HierarchyControl, HierarchyChangeAuth, SetPrimaryPolicy."""

from __future__ import annotations

import struct

from tpm_test_helpers import pw, rc_of

OWNER, LOCKOUT, ENDORSEMENT, PLATFORM = 0x40000001, 0x4000000A, 0x4000000B, 0x4000000C
CLEAR, CLEARCONTROL, HCONTROL, HCA, SETPOLICY, CREATEPRIMARY, DEFINE = 0x126, 0x127, 0x121, 0x129, 0x12E, 0x131, 0x12A
ECC_SRK = bytes.fromhex("0023000b00030072000000060080004300100003001000000000")


def create_primary(run, hier: int = OWNER, auth: bytes = b"") -> bytes:
    params = b"\x00\x04\x00\x00\x00\x00" + struct.pack(">H", len(ECC_SRK)) + ECC_SRK + b"\x00\x00" + bytes(4)
    return run(CREATEPRIMARY, (hier,), params, pw(auth))


def test_clear_changes_owner_seed_and_drops_owner_state(tpm, run) -> None:
    before = create_primary(run)
    ek_before = create_primary(run, ENDORSEMENT)
    pub = struct.pack(">IHIHH", 0x01000000, 0x000B, 0x00060006, 0, 8)
    assert rc_of(run(DEFINE, (OWNER,), b"\x00\x00" + struct.pack(">H", len(pub)) + pub, pw())) == 0
    assert rc_of(run(HCA, (OWNER,), b"\x00\x02ow", pw())) == 0
    assert rc_of(run(0x13A, (LOCKOUT,), struct.pack(">III", 9, 8, 7), pw())) == 0
    assert rc_of(run(CLEAR, (LOCKOUT,), b"", pw())) == 0
    assert not tpm.nv and not tpm.objects
    assert (tpm.max_tries, tpm.recovery_time, tpm.lockout_recovery) == (3, 1000, 1000)
    after = create_primary(run)  # owner auth is empty again
    assert rc_of(after) == 0 and after[-41:] != before[-41:]
    assert create_primary(run, ENDORSEMENT)[-41:] == ek_before[-41:]  # endorsement seed unchanged


def test_clear_control(run) -> None:
    assert rc_of(run(CLEARCONTROL, (LOCKOUT,), b"\x01", pw())) == 0
    assert rc_of(run(CLEAR, (LOCKOUT,), b"", pw())) == 0x120  # DISABLED
    assert rc_of(run(CLEARCONTROL, (LOCKOUT,), b"\x00", pw())) == 0x08E  # only platform may re-enable
    assert rc_of(run(CLEARCONTROL, (PLATFORM,), b"\x00", pw())) == 0
    assert rc_of(run(CLEAR, (PLATFORM,), b"", pw())) == 0
    assert rc_of(run(CLEARCONTROL, (OWNER,), b"\x00", pw())) == 0x184  # VALUE, handle 1


def test_hierarchy_control_disables_and_platform_reenables(run) -> None:
    assert rc_of(run(HCONTROL, (OWNER,), struct.pack(">IB", OWNER, 0), pw())) == 0
    assert rc_of(create_primary(run)) == 0x185  # HIERARCHY, handle 1
    assert rc_of(run(HCONTROL, (ENDORSEMENT,), struct.pack(">IB", OWNER, 1), pw())) == 0x124  # AUTH_TYPE
    assert rc_of(run(HCONTROL, (PLATFORM,), struct.pack(">IB", OWNER, 1), pw())) == 0
    assert rc_of(create_primary(run)) == 0
    assert rc_of(run(HCONTROL, (PLATFORM,), struct.pack(">IB", 0x40000003, 1), pw())) == 0x1C4


def test_change_auth_size_limit_and_new_auth_applies(run) -> None:
    assert rc_of(run(HCA, (ENDORSEMENT,), b"\x00\x31" + b"a" * 49, pw())) == 0x1D5  # SIZE, parameter 1
    assert rc_of(run(HCA, (ENDORSEMENT,), b"\x00\x03eee", pw())) == 0
    assert rc_of(create_primary(run, ENDORSEMENT)) == 0x9A2
    assert rc_of(create_primary(run, ENDORSEMENT, b"eee")) == 0


def test_set_primary_policy_allows_policy_auth(run) -> None:
    assert rc_of(run(SETPOLICY, (OWNER,), b"\x00\x05abcde\x00\x0b", pw())) == 0x1D5  # wrong digest size
    assert rc_of(run(SETPOLICY, (OWNER,), b"\x00\x20" + bytes(32) + b"\x00\x0b", pw())) == 0
    assert rc_of(run(SETPOLICY, (OWNER,), b"\x00\x00\x00\x10", pw())) == 0


def test_change_eps_and_pps_replace_seeds(tpm, run) -> None:
    ek = create_primary(run, ENDORSEMENT)
    assert rc_of(run(0x124, (PLATFORM,), b"", pw())) == 0  # ChangeEPS
    assert not [o for o in tpm.objects.values() if o.hierarchy == ENDORSEMENT]
    assert create_primary(run, ENDORSEMENT)[-41:] != ek[-41:]
    pp = create_primary(run, PLATFORM)
    assert rc_of(run(0x125, (PLATFORM,), b"", pw())) == 0  # ChangePPS
    assert create_primary(run, PLATFORM)[-41:] != pp[-41:]
    assert rc_of(run(0x124, (OWNER,), b"", pw())) == 0x184
