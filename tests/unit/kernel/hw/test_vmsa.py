"""VMSA layout against snp.md 6, and against sev-snp-measure's own VMSA bytes."""

from __future__ import annotations

import ctypes

import pytest

from svsm.kernel.hw import PAGE_SIZE, VMSA, SegmentRecord
from svsm.kernel.hw.testing import make_guest

# (offset, field) straight from the snp.md 6 table.
SPEC_OFFSETS = {
    "es": 0x000, "cs": 0x010, "ss": 0x020, "ds": 0x030, "fs": 0x040, "gs": 0x050, "gdtr": 0x060,
    "ldtr": 0x070, "idtr": 0x080, "tr": 0x090, "vmpl0_ssp": 0x0A0, "vmpl3_ssp": 0x0B8, "u_cet": 0x0C0,
    "vmpl": 0x0CA, "cpl": 0x0CB, "efer": 0x0D0, "xss": 0x140, "cr4": 0x148, "cr3": 0x150, "cr0": 0x158,
    "dr7": 0x160, "dr6": 0x168, "rflags": 0x170, "rip": 0x178, "rsp": 0x1D8, "rax": 0x1F8,
    "star": 0x200, "lstar": 0x208, "cstar": 0x210, "sfmask": 0x218, "kernel_gs_base": 0x220,
    "sysenter_cs": 0x228, "sysenter_eip": 0x238, "cr2": 0x240, "g_pat": 0x268, "pkru": 0x2E8,
    "guest_tsc_scale": 0x2F0, "guest_tsc_offset": 0x2F8, "rcx": 0x308, "rdx": 0x310, "rbx": 0x318,
    "secure_avic_control": 0x320, "rbp": 0x328, "rsi": 0x330, "rdi": 0x338, "r8": 0x340, "r15": 0x378,
    "guest_exit_info_1": 0x390, "guest_exit_info_2": 0x398, "guest_exit_int_info": 0x3A0,
    "guest_nrip": 0x3A8, "sev_features": 0x3B0, "vintr_ctrl": 0x3B8, "guest_exit_code": 0x3C0,
    "virtual_tom": 0x3C8, "tlb_id": 0x3D0, "pcpu_id": 0x3D8, "event_inj": 0x3E0, "xcr0": 0x3E8,
    "mxcsr": 0x408, "x87_fcw": 0x410,
}


def test_vmsa_is_one_page_with_spec_offsets() -> None:
    assert ctypes.sizeof(VMSA) == PAGE_SIZE
    for name, off in SPEC_OFFSETS.items():
        assert getattr(VMSA, name).offset == off, name
    assert ctypes.sizeof(SegmentRecord) == 16
    assert VMSA.vmpl.size == 1 and VMSA.pkru.size == 4 and VMSA.cs.size == 16


def test_view_reads_and_writes_the_page_bytes() -> None:
    p = make_guest()
    vcpu = p.vcpus[0]
    view = vcpu.vmsa(0)
    view.rax = 0x1122334455667788
    view.r9 = 7
    view.set_segment("cs", 0x8, 0xC9B, 0xFFFFFFFF, 0x1000)
    page = view.to_bytes()
    assert page[0x1F8:0x200] == (0x1122334455667788).to_bytes(8, "little")
    assert page[0x348:0x350] == (7).to_bytes(8, "little")
    assert page[0x10:0x20] == bytes.fromhex("0800 9b0c ffffffff 0010000000000000".replace(" ", ""))
    s = view.structure()
    assert s.rax == 0x1122334455667788 and s.cs.base == 0x1000 and s.vmpl == 0 and s.sev_features == 1
    assert view.segment("cs") == (0x8, 0xC9B, 0xFFFFFFFF, 0x1000)
    with pytest.raises(AttributeError):
        view.not_a_register = 1


def test_vmsa_page_is_encrypted_in_dram() -> None:
    p = make_guest()
    view = p.vcpus[0].vmsa(0)
    view.rip = 0xFFFFFFF0
    raw = p.host.read_spa(view.sfn << 12, PAGE_SIZE)
    assert raw != view.to_bytes()
    assert (0xFFFFFFF0).to_bytes(8, "little") not in raw


def test_matches_sev_snp_measure_vmsa() -> None:
    """Our struct parses the VMSA page sev-snp-measure builds (snp.md 3.3) field by field."""
    vmsa_mod = pytest.importorskip("sevsnpmeasure.vmsa")
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vmm_types import VMMType

    v = vmsa_mod.VMSA(SevMode.SEV_SNP, 0xFFFFFFF0, 0x800F12, 0x21, VMMType.QEMU)
    page = bytes(v.bsp_save_area)
    assert len(page) == PAGE_SIZE
    s = VMSA.from_buffer_copy(page)
    assert s.rip == 0xFFF0 and s.cs.selector == 0xF000 and s.cs.base == 0xFFFF0000 and s.cs.attrib == 0x9B
    assert s.efer == 0x1000 and s.cr4 == 0x40 and s.cr0 == 0x10 and s.dr7 == 0x400 and s.dr6 == 0xFFFF0FF0
    assert s.rflags == 0x2 and s.g_pat == 0x0007040600070406 and s.rdx == 0x800F12
    assert s.sev_features == 0x21 and s.xcr0 == 1 and s.mxcsr == 0x1F80 and s.x87_fcw == 0x37F
    assert (s.es.attrib, s.es.limit) == (0x93, 0xFFFF) and (s.tr.attrib, s.ldtr.attrib) == (0x8B, 0x82)


def test_get_many_set_many_are_the_attribute_accessors() -> None:
    p = make_guest()
    v = p.vcpus[0].vmsa(0)
    names = ("rax", "rcx", "rdx", "r8", "r9", "vmpl")
    v.set_many(names, (1, 2, 3, 4, 5, 0))
    assert v.get_many(names) == (v.rax, v.rcx, v.rdx, v.r8, v.r9, v.vmpl) == (1, 2, 3, 4, 5, 0)
    with pytest.raises(ValueError):
        v.set_many(("rax",), (1, 2))
    with pytest.raises(KeyError):
        v.get_many(("nope",))
