"""The one accessor protocol code uses to reach guest memory (upstream ``GuestPtr`` + fixups).

Every read or write a protocol does on a guest-supplied address goes through
:class:`GuestMemory`.  It checks ``valid_phys_region`` (coconut-svsm.md 1.7): the range lies in
the guest's memory map, outside the SVSM's own region, and overlaps no registered VMSA or CAA.
A hardware fault during the access (a #VC because the page is not validated, an NPF because the
RMP refuses it) is the exception-table fixup of upstream: it is logged and becomes
:class:`~svsm.sdk.InvalidAddress`, and the kernel carries on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from svsm.sdk import InvalidAddress

from ._vcpus import VcpuRegistry

__all__ = ["GuestMemory", "GuestMemoryStatistics", "PhysicalAccess", "RequestWindow"]

log = logging.getLogger("svsm.kernel.guestmem")


class PhysicalAccess(Protocol):
    """The SVSM's own (VMPL0, C=1) view of guest-physical memory on one vCPU.

    Raises a hardware fault (``svsm.kernel.hw`` ``HardwareFault``) when the RMP refuses.
    """

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...


class GuestMemoryStatistics(NamedTuple):
    """Accesses refused by the region checks and faults fixed up."""

    refused: int
    fixups: int


class GuestMemory:
    """Checked guest-memory access for protocol handlers.

    .. versionadded:: 0.1

    :param view_for: vCPU index -> that vCPU's VMPL0 physical view.
    :param regions: the guest memory map as (start, end) GPA ranges, end exclusive.
    :param svsm_region: (base, size) of the SVSM's private memory, never guest-reachable.
    :param registry: registered VMSAs/CAAs, excluded from guest buffers.
    :param fault_types: exception classes that count as hardware faults (fixed up).
    :param svsm_owned: ``svsm_owned(gpa, length)`` is True for guest pages lent to the SVSM
        (DEPOSIT_MEM); they are not guest memory until withdrawn.
    :param lock: the PVALIDATE_LOCK: every change of what is guest memory (CREATE_VCPU,
        REMAP_CA, DEPOSIT_MEM, ...) takes it for writing, so :meth:`read`/:meth:`write` hold it
        for reading from the check to the end of the access (unless the caller holds it already):
        a checked page cannot become a VMSA, a CAA or SVSM memory before the SVSM touched it.
    """

    def __init__(
        self,
        view_for: Callable[[int], PhysicalAccess],
        regions: Sequence[tuple[int, int]],
        svsm_region: tuple[int, int],
        registry: VcpuRegistry,
        fault_types: tuple[type[BaseException], ...],
        svsm_owned: Callable[[int, int], bool] | None = None,
        lock: Any = None,
    ) -> None:
        self._lock_rw = lock
        self._view_for = view_for
        self.regions = tuple(regions)
        self.svsm_region = svsm_region
        self._registry = registry
        self._faults = fault_types
        self.svsm_owned = svsm_owned
        self._lock = threading.Lock()
        self.fixups = 0
        self.refused = 0

    # -- checks -----------------------------------------------------------------------------------
    def in_guest_map(self, gpa: int, length: int = 1) -> bool:
        """True if ``[gpa, gpa+length)`` is inside one guest region and outside the SVSM region."""
        if length <= 0 or gpa < 0:
            return False
        base, size = self.svsm_region
        if gpa < base + size and base < gpa + length:
            return False
        for start, end in self.regions:
            if start <= gpa and gpa + length <= end:
                break
        else:
            return False
        return self.svsm_owned is None or not self.svsm_owned(gpa, length)

    def valid_region(self, gpa: int, length: int, protected: Sequence[tuple[int, int]] | None = None) -> bool:
        """``valid_phys_region``: in the guest map and not overlapping a registered VMSA/CAA.

        :param protected: the registry's :meth:`~VcpuRegistry.protected_ranges`, taken once by a
            caller that checks many ranges while the registry cannot change; default: ask it.
        """
        if not self.in_guest_map(gpa, length):
            return False
        if protected is None:
            return not self._registry.collides(gpa, length)
        return not any(gpa < s + n and s < gpa + length for s, n in protected)

    def check(self, gpa: int, length: int, *, allow_registered: bool = False) -> None:
        """:raises InvalidAddress: the range is not a valid guest buffer."""
        ok = self.in_guest_map(gpa, length) if allow_registered else self.valid_region(gpa, length)
        if not ok:
            with self._lock:
                self.refused += 1
            raise InvalidAddress(f"guest range {gpa:#x}+{length:#x} is not valid guest memory")

    # -- access ----------------------------------------------------------------------------------
    def _fixup(self, exc: BaseException, what: str, gpa: int) -> InvalidAddress:
        with self._lock:
            self.fixups += 1
        log.warning("fixup: %s at %#x faulted (%s); answering INVALID_ADDRESS", what, gpa, exc, exc_info=exc)
        return InvalidAddress(f"{what} at {gpa:#x} faulted")

    def read(self, cpu: int, gpa: int, length: int, *, allow_registered: bool = False) -> bytes:
        """Read guest memory as the SVSM on vCPU ``cpu``.

        :raises InvalidAddress: invalid range, or the hardware faulted (fixup).
        """
        rw = self._lock_rw
        if rw is not None and not rw.held_by_me():
            with rw.read():
                return self.read(cpu, gpa, length, allow_registered=allow_registered)
        self.check(gpa, length, allow_registered=allow_registered)
        try:
            return self._view_for(cpu).read(gpa, length)
        except self._faults as exc:
            raise self._fixup(exc, "read", gpa) from exc

    def write(self, cpu: int, gpa: int, data: bytes, *, allow_registered: bool = False) -> None:
        """Write guest memory as the SVSM on vCPU ``cpu``.

        :raises InvalidAddress: invalid range, or the hardware faulted (fixup).
        """
        rw = self._lock_rw
        if rw is not None and not rw.held_by_me():
            with rw.read():
                self.write(cpu, gpa, data, allow_registered=allow_registered)
                return
        self.check(gpa, len(data), allow_registered=allow_registered)
        try:
            self._view_for(cpu).write(gpa, data)
        except self._faults as exc:
            raise self._fixup(exc, "write", gpa) from exc

    def statistics(self) -> GuestMemoryStatistics:
        """Snapshot of the counters."""
        with self._lock:
            return GuestMemoryStatistics(self.refused, self.fixups)

    def window(self, cpu: int) -> RequestWindow:
        """A revocable window for one module request on vCPU ``cpu``."""
        return RequestWindow(self, cpu)


class RequestWindow:
    """:class:`~svsm.kernel.protocols.GuestMemoryWindow` for one request; dead after :meth:`revoke`."""

    __slots__ = ("_mem", "_cpu", "_live")

    def __init__(self, mem: GuestMemory, cpu: int) -> None:
        self._mem, self._cpu, self._live = mem, cpu, True

    def read(self, gpa: int, length: int) -> bytes:
        """Read guest memory.  :raises InvalidAddress: invalid range or revoked."""
        if not self._live:
            raise InvalidAddress("guest-memory window revoked")
        return self._mem.read(self._cpu, gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        """Write guest memory.  :raises InvalidAddress: invalid range or revoked."""
        if not self._live:
            raise InvalidAddress("guest-memory window revoked")
        self._mem.write(self._cpu, gpa, data)

    def revoke(self) -> None:
        """End the window (called by dispatch when the request is answered)."""
        self._live = False
