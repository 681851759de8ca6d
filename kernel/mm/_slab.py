"""Slab caches on top of the buddy allocator (COCONUT's ``SvsmAllocator``).

Classes of 32..2048 bytes, each behind its own SpinLock; a slab page is an
order-0 SLAB_PAGE block whose metadata tag names the class, so a free finds its
class from the page alone and a misaligned or wrong-class free is caught.
Larger requests go to the page allocator as whole blocks.  A class keeps at most
one empty page cached; further empty pages go back to the buddy allocator.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import NamedTuple

from svsm.kernel.sync import CallSite, SpinLock, capture_call_site

from ._constants import PAGE_SHIFT, PAGE_SIZE, SLAB_SIZES
from ._errors import DoubleFree, ForeignFree, MemoryLeak, OutOfMemory
from ._page_alloc import PageAllocator, PageType

__all__ = ["SlabAllocator", "SlabAllocation", "SlabClassStatistics", "SlabStatistics"]

_MM_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
FREED_HISTORY = 1024


def _capacity(size: int) -> int:
    """Bytes really reserved for an allocation of ``size``: its class, or its whole block."""
    for s in SLAB_SIZES:
        if size <= s:
            return s
    return PAGE_SIZE << max(0, (size - 1) >> PAGE_SHIFT).bit_length()


class SlabAllocation(NamedTuple):
    """A live object, as shown in leak reports."""

    paddr: int
    size: int  #: the class size (or the requested size for a large allocation)
    site: CallSite

    def __str__(self) -> str:
        return f"{self.size}-byte object at {self.paddr:#x}, allocated at:\n{self.site.format()}"


class SlabClassStatistics(NamedTuple):
    """One size class."""

    size: int
    pages: int
    used: int  #: live objects
    free: int  #: free object slots in the class's pages


class SlabStatistics(NamedTuple):
    """Immutable snapshot of the slab allocator."""

    classes: tuple[SlabClassStatistics, ...]
    large_allocations: int
    large_pages: int


class _SlabPage:
    __slots__ = ("paddr", "free", "used")

    def __init__(self, paddr: int, size: int) -> None:
        self.paddr = paddr
        self.free = list(range(PAGE_SIZE - size, -1, -size))  # pop() hands out offset 0 first
        self.used: dict[int, CallSite] = {}


class _SlabClass:
    __slots__ = ("size", "index", "lock", "pages", "partial", "freed")

    def __init__(self, size: int, index: int) -> None:
        self.size = size
        self.index = index
        self.lock: SpinLock[None] = SpinLock(name=f"mm.slab.{size}")
        self.pages: dict[int, _SlabPage] = {}
        self.partial: dict[int, None] = {}  # pfns with a free slot
        self.freed: OrderedDict[int, tuple[CallSite, CallSite]] = OrderedDict()


class SlabAllocator:
    """Byte-granular kernel heap.

    :param pages: the buddy allocator that supplies slab pages and large blocks.
    :param track_call_sites: record allocation sites (default: as ``pages``).
    """

    def __init__(self, pages: PageAllocator, *, track_call_sites: bool | None = None) -> None:
        self.pages = pages
        self.track_call_sites = pages.track_call_sites if track_call_sites is None else track_call_sites
        self._classes = tuple(_SlabClass(size, i) for i, size in enumerate(SLAB_SIZES))
        self._large: dict[int, SlabAllocation] = {}
        self._large_lock: SpinLock[None] = SpinLock(name="mm.slab.large")

    @staticmethod
    def class_size(size: int) -> int:
        """The class an allocation of ``size`` bytes lands in (0 for large ones)."""
        for s in SLAB_SIZES:
            if size <= s:
                return s
        return 0

    def allocate(self, size: int) -> int:
        """Allocate ``size`` bytes.

        :returns: a physical address aligned to the class size (page-aligned if large).
        :raises OutOfMemory: the page allocator is exhausted, or ``size`` <= 0.
        """
        if size <= 0:
            raise OutOfMemory(f"allocation of {size} bytes")
        site = capture_call_site(1, 4, _MM_DIR) if self.track_call_sites else CallSite()
        for cls in self._classes:
            if size <= cls.size:
                return self._allocate_small(cls, site)
        order = max(0, (size - 1) >> PAGE_SHIFT).bit_length()
        paddr = self.pages.allocate_pages(order)
        with self._large_lock:
            self._large[paddr] = SlabAllocation(paddr, size, site)
        return paddr

    def allocate_zeroed(self, size: int) -> int:
        """Allocate and zero ``size`` bytes (needs the page allocator's memory)."""
        paddr = self.allocate(size)
        mem = self.pages.memory
        if mem is None:
            self.free(paddr)
            raise OutOfMemory("zeroed allocation needs a memory to write to")
        mem.write(paddr, bytes(size))
        return paddr

    def reallocate(self, paddr: int, size: int) -> int:
        """Resize an object (COCONUT's ``GlobalAlloc::realloc``), keeping its first bytes.

        Stays in place when the new size fits the same class (or the same block order);
        otherwise allocates, copies ``min(old capacity, size)`` bytes and frees the old one.

        :returns: the (possibly new) address.
        :raises ForeignFree: ``paddr`` is not a live object.
        :raises OutOfMemory: no room for the new size; the old object is untouched.
        """
        info = self.pages.page_info(paddr)
        if info is not None and info.type == PageType.SLAB_PAGE:
            old_cap = SLAB_SIZES[info.tag]
            with self._classes[info.tag].lock:
                page = self._classes[info.tag].pages.get(paddr >> PAGE_SHIFT)
                live = page is not None and (paddr & (PAGE_SIZE - 1)) in page.used
        else:
            with self._large_lock:
                rec = self._large.get(paddr)
            live = rec is not None
            old_cap = _capacity(rec.size) if rec is not None else 0
        if not live:
            raise ForeignFree(f"reallocate of {paddr:#x}: not a live object", paddr=paddr)
        if size > 0 and _capacity(size) == old_cap:
            if old_cap > SLAB_SIZES[-1]:
                with self._large_lock:
                    self._large[paddr] = self._large[paddr]._replace(size=size)
            return paddr
        mem = self.pages.memory
        if mem is None:
            raise OutOfMemory("reallocation needs a memory to copy through")
        new = self.allocate(size)
        mem.write(new, mem.read(paddr, min(old_cap, size)))
        self.free(paddr)
        return new

    def _allocate_small(self, cls: _SlabClass, site: CallSite) -> int:
        with cls.lock:
            if cls.partial:
                pfn = next(iter(cls.partial))
                page = cls.pages[pfn]
            else:
                paddr = self.pages.allocate_pages(0, ptype=PageType.SLAB_PAGE, tag=cls.index)
                pfn = paddr >> PAGE_SHIFT
                page = cls.pages[pfn] = _SlabPage(paddr, cls.size)
                cls.partial[pfn] = None
            off = page.free.pop()
            if not page.free:
                del cls.partial[pfn]
            obj = page.paddr + off
            page.used[off] = site
            cls.freed.pop(obj, None)
            return obj

    def free(self, paddr: int, size: int | None = None) -> None:
        """Free an object from :meth:`allocate`.

        :param size: if given, the size it was allocated with; a different class is a foreign free.
        :raises DoubleFree: the object is already free.
        :raises ForeignFree: not an object of this allocator, misaligned, or wrong class.
        """
        info = self.pages.page_info(paddr)
        if info is not None and info.type == PageType.SLAB_PAGE:
            cls = self._classes[info.tag]
            if size is not None and self.class_size(size) != cls.size:
                raise ForeignFree(f"free of {paddr:#x} as {size} bytes, object is in the {cls.size}-byte class",
                                  paddr=paddr)
            if (paddr & (PAGE_SIZE - 1)) % cls.size:
                raise ForeignFree(f"free of {paddr:#x}: not aligned to the {cls.size}-byte class", paddr=paddr)
            self._free_small(cls, paddr)
            return
        with self._large_lock:
            rec = self._large.get(paddr)
            if rec is None:
                raise ForeignFree(f"free of {paddr:#x}: not a slab object or large allocation", paddr=paddr)
            if size is not None and (self.class_size(size) or -1) != (self.class_size(rec.size) or -1):
                raise ForeignFree(f"free of {paddr:#x} as {size} bytes, allocated as {rec.size}",
                                  paddr=paddr, alloc_site=rec.site)
            del self._large[paddr]
        self.pages.free_pages(paddr)

    def _free_small(self, cls: _SlabClass, paddr: int) -> None:
        pfn, off = paddr >> PAGE_SHIFT, paddr & (PAGE_SIZE - 1)
        with cls.lock:
            page = cls.pages.get(pfn)
            if page is None:  # the slab page went back to the buddy allocator meanwhile
                raise ForeignFree(f"free of {paddr:#x}: its slab page is no longer a {cls.size}-byte slab",
                                  paddr=paddr)
            site = page.used.pop(off, None)
            if site is None:
                freed = cls.freed.get(paddr, (CallSite(), CallSite()))
                raise DoubleFree(f"double free of {cls.size}-byte object {paddr:#x}", paddr=paddr,
                                 alloc_site=freed[0], free_site=freed[1])
            free_site = capture_call_site(2, 4, _MM_DIR) if self.track_call_sites else CallSite()
            cls.freed[paddr] = (site, free_site)
            if len(cls.freed) > FREED_HISTORY:
                cls.freed.popitem(last=False)
            page.free.append(off)
            cls.partial[pfn] = None
            if page.used:
                return
            # Keep one empty page per class; return the others.
            if any(p is not page and not p.used for p in cls.pages.values()):
                del cls.pages[pfn]
                del cls.partial[pfn]
                for o in range(0, PAGE_SIZE, cls.size):
                    cls.freed.pop(page.paddr + o, None)
                self.pages.free_pages(page.paddr, ptype=PageType.SLAB_PAGE)

    def trim(self) -> int:
        """Return every empty slab page to the page allocator.

        :returns: the number of pages returned.
        """
        n = 0
        for cls in self._classes:
            with cls.lock:
                for pfn, page in list(cls.pages.items()):
                    if not page.used:
                        del cls.pages[pfn]
                        cls.partial.pop(pfn, None)
                        for o in range(0, PAGE_SIZE, cls.size):
                            cls.freed.pop(page.paddr + o, None)
                        self.pages.free_pages(page.paddr, ptype=PageType.SLAB_PAGE)
                        n += 1
        return n

    def leaks(self) -> list[SlabAllocation]:
        """Live objects and large allocations, lowest address first."""
        out: list[SlabAllocation] = []
        for cls in self._classes:
            with cls.lock:
                for page in cls.pages.values():
                    out += [SlabAllocation(page.paddr + o, cls.size, s) for o, s in page.used.items()]
        with self._large_lock:
            out += self._large.values()
        return sorted(out)

    def check_leaks(self) -> None:
        """Raise if any object is still allocated (call at shutdown, then :meth:`trim`).

        :raises MemoryLeak: one entry with call site per leaked object.
        """
        leaks = self.leaks()
        if leaks:
            raise MemoryLeak(f"{len(leaks)} heap object(s) leaked:\n" + "\n".join(map(str, leaks)), leaks)

    def statistics(self) -> SlabStatistics:
        """Pages and used/free objects per class, plus large allocations."""
        classes = []
        for cls in self._classes:
            with cls.lock:
                used = sum(len(p.used) for p in cls.pages.values())
                free = sum(len(p.free) for p in cls.pages.values())
                classes.append(SlabClassStatistics(cls.size, len(cls.pages), used, free))
        with self._large_lock:
            large = list(self._large.values())
        pages = sum(_capacity(a.size) >> PAGE_SHIFT for a in large)
        return SlabStatistics(tuple(classes), len(large), pages)
