"""Bring up a small machine without the PSP, for unit tests of hw and of code built on it.

:func:`make_guest` does what the AMD-SP would do at launch, minus measurement: the listed ranges
become private, validated guest pages (VMPL0 all permissions), and each vCPU gets a VMPL0 VMSA
(SNPActive) in the last pages of memory.  Use the PSP's launch for anything that is measured.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._constants import PAGE_SIZE, SEV_FEATURE_SNP_ACTIVE
from .._hypervisor import Hypervisor
from .._platform import Platform

__all__ = ["make_guest", "VMSA_REGION_PAGES"]

#: Pages reserved at the top of memory for VMSAs: 4 per vCPU (one per VMPL).
VMSA_REGION_PAGES = 4


def make_guest(
    *,
    memory_size: int = 16 << 20,
    vcpu_count: int = 1,
    private: Iterable[tuple[int, int]] = ((0, 1 << 20),),
    validated: bool = True,
    sev_features: int = SEV_FEATURE_SNP_ACTIVE,
    hypervisor: Hypervisor | None = None,
    psp: Any = None,
    seed: int = 0,
    c_bit: int = 51,
) -> Platform:
    """Build a platform whose ``private`` (gpa, size) ranges are assigned to the guest.

    Each vCPU i gets a VMPL0 VMSA at ``memory_size - (i + 1) * 4 pages`` (RMP VMSA-marked,
    validated, ``vmpl`` byte 0); call ``vcpu.vmrun(0)`` to start executing as the SVSM.

    :param validated: whether the private pages start validated (as after LAUNCH_UPDATE).
    """
    p = Platform(memory_size=memory_size, vcpu_count=vcpu_count, hypervisor=hypervisor, psp=psp, seed=seed, c_bit=c_bit)
    fw = p.firmware
    for gpa, size in private:
        for a in range(gpa, gpa + size, PAGE_SIZE):
            fw.set_rmp(a, assigned=True, gpa=a, validated=validated)
    for i in range(vcpu_count):
        spa = memory_size - (i + 1) * VMSA_REGION_PAGES * PAGE_SIZE
        fw.set_rmp(spa, assigned=True, gpa=spa, validated=True, vmsa=True)
        fw.write_private(spa, bytes(PAGE_SIZE))
        vmsa = fw.vmsa(spa)
        vmsa.sev_features = sev_features
        vmsa.vmpl = 0
        fw.install_vmsa(i, 0, spa)
    return p
