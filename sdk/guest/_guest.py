"""The simulated guest OS's SVSM driver: what Linux's SNP code does (arch/x86/coco/sev).

A :class:`Guest` drives one vCPU at the guest VMPL through the *hardware interface only*: its
register file (the VMSA of its VMPL), its memory view, the GHCB MSR and VMGEXIT.  It issues SVSM
calls exactly as ``svsm_issue_call`` does (registers, ``call_pending``, RUN_VMPL(0), ``xchg``),
accepts memory (page state change, then PVALIDATE through the SVSM), brings up APs
(CREATE_VCPU, then its own AP creation NAE) and fetches attestations.

The SDK must not import the kernel at import time; the few hardware codecs a guest needs (GHCB
page, MSR protocol, PSC buffer, VMSA layout: one declaration each, in ``svsm.kernel.hw``) are
imported when first used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import struct
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from .._errors import FatalError, InvalidParameter, RequestError, ResultCode, SvsmError
from ._abi import (
    NONCE_SIZE,
    PAGE_SIZE,
    PAGE_SIZE_2M,
    SVSM_ATTEST_PROTOCOL,
    SVSM_CORE_PROTOCOL,
    SVSM_REQ_ATTEST_SERVICES,
    SVSM_REQ_ATTEST_SINGLE_SERVICE,
    SVSM_REQ_CORE_CREATE_VCPU,
    SVSM_REQ_CORE_DELETE_VCPU,
    SVSM_REQ_CORE_PVALIDATE,
    SVSM_REQ_CORE_QUERY_PROTOCOL,
    AttestServicesOp,
    AttestSingleServiceOp,
    PageList,
    PvalidateEntry,
    ServicesManifest,
    request_rax,
)
from ._pool import PagePool

__all__ = ["Guest", "GuestStatistics", "SvsmCallResult", "CallNotServiced", "Attestation", "GuestVcpu", "PagePool"]

_RETRY_CODES = (ResultCode.INCOMPLETE, ResultCode.BUSY)
_EFER_LONG_SVME = (1 << 8) | (1 << 10) | (1 << 12)


def _hw() -> Any:
    import svsm.kernel.hw as hw  # the hardware codecs; see the module docstring

    return hw


@functools.cache
def _run_vmpl_msr() -> tuple[int, int]:
    """(RUN_VMPL(0) request, RUN_VMPL success response) as GHCB MSR values."""
    hw = _hw()
    return hw.RunVmplRequest(0).encode(), hw.RunVmplResponse(0).encode()


#: The registers of the SVSM calling convention, in SvsmCallResult order.
_CALL_REGS = ("rax", "rcx", "rdx", "r8", "r9")


class GuestVcpu(Protocol):
    """The hardware interface of one vCPU, as the guest sees it."""

    index: int
    apic_id: int
    vmpl: int | None

    def vmsa(self, vmpl: int | None = None) -> Any: ...

    def view(self, vmpl: int | None = None) -> Any: ...

    def wrmsr(self, msr: int, value: int) -> None: ...

    def rdmsr(self, msr: int) -> int: ...

    def vmgexit(self) -> None: ...

    def vmrun(self, vmpl: int) -> None: ...

    def halt(self) -> None: ...


class CallNotServiced(SvsmError):
    """``call_pending`` was still 1 after RUN_VMPL(0): the SVSM never saw the call (Linux: -EINVAL)."""


class SvsmCallResult(NamedTuple):
    """Output registers of one SVSM call."""

    rax: int
    rcx: int
    rdx: int
    r8: int
    r9: int

    @property
    def ok(self) -> bool:
        """RAX == SUCCESS."""
        return self.rax == ResultCode.SUCCESS

    def raise_for_result(self) -> SvsmCallResult:
        """Return self on SUCCESS.  :raises RequestError: carrying RAX as its code."""
        if self.rax:
            raise RequestError(f"SVSM call failed: {self.rax:#x}", code=self.rax)
        return self


class GuestStatistics(NamedTuple):
    """What one guest vCPU driver did."""

    calls: int
    accepted_pages: int
    free_pages: int
    aps: int


@dataclasses.dataclass(frozen=True, slots=True)
class Attestation:
    """What ATTEST_SERVICES / ATTEST_SINGLE_SERVICE returned (nothing verified yet)."""

    nonce: bytes
    report: bytes
    manifest: ServicesManifest
    manifest_bytes: bytes
    certificates: dict[uuid.UUID, bytes]

    def verify(self, *, trusted_arks: Sequence[Any] | None = None, now: Any = None) -> Any:
        """Check the report against the VCEK chain, that it is VMPL0's, and REPORT_DATA = SHA-512(nonce || manifest).

        :param trusted_arks: pinned AMD root certificates (``cryptography`` x509).  The chain
            comes from the untrusted host: without a pinned root only its internal consistency
            is checked.
        :returns: the verified :class:`~svsm.sdk.attestation.AttestationReport`.
        :raises VerificationError: a signature, chain, root or binding check failed.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        from svsm.sdk.attestation import ARK_GUID, ASK_GUID, VCEK_GUID, VerificationError, load_chain, verify_report

        try:
            pems = [x509.load_der_x509_certificate(self.certificates[g]).public_bytes(Encoding.PEM)
                    for g in (ARK_GUID, ASK_GUID, VCEK_GUID)]  # fmt: skip
        except (KeyError, ValueError) as exc:
            raise VerificationError("certificate table lacks a usable ARK/ASK/VCEK") from exc
        report = verify_report(self.report, load_chain(*pems), now=now, trusted_arks=trusted_arks)
        if report.vmpl != 0:  # only the SVSM (VMPL0) attests services; a guest VMPL picks any REPORT_DATA
            raise VerificationError(f"services attestation from VMPL{report.vmpl}, not the SVSM (VMPL0)")
        want = hashlib.sha512(self.nonce + self.manifest_bytes).digest()
        if not hmac.compare_digest(report.report_data, want):
            raise VerificationError("REPORT_DATA is not SHA-512(nonce || manifest)")
        return report


class Guest:
    """The guest OS on one vCPU at the guest VMPL.

    :param cpu: the vCPU's hardware interface.
    :param vmpl: the guest VMPL (the secrets page's ``svsm_guest_vmpl`` must agree).
    :param secrets_gpa: the guest's secrets page (firmware metadata).
    :param ram: the guest memory map: (start, end) ranges.
    :param reserved: ranges the guest must never accept or hand out (firmware, its metadata pages).
    :param prevalidated: pages validated at launch that the guest may use as its first pool.
    :param cpus: APIC ID -> vCPU hardware interface (the platform's CPU topology).
    :param apic_ids: every APIC ID of the machine.
    :param caa_gpa: this vCPU's calling area (default: the secrets page's, for the BSP).
    :param peer: the BSP's guest object (APs share its page pool).
    :param use_ghcb: call through the GHCB NAE (SNP_RUN_VMPL) instead of the MSR protocol.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        cpu: GuestVcpu,
        vmpl: int,
        *,
        secrets_gpa: int,
        ram: Sequence[tuple[int, int]],
        reserved: Sequence[tuple[int, int]] = (),
        prevalidated: Sequence[tuple[int, int]] = ((0x1000, 0x4000),),
        cpus: Callable[[int], GuestVcpu | None] | None = None,
        apic_ids: Sequence[int] = (),
        caa_gpa: int | None = None,
        peer: Guest | None = None,
        use_ghcb: bool = False,
    ) -> None:
        self.cpu = cpu
        self.vmpl = vmpl
        self.ram = tuple(ram)
        self.reserved = tuple(reserved)
        self.cpus = cpus
        self.apic_ids = tuple(apic_ids)
        self.use_ghcb = use_ghcb
        #: One instruction stream per vCPU: callers on several host threads take turns.  It is
        #: the vCPU's own execution lock, so the host interrupts the guest into another VMPL
        #: only between two of these operations.
        self._cpu_lock: Any = getattr(cpu, "exec_lock", None) or threading.RLock()
        with self._cpu_lock:
            if cpu.vmpl is None:
                cpu.vmrun(vmpl)
        self.mem = cpu.view(vmpl)
        self.regs = cpu.vmsa(vmpl)
        from svsm.sdk.attestation import SNP_SECRETS_PAGE

        secrets = SNP_SECRETS_PAGE.from_buffer_copy(self.mem.read(secrets_gpa, PAGE_SIZE))
        if secrets.svsm_guest_vmpl != vmpl or secrets.svsm_max_version < 1:
            raise FatalError(f"secrets page says guest VMPL {secrets.svsm_guest_vmpl}, running at {vmpl}")
        self.secrets_gpa = secrets_gpa
        self.svsm_base, self.svsm_size = secrets.svsm_base, secrets.svsm_size
        self.caa = secrets.svsm_caa if caa_gpa is None else caa_gpa
        self.pool = peer.pool if peer is not None else PagePool()
        self.accepted: set[int] = peer.accepted if peer is not None else set()
        if peer is None:
            for gpa, size in prevalidated:
                self.pool.add(gpa, size)
            self.pool.refill = self._accept_more
        #: Next GPA lazy acceptance looks at (the BSP's pool refills from the BSP's driver).
        self._accept_cursor = 0
        self._cursor_lock = threading.Lock()
        self._ghcb_gpa: int | None = None
        self.aps: dict[int, tuple[Guest, int, int]] = {}
        self.calls = 0

    def statistics(self) -> GuestStatistics:
        """Calls made on this vCPU, pages accepted (shared by all vCPUs), free pool pages, APs started."""
        return GuestStatistics(self.calls, len(self.accepted), len(self.pool), len(self.aps))

    # -- the SVSM calling convention ----------------------------------------------------------------
    def svsm_call(self, protocol: int, call: int, rcx: int = 0, rdx: int = 0, r8: int = 0, r9: int = 0,
                  *, max_retries: int = 1000) -> SvsmCallResult:  # fmt: skip
        """One SVSM call as Linux's ``svsm_issue_call`` makes it; INCOMPLETE/BUSY are retried.

        :returns: the output registers (RAX is the result code; nothing is raised for it).
        :raises CallNotServiced: ``call_pending`` was still set afterwards.
        """
        with self._cpu_lock:
            return self._svsm_call(protocol, call, rcx, rdx, r8, r9, max_retries)

    def _svsm_call(self, protocol: int, call: int, rcx: int, rdx: int, r8: int, r9: int, max_retries: int) -> SvsmCallResult:
        regs, mem, caa = self.regs, self.mem, self.caa
        inputs = (request_rax(protocol, call), rcx, rdx, r8, r9)
        for _ in range(max_retries + 1):
            regs.set_many(_CALL_REGS, inputs)
            mem.write(caa, b"\x01")
            self._run_vmpl0()
            pending = mem.exchange(caa, b"\x00")[0]  # Linux: xchg(&caa->call_pending, 0)
            self.calls += 1
            if pending == 1:
                raise CallNotServiced("the SVSM did not service the call")
            out = SvsmCallResult(*regs.get_many(_CALL_REGS))
            if out.rax not in _RETRY_CODES:
                return out
        return out

    def _run_vmpl0(self) -> None:
        hw = _hw()
        if self.use_ghcb:
            g = self._nae(hw.SwExitCode.SNP_RUN_VMPL, 0, 0)
            if g.sw_exit_info_1:
                raise FatalError(f"SNP_RUN_VMPL refused: {g.sw_exit_info_1:#x}")
            return
        cpu = self.cpu
        cpu.wrmsr(hw.MSR_GHCB, _run_vmpl_msr()[0])
        cpu.vmgexit()
        value = cpu.rdmsr(hw.MSR_GHCB)
        if value != _run_vmpl_msr()[1]:
            resp = hw.decode_msr(value)
            if not isinstance(resp, hw.RunVmplResponse) or resp.error:
                raise FatalError(f"RUN_VMPL(0) refused by the hypervisor: {resp!r}")
        if self._ghcb_gpa is not None:
            cpu.wrmsr(hw.MSR_GHCB, self._ghcb_gpa)

    def query_protocol(self, protocol: int, version: int = 1) -> tuple[int, int] | None:
        """QUERY_PROTOCOL: (min, max) if ``version`` of ``protocol`` is served, else None."""
        r = self.svsm_call(SVSM_CORE_PROTOCOL, SVSM_REQ_CORE_QUERY_PROTOCOL, protocol << 32 | version)
        r.raise_for_result()
        return None if r.rcx == 0 else (r.rcx & 0xFFFF_FFFF, r.rcx >> 32)

    # -- GHCB -------------------------------------------------------------------------------------
    def _msr(self, value: int) -> Any:
        hw = _hw()
        with self._cpu_lock:
            self.cpu.wrmsr(hw.MSR_GHCB, value)
            self.cpu.vmgexit()
            return hw.decode_msr(self.cpu.rdmsr(hw.MSR_GHCB))

    def _ghcb(self) -> int:
        """This vCPU's GHCB: a pool page made shared (rescind through the SVSM, PSC) and registered."""
        with self._cpu_lock:
            if self._ghcb_gpa is None:
                self._setup_ghcb()
            return self._ghcb_gpa  # type: ignore[return-value]

    def _setup_ghcb(self) -> None:
        hw = _hw()
        gpa = self.pool.take()
        self.pvalidate([PvalidateEntry(gpa, validate=False)])
        resp = self._msr(hw.PageStateChangeRequest(gpa >> 12, 2).encode())
        if getattr(resp, "error", 1):
            raise FatalError(f"making the GHCB shared failed: {resp!r}")
        resp = self._msr(hw.RegisterGhcbRequest(gpa >> 12).encode())
        if getattr(resp, "gfn", None) != gpa >> 12:
            raise FatalError("GHCB registration refused")
        self.cpu.wrmsr(hw.MSR_GHCB, gpa)
        self._ghcb_gpa = gpa

    def _nae(self, code: int, info1: int, info2: int, shared: bytes | None = None, **regs: int) -> Any:
        with self._cpu_lock:
            return self._nae_locked(code, info1, info2, shared, **regs)

    def _nae_locked(self, code: int, info1: int, info2: int, shared: bytes | None, **regs: int) -> Any:
        hw = _hw()
        gpa = self._ghcb()
        g = hw.GhcbPage()
        g.clear()
        g.set("sw_exit_code", int(code))
        g.set("sw_exit_info_1", info1)
        g.set("sw_exit_info_2", info2)
        for k, v in regs.items():
            g.set(k, v)
        if shared is not None:
            g.write_shared_buffer(shared)
        self.mem.write(gpa, g.to_bytes(), c_bit=False)
        self.cpu.wrmsr(hw.MSR_GHCB, gpa)
        self.cpu.vmgexit()
        return hw.GhcbPage(self.mem.read(gpa, PAGE_SIZE, c_bit=False))

    def _psc(self, entries: list[Any]) -> None:
        hw = _hw()
        gpa = self._ghcb()
        for i in range(0, len(entries), 253):
            buf = hw.PageStateChangeBuffer(tuple(entries[i : i + 253]))
            while not buf.done:
                g = self._nae(hw.SwExitCode.SNP_PAGE_STATE_CHANGE, 0, 0, buf.encode(), sw_scratch=gpa + 0x800)
                if g.sw_exit_info_1 or g.sw_exit_info_2:
                    raise FatalError(f"page state change failed: {g.sw_exit_info_1:#x}/{g.sw_exit_info_2:#x}")
                nxt = hw.PageStateChangeBuffer.decode(g.shared_buffer[: 8 + 8 * len(buf.entries)])
                if nxt.cur_entry <= buf.cur_entry and not nxt.done:
                    raise FatalError("page state change made no progress")
                buf = nxt

    # -- memory acceptance -------------------------------------------------------------------------
    def pvalidate(self, entries: Sequence[PvalidateEntry]) -> None:
        """PVALIDATE through the SVSM, the list in the calling area's buffer (CAA+8, 510 a call).

        A 2 MiB entry answered with FAIL_SIZEMISMATCH is retried as 512 4 KiB entries, as Linux does.

        :raises RequestError: any other failure, with the SVSM's code.
        """
        with self._cpu_lock:
            self._pvalidate(list(entries))

    def _pvalidate(self, todo: list[PvalidateEntry]) -> None:
        list_gpa = self.caa + 8
        cap = PageList.max_entries(list_gpa)
        while todo:
            batch = todo[:cap]
            self.mem.write(list_gpa, PageList.build([e.to_raw() for e in batch]))
            r = self.svsm_call(SVSM_CORE_PROTOCOL, SVSM_REQ_CORE_PVALIDATE, list_gpa)
            done = struct.unpack("<H", self.mem.read(list_gpa + 2, 2))[0]
            if r.rax == ResultCode.PVALIDATE_FAIL_SIZEMISMATCH and batch[done].huge:
                e = batch[done]
                split = [PvalidateEntry(e.gpa + o, False, e.validate, e.ignore_cf) for o in range(0, PAGE_SIZE_2M, PAGE_SIZE)]
                todo = split + todo[done + 1 :]
                continue
            r.raise_for_result()
            todo = todo[len(batch) :]

    def accept_memory(self, gpa: int, size: int) -> int:
        """Make ``[gpa, gpa+size)`` private and validated (PSC private, then PVALIDATE via the SVSM).

        Reserved ranges and pages already accepted are skipped; 2 MiB entries are used where a
        whole aligned 2 MiB block is accepted.

        :returns: bytes newly accepted (they join the guest's page pool).
        """
        hw = _hw()
        pages = self._acceptable(gpa, size)
        per_2m = PAGE_SIZE_2M // PAGE_SIZE
        psc, pv = [], []
        i = 0
        while i < len(pages):
            p = pages[i]
            # pages ascend in PAGE_SIZE steps: the whole 2 MiB block is wanted iff its last page
            # sits 511 entries further on
            if p % PAGE_SIZE_2M == 0 and i + per_2m <= len(pages) and pages[i + per_2m - 1] == p + PAGE_SIZE_2M - PAGE_SIZE:
                psc.append(hw.PageStateChangeEntry(p >> 12, hw.PageStateChangeOp.PRIVATE, True))
                pv.append(PvalidateEntry(p, huge=True))
                i += PAGE_SIZE_2M // PAGE_SIZE
            else:
                psc.append(hw.PageStateChangeEntry(p >> 12, hw.PageStateChangeOp.PRIVATE))
                pv.append(PvalidateEntry(p))
                i += 1
        if not pages:
            return 0
        self._psc(psc)
        self.pvalidate(pv)
        self.accepted.update(pages)
        self.pool.give_many(pages)
        return len(pages) * PAGE_SIZE

    def _accept_more(self, count: int) -> bool:
        """Lazy acceptance (Linux's unaccepted memory): accept the next 2 MiB chunks of guest RAM
        into the pool until ``count`` pages came in.  The pool calls it when it runs dry.

        :returns: False once no RAM is left to accept.
        :raises RequestError: the SVSM refused to validate.
        """
        end = max((e for _, e in self.ram), default=0)
        got = 0
        while got < count:
            with self._cursor_lock:
                start = self._accept_cursor
                if start >= end:
                    break
                stop = self._accept_cursor = min(end, (start // PAGE_SIZE_2M + 1) * PAGE_SIZE_2M)
            got += self.accept_memory(start, stop - start) // PAGE_SIZE
        return got > 0

    def _acceptable(self, gpa: int, size: int) -> list[int]:
        """The pages ``gpa + k * PAGE_SIZE`` below ``gpa + size`` in RAM, not reserved, not accepted."""
        end = gpa + size
        spans: list[tuple[int, int]] = []  # [lo, hi) address intervals, in RAM
        for s, e in self.ram:
            lo, hi = max(s, gpa), min(e, end)
            if lo < hi:
                spans.append((lo, hi))
        for s, n in self.reserved:
            cut = []
            for lo, hi in spans:
                if s + n <= lo or hi <= s:
                    cut.append((lo, hi))
                    continue
                if lo < s:
                    cut.append((lo, s))
                if s + n < hi:
                    cut.append((s + n, hi))
            spans = cut
        accepted = self.accepted
        out: list[int] = []
        for lo, hi in sorted(spans):
            first = gpa + -(-(lo - gpa) // PAGE_SIZE) * PAGE_SIZE  # first page start >= lo
            out.extend(p for p in range(first, hi, PAGE_SIZE) if p not in accepted)
        return out

    # -- APs ----------------------------------------------------------------------------------------
    def sev_features(self) -> int:
        """SEV_FEATURES of this guest, from MSR SEV_STATUS (bit n+2 = feature n, n >= 1)."""
        with self._cpu_lock:
            status = self.cpu.rdmsr(_hw().MSR_SEV_STATUS)
        return 1 | ((status >> 3) << 1)

    def start_ap(self, apic_id: int) -> Guest:
        """Bring up an AP: build its VMSA, CREATE_VCPU through the SVSM, AP creation with the host.

        :returns: the guest driver on that AP (drive it from its own thread).
        :raises RequestError: the SVSM refused CREATE_VCPU (its code).
        """
        hw = _hw()
        if self.cpus is None or self.cpus(apic_id) is None:
            raise InvalidParameter(f"no vCPU with APIC ID {apic_id}")
        vmsa_gpa, caa_gpa = self.pool.take(), self.pool.take()
        v = hw.VMSA()
        v.vmpl, v.efer, v.sev_features = self.vmpl, _EFER_LONG_SVME, self.sev_features()
        v.cr0, v.rflags, v.xcr0, v.mxcsr, v.x87_fcw = 0x8000_0011, 0x2, 1, 0x1F80, 0x37F
        self.mem.write(vmsa_gpa, bytes(v))
        self.mem.write(caa_gpa, bytes(PAGE_SIZE))
        r = self.svsm_call(SVSM_CORE_PROTOCOL, SVSM_REQ_CORE_CREATE_VCPU, vmsa_gpa, caa_gpa, apic_id)
        if not r.ok:
            self.pool.give(vmsa_gpa)
            self.pool.give(caa_gpa)
            r.raise_for_result()
        g = self._nae(hw.SwExitCode.SNP_AP_CREATION, 1 | self.vmpl << 16 | apic_id << 32, vmsa_gpa, rax=v.sev_features)
        if g.sw_exit_info_1:
            raise FatalError(f"AP creation refused by the host: {g.sw_exit_info_2:#x}")
        target = self.cpus(apic_id)
        assert target is not None
        ap = Guest(target, self.vmpl, secrets_gpa=self.secrets_gpa, ram=self.ram, reserved=self.reserved,
                   cpus=self.cpus, apic_ids=self.apic_ids, caa_gpa=caa_gpa, peer=self, use_ghcb=self.use_ghcb)  # fmt: skip
        self.aps[apic_id] = (ap, vmsa_gpa, caa_gpa)
        return ap

    def stop_ap(self, apic_id: int) -> None:
        """DELETE_VCPU through the SVSM, then AP destroy with the host; the pages return to the pool.

        :raises RequestError: the SVSM refused.
        """
        hw = _hw()
        ap, vmsa_gpa, caa_gpa = self.aps.pop(apic_id)
        self.svsm_call(SVSM_CORE_PROTOCOL, SVSM_REQ_CORE_DELETE_VCPU, vmsa_gpa).raise_for_result()
        self._nae(hw.SwExitCode.SNP_AP_CREATION, 2 | self.vmpl << 16 | apic_id << 32, vmsa_gpa)
        with ap._cpu_lock:
            if ap.cpu.vmpl is not None:
                ap.cpu.halt()
        self.pool.give(vmsa_gpa)
        self.pool.give(caa_gpa)

    # -- attestation --------------------------------------------------------------------------------
    def attest(self, nonce: bytes, service: uuid.UUID | None = None, *, cert_pages: int = 4) -> Attestation:
        """ATTEST_SERVICES (or ATTEST_SINGLE_SERVICE for ``service``) with a 64-byte nonce.

        Buffers too small are grown and the call retried, from the sizes the SVSM reports.

        :raises RequestError: the SVSM's result code.
        """
        if len(nonce) != NONCE_SIZE:
            raise InvalidParameter("nonce must be 64 bytes")
        op_page, report_page = self.pool.take(), self.pool.take()
        manifest = self._grow([], PAGE_SIZE)
        certs = self._grow([], cert_pages * PAGE_SIZE) if cert_pages else []
        try:
            while True:
                nonce_gpa = op_page + 0x800
                self.mem.write(nonce_gpa, nonce)
                # buffers of several pages must be contiguous: use the first page's run only
                mgpa, msize = self._contiguous(manifest)
                cgpa, csize = self._contiguous(certs) if certs else (0, 0)
                op = AttestServicesOp(report_page, PAGE_SIZE, nonce_gpa, NONCE_SIZE, mgpa, msize, cgpa, csize)
                if service is None:
                    self.mem.write(op_page, op.to_bytes())
                    r = self.svsm_call(SVSM_ATTEST_PROTOCOL, SVSM_REQ_ATTEST_SERVICES, op_page)
                else:
                    self.mem.write(op_page, AttestSingleServiceOp(op, service).to_bytes())
                    r = self.svsm_call(SVSM_ATTEST_PROTOCOL, SVSM_REQ_ATTEST_SINGLE_SERVICE, op_page)
                if r.rax == ResultCode.INVALID_PARAMETER and r.rcx > msize:
                    manifest = self._grow(manifest, r.rcx)
                    continue
                if r.rax == ResultCode.INVALID_PARAMETER and certs and r.rdx > csize:
                    certs = self._grow(certs, r.rdx)
                    continue
                r.raise_for_result()
                break
            from svsm.sdk.attestation import parse_cert_table

            mbytes = self.mem.read(mgpa, r.rcx)
            table = parse_cert_table(self.mem.read(cgpa, r.rdx)) if r.rdx else {}
            return Attestation(nonce, self.mem.read(report_page, r.r8), ServicesManifest.from_bytes(mbytes), mbytes, table)
        finally:
            for p in [op_page, report_page, *manifest, *certs]:
                self.pool.give(p)

    def _contiguous(self, pages: list[int]) -> tuple[int, int]:
        n = 1
        while n < len(pages) and pages[n] == pages[0] + n * PAGE_SIZE:
            n += 1
        return pages[0], n * PAGE_SIZE

    def _grow(self, pages: list[int], need: int) -> list[int]:
        """A physically contiguous run of at least ``need`` bytes; ``pages`` go back to the pool."""
        run = self.pool.take_contiguous(-(-need // PAGE_SIZE))
        for p in pages:
            self.pool.give(p)
        return run
