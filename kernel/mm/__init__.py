"""svsm.kernel.mm -- memory management of the SVSM kernel.

* :class:`PageAllocator`: buddy allocator (orders 0..5) over SVSM-owned pages, with
  COCONUT-style per-page metadata, DEPOSIT/WITHDRAW of guest-lent ranges, and the
  allocating call site on every double free, foreign free and leak.
* :class:`SlabAllocator`: 32..2048-byte classes on top of it.
* :class:`PageTable`: x86-64 4-level page tables in simulated physical memory
  (C-bit from CPUID), 4 KiB / 2 MiB mappings and a walker raising :class:`PageFault`.
* :class:`PerCpuArea` / :class:`PerCpuAreas`: per-CPU pages and page tables sharing
  the kernel half, and the per-CPU mapping window (:class:`PerCPUPageMappingGuard`).

Everything works on :class:`PhysMemory` (``read``/``write`` at a physical address).

.. versionadded:: 0.1
"""

from ._constants import *  # noqa: F403 - the layout constants are all public
from ._constants import __all__ as _constants_all
from ._errors import AllocatorError as AllocatorError
from ._errors import DoubleFree as DoubleFree
from ._errors import ForeignFree as ForeignFree
from ._errors import MemoryLeak as MemoryLeak
from ._errors import NonCanonicalAddress as NonCanonicalAddress
from ._errors import OutOfMemory as OutOfMemory
from ._errors import PageFault as PageFault
from ._errors import PagesInUse as PagesInUse
from ._errors import PageTableError as PageTableError
from ._errors import PerCpuError as PerCpuError
from ._errors import RangeOverlap as RangeOverlap
from ._memory import PhysMemory as PhysMemory
from ._memory import SparseMemory as SparseMemory
from ._memory import read_u64 as read_u64
from ._memory import write_u64 as write_u64
from ._page_alloc import META_DEPOSITED as META_DEPOSITED
from ._page_alloc import PageAllocation as PageAllocation
from ._page_alloc import PageAllocator as PageAllocator
from ._page_alloc import PageAllocatorStatistics as PageAllocatorStatistics
from ._page_alloc import PageInfo as PageInfo
from ._page_alloc import PageType as PageType
from ._pagetable import DEFAULT_C_BIT as DEFAULT_C_BIT
from ._pagetable import PageTable as PageTable
from ._pagetable import PageTableStatistics as PageTableStatistics
from ._pagetable import PTEFlags as PTEFlags
from ._pagetable import Translation as Translation
from ._pagetable import is_canonical as is_canonical
from ._percpu import PERCPU_DATA_VADDR as PERCPU_DATA_VADDR
from ._percpu import PERCPU_GHCB_VADDR as PERCPU_GHCB_VADDR
from ._percpu import PERCPU_STACK_BOTTOM as PERCPU_STACK_BOTTOM
from ._percpu import PERCPU_STACK_TOP as PERCPU_STACK_TOP
from ._percpu import PerCpuArea as PerCpuArea
from ._percpu import PerCpuAreas as PerCpuAreas
from ._percpu import PerCPUPageMappingGuard as PerCPUPageMappingGuard
from ._percpu import PerCpuStatistics as PerCpuStatistics
from ._percpu import current_cpu as current_cpu
from ._percpu import this_cpu as this_cpu
from ._slab import SlabAllocation as SlabAllocation
from ._slab import SlabAllocator as SlabAllocator
from ._slab import SlabClassStatistics as SlabClassStatistics
from ._slab import SlabStatistics as SlabStatistics

__all__ = [
    *_constants_all,
    "AllocatorError", "DoubleFree", "ForeignFree", "MemoryLeak", "NonCanonicalAddress", "OutOfMemory",
    "PageFault", "PagesInUse", "PageTableError", "PerCpuError", "RangeOverlap",
    "PhysMemory", "SparseMemory", "read_u64", "write_u64",
    "META_DEPOSITED", "PageAllocation", "PageAllocator", "PageAllocatorStatistics", "PageInfo", "PageType",
    "DEFAULT_C_BIT", "PageTable", "PageTableStatistics", "PTEFlags", "Translation", "is_canonical",
    "PERCPU_DATA_VADDR", "PERCPU_GHCB_VADDR", "PERCPU_STACK_BOTTOM", "PERCPU_STACK_TOP",
    "PerCpuArea", "PerCpuAreas", "PerCPUPageMappingGuard", "PerCpuStatistics", "current_cpu", "this_cpu",
    "SlabAllocation", "SlabAllocator", "SlabClassStatistics", "SlabStatistics",
]
