"""The guest-visible SVSM ABI: protocol numbers, the calling area, the PVALIDATE list,
the attestation call blocks and the services manifest.

Each layout is declared once here (coconut-svsm.md 2.1, 2.2, 2.4; snp.md 4.5) as a packed
little-endian ctypes structure, followed by size and offset asserts copied from the spec
tables.  The SDK holds them because both sides need the same declaration: the kernel's
protocol code parses them out of guest memory and the guest driver builds them, and the SDK
may not import the kernel.  Everything parsed here comes from the untrusted side, so the
``from_bytes`` constructors check every reserved field and return frozen values; code past
them never looks at raw integers again.
"""

from __future__ import annotations

import ctypes
import dataclasses
import struct
import uuid

from .._errors import InvalidFormat, InvalidParameter, UnsupportedProtocol

__all__ = [
    "SVSM_CORE_PROTOCOL",
    "SVSM_ATTEST_PROTOCOL",
    "SVSM_VTPM_PROTOCOL",
    "SVSM_APIC_PROTOCOL",
    "SVSM_UEFI_MM_PROTOCOL",
    "SVSM_REQ_CORE_REMAP_CA",
    "SVSM_REQ_CORE_PVALIDATE",
    "SVSM_REQ_CORE_CREATE_VCPU",
    "SVSM_REQ_CORE_DELETE_VCPU",
    "SVSM_REQ_CORE_DEPOSIT_MEM",
    "SVSM_REQ_CORE_WITHDRAW_MEM",
    "SVSM_REQ_CORE_QUERY_PROTOCOL",
    "SVSM_REQ_CORE_CONFIGURE_VTOM",
    "SVSM_REQ_ATTEST_SERVICES",
    "SVSM_REQ_ATTEST_SINGLE_SERVICE",
    "PAGE_SIZE",
    "PAGE_SIZE_2M",
    "SVSM_CA",
    "SVSM_PVALIDATE_HDR",
    "SVSM_ATTEST_SERVICES_REQUEST",
    "SVSM_ATTEST_SINGLE_SERVICE_REQUEST",
    "SVSM_SERVICES_MANIFEST_HDR",
    "SVSM_SERVICES_MANIFEST_ENTRY",
    "SERVICES_MANIFEST_GUID",
    "VTPM_SERVICE_GUID",
    "NONCE_SIZE",
    "MAX_CERTIFICATE_SIZE",
    "CallingAreaHeader",
    "PageList",
    "PageListEntry",
    "PvalidateEntry",
    "AttestServicesOp",
    "AttestSingleServiceOp",
    "ServicesManifest",
    "request_rax",
    "split_rax",
]

# ---- protocol and call numbers (coconut-svsm.md 2.1, 2.3, 2.4; snp.md 4.5) -------------
SVSM_CORE_PROTOCOL = 0
SVSM_ATTEST_PROTOCOL = 1
SVSM_VTPM_PROTOCOL = 2
SVSM_APIC_PROTOCOL = 3
SVSM_UEFI_MM_PROTOCOL = 4

SVSM_REQ_CORE_REMAP_CA = 0
SVSM_REQ_CORE_PVALIDATE = 1
SVSM_REQ_CORE_CREATE_VCPU = 2
SVSM_REQ_CORE_DELETE_VCPU = 3
SVSM_REQ_CORE_DEPOSIT_MEM = 4
SVSM_REQ_CORE_WITHDRAW_MEM = 5
SVSM_REQ_CORE_QUERY_PROTOCOL = 6
SVSM_REQ_CORE_CONFIGURE_VTOM = 7

SVSM_REQ_ATTEST_SERVICES = 0
SVSM_REQ_ATTEST_SINGLE_SERVICE = 1

PAGE_SIZE = 0x1000
PAGE_SIZE_2M = 0x20_0000

_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


def request_rax(protocol: int, call: int) -> int:
    """RAX for an SVSM call: ``protocol << 32 | call`` (coconut-svsm.md 2.1)."""
    return ((protocol & 0xFFFF_FFFF) << 32) | (call & 0xFFFF_FFFF)


def split_rax(rax: int) -> tuple[int, int]:
    """Inverse of :func:`request_rax`: ``(protocol, call)``."""
    return (rax >> 32) & 0xFFFF_FFFF, rax & 0xFFFF_FFFF


def _check_offsets(cls: type[ctypes.Structure], size: int, offsets: dict[str, int]) -> None:
    assert ctypes.sizeof(cls) == size, (cls.__name__, ctypes.sizeof(cls))
    for name, off in offsets.items():
        assert getattr(cls, name).offset == off, (cls.__name__, name)


# ---- calling area (coconut-svsm.md 2.1) -----------------------------------------------
class SVSM_CA(ctypes.LittleEndianStructure):
    """The per-vCPU calling area page.  Hazardous: use :class:`CallingAreaHeader`."""

    _pack_ = 1
    _fields_ = [
        ("call_pending", _u8),
        ("mem_available", _u8),
        ("no_eoi_required", _u8),
        ("reserved", _u8 * 5),
        ("svsm_buffer", _u8 * 4088),
    ]


_check_offsets(
    SVSM_CA, 0x1000,
    {"call_pending": 0x0, "mem_available": 0x1, "no_eoi_required": 0x2, "reserved": 0x3, "svsm_buffer": 0x8},
)  # fmt: skip
#: Bytes of the calling area the SVSM reads and writes (the rest is the guest's buffer).
CA_HEADER_SIZE = SVSM_CA.svsm_buffer.offset
_CA_CALL_PENDING = SVSM_CA.call_pending.offset
_CA_MEM_AVAILABLE = SVSM_CA.mem_available.offset
_CA_NO_EOI_REQUIRED = SVSM_CA.no_eoi_required.offset


@dataclasses.dataclass(frozen=True, slots=True)
class CallingAreaHeader:
    """The first 8 bytes of a calling area.  Only ``call_pending == 1`` means a call is pending."""

    call_pending: int
    mem_available: int
    no_eoi_required: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> CallingAreaHeader:
        """Parse the header; reserved bytes are ignored, as upstream does.

        :raises InvalidFormat: fewer than 8 bytes.
        """
        if len(raw) < CA_HEADER_SIZE:
            raise InvalidFormat("calling area header is 8 bytes")
        return cls(raw[_CA_CALL_PENDING], raw[_CA_MEM_AVAILABLE], raw[_CA_NO_EOI_REQUIRED])

    @property
    def pending(self) -> bool:
        """True when the guest set ``call_pending`` to exactly 1."""
        return self.call_pending == 1


# ---- PVALIDATE list (coconut-svsm.md 2.2) ---------------------------------------------
class SVSM_PVALIDATE_HDR(ctypes.LittleEndianStructure):
    """Header of the PVALIDATE request; u64 entries follow at offset 8."""

    _pack_ = 1
    _fields_ = [("entries", _u16), ("next", _u16), ("reserved", _u32)]


_check_offsets(SVSM_PVALIDATE_HDR, 8, {"entries": 0, "next": 2, "reserved": 4})
PVALIDATE_ENTRY_SIZE = 8
_ENTRY_SIZE_MASK = 0x3
_ENTRY_VALIDATE = 1 << 2
_ENTRY_IGNORE_CF = 1 << 3
_ENTRY_RESERVED = 0xFF0
_ENTRY_GFN_SHIFT = 12


@dataclasses.dataclass(frozen=True, slots=True)
class PvalidateEntry:
    """One PVALIDATE list entry: bits [1:0] size, [2] validate, [3] ignore_cf, [63:12] GFN."""

    gpa: int
    huge: bool = False
    validate: bool = True
    ignore_cf: bool = False

    def __post_init__(self) -> None:
        align = PAGE_SIZE_2M if self.huge else PAGE_SIZE
        if self.gpa % align or not 0 <= self.gpa < 1 << 64:
            raise InvalidParameter(f"PVALIDATE entry GPA {self.gpa:#x} not aligned to {align:#x}")

    @classmethod
    def from_raw(cls, raw: int) -> PvalidateEntry:
        """Decode a u64 entry.

        :raises InvalidParameter: size not 0/1, reserved bits [11:4] set, or a 2 MiB entry
            whose GPA is not 2 MiB aligned.
        """
        size = raw & _ENTRY_SIZE_MASK
        if size > 1:
            raise InvalidParameter(f"PVALIDATE entry page size {size}")
        if raw & _ENTRY_RESERVED:
            raise InvalidParameter("PVALIDATE entry reserved bits set")
        return cls(
            gpa=(raw >> _ENTRY_GFN_SHIFT) << _ENTRY_GFN_SHIFT,
            huge=bool(size),
            validate=bool(raw & _ENTRY_VALIDATE),
            ignore_cf=bool(raw & _ENTRY_IGNORE_CF),
        )

    def to_raw(self) -> int:
        """Encode as the u64 the guest writes."""
        return self.gpa | int(self.huge) | (_ENTRY_VALIDATE if self.validate else 0) | (
            _ENTRY_IGNORE_CF if self.ignore_cf else 0
        )

    @property
    def size(self) -> int:
        """Bytes covered: 4 KiB or 2 MiB."""
        return PAGE_SIZE_2M if self.huge else PAGE_SIZE


# ---- page lists: PVALIDATE and (pysvsm's format, docs/protocols.md) DEPOSIT/WITHDRAW ----
@dataclasses.dataclass(frozen=True, slots=True)
class PageListEntry:
    """One DEPOSIT_MEM / WITHDRAW_MEM entry: bits [1:0] size (0 4K, 1 2M), [11:2] reserved, [63:12] GFN."""

    gpa: int
    huge: bool = False

    def __post_init__(self) -> None:
        align = PAGE_SIZE_2M if self.huge else PAGE_SIZE
        if self.gpa % align or not 0 <= self.gpa < 1 << 64:
            raise InvalidParameter(f"page-list GPA {self.gpa:#x} not aligned to {align:#x}")

    @classmethod
    def from_raw(cls, raw: int) -> PageListEntry:
        """Decode a u64 entry.

        :raises InvalidParameter: size not 0/1, reserved bits [11:2] set, misaligned 2 MiB GPA.
        """
        size = raw & _ENTRY_SIZE_MASK
        if size > 1 or raw & 0xFFC:
            raise InvalidParameter("page-list entry size or reserved bits")
        return cls(gpa=(raw >> _ENTRY_GFN_SHIFT) << _ENTRY_GFN_SHIFT, huge=bool(size))

    def to_raw(self) -> int:
        """Encode as the u64 the guest writes."""
        return self.gpa | int(self.huge)

    @property
    def size(self) -> int:
        """Bytes covered: 4 KiB or 2 MiB."""
        return PAGE_SIZE_2M if self.huge else PAGE_SIZE


@dataclasses.dataclass(frozen=True, slots=True)
class PageList:
    """The header shared by the PVALIDATE list and pysvsm's DEPOSIT/WITHDRAW list.

    ``entries`` u16 @0, ``next`` u16 @2, reserved u32 @4, then ``entries`` u64s.  The list
    must fit in its page: at most ``(4096 - page_offset - 8) / 8`` entries.
    """

    entries: int
    next: int

    @staticmethod
    def max_entries(gpa: int) -> int:
        """Entries that fit between ``gpa`` and the end of its page (510 at CAA+8)."""
        return (PAGE_SIZE - (gpa % PAGE_SIZE) - ctypes.sizeof(SVSM_PVALIDATE_HDR)) // PVALIDATE_ENTRY_SIZE

    @classmethod
    def from_bytes(cls, raw: bytes, gpa: int) -> PageList:
        """Parse and check the header found at guest address ``gpa``.

        Reserved header bytes are ignored, as upstream does.

        :raises InvalidParameter: ``gpa`` not 8-aligned, ``entries == 0``, more entries than
            fit in the page, or ``next >= entries``.
        """
        if gpa % 8:
            raise InvalidParameter("page list not 8-byte aligned")
        if len(raw) < ctypes.sizeof(SVSM_PVALIDATE_HDR):
            raise InvalidFormat("page list header is 8 bytes")
        hdr = SVSM_PVALIDATE_HDR.from_buffer_copy(bytes(raw[: ctypes.sizeof(SVSM_PVALIDATE_HDR)]))
        if hdr.entries == 0 or hdr.entries > cls.max_entries(gpa) or hdr.entries <= hdr.next:
            raise InvalidParameter(f"page list entries={hdr.entries} next={hdr.next}")
        return cls(hdr.entries, hdr.next)

    def header_bytes(self) -> bytes:
        """The 8 header bytes, as written back after processing."""
        return bytes(SVSM_PVALIDATE_HDR(self.entries, self.next, 0))

    @staticmethod
    def build(raw_entries: list[int], next_: int = 0) -> bytes:
        """Header plus u64 entries, for the guest side."""
        return bytes(SVSM_PVALIDATE_HDR(len(raw_entries), next_, 0)) + struct.pack(
            f"<{len(raw_entries)}Q", *raw_entries
        )


# ---- attestation call blocks (coconut-svsm.md 2.4) ------------------------------------
#: The nonce must be exactly this long.
NONCE_SIZE = 64
#: Largest certificate buffer the SVSM accepts.
MAX_CERTIFICATE_SIZE = 0x4000


class SVSM_ATTEST_SERVICES_REQUEST(ctypes.LittleEndianStructure):
    """AttestServicesOp, 0x40 bytes at the RCX GPA."""

    _pack_ = 1
    _fields_ = [
        ("report_gpa", _u64),
        ("report_size", _u32),
        ("reserved0", _u8 * 4),
        ("nonce_gpa", _u64),
        ("nonce_size", _u16),
        ("reserved1", _u8 * 6),
        ("manifest_gpa", _u64),
        ("manifest_size", _u32),
        ("reserved2", _u8 * 4),
        ("certificate_gpa", _u64),
        ("certificate_size", _u32),
        ("reserved3", _u8 * 4),
    ]


_check_offsets(
    SVSM_ATTEST_SERVICES_REQUEST, 0x40,
    {"report_gpa": 0x00, "report_size": 0x08, "reserved0": 0x0C, "nonce_gpa": 0x10, "nonce_size": 0x18,
     "reserved1": 0x1A, "manifest_gpa": 0x20, "manifest_size": 0x28, "reserved2": 0x2C,
     "certificate_gpa": 0x30, "certificate_size": 0x38, "reserved3": 0x3C},
)  # fmt: skip


class SVSM_ATTEST_SINGLE_SERVICE_REQUEST(ctypes.LittleEndianStructure):
    """The 0x40-byte op, then service GUID (LE), manifest version, reserved: 0x58 bytes."""

    _pack_ = 1
    _fields_ = [
        ("base", SVSM_ATTEST_SERVICES_REQUEST),
        ("service_guid", _u8 * 16),
        ("manifest_version", _u32),
        ("reserved", _u8 * 4),
    ]


_check_offsets(
    SVSM_ATTEST_SINGLE_SERVICE_REQUEST, 0x58,
    {"base": 0x00, "service_guid": 0x40, "manifest_version": 0x50, "reserved": 0x54},
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class AttestServicesOp:
    """A checked AttestServicesOp.

    Checks at the boundary: reserved bytes zero, nonce exactly 64 bytes and within one page,
    report and manifest GPAs page-aligned, certificate size 0 or at most 0x4000 with a
    page-aligned GPA.
    """

    report_gpa: int
    report_size: int
    nonce_gpa: int
    nonce_size: int
    manifest_gpa: int
    manifest_size: int
    certificate_gpa: int = 0
    certificate_size: int = 0

    def __post_init__(self) -> None:
        if self.nonce_size != NONCE_SIZE:
            raise InvalidParameter("nonce must be 64 bytes")
        if self.nonce_gpa // PAGE_SIZE != (self.nonce_gpa + NONCE_SIZE - 1) // PAGE_SIZE:
            raise InvalidParameter("nonce crosses a page")
        if self.report_gpa % PAGE_SIZE or self.manifest_gpa % PAGE_SIZE:
            raise InvalidParameter("report and manifest buffers must be page-aligned")
        if self.certificate_size:
            if self.certificate_size > MAX_CERTIFICATE_SIZE or self.certificate_gpa % PAGE_SIZE:
                raise InvalidParameter("certificate buffer too large or misaligned")

    @classmethod
    def _from_struct(cls, s: SVSM_ATTEST_SERVICES_REQUEST) -> AttestServicesOp:
        if any(bytes(s.reserved0)) or any(bytes(s.reserved1)) or any(bytes(s.reserved2)) or any(
            bytes(s.reserved3)
        ):
            raise InvalidParameter("reserved bytes in the attestation op")
        return cls(
            s.report_gpa, s.report_size, s.nonce_gpa, s.nonce_size,
            s.manifest_gpa, s.manifest_size, s.certificate_gpa, s.certificate_size,
        )  # fmt: skip

    @classmethod
    def from_bytes(cls, raw: bytes) -> AttestServicesOp:
        """Parse and check 0x40 bytes read from the RCX GPA.

        :raises InvalidParameter: any of the checks in the class docstring.
        :raises InvalidFormat: fewer than 0x40 bytes.
        """
        if len(raw) < ctypes.sizeof(SVSM_ATTEST_SERVICES_REQUEST):
            raise InvalidFormat("AttestServicesOp is 0x40 bytes")
        return cls._from_struct(SVSM_ATTEST_SERVICES_REQUEST.from_buffer_copy(bytes(raw[:0x40])))

    def _struct(self) -> SVSM_ATTEST_SERVICES_REQUEST:
        return SVSM_ATTEST_SERVICES_REQUEST(
            report_gpa=self.report_gpa, report_size=self.report_size, nonce_gpa=self.nonce_gpa,
            nonce_size=self.nonce_size, manifest_gpa=self.manifest_gpa, manifest_size=self.manifest_size,
            certificate_gpa=self.certificate_gpa, certificate_size=self.certificate_size,
        )  # fmt: skip

    def to_bytes(self) -> bytes:
        """The 0x40 bytes the guest writes."""
        return bytes(self._struct())


@dataclasses.dataclass(frozen=True, slots=True)
class AttestSingleServiceOp:
    """A checked single-service op: the services op plus the service GUID (manifest version 0)."""

    op: AttestServicesOp
    service_guid: uuid.UUID
    manifest_version: int = 0

    @classmethod
    def from_bytes(cls, raw: bytes) -> AttestSingleServiceOp:
        """Parse and check 0x58 bytes.

        :raises InvalidParameter: reserved bytes, manifest version not 0, or a bad base op.
        :raises InvalidFormat: fewer than 0x58 bytes.
        """
        if len(raw) < ctypes.sizeof(SVSM_ATTEST_SINGLE_SERVICE_REQUEST):
            raise InvalidFormat("single-service op is 0x58 bytes")
        s = SVSM_ATTEST_SINGLE_SERVICE_REQUEST.from_buffer_copy(bytes(raw[:0x58]))
        if any(bytes(s.reserved)) or s.manifest_version != 0:
            raise InvalidParameter("single-service op reserved bytes or manifest version")
        return cls(AttestServicesOp._from_struct(s.base), uuid.UUID(bytes_le=bytes(s.service_guid)), 0)

    def to_bytes(self) -> bytes:
        """The 0x58 bytes the guest writes."""
        s = SVSM_ATTEST_SINGLE_SERVICE_REQUEST(base=self.op._struct(), manifest_version=self.manifest_version)
        ctypes.memmove(ctypes.addressof(s.service_guid), self.service_guid.bytes_le, 16)
        return bytes(s)


# ---- services manifest (coconut-svsm.md 2.4) ------------------------------------------
SERVICES_MANIFEST_GUID = uuid.UUID("63849ebb-3d92-4670-a1ff-58f9c94b87bb")
VTPM_SERVICE_GUID = uuid.UUID("c476f1eb-0123-45a5-9641-b4e7dde5bfe3")


class SVSM_SERVICES_MANIFEST_HDR(ctypes.LittleEndianStructure):
    """Services manifest header: GUID (LE), total length, entry count."""

    _pack_ = 1
    _fields_ = [("guid", _u8 * 16), ("length", _u32), ("count", _u32)]


class SVSM_SERVICES_MANIFEST_ENTRY(ctypes.LittleEndianStructure):
    """One manifest entry: service GUID (LE), offset from the table start, length."""

    _pack_ = 1
    _fields_ = [("guid", _u8 * 16), ("offset", _u32), ("length", _u32)]


_check_offsets(SVSM_SERVICES_MANIFEST_HDR, 24, {"guid": 0, "length": 16, "count": 20})
_check_offsets(SVSM_SERVICES_MANIFEST_ENTRY, 24, {"guid": 0, "offset": 16, "length": 20})
_MANIFEST_HDR = ctypes.sizeof(SVSM_SERVICES_MANIFEST_HDR)
_MANIFEST_ENTRY = ctypes.sizeof(SVSM_SERVICES_MANIFEST_ENTRY)


@dataclasses.dataclass(frozen=True, slots=True)
class ServicesManifest:
    """The services manifest: ``(service GUID, data)`` pairs in table order."""

    services: tuple[tuple[uuid.UUID, bytes], ...]

    def __post_init__(self) -> None:
        guids = [g for g, _ in self.services]
        if len(set(guids)) != len(guids):
            raise InvalidFormat("duplicate service GUID in the manifest")

    def to_bytes(self) -> bytes:
        """Serialise: header, one entry per service, then the blobs in entry order."""
        table = _MANIFEST_HDR + _MANIFEST_ENTRY * len(self.services)
        total = table + sum(len(d) for _, d in self.services)
        hdr = SVSM_SERVICES_MANIFEST_HDR(length=total, count=len(self.services))
        ctypes.memmove(ctypes.addressof(hdr.guid), SERVICES_MANIFEST_GUID.bytes_le, 16)
        out, blobs, off = bytearray(bytes(hdr)), bytearray(), table
        for guid, data in self.services:
            e = SVSM_SERVICES_MANIFEST_ENTRY(offset=off, length=len(data))
            ctypes.memmove(ctypes.addressof(e.guid), guid.bytes_le, 16)
            out += bytes(e)
            blobs += data
            off += len(data)
        return bytes(out + blobs)

    @classmethod
    def from_bytes(cls, raw: bytes) -> ServicesManifest:
        """Parse an untrusted manifest.

        :raises InvalidFormat: wrong GUID, length mismatch, an entry pointing outside the
            data area, or duplicate GUIDs.
        """
        if len(raw) < _MANIFEST_HDR:
            raise InvalidFormat("services manifest shorter than its header")
        hdr = SVSM_SERVICES_MANIFEST_HDR.from_buffer_copy(bytes(raw[:_MANIFEST_HDR]))
        if bytes(hdr.guid) != SERVICES_MANIFEST_GUID.bytes_le or hdr.length != len(raw):
            raise InvalidFormat("services manifest GUID or length")
        table = _MANIFEST_HDR + _MANIFEST_ENTRY * hdr.count
        if table > len(raw):
            raise InvalidFormat("services manifest entry table overruns")
        services = []
        for i in range(hdr.count):
            pos = _MANIFEST_HDR + i * _MANIFEST_ENTRY
            e = SVSM_SERVICES_MANIFEST_ENTRY.from_buffer_copy(bytes(raw[pos : pos + _MANIFEST_ENTRY]))
            if e.offset < table or e.offset + e.length > len(raw):
                raise InvalidFormat("services manifest entry outside the data area")
            services.append((uuid.UUID(bytes_le=bytes(e.guid)), bytes(raw[e.offset : e.offset + e.length])))
        return cls(tuple(services))

    def get(self, guid: uuid.UUID) -> bytes:
        """The data of service ``guid``.

        :raises UnsupportedProtocol: not in the manifest (the code the SVSM answers an
            unknown GUID with).
        """
        for g, data in self.services:
            if g == guid:
                return data
        raise UnsupportedProtocol(f"service {guid} not in the manifest")
