"""vCPUs: per-VMPL VMSAs, the guest-side RMP instructions, VMGEXIT and VMPL switching.

Execution model (docs/dev/CONTRACTS.md): a vCPU is driven by the host thread that calls into it.
Guest code runs on that thread at :attr:`Vcpu.vmpl`.  ``VMGEXIT`` hands the event to the
hypervisor on the same thread.  When the hypervisor services RUN_VMPL to a VMPL that has a
registered *entry* (the SVSM registers its request-loop step for VMPL0), :meth:`Vcpu.run_vmpl`
switches the vCPU to that VMPL (VMRUN checks included), calls the entry, and when the entry
returns -- or the SVSM asked RUN_VMPL back to the suspended VMPL -- switches back.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ._constants import (
    MSR_GHCB,
    MSR_SEV_STATUS,
    NPF_ENC,
    NPF_SIZEM,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGE_SIZE_2M,
    PF_PRESENT,
    PF_RMP,
    SEV_FEATURE_ALTERNATE_INJECTION,
    SEV_FEATURE_RESTRICTED_INJECTION,
    SEV_FEATURE_SNP_ACTIVE,
    SEV_STATUS_SEV,
    SEV_STATUS_SEV_ES,
    SEV_STATUS_SNP,
    VC_PAGE_NOT_VALIDATED,
    VMEXIT_VMGEXIT,
    VMPL_COUNT,
    PvalidateResult,
    RmpadjustResult,
    RmpPageSize,
)
from ._errors import NestedPageFault, VmmCommunicationException, VmrunError
from ._rmp import A, ASID_MASK, ASID_SHIFT, CHUNK_MASK, CHUNK_SHIFT, GFN_SHIFT, OWNER_MASK, PS, VAL, VMSA, InstructionResult
from ._views import GuestView
from ._vmsa import VMSA as VMSA_LAYOUT
from ._vmsa import VmsaView

if TYPE_CHECKING:
    from ._platform import Platform

__all__ = ["Vcpu", "VmplEntry", "VcpuStatistics"]

log = logging.getLogger(__name__)

_PV_SUCCESS = InstructionResult(PvalidateResult.SUCCESS)
_PV_UNCHANGED = InstructionResult(PvalidateResult.SUCCESS, True)
_PV_FAIL_INPUT = InstructionResult(PvalidateResult.FAIL_INPUT)
_PV_FAIL_PERMISSION = InstructionResult(PvalidateResult.FAIL_PERMISSION)
_PV_FAIL_SIZEMISMATCH = InstructionResult(PvalidateResult.FAIL_SIZEMISMATCH)

_EXIT = struct.Struct("<Q")
_EXIT_CODE_OFF = VMSA_LAYOUT.guest_exit_code.offset
_EXIT_INFO1_OFF = VMSA_LAYOUT.guest_exit_info_1.offset
_EXIT_INFO2_OFF = VMSA_LAYOUT.guest_exit_info_2.offset
_VMPL_OFF = VMSA_LAYOUT.vmpl.offset
_FEATURES_OFF = VMSA_LAYOUT.sev_features.offset

#: What the SVSM registers per VMPL: called with the vCPU, on the thread that ran RUN_VMPL.
VmplEntry = Callable[["Vcpu"], None]


class VcpuStatistics(NamedTuple):
    """Counters of one vCPU."""

    vmgexits: int
    vmpl_switches: int
    pvalidates: int
    rmpadjusts: int


class Vcpu:
    """One virtual CPU of the guest.

    :param platform: the machine.
    :param index: vCPU index (0 = BSP).
    :param apic_id: the APIC ID the hypervisor and guest use to name it.

    .. versionadded:: 0.1
    """

    def __init__(self, platform: Platform, index: int, apic_id: int) -> None:
        self.platform = platform
        self.index = index
        self.apic_id = apic_id
        #: System frame of the VMSA for each VMPL (the hypervisor's per-VMPL VMCB pointer).
        self.vmsa_sfn: list[int | None] = [None] * VMPL_COUNT
        #: GHCB MSR (0xC001_0130) content per VMPL.
        self.ghcb_msr: list[int] = [0] * VMPL_COUNT
        #: VMPL currently executing, or None when the vCPU is not running.
        self.vmpl: int | None = None
        self._entries: dict[int, VmplEntry] = {}
        self._stack: list[int] = []
        self._return_requested = False
        self._views = [GuestView(platform, v, index) for v in range(VMPL_COUNT)]
        self._owner_bits = A | (platform.asid << ASID_SHIFT)
        self._lock = threading.RLock()
        #: Held by the host thread executing an instruction stream on this vCPU (the guest driver
        #: holds it for each operation); :meth:`preempt` needs it, so another VMPL is scheduled
        #: only between two instructions of the running one, never in the middle of a VMGEXIT.
        self.exec_lock = threading.RLock()
        self.n_vmgexit = self.n_switch = self.n_pvalidate = self.n_rmpadjust = self.n_preempt = 0

    def __repr__(self) -> str:
        return f"<Vcpu {self.index} apic={self.apic_id} vmpl={self.vmpl}>"

    # -- state ----------------------------------------------------------------------------------
    def view(self, vmpl: int | None = None) -> GuestView:
        """The memory view of code running on this vCPU at ``vmpl`` (default: current VMPL)."""
        return self._views[self._vmpl(vmpl)]

    def vmsa(self, vmpl: int | None = None) -> VmsaView:
        """Register accessors of the VMSA for ``vmpl`` (default: current VMPL).

        :raises VmrunError: no VMSA is installed for that VMPL.
        """
        v = self._vmpl(vmpl)
        sfn = self.vmsa_sfn[v]
        if sfn is None:
            raise VmrunError(f"vCPU {self.index} has no VMSA for VMPL{v}")
        return VmsaView(self.platform.memory, sfn)

    def set_vmsa(self, vmpl: int, sfn: int | None) -> None:
        """Install (or remove) the VMSA page for ``vmpl``: a hypervisor/firmware operation."""
        if not 0 <= vmpl < VMPL_COUNT:
            raise ValueError(f"VMPL {vmpl} out of range")
        self.vmsa_sfn[vmpl] = sfn

    def register_vmpl_entry(self, vmpl: int, entry: VmplEntry) -> None:
        """Register the code that runs when this vCPU is switched to ``vmpl``.

        The SVSM registers its request-loop step for VMPL0.  ``entry(vcpu)`` runs on the thread
        that issued RUN_VMPL; returning from it resumes the VMPL that was suspended.
        """
        if not 0 <= vmpl < VMPL_COUNT:
            raise ValueError(f"VMPL {vmpl} out of range")
        self._entries[vmpl] = entry

    def unregister_vmpl_entry(self, vmpl: int) -> None:
        """Remove the entry for ``vmpl`` (no-op if none)."""
        self._entries.pop(vmpl, None)

    @property
    def return_requested(self) -> bool:
        """True once the running entry's VMPL asked RUN_VMPL back to the suspended VMPL.

        An entry that loops (e.g. the SVSM request loop) returns when it sees this.
        """
        return self._return_requested

    @property
    def suspended_vmpls(self) -> tuple[int, ...]:
        """VMPLs waiting for an entry call to return, innermost last."""
        return tuple(self._stack)

    def has_entry(self, vmpl: int) -> bool:
        """Whether an entry is registered for ``vmpl``."""
        return vmpl in self._entries

    def _vmpl(self, vmpl: int | None) -> int:
        if vmpl is None:
            if self.vmpl is None:
                raise VmrunError(f"vCPU {self.index} is not running")
            return self.vmpl
        if not 0 <= vmpl < VMPL_COUNT:
            raise ValueError(f"VMPL {vmpl} out of range")
        return vmpl

    # -- VMRUN / VMPL switching -----------------------------------------------------------------
    def _vmrun_check(self, vmpl: int) -> int:
        """VMRUN's checks of the VMSA for ``vmpl`` (snp.md 5.4, 6); returns its frame."""
        sfn = self.vmsa_sfn[vmpl]
        if sfn is None:
            raise VmrunError(f"vCPU {self.index}: no VMSA for VMPL{vmpl}")
        rmp = self.platform.rmp
        c = rmp._attr.get(sfn >> CHUNK_SHIFT)  # RMP lookup inlined (twice per SVSM call)
        if c is not None:
            e = c[sfn & CHUNK_MASK]
        else:
            e, _ = rmp.raw(sfn)
        if e & (A | ASID_MASK | VMSA) != self._owner_bits | VMSA:
            raise VmrunError(f"vCPU {self.index}: page {sfn:#x} is not an RMP VMSA page of this guest")
        page = self.platform.memory.plaintext_page(sfn)
        if page[_VMPL_OFF] != vmpl:
            raise VmrunError(f"VMSA at {sfn:#x} says VMPL{page[_VMPL_OFF]}, expected VMPL{vmpl}")
        feats = _EXIT.unpack_from(page, _FEATURES_OFF)[0]
        if not feats & SEV_FEATURE_SNP_ACTIVE:
            raise VmrunError("SEV_FEATURES.SNPActive is clear")
        if feats & SEV_FEATURE_RESTRICTED_INJECTION and feats & SEV_FEATURE_ALTERNATE_INJECTION:
            raise VmrunError("RestrictedInjection and AlternateInjection are mutually exclusive")
        return sfn

    def can_run(self, vmpl: int) -> bool:
        """Whether VMRUN of ``vmpl`` would pass its checks (what a hypervisor learns by trying)."""
        if not 0 <= vmpl < VMPL_COUNT:
            return False
        try:
            self._vmrun_check(vmpl)
        except VmrunError:
            return False
        return True

    def _switch(self, vmpl: int | None) -> None:
        new = self._vmrun_check(vmpl) if vmpl is not None else None  # a failed VMRUN changes nothing
        busy = self.platform.rmp._busy  # RMP.set_busy, inlined
        if self.vmpl is not None:
            cur = self.vmsa_sfn[self.vmpl]
            if cur is not None:
                busy.discard(cur)
        if new is not None:
            busy.add(new)
        self.vmpl = vmpl
        self.n_switch += 1

    def vmrun(self, vmpl: int) -> None:
        """Start (or resume) executing at ``vmpl`` on the calling thread, without an entry call.

        The boot path uses this to "become" the BSP at VMPL0, and the guest harness to become
        the guest at its VMPL.

        :raises VmrunError: the VMSA for ``vmpl`` fails VMRUN's checks (VMEXIT_INVALID).
        """
        with self._lock:
            self._switch(vmpl)

    def halt(self) -> None:
        """Stop executing (the vCPU is idle until the next :meth:`vmrun`)."""
        with self._lock:
            self._switch(None)

    def run_vmpl(self, vmpl: int) -> None:
        """Service RUN_VMPL: switch to ``vmpl`` and run it, or return to a suspended VMPL.

        * ``vmpl`` has a registered entry: suspend the current VMPL, VMRUN ``vmpl``, call the
          entry, then switch back to the suspended VMPL when it returns.
        * ``vmpl`` is the VMPL suspended by the innermost entry call: remember to return to it
          as soon as that entry returns (this is the SVSM's "RUN_VMPL back to the guest").
        * otherwise: plain switch (:meth:`vmrun`), for a harness driving that VMPL itself.
        """
        if self._stack and self._stack[-1] == vmpl and vmpl not in self._entries:
            self._return_requested = True
            return
        entry = self._entries.get(vmpl)
        if entry is None:
            self.vmrun(vmpl)
            return
        prev = self.vmpl
        self._switch(vmpl)
        if prev is not None:
            self._stack.append(prev)
        try:
            self._return_requested = False
            entry(self)
        finally:
            self._return_requested = False
            if prev is not None:
                self._stack.pop()
            self._switch(prev)

    def preempt(self, vmpl: int, handler: VmplEntry) -> None:
        """Run ``vmpl`` between two instructions of the running VMPL, then resume it.

        What the hypervisor does for an interrupt targeted at another VMPL (e.g. an IPI to the
        SVSM): the running VMPL is suspended (its VMSA stays intact), ``vmpl`` is VMRUN and runs
        ``handler(vcpu)`` on the calling thread, and the suspended VMPL resumes afterwards.  The
        caller holds :attr:`exec_lock`.  An idle vCPU is started at ``vmpl`` and idles again.

        :raises VmrunError: the VMSA of ``vmpl`` fails VMRUN's checks; nothing changed.
        """
        prev = self.vmpl
        self._switch(vmpl)
        self.n_preempt += 1
        if prev is not None:
            self._stack.append(prev)
        try:
            handler(self)
        finally:
            if prev is not None:
                self._stack.pop()
            self._switch(prev)

    # -- MSRs and VMGEXIT -------------------------------------------------------------------------
    def wrmsr(self, msr: int, value: int) -> None:
        """Guest WRMSR; only the GHCB MSR is modelled.

        :raises ValueError: any other MSR (the simulation models no others).
        """
        if msr != MSR_GHCB:
            raise ValueError(f"MSR {msr:#x} is not modelled")
        self.ghcb_msr[self._vmpl(None)] = value & ((1 << 64) - 1)

    def rdmsr(self, msr: int) -> int:
        """Guest RDMSR of the GHCB MSR or SEV_STATUS (computed from the running VMSA)."""
        v = self._vmpl(None)
        if msr == MSR_GHCB:
            return self.ghcb_msr[v]
        if msr == MSR_SEV_STATUS:
            feats = self.vmsa(v).sev_features
            return SEV_STATUS_SEV | SEV_STATUS_SEV_ES | SEV_STATUS_SNP | ((feats & ~1) << 2)
        raise ValueError(f"MSR {msr:#x} is not modelled")

    def vmgexit(self) -> None:
        """VMGEXIT (``rep; vmmcall``): the hypervisor handles the event named by the GHCB MSR.

        Like the #VMEXIT it is, it writes guest_exit_code = 0x403 (and zero exit infos) into the
        exiting VMPL's VMSA, which is how the SVSM tells a VMGEXIT from other exits.

        Returns when the guest would resume; responses are in the GHCB MSR or the GHCB page.
        """
        v = self._vmpl(None)
        self.n_vmgexit += 1
        sfn = self.vmsa_sfn[v]
        if sfn is not None:  # hardware records the exit in the VMSA of the exiting VMPL
            page = self.platform.memory.plaintext_page(sfn)
            _EXIT.pack_into(page, _EXIT_CODE_OFF, VMEXIT_VMGEXIT)
            _EXIT.pack_into(page, _EXIT_INFO1_OFF, 0)
            _EXIT.pack_into(page, _EXIT_INFO2_OFF, 0)
        self.platform.hypervisor.handle_vmgexit(self)

    # -- guest RMP instructions -----------------------------------------------------------------
    def _owned_entry(self, gpa: int, size: int) -> tuple[int, int]:
        """(attribute word, system frame) of the guest-owned page at ``gpa``, or NPF."""
        gfn = gpa >> PAGE_SHIFT
        view = self._views[0]
        sfn = view._translate(gfn, gpa, False, True)
        e = self.platform.rmp.guest_owned(sfn, gfn, self.platform.asid)
        if not e:
            raise NestedPageFault(gpa, PF_RMP | NPF_ENC | PF_PRESENT)
        if size == RmpPageSize.SIZE_4K and e & PS:
            raise NestedPageFault(gpa, PF_RMP | NPF_ENC | PF_PRESENT | NPF_SIZEM)
        return e, sfn

    def pvalidate(self, gpa: int, size: int = RmpPageSize.SIZE_4K, validate: bool = True, *, vmpl: int | None = None) -> InstructionResult:
        """PVALIDATE (snp.md 5.2) at ``vmpl`` (default: the current VMPL).

        This is the hot path of memory acceptance, so the RMP lookup and update are inlined here
        (the RMP state-machine test checks them against a reference model).

        :returns: (EAX, CF): SUCCESS, FAIL_INPUT, FAIL_PERMISSION (above VMPL0),
            FAIL_SIZEMISMATCH; CF=1 if VALIDATED already had the requested value.
        :raises NestedPageFault: the page is not this guest's, or SIZEM (4 KiB on a 2 MiB entry).
        """
        v = self._vmpl(vmpl)
        self.n_pvalidate += 1
        if v != 0:
            return _PV_FAIL_PERMISSION
        if size == 0:
            if gpa & 0xFFF:
                return _PV_FAIL_INPUT
        elif size != 1 or gpa % PAGE_SIZE_2M:
            return _PV_FAIL_INPUT
        platform = self.platform
        gfn = gpa >> PAGE_SHIFT
        npt = platform.npt
        sfn = npt.get(gfn, gfn) if npt else gfn
        npages = platform.memory.npages
        if sfn is None or not 0 <= gfn < npages or not 0 <= sfn < npages:
            raise NestedPageFault(gpa, NPF_ENC)
        rmp = platform.rmp
        ci = sfn >> CHUNK_SHIFT
        c = rmp._attr.get(ci)
        if c is not None:
            i = sfn & CHUNK_MASK
            e = c[i]
            if e & OWNER_MASK != self._owner_bits or rmp._gfn[ci][i] != gfn:
                raise NestedPageFault(gpa, PF_RMP | NPF_ENC | PF_PRESENT)
            rmp.n_pvalidate += 1
            if size == 1:
                return _PV_FAIL_SIZEMISMATCH
            if bool(e & VAL) == validate:
                return _PV_UNCHANGED
            c[i] = e ^ VAL
            return _PV_SUCCESS
        b = rmp._big.get(ci)
        if b is None or b & OWNER_MASK != self._owner_bits or (b >> GFN_SHIFT) + (sfn & CHUNK_MASK) != gfn:
            raise NestedPageFault(gpa, PF_RMP | NPF_ENC | PF_PRESENT)
        rmp.n_pvalidate += 1
        if size == 0:
            raise NestedPageFault(gpa, PF_RMP | NPF_ENC | PF_PRESENT | NPF_SIZEM)
        if bool(b & VAL) == validate:
            return _PV_UNCHANGED
        rmp._big[ci] = b ^ VAL
        return _PV_SUCCESS

    def rmpadjust(self, gpa: int, size: int, attrs: int, *, vmpl: int | None = None) -> InstructionResult:
        """RMPADJUST (snp.md 5.3) at ``vmpl`` (default: the current VMPL).

        :param attrs: RDX: [7:0] target VMPL, [15:8] permissions, bit 16 VMSA.
        :returns: (EAX, CF=0): SUCCESS, FAIL_INPUT, FAIL_PERMISSION, FAIL_SIZEMISMATCH.
        :raises NestedPageFault: the page is not this guest's, or SIZEM.
        :raises VmmCommunicationException: the page is not validated (0x404).
        """
        v = self._vmpl(vmpl)
        self.n_rmpadjust += 1
        if size not in (0, 1) or gpa % (PAGE_SIZE_2M if size else PAGE_SIZE):
            return InstructionResult(RmpadjustResult.FAIL_INPUT)
        e, sfn = self._owned_entry(gpa, size)
        if not e & VAL:
            raise VmmCommunicationException(VC_PAGE_NOT_VALIDATED, gpa)
        return self.platform.rmp.rmpadjust(sfn, e, v, size, attrs)

    def statistics(self) -> VcpuStatistics:
        """Snapshot of this vCPU's counters."""
        return VcpuStatistics(self.n_vmgexit, self.n_switch, self.n_pvalidate, self.n_rmpadjust)
