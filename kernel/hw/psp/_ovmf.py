"""OVMF-style firmware images as QEMU reads them: the footer GUID table and SEV metadata.

snp.md 3.7 (checked against sev-snp-measure): all offsets count from the END of the image.
The last 32 bytes are skipped (reset vector); before them sits the footer entry ``{u16 size,
GUID}``; entries ``[data][u16 size][GUID]`` run backwards from it.  The SEV metadata entry
points (offset from the end) at an ``ASEV`` header followed by ``{gpa, size, type}`` items.
Parsing is pure and raises :class:`FirmwareImageError` on anything malformed.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import uuid

from svsm.sdk import InvalidFormat

__all__ = [
    "FOUR_GB",
    "FirmwareImage",
    "build_image",
    "build_metadata",
    "build_table",
    "FirmwareImageError",
    "SEV_METADATA_DESC",
    "SEV_METADATA_HEADER",
    "SectionType",
    "SevMetadataSection",
    "TABLE_ENTRY_HEADER",
    "OVMF_TABLE_FOOTER_GUID",
    "SEV_ES_RESET_BLOCK_GUID",
    "SEV_HASH_TABLE_RV_GUID",
    "OVMF_SEV_META_DATA_GUID",
    "SEV_SECRET_BLOCK_GUID",
    "SVSM_INFO_GUID",
]

FOUR_GB = 0x1_0000_0000
PAGE_SIZE = 4096

OVMF_TABLE_FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_ES_RESET_BLOCK_GUID = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
OVMF_SEV_META_DATA_GUID = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc")
SEV_HASH_TABLE_RV_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
SEV_SECRET_BLOCK_GUID = uuid.UUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294")
SVSM_INFO_GUID = uuid.UUID("a789a612-0597-4c4b-a49f-cbb1fe9d1ddd")

#: Bytes at the very end of the image that the table skips (the reset vector lives there).
_TAIL = 32
#: ``{u16 size, GUID[16]}`` closing every table entry (and the footer).
TABLE_ENTRY_HEADER = struct.Struct("<H16s")
assert TABLE_ENTRY_HEADER.size == 18
#: ``ASEV`` header: signature, size (16 + 12 n), version (1), number of items.
SEV_METADATA_HEADER = struct.Struct("<4sIII")
assert SEV_METADATA_HEADER.size == 16
#: One metadata item: gpa, size, type.
SEV_METADATA_DESC = struct.Struct("<III")
assert SEV_METADATA_DESC.size == 12


class FirmwareImageError(InvalidFormat):
    """The firmware image is malformed; it cannot be launched or measured."""


class SectionType(enum.IntEnum):
    """SEV metadata section types (snp.md 3.2; edk2 OvmfSevMetadata.asm)."""

    SNP_SEC_MEM = 1
    SNP_SECRETS = 2
    CPUID = 3
    SVSM_CAA = 4
    SNP_KERNEL_HASHES = 0x10


@dataclasses.dataclass(frozen=True, slots=True)
class SevMetadataSection:
    """One ``{gpa, size, type}`` item of the SEV metadata."""

    gpa: int
    size: int
    type: SectionType


@dataclasses.dataclass(frozen=True, slots=True)
class FirmwareImage:
    """A parsed firmware image mapped so that it ends at ``end_at`` (4 GiB by default).

    .. versionadded:: 0.1
    """

    data: bytes
    table: dict[uuid.UUID, bytes]
    sections: tuple[SevMetadataSection, ...]
    gpa: int

    @classmethod
    def parse(cls, data: bytes, *, end_at: int = FOUR_GB) -> FirmwareImage:
        """Parse an untrusted image.

        :param data: the whole file; its length must be a multiple of 4 KiB.
        :param end_at: the GPA just past the image (QEMU maps the flash below 4 GiB).
        :raises FirmwareImageError: bad length, bad entry size, bad metadata signature,
            version or section type.  A missing footer GUID is not an error: the image
            simply has no table (like ``OVMF_CODE_4M.fd``).
        """
        if not data or len(data) % PAGE_SIZE:
            raise FirmwareImageError(f"image length {len(data)} is not a non-zero multiple of 4096")
        if len(data) > end_at:
            raise FirmwareImageError("image is larger than the space below end_at")
        table = _parse_table(data)
        sections = _parse_metadata(data, table)
        return cls(data=bytes(data), table=table, sections=sections, gpa=end_at - len(data))

    def _u32(self, guid: uuid.UUID) -> int | None:
        entry = self.table.get(guid)
        if entry is None:
            return None
        if len(entry) < 4:
            raise FirmwareImageError(f"table entry {guid} is shorter than 4 bytes")
        return int.from_bytes(entry[:4], "little")

    @property
    def sev_es_reset_eip(self) -> int:
        """The AP reset EIP from the SEV-ES reset block.

        :raises FirmwareImageError: the image has no SEV-ES reset block (cannot run SNP).
        """
        eip = self._u32(SEV_ES_RESET_BLOCK_GUID)
        if eip is None:
            raise FirmwareImageError("no SEV_ES_RESET_BLOCK_GUID entry in the OVMF table")
        return eip

    @property
    def kernel_hashes_gpa(self) -> int | None:
        """GPA of the SEV hashes table (``None`` or 0 when direct boot is unsupported)."""
        return self._u32(SEV_HASH_TABLE_RV_GUID)

    @property
    def svsm_entry(self) -> int:
        """An SVSM image's entry GPA: its SVSM_INFO entry (offset from the image base) + base.

        :raises FirmwareImageError: no SVSM_INFO entry (not an SVSM image).
        """
        offset = self._u32(SVSM_INFO_GUID)
        if offset is None:
            raise FirmwareImageError("no SVSM_INFO_GUID entry in the SVSM image table")
        return self.gpa + offset

    @property
    def supports_kernel_hashes(self) -> bool:
        """True when QEMU would place a kernel-hashes table (entry present and non-zero)."""
        return bool(self.kernel_hashes_gpa)


def _parse_table(data: bytes) -> dict[uuid.UUID, bytes]:
    footer_at = len(data) - _TAIL - TABLE_ENTRY_HEADER.size
    if footer_at < 0:
        return {}
    size, guid = TABLE_ENTRY_HEADER.unpack_from(data, footer_at)
    if guid != OVMF_TABLE_FOOTER_GUID.bytes_le:
        return {}
    table_size = size - TABLE_ENTRY_HEADER.size
    if table_size < 0 or table_size > footer_at:
        return {}
    body = data[footer_at - table_size : footer_at]
    out: dict[uuid.UUID, bytes] = {}
    end = len(body)
    while end >= TABLE_ENTRY_HEADER.size:
        size, guid = TABLE_ENTRY_HEADER.unpack_from(body, end - TABLE_ENTRY_HEADER.size)
        if size < TABLE_ENTRY_HEADER.size or size > end:
            raise FirmwareImageError(f"invalid OVMF table entry size {size}")
        out[uuid.UUID(bytes_le=guid)] = body[end - size : end - TABLE_ENTRY_HEADER.size]
        end -= size
    return out


def _parse_metadata(data: bytes, table: dict[uuid.UUID, bytes]) -> tuple[SevMetadataSection, ...]:
    entry = table.get(OVMF_SEV_META_DATA_GUID)
    if entry is None:
        return ()
    if len(entry) < 4:
        raise FirmwareImageError("SEV metadata entry is shorter than 4 bytes")
    start = len(data) - int.from_bytes(entry[:4], "little")
    if start < 0 or start + SEV_METADATA_HEADER.size > len(data):
        raise FirmwareImageError("SEV metadata header lies outside the image")
    sig, size, version, count = SEV_METADATA_HEADER.unpack_from(data, start)
    if sig != b"ASEV":
        raise FirmwareImageError("wrong SEV metadata signature")
    if version != 1:
        raise FirmwareImageError(f"wrong SEV metadata version {version}")
    items_at = start + SEV_METADATA_HEADER.size
    if items_at + count * SEV_METADATA_DESC.size > len(data) or size < SEV_METADATA_HEADER.size + count * SEV_METADATA_DESC.size:
        raise FirmwareImageError("SEV metadata items lie outside the image or the header size")
    sections = []
    for i in range(count):
        gpa, sz, kind = SEV_METADATA_DESC.unpack_from(data, items_at + i * SEV_METADATA_DESC.size)
        try:
            stype = SectionType(kind)
        except ValueError as exc:
            raise FirmwareImageError(f"{kind} is not a valid SEV metadata section type") from exc
        sections.append(SevMetadataSection(gpa=gpa, size=sz, type=stype))
    return tuple(sections)


def build_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """Encode footer-table entries plus the footer (the bytes that end 32 bytes before EOF).

    Used by tests and tools that build synthetic images; the first entry ends up furthest
    from the footer, as in OVMF.
    """
    body = b"".join(data + TABLE_ENTRY_HEADER.pack(len(data) + TABLE_ENTRY_HEADER.size, g.bytes_le) for g, data in entries)
    return body + TABLE_ENTRY_HEADER.pack(len(body) + TABLE_ENTRY_HEADER.size, OVMF_TABLE_FOOTER_GUID.bytes_le)


def build_metadata(sections: list[tuple[int, int, int]]) -> bytes:
    """Encode an ``ASEV`` header with ``(gpa, size, type)`` items."""
    head = SEV_METADATA_HEADER.pack(b"ASEV", SEV_METADATA_HEADER.size + SEV_METADATA_DESC.size * len(sections), 1, len(sections))
    return head + b"".join(SEV_METADATA_DESC.pack(*s) for s in sections)



def build_image(
    size: int = 0x10000,
    *,
    reset_eip: int | None = 0xFFFFF004,
    sections: list[tuple[int, int, int]] | None = None,
    hashes_gpa: int | None = None,
    svsm_entry: int | None = None,
    fill: bytes = b"\x90",
) -> bytes:
    """A minimal OVMF-style image accepted by QEMU's and sev-snp-measure's parsers (snp.md 3.7).

    :param size: image size (a multiple of 4 KiB, >= 8 KiB).
    :param reset_eip: SEV-ES reset block EIP (``None``: no reset block).
    :param sections: SEV metadata items ``(gpa, size, type)`` (``None``: no metadata entry).
    :param hashes_gpa: GPA for the SEV hash table entry (``None``: no entry).
    :param svsm_entry: SVSM_INFO entry offset, making this an SVSM image (``None``: no entry).
    :param fill: byte pattern for the body (so pages differ from zero pages).
    """
    if size % PAGE_SIZE or size < 2 * PAGE_SIZE:
        raise ValueError("size must be a multiple of 4096 and at least 8 KiB")
    body = bytearray((fill * (size // len(fill) + 1))[:size])
    meta_off = None
    if sections is not None:
        meta = build_metadata(sections)
        meta_at = PAGE_SIZE  # metadata lives in the second page of the image
        body[meta_at : meta_at + len(meta)] = meta
        meta_off = size - meta_at
    entries: list[tuple[uuid.UUID, bytes]] = []
    if reset_eip is not None:
        entries.append((SEV_ES_RESET_BLOCK_GUID, struct.pack("<I", reset_eip)))
    if meta_off is not None:
        entries.append((OVMF_SEV_META_DATA_GUID, struct.pack("<I", meta_off)))
    if hashes_gpa is not None:
        entries.append((SEV_HASH_TABLE_RV_GUID, struct.pack("<II", hashes_gpa, 0x400)))
    if svsm_entry is not None:
        entries.append((SVSM_INFO_GUID, struct.pack("<I", svsm_entry)))
    table = build_table(entries)
    end = size - _TAIL
    body[end - len(table) : end] = table
    body[end:] = bytes(_TAIL)
    return bytes(body)

