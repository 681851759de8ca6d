"""The SNP secrets page (snp.md 2.5): one 4 KiB page the PSP fills at launch.

Declared once here because the PSP writes it, the SVSM reads its VMPCKs and writes the
SVSM fields, and a guest OS reads the copy it is given.
"""

from __future__ import annotations

import ctypes

__all__ = ["SNP_SECRETS_PAGE", "SECRETS_PAGE_VERSION", "VMPCK_SIZE"]

VMPCK_SIZE = 32
#: VERSION the PSP model writes (the SNP ABI's layout with the SVSM fields; snp.md 2.5).
SECRETS_PAGE_VERSION = 3

_u8, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64


class SNP_SECRETS_PAGE(ctypes.LittleEndianStructure):
    """Secrets page layout (snp.md 2.5)."""

    _pack_ = 1
    _fields_ = [
        ("version", _u32),
        ("imien", _u32),
        ("fms", _u32),
        ("reserved0", _u32),
        ("gosvw", _u8 * 16),
        ("vmpck0", _u8 * VMPCK_SIZE),
        ("vmpck1", _u8 * VMPCK_SIZE),
        ("vmpck2", _u8 * VMPCK_SIZE),
        ("vmpck3", _u8 * VMPCK_SIZE),
        # OS area (guest-owned, 96 bytes)
        ("msg_seqno_0", _u32),
        ("msg_seqno_1", _u32),
        ("msg_seqno_2", _u32),
        ("msg_seqno_3", _u32),
        ("ap_jump_table_pa", _u64),
        ("os_reserved", _u8 * 40),
        ("guest_usage", _u8 * 32),
        ("vmsa_tweak_bitmap", _u8 * 64),
        # SVSM fields
        ("svsm_base", _u64),
        ("svsm_size", _u64),
        ("svsm_caa", _u64),
        ("svsm_max_version", _u32),
        ("svsm_guest_vmpl", _u8),
        ("svsm_reserved", _u8 * 3),
        ("tsc_factor", _u32),
        ("reserved1", _u8 * 3740),
    ]

    def vmpck(self, index: int) -> bytes:
        """VMPCK ``index`` (0-3) as bytes."""
        if not 0 <= index <= 3:
            raise ValueError("VMPCK index must be 0..3")
        return bytes(getattr(self, f"vmpck{index}"))


assert ctypes.sizeof(SNP_SECRETS_PAGE) == 4096
for _n, _o in {"version": 0, "imien": 4, "fms": 8, "gosvw": 0x10, "vmpck0": 0x20, "vmpck1": 0x40,
               "vmpck2": 0x60, "vmpck3": 0x80, "msg_seqno_0": 0xA0, "msg_seqno_3": 0xAC,
               "ap_jump_table_pa": 0xB0, "os_reserved": 0xB8, "guest_usage": 0xE0,
               "vmsa_tweak_bitmap": 0x100, "svsm_base": 0x140, "svsm_size": 0x148,
               "svsm_caa": 0x150, "svsm_max_version": 0x158, "svsm_guest_vmpl": 0x15C,
               "tsc_factor": 0x160, "reserved1": 0x164}.items():  # fmt: skip
    assert getattr(SNP_SECRETS_PAGE, _n).offset == _o, _n
