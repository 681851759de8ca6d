"""PhysMemory: SparseMemory semantics, and HW's VMPL0 private view satisfies the same interface."""

from __future__ import annotations

import struct

import pytest

from svsm.kernel.mm import (
    PAGE_SIZE, PERCPU_DATA_VADDR, PageAllocator, PerCpuAreas, PhysMemory, SparseMemory, read_u64, write_u64,
)


def test_sparse_memory_reads_zero_and_stores_only_written_pages() -> None:
    m = SparseMemory(1 << 40)
    assert isinstance(m, PhysMemory)
    assert m.read(0x1234_5000, 16) == bytes(16) and m.pages_stored() == 0
    m.write(PAGE_SIZE - 3, b"abcdef")  # crosses a page boundary
    assert m.read(PAGE_SIZE - 3, 6) == b"abcdef" and m.pages_stored() == 2
    write_u64(m, PAGE_SIZE - 4, 0x1122_3344_5566_7788)  # unaligned, crossing
    assert read_u64(m, PAGE_SIZE - 4) == 0x1122_3344_5566_7788
    assert m.read_u64(0x9000) == 0
    with pytest.raises(ValueError):
        m.read((1 << 40) - 4, 8)


class _BytesOnly:
    """A memory with only read/write: read_u64/write_u64 fall back to them."""

    def __init__(self) -> None:
        self.buf = bytearray(4 * PAGE_SIZE)

    def read(self, paddr: int, length: int) -> bytes:
        return bytes(self.buf[paddr:paddr + length])

    def write(self, paddr: int, data: bytes) -> None:
        self.buf[paddr:paddr + len(data)] = data


def test_u64_helpers_fall_back_to_bytes() -> None:
    m = _BytesOnly()
    write_u64(m, 8, 0xDEAD_BEEF)
    assert m.buf[8:16] == struct.pack("<Q", 0xDEAD_BEEF) and read_u64(m, 8) == 0xDEAD_BEEF


def test_hw_private_view_backs_allocator_and_page_tables() -> None:
    hw_testing = pytest.importorskip("svsm.kernel.hw.testing")
    platform = hw_testing.make_guest(memory_size=16 << 20, private=((0, 1 << 20),))
    view = platform.guest_view(0)  # the SVSM's VMPL0 view, C-bit set
    pages = PageAllocator(view)
    pages.add_range(0x8_0000, 64 * PAGE_SIZE)
    cpus = PerCpuAreas(view, pages, c_bit=platform.c_bit)
    cpu = cpus.create(0, apic_id=3)
    assert struct.unpack("<II", cpu.read(PERCPU_DATA_VADDR, 8)) == (0, 3)
    root = cpu.page_table.root
    plain = view.read(root, PAGE_SIZE)
    assert any(plain)  # the self-map and kernel-slot entries
    assert platform.host.read(root, PAGE_SIZE) != plain  # the host sees only ciphertext of the tables
    view.write(0x2000, b"guest bytes")
    with cpu.map_guest(0x2000) as g:
        assert g.read(0, 11) == b"guest bytes"
    cpus.shutdown()
    pages.check_leaks()
