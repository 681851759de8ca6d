"""Per-CPU areas, per-CPU page tables and the per-CPU mapping window.

Each CPU gets (coconut-svsm.md 1.4): its own page table cloned from the boot
table (sharing the kernel half), and in its private PML4 slot 510:

=====================  =================================================
offset from 510 base   contents
=====================  =================================================
+0x0000                per-CPU data page (pysvsm layout: u32 cpu index, u32 APIC ID)
+0x1000                GHCB page, mapped without the C-bit (shared with the host)
+0x2000                guest calling area (mapped on request)
+0x4000                guest VMSA (mapped on request)
+2 MiB                 unmapped guard (32 KiB), then the 8-page stack
+1 GiB                 512 temporary 4 KiB slots, then 511 temporary 2 MiB slots
=====================  =================================================

The same virtual addresses name a different CPU's data on each CPU, and
temporary mappings exist only in the tables of the CPU that made them, so a
guard used on another CPU faults.  A thread says which CPU it runs as with
:meth:`PerCpuArea.activate`; :func:`this_cpu` returns it.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from typing import NamedTuple

from svsm.kernel.sync import SpinLock

from ._constants import (
    HUGE_PAGE_SIZE, PAGE_SIZE, PERCPU_TEMP_2M_SLOTS, PERCPU_TEMP_4K_SLOTS, STACK_PAGES, SVSM_PERCPU_BASE,
    SVSM_PERCPU_CAA_BASE, SVSM_PERCPU_STACKS_BASE, SVSM_PERCPU_TEMP_BASE_2M, SVSM_PERCPU_TEMP_BASE_4K,
    SVSM_PERCPU_VMSA_BASE,
)
from ._errors import PerCpuError
from ._memory import PhysMemory
from ._page_alloc import PageAllocator
from ._pagetable import DEFAULT_C_BIT, PageTable, PTEFlags

__all__ = [
    "PerCpuArea", "PerCpuAreas", "PerCpuStatistics", "PerCPUPageMappingGuard", "this_cpu", "current_cpu",
    "PERCPU_DATA_VADDR", "PERCPU_GHCB_VADDR", "PERCPU_STACK_BOTTOM", "PERCPU_STACK_TOP",
]

PERCPU_DATA_VADDR = SVSM_PERCPU_BASE
PERCPU_GHCB_VADDR = SVSM_PERCPU_BASE + 0x1000
STACK_SIZE = STACK_PAGES * PAGE_SIZE
PERCPU_STACK_BOTTOM = SVSM_PERCPU_STACKS_BASE + STACK_SIZE  # guard below
PERCPU_STACK_TOP = PERCPU_STACK_BOTTOM + STACK_SIZE

#: pysvsm's own per-CPU data page header (not a hardware layout).
_HEADER = struct.Struct("<II")

_current = threading.local()


def current_cpu() -> PerCpuArea | None:
    """The CPU the calling thread runs as, or None."""
    return getattr(_current, "cpu", None)


class _Activation:
    """The ``with`` block of :meth:`PerCpuArea.activate` (a plain class: it runs on every SVSM call)."""

    __slots__ = ("area", "prev")

    def __init__(self, area: PerCpuArea) -> None:
        self.area = area
        self.prev: PerCpuArea | None = None

    def __enter__(self) -> PerCpuArea:
        self.prev = getattr(_current, "cpu", None)
        _current.cpu = self.area
        return self.area

    def __exit__(self, *exc: object) -> None:
        _current.cpu = self.prev


def this_cpu() -> PerCpuArea:
    """The CPU the calling thread runs as.

    :raises PerCpuError: no CPU is active on this thread (a kernel bug).
    """
    cpu = getattr(_current, "cpu", None)
    if cpu is None:
        raise PerCpuError("no per-CPU area is active on this thread")
    return cpu


class PerCpuStatistics(NamedTuple):
    """Immutable snapshot of one CPU's area."""

    cpu_index: int
    apic_id: int
    mappings_active: int
    mappings_total: int
    free_4k_slots: int
    free_2m_slots: int


class PerCPUPageMappingGuard:
    """A temporary mapping of guest physical memory in one CPU's window.

    Accesses go through the page tables of the CPU active on the calling thread
    (the creator's if none), exactly like a pointer dereference: on another CPU
    the window slot is not mapped and the access faults.
    """

    __slots__ = ("cpu", "vaddr", "paddr", "size", "huge", "_slots", "_live")

    def __init__(self, cpu: PerCpuArea, vaddr: int, paddr: int, size: int, huge: bool, slots: list[int]) -> None:
        self.cpu = cpu
        self.vaddr = vaddr
        self.paddr = paddr
        self.size = size
        self.huge = huge
        self._slots = slots
        self._live = True

    def _table(self) -> PageTable:
        if not self._live:
            raise PerCpuError(f"mapping of {self.paddr:#x} used after release")
        return (current_cpu() or self.cpu).page_table

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise PerCpuError(f"access {offset:#x}+{length:#x} outside the {self.size:#x}-byte mapping")

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` into the mapping.

        :raises PageFault: used on a CPU where it is not mapped.
        """
        self._check(offset, length)
        return self._table().read(self.vaddr + offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` into the mapping.

        :raises PageFault: read-only mapping, or used on another CPU.
        """
        self._check(offset, len(data))
        self._table().write(self.vaddr + offset, data)

    def release(self) -> None:
        """Unmap and free the window slots.

        :raises PerCpuError: released twice.
        """
        if not self._live:
            raise PerCpuError(f"mapping of {self.paddr:#x} released twice")
        self._live = False
        self.cpu._unmap_window(self)

    def __enter__(self) -> PerCPUPageMappingGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self.release()


class PerCpuArea:
    """One CPU's private pages, page table and mapping window.

    Made by :meth:`PerCpuAreas.create`; pages come from the buddy allocator.
    The GHCB page is mapped without the C-bit; the caller (boot) must also make
    it shared in the RMP with a page state change before the host can use it.
    """

    def __init__(self, cpu_index: int, apic_id: int, boot_table: PageTable, allocator: PageAllocator) -> None:
        self.cpu_index = cpu_index
        self.apic_id = apic_id
        self.allocator = allocator
        self.memory = boot_table.memory
        self.page_table = boot_table.clone_for_cpu()
        pt = self.page_table
        self.data_page = allocator.allocate_zeroed_page()
        pt.map_4k(PERCPU_DATA_VADDR, self.data_page)
        self.memory.write(self.data_page, _HEADER.pack(cpu_index, apic_id))
        self.ghcb_page = allocator.allocate_zeroed_page()
        pt.map_4k(PERCPU_GHCB_VADDR, self.ghcb_page, encrypted=False)
        order = (STACK_PAGES - 1).bit_length()
        self.stack = allocator.allocate_pages(order)
        pt.map_range(PERCPU_STACK_BOTTOM, self.stack, STACK_SIZE)
        self._lock: SpinLock[None] = SpinLock(name="mm.percpu.window")
        self._free_4k = [True] * PERCPU_TEMP_4K_SLOTS
        self._free_2m = [True] * PERCPU_TEMP_2M_SLOTS
        self._active: set[PerCPUPageMappingGuard] = set()
        self._total = 0
        self.caa_paddr: int | None = None
        self.vmsa_paddr: int | None = None

    # -- current CPU --------------------------------------------------------
    def activate(self) -> _Activation:
        """Run the calling thread as this CPU for the ``with`` body (nests; restores the previous)."""
        return _Activation(self)

    # -- temporary window ---------------------------------------------------
    def map_guest(self, paddr: int, size: int = PAGE_SIZE, *, huge: bool = False, writable: bool = True,
                  encrypted: bool = True) -> PerCPUPageMappingGuard:
        """Map physical memory [paddr, paddr+size) into this CPU's window.

        :param huge: use 2 MiB slots (``paddr`` and ``size`` 2 MiB aligned), else 4 KiB slots.
        :param encrypted: C-bit set (private page); False for a shared page.
        :returns: a guard; unmapped when released or when its ``with`` block ends.
        :raises PerCpuError: misaligned, empty, or no run of free slots long enough.
        """
        unit = HUGE_PAGE_SIZE if huge else PAGE_SIZE
        if size <= 0 or paddr % unit or size % unit:
            raise PerCpuError(f"cannot map {paddr:#x}+{size:#x} with {unit:#x}-byte slots")
        n = size // unit
        slots_free = self._free_2m if huge else self._free_4k
        base = SVSM_PERCPU_TEMP_BASE_2M if huge else SVSM_PERCPU_TEMP_BASE_4K
        flags = PTEFlags.NX | (PTEFlags.WRITABLE if writable else PTEFlags(0))
        with self._lock:
            first = self._find_run(slots_free, n)
            slots = list(range(first, first + n))
            for s in slots:
                slots_free[s] = False
            vaddr = base + first * unit
            mapper = self.page_table.map_2m if huge else self.page_table.map_4k
            done = 0
            try:
                for i in range(n):
                    mapper(vaddr + i * unit, paddr + i * unit, flags, encrypted=encrypted)
                    done += 1
            except BaseException:
                for i in range(done):  # roll back: nothing stays mapped, the slots are free again
                    self.page_table.unmap(vaddr + i * unit)
                for sl in slots:
                    slots_free[sl] = True
                raise
            guard = PerCPUPageMappingGuard(self, vaddr, paddr, size, huge, slots)
            self._active.add(guard)
            self._total += 1
        return guard

    @staticmethod
    def _find_run(free: list[bool], n: int) -> int:
        run = 0
        for i, f in enumerate(free):
            run = run + 1 if f else 0
            if run == n:
                return i - n + 1
        raise PerCpuError(f"no {n} free consecutive mapping slots")

    def _unmap_window(self, guard: PerCPUPageMappingGuard) -> None:
        unit = HUGE_PAGE_SIZE if guard.huge else PAGE_SIZE
        slots_free = self._free_2m if guard.huge else self._free_4k
        with self._lock:
            for i, s in enumerate(guard._slots):
                self.page_table.unmap(guard.vaddr + i * unit)
                slots_free[s] = True
            self._active.discard(guard)

    # -- guest CAA / VMSA ---------------------------------------------------
    def map_caa(self, paddr: int) -> int:
        """Map the guest calling area page at +0x2000 (replacing a previous one).

        :returns: the virtual address of the byte at ``paddr``.
        """
        page = paddr & ~(PAGE_SIZE - 1)
        with self._lock:
            if self.caa_paddr is not None:
                self.page_table.unmap(SVSM_PERCPU_CAA_BASE)
            self.page_table.map_4k(SVSM_PERCPU_CAA_BASE, page)
            self.caa_paddr = page
        return SVSM_PERCPU_CAA_BASE + (paddr - page)

    def map_vmsa(self, paddr: int) -> int:
        """Map the guest VMSA page at +0x4000 (replacing a previous one)."""
        if paddr % PAGE_SIZE:
            raise PerCpuError(f"VMSA {paddr:#x} not page aligned")
        with self._lock:
            if self.vmsa_paddr is not None:
                self.page_table.unmap(SVSM_PERCPU_VMSA_BASE)
            self.page_table.map_4k(SVSM_PERCPU_VMSA_BASE, paddr)
            self.vmsa_paddr = paddr
        return SVSM_PERCPU_VMSA_BASE

    def unmap_guest_context(self) -> None:
        """Unmap the guest CAA and VMSA (DELETE_VCPU, shutdown)."""
        with self._lock:
            if self.caa_paddr is not None:
                self.page_table.unmap(SVSM_PERCPU_CAA_BASE)
                self.caa_paddr = None
            if self.vmsa_paddr is not None:
                self.page_table.unmap(SVSM_PERCPU_VMSA_BASE)
                self.vmsa_paddr = None

    # -- access and teardown ------------------------------------------------
    def read(self, vaddr: int, length: int) -> bytes:
        """Supervisor read of virtual memory through this CPU's tables."""
        return self.page_table.read(vaddr, length)

    def write(self, vaddr: int, data: bytes) -> None:
        """Supervisor write of virtual memory through this CPU's tables."""
        self.page_table.write(vaddr, data)

    def free(self) -> None:
        """Return every page of the area and its table to the allocator.

        :raises PerCpuError: temporary mappings are still live (a leak).
        """
        with self._lock:
            if self._active:
                raise PerCpuError(f"CPU {self.cpu_index}: {len(self._active)} window mapping(s) still live")
        self.unmap_guest_context()
        self.allocator.free_page(self.data_page)
        self.allocator.free_page(self.ghcb_page)
        self.allocator.free_pages(self.stack)
        self.page_table.free()

    def statistics(self) -> PerCpuStatistics:
        """Mapping-window usage."""
        with self._lock:
            return PerCpuStatistics(self.cpu_index, self.apic_id, len(self._active), self._total,
                                    sum(self._free_4k), sum(self._free_2m))


class PerCpuAreas:
    """The boot page table and every CPU's area.

    :param memory: physical memory holding the tables.
    :param allocator: page source for tables and areas.
    :param c_bit: C-bit position from CPUID Fn8000_001F EBX[5:0].
    """

    def __init__(self, memory: PhysMemory, allocator: PageAllocator, *, c_bit: int | None = DEFAULT_C_BIT) -> None:
        self.boot_table = PageTable(memory, allocator, c_bit=c_bit)
        self.allocator = allocator
        self._areas: dict[int, PerCpuArea] = {}
        self._lock: SpinLock[None] = SpinLock(name="mm.percpu.registry")

    def create(self, cpu_index: int, apic_id: int | None = None) -> PerCpuArea:
        """Allocate and map CPU ``cpu_index``'s area (APIC ID defaults to the index).

        :raises PerCpuError: that CPU already has an area.
        """
        with self._lock:
            if cpu_index in self._areas:
                raise PerCpuError(f"CPU {cpu_index} already has a per-CPU area")
            area = PerCpuArea(cpu_index, cpu_index if apic_id is None else apic_id, self.boot_table,
                              self.allocator)
            self._areas[cpu_index] = area
            return area

    def get(self, cpu_index: int) -> PerCpuArea:
        """CPU ``cpu_index``'s area.

        :raises PerCpuError: no such CPU.
        """
        area = self._areas.get(cpu_index)
        if area is None:
            raise PerCpuError(f"no per-CPU area for CPU {cpu_index}")
        return area

    def by_apic_id(self, apic_id: int) -> PerCpuArea | None:
        """The area whose APIC ID is ``apic_id``, or None."""
        return next((a for a in self._areas.values() if a.apic_id == apic_id), None)

    def __iter__(self) -> Iterator[PerCpuArea]:
        return iter(list(self._areas.values()))

    def __len__(self) -> int:
        return len(self._areas)

    def shutdown(self) -> None:
        """Free every area and the boot table (after all CPUs stopped)."""
        with self._lock:
            areas, self._areas = list(self._areas.values()), {}
        for area in areas:
            area.free()
        self.boot_table.free()
        self.boot_table.free_shared()

    def statistics(self) -> tuple[PerCpuStatistics, ...]:
        """One snapshot per CPU, by index."""
        return tuple(self._areas[i].statistics() for i in sorted(self._areas))
