"""Buddy page allocator over SVSM-owned physical pages (coconut-svsm.md 1.5).

Orders 0..MAX_ORDER-1 (COCONUT: 6 orders, 4 KiB .. 128 KiB).  Every owned page
has a packed u64 of metadata like COCONUT's ``PageInfo``:

======  =====================================================
bits    meaning
======  =====================================================
0-3     :class:`PageType` (tail pages of a block are COMPOUND)
4-7     order of the block (head page only; a tail finds it via its head,
        so a split or merge rewrites one word per level, not the whole block)
8-15    tag (slab class index for SLAB_PAGE)
16-47   reference count (FILE pages, COCONUT's ``PageRef``)
62      the page was lent by the guest (DEPOSIT_MEM)
======  =====================================================

Ranges are added at boot (the SVSM heap) or deposited later; free pages of a
deposited range can be withdrawn.  Buddies merge across range boundaries only
when both are owned and free, so blocks stay naturally aligned.

Every live allocation records its call site (switchable, ~1 us) so that a
double free, a foreign free or a leak report names the code that allocated it.
"""

from __future__ import annotations

import enum
import os
from collections import OrderedDict
from typing import NamedTuple

from svsm.kernel.sync import CallSite, SpinLock, capture_call_site

from ._constants import MAX_ORDER, PAGE_SHIFT, PAGE_SIZE
from ._errors import DoubleFree, ForeignFree, MemoryLeak, OutOfMemory, PagesInUse, RangeOverlap
from ._memory import PhysMemory

__all__ = [
    "PageType", "PageInfo", "PageAllocation", "PageAllocator", "PageAllocatorStatistics",
    "META_DEPOSITED",
]

_MM_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: How many freed blocks keep their sites, to explain a later double free.
FREED_HISTORY = 4096


class PageType(enum.IntEnum):
    """Per-page type, as COCONUT's ``PageType``."""

    FREE = 0
    ALLOCATED = 1
    SLAB_PAGE = 2
    COMPOUND = 3
    FILE = 4
    RESERVED = 15


_TYPE_MASK = 0xF
_ORDER_SHIFT = 4
_TAG_SHIFT = 8
_REF_SHIFT = 16
_REF_MASK = 0xFFFF_FFFF
META_DEPOSITED = 1 << 62


def _pack(ptype: int, order: int, tag: int = 0) -> int:
    return ptype | order << _ORDER_SHIFT | tag << _TAG_SHIFT


_TAIL = _pack(PageType.COMPOUND, 0)


class PageInfo(NamedTuple):
    """Decoded metadata of one page."""

    paddr: int
    type: PageType
    order: int
    tag: int
    deposited: bool
    refcount: int = 0  #: FILE pages only


class PageAllocation(NamedTuple):
    """A live block, as shown in leak reports."""

    paddr: int
    order: int
    type: PageType
    site: CallSite

    def __str__(self) -> str:
        return f"{self.type.name} order {self.order} at {self.paddr:#x}, allocated at:\n{self.site.format()}"


class PageAllocatorStatistics(NamedTuple):
    """Immutable snapshot of the buddy allocator."""

    total_pages: int
    free_pages: int
    used_pages: int
    deposited_pages: int
    free_blocks: tuple[int, ...]  #: free blocks per order
    used_blocks: tuple[int, ...]  #: live allocations per order
    allocations: int
    frees: int
    failures: int
    reserved_pages: int = 0


class PageAllocator:
    """The buddy allocator.

    :param memory: used to zero pages (:meth:`allocate_zeroed_pages`); may be None
        if nobody asks for zeroed pages.
    :param max_order: number of orders (default COCONUT's 6).
    :param track_call_sites: record the allocating call site of every block.
    """

    def __init__(self, memory: PhysMemory | None = None, *, max_order: int = MAX_ORDER,
                 track_call_sites: bool = True) -> None:
        self.memory = memory
        self.max_order = max_order
        self.track_call_sites = track_call_sites
        self._meta: dict[int, int] = {}
        self._free: list[dict[int, None]] = [{} for _ in range(max_order)]
        self._live: dict[int, PageAllocation] = {}
        self._freed: OrderedDict[int, tuple[CallSite, CallSite]] = OrderedDict()
        self._lock: SpinLock[None] = SpinLock(name="mm.page_alloc")
        self._allocs = self._frees = self._failures = 0

    # -- metadata helpers (lock held) --------------------------------------
    def _write_head(self, pfn: int, order: int, ptype: int, tag: int = 0) -> None:
        meta = self._meta
        meta[pfn] = meta[pfn] & META_DEPOSITED | _pack(ptype, order, tag)

    def _write_tail(self, pfn: int) -> None:
        meta = self._meta
        meta[pfn] = meta[pfn] & META_DEPOSITED | _TAIL

    def _head_of(self, pfn: int) -> int | None:
        meta = self._meta
        for o in range(self.max_order):
            h = pfn & ~((1 << o) - 1)
            m = meta.get(h)
            if m is not None and m & _TYPE_MASK != PageType.COMPOUND and (m >> _ORDER_SHIFT) & 0xF >= o:
                return h
        return None

    def _release_block(self, pfn: int, order: int) -> None:
        """Put a block on the free lists, merging with free buddies."""
        meta = self._meta
        while order < self.max_order - 1:
            buddy = pfn ^ (1 << order)
            if buddy not in self._free[order]:
                break
            m = meta.get(buddy)
            if m is None or m & _TYPE_MASK != PageType.FREE:
                break
            del self._free[order][buddy]
            if buddy < pfn:
                self._write_tail(pfn)
                pfn = buddy
            else:
                self._write_tail(buddy)
            order += 1
        self._write_head(pfn, order, PageType.FREE)
        self._free[order][pfn] = None

    def _insert_free_pages(self, start: int, end: int) -> None:
        """Free every page of [start, end) (metadata already present) as aligned blocks."""
        pfn = start
        while pfn < end:
            order = self.max_order - 1
            while pfn & ((1 << order) - 1) or pfn + (1 << order) > end:
                order -= 1
            self._release_block(pfn, order)
            pfn += 1 << order

    # -- ranges -------------------------------------------------------------
    def add_range(self, paddr: int, size: int, *, deposited: bool = False) -> None:
        """Hand the pages of [paddr, paddr+size) to the allocator, all free.

        :param deposited: the guest lent them (DEPOSIT_MEM); only such pages can be withdrawn.
        :raises RangeOverlap: misaligned, empty, or overlapping pages already owned.
        """
        start, end = self._range(paddr, size)
        with self._lock:
            meta = self._meta
            if any(p in meta for p in range(start, end)):
                raise RangeOverlap(f"range {paddr:#x}+{size:#x} overlaps owned memory")
            flag = (META_DEPOSITED if deposited else 0) | _TAIL
            for p in range(start, end):
                meta[p] = flag
            self._insert_free_pages(start, end)

    def deposit(self, paddr: int, size: int) -> None:
        """Add guest-lent pages (DEPOSIT_MEM); see :meth:`add_range`."""
        self.add_range(paddr, size, deposited=True)

    @staticmethod
    def _range(paddr: int, size: int) -> tuple[int, int]:
        if paddr & (PAGE_SIZE - 1) or size <= 0 or size & (PAGE_SIZE - 1) or paddr < 0:
            raise RangeOverlap(f"range {paddr:#x}+{size:#x} is not a page-aligned non-empty range")
        return paddr >> PAGE_SHIFT, (paddr + size) >> PAGE_SHIFT

    def _carve(self, start: int, end: int, *, deposited_only: bool) -> None:
        """Take the free pages [start, end) off the free lists (lock held).

        The free blocks overlapping the range are split; their parts outside it go
        back on the free lists.  Checks everything before changing anything.

        :raises PagesInUse: a page is not owned, not deposited (if required), or not free.
        """
        meta = self._meta
        blocks: dict[int, int] = {}
        for p in range(start, end):
            m = meta.get(p)
            if m is None or (deposited_only and not m & META_DEPOSITED):
                raise PagesInUse(f"page {p << PAGE_SHIFT:#x} was not deposited")
            head = self._head_of(p)
            if head is None or meta[head] & _TYPE_MASK != PageType.FREE:
                raise PagesInUse(f"page {p << PAGE_SHIFT:#x} is in use")
            blocks[head] = (meta[head] >> _ORDER_SHIFT) & 0xF
        outside: list[tuple[int, int]] = []
        for head, order in blocks.items():
            del self._free[order][head]
            bend = head + (1 << order)
            if head < start:
                outside.append((head, start))
            if bend > end:
                outside.append((end, bend))
        for p in range(start, end):
            meta[p] = meta[p] & META_DEPOSITED | _TAIL
            self._freed.pop(p, None)
        for a, b in outside:
            self._insert_free_pages(a, b)

    def withdraw(self, paddr: int, size: int) -> None:
        """Give back deposited pages (WITHDRAW_MEM); every page must be deposited and free.

        :raises RangeOverlap: the range is misaligned or empty.
        :raises PagesInUse: a page is not owned, not deposited, or in use; nothing changed.
        """
        start, end = self._range(paddr, size)
        with self._lock:
            self._carve(start, end, deposited_only=True)
            for p in range(start, end):
                del self._meta[p]

    def reserve(self, paddr: int, size: int) -> None:
        """Mark free owned pages RESERVED (never allocated, e.g. firmware-owned pages in the heap).

        :raises RangeOverlap: the range is misaligned or empty.
        :raises PagesInUse: a page is not owned or not free; nothing changed.
        """
        start, end = self._range(paddr, size)
        with self._lock:
            self._carve(start, end, deposited_only=False)
            for p in range(start, end):
                self._write_head(p, 0, PageType.RESERVED)

    def unreserve(self, paddr: int, size: int) -> None:
        """Make RESERVED pages free again.

        :raises PagesInUse: a page of the range is not RESERVED; nothing changed.
        """
        start, end = self._range(paddr, size)
        with self._lock:
            meta = self._meta
            for p in range(start, end):
                m = meta.get(p)
                if m is None or m & _TYPE_MASK != PageType.RESERVED:
                    raise PagesInUse(f"page {p << PAGE_SHIFT:#x} is not reserved")
            for p in range(start, end):
                meta[p] = meta[p] & META_DEPOSITED | _TAIL
            self._insert_free_pages(start, end)

    # -- allocation ---------------------------------------------------------
    def allocate_pages(self, order: int = 0, *, ptype: PageType = PageType.ALLOCATED, tag: int = 0) -> int:
        """Allocate a naturally aligned block of ``2**order`` pages.

        :param ptype: ALLOCATED (default), SLAB_PAGE (slab only) or FILE.
        :returns: the physical address of the block.
        :raises OutOfMemory: no block of that order or larger is free.
        """
        if not 0 <= order < self.max_order:
            raise OutOfMemory(f"order {order} outside 0..{self.max_order - 1}", order=order)
        site = capture_call_site(1, 4, _MM_DIR) if self.track_call_sites else CallSite()
        with self._lock:
            for o in range(order, self.max_order):
                if self._free[o]:
                    break
            else:
                self._failures += 1
                raise OutOfMemory(f"no free block of order {order}", order=order)
            pfn, _ = self._free[o].popitem()
            while o > order:
                o -= 1
                buddy = pfn + (1 << o)
                self._write_head(buddy, o, PageType.FREE)
                self._free[o][buddy] = None
            self._write_head(pfn, order, ptype, tag)
            paddr = pfn << PAGE_SHIFT
            self._live[pfn] = PageAllocation(paddr, order, ptype, site)
            for p in range(pfn, pfn + (1 << order)):
                self._freed.pop(p, None)
            self._allocs += 1
        return paddr

    def allocate_page(self) -> int:
        """One 4 KiB page."""
        return self.allocate_pages(0)

    def allocate_zeroed_pages(self, order: int = 0) -> int:
        """A block whose bytes are zero (needs ``memory``)."""
        paddr = self.allocate_pages(order)
        if self.memory is None:
            self.free_pages(paddr)
            raise OutOfMemory("zeroed pages need a memory to write to", order=order)
        self.memory.write(paddr, bytes(PAGE_SIZE << order))
        return paddr

    def allocate_zeroed_page(self) -> int:
        """One zeroed 4 KiB page."""
        return self.allocate_zeroed_pages(0)

    def free_pages(self, paddr: int, *, order: int | None = None, ptype: PageType = PageType.ALLOCATED) -> None:
        """Free a block returned by :meth:`allocate_pages`.

        :param order: if given, must match the block's order (catches a wrong-size free).
        :param ptype: the type the caller believes the block has.
        :raises DoubleFree: the block is already free.
        :raises ForeignFree: not the head of a live block of this allocator, or wrong order/type.
        """
        pfn = paddr >> PAGE_SHIFT
        with self._lock:
            rec = self._live.get(pfn)
            if rec is None or paddr & (PAGE_SIZE - 1):
                freed = self._freed.get(pfn)
                if freed is not None and not paddr & (PAGE_SIZE - 1):
                    raise DoubleFree(f"double free of {paddr:#x}", paddr=paddr,
                                     alloc_site=freed[0], free_site=freed[1])
                m = self._meta.get(pfn)
                what = "not owned" if m is None else f"a {PageType(m & _TYPE_MASK).name} page, not a live block"
                head = self._head_of(pfn) if m is not None else None
                site = self._live[head].site if head is not None and head in self._live else CallSite()
                raise ForeignFree(f"free of {paddr:#x}: {what}", paddr=paddr, alloc_site=site)
            if (order is not None and order != rec.order) or ptype != rec.type:
                raise ForeignFree(
                    f"free of {paddr:#x} as {ptype.name} order {order}, block is {rec.type.name} order {rec.order}",
                    paddr=paddr, alloc_site=rec.site)
            del self._live[pfn]
            self._release_block(pfn, rec.order)
            site = capture_call_site(1, 4, _MM_DIR) if self.track_call_sites else CallSite()
            self._freed[pfn] = (rec.site, site)
            if len(self._freed) > FREED_HISTORY:
                self._freed.popitem(last=False)
            self._frees += 1

    def allocate_file_page(self) -> int:
        """A zeroed, reference-counted page (count 1), as COCONUT's ``allocate_file_page``.

        Release it with :meth:`put_file_page`, never :meth:`free_pages`.
        """
        paddr = self.allocate_pages(0, ptype=PageType.FILE)
        if self.memory is not None:
            self.memory.write(paddr, bytes(PAGE_SIZE))
        with self._lock:
            pfn = paddr >> PAGE_SHIFT
            self._meta[pfn] |= 1 << _REF_SHIFT
        return paddr

    def _file_ref(self, paddr: int) -> tuple[int, int]:
        pfn = paddr >> PAGE_SHIFT
        rec = self._live.get(pfn)
        if rec is None or paddr & (PAGE_SIZE - 1) or rec.type != PageType.FILE:
            freed = self._freed.get(pfn)
            if freed is not None:
                raise DoubleFree(f"file page {paddr:#x} already released", paddr=paddr,
                                 alloc_site=freed[0], free_site=freed[1])
            raise ForeignFree(f"{paddr:#x} is not a live file page", paddr=paddr)
        return pfn, (self._meta[pfn] >> _REF_SHIFT) & _REF_MASK

    def get_file_page(self, paddr: int) -> int:
        """Take another reference (``PageRef::clone``).

        :returns: the new count.
        :raises ForeignFree: not a live file page.
        """
        with self._lock:
            pfn, refs = self._file_ref(paddr)
            if refs == _REF_MASK:
                raise ForeignFree(f"reference count of {paddr:#x} would overflow", paddr=paddr)
            self._meta[pfn] += 1 << _REF_SHIFT
            return refs + 1

    def put_file_page(self, paddr: int) -> int:
        """Drop a reference; the page is freed when the last one goes.

        :returns: the remaining count (0 = freed).
        :raises DoubleFree: the page was already released.
        :raises ForeignFree: not a file page.
        """
        with self._lock:
            pfn, refs = self._file_ref(paddr)
            if refs > 1:
                self._meta[pfn] -= 1 << _REF_SHIFT
                return refs - 1
            self._meta[pfn] &= ~(_REF_MASK << _REF_SHIFT)
        self.free_pages(paddr, order=0, ptype=PageType.FILE)
        return 0

    def free_page(self, paddr: int) -> None:
        """Free a single page (order 0)."""
        self.free_pages(paddr, order=0)

    # -- inspection ---------------------------------------------------------
    def owns(self, paddr: int) -> bool:
        """True if the page containing ``paddr`` belongs to the allocator."""
        return (paddr >> PAGE_SHIFT) in self._meta

    def owns_any(self, paddr: int, length: int) -> bool:
        """True if any page overlapping ``[paddr, paddr+length)`` belongs to the allocator."""
        if length <= 0:
            return False
        return not self._meta.keys().isdisjoint(range(paddr >> PAGE_SHIFT, ((paddr + length - 1) >> PAGE_SHIFT) + 1))

    def page_info(self, paddr: int) -> PageInfo | None:
        """Decoded metadata of the page containing ``paddr``, or None if not owned."""
        pfn = paddr >> PAGE_SHIFT
        m = self._meta.get(pfn)
        if m is None:
            return None
        order = (m >> _ORDER_SHIFT) & 0xF
        if m & _TYPE_MASK == PageType.COMPOUND:
            head = self._head_of(pfn)
            order = (self._meta[head] >> _ORDER_SHIFT) & 0xF if head is not None else 0
        return PageInfo(pfn << PAGE_SHIFT, PageType(m & _TYPE_MASK), order,
                        (m >> _TAG_SHIFT) & 0xFF, bool(m & META_DEPOSITED), (m >> _REF_SHIFT) & _REF_MASK)

    def raw_metadata(self, paddr: int) -> int | None:
        """The packed u64 of the page (layout in the module docstring)."""
        return self._meta.get(paddr >> PAGE_SHIFT)

    def leaks(self) -> list[PageAllocation]:
        """Live allocations, lowest address first."""
        with self._lock:
            return sorted(self._live.values())

    def check_leaks(self, *, ignore: set[int] | frozenset[int] = frozenset()) -> None:
        """Raise if anything is still allocated (call at shutdown).

        :param ignore: addresses allowed to stay (e.g. pages handed to the guest).
        :raises MemoryLeak: with one entry and call site per leaked block.
        """
        leaks = [a for a in self.leaks() if a.paddr not in ignore]
        if leaks:
            report = f"{len(leaks)} page block(s) leaked:\n" + "\n".join(map(str, leaks))
            raise MemoryLeak(report, leaks)

    def statistics(self) -> PageAllocatorStatistics:
        """Free/used pages and blocks per order."""
        with self._lock:
            free_blocks = tuple(len(f) for f in self._free)
            used = [0] * self.max_order
            for rec in self._live.values():
                used[rec.order] += 1
            free_pages = sum(n << o for o, n in enumerate(free_blocks))
            total = len(self._meta)
            deposited = reserved = 0
            for m in self._meta.values():
                deposited += bool(m & META_DEPOSITED)
                reserved += m & _TYPE_MASK == PageType.RESERVED
            return PageAllocatorStatistics(total, free_pages, total - free_pages, deposited, free_blocks,
                                           tuple(used), self._allocs, self._frees, self._failures, reserved)
