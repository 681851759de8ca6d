"""Errors of the memory manager.

Allocator misuse by kernel code (double free, foreign free, leaks) is a broken
invariant: :class:`~svsm.sdk.FatalError`.  A guest's bad DEPOSIT/WITHDRAW range
is a :class:`~svsm.sdk.RequestError`.  Running out of memory is neither: the
caller decides (a request may answer with an error code, boot must panic).
"""

from __future__ import annotations

from svsm.sdk import FatalError, InvalidAddress, InvalidParameter, SvsmError

from svsm.kernel.sync import CallSite

__all__ = [
    "OutOfMemory", "AllocatorError", "DoubleFree", "ForeignFree", "MemoryLeak",
    "RangeOverlap", "PagesInUse", "PerCpuError", "PageFault", "NonCanonicalAddress", "PageTableError",
]


class OutOfMemory(SvsmError):
    """No free block of the requested order.  Free something or fail the request."""

    def __init__(self, message: str, *, order: int = 0) -> None:
        super().__init__(message)
        self.order = order


class AllocatorError(FatalError):
    """Kernel code misused an allocator: panic.

    :ivar paddr: the address involved.
    :ivar alloc_site: where the block was allocated (empty if unknown or not tracked).
    :ivar free_site: where it was first freed (double free only).
    """

    def __init__(self, message: str, *, paddr: int = 0, alloc_site: CallSite = CallSite(),
                 free_site: CallSite = CallSite()) -> None:
        detail = message
        if alloc_site:
            detail += "\nallocated at:\n" + alloc_site.format()
        if free_site:
            detail += "\nfirst freed at:\n" + free_site.format()
        super().__init__(detail)
        self.paddr = paddr
        self.alloc_site = alloc_site
        self.free_site = free_site


class DoubleFree(AllocatorError):
    """The block was already free."""


class ForeignFree(AllocatorError):
    """The address is not an allocation of this allocator (unowned page, tail page,
    slab object freed as a page, misaligned or wrong-size-class object)."""


class MemoryLeak(FatalError):
    """Allocations still live at shutdown.

    :ivar leaks: the live allocations (each with its call site).
    """

    def __init__(self, report: str, leaks: list) -> None:  # type: ignore[type-arg]
        super().__init__(report)
        self.leaks = leaks


class RangeOverlap(InvalidAddress):
    """A deposited range overlaps memory the allocator already owns, or is misaligned."""


class PagesInUse(InvalidParameter):
    """A withdraw range holds allocated pages, or pages that were never deposited."""


class PageTableError(FatalError):
    """Mapping over an existing mapping, unmapping a hole, or a bad size/alignment."""


class PerCpuError(FatalError):
    """Per-CPU state misuse: a CPU created twice, no CPU active on this thread,
    a mapping window exhausted or released twice, an area freed with live mappings."""


class PageFault(FatalError):
    """An x86 #PF raised by the page walker.

    Kernel code that touches guest-controlled memory catches it (the exception-table
    fixup) and answers INVALID_ADDRESS; anywhere else it is a kernel panic.

    :ivar vaddr: the faulting linear address (CR2).
    :ivar error_code: x86 #PF error code: bit 0 P (protection violation on a present
        page, 0 = not present), 1 W (write), 2 U (user mode), 3 RSVD, 4 I (fetch).
    """

    P = 1 << 0
    W = 1 << 1
    U = 1 << 2
    RSVD = 1 << 3
    I = 1 << 4  # noqa: E741 - the x86 name

    def __init__(self, vaddr: int, error_code: int, message: str = "") -> None:
        super().__init__(message or f"#PF at {vaddr:#x} error code {error_code:#x}")
        self.vaddr = vaddr
        self.error_code = error_code


class NonCanonicalAddress(FatalError):
    """A non-canonical linear address (#GP on real hardware, not #PF)."""

    def __init__(self, vaddr: int) -> None:
        super().__init__(f"#GP: non-canonical address {vaddr:#x}")
        self.vaddr = vaddr
