"""The VMSA (VM save area): one 4 KiB encrypted guest page per (vCPU, VMPL), snp.md 6.

Declared once as a packed ctypes structure with the offsets of the spec table, asserted below.
:class:`VmsaView` reads and writes the registers directly in the page's plaintext form, so a
register access is one ``struct`` call on the page -- no copies on the hot path.
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING

from ._constants import PAGE_SIZE
from ._layout import check_layout, packed_fields

if TYPE_CHECKING:
    from ._memory import PhysicalMemory

__all__ = ["SegmentRecord", "VMSA", "VMSA_FIELDS", "VmsaView", "SEGMENT_NAMES", "GPR_NAMES"]


class SegmentRecord(ctypes.LittleEndianStructure):
    """VMSA segment record (snp.md 6): u16 selector, u16 attrib, u32 limit, u64 base."""

    _pack_ = 1
    _fields_ = [("selector", ctypes.c_uint16), ("attrib", ctypes.c_uint16), ("limit", ctypes.c_uint32), ("base", ctypes.c_uint64)]


assert ctypes.sizeof(SegmentRecord) == 16
assert (SegmentRecord.selector.offset, SegmentRecord.attrib.offset, SegmentRecord.limit.offset, SegmentRecord.base.offset) == (0, 2, 4, 8)

SEGMENT_NAMES = ("es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr")
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

#: snp.md 6, in offset order.
VMSA_FIELDS: tuple[tuple[int, str, type], ...] = (
    *((0x10 * i, n, SegmentRecord) for i, n in enumerate(SEGMENT_NAMES)),
    (0x0A0, "vmpl0_ssp", _u64),
    (0x0A8, "vmpl1_ssp", _u64),
    (0x0B0, "vmpl2_ssp", _u64),
    (0x0B8, "vmpl3_ssp", _u64),
    (0x0C0, "u_cet", _u64),
    (0x0CA, "vmpl", _u8),
    (0x0CB, "cpl", _u8),
    (0x0D0, "efer", _u64),
    (0x140, "xss", _u64),
    (0x148, "cr4", _u64),
    (0x150, "cr3", _u64),
    (0x158, "cr0", _u64),
    (0x160, "dr7", _u64),
    (0x168, "dr6", _u64),
    (0x170, "rflags", _u64),
    (0x178, "rip", _u64),
    (0x1D8, "rsp", _u64),
    (0x1F8, "rax", _u64),
    (0x200, "star", _u64),
    (0x208, "lstar", _u64),
    (0x210, "cstar", _u64),
    (0x218, "sfmask", _u64),
    (0x220, "kernel_gs_base", _u64),
    (0x228, "sysenter_cs", _u64),
    (0x230, "sysenter_esp", _u64),
    (0x238, "sysenter_eip", _u64),
    (0x240, "cr2", _u64),
    (0x268, "g_pat", _u64),
    (0x2E8, "pkru", _u32),
    (0x2F0, "guest_tsc_scale", _u64),
    (0x2F8, "guest_tsc_offset", _u64),
    (0x308, "rcx", _u64),
    (0x310, "rdx", _u64),
    (0x318, "rbx", _u64),
    (0x320, "secure_avic_control", _u64),
    (0x328, "rbp", _u64),
    (0x330, "rsi", _u64),
    (0x338, "rdi", _u64),
    *((0x340 + 8 * i, f"r{8 + i}", _u64) for i in range(8)),
    (0x390, "guest_exit_info_1", _u64),
    (0x398, "guest_exit_info_2", _u64),
    (0x3A0, "guest_exit_int_info", _u64),
    (0x3A8, "guest_nrip", _u64),
    (0x3B0, "sev_features", _u64),
    (0x3B8, "vintr_ctrl", _u64),
    (0x3C0, "guest_exit_code", _u64),
    (0x3C8, "virtual_tom", _u64),
    (0x3D0, "tlb_id", _u64),
    (0x3D8, "pcpu_id", _u64),
    (0x3E0, "event_inj", _u64),
    (0x3E8, "xcr0", _u64),
    (0x408, "mxcsr", _u32),
    (0x410, "x87_fcw", _u16),
)


class VMSA(ctypes.LittleEndianStructure):
    """The SEV-ES/SNP save area, exactly one page (snp.md 6)."""

    _pack_ = 1
    _fields_ = packed_fields(VMSA_FIELDS, PAGE_SIZE)


check_layout(VMSA, VMSA_FIELDS, PAGE_SIZE)
assert VMSA.vmpl.offset == 0xCA and VMSA.sev_features.offset == 0x3B0 and VMSA.rax.offset == 0x1F8

_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_SCALAR = {name: (off, struct.Struct(_FMT[ctypes.sizeof(t)])) for off, name, t in VMSA_FIELDS if t is not SegmentRecord}
_SEGMENT = {name: off for off, name, t in VMSA_FIELDS if t is SegmentRecord}
_SEG = struct.Struct("<HHIQ")


class VmsaView:
    """Register accessors over the VMSA page at system frame ``sfn``.

    Reads the page in plaintext form through the memory controller (the CPU's own access, no RMP
    check).  Scalar registers are attributes (``view.rax = 1``); segments use
    :meth:`segment`/:meth:`set_segment`.

    :param memory: the machine's physical memory.
    :param sfn: system frame of the VMSA page.

    .. versionadded:: 0.1
    """

    __slots__ = ("_memory", "sfn")

    def __init__(self, memory: PhysicalMemory, sfn: int) -> None:
        object.__setattr__(self, "_memory", memory)
        object.__setattr__(self, "sfn", sfn)

    def __getattr__(self, name: str) -> int:
        try:
            off, st = _SCALAR[name]
        except KeyError:
            raise AttributeError(name) from None
        return st.unpack_from(self._memory.plaintext_page(self.sfn), off)[0]  # type: ignore[no-any-return]

    def __setattr__(self, name: str, value: int) -> None:
        try:
            off, st = _SCALAR[name]
        except KeyError:
            raise AttributeError(f"VMSA has no register {name!r}") from None
        st.pack_into(self._memory.plaintext_page(self.sfn), off, value)

    def get_many(self, names: tuple[str, ...]) -> tuple[int, ...]:
        """Several scalar registers at once (one page lookup), in the order of ``names``."""
        page = self._memory.plaintext_page(self.sfn)
        return tuple([_SCALAR[n][1].unpack_from(page, _SCALAR[n][0])[0] for n in names])

    def set_many(self, names: tuple[str, ...], values: tuple[int, ...]) -> None:
        """Write several scalar registers at once (one page lookup)."""
        page = self._memory.plaintext_page(self.sfn)
        for n, v in zip(names, values, strict=True):
            off, st = _SCALAR[n]
            st.pack_into(page, off, v)

    def segment(self, name: str) -> tuple[int, int, int, int]:
        """(selector, attrib, limit, base) of segment ``name`` (es, cs, ..., tr)."""
        return _SEG.unpack_from(self._memory.plaintext_page(self.sfn), _SEGMENT[name])  # type: ignore[return-value]

    def set_segment(self, name: str, selector: int, attrib: int, limit: int, base: int) -> None:
        """Write segment ``name``."""
        _SEG.pack_into(self._memory.plaintext_page(self.sfn), _SEGMENT[name], selector, attrib, limit, base)

    def to_bytes(self) -> bytes:
        """The whole page (plaintext), e.g. to measure or migrate it."""
        return bytes(self._memory.plaintext_page(self.sfn))

    def load(self, page: bytes) -> None:
        """Overwrite the whole page with ``page`` (4096 bytes)."""
        if len(page) != PAGE_SIZE:
            raise ValueError("a VMSA is exactly one page")
        self._memory.plaintext_page(self.sfn)[:] = page

    def structure(self) -> VMSA:
        """A ctypes copy of the page, for inspection."""
        return VMSA.from_buffer_copy(self.to_bytes())
