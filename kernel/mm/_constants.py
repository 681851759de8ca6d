"""Sizes and the kernel virtual-address layout (coconut-svsm.md 1.4, 1.5)."""

from __future__ import annotations

__all__ = [
    "PAGE_SHIFT", "PAGE_SIZE", "HUGE_PAGE_SHIFT", "HUGE_PAGE_SIZE", "MAX_ORDER", "SLAB_SIZES",
    "PML4_SLOT_USER_END", "PML4_SLOT_SELFMAP", "PML4_SLOT_PERTASK", "PML4_SLOT_PERCPU", "PML4_SLOT_KERNEL",
    "SVSM_GLOBAL_BASE", "SVSM_GLOBAL_MAPPING_BASE", "SVSM_PERCPU_BASE", "SVSM_PERTASK_BASE",
    "SVSM_PERCPU_CAA_BASE", "SVSM_PERCPU_VMSA_BASE", "SVSM_PERCPU_STACKS_BASE",
    "SVSM_PERCPU_TEMP_BASE_4K", "SVSM_PERCPU_TEMP_BASE_2M", "PERCPU_TEMP_4K_SLOTS", "PERCPU_TEMP_2M_SLOTS",
    "STACK_PAGES", "pml4_slot_base",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
HUGE_PAGE_SHIFT = 21
HUGE_PAGE_SIZE = 1 << HUGE_PAGE_SHIFT

#: Buddy orders are 0..MAX_ORDER-1 (COCONUT ``MAX_ORDER=6``: up to 128 KiB).
MAX_ORDER = 6
#: Slab classes of COCONUT's ``SvsmAllocator``.
SLAB_SIZES = (32, 64, 128, 256, 512, 1024, 2048)


def pml4_slot_base(slot: int) -> int:
    """Canonical virtual address of PML4 slot ``slot`` (sign-extended above 255)."""
    va = slot << 39
    return va | 0xFFFF_0000_0000_0000 if slot >= 256 else va


#: PML4 slots (4-level paging), coconut-svsm.md 1.4.
PML4_SLOT_USER_END = 256  # 0..255 user space
PML4_SLOT_SELFMAP = 493
PML4_SLOT_PERTASK = 508
PML4_SLOT_PERCPU = 510
PML4_SLOT_KERNEL = 511

SVSM_GLOBAL_BASE = pml4_slot_base(PML4_SLOT_KERNEL)
assert SVSM_GLOBAL_BASE == 0xFFFF_FF80_0000_0000
#: The global mapping area, +256 GiB into the kernel slot.
SVSM_GLOBAL_MAPPING_BASE = SVSM_GLOBAL_BASE + (256 << 30)
SVSM_PERCPU_BASE = pml4_slot_base(PML4_SLOT_PERCPU)
assert SVSM_PERCPU_BASE == 0xFFFF_FF00_0000_0000
SVSM_PERTASK_BASE = pml4_slot_base(PML4_SLOT_PERTASK)
assert SVSM_PERTASK_BASE == 0xFFFF_FE00_0000_0000

#: Per-CPU region layout: guest CAA at +0x2000, guest VMSA at +0x4000, stacks from
#: +2 MiB, temporary mappings from +1 GiB (512 x 4K slots, then 511 x 2M slots).
SVSM_PERCPU_CAA_BASE = SVSM_PERCPU_BASE + 0x2000
SVSM_PERCPU_VMSA_BASE = SVSM_PERCPU_BASE + 0x4000
SVSM_PERCPU_STACKS_BASE = SVSM_PERCPU_BASE + HUGE_PAGE_SIZE
SVSM_PERCPU_TEMP_BASE_4K = SVSM_PERCPU_BASE + (1 << 30)
PERCPU_TEMP_4K_SLOTS = 512
SVSM_PERCPU_TEMP_BASE_2M = SVSM_PERCPU_TEMP_BASE_4K + PERCPU_TEMP_4K_SLOTS * PAGE_SIZE
PERCPU_TEMP_2M_SLOTS = 511
#: Stacks are 8 pages (32 KiB) plus an equal-sized unmapped guard.
STACK_PAGES = 8
