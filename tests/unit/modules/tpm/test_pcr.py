"""PCR banks: extend, event, read (8-digest limit), reset rules, allocation."""

from __future__ import annotations

import hashlib
import struct

from tpm_test_helpers import pw, rc_of

EXTEND, EVENT, READ, RESET, ALLOCATE, CAP = 0x182, 0x13C, 0x17E, 0x13D, 0x12B, 0x17A
SHA1, SHA256, SHA384 = 0x0004, 0x000B, 0x000C


def sel(*banks: tuple[int, list[int]]) -> bytes:
    out = struct.pack(">I", len(banks))
    for alg, pcrs in banks:
        bits = sum(1 << p for p in pcrs)
        out += struct.pack(">HB", alg, 3) + bits.to_bytes(3, "little")
    return out


def read_values(rsp: bytes) -> tuple[int, list[bytes]]:
    counter = struct.unpack(">I", rsp[10:14])[0]
    n_sel = struct.unpack(">I", rsp[14:18])[0]
    pos = 18 + 6 * n_sel
    count = struct.unpack(">I", rsp[pos:pos + 4])[0]
    pos += 4
    vals = []
    for _ in range(count):
        size = struct.unpack(">H", rsp[pos:pos + 2])[0]
        vals.append(rsp[pos + 2:pos + 2 + size])
        pos += 2 + size
    return counter, vals


def test_extend_all_banks_and_read(run) -> None:
    d256 = bytes(range(32))
    body = struct.pack(">I", 2) + struct.pack(">H", SHA256) + d256 + struct.pack(">H", SHA1) + bytes(20)
    assert rc_of(run(EXTEND, (3,), body, pw())) == 0
    counter, vals = read_values(run(READ, params=sel((SHA256, [3]), (SHA1, [3]), (SHA384, [3]))))
    assert counter == 1
    assert vals == [hashlib.sha256(bytes(32) + d256).digest(), hashlib.sha1(bytes(40)).digest(), bytes(48)]


def test_event_hashes_into_every_bank(run) -> None:
    rsp = run(EVENT, (7,), b"\x00\x05event", pw())
    assert rc_of(rsp) == 0
    _, vals = read_values(run(READ, params=sel((SHA384, [7]))))
    assert vals == [hashlib.sha384(bytes(48) + hashlib.sha384(b"event").digest()).digest()]


def test_read_returns_at_most_eight_digests(run) -> None:
    _, vals = read_values(run(READ, params=sel((SHA256, list(range(24))))))
    assert len(vals) == 8


def test_reset_only_16_and_23(run) -> None:
    body = struct.pack(">IH", 1, SHA256) + b"\x11" * 32
    assert rc_of(run(EXTEND, (16,), body, pw())) == 0
    assert rc_of(run(RESET, (16,), b"", pw())) == 0
    assert read_values(run(READ, params=sel((SHA256, [16]))))[1] == [bytes(32)]
    assert rc_of(run(RESET, (0,), b"", pw())) == 0x907  # LOCALITY
    assert rc_of(run(EXTEND, (24,), body, pw())) == 0x184  # VALUE, handle 1


def test_extend_with_unknown_hash_is_rejected(run) -> None:
    body = struct.pack(">IH", 1, 0x0099) + bytes(32)
    assert rc_of(run(EXTEND, (0,), body, pw())) == 0x1C3  # HASH, parameter 1


def test_allocate_applies_at_next_reset(tpm, run) -> None:
    assert rc_of(run(ALLOCATE, (0x4000000C,), sel((SHA1, [])), pw())) == 0
    assert SHA1 in tpm.pcrs.allocated
    tpm.reset()
    assert rc_of(tpm.execute(bytes.fromhex("80010000000c000001440000"))) == 0
    assert SHA1 not in tpm.pcrs.allocated
    rsp = run(CAP, params=struct.pack(">III", 5, 0, 1))
    assert rsp[19:25] == struct.pack(">HB", SHA1, 3) + b"\x00\x00\x00"


def test_drtm_pcrs_start_as_ones_and_follow_the_locality_rules(tpm) -> None:
    """PC Client PCR attributes (ms-tpm-20-ref PCR.c s_initAttributes): 17-22 are all ones after TPM
    Reset, extendable from localities 2-4 (19: 2-3, 20: 1-3, 21/22: 2), resettable only from 4 (20: 2, 4;
    21/22: 2); 16 and 23 from localities 0-3."""
    from tpm_test_helpers import cmd

    def run(cc, handles=(), params=b"", sessions=None, locality=0):
        return tpm.execute(cmd(cc, handles, params, sessions), locality)

    digest = struct.pack(">IH", 1, SHA256) + bytes(32)
    _, vals = read_values(run(READ, params=sel((SHA256, [16, 17, 22, 23]))))
    assert vals == [bytes(32), b"\xff" * 32, b"\xff" * 32, bytes(32)]
    assert rc_of(run(EXTEND, (17,), digest, pw())) == 0x907  # locality 0 may not extend a D-RTM PCR
    assert rc_of(run(EXTEND, (17,), digest, pw(), locality=4)) == 0
    assert rc_of(run(EXTEND, (20,), digest, pw(), locality=1)) == 0
    assert rc_of(run(EXTEND, (21,), digest, pw(), locality=3)) == 0x907
    assert rc_of(run(EVENT, (19,), b"\x00\x01e", pw(), locality=4)) == 0x907
    _, vals = read_values(run(READ, params=sel((SHA256, [17]))))
    assert vals == [hashlib.sha256(b"\xff" * 32 + bytes(32)).digest()]
    assert rc_of(run(RESET, (17,), b"", pw())) == 0x907
    assert rc_of(run(RESET, (16,), b"", pw(), locality=4)) == 0x907
    assert rc_of(run(RESET, (17,), b"", pw(), locality=4)) == 0
    _, vals = read_values(run(READ, params=sel((SHA256, [17]))))
    assert vals == [bytes(32)]  # PCR_Reset sets zeros (a D-RTM sequence starts from them)
    assert rc_of(run(0x145, params=b"\x00\x01")) == 0  # Shutdown(STATE)
    tpm.reset()
    assert rc_of(run(0x144, params=b"\x00\x01")) == 0  # Startup(STATE): 16-23 are not state-saved
    _, vals = read_values(run(READ, params=sel((SHA256, [17, 20]))))
    assert vals == [b"\xff" * 32, b"\xff" * 32]
