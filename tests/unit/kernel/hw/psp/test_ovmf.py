"""OVMF footer table and SEV metadata parsing (snp.md 3.6, 3.7), against real OVMF and fuzzed."""

from __future__ import annotations

import pathlib
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.kernel.hw.psp import FirmwareImage, FirmwareImageError, SectionType, build_image, build_metadata, build_table
from svsm.kernel.hw.psp._ovmf import OVMF_TABLE_FOOTER_GUID, SEV_METADATA_DESC, SEV_METADATA_HEADER, TABLE_ENTRY_HEADER
from svsm.sdk.testing import strict

OVMF = pathlib.Path("/usr/share/ovmf/OVMF.fd")


def _missing(reason: str) -> None:
    """Skip, or fail under SVSM_STRICT=1 (CI installs everything these tests need)."""
    if strict():
        pytest.fail(f"SVSM_STRICT=1 and {reason}", pytrace=False)
    pytest.skip(reason)


def test_structure_sizes() -> None:
    assert (TABLE_ENTRY_HEADER.size, SEV_METADATA_HEADER.size, SEV_METADATA_DESC.size) == (18, 16, 12)


def test_debian_ovmf_metadata() -> None:
    if not OVMF.exists():
        _missing("Debian ovmf package not installed: apt-get install ovmf")
    img = FirmwareImage.parse(OVMF.read_bytes())
    assert img.gpa == 0x1_0000_0000 - len(img.data)
    # snp.md 3.6: the sections of Debian's OVMF.fd, in table order
    assert [(s.gpa, s.size, s.type) for s in img.sections] == [
        (0x800000, 0x9000, SectionType.SNP_SEC_MEM),
        (0x80A000, 0x3000, SectionType.SNP_SEC_MEM),
        (0x80D000, 0x1000, SectionType.SNP_SECRETS),
        (0x80E000, 0x1000, SectionType.CPUID),
        (0x80F000, 0x11000, SectionType.SNP_SEC_MEM),
    ]
    assert img.sev_es_reset_eip == 0x80B004
    assert not img.supports_kernel_hashes


def test_synthetic_image_round_trip() -> None:
    sections = [(0x800000, 0x2000, 1), (0x802000, 0x1000, 2), (0x803000, 0x1000, 3), (0x804000, 0x1000, 0x10)]
    img = FirmwareImage.parse(build_image(0x8000, reset_eip=0x1234, sections=sections, hashes_gpa=0x804C00))
    assert [(s.gpa, s.size, int(s.type)) for s in img.sections] == sections
    assert img.sev_es_reset_eip == 0x1234
    assert img.kernel_hashes_gpa == 0x804C00 and img.supports_kernel_hashes


def test_missing_footer_guid_means_empty_table() -> None:
    img = FirmwareImage.parse(bytes(0x2000))
    assert img.table == {} and img.sections == ()
    with pytest.raises(FirmwareImageError):
        img.sev_es_reset_eip


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(4095),
        # one entry whose size field (5) is below the 18-byte entry header
        bytes(0x2000 - 32 - 36)
        + TABLE_ENTRY_HEADER.pack(5, uuid.UUID(int=7).bytes_le)
        + TABLE_ENTRY_HEADER.pack(36, OVMF_TABLE_FOOTER_GUID.bytes_le)
        + bytes(32),
    ],
)
def test_malformed_images(data: bytes) -> None:
    with pytest.raises(FirmwareImageError):
        FirmwareImage.parse(data)


def test_bad_metadata() -> None:
    good = build_image(0x4000, sections=[(0x800000, 0x1000, 1)])
    meta_at = 0x1000
    with pytest.raises(FirmwareImageError):  # signature
        FirmwareImage.parse(good[:meta_at] + b"XSEV" + good[meta_at + 4 :])
    with pytest.raises(FirmwareImageError):  # version
        FirmwareImage.parse(good[:meta_at + 8] + (2).to_bytes(4, "little") + good[meta_at + 12 :])
    bad_type = build_metadata([(0x800000, 0x1000, 7)])
    with pytest.raises(FirmwareImageError):
        FirmwareImage.parse(good[:meta_at] + bad_type + good[meta_at + len(bad_type) :])


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.sampled_from([0x2000, 0x3000]))
def test_fuzz_table_region(tail: bytes, size: int) -> None:
    """Arbitrary bytes in the footer-table region: only FirmwareImageError may escape."""
    base = bytearray(build_image(size, sections=[(0x800000, 0x1000, 1)]))
    base[size - 32 - len(tail) : size - 32] = tail
    try:
        img = FirmwareImage.parse(bytes(base))
    except FirmwareImageError:
        return
    assert all(isinstance(k, uuid.UUID) for k in img.table)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.uuids(), st.binary(max_size=40)), max_size=6))
def test_fuzz_table_entries_round_trip(entries: list[tuple[uuid.UUID, bytes]]) -> None:
    table = build_table(entries)
    size = 0x2000
    data = bytes(size - 32 - len(table)) + table + bytes(32)
    img = FirmwareImage.parse(data)
    expect: dict[uuid.UUID, bytes] = {}
    for guid, blob in reversed(entries):  # parsed from the footer backwards; earlier entries win
        expect[guid] = blob
    assert img.table == expect
