"""Block allocation for copy-on-write extents: a byte map rebuilt from the authenticated tree.

The map is not stored: :meth:`Store.open` walks the index and marks every extent it references,
so the allocator can never disagree with the authenticated state.  A block referenced twice means
the image was forged (an honest store never shares blocks) and fails authentication.
"""

from __future__ import annotations

from ._errors import IntegrityError, StoreFull
from ._format import SUPERBLOCK_SLOTS, BlockRef

__all__ = ["Allocator"]


class Allocator:
    """Next-fit allocator over ``num_blocks`` blocks (the superblock slots are always in use).

    :param num_blocks: size of the device in blocks.
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= SUPERBLOCK_SLOTS:
            raise StoreFull(f"device of {num_blocks} blocks is too small")
        self._map = bytearray(num_blocks)
        self._map[:SUPERBLOCK_SLOTS] = b"\1" * SUPERBLOCK_SLOTS
        self._cursor = SUPERBLOCK_SLOTS
        self.used = SUPERBLOCK_SLOTS
        self.high_water = SUPERBLOCK_SLOTS

    @property
    def num_blocks(self) -> int:
        """Blocks managed."""
        return len(self._map)

    @property
    def free(self) -> int:
        """Free blocks (not necessarily contiguous)."""
        return len(self._map) - self.used

    def mark(self, ref: BlockRef) -> None:
        """Record that the authenticated tree references ``ref``.

        :raises IntegrityError: the extent is outside the device or already referenced.
        """
        lba, n = ref.lba, ref.nblocks
        end = lba + n
        if lba < SUPERBLOCK_SLOTS or end > len(self._map):
            raise IntegrityError("extent outside device")
        if n == 1:  # the common case, without slicing
            if self._map[lba]:
                raise IntegrityError("extent referenced twice")
            self._map[lba] = 1
        else:
            if any(self._map[lba:end]):
                raise IntegrityError("extent referenced twice")
            self._map[lba:end] = b"\1" * n
        self.used += ref.nblocks
        self.high_water = max(self.high_water, end)

    def alloc(self, nblocks: int) -> int:
        """Reserve ``nblocks`` contiguous blocks and return the first.

        :raises StoreFull: no free run that long.
        """
        want = b"\0" * nblocks
        lba = self._map.find(want, self._cursor)
        if lba < 0:
            lba = self._map.find(want, SUPERBLOCK_SLOTS)
        if lba < 0:
            raise StoreFull(f"no free extent of {nblocks} blocks")
        self._map[lba:lba + nblocks] = b"\1" * nblocks
        self.used += nblocks
        self._cursor = lba + nblocks
        self.high_water = max(self.high_water, lba + nblocks)
        return lba

    def release(self, ref: BlockRef) -> None:
        """Return an extent that the durable state no longer references."""
        self._map[ref.lba:ref.lba + ref.nblocks] = bytes(ref.nblocks)
        self.used -= ref.nblocks

    def snapshot(self) -> tuple[bytes, int, int, int]:
        """State to restore if a batch is abandoned before it touched the superblock."""
        return bytes(self._map), self._cursor, self.used, self.high_water

    def restore(self, snap: tuple[bytes, int, int, int]) -> None:
        """Undo every allocation since :meth:`snapshot`."""
        m, self._cursor, self.used, self.high_water = snap
        self._map[:] = m
