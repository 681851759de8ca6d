"""GHCB page layout (snp.md 4.1) and valid-bitmap rules."""

from __future__ import annotations

import ctypes

import pytest

from svsm.kernel.hw import GHCB, PAGE_SIZE, GhcbPage, GhcbProtocolError, SwExitCode

SPEC = {
    "cpl": (0x0CB, 1), "xss": (0x140, 8), "dr7": (0x160, 8), "rax": (0x1F8, 8), "rcx": (0x308, 8),
    "rdx": (0x310, 8), "rbx": (0x318, 8), "rbp": (0x328, 8), "rsi": (0x330, 8), "rdi": (0x338, 8),
    "r8": (0x340, 8), "r15": (0x378, 8), "sw_exit_code": (0x390, 8), "sw_exit_info_1": (0x398, 8),
    "sw_exit_info_2": (0x3A0, 8), "sw_scratch": (0x3A8, 8), "xcr0": (0x3E8, 8),
    "valid_bitmap": (0x3F0, 16), "x87_state_gpa": (0x400, 8), "shared_buffer": (0x800, 0x7F0),
    "protocol_version": (0xFFA, 2), "ghcb_usage": (0xFFC, 4),
}


def test_layout_matches_spec() -> None:
    assert ctypes.sizeof(GHCB) == PAGE_SIZE
    for name, (off, size) in SPEC.items():
        field = getattr(GHCB, name)
        assert (field.offset, field.size) == (off, size), name


@pytest.mark.parametrize("name", ["rax", "rbx", "sw_exit_code", "sw_exit_info_1", "sw_exit_info_2", "sw_scratch", "xcr0", "cpl"])
def test_valid_bit_is_offset_div_8(name: str) -> None:
    off = SPEC[name][0]
    g = GhcbPage()
    g.set(name, 1)
    raw = g.to_bytes()
    bitmap = int.from_bytes(raw[0x3F0:0x400], "little")
    assert bitmap == 1 << (off // 8)
    assert raw[off] == 1


def test_get_requires_valid_bit_and_clear_resets() -> None:
    g = GhcbPage()
    g.sw_exit_code = SwExitCode.SNP_RUN_VMPL  # written without marking valid
    with pytest.raises(GhcbProtocolError):
        g.get("sw_exit_code")
    g.set("sw_exit_code", SwExitCode.SNP_RUN_VMPL)
    assert g.get("sw_exit_code") == 0x8000_0018
    g.clear()
    assert g.sw_exit_code == 0 and not g.is_valid("sw_exit_code")
    round_trip = GhcbPage(g.to_bytes())
    assert round_trip.to_bytes() == g.to_bytes()


def test_shared_buffer_bounds() -> None:
    g = GhcbPage()
    g.write_shared_buffer(b"\xaa" * 0x7F0)
    assert g.to_bytes()[0x800:0xFF0] == b"\xaa" * 0x7F0 and g.to_bytes()[0xFF0:] == bytes(16)
    with pytest.raises(GhcbProtocolError):
        g.write_shared_buffer(b"x", 0x7F0)
    with pytest.raises(GhcbProtocolError):
        GhcbPage(b"short")


def test_exit_codes_from_spec() -> None:
    assert SwExitCode.SNP_PAGE_STATE_CHANGE == 0x8000_0010
    assert SwExitCode.SNP_GUEST_REQUEST == 0x8000_0011 and SwExitCode.SNP_EXT_GUEST_REQUEST == 0x8000_0012
    assert SwExitCode.SNP_AP_CREATION == 0x8000_0013 and SwExitCode.SNP_RUN_VMPL == 0x8000_0018
    assert SwExitCode.HYPERVISOR_FEATURES == 0x8000_FFFD and SwExitCode.TERMINATION_REQUEST == 0x8000_FFFE
