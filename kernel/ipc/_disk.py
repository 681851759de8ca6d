"""Disk providers for the ``disk`` syscalls: byte-addressed views of a block image.

The host's disk is untrusted; these adapters only translate offsets.  Any object with
``num_blocks() / read_block(lba) / write_block(lba, data) / sync()`` (the
``kernel.hw.blockdev`` image protocol) can back the syscalls through :class:`BlockDisk`.
"""

from __future__ import annotations

import threading
from typing import Any

from svsm.sdk import InvalidParameter

__all__ = ["BlockDisk", "MemoryDisk"]


class BlockDisk:
    """Byte reads/writes over a block image (read-modify-write at the edges).

    :param image: the block image.
    :param block_size: its block size in bytes.
    """

    def __init__(self, image: Any, block_size: int = 4096) -> None:
        self.image = image
        self.block_size = block_size
        self._lock = threading.Lock()

    def size(self) -> int:
        """Bytes on the disk."""
        return int(self.image.num_blocks()) * self.block_size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size():
            raise InvalidParameter(f"disk range [{offset}, +{length}) outside the disk")

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``.  :raises InvalidParameter: outside the disk."""
        self._check(offset, size)
        bs = self.block_size
        out = bytearray()
        with self._lock:
            for lba in range(offset // bs, (offset + size + bs - 1) // bs):
                out += self.image.read_block(lba)
        start = offset % bs
        return bytes(out[start : start + size])

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``.  :raises InvalidParameter: outside the disk."""
        self._check(offset, len(data))
        bs, pos, view = self.block_size, offset, memoryview(data)
        with self._lock:
            while view:
                lba, off = divmod(pos, bs)
                n = min(bs - off, len(view))
                if n == bs:
                    block = bytes(view[:n])
                else:
                    cur = bytearray(self.image.read_block(lba))
                    cur[off : off + n] = view[:n]
                    block = bytes(cur)
                self.image.write_block(lba, block)
                view, pos = view[n:], pos + n

    def flush(self) -> None:
        """Ask the image to make writes durable."""
        with self._lock:
            self.image.sync()


class MemoryDisk(BlockDisk):
    """A zero-filled volatile disk of ``size`` bytes (tests, ``svsm modules list``)."""

    class _Image:
        def __init__(self, blocks: int, bs: int) -> None:
            self.blocks = [bytes(bs)] * blocks

        def num_blocks(self) -> int:
            return len(self.blocks)

        def read_block(self, lba: int) -> bytes:
            return self.blocks[lba]

        def write_block(self, lba: int, data: bytes) -> None:
            self.blocks[lba] = bytes(data)

        def sync(self) -> None:
            return None

    def __init__(self, size: int = 4 << 20, block_size: int = 4096) -> None:
        super().__init__(self._Image(size // block_size, block_size), block_size)
