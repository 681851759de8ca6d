"""The SVSM core protocol (0): every call of coconut-svsm.md 2.2 / 2.3, plus DEPOSIT_MEM and
WITHDRAW_MEM, which upstream leaves unimplemented (their format is pysvsm's, docs/protocols.md).

One private method per call; :meth:`CoreProtocol.__call__` matches the call number and answers
an unknown one with UNSUPPORTED_CALL.  Hardware instructions are reached through the narrow
:class:`CpuOps` interface the kernel implements on the simulated CPU, and guest memory through
:class:`~._guestmem.GuestMemory` only.

``PVALIDATE_LOCK`` (coconut-svsm.md 1.6) is held for read by PVALIDATE and for write by
CREATE_VCPU, DELETE_VCPU and REMAP_CA, so the CREATE_VCPU error path can never hand a page the
SVSM is still using back to the guest while a PVALIDATE races with it.  DEPOSIT_MEM and
WITHDRAW_MEM (not upstream) take it for write too: they move pages between guest and SVSM.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from svsm.kernel.sync import RWLock
from svsm.sdk import (
    FatalError,
    InvalidAddress,
    InvalidParameter,
    InvalidRequest,
    ProtocolError,
    UnsupportedCall,
)
from svsm.sdk.guest._abi import (
    CA_HEADER_SIZE,
    PAGE_SIZE,
    PVALIDATE_ENTRY_SIZE,
    SVSM_REQ_CORE_CONFIGURE_VTOM,
    SVSM_REQ_CORE_CREATE_VCPU,
    SVSM_REQ_CORE_DELETE_VCPU,
    SVSM_REQ_CORE_DEPOSIT_MEM,
    SVSM_REQ_CORE_PVALIDATE,
    SVSM_REQ_CORE_QUERY_PROTOCOL,
    SVSM_REQ_CORE_REMAP_CA,
    SVSM_REQ_CORE_WITHDRAW_MEM,
    PageList,
    PageListEntry,
    PvalidateEntry,
)

from ._dispatch import RequestParams
from ._guestmem import GuestMemory
from ._vcpus import VcpuRegistry

__all__ = ["CoreProtocol", "CpuOps", "VmsaSummary", "DepositPool", "CoreStatistics", "EFER_SVME"]

log = logging.getLogger("svsm.kernel.protocols.core")

#: EFER.SVME: set in a guest VMSA = runnable (coconut-svsm.md 3.4).
EFER_SVME = 1 << 12
# PVALIDATE / RMPADJUST EAX values (snp.md 5.2, 5.3) and the SVSM's BASE+n forwarding.
_FAIL_INPUT, _FAIL_PERMISSION, _FAIL_SIZEMISMATCH = 1, 2, 6
#: Linux / COCONUT code for "PVALIDATE changed nothing" (CF=1): BASE + 0x10.
FAIL_UNCHANGED = 0x10
# RMPADJUST permission bits (snp.md 5.3: [15:8] mask; bit 8 R, 9 W, 10 X-user, 11 X-supervisor).
PERM_READ, PERM_WRITE, PERM_XUSER, PERM_XSUPER = 0x1, 0x2, 0x4, 0x8
PERMS_RWX = PERM_READ | PERM_WRITE | PERM_XUSER | PERM_XSUPER
#: The legacy ISA hole upstream does not zero after validation (``writable_phys_addr``, a FIXME
#: for read-only MMIO).  The simulation has no such MMIO, so pysvsm zeroes it like any page: a host
#: remapping an SVSM frame into the hole must not expose its plaintext (SECREVIEW 01:20).
ISA_RANGE = (0xA0000, 0x100000)


class VmsaSummary(NamedTuple):
    """The VMSA fields CREATE_VCPU checks (coconut-svsm.md 3.4)."""

    vmpl: int
    efer: int
    sev_features: int


class CpuOps(Protocol):
    """Instructions the core protocol executes as the SVSM (VMPL0) on vCPU ``cpu``.

    Implemented by the kernel on the simulated CPU.  ``pvalidate``/``rmpadjust`` return the
    instruction's EAX (and CF); an RMP/#VC fault raises the hardware fault, which the core
    protocol turns into INVALID_ADDRESS.
    """

    def pvalidate(self, cpu: int, gpa: int, huge: bool, validate: bool) -> tuple[int, bool]: ...

    def rmpadjust(self, cpu: int, gpa: int, huge: bool, target_vmpl: int, perms: int, vmsa: bool) -> int: ...

    def zero(self, cpu: int, gpa: int, size: int) -> None: ...

    def read_vmsa(self, cpu: int, gpa: int) -> VmsaSummary: ...

    def clear_svme(self, cpu: int, gpa: int) -> None: ...

    def flush_tlb(self) -> None: ...


class DepositPool(Protocol):
    """Where deposited guest pages go: the SVSM allocator's lendable memory."""

    def deposit(self, gpa: int, size: int) -> None:
        """Add ``[gpa, gpa+size)``.  :raises InvalidParameter: already deposited."""
        ...

    def withdraw(self, gpa: int, size: int) -> None:
        """Remove it again.  :raises InvalidParameter: not deposited.  :raises Busy: in use."""
        ...


class CoreStatistics(NamedTuple):
    """Counters of the core protocol."""

    pvalidated_pages: int
    rescinded_pages: int
    vcpus_created: int
    vcpus_deleted: int
    cas_remapped: int
    deposited_pages: int
    withdrawn_pages: int


class CoreProtocol:
    """Handler for protocol 0.

    .. versionadded:: 0.1

    :param memory: the checked guest-memory accessor.
    :param cpu_ops: the instructions (PVALIDATE, RMPADJUST, ...).
    :param registry: guest VMSA/CAA pairs.
    :param guest_vmpl: the VMPL the guest OS runs at (1-3).
    :param apic_to_cpu: APIC ID -> vCPU index, or None for an unknown APIC ID.
    :param attach: ``attach(cpu, vmsa_gpa, caa_gpa)`` points vCPU ``cpu`` at a guest VMSA/CAA;
        ``attach(cpu, None, None)`` detaches it.
    :param current: vCPU index -> (VMSA GPA, CAA GPA) it serves now, or None.
    :param protocol_versions: protocol -> (min, max) or None, for QUERY_PROTOCOL.
    :param deposit_pool: where DEPOSIT_MEM puts pages (None: DEPOSIT/WITHDRAW unsupported).
    :param pvalidate_lock: ``PVALIDATE_LOCK``; created if not given.
    :param free_svsm_vmsa: takes back a VMSA page the SVSM allocated itself (the boot VMSA)
        when DELETE_VCPU removes it; such a page never goes to the guest.
    """

    def __init__(
        self,
        memory: GuestMemory,
        cpu_ops: CpuOps,
        registry: VcpuRegistry,
        guest_vmpl: int,
        apic_to_cpu: Callable[[int], int | None],
        attach: Callable[[int, int | None, int | None], None],
        current: Callable[[int], tuple[int, int] | None],
        protocol_versions: Callable[[int], tuple[int, int] | None],
        deposit_pool: DepositPool | None = None,
        pvalidate_lock: RWLock[None] | None = None,
        free_svsm_vmsa: Callable[[int], None] | None = None,
    ) -> None:
        if not 1 <= guest_vmpl <= 3:
            raise ValueError("guest VMPL must be 1..3")
        self._mem = memory
        self._ops = cpu_ops
        self.registry = registry
        self.guest_vmpl = guest_vmpl
        self._apic_to_cpu = apic_to_cpu
        self._attach = attach
        self._current = current
        self._versions = protocol_versions
        self._pool = deposit_pool
        self._free_svsm_vmsa = free_svsm_vmsa
        self.pvalidate_lock: RWLock[None] = pvalidate_lock or RWLock(None, name="PVALIDATE_LOCK")
        self._stats_lock = threading.Lock()
        self._counts = dict.fromkeys(CoreStatistics._fields, 0)
        self._calls: dict[int, Callable[[RequestParams], None]] = {
            SVSM_REQ_CORE_REMAP_CA: self._remap_ca,
            SVSM_REQ_CORE_PVALIDATE: self._pvalidate,
            SVSM_REQ_CORE_CREATE_VCPU: self._create_vcpu,
            SVSM_REQ_CORE_DELETE_VCPU: self._delete_vcpu,
            SVSM_REQ_CORE_DEPOSIT_MEM: self._deposit_mem,
            SVSM_REQ_CORE_WITHDRAW_MEM: self._withdraw_mem,
            SVSM_REQ_CORE_QUERY_PROTOCOL: self._query_protocol,
            SVSM_REQ_CORE_CONFIGURE_VTOM: self._configure_vtom,
        }

    def __call__(self, params: RequestParams) -> None:
        """Serve one core call.  :raises UnsupportedCall: unknown call number."""
        fn = self._calls.get(params.call)
        if fn is None:
            raise UnsupportedCall(f"core call {params.call}")
        fn(params)

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._counts[name] += n

    def statistics(self) -> CoreStatistics:
        """Snapshot of the counters."""
        with self._stats_lock:
            return CoreStatistics(**self._counts)

    # -- helpers ---------------------------------------------------------------------------------
    def _fault(self, exc: BaseException, what: str, gpa: int) -> InvalidAddress:
        log.warning("fixup: %s at %#x faulted: %s", what, gpa, exc, exc_info=exc)
        return InvalidAddress(f"{what} at {gpa:#x} faulted")

    def _rmpadjust(self, cpu: int, gpa: int, huge: bool, vmpl: int, perms: int, vmsa: bool = False) -> None:
        try:
            rc = self._ops.rmpadjust(cpu, gpa, huge, vmpl, perms, vmsa)
        except self._mem._faults as exc:
            raise self._fault(exc, "RMPADJUST", gpa) from exc
        if rc:
            raise ProtocolError(rc, f"RMPADJUST {gpa:#x} vmpl {vmpl} failed with {rc}")

    def _revoke_guest(self, cpu: int, gpa: int, huge: bool) -> None:
        for vmpl in range(self.guest_vmpl, 4):
            self._rmpadjust(cpu, gpa, huge, vmpl, 0)

    def _grant_guest(self, cpu: int, gpa: int, huge: bool) -> None:
        self._rmpadjust(cpu, gpa, huge, self.guest_vmpl, PERMS_RWX)

    def _zero(self, cpu: int, gpa: int, size: int) -> None:
        try:
            self._ops.zero(cpu, gpa, size)
        except self._mem._faults as exc:
            raise self._fault(exc, "zeroing", gpa) from exc

    def _page_list(self, params: RequestParams) -> tuple[PageList, list[int]]:
        gpa = params.rcx
        if gpa % 8:
            raise InvalidParameter("page list not 8-byte aligned")
        hdr = PageList.from_bytes(self._mem.read(params.cpu, gpa, 8), gpa)
        raw = self._mem.read(params.cpu, gpa + 8, hdr.entries * PVALIDATE_ENTRY_SIZE)
        return hdr, list(struct.unpack(f"<{hdr.entries}Q", raw))

    def _walk(self, params: RequestParams, one: Callable[[int, int], None]) -> None:
        """Process entries ``next..entries-1``, writing the header back whatever happens."""
        hdr, entries = self._page_list(params)
        nxt = hdr.next
        try:
            while nxt < hdr.entries:
                one(params.cpu, entries[nxt])
                nxt += 1
        finally:
            self._mem.write(params.cpu, params.rcx, PageList(hdr.entries, nxt).header_bytes())

    # -- calls -----------------------------------------------------------------------------------
    def _remap_ca(self, params: RequestParams) -> None:
        gpa = params.rcx
        if gpa % PAGE_SIZE:
            raise InvalidParameter("new CAA not page-aligned")
        with self.pvalidate_lock.write():
            cur = self._current(params.cpu)
            if cur is None:
                raise FatalError(f"REMAP_CA on CPU {params.cpu} without a guest VMSA")
            vmsa_gpa, caa_gpa = cur
            if gpa == caa_gpa:
                return
            # Deviation from upstream's order: check before zeroing, so a CAA aimed at a VMSA
            # never makes the SVSM write into that VMSA.
            self._mem.check(gpa, CA_HEADER_SIZE)
            self.registry.remap_caa(vmsa_gpa, gpa)
            try:
                self._mem.write(params.cpu, gpa, bytes(CA_HEADER_SIZE), allow_registered=True)
            except InvalidAddress:
                self.registry.remap_caa(vmsa_gpa, caa_gpa)
                raise
            self._attach(params.cpu, vmsa_gpa, gpa)
        self._count("cas_remapped")

    def _pvalidate(self, params: RequestParams) -> None:
        with self.pvalidate_lock.read():
            # no VMSA/CAA can be registered or moved while we hold the lock: look them up once
            protected = self.registry.protected_ranges()
            self._walk(params, lambda cpu, raw: self._pvalidate_one(cpu, raw, protected))

    def _pvalidate_one(self, cpu: int, raw: int, protected: Sequence[tuple[int, int]] | None = None) -> None:
        e = PvalidateEntry.from_raw(raw)
        if not self._mem.valid_region(e.gpa, e.size, protected):
            raise InvalidAddress(f"PVALIDATE of {e.gpa:#x} outside guest memory or on a VMSA/CAA")
        if not e.validate:
            # Rescind: the guest loses access first, then the page is invalidated (upstream order).
            self._revoke_guest(cpu, e.gpa, e.huge)
        try:
            rc, unchanged = self._ops.pvalidate(cpu, e.gpa, e.huge, e.validate)
        except self._mem._faults as exc:
            raise self._fault(exc, "PVALIDATE", e.gpa) from exc
        if rc:
            raise ProtocolError(rc, f"PVALIDATE {e.gpa:#x} failed with {rc}")
        if unchanged and not e.ignore_cf:
            raise ProtocolError(FAIL_UNCHANGED, f"PVALIDATE {e.gpa:#x} changed nothing")
        if e.validate:
            self._zero(cpu, e.gpa, e.size)
            self._grant_guest(cpu, e.gpa, e.huge)
            self._count("pvalidated_pages", e.size // PAGE_SIZE)
        else:
            self._ops.flush_tlb()
            self._count("rescinded_pages", e.size // PAGE_SIZE)

    def _create_vcpu(self, params: RequestParams) -> None:
        vmsa_gpa, caa_gpa, apic_id = params.rcx, params.rdx, params.r8 & 0xFFFF_FFFF
        if vmsa_gpa % PAGE_SIZE or caa_gpa % PAGE_SIZE or vmsa_gpa == caa_gpa:
            raise InvalidAddress("VMSA/CAA misaligned or the same page")
        if not self._mem.valid_region(vmsa_gpa, PAGE_SIZE) or not self._mem.valid_region(caa_gpa, CA_HEADER_SIZE):
            raise InvalidAddress("VMSA or CAA is not a valid guest region")
        target = self._apic_to_cpu(apic_id)
        if target is None:
            raise InvalidParameter(f"unknown APIC ID {apic_id}")
        cpu = params.cpu
        with self.pvalidate_lock.write():
            # Again under the lock: a DEPOSIT_MEM may have made either page the SVSM's meanwhile.
            if not self._mem.in_guest_map(vmsa_gpa, PAGE_SIZE) or not self._mem.in_guest_map(caa_gpa, CA_HEADER_SIZE):
                raise InvalidAddress("VMSA or CAA stopped being guest memory")
            self.registry.register(vmsa_gpa, caa_gpa, target, guest_owned=True)
            try:
                self._revoke_guest(cpu, vmsa_gpa, False)
            except BaseException:
                self.registry.unregister(vmsa_gpa, require_in_use=False)
                raise
            try:
                try:
                    vmsa = self._ops.read_vmsa(cpu, vmsa_gpa)
                except self._mem._faults as exc:
                    raise self._fault(exc, "VMSA read", vmsa_gpa) from exc
                if vmsa.vmpl != self.guest_vmpl:
                    raise InvalidParameter(f"VMSA VMPL {vmsa.vmpl} is not the guest VMPL")
                if not vmsa.efer & EFER_SVME:
                    raise InvalidParameter("VMSA EFER.SVME clear")
                if vmsa.sev_features != params.sev_features:
                    raise InvalidParameter("VMSA SEV_FEATURES differ from the caller's")
                self._rmpadjust(cpu, vmsa_gpa, False, self.guest_vmpl, 0, vmsa=True)
            except BaseException:
                # Roll back: the page goes back to the guest only once it is no VMSA.
                self._grant_guest(cpu, vmsa_gpa, False)
                self.registry.unregister(vmsa_gpa, require_in_use=False)
                raise
            self.registry.set_in_use(vmsa_gpa)
            self._attach(target, vmsa_gpa, caa_gpa)
        self._count("vcpus_created")

    def _delete_vcpu(self, params: RequestParams) -> None:
        vmsa_gpa = params.rcx
        if vmsa_gpa % PAGE_SIZE:
            raise InvalidParameter("VMSA not page-aligned")
        cpu = params.cpu
        with self.pvalidate_lock.write():
            rec = self.registry.get(vmsa_gpa)
            if rec is None or not rec.in_use:
                raise InvalidParameter("VMSA not registered or not in use")
            self._ops.clear_svme(cpu, vmsa_gpa)
            self._rmpadjust(cpu, vmsa_gpa, False, self.guest_vmpl, 0, vmsa=False)
            if rec.guest_owned:
                self._grant_guest(cpu, vmsa_gpa, False)
            elif self._free_svsm_vmsa is not None:
                self._free_svsm_vmsa(vmsa_gpa)  # an SVSM page: back to its allocator, never to the guest
            self._ops.flush_tlb()
            self.registry.unregister(vmsa_gpa, require_in_use=True)
            if self._current(rec.cpu) == (vmsa_gpa, rec.caa_gpa):
                self._attach(rec.cpu, None, None)
        self._count("vcpus_deleted")

    def _query_protocol(self, params: RequestParams) -> None:
        protocol, version = params.rcx >> 32, params.rcx & 0xFFFF_FFFF
        rng = self._versions(protocol)
        if rng is not None and rng[0] <= version <= rng[1]:
            params.rcx = (rng[1] << 32) | rng[0]
        else:
            params.rcx = 0

    def _configure_vtom(self, params: RequestParams) -> None:
        if not params.rcx & 1:
            raise InvalidRequest("vTOM is not supported")
        params.rcx = 0

    def _deposit_mem(self, params: RequestParams) -> None:
        if self._pool is None:
            raise UnsupportedCall("no deposit pool")
        # Write lock: the page changes owner, so no PVALIDATE may rescind it half-way.
        with self.pvalidate_lock.write():
            self._walk(params, self._deposit_one)

    def _deposit_one(self, cpu: int, raw: int) -> None:
        e = PageListEntry.from_raw(raw)
        if not self._mem.valid_region(e.gpa, e.size):
            raise InvalidAddress(f"DEPOSIT_MEM of {e.gpa:#x} outside guest memory")
        assert self._pool is not None
        self._revoke_guest(cpu, e.gpa, e.huge)
        try:
            self._pool.deposit(e.gpa, e.size)
        except BaseException:
            self._grant_guest(cpu, e.gpa, e.huge)
            raise
        self._count("deposited_pages", e.size // PAGE_SIZE)

    def _withdraw_mem(self, params: RequestParams) -> None:
        if self._pool is None:
            raise UnsupportedCall("no deposit pool")
        with self.pvalidate_lock.write():
            self._walk(params, self._withdraw_one)

    def _withdraw_one(self, cpu: int, raw: int) -> None:
        e = PageListEntry.from_raw(raw)
        assert self._pool is not None
        self._pool.withdraw(e.gpa, e.size)
        # Nothing the SVSM kept there may reach the guest.
        self._zero(cpu, e.gpa, e.size)
        self._grant_guest(cpu, e.gpa, e.huge)
        self._count("withdrawn_pages", e.size // PAGE_SIZE)

