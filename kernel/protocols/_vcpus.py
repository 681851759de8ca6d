"""The registry of guest VMSA/CAA pairs (upstream ``PERCPU_VMSAS``, coconut-svsm.md 1.11).

Every guest VMSA page and calling area the SVSM serves is recorded here with the vCPU using it.
A new VMSA (one page) or CAA (its first 8 bytes) that overlaps any registered VMSA or CAA is
refused, so the guest can never make the SVSM write a CAA header into a VMSA or point two vCPUs
at one page.  The registry itself is a plain object guarded by its own lock; callers that must
keep a check and an update atomic with PVALIDATE hold ``PVALIDATE_LOCK`` for write around them.

A record's whole lifecycle is the table :data:`TRANSITIONS` (house rule 1): registered by
CREATE_VCPU (or boot), in use once every check passed, gone after DELETE_VCPU or a rolled-back
CREATE_VCPU.  Anything else is refused with INVALID_PARAMETER.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

from svsm.kernel.sync import SpinLock
from svsm.sdk import InvalidAddress, InvalidParameter
from svsm.sdk.guest._abi import CA_HEADER_SIZE, PAGE_SIZE

__all__ = ["VcpuRegistry", "VmsaRecord", "RegistryStatistics", "VmsaState", "TRANSITIONS"]


class VmsaState(enum.Enum):
    """Where a registered VMSA is in its lifecycle (``None`` = not registered)."""

    REGISTERED = "registered"
    IN_USE = "in_use"


#: (state, event) -> next state; ``None`` is "not registered".  The only legal moves.
TRANSITIONS: dict[tuple[VmsaState | None, str], VmsaState | None] = {
    (None, "register"): VmsaState.REGISTERED,
    (VmsaState.REGISTERED, "activate"): VmsaState.IN_USE,
    (VmsaState.REGISTERED, "roll_back"): None,
    (VmsaState.IN_USE, "delete"): None,
    (VmsaState.IN_USE, "remap_caa"): VmsaState.IN_USE,
}


def _step(state: VmsaState | None, event: str) -> VmsaState | None:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidParameter(f"VMSA {event} not allowed when {state.value if state else 'unregistered'}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class VmsaRecord:
    """One registered guest vCPU: VMSA page, calling area, and the SVSM CPU serving it.

    :param guest_owned: the guest supplied the VMSA page (CREATE_VCPU); False for the boot
        VMSA the SVSM allocated itself.
    :param state: lifecycle state (:data:`TRANSITIONS`).
    """

    vmsa_gpa: int
    caa_gpa: int
    cpu: int
    guest_owned: bool
    state: VmsaState = VmsaState.REGISTERED

    @property
    def in_use(self) -> bool:
        """The vCPU may run (CREATE_VCPU finished all checks)."""
        return self.state is VmsaState.IN_USE


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

    def protected_ranges(self) -> tuple[tuple[int, int], ...]:
        """(start, length) of every registered VMSA page and CAA header, now.

        For a caller that checks many ranges while no registration can change (PVALIDATE holds
        the PVALIDATE_LOCK for reading; every change of the registry takes it for writing).
        """
        with self._lock:
            return tuple(r for rec in self._by_vmsa.values()
                         for r in ((rec.vmsa_gpa, PAGE_SIZE), (rec.caa_gpa, CA_HEADER_SIZE)))  # fmt: skip

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
            if vmsa_gpa in self._by_vmsa:  # unreachable after the overlap check; the table says so too
                _step(self._by_vmsa[vmsa_gpa].state, "register")
            rec = VmsaRecord(vmsa_gpa, caa_gpa, cpu, guest_owned, _step(None, "register"))  # type: ignore[arg-type]
            self._by_vmsa[vmsa_gpa] = rec
            return rec

    def set_in_use(self, vmsa_gpa: int) -> VmsaRecord:
        """Mark a registered VMSA runnable.  :raises InvalidParameter: not registered."""
        with self._lock:
            rec = self._by_vmsa.get(vmsa_gpa)
            state = _step(rec.state if rec else None, "activate")
            assert rec is not None
            rec = self._by_vmsa[vmsa_gpa] = dataclasses.replace(rec, state=state)  # type: ignore[arg-type]
            return rec

    def unregister(self, vmsa_gpa: int, *, require_in_use: bool) -> VmsaRecord:
        """Remove and return a record: ``delete`` (in use, DELETE_VCPU) or ``roll_back``
        (registered only, a failed CREATE_VCPU).

        :param require_in_use: True for DELETE_VCPU.
        :raises InvalidParameter: not registered, or the record is not in the state the event needs.
        """
        with self._lock:
            rec = self._by_vmsa.get(vmsa_gpa)
            _step(rec.state if rec else None, "delete" if require_in_use else "roll_back")
            del self._by_vmsa[vmsa_gpa]
            assert rec is not None
            return rec

    def remap_caa(self, vmsa_gpa: int, new_caa: int) -> VmsaRecord:
        """Move a vCPU's CAA to ``new_caa`` (REMAP_CA).

        :raises InvalidAddress: the new CAA collides with another VMSA/CAA.
        :raises InvalidParameter: ``vmsa_gpa`` is not registered.
        """
        with self._lock:
            rec = self._by_vmsa.get(vmsa_gpa)
            _step(rec.state if rec else None, "remap_caa")
            assert rec is not None
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
