"""The physical-memory interface mm works on, and a sparse RAM for tests.

mm never reaches the hardware model directly: anything with ``read(paddr, n)``
and ``write(paddr, data)`` will do.  In the running kernel that is HW's VMPL0
private view of guest memory; in unit tests it is :class:`SparseMemory`.
"""

from __future__ import annotations

import struct
from typing import Protocol, runtime_checkable

from ._constants import PAGE_SHIFT, PAGE_SIZE

__all__ = ["PhysMemory", "SparseMemory", "read_u64", "write_u64"]

_U64 = struct.Struct("<Q")


@runtime_checkable
class PhysMemory(Protocol):
    """Byte-addressed physical memory.  Accesses may cross page boundaries.

    Implementations raise their own typed fault for an address they refuse.
    """

    def read(self, paddr: int, length: int) -> bytes:
        """Return ``length`` bytes starting at physical address ``paddr``."""
        ...

    def write(self, paddr: int, data: bytes) -> None:
        """Store ``data`` at physical address ``paddr``."""
        ...


def read_u64(mem: PhysMemory, paddr: int) -> int:
    """Little-endian u64 at ``paddr`` (uses ``mem.read_u64`` when it has one)."""
    fast = getattr(mem, "read_u64", None)
    if fast is not None:
        return int(fast(paddr))
    return int(_U64.unpack(mem.read(paddr, 8))[0])


def write_u64(mem: PhysMemory, paddr: int, value: int) -> None:
    """Store a little-endian u64 at ``paddr``."""
    fast = getattr(mem, "write_u64", None)
    if fast is not None:
        fast(paddr, value)
    else:
        mem.write(paddr, _U64.pack(value))


class SparseMemory:
    """Zero-filled RAM of ``size`` bytes that stores only the pages written.

    :param size: bytes of physical address space; accesses beyond raise ``ValueError``.
    """

    def __init__(self, size: int = 1 << 40) -> None:
        self.size = size
        self._pages: dict[int, bytearray] = {}

    def _check(self, paddr: int, length: int) -> None:
        if paddr < 0 or length < 0 or paddr + length > self.size:
            raise ValueError(f"physical access {paddr:#x}+{length:#x} outside {self.size:#x}")

    def read(self, paddr: int, length: int) -> bytes:
        """Bytes at ``paddr`` (unwritten memory reads as zeros)."""
        self._check(paddr, length)
        out = bytearray()
        while length:
            pfn, off = paddr >> PAGE_SHIFT, paddr & (PAGE_SIZE - 1)
            n = min(length, PAGE_SIZE - off)
            page = self._pages.get(pfn)
            out += page[off:off + n] if page is not None else bytes(n)
            paddr += n
            length -= n
        return bytes(out)

    def write(self, paddr: int, data: bytes) -> None:
        """Store ``data`` at ``paddr``."""
        self._check(paddr, len(data))
        view = memoryview(data)
        while view:
            pfn, off = paddr >> PAGE_SHIFT, paddr & (PAGE_SIZE - 1)
            n = min(len(view), PAGE_SIZE - off)
            page = self._pages.get(pfn)
            if page is None:
                page = self._pages[pfn] = bytearray(PAGE_SIZE)
            page[off:off + n] = view[:n]
            paddr += n
            view = view[n:]

    def read_u64(self, paddr: int) -> int:
        """Little-endian u64 (fast path for page-table walks)."""
        off = paddr & (PAGE_SIZE - 1)
        if off <= PAGE_SIZE - 8:
            page = self._pages.get(paddr >> PAGE_SHIFT)
            return 0 if page is None else int(_U64.unpack_from(page, off)[0])
        return int(_U64.unpack(self.read(paddr, 8))[0])

    def write_u64(self, paddr: int, value: int) -> None:
        """Store a little-endian u64."""
        self.write(paddr, _U64.pack(value))

    def pages_stored(self) -> int:
        """How many pages hold data (for tests of sparseness)."""
        return len(self._pages)
