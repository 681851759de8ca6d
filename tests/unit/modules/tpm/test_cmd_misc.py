"""Self test, random, clock, TestParms and the GetCapability groups (tpm.md 10)."""

from __future__ import annotations

import struct

from tpm_test_helpers import pw, rc_of

CAP, SELFTEST, INCR, RESULT, STIR, READCLOCK, CLOCKSET, TESTPARMS = (0x17A, 0x143, 0x142, 0x17C, 0x146, 0x181,
                                                                     0x128, 0x18A)


def props(run, start: int, count: int = 127) -> dict[int, int]:
    rsp = run(CAP, params=struct.pack(">III", 6, start, count))
    n = struct.unpack(">I", rsp[15:19])[0]
    vals = struct.unpack(f">{2 * n}I", rsp[19:19 + 8 * n])
    return dict(zip(vals[::2], vals[1::2]))


def handles(run, start: int) -> list[int]:
    rsp = run(CAP, params=struct.pack(">III", 1, start, 254))
    n = struct.unpack(">I", rsp[15:19])[0]
    return list(struct.unpack(f">{n}I", rsp[19:19 + 4 * n]))


def test_fixed_properties_tools_rely_on(run) -> None:
    p = props(run, 0x100)
    assert p[0x100] == 0x322E3000 and p[0x112] == 24 and p[0x117] == 2048 and p[0x12C] == 1024
    assert p[0x11E] == p[0x11F] == 4096 and p[0x120] == 64 and p[0x10E] >= 16
    assert p[0x129] == p[0x12A] > 70  # TOTAL_COMMANDS = LIBRARY_COMMANDS = what is implemented


def test_variable_properties_follow_state(tpm, run) -> None:
    v = props(run, 0x200)
    assert v[0x200] & 0x1 == 0 and v[0x201] & 0x7 == 0x7 and v[0x20F] == 3
    assert rc_of(run(0x129, (0x40000001,), b"\x00\x02pw", pw())) == 0
    tpm.failed_tries, tpm.da_last = 3, tpm.clock()  # as after three DA failures just now
    v = props(run, 0x200)
    assert v[0x200] & 0x201 == 0x201  # ownerAuthSet, inLockout
    assert v[0x20E] == 3


def test_handle_lists(run) -> None:
    assert handles(run, 0) == list(range(24))
    assert 0x40000001 in handles(run, 0x40000000) and 0x40000009 in handles(run, 0x40000000)
    assert handles(run, 0x81000000) == [] and handles(run, 0x01000000) == []
    assert rc_of(run(CAP, params=struct.pack(">III", 1, 0x05000000, 1))) == 0x2C4  # VALUE, parameter 2


def test_self_test_and_random_stir(run) -> None:
    assert rc_of(run(SELFTEST, params=b"\x01")) == 0
    rsp = run(INCR, params=struct.pack(">IH", 1, 0x000B))
    assert rc_of(rsp) == 0 and rsp[10:14] == bytes(4)  # nothing left to test
    rsp = run(RESULT)
    assert rsp[10:] == b"\x00\x00" + bytes(4)
    assert rc_of(run(STIR, params=b"\x00\x04seed")) == 0
    assert rc_of(run(STIR, params=b"\x00\x81" + bytes(129))) == 0x1D5


def test_clock_read_and_set(run, clock) -> None:
    clock.now += 2
    rsp = run(READCLOCK)
    time_ms, clock_ms = struct.unpack(">QQ", rsp[10:26])
    assert time_ms >= 2000 and clock_ms >= 2000
    assert rc_of(run(CLOCKSET, (0x40000001,), struct.pack(">Q", clock_ms + 10**6), pw())) == 0
    assert struct.unpack(">Q", run(READCLOCK)[18:26])[0] >= clock_ms + 10**6
    assert rc_of(run(CLOCKSET, (0x40000001,), struct.pack(">Q", 5), pw())) == 0x1C4  # never backwards


def test_test_parms(run) -> None:
    rsa = struct.pack(">HHHHIH", 0x0001, 0x0010, 0x0010, 2048, 0, 0)[:-2]
    assert rc_of(run(TESTPARMS, params=rsa)) == 0
    assert rc_of(run(TESTPARMS, params=struct.pack(">HHHHI", 0x0001, 0x0010, 0x0010, 1000, 0))) == 0x1C7  # KEY_SIZE
    assert rc_of(run(TESTPARMS, params=struct.pack(">HHHHH", 0x0023, 0x0010, 0x0010, 0x0009, 0x0010))) == 0x1E6
    assert rc_of(run(TESTPARMS, params=struct.pack(">H", 0x0099))) == 0x1CA  # TYPE


def test_enum_parameters_are_checked_while_unmarshalling(run) -> None:
    """swtpm/libtpms differential (TPMIO): TPMI_YES_NO and TPM_SU fail with VALUE on parameter 1,
    before the leftover-bytes check (SIZE)."""
    assert rc_of(run(SELFTEST, params=b"\x06")) == 0x1C4
    assert rc_of(run(SELFTEST, params=b"\x01")) == 0
    assert rc_of(run(0x145, params=b"\xac\xfa" + b"\x00" * 5)) == 0x1C4  # Shutdown: bad TPM_SU + trailing bytes
    assert rc_of(run(0x145, params=b"\x00\x00" + b"\x00")) == 0x095  # a good TPM_SU + trailing bytes: SIZE
