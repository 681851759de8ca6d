"""The SVSM kernel instance of one CVM: init on the BSP, guest preparation, PSP access.

Upstream ``svsm_init`` + ``prepare_fw`` + ``launch_fw``: validate the heap, build the allocator,
per-CPU areas and AP VMSAs, the protocols and the request loops; then grant the firmware pages,
fill the guest's secrets page copy and register the guest's VMSA.  :func:`svsm.kernel.boot`
builds one after the PSP launch.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from svsm.kernel.hw import (
    VMSA,
    GuestTerminated,
    HardwareFault,
    PageStateChangeBuffer,
    PageStateChangeEntry,
    PageStateChangeOp,
    HypervisorFeature,
    HypervisorFeaturesRequest,
    HypervisorFeaturesResponse,
    PageStateChangeRequest,
    PageStateChangeResponse,
    Platform,
    SevInfoRequest,
    SevInfoResponse,
    SwExitCode,
    Vcpu,
    decode_msr,
)
from svsm.kernel.hw.psp import FirmwareImage, SectionType
from svsm.kernel.mm import PageAllocator, PerCpuAreas, SlabAllocator
from svsm.kernel.protocols import (
    AttestProtocol,
    CertificateBufferTooSmall,
    CoreProtocol,
    Dispatcher,
    GuestMemory,
    ModuleHost,
    VcpuRegistry,
)
from svsm.kernel.protocols._core import EFER_SVME, PERMS_RWX
from svsm.kernel.sync import RWLock, SpinLock
from svsm.sdk import Busy, FatalError, InvalidRequest
from svsm.sdk.attestation import (
    CERT_TABLE_ENTRY,
    SNP_KEY_REQ,
    SNP_KEY_RSP,
    SNP_REPORT_REQ,
    SNP_REPORT_RSP,
    SNP_SECRETS_PAGE,
    CertTableError,
    GuestMessageClient,
    GuestMessageError,
    MsgType,
    parse_cert_table,
)
from svsm.sdk.guest import SVSM_ATTEST_PROTOCOL, SVSM_CORE_PROTOCOL

from ._cpu_ops import CpuOps as _CpuOps
from ._kernel_tasks import KernelTasks
from ._launch_params import read_launch_parameters
from ._panic import Panicker, TerminationReason, termination_request_msr
from ._requests import GhcbCallError, KernelWork, PerCpu, RequestLoop, SvsmGhcb, current_cpu

__all__ = ["Svsm", "MemoryLayout", "SEV_FEATURES", "FIRMWARE_END", "FIRMWARE_SIZE", "FIRMWARE_SECTIONS"]

log = logging.getLogger("svsm.kernel.svsm")

PAGE = 0x1000
MB2 = 0x20_0000
#: EFER bits of a long-mode VMSA: LME (8), LMA (10), SVME (12).
_EFER_LONG = (1 << 8) | (1 << 10) | EFER_SVME
#: SEV_FEATURES of every VMSA we build (SNPActive only, as sev-snp-measure's snp:svsm mode).
SEV_FEATURES = 0x1
_AP_CREATE_ON_INIT, _AP_CREATE = 0, 1
#: Guest firmware placement and its SEV metadata (gpa, size, type).
FIRMWARE_END = 0x10_0000
FIRMWARE_SIZE = 0x1_0000
FIRMWARE_SECTIONS = [
    (0x1000, 0x4000, int(SectionType.SNP_SEC_MEM)),
    (0x5000, 0x1000, int(SectionType.SNP_SECRETS)),
    (0x6000, 0x1000, int(SectionType.CPUID)),
    (0x7000, 0x1000, int(SectionType.SVSM_CAA)),
]
#: The GHCB protocol version SNP requires (snp.md 4).
GHCB_PROTOCOL_VERSION = 2
#: Hypervisor features COCONUT requires: SEV_SNP, AP_CREATION, SNP_MULTI_VMPL (coconut-svsm.md 3.3).
REQUIRED_HV_FEATURES = HypervisorFeature.SEV_SNP | HypervisorFeature.AP_CREATION | HypervisorFeature.SNP_MULTI_VMPL
#: MSG_KEY_REQ payload size before FW 1.58 (snp.md 2.3: 32 bytes; 40 with LAUNCH_MIT_VECTOR).
KEY_REQ_SIZE = 32
#: GUEST_FIELD_SELECT bits (snp.md 2.3): GUEST_POLICY and MEASUREMENT.
KEY_FIELDS_POLICY, KEY_FIELDS_MEASUREMENT = 1 << 0, 1 << 3
#: Heap reserved per vCPU: its per-CPU area (data, GHCB, 8-page stack), page tables, VMPL0 VMSA.
HEAP_PER_VCPU = 0x2_0000
#: The guest-request pages of the SVSM (request, response, 4 certificate pages) per boot.
_GREQ_PAGES = 6



@dataclasses.dataclass(frozen=True, slots=True)
class MemoryLayout:
    """Where everything lives (see the module docstring)."""

    memory_size: int
    svsm_base: int
    svsm_size: int
    image_pages: int
    secrets_gpa: int
    bsp_vmsa_gpa: int
    boot_ghcb_gpa: int
    params_gpa: int
    greq_gpa: int
    heap_start: int
    firmware_gpa: int
    guest_secrets_gpa: int
    guest_cpuid_gpa: int
    guest_caa_gpa: int

    @classmethod
    def compute(cls, memory_size: int, image_size: int, vcpus: int = 1) -> MemoryLayout:
        """Place the SVSM at the top of memory, the firmware below 1 MiB.

        The heap gets 2 MiB plus :data:`HEAP_PER_VCPU` per vCPU (per-CPU area, page tables,
        stack, VMPL0 VMSA).

        :raises ValueError: memory too small for the SVSM and a guest.
        """
        fixed = image_size + (4 + _GREQ_PAGES) * PAGE + vcpus * HEAP_PER_VCPU
        svsm_size = max(4 << 20, (fixed + MB2 + MB2 - 1) // MB2 * MB2)
        if memory_size % MB2 or memory_size < svsm_size + (4 << 20):
            raise ValueError(f"memory must be a multiple of 2 MiB and at least {(svsm_size >> 20) + 4} MiB")
        base = memory_size - svsm_size
        p = base + image_size
        return cls(
            memory_size, base, svsm_size, image_size // PAGE,
            secrets_gpa=p, bsp_vmsa_gpa=p + PAGE, boot_ghcb_gpa=p + 2 * PAGE, params_gpa=p + 3 * PAGE,
            greq_gpa=p + 4 * PAGE, heap_start=p + (4 + _GREQ_PAGES) * PAGE, firmware_gpa=FIRMWARE_END - FIRMWARE_SIZE,
            guest_secrets_gpa=0x5000, guest_cpuid_gpa=0x6000, guest_caa_gpa=0x7000,
        )  # fmt: skip

    @property
    def guest_ram(self) -> tuple[tuple[int, int], ...]:
        """The guest's memory map: (start, end) ranges."""
        return ((0, self.svsm_base),)


def _cert_table(raw: bytes) -> bytes:
    """The certificate table the host wrote, cut to its real length (entries + blobs).

    :raises InvalidRequest: the host's table is malformed (no terminator, blob outside).
    """
    try:
        parse_cert_table(raw)
    except CertTableError as exc:
        raise InvalidRequest("malformed certificate table from the host") from exc
    end, pos = 0, 0
    while True:
        guid, off, length = CERT_TABLE_ENTRY.unpack_from(raw, pos)
        pos += CERT_TABLE_ENTRY.size
        if guid == bytes(16) and not off and not length:
            return raw[: max(end, pos)]
        end = max(end, off + length)


def _build_vmsa(vmpl: int, rip: int = 0) -> bytes:
    v = VMSA()
    v.vmpl = vmpl
    v.efer = _EFER_LONG
    v.sev_features = SEV_FEATURES
    v.rip = rip
    v.cr0 = 0x8000_0011
    v.rflags = 0x2
    v.xcr0 = 1
    v.mxcsr = 0x1F80
    v.x87_fcw = 0x37F
    return bytes(v)


class Svsm:
    """The SVSM kernel of one CVM: its allocator, per-CPU state, protocols and request loops.

    Built by :func:`boot`; :meth:`init` runs on the BSP at VMPL0 (upstream ``svsm_init``),
    :meth:`prepare_guest` is ``prepare_fw`` + ``launch_fw``.
    """

    def __init__(
        self,
        platform: Platform,
        layout: MemoryLayout,
        *,
        guest_vmpl: int,
        module_host: ModuleHost | None,
        clock: Callable[[], float],
    ) -> None:
        if not 1 <= guest_vmpl <= 3:
            raise ValueError("guest VMPL must be 1, 2 or 3")
        self.platform = platform
        self.layout = layout
        self.guest_vmpl = guest_vmpl
        self.module_host = module_host
        self._clock = clock
        self.cpu_ops = _CpuOps(platform)
        self.ghcb = SvsmGhcb()
        self.registry = VcpuRegistry()
        self.pvalidate_lock: RWLock[None] = RWLock(None, name="PVALIDATE_LOCK")
        self.panicker = Panicker(self._wipe_vmpcks, self._terminate)
        self._greq_lock: SpinLock[None] = SpinLock(None, name="svsm.guest_request")
        self._msg: GuestMessageClient | None = None
        self.percpu: list[PerCpu] = []
        self.guest_vmsa_gpa: int | None = None

    # -- init on the BSP -------------------------------------------------------------------------
    def init(self) -> None:
        """Secrets, GHCB, heap validation, allocator, per-CPU areas, AP VMSAs, request loops."""
        lay, vcpu0 = self.layout, self.platform.vcpus[0]
        vcpu0.vmrun(0)
        view = vcpu0.view(0)
        params = read_launch_parameters(view.read(lay.params_gpa, PAGE))
        if (params.guest_vmpl, params.vcpus, params.memory_size) != (
                self.guest_vmpl, len(self.platform.vcpus), self.platform.memory_size):  # fmt: skip
            raise FatalError("the measured launch parameters differ from the machine the SVSM runs on")
        secrets = SNP_SECRETS_PAGE.from_buffer_copy(view.read(lay.secrets_gpa, PAGE))
        self.secrets = secrets
        self._msg = GuestMessageClient(secrets.vmpck(0), 0)
        self._check_host(vcpu0)
        boot_pc = PerCpu(0, vcpu0.apic_id, lay.boot_ghcb_gpa)
        self.ghcb.register(vcpu0, boot_pc)
        self._validate_heap(vcpu0, boot_pc)
        self.allocator = PageAllocator(view)
        self.allocator.add_range(lay.heap_start, lay.svsm_base + lay.svsm_size - lay.heap_start)
        self.slab = SlabAllocator(self.allocator)
        self.areas = PerCpuAreas(view, self.allocator, c_bit=self.platform.c_bit)
        for v in self.platform.vcpus:
            area = self.areas.create(v.index, v.apic_id)
            self._make_shared(vcpu0, boot_pc, area.ghcb_page)
            self.percpu.append(PerCpu(v.index, v.apic_id, area.ghcb_page, area))
        self.ghcb.register(vcpu0, self.percpu[0])
        self.ap_vmsas: dict[int, int] = {}
        for v in self.platform.vcpus[1:]:
            self.ap_vmsas[v.index] = self._create_svsm_vmsa(vcpu0, v.apic_id)
        self.memory = GuestMemory(
            lambda cpu: self.platform.vcpus[cpu].view(0),
            lay.guest_ram,
            (lay.svsm_base, lay.svsm_size),
            self.registry,
            (HardwareFault,),
            svsm_owned=self._svsm_owned,
            lock=self.pvalidate_lock,
        )
        self.dispatcher = Dispatcher({}, self.module_host, lambda p: self.memory.window(p.cpu))
        self.core = CoreProtocol(
            self.memory, self.cpu_ops, self.registry, self.guest_vmpl,
            self._apic_to_cpu, self._attach, self._current, self.dispatcher.protocol_versions,
            deposit_pool=self.allocator, pvalidate_lock=self.pvalidate_lock, free_svsm_vmsa=self._free_guest_vmsa,
        )  # fmt: skip
        self.attest = AttestProtocol(self.memory, self._fetch_report, self._services)
        self.dispatcher.register(SVSM_CORE_PROTOCOL, self.core)
        self.dispatcher.register(SVSM_ATTEST_PROTOCOL, self.attest)
        self.loop = RequestLoop(self.percpu, self.dispatcher, self.guest_vmpl, self.panicker, self.ghcb, self._clock)
        self.dispatcher.park = self.loop.parked
        for v in self.platform.vcpus:
            v.register_vmpl_entry(0, self.loop.entry)
        #: The kernel's scheduler and periodic work (started when the guest is prepared).
        self.tasks = KernelTasks(
            len(self.percpu), self._clock, lambda i: self.percpu[i].area.activate(),
            reap=self.slab.trim, drop_abandoned=self.loop.drop_abandoned,
        )  # fmt: skip
        #: Root of module keys (``Providers.key_root``): derived by the PSP from the VCEK, bound to
        #: the guest policy and the launch measurement, so a changed kernel gets other keys.
        self.module_key_root = self._derive_key(0, KEY_FIELDS_POLICY | KEY_FIELDS_MEASUREMENT)

    def _free_guest_vmsa(self, gpa: int) -> None:
        """DELETE_VCPU removed the boot VMSA the SVSM allocated: take the page back."""
        if gpa != self.guest_vmsa_gpa:
            raise FatalError(f"SVSM-owned VMSA {gpa:#x} is not the boot VMSA")
        self.guest_vmsa_gpa = None
        self.allocator.free_page(gpa)

    def _check_host(self, vcpu: Vcpu) -> None:
        """GHCB protocol version and hypervisor features (upstream init step 4, coconut 3.3).

        A host without GHCB protocol version 2 gets a termination request (reason set 0, code 1);
        missing feature bits are only logged, as upstream does today.

        :raises GhcbCallError: the host cannot speak GHCB protocol version 2.
        """
        info = decode_msr(self.ghcb.msr_request(vcpu, SevInfoRequest().encode()))
        if not isinstance(info, SevInfoResponse) or not info.min_protocol <= GHCB_PROTOCOL_VERSION <= info.max_protocol:
            try:
                self.ghcb.msr_request(vcpu, termination_request_msr(TerminationReason.GHCB_PROTOCOL))
            except GuestTerminated:
                pass
            raise GhcbCallError("GHCB protocol negotiation", 0, 0)
        feats = decode_msr(self.ghcb.msr_request(vcpu, HypervisorFeaturesRequest().encode()))
        present = feats.features if isinstance(feats, HypervisorFeaturesResponse) else 0
        self.hypervisor_features = present
        if REQUIRED_HV_FEATURES & ~present:
            log.warning("hypervisor features present=%#x required=%#x", present, REQUIRED_HV_FEATURES)

    def _svsm_owned(self, gpa: int, length: int) -> bool:
        return self.allocator.owns_any(gpa, length)

    def _validate_heap(self, vcpu: Vcpu, pc: PerCpu) -> None:
        lay = self.layout
        start, end = lay.heap_start, lay.svsm_base + lay.svsm_size
        boundary = min(end, (start + MB2 - 1) // MB2 * MB2)
        small = [PageStateChangeEntry(g >> 12, PageStateChangeOp.PRIVATE) for g in range(start, boundary, PAGE)]
        huge = [PageStateChangeEntry(g >> 12, PageStateChangeOp.PRIVATE, True) for g in range(boundary, end, MB2)]
        self.page_state_change(vcpu, pc, small + huge)
        for e in small + huge:
            rc, _ = self.cpu_ops.pvalidate(vcpu.index, e.gpa, e.huge, True)
            if rc:
                raise FatalError(f"PVALIDATE of SVSM heap page {e.gpa:#x} failed: {rc}")

    def page_state_change(self, vcpu: Vcpu, pc: PerCpu, entries: list[PageStateChangeEntry]) -> None:
        """Ask the host to change page states (GHCB PSC, 253 entries per request, re-issued until done).

        :raises GhcbCallError: the host refused.
        """
        for i in range(0, len(entries), 253):
            buf = PageStateChangeBuffer(tuple(entries[i : i + 253]))
            while not buf.done:
                scratch = pc.ghcb_gpa + 0x800
                g = self.ghcb.nae(vcpu, pc, SwExitCode.SNP_PAGE_STATE_CHANGE, 0, 0, buf.encode(), sw_scratch=scratch)
                if g.sw_exit_info_1 or g.sw_exit_info_2:
                    raise GhcbCallError("page state change", g.sw_exit_info_1, g.sw_exit_info_2)
                nxt = PageStateChangeBuffer.decode(g.shared_buffer[: 8 + 8 * len(buf.entries)])
                if nxt.cur_entry <= buf.cur_entry and not nxt.done:
                    raise GhcbCallError("page state change (no progress)", 0, 0)
                buf = nxt

    def _make_shared(self, vcpu: Vcpu, pc: PerCpu, gpa: int) -> None:
        """A per-CPU GHCB page: PVALIDATE it invalid, then MSR-protocol PSC to shared (coconut 3.1).

        :raises GhcbCallError: the host refused the page state change.
        """
        rc, _ = self.cpu_ops.pvalidate(vcpu.index, gpa, False, False)
        if rc:
            raise FatalError(f"rescinding GHCB page {gpa:#x} failed: {rc}")
        resp = decode_msr(self.ghcb.msr_request(vcpu, PageStateChangeRequest(gpa >> 12, PageStateChangeOp.SHARED).encode()))
        if not isinstance(resp, PageStateChangeResponse) or resp.error:
            raise GhcbCallError("page state change (MSR protocol)", 0, getattr(resp, "error", 0))

    def _create_svsm_vmsa(self, vcpu0: Vcpu, apic_id: int) -> int:
        gpa = self.allocator.allocate_zeroed_page()
        vcpu0.view(0).write(gpa, _build_vmsa(0))
        rc = self.cpu_ops.rmpadjust(0, gpa, False, 1, 0, True)
        if rc:
            raise FatalError(f"RMPADJUST of SVSM VMSA {gpa:#x} failed: {rc}")
        g = self.ghcb.nae(vcpu0, self.percpu[0], SwExitCode.SNP_AP_CREATION, _AP_CREATE | apic_id << 32, gpa, rax=SEV_FEATURES)
        if g.sw_exit_info_1:
            raise GhcbCallError("AP creation", g.sw_exit_info_1, g.sw_exit_info_2)
        return gpa

    # -- prepare_fw / launch_fw -----------------------------------------------------------------
    def prepare_guest(self, firmware: FirmwareImage) -> None:
        """Grant the firmware pages, fill the guest's secrets copy, build and register its VMSA."""
        lay, vcpu0 = self.layout, self.platform.vcpus[0]
        view = vcpu0.view(0)
        ranges = [(firmware.gpa, len(firmware.data))] + [(s.gpa, s.size) for s in firmware.sections]
        for gpa, size in ranges:
            for p in range(gpa, gpa + size, PAGE):
                if self.cpu_ops.rmpadjust(0, p, False, self.guest_vmpl, PERMS_RWX, False):
                    raise FatalError(f"granting firmware page {p:#x} to the guest failed")
        copy = SNP_SECRETS_PAGE.from_buffer_copy(bytes(self.secrets))
        for i in range(self.guest_vmpl):
            getattr(copy, f"vmpck{i}")[:] = bytes(32)
        copy.svsm_base, copy.svsm_size, copy.svsm_caa = lay.svsm_base, lay.svsm_size, lay.guest_caa_gpa
        copy.svsm_max_version, copy.svsm_guest_vmpl = 1, self.guest_vmpl
        view.write(lay.guest_secrets_gpa, bytes(copy))
        view.write(lay.guest_caa_gpa, bytes(8))
        gpa = self.allocator.allocate_zeroed_page()
        view.write(gpa, _build_vmsa(self.guest_vmpl, rip=firmware.gpa))
        # No guest permissions on its VMSA page (CREATE_VCPU does the same): no SVSM page is
        # reachable by the guest.  upstream grants READ here (snp.md 5.3).
        rc = self.cpu_ops.rmpadjust(0, gpa, False, self.guest_vmpl, 0, True)
        if rc:
            raise FatalError(f"RMPADJUST of the guest VMSA failed: {rc}")
        self.registry.register(gpa, lay.guest_caa_gpa, 0, guest_owned=False)
        self.registry.set_in_use(gpa)
        self.percpu[0].attach(gpa, lay.guest_caa_gpa)
        self.guest_vmsa_gpa = gpa
        info1 = _AP_CREATE_ON_INIT | self.guest_vmpl << 16 | vcpu0.apic_id << 32
        g = self.ghcb.nae(vcpu0, self.percpu[0], SwExitCode.SNP_AP_CREATION, info1, gpa, rax=SEV_FEATURES)
        if g.sw_exit_info_1:
            raise GhcbCallError("guest BSP registration", g.sw_exit_info_1, g.sw_exit_info_2)
        vcpu0.halt()
        self.tasks.start()

    # -- callbacks of the protocols ---------------------------------------------------------------
    def _apic_to_cpu(self, apic_id: int) -> int | None:
        for pc in self.percpu:
            if pc.apic_id == apic_id:
                return pc.index
        return None

    def _attach(self, cpu: int, vmsa: int | None, caa: int | None) -> None:
        self.percpu[cpu].attach(vmsa, caa)

    def _current(self, cpu: int) -> tuple[int, int] | None:
        return self.percpu[cpu].current()

    def _services(self) -> Sequence[tuple[uuid.UUID, bytes]]:
        return list(self.module_host.service_manifests()) if self.module_host is not None else []

    def _guest_request(
        self, cpu: int, msg_type: MsgType, payload: bytes, cert_capacity: int | None = None
    ) -> tuple[bytes, bytes]:
        """One guest-request message exchange with the PSP under VMPCK0 (greq lock held).

        :returns: (decrypted response payload, certificate table or b"").
        :raises CertificateBufferTooSmall: the host needs more certificate pages (the message
            was still consumed, so no IV is reused).
        :raises InvalidRequest: the host or PSP failed, or the response did not authenticate;
            VMPCK0 is retired then.
        """
        vcpu, pc, lay = self.platform.vcpus[cpu], self.percpu[cpu], self.layout
        req_gpa, resp_gpa, cert_gpa = lay.greq_gpa, lay.greq_gpa + PAGE, lay.greq_gpa + 2 * PAGE
        view = vcpu.view(0)
        if self._msg is None or not self._msg.usable:
            raise InvalidRequest("VMPCK0 is wiped; no more guest requests")
        view.write(req_gpa, self._msg.request(msg_type, payload), c_bit=False)
        too_small = pages = 0
        if cert_capacity is None:
            g = self.ghcb.nae(vcpu, pc, SwExitCode.SNP_GUEST_REQUEST, req_gpa, resp_gpa)
        else:
            pages = min(cert_capacity // PAGE, _GREQ_PAGES - 2)
            g = self.ghcb.nae(vcpu, pc, SwExitCode.SNP_EXT_GUEST_REQUEST, req_gpa, resp_gpa, rax=cert_gpa, rbx=pages)
            if g.sw_exit_info_2 >> 32 == 1 and not g.sw_exit_info_1:
                # As Linux: re-issue the same message without certificates so its sequence
                # number is consumed and no IV is ever used for two plaintexts.
                too_small = g.rbx
                g = self.ghcb.nae(vcpu, pc, SwExitCode.SNP_GUEST_REQUEST, req_gpa, resp_gpa)
        if g.sw_exit_info_1 or g.sw_exit_info_2:
            # The request may have been consumed: never reuse its IV.
            self._msg = None
            raise InvalidRequest(f"guest request failed: {g.sw_exit_info_1:#x}/{g.sw_exit_info_2:#x}")
        try:
            rsp = self._msg.response(view.read(resp_gpa, PAGE, c_bit=False))
        except GuestMessageError as exc:
            raise InvalidRequest("guest request response rejected") from exc
        if too_small:
            raise CertificateBufferTooSmall(too_small)
        certs = _cert_table(view.read(cert_gpa, pages * PAGE, c_bit=False)) if cert_capacity else b""
        return rsp, certs

    def _fetch_report(self, cpu: int, report_data: bytes, cert_capacity: int | None) -> tuple[bytes, bytes]:
        """A VMPL0 report through the guest-request channel (VMPCK0), certificates if asked."""
        req = SNP_REPORT_REQ(vmpl=0, flags=0)
        req.report_data[:] = report_data
        with self._greq_lock:
            payload, certs = self._guest_request(cpu, MsgType.REPORT_REQ, bytes(req), cert_capacity)
        rsp = SNP_REPORT_RSP.from_buffer_copy(payload[: ctypes.sizeof(SNP_REPORT_RSP)].ljust(ctypes.sizeof(SNP_REPORT_RSP), b"\0"))
        if rsp.status or rsp.report_size > len(rsp.report):
            raise InvalidRequest(f"PSP report status {rsp.status:#x}")
        return bytes(rsp.report)[: rsp.report_size], certs

    def _derive_key(self, cpu: int, field_select: int) -> bytes:
        """MSG_KEY_REQ: a VCEK-rooted key for VMPL0 bound to the guest fields in ``field_select``.

        :raises InvalidRequest: the PSP refused.
        """
        req = SNP_KEY_REQ(root_key_select=0, guest_field_select=field_select, vmpl=0)
        with self._greq_lock:
            payload, _ = self._guest_request(cpu, MsgType.KEY_REQ, bytes(req)[:KEY_REQ_SIZE])
        rsp = SNP_KEY_RSP.from_buffer_copy(payload[: ctypes.sizeof(SNP_KEY_RSP)].ljust(ctypes.sizeof(SNP_KEY_RSP), b"\0"))
        if rsp.status:
            raise InvalidRequest(f"PSP key status {rsp.status:#x}")
        return bytes(rsp.derived_key)

    def shutdown(self) -> None:
        """Give back what the kernel holds and check its allocators for leaks.

        Run after every vCPU stopped.  Skipped after a panic (the state is not trustworthy).

        :raises MemoryLeak: the kernel leaked pages or slab objects (a ``FatalError``; the
            report names the allocating call sites).
        """
        if self.panicker.panicked is not None:
            return
        for gpa in self.ap_vmsas.values():
            self.allocator.free_page(gpa)
        self.ap_vmsas.clear()
        if self.guest_vmsa_gpa is not None:
            self.allocator.free_page(self.guest_vmsa_gpa)
            self.guest_vmsa_gpa = None
        self.slab.check_leaks()
        self.slab.trim()
        self.areas.shutdown()
        self.allocator.check_leaks()

    def attach_module_host(self, host: ModuleHost | None) -> None:
        """Route the protocols the kernel does not serve to ``host`` from now on (None: nobody).

        Lets the module runtime start after boot, with keys only the booted SVSM can derive
        (:attr:`module_key_root`) and PSP reports (:meth:`module_report`).
        """
        self.module_host = host
        self.dispatcher.module_host = host

    def module_report(self, report_data: bytes) -> bytes:
        """A VMPL0 report with caller-chosen REPORT_DATA, for module syscalls (``Providers.report``).

        Sent from a vCPU at VMPL0 (:meth:`run_at_vmpl0`): the one whose guest call is in flight
        on this thread (module syscalls arrive while the module serves a guest call), otherwise
        whichever vCPU the SVSM gets first, even when every vCPU runs the guest.

        :raises InvalidRequest: bad REPORT_DATA, or the PSP refused.
        :raises Busy: no vCPU reached VMPL0 in time (the module may retry).
        """
        if len(report_data) != 64:
            raise InvalidRequest("REPORT_DATA must be 64 bytes")
        return self.run_at_vmpl0(lambda v: self._fetch_report(v.index, report_data, None)[0])  # type: ignore[no-any-return]

    def run_at_vmpl0(self, fn: Callable[[Vcpu], Any], *, timeout: float = 10.0) -> Any:
        """Run kernel work that needs a vCPU at VMPL0 (its GHCB, e.g. a guest request to the PSP).

        As upstream, the SVSM issues VMGEXITs only from the vCPU it is running on, one user of
        a vCPU's VMPL0 context (:class:`~svsm.kernel._requests.KernelContext`) at a time:

        * on a vCPU thread inside the SVSM (a guest call in flight): right there;
        * otherwise the work is queued for the next vCPU that enters the SVSM (its request loop
          runs it after the guest's call), and meanwhile it is offered to every vCPU: one that
          is in the SVSM waiting for a module lends its parked context (as upstream runs other
          kernel tasks on a CPU whose request loop is blocked), and the host is asked to
          interrupt one that runs the guest into VMPL0 between two guest instructions (or to
          start an idle one; the guest resumes afterwards).  Whichever comes first runs it, once.

        :param fn: ``fn(vcpu)``, called at VMPL0 on the chosen vCPU.
        :param timeout: seconds (injected clock) to wait for a vCPU before giving up.
        :returns: what ``fn`` returned; its exception is re-raised here.
        :raises Busy: no vCPU reached VMPL0 within ``timeout`` (every vCPU stayed busy, or the
            host never delivered the interrupt); the work did not run.
        :raises InvalidRequest: the SVSM panicked or was shut down.
        """
        cpu = current_cpu()
        if cpu is not None:
            ctx = self.percpu[cpu].context
            if ctx.held_by_me():
                return fn(self.platform.vcpus[cpu])
            ctx.acquire()  # our request loop is parked (waiting for a module): take it back
            try:
                return fn(self.platform.vcpus[cpu])
            finally:
                ctx.release()
        if self.panicker.panicked is not None:
            raise InvalidRequest("the SVSM panicked")
        work = KernelWork(fn)
        self.loop.kernel_work.append(work)
        hv = self.platform.hypervisor
        deadline = self._clock() + timeout
        while not work.done.is_set():
            for v in self.platform.vcpus:
                if work.done.is_set():
                    break
                if self.loop.run_work_parked(v, work):
                    work.done.wait()
                    break
                if (v.has_entry(0) and hv.deliver_vmpl_interrupt(v, 0, lambda vc: self.loop.run_work_interrupted(vc, work))
                        and work.claimed):  # fmt: skip
                    work.done.wait()  # it ran in our handler, or another vCPU has claimed it
                    break
            else:
                if self._clock() >= deadline and work.claim():
                    work.abandoned = True
                    raise Busy("no vCPU reached VMPL0 to run kernel work")
                work.done.wait(0.001)
            if not any(v.has_entry(0) for v in self.platform.vcpus) and work.claim():
                raise InvalidRequest("the SVSM is shut down: no vCPU enters VMPL0")
        if work.error is not None:
            raise work.error
        return work.result

    # -- panic ------------------------------------------------------------------------------------
    def _wipe_vmpcks(self) -> None:
        self._msg = None
        if hasattr(self, "secrets"):
            for i in range(4):
                getattr(self.secrets, f"vmpck{i}")[:] = bytes(32)
            try:
                self.platform.vcpus[0].view(0).write(self.layout.secrets_gpa + 0x20, bytes(128))
            except HardwareFault:
                log.error("could not wipe the VMPCKs in the secrets page")

    def _terminate(self, cpu: int, msr_value: int) -> None:
        vcpu = self.platform.vcpus[cpu]
        try:
            self.ghcb.msr_request(vcpu, msr_value)
        except GuestTerminated:
            pass
        else:
            log.critical("hypervisor ignored the termination request")
