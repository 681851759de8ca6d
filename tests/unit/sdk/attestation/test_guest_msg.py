"""Guest message header layout, AES-256-GCM sealing, the guest-side sequence rules, fuzzing."""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.sdk.attestation import (
    HDR_SIZE,
    SNP_GUEST_MSG_HDR,
    SNP_KEY_REQ,
    SNP_KEY_RSP,
    SNP_REPORT_REQ,
    SNP_REPORT_RSP,
    GuestMessageClient,
    GuestMessageError,
    GuestMessageHeader,
    MsgType,
    open_message,
    seal_message,
)

KEY = bytes(range(32))


def test_header_layout() -> None:
    spec = {"authtag": (0x00, 32), "msg_seqno": (0x20, 8), "algo": (0x30, 1), "hdr_version": (0x31, 1),
            "hdr_size": (0x32, 2), "msg_type": (0x34, 1), "msg_version": (0x35, 1), "msg_size": (0x36, 2),
            "msg_vmpck": (0x3C, 1)}  # fmt: skip
    assert ctypes.sizeof(SNP_GUEST_MSG_HDR) == HDR_SIZE == 0x60
    for name, (off, size) in spec.items():
        assert (getattr(SNP_GUEST_MSG_HDR, name).offset, getattr(SNP_GUEST_MSG_HDR, name).size) == (off, size)


def test_payload_layouts() -> None:
    assert ctypes.sizeof(SNP_REPORT_REQ) == 96 and SNP_REPORT_REQ.vmpl.offset == 0x40 and SNP_REPORT_REQ.flags.offset == 0x44
    assert ctypes.sizeof(SNP_REPORT_RSP) == 0x4C0 and SNP_REPORT_RSP.report.offset == 0x20
    assert (SNP_KEY_REQ.guest_field_select.offset, SNP_KEY_REQ.vmpl.offset, SNP_KEY_REQ.guest_svn.offset,
            SNP_KEY_REQ.tcb_version.offset, SNP_KEY_REQ.launch_mit_vector.offset) == (8, 0x10, 0x14, 0x18, 0x20)  # fmt: skip
    assert ctypes.sizeof(SNP_KEY_RSP) == 64 and SNP_KEY_RSP.derived_key.offset == 0x20


def test_seal_open_round_trip_and_wire_fields() -> None:
    page = seal_message(KEY, seqno=5, msg_type=MsgType.REPORT_REQ, vmpck=2, payload=b"hello")
    assert len(page) == 4096
    raw = SNP_GUEST_MSG_HDR.from_buffer_copy(page)
    assert (raw.msg_seqno, raw.algo, raw.hdr_version, raw.hdr_size, raw.msg_type, raw.msg_size, raw.msg_vmpck) == (
        5, 1, 1, 0x60, 5, 5, 2)
    assert bytes(raw.authtag)[16:] == bytes(16)
    assert page[HDR_SIZE:HDR_SIZE + 5] != b"hello"  # encrypted
    hdr, payload = open_message(KEY, page)
    assert payload == b"hello" and hdr.msg_seqno == 5


@settings(max_examples=60)
@given(st.integers(0, HDR_SIZE + 3), st.integers(1, 255))
def test_any_modified_byte_is_refused(pos: int, xor: int) -> None:
    """Every header byte and every payload byte is covered (tag, seqno/IV, reserved, AAD, ciphertext)."""
    page = bytearray(seal_message(KEY, seqno=1, msg_type=MsgType.KEY_REQ, vmpck=0, payload=b"abcd"))
    page[pos] ^= xor
    with pytest.raises(GuestMessageError):
        open_message(KEY, bytes(page))


def test_wrong_key_is_refused() -> None:
    page = seal_message(KEY, seqno=1, msg_type=MsgType.KEY_REQ, vmpck=0, payload=b"x")
    with pytest.raises(GuestMessageError):
        open_message(bytes(32), page)


def test_client_sequence_and_wipe() -> None:
    c = GuestMessageClient(KEY, 1)
    req = c.request(MsgType.REPORT_REQ, b"q")
    assert GuestMessageHeader.from_bytes(req).msg_seqno == 1
    good = seal_message(KEY, seqno=2, msg_type=MsgType.REPORT_RSP, vmpck=1, payload=b"a")
    assert c.response(good) == b"a" and c.counter == 2
    assert GuestMessageHeader.from_bytes(c.request(MsgType.REPORT_REQ, b"q")).msg_seqno == 3
    # replaying the old response (seqno 2) is refused and the key is wiped
    with pytest.raises(GuestMessageError):
        c.response(good)
    assert not c.usable
    with pytest.raises(GuestMessageError):
        c.request(MsgType.REPORT_REQ, b"q")


def test_client_refuses_wrong_type() -> None:
    c = GuestMessageClient(KEY, 0)
    c.request(MsgType.KEY_REQ, b"q")
    with pytest.raises(GuestMessageError):
        c.response(seal_message(KEY, seqno=2, msg_type=MsgType.REPORT_RSP, vmpck=0, payload=b"a"))


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=HDR_SIZE + 32))
def test_fuzz_header_parser(data: bytes) -> None:
    try:
        hdr = GuestMessageHeader.from_bytes(data)
    except GuestMessageError:
        return
    assert hdr.algo == 1 and hdr.msg_seqno and hdr.msg_vmpck <= 3 and HDR_SIZE + hdr.msg_size <= len(data)


@settings(max_examples=200)
@given(st.integers(1, 2**64 - 1), st.integers(1, 255), st.integers(0, 3), st.integers(0, 4000), st.integers(1, 255))
def test_fuzz_header_fields_valid(seqno: int, mtype: int, vmpck: int, size: int, mver: int) -> None:
    hdr = SNP_GUEST_MSG_HDR(msg_seqno=seqno, algo=1, hdr_version=1, hdr_size=0x60, msg_type=mtype,
                            msg_version=mver, msg_size=size, msg_vmpck=vmpck)  # fmt: skip
    page = bytes(hdr) + bytes(4096 - HDR_SIZE)
    parsed = GuestMessageHeader.from_bytes(page)
    assert (parsed.msg_seqno, parsed.msg_type, parsed.msg_vmpck, parsed.msg_size) == (seqno, mtype, vmpck, size)
