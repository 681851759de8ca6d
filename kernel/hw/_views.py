"""Memory access through the RMP checks of snp.md 5.4: the guest view and the host view.

A :class:`GuestView` is what code running on one vCPU at one VMPL can touch; a :class:`HostView`
is what the hypervisor can touch.  Protocol code reaches guest memory only through these; the
raw page store (:class:`~._memory.PhysicalMemory`) is for the CPU and the AMD-SP.

Guest access with C=1 (``c_bit=True``), Table 15-39 order: RMP-covered, guest-owned (ASID),
reverse map (GPA), mutable -> NPF; VALIDATED -> #VC 0x404; VMPL permission -> NPF (VMPL bit).
Guest write with C=0 to a page that is not hypervisor-owned -> NPF.  Host write to a page that is
not hypervisor-owned -> #PF with bit 31 (RMP).  Host reads of private pages return ciphertext.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._constants import (
    NPF_ENC,
    NPF_VMPL,
    PAGE_SHIFT,
    PAGE_SIZE,
    PF_PRESENT,
    PF_RMP,
    PF_WRITE,
    VC_PAGE_NOT_VALIDATED,
    VmplPermission,
)
from ._errors import HostPageFault, NestedPageFault, VmmCommunicationException
from ._rmp import A, ASID_SHIFT, ATTR_MASK, CHUNK_MASK, CHUNK_SHIFT, GFN_SHIFT, OWNER_MASK, PERM_SHIFT, VAL

if TYPE_CHECKING:
    from ._platform import Platform

__all__ = ["GuestView", "HostView"]

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_READ = int(VmplPermission.READ)
_RW = int(VmplPermission.READ | VmplPermission.WRITE)
_MASK = PAGE_SIZE - 1


class GuestView:
    """Memory as seen by guest code on ``vcpu_index`` running at ``vmpl``.

    :param platform: the machine.
    :param vmpl: privilege level the accesses are made at (0 = the SVSM).
    :param vcpu_index: the vCPU (for fault reporting and statistics only).
    :raises NestedPageFault: from any access, see module docstring.
    :raises VmmCommunicationException: access to a private page that is not validated.

    .. versionadded:: 0.1
    """

    __slots__ = ("platform", "vmpl", "vcpu_index", "_mem", "_rmp", "_owner_bits", "_perm_shift", "_npages")

    def __init__(self, platform: Platform, vmpl: int, vcpu_index: int = 0) -> None:
        self.platform = platform
        self.vmpl = vmpl
        self.vcpu_index = vcpu_index
        self._mem = platform.memory
        self._rmp = platform.rmp
        self._owner_bits = A | (platform.asid << ASID_SHIFT)
        self._perm_shift = PERM_SHIFT + 8 * vmpl
        self._npages = platform.memory.npages

    def _translate(self, gfn: int, gpa: int, write: bool, enc: bool) -> int:
        """GPA frame -> system frame through the hypervisor's nested page table."""
        npt = self.platform.npt
        sfn = npt.get(gfn, gfn) if npt else gfn
        if sfn is None or not 0 <= gfn < self._npages or not 0 <= sfn < self._npages:
            raise NestedPageFault(gpa, (PF_WRITE if write else 0) | (NPF_ENC if enc else 0))
        return sfn

    def _check_private(self, gpa: int, write: bool) -> int:
        """Run the C=1 checks for the page holding ``gpa``; return its system frame."""
        gfn = gpa >> PAGE_SHIFT
        npt = self.platform.npt
        sfn = npt.get(gfn, gfn) if npt else gfn  # _translate, inlined: the hottest path of all
        if sfn is None or not 0 <= gfn < self._npages or not 0 <= sfn < self._npages:
            raise NestedPageFault(gpa, (PF_WRITE if write else 0) | NPF_ENC)
        rmp = self._rmp
        ci = sfn >> CHUNK_SHIFT
        c = rmp._attr.get(ci)
        if c is not None:
            e = c[sfn & CHUNK_MASK]
            g = rmp._gfn[ci][sfn & CHUNK_MASK]
        else:
            b = rmp._big.get(ci)
            if b is None:
                raise NestedPageFault(gpa, PF_RMP | NPF_ENC | PF_PRESENT | (PF_WRITE if write else 0))
            e = b & ATTR_MASK
            g = (b >> GFN_SHIFT) + (sfn & CHUNK_MASK)
        if e & OWNER_MASK != self._owner_bits or g != gfn:
            raise NestedPageFault(gpa, PF_RMP | NPF_ENC | PF_PRESENT | (PF_WRITE if write else 0))
        if not e & VAL:
            raise VmmCommunicationException(VC_PAGE_NOT_VALIDATED, gpa)
        need = _RW if write else _READ
        if (e >> self._perm_shift) & need != need:
            raise NestedPageFault(gpa, PF_RMP | NPF_ENC | NPF_VMPL | PF_PRESENT | (PF_WRITE if write else 0))
        return sfn

    def read(self, gpa: int, length: int, *, c_bit: bool = True) -> bytes:
        """Read ``length`` bytes at ``gpa`` (may cross pages).

        :param c_bit: True for a private (encrypted) access, False for shared.
        """
        if length < 0:
            raise ValueError("negative length")
        off = gpa & _MASK
        if off + length <= PAGE_SIZE:  # fast path: one page
            if c_bit:
                sfn = self._check_private(gpa, False)
                return self._mem.read_plain(sfn, off, length)
            sfn = self._translate(gpa >> PAGE_SHIFT, gpa, False, False)
            return self._mem.read_raw(sfn, off, length)
        out = bytearray()
        while length:
            n = min(length, PAGE_SIZE - (gpa & _MASK))
            out += self.read(gpa, n, c_bit=c_bit)
            gpa += n
            length -= n
        return bytes(out)

    def write(self, gpa: int, data: bytes, *, c_bit: bool = True) -> None:
        """Write ``data`` at ``gpa`` (may cross pages; every page is checked before any is written).

        :param c_bit: True for a private (encrypted) access, False for shared.
        """
        off = gpa & _MASK
        if off + len(data) <= PAGE_SIZE:
            if c_bit:
                self._mem.write_plain(self._check_private(gpa, True), off, data)
            else:
                self._mem.write_raw(self._check_write(gpa, False), off, data)
            dirty = self.platform.dirty_log
            if dirty is not None:
                dirty.add(gpa >> PAGE_SHIFT)
            return
        chunks = []
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, PAGE_SIZE - ((gpa + pos) & _MASK))
            self._check_write(gpa + pos, c_bit)
            chunks.append((gpa + pos, data[pos : pos + n]))
            pos += n
        for addr, chunk in chunks:
            self.write(addr, chunk, c_bit=c_bit)

    def write_fields(self, page_gpa: int, fields: Sequence[tuple[int, bytes]]) -> None:
        """C=1 writes of several ``(offset, data)`` pieces inside the page at ``page_gpa``.

        The page is checked once, as one TLB fill serves every access to a page until the
        next invalidation; the pieces are written in order.

        :raises ValueError: a piece leaves the page.
        """
        for off, data in fields:
            if not 0 <= off <= PAGE_SIZE - len(data):
                raise ValueError(f"field at {off:#x} (+{len(data)}) leaves the page")
        sfn = self._check_private(page_gpa & ~_MASK, True)
        write = self._mem.write_plain
        for off, data in fields:
            write(sfn, off, data)
        dirty = self.platform.dirty_log
        if dirty is not None:
            dirty.add(page_gpa >> PAGE_SHIFT)

    def exchange(self, gpa: int, data: bytes) -> bytes:
        """C=1 ``xchg``: write ``data`` at ``gpa`` and return what was there (one page).

        One locked read-modify-write access, so one RMP check with write intent.

        :raises ValueError: the range leaves the page.
        """
        off = gpa & _MASK
        if off + len(data) > PAGE_SIZE:
            raise ValueError("an exchange stays inside one page")
        sfn = self._check_private(gpa, True)
        mem = self._mem
        old = mem.read_plain(sfn, off, len(data))
        mem.write_plain(sfn, off, data)
        dirty = self.platform.dirty_log
        if dirty is not None:
            dirty.add(gpa >> PAGE_SHIFT)
        return old

    def zero(self, gpa: int, size: int) -> None:
        """C=1 write of ``size`` zero bytes at ``gpa``, same checks as :meth:`write`.

        Whole pages become plaintext-zero without allocating memory (the SVSM zeroes every page
        it validates for the guest); partial pages are ordinary writes.
        """
        if size < 0:
            raise ValueError("negative size")
        if size == PAGE_SIZE and not gpa & _MASK:  # one whole page: what PVALIDATE 4K zeroes
            self._mem.zero_plain(self._check_private(gpa, True))
            dirty = self.platform.dirty_log
            if dirty is not None:
                dirty.add(gpa >> PAGE_SHIFT)
            return
        end = gpa + size
        pages = []
        runs = []  # (gpa, sfn, page count) of whole 2 MiB chunks
        addr = gpa
        rmp, chunk_pages = self._rmp, 1 << CHUNK_SHIFT
        while addr < end:
            n = min(end - addr, PAGE_SIZE - (addr & _MASK))
            sfn = self._check_private(addr, True)
            gfn = addr >> PAGE_SHIFT
            if (n == PAGE_SIZE and not self.platform.npt and not gfn & CHUNK_MASK and end - addr >= chunk_pages * PAGE_SIZE
                    and (sfn >> CHUNK_SHIFT) not in rmp._attr and (sfn >> CHUNK_SHIFT) in rmp._big):  # fmt: skip
                # One 2 MiB RMP entry and an identity NPT: every page of the chunk passes the
                # same checks as its first one (same attributes, GPA = base + index).
                runs.append((addr, sfn, chunk_pages))
                addr += chunk_pages * PAGE_SIZE
                continue
            pages.append((addr, n, sfn))
            addr += n
        mem = self._mem
        dirty = self.platform.dirty_log
        for addr, n, sfn in pages:
            if n == PAGE_SIZE:
                mem.zero_plain(sfn)
            else:
                mem.write_plain(sfn, addr & _MASK, bytes(n))
            if dirty is not None:
                dirty.add(addr >> PAGE_SHIFT)
        for addr, sfn, count in runs:
            mem.zero_plain_run(sfn, count)
            if dirty is not None:
                dirty.update(range(addr >> PAGE_SHIFT, (addr >> PAGE_SHIFT) + count))

    def _check_write(self, gpa: int, c_bit: bool) -> int:
        if c_bit:
            return self._check_private(gpa, True)
        sfn = self._translate(gpa >> PAGE_SHIFT, gpa, True, False)
        if self._rmp.raw(sfn)[0] & A:
            raise NestedPageFault(gpa, PF_RMP | PF_PRESENT | PF_WRITE)
        return sfn

    def read_u64(self, gpa: int, *, c_bit: bool = True) -> int:
        """Read a little-endian u64."""
        return _U64.unpack(self.read(gpa, 8, c_bit=c_bit))[0]  # type: ignore[no-any-return]

    def write_u64(self, gpa: int, value: int, *, c_bit: bool = True) -> None:
        """Write a little-endian u64."""
        self.write(gpa, _U64.pack(value), c_bit=c_bit)

    def read_u32(self, gpa: int, *, c_bit: bool = True) -> int:
        """Read a little-endian u32."""
        return _U32.unpack(self.read(gpa, 4, c_bit=c_bit))[0]  # type: ignore[no-any-return]

    def write_u32(self, gpa: int, value: int, *, c_bit: bool = True) -> None:
        """Write a little-endian u32."""
        self.write(gpa, _U32.pack(value), c_bit=c_bit)


class HostView:
    """Guest memory as the hypervisor sees it: DRAM bytes, writes refused on guest-owned pages.

    Addresses are GPAs translated through the hypervisor's own nested page table (the host maps
    guest memory the same way it maps it for the guest); ``*_spa`` methods take system addresses.

    :raises HostPageFault: a write to a page whose RMP entry is assigned.

    .. versionadded:: 0.1
    """

    __slots__ = ("platform",)

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def translate(self, gpa: int) -> int:
        """GPA -> SPA through the nested page table.

        :raises ValueError: the GPA is not backed (a hypervisor bug, not a guest fault).
        """
        gfn = gpa >> PAGE_SHIFT
        npt = self.platform.npt
        sfn = npt.get(gfn, gfn) if npt else gfn
        if sfn is None or not 0 <= gfn < self.platform.memory.npages:
            raise ValueError(f"GPA {gpa:#x} is not mapped")
        return (sfn << PAGE_SHIFT) | (gpa & _MASK)

    def read_spa(self, spa: int, length: int) -> bytes:
        """Read DRAM at a system address (ciphertext for private pages)."""
        mem = self.platform.memory
        out = bytearray()
        while length > 0:
            off = spa & _MASK
            n = min(length, PAGE_SIZE - off)
            sfn = spa >> PAGE_SHIFT
            mem.check_sfn(sfn)
            out += mem.read_raw(sfn, off, n)
            spa += n
            length -= n
        return bytes(out)

    def write_spa(self, spa: int, data: bytes) -> None:
        """Write DRAM at a system address; every page is checked before any is written."""
        mem, rmp = self.platform.memory, self.platform.rmp
        pieces = []
        pos = 0
        while pos < len(data):
            off = (spa + pos) & _MASK
            n = min(len(data) - pos, PAGE_SIZE - off)
            sfn = (spa + pos) >> PAGE_SHIFT
            mem.check_sfn(sfn)
            if rmp.raw(sfn)[0] & A:
                raise HostPageFault(spa + pos, PF_RMP | PF_WRITE | PF_PRESENT)
            pieces.append((sfn, off, data[pos : pos + n]))
            pos += n
        for sfn, off, chunk in pieces:
            mem.write_raw(sfn, off, chunk)

    def read(self, gpa: int, length: int) -> bytes:
        """Read guest memory at ``gpa`` as the host (per-page translation)."""
        out = bytearray()
        while length > 0:
            n = min(length, PAGE_SIZE - (gpa & _MASK))
            out += self.read_spa(self.translate(gpa), n)
            gpa += n
            length -= n
        return bytes(out)

    def write(self, gpa: int, data: bytes) -> None:
        """Write guest memory at ``gpa`` as the host.

        :raises HostPageFault: the page is guest- or firmware-owned; nothing was written.
        """
        pos = 0
        spans = []
        while pos < len(data):
            n = min(len(data) - pos, PAGE_SIZE - ((gpa + pos) & _MASK))
            spans.append((self.translate(gpa + pos), data[pos : pos + n]))
            pos += n
        rmp = self.platform.rmp
        for spa, _ in spans:
            if rmp.raw(spa >> PAGE_SHIFT)[0] & A:
                raise HostPageFault(spa, PF_RMP | PF_WRITE | PF_PRESENT)
        for spa, chunk in spans:
            self.write_spa(spa, chunk)
