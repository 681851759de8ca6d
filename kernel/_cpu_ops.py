"""The VMPL0 instructions the SVSM's protocols use (:class:`~svsm.kernel.protocols.CpuOps`).

Split from ``_svsm.py`` to keep it small: PVALIDATE and RMPADJUST on a vCPU at VMPL0 (a 2 MiB
#NPF SIZEM makes the host PSMASH and the instruction is retried), C=1 zeroing, VMSA reads and
the TLB-flush counter.
"""

from __future__ import annotations

import threading

from svsm.kernel.hw import VMSA, HardwareFault, PageStateChangeEntry, PageStateChangeOp, Platform
from svsm.kernel.protocols import VmsaSummary
from svsm.kernel.protocols._core import EFER_SVME

__all__ = ["CpuOps"]

PAGE = 0x1000


class CpuOps:
    """:class:`~svsm.kernel.protocols.CpuOps` on the simulated CPU (VMPL0 instructions)."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.tlb_flushes = 0
        self._lock = threading.Lock()

    def _psmash(self, exc: HardwareFault, gpa: int) -> None:
        """#NPF SIZEM: the host PSMASHes the 2 MiB entry so the instruction can be retried.

        :raises HardwareFault: ``exc`` again if it is any other fault.
        """
        if not getattr(exc, "size_mismatch", False):
            raise exc
        entry = PageStateChangeEntry((gpa >> 12) & ~511, PageStateChangeOp.PSMASH, True)
        self.platform.hypervisor.page_state_change(entry)

    def pvalidate(self, cpu: int, gpa: int, huge: bool, validate: bool) -> tuple[int, bool]:
        v = self.platform.vcpus[cpu]
        try:
            r = v.pvalidate(gpa, int(huge), validate, vmpl=0)
        except HardwareFault as exc:
            self._psmash(exc, gpa)
            r = v.pvalidate(gpa, int(huge), validate, vmpl=0)
        return int(r.rc), bool(r.carry)

    def rmpadjust(self, cpu: int, gpa: int, huge: bool, target_vmpl: int, perms: int, vmsa: bool) -> int:
        v = self.platform.vcpus[cpu]
        attrs = target_vmpl | perms << 8 | (1 << 16 if vmsa else 0)
        try:
            return int(v.rmpadjust(gpa, int(huge), attrs, vmpl=0).rc)
        except HardwareFault as exc:
            self._psmash(exc, gpa)
        return int(v.rmpadjust(gpa, int(huge), attrs, vmpl=0).rc)

    def zero(self, cpu: int, gpa: int, size: int) -> None:
        self.platform.vcpus[cpu].view(0).zero(gpa, size)

    def read_vmsa(self, cpu: int, gpa: int) -> VmsaSummary:
        raw = self.platform.vcpus[cpu].view(0).read(gpa, PAGE)
        s = VMSA.from_buffer_copy(raw)
        return VmsaSummary(s.vmpl, s.efer, s.sev_features)

    def clear_svme(self, cpu: int, gpa: int) -> None:
        view = self.platform.vcpus[cpu].view(0)
        off = VMSA.efer.offset
        view.write_u64(gpa + off, view.read_u64(gpa + off) & ~EFER_SVME)

    def flush_tlb(self) -> None:
        with self._lock:
            self.tlb_flushes += 1
