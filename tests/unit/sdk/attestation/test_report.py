"""ATTESTATION_REPORT layout (snp.md 1), parsing per version, TCB decoding, fuzzing."""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.sdk.attestation import (
    ATTESTATION_REPORT,
    REPORT_SIZE,
    SIGNED_SIZE,
    AttestationReport,
    ReportFormatError,
    TcbLayout,
    TcbVersion,
    build_report_bytes,
    decode_tcb,
    encode_tcb,
    report_to_dict,
)

# (offset, size) straight from the snp.md section 1 table.
SPEC = {
    "version": (0x000, 4), "guest_svn": (0x004, 4), "policy": (0x008, 8), "family_id": (0x010, 16),
    "image_id": (0x020, 16), "vmpl": (0x030, 4), "signature_algo": (0x034, 4),
    "current_tcb": (0x038, 8), "platform_info": (0x040, 8), "key_info": (0x048, 4),
    "report_data": (0x050, 64), "measurement": (0x090, 48), "host_data": (0x0C0, 32),
    "id_key_digest": (0x0E0, 48), "author_key_digest": (0x110, 48), "report_id": (0x140, 32),
    "report_id_ma": (0x160, 32), "reported_tcb": (0x180, 8), "cpuid_fam_id": (0x188, 1),
    "cpuid_mod_id": (0x189, 1), "cpuid_step": (0x18A, 1), "chip_id": (0x1A0, 64),
    "committed_tcb": (0x1E0, 8), "current_build": (0x1E8, 1), "current_minor": (0x1E9, 1),
    "current_major": (0x1EA, 1), "committed_build": (0x1EC, 1), "committed_minor": (0x1ED, 1),
    "committed_major": (0x1EE, 1), "launch_tcb": (0x1F0, 8), "launch_mit_vector": (0x1F8, 8),
    "current_mit_vector": (0x200, 8), "signature_r": (0x2A0, 72), "signature_s": (0x2E8, 72),
}  # fmt: skip


def test_layout_matches_spec_table() -> None:
    assert ctypes.sizeof(ATTESTATION_REPORT) == REPORT_SIZE == 0x4A0
    assert SIGNED_SIZE == 0x2A0
    for name, (off, size) in SPEC.items():
        field = getattr(ATTESTATION_REPORT, name)
        assert (field.offset, field.size) == (off, size), name


def _sample(version: int = 3, **over: object) -> bytes:
    fields: dict[str, object] = dict(
        version=version, guest_svn=7, policy=0x30000, vmpl=1, signature_algo=1, current_tcb=0x1D03000000000000,
        report_data=bytes(range(64)), measurement=b"\x11" * 48, chip_id=b"\x22" * 64,
        reported_tcb=0x1D03000000000000, signature_r=(1 << 383) | 5, signature_s=12345,
    )  # fmt: skip
    if version >= 3:
        fields.update(cpuid_fam_id=0x19, cpuid_mod_id=0x01, cpuid_step=1)
    if version >= 5:
        fields.update(launch_mit_vector=3, current_mit_vector=4)
    fields.update(over)
    return build_report_bytes(**fields)


@pytest.mark.parametrize("version", [2, 3, 5])
def test_parse_round_trip(version: int) -> None:
    raw = _sample(version)
    r = AttestationReport.from_bytes(raw)
    assert (r.version, r.guest_svn, r.policy, r.vmpl) == (version, 7, 0x30000, 1)
    assert r.report_data == bytes(range(64)) and r.measurement == b"\x11" * 48
    assert r.signature_r == (1 << 383) | 5 and r.signature_s == 12345
    assert r.raw == raw and r.signed_bytes == raw[:0x2A0]
    assert (r.cpuid_fam_id is None) == (version < 3)
    assert (r.launch_mit_vector is None) == (version < 5)
    if version == 5:
        assert (r.launch_mit_vector, r.current_mit_vector) == (3, 4)
    # signature integers are stored little-endian at 0x2A0 / 0x2E8
    assert raw[0x2A0:0x2A0 + 48] == r.signature_r.to_bytes(48, "little")
    assert report_to_dict(r)["measurement"] == "11" * 48


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (bytes(REPORT_SIZE - 1), "short"),
        (_sample(4), "unknown version"),
        (_sample(2, cpuid_fam_id=0x19), "cpuid in v2"),
        (_sample(3, launch_mit_vector=1), "mit vector before v5"),
        (_sample(3)[:0x18B] + b"\x01" + _sample(3)[0x18C:], "reserved byte"),
        (_sample(3)[:0x2A0 + 48] + b"\x01" + _sample(3)[0x2A0 + 49:], "r wider than 48 bytes"),
    ],
)
def test_malformed_reports_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(ReportFormatError) as info:
        AttestationReport.from_bytes(data)
    assert info.value.code == ReportFormatError.code


def test_build_report_bytes_checks_values() -> None:
    with pytest.raises(ValueError):
        build_report_bytes(version=1 << 32)
    with pytest.raises(ValueError):
        build_report_bytes(measurement=b"short")
    with pytest.raises(ValueError):
        build_report_bytes(no_such_field=1)


@pytest.mark.parametrize("layout", list(TcbLayout))
def test_tcb_round_trip(layout: TcbLayout) -> None:
    tcb = TcbVersion(boot_loader=3, tee=1, snp=22, microcode=0xD5, fmc=2 if layout is TcbLayout.TURIN else 0)
    assert decode_tcb(encode_tcb(tcb, layout), layout) == tcb


def test_tcb_byte_positions() -> None:
    # Milan/Genoa: [0]=BOOT_LOADER [1]=TEE [6]=SNP [7]=MICROCODE; Turin: [0]=FMC [1]=BL [2]=TEE [3]=SNP [7]=UCODE
    assert decode_tcb(int.from_bytes(bytes([1, 2, 0, 0, 0, 0, 3, 4]), "little")) == TcbVersion(1, 2, 3, 4)
    raw = int.from_bytes(bytes([9, 1, 2, 3, 0, 0, 0, 4]), "little")
    assert decode_tcb(raw, TcbLayout.TURIN) == TcbVersion(1, 2, 3, 4, fmc=9)


@settings(max_examples=200)
@given(st.binary(min_size=0, max_size=REPORT_SIZE + 8))
def test_fuzz_parse_raises_only_format_error(data: bytes) -> None:
    try:
        r = AttestationReport.from_bytes(data)
    except ReportFormatError:
        return
    assert r.raw == data


@settings(max_examples=100)
@given(st.integers(0, REPORT_SIZE - 1), st.integers(1, 255))
def test_fuzz_single_byte_mutations(pos: int, xor: int) -> None:
    raw = bytearray(_sample(3))
    raw[pos] ^= xor
    try:
        r = AttestationReport.from_bytes(bytes(raw))
    except ReportFormatError:
        return
    assert r.raw == bytes(raw)
