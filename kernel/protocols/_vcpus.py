"""The registry of guest VMSA/CAA pairs (upstream ``PERCPU_VMSAS``, coconut-svsm.md 1.11).

Every guest VMSA page and calling area the SVSM serves is recorded here with the vCPU using it.
A new VMSA (one page) or CAA (its first 8 bytes) that overlaps any registered VMSA or CAA is
refused, so the guest can never make the SVSM write a CAA header into a VMSA or point two vCPUs
at one page.  The registry itself is a plain object guarded by its own lock; callers that must
keep a check and an update atomic with PVALIDATE hold ``PVALIDATE_LOCK`` for write around them.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from svsm.kernel.sync import SpinLock

from svsm.sdk import InvalidAddress, InvalidParameter
from svsm.sdk.guest._abi import CA_HEADER_SIZE, PAGE_SIZE

__all__ = ["VcpuRegistry", "VmsaRecord", "RegistryStatistics"]


@dataclasses.dataclass(frozen=True, slots=True)
class VmsaRecord:
    """One registered guest vCPU: VMSA page, calling area, and the SVSM CPU serving it.

    :param guest_owned: the guest supplied the VMSA page (CREATE_VCPU); False for the boot
        VMSA the SVSM allocated itself.
    :param in_use: the vCPU may run (set once CREATE_VCPU finished all checks).
    """

    vmsa_gpa: int
    caa_gpa: int
    cpu: int
    guest_owned: bool
    in_use: bool = False


class RegistryStatistics(NamedTuple):
    """Registered and in-use records, plus refused registrations."""

    registered: int
    in_use: int
    refused_overlaps: int


def _overlaps(a: int, alen: int, b: int, blen: int) -> bool:
    return a < b + blen and b < a + alen


class VcpuRegistry:
    """Registered guest VMSA/CAA pairs, keyed by VMSA GPA.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._lock: SpinLock[None] = SpinLock(None, name="core.vmsa_registry")
        self._by_vmsa: dict[int, VmsaRecord] = {}
        self._refused = 0

    def _collides(self, gpa: int, length: int, skip_vmsa: int | None = None) -> bool:
        for rec in self._by_vmsa.values():
            if rec.vmsa_gpa == skip_vmsa:
                continue
            if _overlaps(gpa, length, rec.vmsa_gpa, PAGE_SIZE) or _overlaps(gpa, length, rec.caa_gpa, CA_HEADER_SIZE):
                return True
        return False

    def collides(self, gpa: int, length: int) -> bool:
        """True if ``[gpa, gpa+length)`` overlaps a registered VMSA page or CAA header."""
        with self._lock:
            return self._collides(gpa, length)

    def register(self, vmsa_gpa: int, caa_gpa: int, cpu: int, *, guest_owned: bool) -> VmsaRecord:
        """Record a new pair (not yet in use).

        :raises InvalidAddress: the VMSA page or the CAA header overlaps a registered one, or
            the two overlap each other.
        """
        with self._lock:
            if (
                _overlaps(vmsa_gpa, PAGE_SIZE, caa_gpa, CA_HEADER_SIZE)
                or self._collides(vmsa_gpa, PAGE_SIZE)
                or self._collides(caa_gpa, CA_HEADER_SIZE)
            ):
                self._refused += 1
                raise InvalidAddress("VMSA or CAA overlaps a registered VMSA/CAA")
            rec = VmsaRecord(vmsa_gpa, caa_gpa, cpu, guest_owned)
            self._by_vmsa[vmsa_gpa] = rec
            return rec

    def set_in_use(self, vmsa_gpa: int) -> VmsaRecord:
        """Mark a registered VMSA runnable.  :raises InvalidParameter: not registered."""
        with self._lock:
            rec = self._by_vmsa.get(vmsa_gpa)
            if rec is None:
                raise InvalidParameter("VMSA not registered")
            rec = self._by_vmsa[vmsa_gpa] = dataclasses.replace(rec, in_use=True)
            return rec

    def unregister(self, vmsa_gpa: int, *, require_in_use: bool) -> VmsaRecord:
        """Remove and return a record.

        :raises InvalidParameter: not registered, or not in use when ``require_in_use``.
        """
        with self._lock:
            rec = self._by_vmsa.get(vmsa_gpa)
            if rec is None or (require_in_use and not rec.in_use):
                raise InvalidParameter("VMSA not registered or not in use")
            del self._by_vmsa[vmsa_gpa]
            return rec

    def remap_caa(self, vmsa_gpa: int, new_caa: int) -> VmsaRecord:
        """Move a vCPU's CAA to ``new_caa`` (REMAP_CA).

        :raises InvalidAddress: the new CAA collides with another VMSA/CAA.
        :raises InvalidParameter: ``vmsa_gpa`` is not registered.
        """
        with self._lock:
            rec = self._by_vmsa.get(vmsa_gpa)
            if rec is None:
                raise InvalidParameter("calling vCPU has no registered VMSA")
            if new_caa == rec.caa_gpa:
                return rec
            if self._collides(new_caa, CA_HEADER_SIZE, skip_vmsa=vmsa_gpa) or _overlaps(
                new_caa, CA_HEADER_SIZE, rec.vmsa_gpa, PAGE_SIZE
            ):
                self._refused += 1
                raise InvalidAddress("new CAA overlaps a registered VMSA/CAA")
            rec = self._by_vmsa[vmsa_gpa] = dataclasses.replace(rec, caa_gpa=new_caa)
            return rec

    def get(self, vmsa_gpa: int) -> VmsaRecord | None:
        """The record for ``vmsa_gpa``, if registered."""
        with self._lock:
            return self._by_vmsa.get(vmsa_gpa)

    def records(self) -> tuple[VmsaRecord, ...]:
        """All records, sorted by VMSA GPA."""
        with self._lock:
            return tuple(sorted(self._by_vmsa.values(), key=lambda r: r.vmsa_gpa))

    def statistics(self) -> RegistryStatistics:
        """Counts of records and refusals."""
        with self._lock:
            recs = list(self._by_vmsa.values())
            return RegistryStatistics(len(recs), sum(r.in_use for r in recs), self._refused)
