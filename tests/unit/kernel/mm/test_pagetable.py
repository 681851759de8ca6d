"""x86-64 page tables: entry bits, C-bit placement, walks, A/D bits, #PF error codes, sharing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.kernel.mm import (
    HUGE_PAGE_SIZE, PAGE_SIZE, SVSM_GLOBAL_BASE, SVSM_PERCPU_BASE, NonCanonicalAddress, PageAllocator,
    PageFault, PageTable, PageTableError, PTEFlags, SparseMemory, read_u64,
)

HEAP = 0x100_0000
VA = SVSM_GLOBAL_BASE + 0x4000_0000
RW_NX = PTEFlags.WRITABLE | PTEFlags.NX


def make(c_bit: int | None = 51, **kw: int) -> PageTable:
    mem = SparseMemory(1 << 52)
    pa = PageAllocator(mem)
    pa.add_range(HEAP, 256 * PAGE_SIZE)
    return PageTable(mem, pa, c_bit=c_bit, **kw)


def test_entry_bit_layout_matches_x86() -> None:
    assert [int(f) for f in (PTEFlags.PRESENT, PTEFlags.WRITABLE, PTEFlags.USER, PTEFlags.ACCESSED,
                             PTEFlags.DIRTY, PTEFlags.HUGE, PTEFlags.GLOBAL, PTEFlags.NX)] == \
        [1, 2, 4, 0x20, 0x40, 0x80, 0x100, 1 << 63]
    pt = make(c_bit=51)
    e = pt.make_entry(0x1234_5000, PTEFlags.WRITABLE | PTEFlags.USER | PTEFlags.NX)
    assert e == 0x1234_5000 | 0b111 | 1 << 51 | 1 << 63
    assert pt.make_entry(0x20_0000, PTEFlags(0), encrypted=False, huge=True) == 0x20_0000 | 1 | 0x80


@pytest.mark.parametrize("c_bit", [47, 51])
def test_c_bit_placed_where_cpuid_says_in_leaf_and_table_entries(c_bit: int) -> None:
    pt = make(c_bit=c_bit)
    pt.map_4k(VA, 0x5000_0000)
    pt.map_4k(VA + PAGE_SIZE, 0x5000_1000, encrypted=False)
    t = pt.translate(VA)
    assert t.encrypted and t.paddr == 0x5000_0000
    assert all(e >> c_bit & 1 for e in t.entries)  # table pages are private too
    t2 = pt.translate(VA + PAGE_SIZE + 0x10)
    assert not t2.encrypted and t2.paddr == 0x5000_1010 and not t2.entries[-1] >> c_bit & 1
    with pytest.raises(PageTableError):  # an address with the C-bit set is not a frame
        pt.map_4k(VA + 2 * PAGE_SIZE, 1 << c_bit)


def test_pml4_entry_in_memory_is_real() -> None:
    pt = make()
    e = read_u64(pt.memory, pt.root + 8 * 511)
    assert e & 0b11 == 0b11 and e >> 51 & 1 and not e & PTEFlags.USER
    assert pt.allocator.owns(e & 0x000F_FFFF_FFFF_F000 & ~(1 << 51))


def test_walk_sets_accessed_and_dirty() -> None:
    pt = make()
    pt.map_4k(VA, 0x7000)
    assert not pt.leaf_entry(VA) & PTEFlags.ACCESSED
    pt.translate(VA + 5)
    leaf = pt.leaf_entry(VA)
    assert leaf & PTEFlags.ACCESSED and not leaf & PTEFlags.DIRTY
    t = pt.translate(VA + 5, write=True)
    assert t.entries[-1] & PTEFlags.DIRTY and all(e & PTEFlags.ACCESSED for e in t.entries)


def test_2m_mapping_uses_ps_bit() -> None:
    pt = make()
    pt.map_2m(VA, 0x4000_0000)
    t = pt.translate(VA + 0x12_3456)
    assert t.page_size == HUGE_PAGE_SIZE and t.paddr == 0x4012_3456 and len(t.entries) == 3
    assert t.entries[-1] & PTEFlags.HUGE
    with pytest.raises(PageTableError):
        pt.map_4k(VA + PAGE_SIZE, 0x9000)  # inside the large page
    with pytest.raises(PageTableError):
        pt.unmap(VA + PAGE_SIZE)
    with pytest.raises(PageTableError):
        pt.map_2m(VA + PAGE_SIZE, 0x4000_0000)  # misaligned
    assert pt.unmap(VA) == HUGE_PAGE_SIZE
    with pytest.raises(PageFault):
        pt.translate(VA)


def test_map_range_mixes_sizes() -> None:
    pt = make()
    pt.map_range(VA - PAGE_SIZE, 0x20_0000 - PAGE_SIZE, HUGE_PAGE_SIZE + 2 * PAGE_SIZE)
    assert pt.translate(VA - PAGE_SIZE).page_size == PAGE_SIZE
    assert pt.translate(VA).page_size == HUGE_PAGE_SIZE
    assert pt.translate(VA + HUGE_PAGE_SIZE).paddr == 0x40_0000


@pytest.mark.parametrize("flags,access,code", [
    (None, {}, 0),                                   # not present, supervisor read
    (None, {"write": True}, PageFault.W),
    (None, {"user": True}, PageFault.U),
    (None, {"fetch": True}, PageFault.I),
    (PTEFlags(0), {"write": True}, PageFault.P | PageFault.W),                 # read-only
    (RW_NX, {"fetch": True}, PageFault.P | PageFault.I),                       # NX
    (PTEFlags.WRITABLE, {"user": True}, PageFault.P | PageFault.U),           # supervisor page
    (PTEFlags.USER, {"user": True, "write": True}, PageFault.P | PageFault.W | PageFault.U),
    (PTEFlags.USER, {"fetch": True, "smep": True}, PageFault.P | PageFault.I),  # SMEP
    (PTEFlags.USER | PTEFlags.NX, {"smap": True}, PageFault.P),                 # SMAP
])
def test_fault_error_codes(flags: PTEFlags | None, access: dict[str, bool], code: int) -> None:
    pt = make()
    if flags is not None:
        pt.map_4k(VA, 0x8000, flags)
    with pytest.raises(PageFault) as ei:
        pt.translate(VA + 0x10, **access)
    assert ei.value.error_code == code and ei.value.vaddr == VA + 0x10


@pytest.mark.parametrize("flags,access", [
    (PTEFlags.WRITABLE, {"write": True, "fetch": False}),
    (PTEFlags(0), {"fetch": True}),
    (PTEFlags.USER | PTEFlags.WRITABLE, {"user": True, "write": True}),
    (PTEFlags.USER, {"fetch": True}),  # no SMEP: allowed
])
def test_permitted_accesses(flags: PTEFlags, access: dict[str, bool]) -> None:
    pt = make()
    pt.map_4k(VA, 0x8000, flags)
    t = pt.translate(VA, **access)
    assert t.paddr == 0x8000


def test_permissions_combine_over_levels() -> None:
    pt = make()
    user_va = 0x40_0000
    pt.map_4k(user_va, 0x8000, PTEFlags.USER | PTEFlags.WRITABLE)
    t = pt.translate(user_va, user=True, write=True, fetch=False)
    assert t.user and t.writable and t.executable
    # clear RW in the PDE: the leaf says RW but the walk must refuse writes
    pdpt = t.entries[0] & 0x000F_FFFF_FFFF_F000 & ~(1 << 51)
    pd = read_u64(pt.memory, pdpt) & 0x000F_FFFF_FFFF_F000 & ~(1 << 51)
    e = read_u64(pt.memory, pd + 8 * 2)
    pt.memory.write_u64(pd + 8 * 2, e & ~PTEFlags.WRITABLE | PTEFlags.NX)  # type: ignore[attr-defined]
    with pytest.raises(PageFault) as ei:
        pt.translate(user_va, user=True, write=True)
    assert ei.value.error_code == PageFault.P | PageFault.W | PageFault.U
    with pytest.raises(PageFault):
        pt.translate(user_va, user=True, fetch=True)  # NX in a non-leaf level


def test_reserved_bits_fault_with_rsvd() -> None:
    pt = make(phys_bits=48)
    pt.map_4k(VA, 0x8000)
    slot_e = pt.leaf_entry(VA)
    pt.set_leaf_flags(VA, set_flags=PTEFlags(1 << 49))
    assert pt.leaf_entry(VA) == slot_e | 1 << 49
    with pytest.raises(PageFault) as ei:
        pt.translate(VA)
    assert ei.value.error_code == PageFault.P | PageFault.RSVD


def test_non_canonical_is_gp_not_pf() -> None:
    pt = make()
    with pytest.raises(NonCanonicalAddress):
        pt.translate(0x0000_8000_0000_0000)
    with pytest.raises(NonCanonicalAddress):
        pt.map_4k(0xFFFF_0000_0000_0000, 0x1000)


def test_double_map_and_hole_unmap_are_errors() -> None:
    pt = make()
    pt.map_4k(VA, 0x1000)
    with pytest.raises(PageTableError):
        pt.map_4k(VA, 0x2000)
    with pytest.raises(PageTableError):
        pt.unmap(VA + PAGE_SIZE)
    assert pt.unmap(VA) == PAGE_SIZE
    with pytest.raises(PageFault):
        pt.translate(VA)


def test_virtual_read_write_across_pages_is_all_or_nothing() -> None:
    pt = make()
    pt.map_4k(VA, 0x3000_0000)
    pt.map_4k(VA + PAGE_SIZE, 0x1000_0000)
    pt.write(VA + PAGE_SIZE - 3, b"abcdef")
    assert pt.memory.read(0x3000_0000 + PAGE_SIZE - 3, 3) == b"abc"
    assert pt.memory.read(0x1000_0000, 3) == b"def"
    assert pt.read(VA + PAGE_SIZE - 3, 6) == b"abcdef"
    pt.set_leaf_flags(VA + PAGE_SIZE, clear_flags=PTEFlags.WRITABLE)
    with pytest.raises(PageFault):
        pt.write(VA + PAGE_SIZE - 3, b"XXXXXX")
    assert pt.read(VA + PAGE_SIZE - 3, 6) == b"abcdef"


def test_clones_share_kernel_half_but_not_percpu_slot() -> None:
    boot = make()
    cpu0, cpu1 = boot.clone_for_cpu(), boot.clone_for_cpu()
    boot.map_4k(VA, 0x9000)  # mapped after cloning: visible everywhere (shared PDPT)
    assert cpu0.translate(VA).paddr == cpu1.translate(VA).paddr == 0x9000
    cpu0.map_4k(SVSM_PERCPU_BASE, 0xA000)
    assert cpu0.translate(SVSM_PERCPU_BASE).paddr == 0xA000
    for other in (cpu1, boot):
        with pytest.raises(PageFault):
            other.translate(SVSM_PERCPU_BASE)
    assert cpu0.statistics().shared_pages == boot.statistics().shared_pages >= 3
    cpu0.free()
    cpu1.free()
    boot.free()
    boot.free_shared()
    boot.allocator.check_leaks()


@settings(max_examples=60, deadline=None)
@given(vaddr=st.integers(0, (1 << 64) - 1), entry=st.integers(0, (1 << 64) - 1),
       write=st.booleans(), user=st.booleans(), fetch=st.booleans())
def test_walker_survives_arbitrary_entries(vaddr: int, entry: int, write: bool, user: bool, fetch: bool) -> None:
    """Fuzz: a walk over garbage entries returns a translation or raises one of the typed faults."""
    pt = make(phys_bits=48)
    pml4_slot = (vaddr >> 39) & 0x1FF
    pt.memory.write_u64(pt.root + 8 * pml4_slot, entry)  # type: ignore[attr-defined]
    try:
        t = pt.translate(vaddr, write=write, user=user, fetch=fetch)
    except (PageFault, NonCanonicalAddress):
        return
    assert 0 <= t.paddr < 1 << 48


def test_selfmap_slot_493_exposes_every_paging_entry() -> None:
    boot = make()
    cpu = boot.clone_for_cpu()
    for pt in (boot, cpu):
        pt.map_4k(VA + 7 * PAGE_SIZE, 0x6000_0000)
        t = pt.translate(VA + 7 * PAGE_SIZE)
        for level, entry in zip((4, 3, 2, 1), t.entries):
            raw = int.from_bytes(pt.read(pt.selfmap_entry_vaddr(VA + 7 * PAGE_SIZE, level), 8), "little")
            assert raw & ~0x60 == entry & ~0x60  # same entry (A/D may have changed since)
        pml4_self = pt.translate(pt.selfmap_entry_vaddr(0, 4))
        assert pml4_self.paddr == pt.root and not pml4_self.executable  # each table maps its own root
        pt.unmap(VA + 7 * PAGE_SIZE)
    with pytest.raises(PageFault):  # user mode cannot reach the page tables
        cpu.translate(cpu.selfmap_entry_vaddr(VA, 1), user=True)
