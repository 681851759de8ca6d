"""An honest hypervisor: services VMGEXIT (MSR protocol and GHCB NAE events) for the guest.

It owns the host side of the machine: RMPUPDATE/PSMASH, the nested page table, AP creation,
dirty-page logging, and the GUEST_REQUEST path to the PSP.  It only ever touches guest memory
through :class:`~._views.HostView`, so it sees ciphertext of private pages and cannot write them.

Every NAE handler is a method ``nae_<name>(vcpu, ghcb)`` and every MSR request a method
``msr_<name>(vcpu, msg)``: an adversary in tests subclasses and overrides exactly the step it
wants to subvert (``svsm.kernel.hw.adversary`` collects ready-made ones).
"""

from __future__ import annotations

import collections
import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from ._constants import PAGE_SHIFT, PAGE_SIZE, SEV_FEATURE_SNP_ACTIVE, VMPL_COUNT
from ._errors import GhcbFieldNotValid, GhcbProtocolError, GuestTerminated, HostPageFault
from ._ghcb import GHCB_SHARED_BUFFER_OFFSET, GHCB_SHARED_BUFFER_SIZE, GHCB_USAGE_STANDARD, GhcbError, GhcbPage, SwExitCode
from ._msr_protocol import (
    CpuidRequest,
    CpuidResponse,
    HypervisorFeature,
    HypervisorFeaturesRequest,
    HypervisorFeaturesResponse,
    MsrMessage,
    PageStateChangeRequest,
    PageStateChangeResponse,
    RegisterGhcbRequest,
    RegisterGhcbResponse,
    RunVmplRequest,
    RunVmplResponse,
    SevInfoRequest,
    SevInfoResponse,
    TerminationRequest,
    decode_msr,
)
from ._host_memory import HostMemoryManager
from ._psc import PageStateChangeBuffer, PageStateChangeEntry, PageStateChangeOp

if TYPE_CHECKING:
    from ._platform import Platform
    from ._vcpu import Vcpu

__all__ = ["Hypervisor", "HypervisorStatistics", "GuestRequestFirmware", "CERT_TABLE_ENTRY_SIZE", "build_cert_table"]

log = logging.getLogger(__name__)

#: Features the honest hypervisor advertises: COCONUT-SVSM needs bits 0, 1 and 5 (snp.md 4.2).
DEFAULT_FEATURES = HypervisorFeature.SEV_SNP | HypervisorFeature.AP_CREATION | HypervisorFeature.SNP_MULTI_VMPL

#: EXT_GUEST_REQUEST VMM error in SW_EXITINFO2[63:32] (snp.md 2.4).
VMM_ERR_INVALID_LEN = 1
VMM_ERR_BUSY = 2

AP_CREATE_ON_INIT = 0
AP_CREATE = 1
AP_DESTROY = 2

CERT_TABLE_ENTRY_SIZE = 24


@runtime_checkable
class GuestRequestFirmware(Protocol):
    """What the hypervisor needs from the PSP (implemented in ``svsm.kernel.hw.psp``).

    ``guest_request(request)`` gets the 4 KiB request page the guest put in shared memory and
    returns the 4 KiB response page; on a firmware error it raises an exception carrying an int
    attribute ``fw_error`` (the SNP firmware status), which goes to SW_EXITINFO2[31:0].
    ``certificates()`` returns (GUID, DER/PEM bytes) pairs for EXT_GUEST_REQUEST (snp.md 2.4).

    .. versionadded:: 0.1
    """

    def guest_request(self, request: bytes) -> bytes: ...

    def certificates(self) -> Sequence[tuple[uuid.UUID, bytes]]: ...


def build_cert_table(certs: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    """Certificate buffer (snp.md 2.4): 24-byte {GUID, u32 offset, u32 length} entries, a zero
    entry, then the blobs; offsets count from the start of the buffer."""
    head = CERT_TABLE_ENTRY_SIZE * (len(certs) + 1)
    table = bytearray()
    blobs = bytearray()
    for guid, blob in certs:
        table += guid.bytes_le + (head + len(blobs)).to_bytes(4, "little") + len(blob).to_bytes(4, "little")
        blobs += blob
    table += bytes(CERT_TABLE_ENTRY_SIZE)
    return bytes(table + blobs)


class HypervisorStatistics(NamedTuple):
    """What the hypervisor has handled (house rule 10)."""

    vmgexits: int
    msr_requests: tuple[tuple[str, int], ...]
    nae_events: tuple[tuple[str, int], ...]
    page_state_changes: int
    guest_requests: int
    errors: int
    terminated: tuple[int, int] | None


class Hypervisor(HostMemoryManager):
    """The honest host.

    :param features: hypervisor feature bitmap to advertise (default bits 0, 1, 5).

    .. versionadded:: 0.1
    """

    def __init__(self, *, features: int = int(DEFAULT_FEATURES)) -> None:
        self.features = features
        self._platform: Platform | None = None
        #: Registered GHCB GFN per (apic_id, vmpl).
        self.ghcb_gfn: dict[tuple[int, int], int] = {}
        #: AP creation with CREATE_ON_INIT: VMSA frames to install at the next INIT, by (apic, vmpl).
        self.pending_init: dict[tuple[int, int], int] = {}
        self.terminated: tuple[int, int] | None = None
        self._msr_counts: collections.Counter[str] = collections.Counter()
        self._nae_counts: collections.Counter[str] = collections.Counter()
        self.n_vmgexit = self.n_psc = self.n_guest_request = self.n_errors = 0
        self.n_vmpl_interrupts = 0

    # -- VMGEXIT --------------------------------------------------------------------------------
    def handle_vmgexit(self, vcpu: Vcpu) -> None:
        """Service the VMGEXIT of ``vcpu`` at its current VMPL.

        :raises GuestTerminated: the guest asked for termination (or broke the protocol so
            badly that a real hypervisor would kill it).
        """
        if self.terminated is not None:
            raise GuestTerminated(*self.terminated)
        self.n_vmgexit += 1
        vmpl = vcpu.vmpl
        assert vmpl is not None
        value = vcpu.ghcb_msr[vmpl]
        if value & 0xFFF:
            self._handle_msr(vcpu, vmpl, value)
        else:
            self._handle_ghcb(vcpu, vmpl, value)

    def _handle_msr(self, vcpu: Vcpu, vmpl: int, value: int) -> None:
        try:
            msg = decode_msr(value)
        except GhcbProtocolError:
            self.n_errors += 1
            log.warning("vCPU %d: undecodable GHCB MSR value %#x; terminating", vcpu.index, value)
            self._terminate(0, 0)
        name = type(msg).__name__
        self._msr_counts[name] += 1
        handler = getattr(self, _msr_handler_name(name), None)
        if handler is None:
            self.n_errors += 1
            self._terminate(0, 0)
        resp = handler(vcpu, msg)
        if resp is not None:
            vcpu.ghcb_msr[vmpl] = resp.encode()

    def msr_sev_info_request(self, vcpu: Vcpu, msg: SevInfoRequest) -> MsrMessage | None:
        """SEV_INFO: protocol range and C-bit position."""
        from ._constants import GHCB_PROTOCOL_MAX, GHCB_PROTOCOL_MIN

        return SevInfoResponse(GHCB_PROTOCOL_MAX, GHCB_PROTOCOL_MIN, self.platform.c_bit)

    def msr_cpuid_request(self, vcpu: Vcpu, msg: CpuidRequest) -> MsrMessage | None:
        """CPUID through the MSR protocol (untrusted; the guest should use the CPUID page)."""
        return CpuidResponse(self.cpuid(msg.leaf)[msg.register], msg.register)

    def cpuid(self, leaf: int) -> tuple[int, int, int, int]:
        """(EAX, EBX, ECX, EDX) the hypervisor reports; 0x8000_001F describes SEV (snp.md 5.1)."""
        if leaf == 0x8000_001F:
            eax = (1 << 4) | (1 << 5)  # SNP, VMPL support
            ebx = self.platform.c_bit | (self.platform.vmpl_count << 12)
            return (eax, ebx, 0, 0)
        return (0, 0, 0, 0)

    def msr_register_ghcb_request(self, vcpu: Vcpu, msg: RegisterGhcbRequest) -> MsrMessage | None:
        """Register the GHCB GFN for this vCPU/VMPL; echo it back."""
        vmpl = vcpu.vmpl
        assert vmpl is not None
        if msg.gfn >= self.platform.memory.npages:
            return RegisterGhcbResponse((1 << 52) - 1)
        self.ghcb_gfn[(vcpu.apic_id, vmpl)] = msg.gfn
        return RegisterGhcbResponse(msg.gfn)

    def msr_page_state_change_request(self, vcpu: Vcpu, msg: PageStateChangeRequest) -> MsrMessage | None:
        """One 4 KiB page state change."""
        self.n_psc += 1
        entry = PageStateChangeEntry(msg.gfn, PageStateChangeOp(msg.operation))
        err, _ = self.page_state_change(entry)
        return PageStateChangeResponse(err)

    def msr_run_vmpl_request(self, vcpu: Vcpu, msg: RunVmplRequest) -> MsrMessage | None:
        """RUN_VMPL: switch the vCPU (calls the SVSM entry for VMPL0)."""
        src = vcpu.vmpl
        assert src is not None
        if msg.vmpl >= VMPL_COUNT or not (msg.vmpl in vcpu._stack or vcpu.can_run(msg.vmpl)):
            return RunVmplResponse(1)
        vcpu.ghcb_msr[src] = _RUN_VMPL_OK
        vcpu.run_vmpl(msg.vmpl)
        return None

    def msr_hypervisor_features_request(self, vcpu: Vcpu, msg: HypervisorFeaturesRequest) -> MsrMessage | None:
        """The feature bitmap."""
        return HypervisorFeaturesResponse(self.features)

    def msr_termination_request(self, vcpu: Vcpu, msg: TerminationRequest) -> MsrMessage | None:
        """Terminate the guest; never returns."""
        self._terminate(msg.reason_set, msg.reason_code)

    def _terminate(self, reason_set: int, reason_code: int) -> None:
        self.terminated = (reason_set, reason_code)
        log.info("guest terminated: reason set %d code %d", reason_set, reason_code)
        raise GuestTerminated(reason_set, reason_code)

    # -- full GHCB ------------------------------------------------------------------------------
    def _handle_ghcb(self, vcpu: Vcpu, vmpl: int, gpa: int) -> None:
        gfn = gpa >> PAGE_SHIFT
        if self.ghcb_gfn.get((vcpu.apic_id, vmpl)) != gfn:
            self.n_errors += 1
            log.warning("vCPU %d VMPL%d: VMGEXIT with unregistered GHCB %#x; terminating", vcpu.index, vmpl, gpa)
            self._terminate(1, 0)
        host = self.platform.host
        ghcb = GhcbPage(host.read(gpa, PAGE_SIZE))
        then: Callable[[], None] | None = None
        code: int | None = None
        try:
            code = ghcb.get("sw_exit_code")
            ghcb.get("sw_exit_info_1")
            ghcb.get("sw_exit_info_2")
        except GhcbProtocolError:
            code = None
            self._ghcb_error(ghcb, GhcbError.MISSING_INPUT)
        else:
            if ghcb.ghcb_usage != GHCB_USAGE_STANDARD:
                self._nae_counts["invalid_usage"] += 1
                self._ghcb_error(ghcb, GhcbError.INVALID_USAGE)
                code = None
        if code is not None:
            try:
                name = SwExitCode(code).name
            except ValueError:
                name = None
            handler = getattr(self, "nae_" + name.lower(), None) if name else None
            self._nae_counts[name or hex(code)] += 1
            if handler is None:
                self._ghcb_error(ghcb, GhcbError.INVALID_EVENT)
            else:
                try:
                    then = handler(vcpu, ghcb)
                except GhcbFieldNotValid:
                    self._ghcb_error(ghcb, GhcbError.MISSING_INPUT)
                except GhcbProtocolError:
                    self._ghcb_error(ghcb, GhcbError.INVALID_INPUT)
        try:
            host.write(gpa, ghcb.to_bytes())
        except HostPageFault:
            self.n_errors += 1
            log.warning("vCPU %d: GHCB %#x is a private page; terminating", vcpu.index, gpa)
            self._terminate(1, 0)
        if then is not None:
            then()

    def _ghcb_error(self, ghcb: GhcbPage, reason: GhcbError) -> None:
        self.n_errors += 1
        ghcb.set("sw_exit_info_1", 2)
        ghcb.set("sw_exit_info_2", int(reason))

    @staticmethod
    def _ok(ghcb: GhcbPage, info2: int = 0) -> None:
        ghcb.set("sw_exit_info_1", 0)
        ghcb.set("sw_exit_info_2", info2)

    def nae_snp_run_vmpl(self, vcpu: Vcpu, ghcb: GhcbPage) -> Callable[[], None] | None:
        """RUN_VMPL via the GHCB: info1 = target VMPL.

        The switch happens after the GHCB is written back (returned as a continuation), so the
        caller's GHCB already holds the result when its VMPL resumes.
        """
        target = ghcb.sw_exit_info_1
        if target >= VMPL_COUNT or not (target in vcpu.suspended_vmpls or vcpu.can_run(target)):
            self._ghcb_error(ghcb, GhcbError.INVALID_INPUT)
            return None
        self._ok(ghcb)
        return lambda: vcpu.run_vmpl(target)

    def nae_cpuid(self, vcpu: Vcpu, ghcb: GhcbPage) -> None:
        """CPUID NAE (0x72): RAX = leaf, RCX = subleaf; answers RAX/RBX/RCX/RDX (untrusted)."""
        leaf = ghcb.get("rax")
        eax, ebx, ecx, edx = self.cpuid(leaf & 0xFFFF_FFFF)
        for name, value in (("rax", eax), ("rbx", ebx), ("rcx", ecx), ("rdx", edx)):
            ghcb.set(name, value)
        self._ok(ghcb)

    def nae_hypervisor_features(self, vcpu: Vcpu, ghcb: GhcbPage) -> None:
        """Feature bitmap in SW_EXITINFO2."""
        self._ok(ghcb, self.features)

    def nae_termination_request(self, vcpu: Vcpu, ghcb: GhcbPage) -> None:
        """info1[3:0] reason set, [11:4] reason code."""
        info1 = ghcb.sw_exit_info_1
        self._terminate(info1 & 0xF, (info1 >> 4) & 0xFF)

    def nae_snp_page_state_change(self, vcpu: Vcpu, ghcb: GhcbPage) -> None:
        """Process the PSC buffer in the shared buffer; sw_scratch must point at it."""
        self.n_psc += 1
        gpa = self.ghcb_gfn[(vcpu.apic_id, vcpu.vmpl)] << PAGE_SHIFT  # type: ignore[index]
        try:
            scratch = ghcb.get("sw_scratch")
        except GhcbProtocolError:
            self._ghcb_error(ghcb, GhcbError.MISSING_INPUT)
            return
        base = gpa + GHCB_SHARED_BUFFER_OFFSET
        if not base <= scratch < base + GHCB_SHARED_BUFFER_SIZE:
            self._ghcb_error(ghcb, GhcbError.INVALID_SCRATCH_AREA)
            return
        buf = PageStateChangeBuffer.decode(ghcb.shared_buffer[scratch - base :])
        cur = buf.cur_entry
        err = 0
        while cur <= buf.end_entry:
            entry = buf.entries[cur]
            err, entry = self.page_state_change(entry)
            buf = buf.with_progress(cur, entry)
            if err:
                break
            cur += 1
        buf = buf.with_progress(cur)
        ghcb.write_shared_buffer(buf.encode(), scratch - base)
        self._ok(ghcb, err)

    def nae_snp_guest_request(self, vcpu: Vcpu, ghcb: GhcbPage) -> None:
        """GUEST_REQUEST: copy the request page out, ask the PSP, copy the response page in."""
        self._guest_request(vcpu, ghcb, ext=False)

    def nae_snp_ext_guest_request(self, vcpu: Vcpu, ghcb: GhcbPage) -> None:
        """EXT_GUEST_REQUEST: as GUEST_REQUEST plus the certificate table at RAX (RBX pages)."""
        self._guest_request(vcpu, ghcb, ext=True)

    def _guest_request(self, vcpu: Vcpu, ghcb: GhcbPage, *, ext: bool) -> None:
        self.n_guest_request += 1
        psp = self.platform.psp
        if psp is None:
            self._ghcb_error(ghcb, GhcbError.INVALID_EVENT)
            return
        req_gpa, resp_gpa = ghcb.sw_exit_info_1, ghcb.sw_exit_info_2
        host = self.platform.host
        if ext:
            try:
                cert_gpa, npages = ghcb.get("rax"), ghcb.get("rbx")
            except GhcbProtocolError:
                self._ghcb_error(ghcb, GhcbError.MISSING_INPUT)
                return
            table = build_cert_table(psp.certificates())
            need = (len(table) + PAGE_SIZE - 1) // PAGE_SIZE
            if npages < need:
                ghcb.set("rbx", need)
                self._ok(ghcb, VMM_ERR_INVALID_LEN << 32)
                return
            try:
                host.write(cert_gpa, table)
            except (HostPageFault, ValueError):
                self._ghcb_error(ghcb, GhcbError.INVALID_INPUT)
                return
        try:
            request = host.read(req_gpa, PAGE_SIZE)
        except ValueError:
            self._ghcb_error(ghcb, GhcbError.INVALID_INPUT)
            return
        try:
            response = self.forward_guest_request(request)
        except Exception as exc:  # noqa: BLE001 -- only errors carrying a firmware status are expected
            fw_error = getattr(exc, "fw_error", None)
            if not isinstance(fw_error, int):
                raise
            self._ok(ghcb, fw_error & 0xFFFF_FFFF)
            return
        try:
            host.write(resp_gpa, response)
        except (HostPageFault, ValueError):
            self._ghcb_error(ghcb, GhcbError.INVALID_INPUT)
            return
        self._ok(ghcb, 0)

    def forward_guest_request(self, request: bytes) -> bytes:
        """Hand the request page to the PSP and return its response page (override to attack)."""
        return self.platform.psp.guest_request(request)  # type: ignore[no-any-return]

    def nae_snp_ap_creation(self, vcpu: Vcpu, ghcb: GhcbPage) -> None:
        """AP creation: info1 = op | VMPL << 16 | APIC ID << 32; info2 = VMSA GPA; RAX = features.

        The VMSA page must already be an RMP VMSA page of this guest (the SVSM RMPADJUSTs it
        first); VMRUN checks it again when the vCPU is run.
        """
        info1, vmsa_gpa = ghcb.sw_exit_info_1, ghcb.sw_exit_info_2
        op, vmpl, apic_id = info1 & 0xFFFF, (info1 >> 16) & 0xF, info1 >> 32
        platform = self.platform
        if op not in (AP_CREATE_ON_INIT, AP_CREATE, AP_DESTROY) or vmpl >= VMPL_COUNT:
            self._ghcb_error(ghcb, GhcbError.INVALID_INPUT)
            return
        target = platform.vcpu_by_apic_id(apic_id)
        if op == AP_DESTROY:
            if target is None:
                self._ghcb_error(ghcb, GhcbError.INVALID_INPUT)
                return
            target.set_vmsa(vmpl, None)
            self.pending_init.pop((apic_id, vmpl), None)
            self._ok(ghcb)
            return
        if vmsa_gpa % PAGE_SIZE or vmsa_gpa >> PAGE_SHIFT >= platform.memory.npages:
            self._ghcb_error(ghcb, GhcbError.INVALID_INPUT)
            return
        try:
            features = ghcb.get("rax")
        except GhcbProtocolError:
            self._ghcb_error(ghcb, GhcbError.MISSING_INPUT)
            return
        if not features & SEV_FEATURE_SNP_ACTIVE:  # the VMSA could never run (snp.md 6)
            self._ghcb_error(ghcb, GhcbError.INVALID_INPUT)
            return
        sfn = self.gpa_to_spa(vmsa_gpa) >> PAGE_SHIFT
        page = platform.rmp.read(sfn)  # the host may read the RMP; refuse what VMRUN would
        if not (page.assigned and page.asid == platform.asid and page.vmsa):
            self._ghcb_error(ghcb, GhcbError.INVALID_INPUT)
            return
        if target is None:
            target = platform.add_vcpu(apic_id)
        if op == AP_CREATE_ON_INIT:
            self.pending_init[(apic_id, vmpl)] = sfn
        else:
            target.set_vmsa(vmpl, sfn)
        self._ok(ghcb)

    def deliver_vmpl_interrupt(self, vcpu: Vcpu, vmpl: int, handler: Callable[[Vcpu], None]) -> bool:
        """Schedule ``vmpl`` on ``vcpu`` now, if the vCPU is between two instructions.

        Models the host delivering an interrupt targeted at ``vmpl`` (the SVSM's doorbell): the
        vCPU leaves the VMPL it runs (or its idle loop), ``vmpl`` runs ``handler(vcpu)`` on the
        calling thread, then the interrupted VMPL resumes.  An honest host does it whenever the
        vCPU can take it; an adversary may refuse (return False) and the guest only waits longer.

        :returns: False if another thread is executing on the vCPU right now, or it is already
            at ``vmpl`` (try again later); True once ``handler`` ran.
        :raises VmrunError: ``vmpl`` cannot run on that vCPU.
        """
        if not vcpu.exec_lock.acquire(blocking=False):
            return False
        try:
            if vcpu.vmpl == vmpl or vcpu.suspended_vmpls:
                return False
            self.n_vmpl_interrupts += 1
            vcpu.preempt(vmpl, handler)
            return True
        finally:
            vcpu.exec_lock.release()

    def send_init(self, apic_id: int) -> None:
        """Deliver INIT to ``apic_id``: install VMSAs registered with CREATE_ON_INIT."""
        target = self.platform.vcpu_by_apic_id(apic_id)
        if target is None:
            raise ValueError(f"no vCPU with APIC ID {apic_id}")
        for (apic, vmpl), sfn in list(self.pending_init.items()):
            if apic == apic_id:
                target.set_vmsa(vmpl, sfn)
                del self.pending_init[(apic, vmpl)]

    def statistics(self) -> HypervisorStatistics:
        """Counts of everything handled."""
        return HypervisorStatistics(
            self.n_vmgexit,
            tuple(sorted(self._msr_counts.items())),
            tuple(sorted(self._nae_counts.items())),
            self.n_psc,
            self.n_guest_request,
            self.n_errors,
            self.terminated,
        )


@functools.cache
def _msr_handler_name(name: str) -> str:
    return "msr_" + _snake(name)


#: RUN_VMPL success response value (one per call: built once).
_RUN_VMPL_OK = RunVmplResponse(0).encode()


@functools.cache
def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
