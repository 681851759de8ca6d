"""Initial (reset-state) VMSAs that QEMU hands to SNP_LAUNCH_UPDATE, and vCPU signatures.

snp.md 3.3 gives the register values (QEMU VMM type); section 6 the offsets.  The page is
measured as a VMSA page, so these bytes must be exactly QEMU's (checked against
sev-snp-measure's ``--dump-vmsa`` in the tests).  The layout is kernel/hw's VMSA.
"""

from __future__ import annotations

import enum

from .._vmsa import VMSA, SegmentRecord

__all__ = ["CPU_SIGS", "VmmType", "build_reset_vmsa", "build_svsm_vmsa", "cpu_sig"]


class VmmType(enum.Enum):
    """Which VMM's reset state and launch order to reproduce (sev-snp-measure ``--vmm-type``)."""

    QEMU = "QEMU"
    EC2 = "ec2"
    GCE = "gce"


def cpu_sig(family: int, model: int, stepping: int) -> int:
    """CPUID Fn0000_0001 EAX for a family/model/stepping (snp.md 3.3, AMD #25481).

    :raises ValueError: a value out of its field's range.
    """
    if not (0 <= family <= 0xFF + 0xF and 0 <= model <= 0xFF and 0 <= stepping <= 0xF):
        raise ValueError("family, model or stepping out of range")
    base_family = min(family, 0xF)
    ext_family = family - 0xF if family > 0xF else 0
    return (ext_family << 20) | ((model >> 4) << 16) | (base_family << 8) | ((model & 0xF) << 4) | stepping


#: QEMU CPU model name -> signature (the names sev-snp-measure accepts, snp.md 3.3).
CPU_SIGS: dict[str, int] = {
    **dict.fromkeys(("EPYC", "EPYC-v1", "EPYC-v2", "EPYC-IBPB", "EPYC-v3", "EPYC-v4"), cpu_sig(23, 1, 2)),
    **dict.fromkeys(("EPYC-Rome", "EPYC-Rome-v1", "EPYC-Rome-v2", "EPYC-Rome-v3"), cpu_sig(23, 49, 0)),
    **dict.fromkeys(("EPYC-Milan", "EPYC-Milan-v1", "EPYC-Milan-v2"), cpu_sig(25, 1, 1)),
    **dict.fromkeys(("EPYC-Genoa", "EPYC-Genoa-v1"), cpu_sig(25, 17, 0)),
    "EPYC-Turin": cpu_sig(26, 0, 0),
}
assert CPU_SIGS["EPYC"] == 0x800F12 and CPU_SIGS["EPYC-Rome"] == 0x830F10
assert CPU_SIGS["EPYC-Milan"] == 0xA00F11 and CPU_SIGS["EPYC-Genoa"] == 0xA10F10
assert CPU_SIGS["EPYC-Turin"] == 0xB00F00


def build_reset_vmsa(eip: int, vcpu_sig: int, sev_features: int, vmm_type: VmmType = VmmType.QEMU) -> bytes:
    """The reset-state VMSA a VMM launches a vCPU with (snp.md 3.3).

    Built on kernel/hw's :class:`VMSA` layout (declared once there).

    :param eip: BSP: 0xFFFFFFF0; APs: the SEV-ES reset block's EIP.
    :param vcpu_sig: CPUID 1 EAX, placed in RDX (QEMU; EC2 and GCE put 0x600 there).
    :param sev_features: the guest's SEV_FEATURES (bit 0 SNPActive must be set for SNP).
    :param vmm_type: QEMU (default), EC2 or GCE register differences (snp.md 3.3).
    :returns: one 4 KiB page.
    """
    cs, ss, tr, g_pat, rdx, mxcsr, fcw = 0x9B, 0x93, 0x8B, 0x0007040600070406, vcpu_sig, 0x1F80, 0x37F
    if vmm_type is VmmType.EC2:
        cs, ss, tr, rdx, mxcsr, fcw = (0x9A if eip == 0xFFFFFFF0 else 0x9B), 0x92, 0x83, 0x600, 0, 0
    elif vmm_type is VmmType.GCE:
        g_pat, rdx, mxcsr, fcw = 0x00070106, 0x600, 0, 0
    vmsa = VMSA()
    for seg in ("es", "ds", "fs", "gs"):
        setattr(vmsa, seg, SegmentRecord(0, 0x93, 0xFFFF, 0))
    vmsa.ss = SegmentRecord(0, ss, 0xFFFF, 0)
    vmsa.cs = SegmentRecord(0xF000, cs, 0xFFFF, eip & 0xFFFF0000)
    vmsa.gdtr = SegmentRecord(0, 0, 0xFFFF, 0)
    vmsa.idtr = SegmentRecord(0, 0, 0xFFFF, 0)
    vmsa.ldtr = SegmentRecord(0, 0x82, 0xFFFF, 0)
    vmsa.tr = SegmentRecord(0, tr, 0xFFFF, 0)
    for name, value in (
        ("efer", 0x1000), ("cr4", 0x40), ("cr0", 0x10), ("dr7", 0x400), ("dr6", 0xFFFF0FF0),
        ("rflags", 0x2), ("rip", eip & 0xFFFF), ("g_pat", g_pat), ("rdx", rdx),
        ("sev_features", sev_features), ("xcr0", 0x1), ("mxcsr", mxcsr), ("x87_fcw", fcw),
        ("vmpl", 0),
    ):  # fmt: skip
        setattr(vmsa, name, value)
    return bytes(vmsa)


def build_svsm_vmsa(eip: int, vcpu_sig: int) -> bytes:
    """The VMSA sev-snp-measure's ``--mode snp:svsm`` measures (snp.md 3.4): 32-bit protected
    mode at the SVSM entry, SEV_FEATURES fixed at 0x1.

    Deviation kept on purpose: sev-snp-measure 0.0.13 passes ``fcw=`` to its ctypes structure
    (whose field is ``x87_fcw``), so its SVSM VMSAs carry x87_fcw = 0; we match its digest.
    """
    vmsa = VMSA()
    for seg in ("es", "ss", "ds", "fs"):
        setattr(vmsa, seg, SegmentRecord(16, 0xC93, 0xFFFFFFFF, 0))
    vmsa.cs = SegmentRecord(8, 0xC9B, 0xFFFFFFFF, 0)
    vmsa.gs = SegmentRecord(0, 0x93, 0xFFFF, 0)
    vmsa.gdtr = SegmentRecord(0, 0, 0xFFFF, 0)
    vmsa.idtr = SegmentRecord(0, 0, 0xFFFF, 0)
    vmsa.ldtr = SegmentRecord(0, 0x82, 0xFFFF, 0)
    vmsa.tr = SegmentRecord(0, 0x8B, 0xFFFF, 0)
    for name, value in (
        ("efer", 0x1000), ("cr4", 0x40), ("cr0", 0x11), ("dr7", 0x400), ("dr6", 0xFFFF0FF0),
        ("rflags", 0x2), ("rip", eip), ("g_pat", 0x0007040600070406), ("rdx", vcpu_sig),
        ("sev_features", 0x1), ("xcr0", 0x1), ("mxcsr", 0x1F80),
    ):  # fmt: skip
        setattr(vmsa, name, value)
    return bytes(vmsa)
