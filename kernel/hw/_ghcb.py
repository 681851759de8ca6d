"""The GHCB page (snp.md 4.1), its valid bitmap, and the NAE exit codes (snp.md 4.3).

The GHCB is a *shared* page: the guest fills it with C=0 writes and the hypervisor reads it.
:class:`GhcbPage` wraps a private copy of the 4 KiB so each side parses it once, at the boundary,
and never re-reads shared memory while acting on it (no TOCTOU).
"""

from __future__ import annotations

import ctypes
import enum

from ._constants import PAGE_SIZE
from ._errors import GhcbFieldNotValid, GhcbProtocolError
from ._layout import check_layout, packed_fields

__all__ = [
    "GHCB",
    "GHCB_FIELDS",
    "GhcbPage",
    "SwExitCode",
    "GhcbError",
    "GHCB_SHARED_BUFFER_OFFSET",
    "GHCB_SHARED_BUFFER_SIZE",
    "GHCB_PROTOCOL_VERSION",
    "GHCB_USAGE_STANDARD",
]

_u16, _u32, _u64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
GHCB_SHARED_BUFFER_OFFSET = 0x800
GHCB_SHARED_BUFFER_SIZE = 0x7F0
GHCB_PROTOCOL_VERSION = 2
GHCB_USAGE_STANDARD = 0

#: snp.md 4.1, in offset order; register offsets equal the VMSA's.
GHCB_FIELDS: tuple[tuple[int, str, type], ...] = (
    (0x0CB, "cpl", ctypes.c_uint8),
    (0x140, "xss", _u64),
    (0x160, "dr7", _u64),
    (0x1F8, "rax", _u64),
    (0x308, "rcx", _u64),
    (0x310, "rdx", _u64),
    (0x318, "rbx", _u64),
    (0x328, "rbp", _u64),
    (0x330, "rsi", _u64),
    (0x338, "rdi", _u64),
    *((0x340 + 8 * i, f"r{8 + i}", _u64) for i in range(8)),
    (0x390, "sw_exit_code", _u64),
    (0x398, "sw_exit_info_1", _u64),
    (0x3A0, "sw_exit_info_2", _u64),
    (0x3A8, "sw_scratch", _u64),
    (0x3E8, "xcr0", _u64),
    (0x3F0, "valid_bitmap", _u64 * 2),
    (0x400, "x87_state_gpa", _u64),
    (GHCB_SHARED_BUFFER_OFFSET, "shared_buffer", ctypes.c_uint8 * GHCB_SHARED_BUFFER_SIZE),
    (0xFFA, "protocol_version", _u16),
    (0xFFC, "ghcb_usage", _u32),
)


class GHCB(ctypes.LittleEndianStructure):
    """GHCB page, protocol version 2 standard format (snp.md 4.1)."""

    _pack_ = 1
    _fields_ = packed_fields(GHCB_FIELDS, PAGE_SIZE)


check_layout(GHCB, GHCB_FIELDS, PAGE_SIZE)
assert GHCB.sw_exit_code.offset == 0x390 and GHCB.valid_bitmap.offset == 0x3F0 and ctypes.sizeof(GHCB) == 0x1000

_OFFSETS = {name: off for off, name, _ in GHCB_FIELDS}
#: Fields covered by the valid bitmap (offset < 0x400: bit off/8 of the 128-bit bitmap).
_TRACKED = {name for off, name, _ in GHCB_FIELDS if off < 0x3F0}


class SwExitCode(enum.IntEnum):
    """SW_EXITCODE of an NAE event (snp.md 4.3)."""

    RDTSC = 0x6E
    CPUID = 0x72
    IOIO = 0x7B
    MSR = 0x7C
    VMMCALL = 0x81
    RDTSCP = 0x87
    MMIO_READ = 0x8000_0001
    MMIO_WRITE = 0x8000_0002
    NMI_COMPLETE = 0x8000_0003
    AP_HLT_LOOP = 0x8000_0004
    AP_JUMP_TABLE = 0x8000_0005
    SNP_PAGE_STATE_CHANGE = 0x8000_0010
    SNP_GUEST_REQUEST = 0x8000_0011
    SNP_EXT_GUEST_REQUEST = 0x8000_0012
    SNP_AP_CREATION = 0x8000_0013
    HV_DOORBELL_PAGE = 0x8000_0014
    HV_IPI = 0x8000_0015
    GET_APIC_IDS = 0x8000_0017
    SNP_RUN_VMPL = 0x8000_0018
    SECURE_AVIC = 0x8000_001A
    HYPERVISOR_FEATURES = 0x8000_FFFD
    TERMINATION_REQUEST = 0x8000_FFFE
    UNSUPPORTED = 0x8000_FFFF


class GhcbError(enum.IntEnum):
    """Reason in SW_EXITINFO2 when SW_EXITINFO1[31:0] = 2 (snp.md 4.1)."""

    NOT_REGISTERED = 1
    INVALID_USAGE = 2
    INVALID_SCRATCH_AREA = 3
    MISSING_INPUT = 4
    INVALID_INPUT = 5
    INVALID_EVENT = 6


class GhcbPage:
    """A private, typed copy of a GHCB page with valid-bitmap bookkeeping.

    Setting a tracked field through :meth:`set` also marks it valid; :meth:`get` of a field that
    is not marked valid raises :class:`GhcbProtocolError` (the hypervisor then answers
    MISSING_INPUT).  Attribute access (``page.sw_exit_code``) reads without checking.

    :param raw: 4096 bytes read from the shared page; ``None`` for a cleared page.

    .. versionadded:: 0.1
    """

    __slots__ = ("_buf", "_s")

    def __init__(self, raw: bytes | None = None) -> None:
        if raw is not None and len(raw) != PAGE_SIZE:
            raise GhcbProtocolError(f"GHCB must be {PAGE_SIZE} bytes, got {len(raw)}")
        object.__setattr__(self, "_buf", bytearray(raw) if raw is not None else bytearray(PAGE_SIZE))
        object.__setattr__(self, "_s", GHCB.from_buffer(self._buf))

    # valid bitmap
    def is_valid(self, name: str) -> bool:
        """Whether field ``name``'s bit is set in the valid bitmap."""
        off = _OFFSETS[name]
        return bool(self._s.valid_bitmap[off >> 9] >> ((off >> 3) & 63) & 1)

    def mark_valid(self, name: str) -> None:
        """Set field ``name``'s valid bit (qword off>>9, bit (off>>3)&63)."""
        off = _OFFSETS[name]
        self._s.valid_bitmap[off >> 9] |= 1 << ((off >> 3) & 63)

    def clear(self) -> None:
        """What a guest does before each use: zero sw_exit_code and the valid bitmap."""
        self._s.sw_exit_code = 0
        self._s.valid_bitmap[0] = self._s.valid_bitmap[1] = 0

    def set(self, name: str, value: int) -> None:
        """Write a tracked field and mark it valid."""
        setattr(self._s, name, value)
        if name in _TRACKED:
            self.mark_valid(name)

    def get(self, name: str) -> int:
        """Read a tracked field the other side must have marked valid.

        :raises GhcbFieldNotValid: the field's valid bit is clear.
        """
        if name in _TRACKED and not self.is_valid(name):
            raise GhcbFieldNotValid(f"GHCB field {name} not marked valid")
        return int(getattr(self._s, name))

    def __getattr__(self, name: str) -> int:
        if name not in _OFFSETS or name in ("valid_bitmap", "shared_buffer"):
            raise AttributeError(name)
        return int(getattr(self._s, name))

    def __setattr__(self, name: str, value: int) -> None:
        if name not in _OFFSETS or name in ("valid_bitmap", "shared_buffer"):
            raise AttributeError(f"GHCB has no scalar field {name!r}")
        setattr(self._s, name, value)

    @property
    def shared_buffer(self) -> bytes:
        """Copy of the 0x7F0-byte shared buffer at 0x800."""
        return bytes(self._buf[GHCB_SHARED_BUFFER_OFFSET : GHCB_SHARED_BUFFER_OFFSET + GHCB_SHARED_BUFFER_SIZE])

    def write_shared_buffer(self, data: bytes, offset: int = 0) -> None:
        """Copy ``data`` into the shared buffer at ``offset``."""
        if offset < 0 or offset + len(data) > GHCB_SHARED_BUFFER_SIZE:
            raise GhcbProtocolError("data does not fit the GHCB shared buffer")
        start = GHCB_SHARED_BUFFER_OFFSET + offset
        self._buf[start : start + len(data)] = data

    def to_bytes(self) -> bytes:
        """The page, to write back to shared memory."""
        return bytes(self._buf)
