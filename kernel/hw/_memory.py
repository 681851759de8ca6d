"""Sparse system-physical memory with SEV memory encryption (AES-XTS tweaked by address).

Observable model (DESIGN.md "The simulated platform"): DRAM holds bytes; a guest access with
C=1 goes through the guest's key, tweaked by the system-physical address (AES-XTS stands in for
SEV's XEX mode); an access with C=0, and every host access, sees DRAM as it is.

To keep the hot path cheap, a page is *stored* in one of two forms:

* **plaintext form** (sfn in ``_plain``): the bytes a C=1 guest read returns; DRAM content is
  ``XTS_encrypt(key, tweak=spa, bytes)``, computed only when somebody observes raw DRAM;
* **raw form**: the DRAM bytes themselves;
* **plaintext-zero** (bit set in ``_zero``): a C=1 read returns zeros, nothing is allocated; the
  page is materialised on its first partial write or when the host observes it.

A page absent from the store (and not plaintext-zero) is raw zeros.  Conversions happen only when a write needs the other
form, so the guest's private traffic never touches AES, and what anyone can observe is the same as
if every private write had been encrypted immediately.  Per-page state is one ``bytearray`` and
one set membership; a 64 GiB guest with nothing touched costs a few dicts.

This module does no access checks: it is the memory controller.  RMP checks live in
:mod:`._views` and :mod:`._rmp`.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ._constants import PAGE_SHIFT, PAGE_SIZE

__all__ = ["PhysicalMemory", "MemoryStatistics"]

from typing import NamedTuple

_ZERO_PAGE = bytes(PAGE_SIZE)


class MemoryStatistics(NamedTuple):
    """Counters of :class:`PhysicalMemory` (house rule 10)."""

    size: int
    backed_pages: int
    plaintext_form_pages: int
    zero_pages: int
    encryptions: int
    decryptions: int


class PhysicalMemory:
    """System-physical memory of one machine, sparse, page-granular.

    :param size: bytes of memory (multiple of 4 KiB).
    :param key: 64-byte AES-256-XTS key of the guest (two distinct 32-byte halves).

    .. versionadded:: 0.1
    """

    __slots__ = ("size", "npages", "_pages", "_plain", "_zero", "_nzero", "_key", "encryptions", "decryptions",
                 "_written")

    def __init__(self, size: int, key: bytes) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"memory size {size:#x} must be a positive multiple of 4 KiB")
        if len(key) != 64 or key[:32] == key[32:]:
            raise ValueError("AES-XTS key must be 64 bytes with two different halves")
        self.size = size
        self.npages = size >> PAGE_SHIFT
        self._pages: dict[int, bytearray] = {}
        self._plain: set[int] = set()
        #: Bitmap of plaintext-zero pages, allocated on first use (npages / 8 bytes).
        self._zero: bytearray | None = None
        self._nzero = 0
        self._key = key
        self.encryptions = 0
        self.decryptions = 0
        #: The controller's own record of written frames (bitmap), None while not tracking.
        self._written: bytearray | None = None

    # -- trusted write record ------------------------------------------------------------------
    def track_writes(self, on: bool) -> None:
        """Start (clearing the record) or stop the memory controller's record of written frames.

        Unlike the hypervisor's dirty log, nobody outside can clear or forge it: every write path
        marks it (C=1 and raw writes, plaintext pages handed out by :meth:`plaintext_page`,
        zeroing, discarding).  It models RMPADJUST write-protection of pages sent during
        migration (a guest write faults and the SVSM records the page).
        """
        self._written = bytearray((self.npages + 7) >> 3) if on else None

    def take_written(self, lo: int, hi: int) -> bytes:
        """The record for frames ``[lo, hi)`` (bit i, LSB first = frame ``lo + i``), cleared.

        :raises ValueError: tracking is off, or the range is outside memory.
        """
        w = self._written
        if w is None:
            raise ValueError("write tracking is off")
        if not 0 <= lo <= hi <= self.npages:
            raise ValueError(f"frames [{lo:#x}, {hi:#x}) outside memory")
        n = hi - lo
        if not lo & 7:  # whole bytes: slice and clear
            a, b = lo >> 3, (hi + 7) >> 3
            out = bytearray(w[a:b])
            if n & 7:
                out[-1] &= (1 << (n & 7)) - 1
                w[b - 1] &= ~((1 << (n & 7)) - 1) & 0xFF
                w[a : b - 1] = bytes(b - 1 - a)
            else:
                w[a:b] = bytes(b - a)
            return bytes(out)
        out = bytearray((n + 7) >> 3)
        for i in range(n):
            s = lo + i
            if w[s >> 3] >> (s & 7) & 1:
                out[i >> 3] |= 1 << (i & 7)
                w[s >> 3] &= ~(1 << (s & 7)) & 0xFF
        return bytes(out)

    def _mark_run(self, sfn: int, count: int) -> None:
        w = self._written
        for s in range(sfn, sfn + count):
            w[s >> 3] |= 1 << (s & 7)  # type: ignore[index]

    # -- crypto ------------------------------------------------------------------------------
    def _xts(self, sfn: int, data: bytes, encrypt: bool) -> bytes:
        tweak = (sfn << PAGE_SHIFT).to_bytes(16, "little")
        cipher = Cipher(algorithms.AES(self._key), modes.XTS(tweak))
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        if encrypt:
            self.encryptions += 1
        else:
            self.decryptions += 1
        return ctx.update(data) + ctx.finalize()

    def check_sfn(self, sfn: int) -> None:
        """:raises ValueError: ``sfn`` is not a page of this memory (a simulator bug, not a fault)."""
        if not 0 <= sfn < self.npages:
            raise ValueError(f"system frame {sfn:#x} outside memory")

    # -- plaintext (C=1) side ------------------------------------------------------------------
    def plaintext_page(self, sfn: int) -> bytearray:
        """Return the live plaintext-form page for ``sfn``, converting it if needed.

        The returned bytearray *is* the page: writes to it are C=1 writes.  Used by the VMSA
        accessors and the C=1 access paths; never hand it to untrusted code.  The caller may
        write it, so the write record marks the frame.
        """
        w = self._written
        if w is not None:
            w[sfn >> 3] |= 1 << (sfn & 7)
        return self._plaintext(sfn)

    def _plaintext(self, sfn: int) -> bytearray:
        if sfn in self._plain:
            return self._pages[sfn]
        if self._is_zero(sfn):
            self._clear_zero(sfn)
            page = bytearray(PAGE_SIZE)
        else:
            raw = self._pages.get(sfn)
            page = bytearray(self._xts(sfn, bytes(raw) if raw is not None else _ZERO_PAGE, False))
        self._pages[sfn] = page
        self._plain.add(sfn)
        return page

    def read_plain(self, sfn: int, offset: int, length: int) -> bytes:
        """C=1 read of ``length`` bytes at ``offset`` inside page ``sfn``."""
        if sfn in self._plain:
            return bytes(self._pages[sfn][offset : offset + length])
        if self._nzero and self._is_zero(sfn):
            return bytes(length)
        return bytes(self._plaintext(sfn)[offset : offset + length])

    def write_plain(self, sfn: int, offset: int, data: bytes) -> None:
        """C=1 write inside page ``sfn``."""
        w = self._written
        if w is not None:
            w[sfn >> 3] |= 1 << (sfn & 7)
        if sfn in self._plain:
            self._pages[sfn][offset : offset + len(data)] = data
        else:
            self._plaintext(sfn)[offset : offset + len(data)] = data

    # -- raw (C=0 / host / DMA) side -------------------------------------------------------------
    def read_raw(self, sfn: int, offset: int, length: int) -> bytes:
        """What DRAM holds: ciphertext for plaintext-form pages, bytes as stored otherwise."""
        page = self._pages.get(sfn)
        if page is None:
            if self._nzero and self._is_zero(sfn):
                return self._xts(sfn, _ZERO_PAGE, True)[offset : offset + length]
            return bytes(length)
        if sfn in self._plain:
            return self._xts(sfn, bytes(page), True)[offset : offset + length]
        return bytes(page[offset : offset + length])

    def write_raw(self, sfn: int, offset: int, data: bytes) -> None:
        """Write DRAM directly (C=0 guest write, host write, DMA)."""
        if self._written is not None:
            self._mark_run(sfn, 1)
        page = self._pages.get(sfn)
        if page is None:
            if self._nzero and self._is_zero(sfn):
                self._clear_zero(sfn)
                page = self._pages[sfn] = bytearray(self._xts(sfn, _ZERO_PAGE, True))
            else:
                page = self._pages[sfn] = bytearray(PAGE_SIZE)
        elif sfn in self._plain:
            page[:] = self._xts(sfn, bytes(page), True)
            self._plain.discard(sfn)
        page[offset : offset + len(data)] = data

    def discard(self, sfn: int) -> None:
        """Drop the page's backing: DRAM reads as zeros again (a freshly allocated host page)."""
        if self._written is not None:
            self._mark_run(sfn, 1)
        self._pages.pop(sfn, None)
        self._plain.discard(sfn)
        if self._nzero:
            self._clear_zero(sfn)

    def discard_run(self, sfn: int, count: int) -> None:
        """:meth:`discard` of ``count`` pages from ``sfn`` on."""
        if self._written is not None:
            self._mark_run(sfn, count)
        pages = self._pages
        for s in pages.keys() & range(sfn, sfn + count):
            del pages[s]
        self._plain.difference_update(range(sfn, sfn + count))
        if self._nzero:
            for s in range(sfn, sfn + count):
                self._clear_zero(s)

    # -- plaintext-zero pages ---------------------------------------------------------------------
    def _is_zero(self, sfn: int) -> bool:
        z = self._zero
        return z is not None and bool(z[sfn >> 3] >> (sfn & 7) & 1)

    def _clear_zero(self, sfn: int) -> None:
        z = self._zero
        if z is not None and z[sfn >> 3] >> (sfn & 7) & 1:
            z[sfn >> 3] &= ~(1 << (sfn & 7)) & 0xFF
            self._nzero -= 1

    def zero_plain(self, sfn: int) -> None:
        """Make the page's plaintext all zeros (a C=1 write of 4096 zero bytes) without allocating.

        Costs one bit; DRAM then holds the encryption of a zero page, computed only if observed.
        """
        if self._written is not None:
            self._mark_run(sfn, 1)
        if sfn in self._plain:
            self._plain.discard(sfn)
        self._pages.pop(sfn, None)
        if self._zero is None:
            self._zero = bytearray((self.npages + 7) >> 3)
        if not self._zero[sfn >> 3] >> (sfn & 7) & 1:
            self._zero[sfn >> 3] |= 1 << (sfn & 7)
            self._nzero += 1

    def zero_plain_run(self, sfn: int, count: int) -> None:
        """:meth:`zero_plain` of ``count`` pages from ``sfn`` on."""
        if self._written is not None:
            self._mark_run(sfn, count)
        pages = self._pages
        for s in pages.keys() & range(sfn, sfn + count):
            del pages[s]
        self._plain.difference_update(range(sfn, sfn + count))
        if self._zero is None:
            self._zero = bytearray((self.npages + 7) >> 3)
        z = self._zero
        if not sfn & 7 and not count & 7:  # whole bitmap bytes
            lo, hi = sfn >> 3, (sfn + count) >> 3
            self._nzero += count - int.from_bytes(z[lo:hi], "little").bit_count()
            z[lo:hi] = b"\xff" * (hi - lo)
            return
        n = 0
        for s in range(sfn, sfn + count):
            if not z[s >> 3] >> (s & 7) & 1:
                z[s >> 3] |= 1 << (s & 7)
                n += 1
        self._nzero += n

    def statistics(self) -> MemoryStatistics:
        """Snapshot of the counters."""
        return MemoryStatistics(self.size, len(self._pages), len(self._plain), self._nzero, self.encryptions, self.decryptions)
