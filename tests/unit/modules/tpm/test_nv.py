"""NV indices: ordinary, counter, bits, extend; attributes, locks, ranges and authorization checks."""

from __future__ import annotations

import hashlib
import struct

import pytest
from tpm_test_helpers import pw, rc_of

OWNER, PLATFORM = 0x40000001, 0x4000000C
DEFINE, UNDEFINE, WRITE, READ, READPUB = 0x12A, 0x122, 0x137, 0x14E, 0x169
INCREMENT, SETBITS, EXTEND, WRITELOCK, READLOCK = 0x134, 0x135, 0x136, 0x138, 0x14F
RW_OWNER_AUTH = 0x00060006  # OWNERWRITE|AUTHWRITE|OWNERREAD|AUTHREAD


def define(run, index: int, attrs: int, size: int, auth: bytes = b"", hier: int = OWNER) -> int:
    pub = struct.pack(">IHIHH", index, 0x000B, attrs, 0, size)
    return rc_of(run(DEFINE, (hier,), struct.pack(">H", len(auth)) + auth + struct.pack(">H", len(pub)) + pub, pw()))


def write(run, index: int, data: bytes, offset: int = 0, auth_handle: int | None = None, auth: bytes = b"") -> int:
    return rc_of(run(WRITE, (auth_handle or index, index), struct.pack(">H", len(data)) + data
                     + struct.pack(">H", offset), pw(auth)))


def read(run, index: int, size: int, offset: int = 0, auth_handle: int | None = None) -> bytes:
    return run(READ, (auth_handle or index, index), struct.pack(">HH", size, offset), pw())


def data(rsp: bytes) -> bytes:
    """The TPM2B data of an NV_Read response with one session (header, parameterSize, TPM2B)."""
    n = struct.unpack(">H", rsp[14:16])[0]
    return rsp[16:16 + n]


def test_ordinary_write_read_and_written_bit(run) -> None:
    idx = 0x01000000
    assert define(run, idx, RW_OWNER_AUTH, 16) == 0
    assert rc_of(read(run, idx, 4)) == 0x14A  # NV_UNINITIALIZED
    name_before = run(READPUB, (idx,))[-34:]
    assert write(run, idx, b"abcd", 2) == 0
    rsp = read(run, idx, 6, 0, OWNER)
    assert rc_of(rsp) == 0 and data(rsp) == b"\x00\x00abcd"
    assert run(READPUB, (idx,))[-34:] != name_before  # WRITTEN changes the Name
    assert write(run, idx, b"x" * 10, 10) == 0x146  # NV_RANGE
    assert rc_of(read(run, idx, 17)) == 0x146
    assert define(run, idx, RW_OWNER_AUTH, 16) == 0x14C  # NV_DEFINED


def test_define_checks(run) -> None:
    assert define(run, 0x01000001, 0x00000006, 8) == 0x2C2  # no read bit: ATTRIBUTES, parameter 2
    assert define(run, 0x01000001, RW_OWNER_AUTH | 0x10, 7) == 0x2D5  # counter must be 8 bytes: SIZE
    assert define(run, 0x01000001, RW_OWNER_AUTH | 0x20000000, 8) == 0x2C2  # WRITTEN set
    assert define(run, 0x01000001, RW_OWNER_AUTH, 8, hier=PLATFORM) == 0x182  # platform needs PLATFORMCREATE
    assert define(run, 0x01000001, RW_OWNER_AUTH, 4096) == 0x2D5
    assert define(run, 0x01000001, RW_OWNER_AUTH, 8, auth=b"x" * 33) == 0x1D5


def test_counter_bits_extend(run) -> None:
    c, b, e = 0x01000002, 0x01000003, 0x01000004
    assert define(run, c, RW_OWNER_AUTH | 0x10, 8) == 0
    assert define(run, b, RW_OWNER_AUTH | 0x20, 8) == 0
    assert define(run, e, RW_OWNER_AUTH | 0x40, 32) == 0
    for _ in range(3):
        assert rc_of(run(INCREMENT, (c, c), b"", pw())) == 0
    assert data(read(run, c, 8)) == struct.pack(">Q", 3)
    assert write(run, c, b"12345678") == 0x282  # NV_Write on a counter: ATTRIBUTES
    assert rc_of(run(SETBITS, (b, b), struct.pack(">Q", 0x5), pw())) == 0
    assert rc_of(run(SETBITS, (b, b), struct.pack(">Q", 0x30), pw())) == 0
    assert data(read(run, b, 8)) == struct.pack(">Q", 0x35)
    assert rc_of(run(EXTEND, (e, e), b"\x00\x03abc", pw())) == 0
    assert data(read(run, e, 32)) == hashlib.sha256(bytes(32) + b"abc").digest()


def test_locks_and_authorization(run) -> None:
    idx = 0x01000005
    assert define(run, idx, RW_OWNER_AUTH | 0x4000 | 0x80000000, 8, auth=b"nvpw") == 0  # WRITE_STCLEAR|READ_STCLEAR
    assert write(run, idx, b"12345678", auth=b"nvpw") == 0
    assert rc_of(run(WRITELOCK, (idx, idx), b"", pw(b"nvpw"))) == 0
    assert write(run, idx, b"x", auth=b"nvpw") == 0x148  # NV_LOCKED
    assert rc_of(run(READLOCK, (idx, idx), b"", pw(b"nvpw"))) == 0
    assert rc_of(read(run, idx, 1, auth_handle=OWNER)) == 0x148
    ro = 0x01000006
    assert define(run, ro, 0x00020002, 8) == 0  # OWNER only
    assert write(run, ro, b"x") == 0x149  # NV_AUTHORIZATION with the index as auth handle
    assert write(run, ro, b"x", auth_handle=OWNER) == 0
    assert rc_of(run(UNDEFINE, (OWNER, ro), b"", pw())) == 0
    assert rc_of(run(READPUB, (ro,))) == 0x18B


@pytest.mark.parametrize("size", [1024, 1025])
def test_nv_buffer_max(run, size: int) -> None:
    idx = 0x01000007
    assert define(run, idx, RW_OWNER_AUTH, 2048) == 0
    assert write(run, idx, bytes(size)) == (0 if size <= 1024 else 0x1D5)


def test_platform_index_and_undefine_rules(run) -> None:
    idx = 0x01800001
    attrs = 0x40000000 | 0x00010001 | 0x00040004  # PLATFORMCREATE|PPREAD|PPWRITE|AUTHREAD|AUTHWRITE
    assert define(run, idx, attrs, 8, hier=PLATFORM) == 0
    assert define(run, 0x01800002, attrs, 8, hier=OWNER) == 0x182  # PLATFORMCREATE needs the platform
    assert write(run, idx, b"pp", auth_handle=PLATFORM) == 0
    assert rc_of(read(run, idx, 2, auth_handle=PLATFORM)) == 0
    assert rc_of(read(run, idx, 2, auth_handle=OWNER)) == 0x149
    assert rc_of(run(UNDEFINE, (OWNER, idx), b"", pw())) == 0x149  # owner cannot delete a platform index
    assert rc_of(run(UNDEFINE, (PLATFORM, idx), b"", pw())) == 0


def test_write_stclear_lock_clears_at_startup_and_global_lock(tpm, run) -> None:
    a, g = 0x01000008, 0x01000009
    assert define(run, a, RW_OWNER_AUTH | 0x4000, 8) == 0  # WRITE_STCLEAR
    assert define(run, g, RW_OWNER_AUTH | 0x8000, 8) == 0  # GLOBALLOCK
    assert rc_of(run(WRITELOCK, (a, a), b"", pw())) == 0
    assert rc_of(run(0x132, (OWNER,), b"", pw())) == 0  # NV_GlobalWriteLock
    assert write(run, a, b"x") == 0x148 and write(run, g, b"x") == 0x148
    tpm.reset()
    assert rc_of(tpm.execute(bytes.fromhex("80010000000c000001440000"))) == 0
    assert write(run, a, b"x") == 0 and write(run, g, b"x") == 0
    assert rc_of(run(WRITELOCK, (0x01000008, 0x01000008), b"", pw())) == 0
    plain = 0x0100000A
    assert define(run, plain, RW_OWNER_AUTH, 8) == 0
    assert rc_of(run(WRITELOCK, (plain, plain), b"", pw())) == 0x282  # no WRITEDEFINE/WRITE_STCLEAR


def test_nv_change_auth_and_undefine_special_need_policy(esys) -> None:
    pytest.importorskip("tpm2_pytss")
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_NV, TSS2_Exception
    from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC, TPMT_SYM_DEF
    null = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)

    def policy_for(cc: int) -> bytes:
        return hashlib.sha256(bytes(32) + struct.pack(">II", 0x16C, cc)).digest()

    attrs = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA
    nv = esys.nv_define_space(b"old", TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
        nvIndex=0x01000400, nameAlg=TPM2_ALG.SHA256, attributes=attrs, authPolicy=policy_for(0x13B), dataSize=4)))
    with pytest.raises(TSS2_Exception) as e:
        esys.nv_change_auth(nv, b"new", session1=ESYS_TR.PASSWORD)
    assert e.value.rc == 0x124  # AUTH_TYPE: ADMIN role on an index needs a policy session
    p = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, null, TPM2_ALG.SHA256)
    esys.policy_command_code(p, 0x13B)
    esys.nv_change_auth(nv, b"new", session1=p)
    esys.tr_set_auth(nv, b"new")
    esys.nv_write(nv, b"abcd", 0, auth_handle=nv)
    special = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.PLATFORMCREATE | TPMA_NV.POLICY_DELETE
    sp = esys.nv_define_space(b"", TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
        nvIndex=0x01800400, nameAlg=TPM2_ALG.SHA256, attributes=special, authPolicy=policy_for(0x11F), dataSize=4)),
        auth_handle=ESYS_TR.PLATFORM)
    with pytest.raises(TSS2_Exception) as e:
        esys.nv_undefine_space(sp, auth_handle=ESYS_TR.PLATFORM)
    assert e.value.rc == 0x282  # POLICY_DELETE indices need NV_UndefineSpaceSpecial
    p = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, null, TPM2_ALG.SHA256)
    esys.policy_command_code(p, 0x11F)
    esys.nv_undefine_space_special(sp, p)
    with pytest.raises(TSS2_Exception):
        esys.nv_read_public(sp)


def test_ph_enable_nv_hides_platform_indices(run) -> None:
    idx = 0x01800003
    attrs = 0x40000000 | 0x00010001 | 0x00040004
    assert define(run, idx, attrs, 8, hier=PLATFORM) == 0
    assert rc_of(run(READPUB, (idx,))) == 0
    assert rc_of(run(0x121, (PLATFORM,), struct.pack(">IB", 0x4000000D, 0), pw())) == 0  # phEnableNV = 0
    assert rc_of(run(READPUB, (idx,))) == 0x18B


def test_counters_never_roll_back_across_redefinition(run) -> None:
    c = 0x0100000B
    assert define(run, c, RW_OWNER_AUTH | 0x10, 8) == 0
    for _ in range(5):
        assert rc_of(run(INCREMENT, (c, c), b"", pw())) == 0
    assert rc_of(run(UNDEFINE, (OWNER, c), b"", pw())) == 0
    assert define(run, c, RW_OWNER_AUTH | 0x10, 8) == 0
    assert rc_of(run(INCREMENT, (c, c), b"", pw())) == 0
    assert data(read(run, c, 8)) == struct.pack(">Q", 6)
