"""The SEV-SNP ATTESTATION_REPORT: one layout declaration and a frozen parsed value.

The byte layout (snp.md section 1, 0x4A0 bytes) is declared once here as a packed
little-endian ctypes structure with offset asserts copied from the spec table.  Report
versions 2, 3 and 5 share it: in version 2 the CPUID bytes are reserved, and before
version 5 the mitigation vectors are reserved (they are parsed as ``None``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
from typing import NamedTuple

from .._errors import InvalidFormat

__all__ = [
    "ATTESTATION_REPORT",
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "SIGNATURE_ALGO_ECDSA_P384_SHA384",
    "SUPPORTED_VERSIONS",
    "AttestationReport",
    "ReportFormatError",
    "TcbLayout",
    "TcbVersion",
    "build_report_bytes",
    "decode_tcb",
    "encode_tcb",
    "tcb_layout",
]

#: Size of the report (snp.md 1).
REPORT_SIZE = 0x4A0
#: The signature covers bytes ``0 .. SIGNED_SIZE - 1``.
SIGNED_SIZE = 0x2A0
#: SIGNATURE_ALGO value for ECDSA P-384 with SHA-384.
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
#: Report versions this package parses and the PSP model produces.
SUPPORTED_VERSIONS = (2, 3, 5)

_u8, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64


def _arr(n: int) -> type[ctypes.Array[ctypes.c_uint8]]:
    return ctypes.c_uint8 * n


class ATTESTATION_REPORT(ctypes.LittleEndianStructure):
    """Raw report layout (snp.md 1).  Hazardous: use :class:`AttestationReport` instead."""

    _pack_ = 1
    _fields_ = [
        ("version", _u32),
        ("guest_svn", _u32),
        ("policy", _u64),
        ("family_id", _arr(16)),
        ("image_id", _arr(16)),
        ("vmpl", _u32),
        ("signature_algo", _u32),
        ("current_tcb", _u64),
        ("platform_info", _u64),
        ("key_info", _u32),
        ("reserved0", _u32),
        ("report_data", _arr(64)),
        ("measurement", _arr(48)),
        ("host_data", _arr(32)),
        ("id_key_digest", _arr(48)),
        ("author_key_digest", _arr(48)),
        ("report_id", _arr(32)),
        ("report_id_ma", _arr(32)),
        ("reported_tcb", _u64),
        ("cpuid_fam_id", _u8),
        ("cpuid_mod_id", _u8),
        ("cpuid_step", _u8),
        ("reserved1", _arr(21)),
        ("chip_id", _arr(64)),
        ("committed_tcb", _u64),
        ("current_build", _u8),
        ("current_minor", _u8),
        ("current_major", _u8),
        ("reserved2", _u8),
        ("committed_build", _u8),
        ("committed_minor", _u8),
        ("committed_major", _u8),
        ("reserved3", _u8),
        ("launch_tcb", _u64),
        ("launch_mit_vector", _u64),
        ("current_mit_vector", _u64),
        ("reserved4", _arr(152)),
        ("signature_r", _arr(72)),
        ("signature_s", _arr(72)),
        ("reserved5", _arr(368)),
    ]


_OFFSETS = {
    "version": 0x000, "guest_svn": 0x004, "policy": 0x008, "family_id": 0x010, "image_id": 0x020,
    "vmpl": 0x030, "signature_algo": 0x034, "current_tcb": 0x038, "platform_info": 0x040,
    "key_info": 0x048, "reserved0": 0x04C, "report_data": 0x050, "measurement": 0x090,
    "host_data": 0x0C0, "id_key_digest": 0x0E0, "author_key_digest": 0x110, "report_id": 0x140,
    "report_id_ma": 0x160, "reported_tcb": 0x180, "cpuid_fam_id": 0x188, "cpuid_mod_id": 0x189,
    "cpuid_step": 0x18A, "reserved1": 0x18B, "chip_id": 0x1A0, "committed_tcb": 0x1E0,
    "current_build": 0x1E8, "current_minor": 0x1E9, "current_major": 0x1EA, "reserved2": 0x1EB,
    "committed_build": 0x1EC, "committed_minor": 0x1ED, "committed_major": 0x1EE,
    "reserved3": 0x1EF, "launch_tcb": 0x1F0, "launch_mit_vector": 0x1F8,
    "current_mit_vector": 0x200, "reserved4": 0x208, "signature_r": 0x2A0, "signature_s": 0x2E8,
    "reserved5": 0x330,
}  # fmt: skip
assert ctypes.sizeof(ATTESTATION_REPORT) == REPORT_SIZE
for _name, _off in _OFFSETS.items():
    assert getattr(ATTESTATION_REPORT, _name).offset == _off, _name
assert ATTESTATION_REPORT.signature_r.offset == SIGNED_SIZE


class ReportFormatError(InvalidFormat):
    """Report bytes are not a well-formed ATTESTATION_REPORT (size, version, reserved bytes).

    Treat the report as untrusted garbage; nothing in it may be used.
    """


class TcbLayout(enum.Enum):
    """How the 8 TCB_VERSION bytes are assigned (snp.md 1, end)."""

    MILAN_GENOA = "milan-genoa"
    TURIN = "turin"


class TcbVersion(NamedTuple):
    """A decoded TCB_VERSION.  ``fmc`` is only meaningful on Turin and later."""

    boot_loader: int
    tee: int
    snp: int
    microcode: int
    fmc: int = 0


def tcb_layout(cpuid_fam_id: int, cpuid_mod_id: int) -> TcbLayout:
    """Pick the TCB byte layout from the report's CPUID fields (family 0x1A+ = Turin).

    :param cpuid_fam_id: combined family (0 in v2 reports: treated as Milan/Genoa).
    :param cpuid_mod_id: combined model.
    """
    return TcbLayout.TURIN if cpuid_fam_id >= 0x1A else TcbLayout.MILAN_GENOA


def decode_tcb(raw: int, layout: TcbLayout = TcbLayout.MILAN_GENOA) -> TcbVersion:
    """Split a u64 TCB_VERSION into its security patch levels.

    :param raw: the u64 as stored in the report.
    :param layout: byte assignment (:func:`tcb_layout`).
    """
    b = raw.to_bytes(8, "little")
    if layout is TcbLayout.TURIN:
        return TcbVersion(boot_loader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
    return TcbVersion(boot_loader=b[0], tee=b[1], snp=b[6], microcode=b[7])


def encode_tcb(tcb: TcbVersion, layout: TcbLayout = TcbLayout.MILAN_GENOA) -> int:
    """Inverse of :func:`decode_tcb`."""
    b = bytearray(8)
    if layout is TcbLayout.TURIN:
        b[0], b[1], b[2], b[3], b[7] = tcb.fmc, tcb.boot_loader, tcb.tee, tcb.snp, tcb.microcode
    else:
        b[0], b[1], b[6], b[7] = tcb.boot_loader, tcb.tee, tcb.snp, tcb.microcode
    return int.from_bytes(b, "little")


_BYTES_FIELDS = (
    "family_id", "image_id", "report_data", "measurement", "host_data", "id_key_digest",
    "author_key_digest", "report_id", "report_id_ma", "chip_id",
)  # fmt: skip
_INT_FIELDS = (
    "version", "guest_svn", "policy", "vmpl", "signature_algo", "current_tcb", "platform_info",
    "key_info", "reported_tcb", "committed_tcb", "launch_tcb",
    "current_build", "current_minor", "current_major",
    "committed_build", "committed_minor", "committed_major",
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class AttestationReport:
    """A parsed report.  Build one with :meth:`from_bytes`; nothing here is verified yet.

    Fields keep their spec names.  ``cpuid_*`` are ``None`` in version 2 reports and the
    mitigation vectors are ``None`` before version 5.  ``signature_r``/``signature_s`` are
    the integers (the report stores them little-endian, zero-extended to 72 bytes).

    .. versionadded:: 0.1
    """

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int
    #: The exact bytes parsed (the signature is checked over ``raw[:SIGNED_SIZE]``).
    raw: bytes = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationReport:
        """Parse untrusted report bytes.

        :param data: exactly :data:`REPORT_SIZE` bytes.
        :returns: the frozen value.
        :raises ReportFormatError: wrong size, unsupported version, or a non-zero byte where
            the version's layout reserves it.  Discard the report.
        """
        if len(data) != REPORT_SIZE:
            raise ReportFormatError(f"report is {len(data)} bytes, expected {REPORT_SIZE}")
        raw = ATTESTATION_REPORT.from_buffer_copy(data)
        if raw.version not in SUPPORTED_VERSIONS:
            raise ReportFormatError(f"unsupported report version {raw.version}")
        reserved = [bytes(raw.reserved1), bytes(raw.reserved4), bytes(raw.reserved5)]
        reserved.append(bytes([raw.reserved2, raw.reserved3]) + raw.reserved0.to_bytes(4, "little"))
        if raw.version < 3:
            reserved.append(bytes([raw.cpuid_fam_id, raw.cpuid_mod_id, raw.cpuid_step]))
        if raw.version < 5:
            reserved.append(raw.launch_mit_vector.to_bytes(8, "little") + raw.current_mit_vector.to_bytes(8, "little"))
        if any(any(r) for r in reserved):
            raise ReportFormatError("reserved report bytes are not zero")
        if any(bytes(raw.signature_r)[48:]) or any(bytes(raw.signature_s)[48:]):
            raise ReportFormatError("signature components exceed 48 bytes")
        values: dict[str, object] = {name: getattr(raw, name) for name in _INT_FIELDS}
        values.update({name: bytes(getattr(raw, name)) for name in _BYTES_FIELDS})
        v3 = raw.version >= 3
        v5 = raw.version >= 5
        values.update(
            cpuid_fam_id=raw.cpuid_fam_id if v3 else None,
            cpuid_mod_id=raw.cpuid_mod_id if v3 else None,
            cpuid_step=raw.cpuid_step if v3 else None,
            launch_mit_vector=raw.launch_mit_vector if v5 else None,
            current_mit_vector=raw.current_mit_vector if v5 else None,
            signature_r=int.from_bytes(bytes(raw.signature_r), "little"),
            signature_s=int.from_bytes(bytes(raw.signature_s), "little"),
        )
        return cls(raw=bytes(data), **values)  # type: ignore[arg-type]

    @property
    def signed_bytes(self) -> bytes:
        """The bytes the signature covers (0x000..0x29F)."""
        return self.raw[:SIGNED_SIZE]

    @property
    def signing_key(self) -> int:
        """KEY_INFO bits 4:2 (0 VCEK, 1 VLEK, 7 none)."""
        return (self.key_info >> 2) & 7

    @property
    def mask_chip_key(self) -> bool:
        """KEY_INFO bit 1: the firmware did not sign (signature is zero)."""
        return bool(self.key_info & 2)

    @property
    def layout(self) -> TcbLayout:
        """The TCB byte layout this report's chip uses."""
        return tcb_layout(self.cpuid_fam_id or 0, self.cpuid_mod_id or 0)

    def tcb(self, which: str = "reported_tcb") -> TcbVersion:
        """Decode one of the TCB fields (``current_tcb``, ``reported_tcb``, ...)."""
        return decode_tcb(getattr(self, which), self.layout)


def build_report_bytes(**fields: object) -> bytes:
    """Lay out a report from field values (the PSP model's encoder).

    Hazardous: produces unsigned bytes; only the PSP and tests call it.

    :param fields: :class:`ATTESTATION_REPORT` field names; byte fields take ``bytes``,
        signature fields take integers.
    :raises ValueError: a field name that does not exist or a value that does not fit.
    """
    raw = ATTESTATION_REPORT()
    for name, value in fields.items():
        ctype = dict(ATTESTATION_REPORT._fields_).get(name)
        if ctype is None:
            raise ValueError(f"no report field {name!r}")
        if name in ("signature_r", "signature_s"):
            value = int(value).to_bytes(72, "little")  # type: ignore[call-overload]
        if isinstance(value, (bytes, bytearray)):
            size = ctypes.sizeof(ctype)
            if len(value) != size:
                raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
            ctypes.memmove(ctypes.addressof(raw) + getattr(ATTESTATION_REPORT, name).offset, bytes(value), size)
        else:
            if not 0 <= int(value) < 1 << (8 * ctypes.sizeof(ctype)):  # type: ignore[call-overload]
                raise ValueError(f"{name}={value!r} does not fit")
            setattr(raw, name, value)
    return bytes(raw)

