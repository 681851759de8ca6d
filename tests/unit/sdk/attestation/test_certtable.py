"""Extended guest request certificate table (snp.md 2.4) and secrets page layout (2.5)."""

from __future__ import annotations

import ctypes
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.sdk.attestation import (
    ARK_GUID,
    ASK_GUID,
    SNP_SECRETS_PAGE,
    VCEK_GUID,
    CertTableError,
    build_cert_table,
    parse_cert_table,
)


def test_table_layout_and_round_trip() -> None:
    certs = {VCEK_GUID: b"v" * 10, ASK_GUID: b"s" * 3, ARK_GUID: b"a"}
    buf = build_cert_table(certs)
    # 3 entries + terminator, 24 bytes each; GUIDs in EFI byte order
    assert buf[:16] == uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes_le
    assert int.from_bytes(buf[16:20], "little") == 96 and int.from_bytes(buf[20:24], "little") == 10
    assert buf[72:96] == bytes(24)
    assert parse_cert_table(buf) == certs


@pytest.mark.parametrize("buf", [b"", bytes(23), build_cert_table({VCEK_GUID: b"x"})[:24]])
def test_missing_terminator(buf: bytes) -> None:
    with pytest.raises(CertTableError):
        parse_cert_table(buf)


def test_entry_out_of_bounds() -> None:
    buf = bytearray(build_cert_table({VCEK_GUID: b"abc"}))
    buf[20:24] = (1000).to_bytes(4, "little")
    with pytest.raises(CertTableError):
        parse_cert_table(bytes(buf))


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_fuzz_parse(buf: bytes) -> None:
    try:
        out = parse_cert_table(buf)
    except CertTableError:
        return
    assert all(len(v) <= len(buf) for v in out.values())


def test_secrets_page_layout() -> None:
    spec = {"version": 0x000, "imien": 0x004, "fms": 0x008, "gosvw": 0x010, "vmpck0": 0x020, "vmpck1": 0x040,
            "vmpck2": 0x060, "vmpck3": 0x080, "msg_seqno_0": 0x0A0, "ap_jump_table_pa": 0x0B0,
            "guest_usage": 0x0E0, "vmsa_tweak_bitmap": 0x100, "svsm_base": 0x140, "svsm_size": 0x148,
            "svsm_caa": 0x150, "svsm_max_version": 0x158, "svsm_guest_vmpl": 0x15C, "tsc_factor": 0x160}  # fmt: skip
    assert ctypes.sizeof(SNP_SECRETS_PAGE) == 4096
    for name, off in spec.items():
        assert getattr(SNP_SECRETS_PAGE, name).offset == off, name
    page = SNP_SECRETS_PAGE()
    ctypes.memmove(page.vmpck2, b"k" * 32, 32)
    assert page.vmpck(2) == b"k" * 32 and page.vmpck(1) == bytes(32)
    with pytest.raises(ValueError):
        page.vmpck(4)
