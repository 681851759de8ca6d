"""x86-64 4-level page tables in simulated physical memory.

Entries are real x86 PTEs (Intel SDM vol. 3 4.5, AMD APM vol. 2 5.3) stored as
little-endian u64 in :class:`PhysMemory`: P, RW, US, PWT, PCD, A, D, PS (in PDPTE
and PDE), G, NX at bit 63, and the SEV C-bit at the position CPUID Fn8000_001F
EBX[5:0] reports (coconut-svsm.md 1.2, 1.4).  Table pages are private, so
non-leaf entries carry the C-bit too.

The walker follows the hardware rules with CR0.WP=1 and EFER.NXE=1: writes need
RW at every level (also for the supervisor), user accesses need US at every
level, NX at any level forbids fetches; SMEP/SMAP are optional.  A successful
walk sets A in every entry used and D in the leaf on a write.  A failure raises
:class:`PageFault` with the x86 error code (P W U RSVD I).

Per-CPU tables are clones that share the kernel half (PML4 256..511) with the
boot table except slot 510, which each CPU owns (coconut-svsm.md 1.4).  Slot 511
(global kernel space) is populated at creation so that every later kernel
mapping is visible in all clones; tables under other kernel slots are per-table.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from svsm.kernel.sync import SpinLock

from ._constants import (
    HUGE_PAGE_SIZE, PAGE_SIZE, PML4_SLOT_KERNEL, PML4_SLOT_PERCPU, PML4_SLOT_SELFMAP, PML4_SLOT_USER_END,
)
from ._errors import NonCanonicalAddress, PageFault, PageTableError
from ._memory import PhysMemory, read_u64, write_u64
from ._page_alloc import PageAllocator

__all__ = ["PTEFlags", "PageTable", "PageTableStatistics", "Translation", "DEFAULT_C_BIT", "is_canonical"]

#: C-bit position on EPYC 7xx3/9xx4 (CPUID Fn8000_001F EBX[5:0] = 51); pass the real one.
DEFAULT_C_BIT = 51
#: Physical address width of the entry format (bits 12..51 hold the frame).
MAX_PHYS_BITS = 52


class PTEFlags(enum.IntFlag):
    """Bits of an x86-64 paging-structure entry (the C-bit is separate: its position varies)."""

    PRESENT = 1 << 0
    WRITABLE = 1 << 1
    USER = 1 << 2
    WRITE_THROUGH = 1 << 3
    CACHE_DISABLE = 1 << 4
    ACCESSED = 1 << 5
    DIRTY = 1 << 6
    HUGE = 1 << 7  #: PS: the PDPTE/PDE maps a 1 GiB/2 MiB page
    GLOBAL = 1 << 8
    NX = 1 << 63


class Translation(NamedTuple):
    """Result of a page walk: where ``vaddr`` goes and what the mapping allows."""

    vaddr: int
    paddr: int
    page_size: int
    writable: bool
    user: bool
    executable: bool
    encrypted: bool  #: C-bit set in the leaf (private page)
    entries: tuple[int, ...]  #: raw entries PML4 first, leaf last


class PageTableStatistics(NamedTuple):
    """Table pages of one address space (immutable)."""

    own_pages: int  #: PML4, the per-CPU slot and user-half tables
    shared_pages: int  #: kernel-half tables shared with the other CPUs


_P = int(PTEFlags.PRESENT)
_RW = int(PTEFlags.WRITABLE)
_US = int(PTEFlags.USER)
_A = int(PTEFlags.ACCESSED)
_D = int(PTEFlags.DIRTY)
_PS = int(PTEFlags.HUGE)
_NX = int(PTEFlags.NX)


def is_canonical(vaddr: int) -> bool:
    """True if bits 63..47 of ``vaddr`` are all equal (48-bit linear addresses)."""
    top = vaddr >> 47
    return top == 0 or top == 0x1_FFFF


def _index(vaddr: int, level: int) -> int:
    return (vaddr >> (12 + 9 * (level - 1))) & 0x1FF


class _Shared:
    """State shared by a boot table and its per-CPU clones: the kernel half."""

    __slots__ = ("lock", "pages")

    def __init__(self) -> None:
        self.lock: SpinLock[None] = SpinLock(name="mm.pagetable.kernel")
        self.pages: set[int] = set()


class PageTable:
    """One address space (a CR3 value).

    :param memory: where the table pages live.
    :param allocator: supplies zeroed table pages.
    :param c_bit: C-bit position (CPUID Fn8000_001F EBX[5:0]); None for no encryption bit.
    :param phys_bits: physical address bits usable in entries; bits from here to 51 (but
        the C-bit) are reserved and fault with RSVD if set.
    """

    def __init__(self, memory: PhysMemory, allocator: PageAllocator, *, c_bit: int | None = DEFAULT_C_BIT,
                 phys_bits: int = MAX_PHYS_BITS, _shared: _Shared | None = None) -> None:
        if c_bit is not None and not 32 <= c_bit < MAX_PHYS_BITS:
            raise PageTableError(f"C-bit position {c_bit} outside 32..51")
        self.memory = memory
        self.allocator = allocator
        self.c_bit = c_bit
        self.c_mask = 0 if c_bit is None else 1 << c_bit
        self.phys_bits = phys_bits
        addr_bits = ((1 << MAX_PHYS_BITS) - 1) & ~(PAGE_SIZE - 1)
        self._addr_mask = addr_bits & ~self.c_mask & ((1 << phys_bits) - 1)
        self._rsvd_mask = addr_bits & ~self.c_mask & ~((1 << phys_bits) - 1)
        self._shared = _shared or _Shared()
        self._lock: SpinLock[None] = SpinLock(name="mm.pagetable.local")
        self._pages: set[int] = set()
        self.root = self._new_table(self._pages)
        # Slot 493 maps the PML4 onto itself, so every paging entry has a virtual address.
        write_u64(self.memory, self.root + 8 * PML4_SLOT_SELFMAP, self.root | _P | _RW | _NX | self.c_mask)
        if _shared is None:
            # Pre-populate the shared kernel slot so later clones see every kernel mapping.
            self._ensure_next(self.root, PML4_SLOT_KERNEL, user=False, owned=self._shared.pages)

    # -- construction -------------------------------------------------------
    def _new_table(self, owned: set[int]) -> int:
        paddr = self.allocator.allocate_zeroed_page()
        owned.add(paddr)
        return paddr

    def clone_for_cpu(self) -> PageTable:
        """A new table sharing this one's kernel half, with an empty per-CPU slot 510."""
        clone = PageTable(self.memory, self.allocator, c_bit=self.c_bit, phys_bits=self.phys_bits,
                          _shared=self._shared)
        with self._shared.lock:
            for slot in range(PML4_SLOT_USER_END, 512):
                if slot in (PML4_SLOT_PERCPU, PML4_SLOT_SELFMAP):
                    continue
                entry = read_u64(self.memory, self.root + 8 * slot)
                if entry:
                    write_u64(self.memory, clone.root + 8 * slot, entry)
        return clone

    def free(self) -> None:
        """Return the table pages this table owns (not the shared kernel half)."""
        with self._lock:
            for paddr in sorted(self._pages):
                self.allocator.free_page(paddr)
            self._pages.clear()

    def free_shared(self) -> None:
        """Return the shared kernel-half pages (boot table, at shutdown after all clones)."""
        with self._shared.lock:
            for paddr in sorted(self._shared.pages):
                self.allocator.free_page(paddr)
            self._shared.pages.clear()

    # -- entries ------------------------------------------------------------
    def _owner_of(self, vaddr: int) -> tuple[SpinLock[None], set[int]]:
        if _index(vaddr, 4) == PML4_SLOT_KERNEL:
            return self._shared.lock, self._shared.pages
        return self._lock, self._pages

    def _ensure_next(self, table: int, index: int, *, user: bool, owned: set[int]) -> int:
        slot = table + 8 * index
        entry = read_u64(self.memory, slot)
        if entry & _P:
            if entry & _PS:
                raise PageTableError(f"a large page already maps the range of entry {index} at {table:#x}")
            if user and not entry & _US:
                write_u64(self.memory, slot, entry | _US)
            return entry & self._addr_mask
        nxt = self._new_table(owned)
        flags = _P | _RW | (_US if user else 0)
        write_u64(self.memory, slot, nxt | int(flags) | self.c_mask)
        return nxt

    @staticmethod
    def selfmap_entry_vaddr(vaddr: int, level: int) -> int:
        """Virtual address, through the slot-493 self-map, of the level-``level`` entry for ``vaddr``.

        :param level: 1 = PTE, 2 = PDE, 3 = PDPTE, 4 = PML4E.
        """
        r = PML4_SLOT_SELFMAP
        va = 0
        for i in range(level):
            va |= r << (39 - 9 * i)
        va |= (vaddr >> (9 * level)) & ((1 << (48 - 9 * level)) - 1) & ~7 & ((1 << 48) - 1)
        return va | 0xFFFF_0000_0000_0000 if va >> 47 else va

    def make_entry(self, paddr: int, flags: PTEFlags, *, encrypted: bool = True, huge: bool = False) -> int:
        """The raw leaf entry for ``paddr`` (PRESENT is added; C-bit if ``encrypted``)."""
        e = paddr | int(flags | PTEFlags.PRESENT) | (self.c_mask if encrypted else 0)
        return e | int(PTEFlags.HUGE) if huge else e

    def _map(self, vaddr: int, paddr: int, flags: PTEFlags, encrypted: bool, level: int) -> None:
        size = PAGE_SIZE if level == 1 else HUGE_PAGE_SIZE
        if not is_canonical(vaddr):
            raise NonCanonicalAddress(vaddr)
        if vaddr % size or paddr % size or paddr & ~self._addr_mask & ~(size - 1) or paddr < 0:
            raise PageTableError(f"cannot map {vaddr:#x} -> {paddr:#x}: misaligned or beyond the address width")
        user = bool(flags & PTEFlags.USER)
        lock, owned = self._owner_of(vaddr)
        with lock:
            table = self.root
            for lvl in range(4, level, -1):
                table = self._ensure_next(table, _index(vaddr, lvl), user=user, owned=owned)
            slot = table + 8 * _index(vaddr, level)
            if read_u64(self.memory, slot) & _P:
                raise PageTableError(f"{vaddr:#x} is already mapped")
            write_u64(self.memory, slot, self.make_entry(paddr, flags, encrypted=encrypted, huge=level == 2))

    def map_4k(self, vaddr: int, paddr: int, flags: PTEFlags = PTEFlags.WRITABLE | PTEFlags.NX, *,
               encrypted: bool = True) -> None:
        """Map one 4 KiB page.

        :param flags: leaf permissions (PRESENT is implied).
        :param encrypted: set the C-bit (private page); False for shared pages (GHCB).
        :raises PageTableError: misaligned, already mapped, or inside a 2 MiB mapping.
        """
        self._map(vaddr, paddr, flags, encrypted, 1)

    def map_2m(self, vaddr: int, paddr: int, flags: PTEFlags = PTEFlags.WRITABLE | PTEFlags.NX, *,
               encrypted: bool = True) -> None:
        """Map one 2 MiB page (PS=1 in the PDE); both addresses 2 MiB aligned."""
        self._map(vaddr, paddr, flags, encrypted, 2)

    def map_range(self, vaddr: int, paddr: int, size: int, flags: PTEFlags = PTEFlags.WRITABLE | PTEFlags.NX,
                  *, encrypted: bool = True) -> None:
        """Map ``size`` bytes, with 2 MiB pages wherever both sides are aligned."""
        end = vaddr + size
        while vaddr < end:
            if not (vaddr | paddr) % HUGE_PAGE_SIZE and end - vaddr >= HUGE_PAGE_SIZE:
                self.map_2m(vaddr, paddr, flags, encrypted=encrypted)
                step = HUGE_PAGE_SIZE
            else:
                self.map_4k(vaddr, paddr, flags, encrypted=encrypted)
                step = PAGE_SIZE
            vaddr += step
            paddr += step

    def _leaf_slot(self, vaddr: int) -> tuple[int, int]:
        """(address of the leaf entry, level) or raise PageTableError if unmapped."""
        table = self.root
        for level in (4, 3, 2, 1):
            slot = table + 8 * _index(vaddr, level)
            entry = read_u64(self.memory, slot)
            if not entry & _P:
                raise PageTableError(f"{vaddr:#x} is not mapped")
            if level == 1 or entry & _PS:
                return slot, level
            table = entry & self._addr_mask
        raise PageTableError("unreachable")  # pragma: no cover

    def unmap(self, vaddr: int) -> int:
        """Remove the 4 KiB or 2 MiB mapping of ``vaddr`` (which must be its start).

        :returns: the size of the page unmapped.
        :raises PageTableError: nothing is mapped there, or ``vaddr`` is inside a large page.
        """
        if not is_canonical(vaddr):
            raise NonCanonicalAddress(vaddr)
        lock, _ = self._owner_of(vaddr)
        with lock:
            slot, level = self._leaf_slot(vaddr)
            size = PAGE_SIZE if level == 1 else HUGE_PAGE_SIZE << (9 * (level - 2))
            if vaddr % size:
                raise PageTableError(f"{vaddr:#x} is inside a {size:#x}-byte page")
            write_u64(self.memory, slot, 0)
            return size

    def leaf_entry(self, vaddr: int) -> int:
        """The raw leaf entry mapping ``vaddr``.

        :raises PageTableError: not mapped.
        """
        slot, _ = self._leaf_slot(vaddr)
        return read_u64(self.memory, slot)

    def set_leaf_flags(self, vaddr: int, set_flags: PTEFlags = PTEFlags(0),
                       clear_flags: PTEFlags = PTEFlags(0)) -> None:
        """Change permission bits of the existing mapping of ``vaddr`` (e.g. make it read-only)."""
        lock, _ = self._owner_of(vaddr)
        with lock:
            slot, _ = self._leaf_slot(vaddr)
            entry = read_u64(self.memory, slot)
            write_u64(self.memory, slot, (entry | int(set_flags)) & ~int(clear_flags) & (1 << 64) - 1)

    # -- the walker ---------------------------------------------------------
    def translate(self, vaddr: int, *, write: bool = False, user: bool = False, fetch: bool = False,
                  smep: bool = False, smap: bool = False) -> Translation:
        """Walk the tables as the CPU would for one access.

        :param write: a write access (needs RW everywhere; sets D).
        :param user: a CPL3 access (needs US everywhere).
        :param fetch: an instruction fetch (forbidden by NX, or by SMEP on user pages).
        :returns: the translation; A (and D) bits are updated in memory.
        :raises PageFault: not present, reserved bit, or permission violation.
        :raises NonCanonicalAddress: ``vaddr`` is not canonical (#GP).
        """
        if not is_canonical(vaddr):
            raise NonCanonicalAddress(vaddr)
        base_code = (PageFault.W if write else 0) | (PageFault.U if user else 0) | (PageFault.I if fetch else 0)
        mem = self.memory
        table = self.root
        writable = usr = True
        nx = False
        slots: list[int] = []
        entries: list[int] = []
        for level in (4, 3, 2, 1):
            slot = table + 8 * _index(vaddr, level)
            entry = read_u64(mem, slot)
            if not entry & _P:
                raise PageFault(vaddr, base_code)
            leaf = level == 1 or bool(entry & _PS)
            rsvd = entry & self._rsvd_mask
            if leaf and level > 1:
                # In a large-page entry, bit 12 is PAT; bits 13..(page shift-1) are reserved.
                rsvd |= entry & ((1 << (12 + 9 * (level - 1))) - 1) & ~((1 << 13) - 1)
            if level == 4 and entry & _PS:
                rsvd |= _PS
            if rsvd:
                raise PageFault(vaddr, base_code | PageFault.P | PageFault.RSVD)
            writable = writable and bool(entry & _RW)
            usr = usr and bool(entry & _US)
            nx = nx or bool(entry & _NX)
            slots.append(slot)
            entries.append(entry)
            if leaf:
                break
            table = entry & self._addr_mask
        if ((user and not usr) or (write and not writable) or (fetch and nx)
                or (not user and usr and ((fetch and smep) or (not fetch and smap)))):
            raise PageFault(vaddr, base_code | PageFault.P)
        for i, slot in enumerate(slots):
            want = entries[i] | _A
            if write and i == len(slots) - 1:
                want |= _D
            if want != entries[i]:
                write_u64(mem, slot, want)
                entries[i] = want
        size = PAGE_SIZE << (9 * (4 - len(slots)))
        leaf = entries[-1]
        base = leaf & self._addr_mask & ~(size - 1)
        return Translation(vaddr, base | vaddr & (size - 1), size, writable, usr, not nx,
                           bool(leaf & self.c_mask), tuple(entries))

    def read(self, vaddr: int, length: int, *, user: bool = False) -> bytes:
        """Read virtual memory through this table (a data read at CPL0 unless ``user``).

        :raises PageFault: some page of the range is not readable.
        """
        out = bytearray()
        while length > 0:
            t = self.translate(vaddr, user=user)
            n = min(length, t.page_size - (vaddr & (t.page_size - 1)))
            out += self.memory.read(t.paddr, n)
            vaddr += n
            length -= n
        return bytes(out)

    def write(self, vaddr: int, data: bytes, *, user: bool = False) -> None:
        """Write virtual memory through this table.

        Every page is translated before the first byte is stored, so a fault leaves
        memory unchanged.

        :raises PageFault: some page of the range is not writable.
        """
        chunks = []
        view = memoryview(bytes(data))
        while view:
            t = self.translate(vaddr, write=True, user=user)
            n = min(len(view), t.page_size - (vaddr & (t.page_size - 1)))
            chunks.append((t.paddr, view[:n]))
            vaddr += n
            view = view[n:]
        for paddr, chunk in chunks:
            self.memory.write(paddr, bytes(chunk))

    def walk(self, vaddr: int) -> Translation:
        """Translate a supervisor read without side effects on permissions (A is still set)."""
        return self.translate(vaddr)

    def statistics(self) -> PageTableStatistics:
        """Table pages owned by this table and shared with its clones."""
        return PageTableStatistics(len(self._pages), len(self._shared.pages))
