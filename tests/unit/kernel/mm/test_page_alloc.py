"""Buddy allocator: split/merge, exhaustion, double/foreign free, leaks, deposit/withdraw, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from svsm.kernel.mm import (
    MAX_ORDER, PAGE_SIZE, DoubleFree, ForeignFree, MemoryLeak, OutOfMemory, PageAllocator, PagesInUse,
    PageType, RangeOverlap, SparseMemory,
)
from svsm.sdk import FatalError, InvalidAddress, InvalidParameter, ResultCode

BASE = 0x10_0000
BLOCK = PAGE_SIZE << (MAX_ORDER - 1)  # 128 KiB


def make(pages: int = 64, base: int = BASE) -> PageAllocator:
    pa = PageAllocator(SparseMemory(1 << 32))
    pa.add_range(base, pages * PAGE_SIZE)
    return pa


def test_max_order_is_coconuts() -> None:
    assert MAX_ORDER == 6 and BLOCK == 128 * 1024


def test_split_and_merge_restore_the_initial_state() -> None:
    pa = make(32)  # exactly one order-5 block
    assert pa.statistics().free_blocks == (0, 0, 0, 0, 0, 1)
    p = pa.allocate_page()
    assert p == BASE  # lowest half is kept at each split
    assert pa.statistics().free_blocks == (1, 1, 1, 1, 1, 0)
    q = pa.allocate_pages(2)
    assert q % (4 * PAGE_SIZE) == 0 and q != p
    info = pa.page_info(q + PAGE_SIZE)
    assert info is not None and info.type == PageType.COMPOUND and info.order == 2
    assert pa.page_info(q).type == PageType.ALLOCATED  # type: ignore[union-attr]
    pa.free_page(p)
    pa.free_pages(q, order=2)
    st_ = pa.statistics()
    assert st_.free_blocks == (0, 0, 0, 0, 0, 1) and st_.free_pages == 32 and st_.used_pages == 0
    assert st_.allocations == 2 and st_.frees == 2


def test_unaligned_range_is_split_into_aligned_blocks() -> None:
    pa = make(7, base=BASE + 3 * PAGE_SIZE)  # pfns 0x103..0x109
    assert pa.statistics().free_blocks == (1, 1, 1, 0, 0, 0)  # 0x103 | 0x104-0x107 | 0x108-0x109
    for order in (2, 1, 0):
        a = pa.allocate_pages(order)
        assert a % (PAGE_SIZE << order) == 0


def test_exhaustion_raises_out_of_memory_and_counts() -> None:
    pa = make(4)
    got = [pa.allocate_page() for _ in range(4)]
    assert len(set(got)) == 4
    with pytest.raises(OutOfMemory) as ei:
        pa.allocate_page()
    assert not isinstance(ei.value, FatalError)
    with pytest.raises(OutOfMemory):
        pa.allocate_pages(MAX_ORDER)
    assert pa.statistics().failures == 1
    pa.free_page(got[0])
    assert pa.allocate_page() == got[0]


def test_double_free_names_allocation_and_first_free_site() -> None:
    pa = make(8)
    p = pa.allocate_page()  # ALLOC-LINE
    pa.free_page(p)
    with pytest.raises(DoubleFree) as ei:
        pa.free_page(p)
    e = ei.value
    assert isinstance(e, FatalError) and e.paddr == p
    assert e.alloc_site[0].function == "test_double_free_names_allocation_and_first_free_site"
    assert e.alloc_site[0].lineno + 1 == e.free_site[0].lineno


def test_double_free_detected_after_merge() -> None:
    pa = make(2)
    a, b = pa.allocate_page(), pa.allocate_page()
    pa.free_page(a)
    pa.free_page(b)  # a and b merged into one order-1 block; b is a tail page now
    with pytest.raises(DoubleFree):
        pa.free_page(b)


@pytest.mark.parametrize("case", ["unowned", "tail", "misaligned", "wrong_order", "slab_as_page"])
def test_foreign_free(case: str) -> None:
    pa = make(16)
    blk = pa.allocate_pages(2)
    slab = pa.allocate_pages(0, ptype=PageType.SLAB_PAGE, tag=1)
    target, kw = {
        "unowned": (0x9000_0000, {}),
        "tail": (blk + PAGE_SIZE, {}),
        "misaligned": (blk + 8, {}),
        "wrong_order": (blk, {"order": 1}),
        "slab_as_page": (slab, {}),
    }[case]
    with pytest.raises(ForeignFree) as ei:
        pa.free_pages(target, **kw)
    assert isinstance(ei.value, FatalError)
    if case in ("tail", "wrong_order"):
        assert ei.value.alloc_site  # names the block's allocation
    assert pa.statistics().frees == 0


def test_leak_report_lists_every_block_with_call_site() -> None:
    pa = make(16)
    kept = pa.allocate_pages(1)
    other = pa.allocate_page()
    gone = pa.allocate_page()
    pa.free_page(gone)
    with pytest.raises(MemoryLeak) as ei:
        pa.check_leaks()
    leaks = ei.value.leaks
    assert {leak.paddr for leak in leaks} == {kept, other}
    assert all(leak.site[0].function == "test_leak_report_lists_every_block_with_call_site" for leak in leaks)
    assert f"{kept:#x}" in str(ei.value)
    pa.check_leaks(ignore={kept, other})


def test_call_site_tracking_can_be_switched_off() -> None:
    pa = PageAllocator(track_call_sites=False)
    pa.add_range(BASE, 4 * PAGE_SIZE)
    p = pa.allocate_page()
    assert pa.leaks()[0].site == ()
    pa.free_page(p)


def test_zeroed_page_and_metadata_word() -> None:
    mem = SparseMemory(1 << 32)
    pa = PageAllocator(mem)
    pa.add_range(BASE, 4 * PAGE_SIZE)
    mem.write(BASE, b"\xff" * PAGE_SIZE)
    p = pa.allocate_zeroed_page()
    assert mem.read(p, PAGE_SIZE) == bytes(PAGE_SIZE)
    raw = pa.raw_metadata(p)
    assert raw is not None and raw & 0xF == PageType.ALLOCATED and (raw >> 4) & 0xF == 0
    with pytest.raises(OutOfMemory):
        PageAllocator().allocate_zeroed_page()


def test_deposit_and_withdraw() -> None:
    pa = make(8)
    dep = 0x4000_0000
    pa.deposit(dep, 16 * PAGE_SIZE)
    st_ = pa.statistics()
    assert st_.total_pages == 24 and st_.deposited_pages == 16
    info = pa.page_info(dep)
    assert info is not None and info.deposited
    # boot-heap pages cannot be withdrawn
    with pytest.raises(PagesInUse) as ei:
        pa.withdraw(BASE, PAGE_SIZE)
    assert isinstance(ei.value, InvalidParameter) and ei.value.code == ResultCode.INVALID_PARAMETER
    # in-use deposited pages cannot be withdrawn; nothing changes
    used = [pa.allocate_page() for _ in range(9)]  # 8 boot pages then one deposited page
    dep_used = [u for u in used if u >= dep]
    assert len(dep_used) == 1
    with pytest.raises(PagesInUse):
        pa.withdraw(dep, 16 * PAGE_SIZE)
    assert pa.statistics().total_pages == 24
    # withdraw the free part around the used page: splits the free blocks
    lo, hi = dep, dep_used[0]
    if hi > lo:
        pa.withdraw(lo, hi - lo)
    rest = dep_used[0] + PAGE_SIZE
    pa.withdraw(rest, dep + 16 * PAGE_SIZE - rest)
    assert pa.statistics().total_pages == 9 and pa.statistics().free_pages == 0
    assert not pa.owns(rest) and pa.owns(dep_used[0])
    for u in used:
        pa.free_page(u)
    pa.withdraw(dep_used[0], PAGE_SIZE)
    st_ = pa.statistics()
    assert st_.total_pages == 8 and st_.free_pages == 8 and st_.deposited_pages == 0
    with pytest.raises(ForeignFree):
        pa.free_page(dep_used[0])


@pytest.mark.parametrize("paddr,size", [(BASE, PAGE_SIZE), (BASE + 1, PAGE_SIZE), (0x4000_0000, 0),
                                        (0x4000_0000, 100)])
def test_bad_deposit_ranges(paddr: int, size: int) -> None:
    pa = make(8)
    with pytest.raises(RangeOverlap) as ei:
        pa.deposit(paddr, size)
    assert isinstance(ei.value, InvalidAddress)


class BuddyMachine(RuleBasedStateMachine):
    """Like COCONUT's page_alloc fuzz target: random allocate/free/deposit/withdraw against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.mem = SparseMemory(1 << 32)
        self.pa = PageAllocator(self.mem, track_call_sites=False)
        self.pa.add_range(BASE, 48 * PAGE_SIZE)
        self.owned = set(range(BASE >> 12, (BASE >> 12) + 48))
        self.live: dict[int, int] = {}  # paddr -> order
        self.freed: set[int] = set()
        self.deposits: list[tuple[int, int]] = []  # (pfn, npages), fully free-able ranges
        self.next_dep = 0x1000_0000 >> 12
        self.reserved: set[int] = set()  # pfns
        self.files: dict[int, int] = {}  # paddr -> references

    def _pages(self, paddr: int, order: int) -> set[int]:
        return set(range(paddr >> 12, (paddr >> 12) + (1 << order)))

    @rule(order=st.integers(0, MAX_ORDER - 1), fill=st.binary(min_size=1, max_size=4))
    def allocate(self, order: int, fill: bytes) -> None:
        try:
            p = self.pa.allocate_pages(order)
        except OutOfMemory:
            used = set().union(*(self._pages(a, o) for a, o in self.live.items())) if self.live else set()
            used |= self.reserved
            free = self.owned - used
            assert not any(
                all(x in free for x in range(pfn, pfn + (1 << order)))
                for pfn in free if pfn % (1 << order) == 0
            ), "buddy missed a free aligned block"
            return
        assert p % (PAGE_SIZE << order) == 0
        pages = self._pages(p, order)
        assert pages <= self.owned and not pages & self.reserved
        for a, o in self.live.items():
            assert not pages & self._pages(a, o), "overlapping allocations"
        self.live[p] = order
        self.freed -= {p}
        self.mem.write(p, fill)

    @precondition(lambda self: set(self.live) - set(self.files))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(sorted(set(self.live) - set(self.files))))
        order = self.live.pop(p)
        self.pa.free_pages(p, order=order)
        self.freed.add(p)

    @precondition(lambda self: self.freed)
    @rule(data=st.data())
    def double_free(self, data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(sorted(self.freed)))
        if p in self.live:
            return
        with pytest.raises((DoubleFree, ForeignFree)):
            self.pa.free_pages(p)

    @rule(npages=st.integers(1, 20))
    def deposit(self, npages: int) -> None:
        pfn = self.next_dep
        self.next_dep += npages + 3
        self.pa.deposit(pfn << 12, npages * PAGE_SIZE)
        self.owned |= set(range(pfn, pfn + npages))
        self.deposits.append((pfn, npages))

    @precondition(lambda self: self.deposits)
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        pfn, npages = data.draw(st.sampled_from(self.deposits))
        rng = set(range(pfn, pfn + npages))
        busy = any(rng & self._pages(a, o) for a, o in self.live.items())
        if busy:
            with pytest.raises(PagesInUse):
                self.pa.withdraw(pfn << 12, npages * PAGE_SIZE)
            return
        self.pa.withdraw(pfn << 12, npages * PAGE_SIZE)
        self.owned -= rng
        self.deposits.remove((pfn, npages))
        self.freed -= {p << 12 for p in rng}

    @rule()
    def allocate_file(self) -> None:
        try:
            p = self.pa.allocate_file_page()
        except OutOfMemory:
            return
        assert self.mem.read(p, PAGE_SIZE) == bytes(PAGE_SIZE)
        for a, o in self.live.items():
            assert p >> 12 not in self._pages(a, o)
        self.live[p] = 0
        self.files[p] = 1
        self.freed -= {p}

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def file_ref_clone(self, data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(sorted(self.files)))
        self.files[p] += 1
        assert self.pa.get_file_page(p) == self.files[p]
        with pytest.raises(ForeignFree):
            self.pa.free_page(p)  # a file page is released by dropping references only

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def file_ref_drop(self, data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(sorted(self.files)))
        self.files[p] -= 1
        assert self.pa.put_file_page(p) == self.files[p]
        if not self.files[p]:
            del self.files[p]
            del self.live[p]
            self.freed.add(p)
            with pytest.raises(DoubleFree):
                self.pa.put_file_page(p)

    @rule(offset=st.integers(0, 47), n=st.integers(1, 4))
    def reserve(self, offset: int, n: int) -> None:
        pfns = set(range((BASE >> 12) + offset, (BASE >> 12) + offset + n))
        busy = (pfns - self.owned) or pfns & self.reserved or any(
            pfns & self._pages(a, o) for a, o in self.live.items())
        if busy:
            with pytest.raises(PagesInUse):
                self.pa.reserve(min(pfns) << 12, n * PAGE_SIZE)
            return
        self.pa.reserve(min(pfns) << 12, n * PAGE_SIZE)
        self.reserved |= pfns
        self.freed -= {p << 12 for p in pfns}

    @precondition(lambda self: self.reserved)
    @rule(data=st.data())
    def unreserve(self, data: st.DataObject) -> None:
        pfn = data.draw(st.sampled_from(sorted(self.reserved)))
        self.pa.unreserve(pfn << 12, PAGE_SIZE)
        self.reserved.discard(pfn)

    @invariant()
    def counts_match(self) -> None:
        st_ = self.pa.statistics()
        assert st_.reserved_pages == len(self.reserved)
        used = sum(1 << o for o in self.live.values()) + len(self.reserved)
        assert st_.total_pages == len(self.owned)
        assert st_.used_pages == used and st_.free_pages == len(self.owned) - used
        assert sorted(a.paddr for a in self.pa.leaks()) == sorted(self.live)


TestBuddyMachine = BuddyMachine.TestCase
TestBuddyMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_reserve_and_unreserve() -> None:
    pa = make(16)
    p = pa.allocate_page()
    with pytest.raises(PagesInUse):
        pa.reserve(p, PAGE_SIZE)  # in use
    pa.reserve(BASE + 5 * PAGE_SIZE, 3 * PAGE_SIZE)
    info = pa.page_info(BASE + 6 * PAGE_SIZE)
    assert info is not None and info.type == PageType.RESERVED
    st_ = pa.statistics()
    assert st_.reserved_pages == 3 and st_.free_pages == 12 and st_.used_pages == 4
    got = {pa.allocate_page() for _ in range(12)}
    assert not got & {BASE + i * PAGE_SIZE for i in (5, 6, 7)}
    with pytest.raises(OutOfMemory):
        pa.allocate_page()
    with pytest.raises(ForeignFree):
        pa.free_page(BASE + 5 * PAGE_SIZE)  # reserved is not an allocation
    with pytest.raises(PagesInUse):
        pa.unreserve(BASE + 4 * PAGE_SIZE, 2 * PAGE_SIZE)
    for g in got | {p}:
        pa.free_page(g)
    pa.unreserve(BASE + 5 * PAGE_SIZE, 3 * PAGE_SIZE)
    assert pa.statistics().free_blocks == (0, 0, 0, 0, 1, 0) and pa.statistics().reserved_pages == 0


def test_concurrent_allocation_and_free_stays_consistent() -> None:
    import threading

    pa = make(256)
    errors: list[BaseException] = []
    owned: list[set[int]] = [set() for _ in range(4)]

    def worker(i: int) -> None:
        try:
            for round_ in range(150):
                order = (round_ + i) % 3
                try:
                    owned[i].add(pa.allocate_pages(order))
                except OutOfMemory:
                    pass
                if round_ % 3 == 2:
                    pa.free_pages(owned[i].pop())
        except BaseException as e:  # noqa: BLE001 - collected for the assert
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    live = sorted(a.paddr for a in pa.leaks())
    assert live == sorted(set().union(*owned)) and len(live) == sum(map(len, owned))
    for s in owned:
        for p in s:
            pa.free_pages(p)
    assert pa.statistics().free_pages == 256 and pa.statistics().free_blocks[-1] == 8


def test_file_pages_are_reference_counted() -> None:
    pa = make(4)
    p = pa.allocate_file_page()
    info = pa.page_info(p)
    assert info is not None and info.type == PageType.FILE and info.refcount == 1
    assert pa.get_file_page(p) == 2 and pa.page_info(p).refcount == 2  # type: ignore[union-attr]
    with pytest.raises(ForeignFree):
        pa.free_page(p)
    with pytest.raises(ForeignFree):
        pa.get_file_page(pa.allocate_page())  # not a file page
    assert pa.put_file_page(p) == 1
    assert pa.put_file_page(p) == 0
    assert not pa.page_info(p).refcount  # type: ignore[union-attr]
    with pytest.raises(DoubleFree):
        pa.put_file_page(p)


def test_owns_any_is_owns_over_the_range() -> None:
    pa = make(8)
    assert pa.owns_any(BASE, PAGE_SIZE) and pa.owns_any(BASE - 1, 2) and pa.owns_any(BASE + 8 * PAGE_SIZE - 1, 100)
    assert not pa.owns_any(BASE - PAGE_SIZE, PAGE_SIZE) and not pa.owns_any(BASE + 8 * PAGE_SIZE, 1 << 20)
    assert not pa.owns_any(BASE, 0)
    for start, length in ((BASE - 3 * PAGE_SIZE, 5 * PAGE_SIZE), (BASE + 7 * PAGE_SIZE + 5, 3), (0, BASE)):
        want = any(pa.owns(p) for p in range(start - start % PAGE_SIZE, start + length, PAGE_SIZE))
        assert pa.owns_any(start, length) == want
