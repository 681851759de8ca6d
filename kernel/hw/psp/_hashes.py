"""QEMU's SEV hashes table for measured direct boot (``-kernel/-initrd/-append``).

QEMU (target/i386/sev.c, ``sev_add_kernel_loader_hashes``) writes this table into the page
named by the firmware's SEV_HASH_TABLE_RV_GUID entry, at that GPA's offset within the page;
the page is then measured as a NORMAL page (snp.md 3.2, SNP_KERNEL_HASHES).  OVMF checks
the kernel, initrd and command line it loads against it.

Layout (packed, little-endian): header ``{GUID, u16 length}`` then three entries
``{GUID, u16 length, SHA-256[32]}`` in the order cmdline, initrd, kernel; ``length`` of the
header is the unpadded table size (168), of each entry 50; the table is zero-padded to a
multiple of 16 bytes (176).  The command line is hashed with its terminating NUL (an empty
command line hashes ``b"\\0"``); a missing initrd hashes as the empty string.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import uuid

__all__ = ["SEV_HASH_TABLE_ENTRY", "SEV_HASH_TABLE_HEADER", "SevHashes",
           "SEV_HASH_TABLE_HEADER_GUID", "SEV_KERNEL_ENTRY_GUID", "SEV_INITRD_ENTRY_GUID",
           "SEV_CMDLINE_ENTRY_GUID"]  # fmt: skip

SEV_HASH_TABLE_HEADER_GUID = uuid.UUID("9438d606-4f22-4cc9-b479-a793d411fd21")
SEV_KERNEL_ENTRY_GUID = uuid.UUID("4de79437-abd2-427f-b835-d5b172d2045b")
SEV_INITRD_ENTRY_GUID = uuid.UUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
SEV_CMDLINE_ENTRY_GUID = uuid.UUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")

SEV_HASH_TABLE_HEADER = struct.Struct("<16sH")
SEV_HASH_TABLE_ENTRY = struct.Struct("<16sH32s")
assert SEV_HASH_TABLE_HEADER.size == 18 and SEV_HASH_TABLE_ENTRY.size == 50
_TABLE_SIZE = SEV_HASH_TABLE_HEADER.size + 3 * SEV_HASH_TABLE_ENTRY.size
_PADDED_SIZE = (_TABLE_SIZE + 15) & ~15
assert (_TABLE_SIZE, _PADDED_SIZE) == (168, 176)
PAGE_SIZE = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class SevHashes:
    """SHA-256 digests of what QEMU boots directly.

    .. versionadded:: 0.1
    """

    kernel: bytes
    initrd: bytes
    cmdline: bytes

    @classmethod
    def of(cls, kernel: bytes, initrd: bytes | None = None, append: str | None = None) -> SevHashes:
        """Hash the kernel image, initrd and command line exactly as QEMU does."""
        cmdline = (append.encode() if append else b"") + b"\0"
        return cls(
            kernel=hashlib.sha256(kernel).digest(),
            initrd=hashlib.sha256(initrd or b"").digest(),
            cmdline=hashlib.sha256(cmdline).digest(),
        )

    def table(self) -> bytes:
        """The padded table (176 bytes)."""
        out = SEV_HASH_TABLE_HEADER.pack(SEV_HASH_TABLE_HEADER_GUID.bytes_le, _TABLE_SIZE)
        for guid, digest in (
            (SEV_CMDLINE_ENTRY_GUID, self.cmdline),
            (SEV_INITRD_ENTRY_GUID, self.initrd),
            (SEV_KERNEL_ENTRY_GUID, self.kernel),
        ):
            out += SEV_HASH_TABLE_ENTRY.pack(guid.bytes_le, SEV_HASH_TABLE_ENTRY.size, digest)
        return out + bytes(_PADDED_SIZE - _TABLE_SIZE)

    def page(self, offset: int) -> bytes:
        """A 4 KiB page with the table at ``offset`` (the table GPA's offset in its page).

        :raises ValueError: the table would cross the page end.
        """
        table = self.table()
        if not 0 <= offset <= PAGE_SIZE - len(table):
            raise ValueError(f"hash table offset {offset:#x} does not fit in a page")
        return bytes(offset) + table + bytes(PAGE_SIZE - offset - len(table))
