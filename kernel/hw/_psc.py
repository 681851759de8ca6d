"""Page State Change buffer in the GHCB shared buffer (snp.md 4.4), sans-IO.

Header (8 bytes): u16 cur_entry, u16 end_entry (inclusive), u32 reserved; then up to 253 u64
entries: [11:0] cur_page, [51:12] GFN, [55:52] operation, [56] page size, [63:57] reserved.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ._constants import PAGE_SIZE_2M, PAGE_SIZE, PAGES_PER_2M
from ._errors import PageStateChangeFormatError
from ._ghcb import GHCB_SHARED_BUFFER_SIZE

__all__ = [
    "PageStateChangeOp",
    "PageStateChangeEntry",
    "PageStateChangeBuffer",
    "PSC_HEADER",
    "PSC_ENTRY",
    "PSC_MAX_ENTRIES",
]

PSC_HEADER = struct.Struct("<HHI")
PSC_ENTRY = struct.Struct("<Q")
assert PSC_HEADER.size == 8 and PSC_ENTRY.size == 8
#: (0x7F0 - 8) / 8 = 253 (snp.md 4.4).
PSC_MAX_ENTRIES = (GHCB_SHARED_BUFFER_SIZE - PSC_HEADER.size) // PSC_ENTRY.size
assert PSC_MAX_ENTRIES == 253

_GFN_MASK = (1 << 40) - 1


class PageStateChangeOp(enum.IntEnum):
    """PSC operation (snp.md 4.4)."""

    PRIVATE = 1
    SHARED = 2
    PSMASH = 3
    UNSMASH = 4


@dataclass(frozen=True, slots=True)
class PageStateChangeEntry:
    """One PSC entry, checked on construction.

    :param gfn: guest frame (4 KiB units); 2 MiB entries must be 512-aligned.
    :param operation: a :class:`PageStateChangeOp`.
    :param huge: page size bit (True = 2 MiB).
    :param cur_page: 4 KiB pages of a 2 MiB entry already processed (0..512).
    """

    gfn: int
    operation: PageStateChangeOp
    huge: bool = False
    cur_page: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.gfn <= _GFN_MASK:
            raise PageStateChangeFormatError(f"GFN {self.gfn:#x} out of range")
        try:
            object.__setattr__(self, "operation", PageStateChangeOp(self.operation))
        except ValueError:
            raise PageStateChangeFormatError(f"unknown PSC operation {self.operation}") from None
        limit = PAGES_PER_2M if self.huge else 1
        if not 0 <= self.cur_page <= limit:
            raise PageStateChangeFormatError(f"cur_page {self.cur_page} beyond the entry")
        if self.huge and self.gfn % PAGES_PER_2M:
            raise PageStateChangeFormatError(f"2 MiB entry at unaligned GFN {self.gfn:#x}")

    @property
    def gpa(self) -> int:
        """Guest physical address of the entry's first page."""
        return self.gfn * PAGE_SIZE

    @property
    def size(self) -> int:
        """Bytes covered: 4 KiB or 2 MiB."""
        return PAGE_SIZE_2M if self.huge else PAGE_SIZE

    def encode(self) -> int:
        """The u64 entry."""
        return self.cur_page | self.gfn << 12 | int(self.operation) << 52 | int(self.huge) << 56

    @classmethod
    def decode(cls, raw: int) -> PageStateChangeEntry:
        """Decode a u64 entry.

        :raises PageStateChangeFormatError: reserved bits set, bad op or alignment.
        """
        if raw >> 57:
            raise PageStateChangeFormatError(f"PSC entry {raw:#x} has reserved bits 63:57 set")
        return cls((raw >> 12) & _GFN_MASK, (raw >> 52) & 0xF, bool(raw >> 56 & 1), raw & 0xFFF)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class PageStateChangeBuffer:
    """A whole PSC request: header indices and the entries.

    :param entries: at most 253 entries.
    :param cur_entry: first entry still to process.
    :param end_entry: index of the last valid entry (inclusive).

    .. versionadded:: 0.1
    """

    entries: tuple[PageStateChangeEntry, ...]
    cur_entry: int = 0
    end_entry: int = -1

    def __post_init__(self) -> None:
        n = len(self.entries)
        if not n:
            raise PageStateChangeFormatError("a PSC request has at least one entry")
        if n > PSC_MAX_ENTRIES:
            raise PageStateChangeFormatError(f"{n} PSC entries exceed {PSC_MAX_ENTRIES}")
        if self.end_entry == -1:
            object.__setattr__(self, "end_entry", n - 1)
        if not 0 <= self.end_entry < n or not 0 <= self.cur_entry <= 0xFFFF:
            raise PageStateChangeFormatError("PSC header indices out of range")

    @property
    def done(self) -> bool:
        """True when cur_entry is past end_entry (the guest stops re-issuing)."""
        return self.cur_entry > self.end_entry

    def encode(self) -> bytes:
        """Header plus entries, to copy into the GHCB shared buffer."""
        head = PSC_HEADER.pack(self.cur_entry, self.end_entry, 0)
        return head + b"".join(PSC_ENTRY.pack(e.encode()) for e in self.entries)

    @classmethod
    def decode(cls, raw: bytes) -> PageStateChangeBuffer:
        """Parse a shared buffer (untrusted input from the other side).

        :raises PageStateChangeFormatError: end_entry beyond 253, reserved bits, bad entries.
        """
        if len(raw) < PSC_HEADER.size:
            raise PageStateChangeFormatError("PSC buffer shorter than its header")
        cur, end, rsvd = PSC_HEADER.unpack_from(raw)
        if rsvd:
            raise PageStateChangeFormatError("PSC header reserved field non-zero")
        if end >= PSC_MAX_ENTRIES:
            raise PageStateChangeFormatError(f"PSC end_entry {end} beyond {PSC_MAX_ENTRIES - 1}")
        n = end + 1
        if len(raw) < PSC_HEADER.size + n * PSC_ENTRY.size:
            raise PageStateChangeFormatError("PSC buffer shorter than end_entry says")
        entries = tuple(
            PageStateChangeEntry.decode(PSC_ENTRY.unpack_from(raw, PSC_HEADER.size + i * PSC_ENTRY.size)[0]) for i in range(n)
        )
        return cls(entries, min(cur, n), end)

    def with_progress(self, cur_entry: int, entry: PageStateChangeEntry | None = None) -> PageStateChangeBuffer:
        """Copy with ``cur_entry`` advanced (and the entry at it replaced, for 2 MiB cur_page)."""
        entries = self.entries
        if entry is not None and cur_entry < len(entries):
            entries = entries[:cur_entry] + (entry,) + entries[cur_entry + 1 :]
        return PageStateChangeBuffer(entries, cur_entry, self.end_entry)
