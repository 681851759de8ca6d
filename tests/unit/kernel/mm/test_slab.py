"""Slab caches: size classes, reuse, double/foreign/wrong-class free, leaks, and a buddy+slab fuzz."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from svsm.kernel.mm import (
    PAGE_SIZE, SLAB_SIZES, DoubleFree, ForeignFree, MemoryLeak, OutOfMemory, PageAllocator, PageType,
    SlabAllocator, SparseMemory,
)

BASE = 0x20_0000


def make(pages: int = 64) -> tuple[SlabAllocator, PageAllocator, SparseMemory]:
    mem = SparseMemory(1 << 32)
    pa = PageAllocator(mem)
    pa.add_range(BASE, pages * PAGE_SIZE)
    return SlabAllocator(pa), pa, mem


def test_classes_are_coconuts() -> None:
    assert SLAB_SIZES == (32, 64, 128, 256, 512, 1024, 2048)
    assert [SlabAllocator.class_size(n) for n in (1, 32, 33, 2048, 2049)] == [32, 32, 64, 2048, 0]


@pytest.mark.parametrize("size", [1, 32, 100, 513, 2048])
def test_objects_are_aligned_distinct_and_tagged(size: int) -> None:
    heap, pa, _ = make()
    cls = SlabAllocator.class_size(size)
    objs = [heap.allocate(size) for _ in range(PAGE_SIZE // cls + 1)]  # spills into a second page
    assert len(set(objs)) == len(objs) and all(o % cls == 0 for o in objs)
    pages = {o & ~(PAGE_SIZE - 1) for o in objs}
    assert len(pages) == 2
    for p in pages:
        info = pa.page_info(p)
        assert info is not None and info.type == PageType.SLAB_PAGE and SLAB_SIZES[info.tag] == cls
    s = next(c for c in heap.statistics().classes if c.size == cls)
    assert s.pages == 2 and s.used == len(objs) and s.free == 2 * (PAGE_SIZE // cls) - len(objs)
    for o in objs:
        heap.free(o, size)
    s = next(c for c in heap.statistics().classes if c.size == cls)
    assert s.used == 0 and s.pages == 1  # one empty page kept
    assert heap.trim() == 1
    assert pa.statistics().used_pages == 0


def test_large_allocations_use_whole_blocks() -> None:
    heap, pa, _ = make()
    a = heap.allocate(2049)
    b = heap.allocate(3 * PAGE_SIZE)
    assert a % PAGE_SIZE == 0 and b % (4 * PAGE_SIZE) == 0
    assert heap.statistics().large_allocations == 2 and heap.statistics().large_pages == 5
    assert pa.page_info(b).order == 2  # type: ignore[union-attr]
    heap.free(a)
    heap.free(b, 3 * PAGE_SIZE)
    assert pa.statistics().used_pages == 0


def test_zeroed_allocation() -> None:
    heap, _, mem = make()
    p = heap.allocate(64)
    mem.write(p, b"\xaa" * 64)
    heap.free(p)
    q = heap.allocate_zeroed(64)
    assert q == p and mem.read(q, 64) == bytes(64)


def test_double_free_reports_sites() -> None:
    heap, _, _ = make()
    p = heap.allocate(40)
    heap.free(p)
    with pytest.raises(DoubleFree) as ei:
        heap.free(p)
    assert ei.value.alloc_site[0].function == "test_double_free_reports_sites"
    assert ei.value.free_site[0].lineno == ei.value.alloc_site[0].lineno + 1


@pytest.mark.parametrize("case", ["misaligned", "wrong_class", "not_ours", "page_block", "large_wrong_size"])
def test_foreign_free(case: str) -> None:
    heap, pa, _ = make()
    obj = heap.allocate(64)
    page = pa.allocate_page()
    large = heap.allocate(5000)
    target, size = {
        "misaligned": (obj + 8, None),
        "wrong_class": (obj, 128),
        "not_ours": (0x7000_0000, None),
        "page_block": (page, None),
        "large_wrong_size": (large, 100),
    }[case]
    with pytest.raises(ForeignFree):
        heap.free(target, size)
    heap.free(obj)  # the real object is still intact


def test_slab_page_cannot_be_freed_as_a_page() -> None:
    heap, pa, _ = make()
    obj = heap.allocate(32)
    with pytest.raises(ForeignFree):
        pa.free_page(obj & ~(PAGE_SIZE - 1))
    heap.free(obj)


def test_leak_report() -> None:
    heap, _, _ = make()
    a = heap.allocate(100)
    b = heap.allocate(10_000)
    with pytest.raises(MemoryLeak) as ei:
        heap.check_leaks()
    assert [(x.paddr, x.size) for x in ei.value.leaks] == sorted([(a, 128), (b, 10_000)])
    assert all(x.site[0].function == "test_leak_report" for x in ei.value.leaks)


def test_exhaustion_propagates() -> None:
    heap, _, _ = make(pages=1)
    objs = [heap.allocate(2048), heap.allocate(2048)]
    with pytest.raises(OutOfMemory):
        heap.allocate(2048)
    with pytest.raises(OutOfMemory):
        heap.allocate(0)
    for o in objs:
        heap.free(o)


class HeapMachine(RuleBasedStateMachine):
    """Like COCONUT's alloc fuzz target: Alloc / Free / Read with content checks."""

    def __init__(self) -> None:
        super().__init__()
        self.heap, self.pa, self.mem = make(pages=24)
        self.heap.track_call_sites = False
        self.live: dict[int, tuple[int, bytes]] = {}  # paddr -> (size, content)

    @rule(size=st.one_of(st.integers(1, 2048), st.integers(2049, 3 * PAGE_SIZE)), tag=st.integers(0, 255))
    def alloc(self, size: int, tag: int) -> None:
        try:
            p = self.heap.allocate(size)
        except OutOfMemory:
            order = 0 if size <= 2048 else max(0, (size - 1) >> 12).bit_length()
            assert not any(self.pa.statistics().free_blocks[order:]), "a fitting block was free"
            cls = SlabAllocator.class_size(size)
            if cls:
                assert next(c for c in self.heap.statistics().classes if c.size == cls).free == 0
            return
        for q, (n, _) in self.live.items():
            assert p + size <= q or q + n <= p, "overlap"
        data = bytes([tag]) * size
        self.mem.write(p, data)
        self.live[p] = (size, data)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(sorted(self.live)))
        size, _ = self.live.pop(p)
        self.heap.free(p, size)
        with pytest.raises((DoubleFree, ForeignFree)):
            self.heap.free(p, size)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(sorted(self.live)))
        size, content = self.live[p]
        assert self.mem.read(p, size) == content

    @precondition(lambda self: self.live)
    @rule(data=st.data(), size=st.one_of(st.integers(1, 2048), st.integers(2049, 3 * PAGE_SIZE)))
    def realloc(self, data: st.DataObject, size: int) -> None:
        p = data.draw(st.sampled_from(sorted(self.live)))
        old_size, content = self.live[p]
        try:
            q = self.heap.reallocate(p, size)
        except OutOfMemory:
            assert self.mem.read(p, old_size) == content  # untouched
            return
        kept = content[:min(old_size, size)]
        assert self.mem.read(q, len(kept)) == kept
        del self.live[p]
        for r, (n, _) in self.live.items():
            assert q + size <= r or r + n <= q, "overlap"
        new = kept + bytes([content[0]]) * (size - len(kept))
        self.mem.write(q, new)
        self.live[q] = (size, new)

    @rule()
    def trim(self) -> None:
        self.heap.trim()

    @invariant()
    def consistent(self) -> None:
        leaks = self.heap.leaks()
        assert sorted(x.paddr for x in leaks) == sorted(self.live)
        st_ = self.heap.statistics()
        assert sum(c.used for c in st_.classes) + st_.large_allocations == len(self.live)
        slab_pages = sum(c.pages for c in st_.classes)
        assert self.pa.statistics().used_pages == slab_pages + st_.large_pages


TestHeapMachine = HeapMachine.TestCase
TestHeapMachine.settings = settings(max_examples=30, stateful_step_count=40, deadline=None)


def test_concurrent_slab_use_keeps_objects_distinct() -> None:
    import threading

    heap, pa, mem = make(pages=64)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        mine: list[int] = []
        try:
            for n in range(200):
                size = (32, 100, 700)[(n + i) % 3]
                p = heap.allocate(size)
                mem.write(p, bytes([i]) * size)
                mine.append(p)
                if n % 2:
                    q = mine.pop(0)
                    assert mem.read(q, 32) == bytes([i]) * 32  # nobody else wrote into it
                    heap.free(q)
            for q in mine:
                heap.free(q)
        except BaseException as e:  # noqa: BLE001 - collected for the assert
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    heap.check_leaks()
    heap.trim()
    pa.check_leaks()


def test_reallocate_in_place_and_moving() -> None:
    heap, pa, mem = make()
    p = heap.allocate(40)
    mem.write(p, b"x" * 40)
    assert heap.reallocate(p, 60) == p  # same 64-byte class
    q = heap.reallocate(p, 300)
    assert q != p and mem.read(q, 40) == b"x" * 40
    big = heap.reallocate(q, 5000)
    assert big % PAGE_SIZE == 0 and mem.read(big, 40) == b"x" * 40
    assert heap.reallocate(big, 7000) == big  # same 2-page block
    small = heap.reallocate(big, 16)
    assert mem.read(small, 16) == b"x" * 16
    with pytest.raises(ForeignFree):
        heap.reallocate(big, 10)
    heap.free(small)
    heap.check_leaks()
