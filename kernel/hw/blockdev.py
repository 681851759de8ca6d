"""The host's block device for the CVM's persistent state (an untrusted disk, like virtio-blk).

(Also :class:`AnchorLink`, the host's network relay to the persistence module's freshness anchor:
the other host-provided channel of the same module, like COCONUT's aproxy over vsock.)

The hypervisor serves fixed-size blocks from an *image* that belongs to the host: a file under the
CVM's state directory (:class:`FileImage`) or memory (:class:`MemoryImage`, for tests).  The
:class:`BlockDevice` in front of it models what a guest can rely on and what it cannot:

* a write is durable only after a later :meth:`BlockDevice.flush` (fsync) returns; until then it
  may sit in a volatile write cache (``volatile_cache=True``) and is lost, kept, or kept in part
  when the machine crashes;
* a :class:`FaultInjector` stops the device at any write or flush *boundary* (each block written
  and each flush is one numbered boundary) and decides which unflushed blocks survive;
* an :class:`Adversary` sees every read, write and flush and may flip bytes, drop writes, answer a
  read with another block (reorder) or with an older version of the block (replay).  The host can
  also snapshot, restore and truncate the image directly.

Nothing here is trusted by the SVSM: the persistence module authenticates every byte it reads.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from svsm.sdk import Busy, InvalidParameter, InvalidRequest, SvsmError

__all__ = [
    "BLOCK_SIZE",
    "ANCHOR_SERVICE",
    "Adversary",
    "AnchorLink",
    "BlockDevice",
    "BlockDeviceError",
    "BlockDeviceStatistics",
    "BlockImage",
    "CrashPolicy",
    "DiskAdapter",
    "FaultInjector",
    "FileImage",
    "MemoryImage",
    "SimulatedCrash",
    "TamperingAdversary",
    "STATE_IMAGE",
    "open_state_disk",
]

log = logging.getLogger(__name__)

#: Block size the device serves (the 4 KiB page size of the platform).
BLOCK_SIZE = 4096


class BlockDeviceError(SvsmError):
    """The host failed an I/O request (out of range, device stopped, short image).

    The guest cannot tell a failing disk from a malicious host; the caller treats its on-disk
    state as unknown until it re-reads it.
    """


class SimulatedCrash(BlockDeviceError):
    """The fault injector stopped the machine at a write or flush boundary.

    Tests catch it, drop every in-memory object of the crashed run, and reopen from the image.
    """


class BlockImage(Protocol):
    """Host storage behind the device: whole blocks, durable after :meth:`sync`."""

    block_size: int

    def num_blocks(self) -> int:
        """Current size in blocks."""
        ...

    def read_block(self, lba: int) -> bytes:
        """Contents of block ``lba`` (zeros if never written)."""
        ...

    def write_block(self, lba: int, data: bytes) -> None:
        """Replace block ``lba``."""
        ...

    def sync(self) -> None:
        """Make every earlier write durable."""
        ...


class MemoryImage:
    """A sparse in-memory image (tests, benchmarks of the store core without a disk)."""

    def __init__(self, num_blocks: int, block_size: int = BLOCK_SIZE) -> None:
        self.block_size = block_size
        self._n = num_blocks
        self._blocks: dict[int, bytes] = {}
        self.syncs = 0

    def num_blocks(self) -> int:
        """Size in blocks."""
        return self._n

    def read_block(self, lba: int) -> bytes:
        """Block contents, zeros if never written."""
        return self._blocks.get(lba, bytes(self.block_size))

    def write_block(self, lba: int, data: bytes) -> None:
        """Replace a block (no durability model: that is the device's job)."""
        self._blocks[lba] = bytes(data)

    def sync(self) -> None:
        """Count syncs (memory is as durable as it gets)."""
        self.syncs += 1

    def snapshot(self) -> dict[int, bytes]:
        """Copy of the whole image (the host keeping an old disk to replay later)."""
        return dict(self._blocks)

    def restore(self, snap: dict[int, bytes]) -> None:
        """Put back an image taken with :meth:`snapshot`."""
        self._blocks = dict(snap)

    def truncate(self, num_blocks: int) -> None:
        """Shrink (or grow with zeros) the image to ``num_blocks``."""
        self._n = num_blocks
        self._blocks = {k: v for k, v in self._blocks.items() if k < num_blocks}


class FileImage:
    """A file on the host's disk (sparse); :meth:`sync` is ``fsync``.

    :param path: image file, created with ``num_blocks`` blocks if missing.
    :param num_blocks: size for a new image (an existing file keeps its size).
    """

    def __init__(self, path: str | os.PathLike[str], num_blocks: int | None = None,
                 block_size: int = BLOCK_SIZE) -> None:
        self.block_size = block_size
        self.path = os.fspath(path)
        fresh = not os.path.exists(self.path)
        if fresh and num_blocks is None:
            raise BlockDeviceError(f"image {self.path} does not exist and no size was given")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if fresh:
            assert num_blocks is not None
            os.ftruncate(self._fd, num_blocks * block_size)
            os.fsync(self._fd)

    def num_blocks(self) -> int:
        """Whole blocks in the file (a truncated tail block does not count)."""
        return os.fstat(self._fd).st_size // self.block_size

    def read_block(self, lba: int) -> bytes:
        """``pread`` one block (zero-padded if the file ends inside it)."""
        data = os.pread(self._fd, self.block_size, lba * self.block_size)
        return data.ljust(self.block_size, b"\0")

    def write_block(self, lba: int, data: bytes) -> None:
        """``pwrite`` one block."""
        os.pwrite(self._fd, data, lba * self.block_size)

    def sync(self) -> None:
        """``fsync`` the image."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CrashPolicy:
    """What happens to unflushed blocks when the injected crash hits (names for parametrize)."""

    LOSE_ALL = "lose-all"
    KEEP_ALL = "keep-all"
    RANDOM = "random"
    TORN = "torn"
    ALL = (LOSE_ALL, KEEP_ALL, RANDOM, TORN)


class FaultInjector:
    """Stops the device at boundary number ``crash_at`` (0-based; None = never).

    Each block written and each flush is one boundary; the crash happens *before* that operation.
    Unflushed blocks then survive according to ``policy``: none, all, a random subset, or a random
    subset with one block torn at a 512-byte sector boundary (new head, old tail).

    :param rng: seeded :class:`random.Random` for the random policies (reproducible failures).
    """

    def __init__(self, crash_at: int | None = None, policy: str = CrashPolicy.LOSE_ALL,
                 rng: random.Random | None = None) -> None:
        if policy not in CrashPolicy.ALL:
            raise ValueError(f"unknown crash policy {policy!r}")
        self.crash_at = crash_at
        self.policy = policy
        self.rng = rng or random.Random(0)
        self.boundaries = 0

    def tick(self) -> bool:
        """Count one boundary; True when the crash must happen now."""
        hit = self.crash_at is not None and self.boundaries == self.crash_at
        self.boundaries += 1
        return hit

    def survivors(self, pending: dict[int, bytes], image: BlockImage) -> dict[int, bytes]:
        """Choose which unflushed blocks reach the image (the crash's after-effects)."""
        if self.policy == CrashPolicy.LOSE_ALL or not pending:
            return {}
        if self.policy == CrashPolicy.KEEP_ALL:
            return dict(pending)
        kept = {lba: d for lba, d in pending.items() if self.rng.random() < 0.5}
        if self.policy == CrashPolicy.TORN:
            lba = self.rng.choice(sorted(pending))
            cut = 512 * self.rng.randrange(1, image.block_size // 512)
            kept[lba] = pending[lba][:cut] + image.read_block(lba)[cut:]
        return kept


class Adversary:
    """The host's hooks on every request (default: honest).  Subclass and override."""

    def on_read(self, lba: int, data: bytes) -> bytes:
        """Return what the guest gets for block ``lba`` (``data`` is the true contents)."""
        return data

    def on_write(self, lba: int, data: bytes) -> bytes | None:
        """Return the bytes actually stored, or None to drop the write while acknowledging it."""
        return data

    def on_flush(self) -> bool:
        """Return False to acknowledge a flush without making anything durable."""
        return True


class TamperingAdversary(Adversary):
    """Ready-made attacks for tests: flips, dropped writes, reordered and replayed reads.

    :ivar flips: ``{lba: [byte offsets]}`` XOR-ed with 0x01 on every read of that block.
    :ivar remap: ``{lba: other_lba}`` a read of ``lba`` returns ``other_lba`` (swap, reorder).
    :ivar drop: predicate on lba; matching writes are acknowledged and thrown away.
    :ivar replay: when True, reads return the *oldest* version ever written to the block.
    """

    def __init__(self) -> None:
        self.flips: dict[int, list[int]] = {}
        self.remap: dict[int, int] = {}
        self.drop: Callable[[int], bool] = lambda lba: False
        self.replay = False
        self.history: dict[int, list[bytes]] = {}
        self._image: BlockImage | None = None

    def attach(self, image: BlockImage) -> None:
        """Let remapped reads reach the image."""
        self._image = image

    def on_read(self, lba: int, data: bytes) -> bytes:
        if lba in self.remap and self._image is not None:
            data = self._image.read_block(self.remap[lba])
        if self.replay and self.history.get(lba):
            data = self.history[lba][0]
        if lba in self.flips:
            buf = bytearray(data)
            for off in self.flips[lba]:
                buf[off] ^= 0x01
            data = bytes(buf)
        return data

    def on_write(self, lba: int, data: bytes) -> bytes | None:
        self.history.setdefault(lba, []).append(bytes(data))
        return None if self.drop(lba) else data


@dataclass(frozen=True)
class BlockDeviceStatistics:
    """Counters of one device (host view)."""

    reads: int
    writes: int
    flushes: int
    bytes_read: int
    bytes_written: int
    pending_blocks: int


class BlockDevice:
    """Fixed-size-block device the hypervisor serves from a host image.

    Thread-safe; the persistence module reaches it through the kernel (syscalls or grants), never
    directly.

    :param image: the host's storage.
    :param volatile_cache: hold writes until :meth:`flush` (needed for crash injection); when
        False writes go straight to the image (a file: the OS page cache) and flush is fsync.
    :param faults: optional crash injector (implies ``volatile_cache``).
    :param adversary: the host's hooks; honest by default.
    """

    def __init__(self, image: BlockImage, *, volatile_cache: bool = False,
                 faults: FaultInjector | None = None, adversary: Adversary | None = None) -> None:
        self.image = image
        self.block_size = image.block_size
        self.volatile_cache = volatile_cache or faults is not None
        self.faults = faults
        self.adversary = adversary or Adversary()
        if isinstance(self.adversary, TamperingAdversary):
            self.adversary.attach(image)
        self._pending: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._dead = False
        self._reads = self._writes = self._flushes = 0
        self._bytes_read = self._bytes_written = 0

    @property
    def num_blocks(self) -> int:
        """Size of the device in blocks, as the host currently reports it."""
        return self.image.num_blocks()

    def _check(self, lba: int, count: int) -> None:
        if self._dead:
            raise BlockDeviceError("device stopped after a crash")
        if lba < 0 or count < 0 or lba + count > self.num_blocks:
            raise BlockDeviceError(f"blocks {lba}..{lba + count} outside device of {self.num_blocks}")

    def read(self, lba: int, count: int = 1) -> bytes:
        """Read ``count`` blocks from ``lba`` (unflushed writes included, as a real cache would).

        :raises BlockDeviceError: out of range or the device is stopped.
        """
        with self._lock:
            self._check(lba, count)
            out = []
            for n in range(lba, lba + count):
                data = self._pending.get(n)
                if data is None:
                    data = self.image.read_block(n)
                out.append(self.adversary.on_read(n, data))
            self._reads += 1
            self._bytes_read += count * self.block_size
            return b"".join(out)

    def write(self, lba: int, data: bytes) -> None:
        """Write whole blocks at ``lba``; durable only after :meth:`flush`.

        :raises BlockDeviceError: bad length or range, device stopped.
        :raises SimulatedCrash: the fault injector fired at one of these blocks.
        """
        if len(data) % self.block_size:
            raise BlockDeviceError(f"write of {len(data)} bytes is not whole blocks")
        count = len(data) // self.block_size
        with self._lock:
            self._check(lba, count)
            for i in range(count):
                self._boundary()
                block = data[i * self.block_size:(i + 1) * self.block_size]
                stored = self.adversary.on_write(lba + i, block)
                if stored is None:
                    continue
                if self.volatile_cache:
                    self._pending[lba + i] = bytes(stored)
                else:
                    self.image.write_block(lba + i, stored)
            self._writes += 1
            self._bytes_written += len(data)

    def flush(self) -> None:
        """Make every earlier write durable (fsync), unless the adversary lies.

        :raises SimulatedCrash: the fault injector fired at this flush.
        """
        with self._lock:
            if self._dead:
                raise BlockDeviceError("device stopped after a crash")
            self._boundary()
            self._flushes += 1
            if not self.adversary.on_flush():
                return
            for n, data in sorted(self._pending.items()):
                self.image.write_block(n, data)
            self._pending.clear()
            self.image.sync()

    def _boundary(self) -> None:
        if self.faults is None or not self.faults.tick():
            return
        survivors = self.faults.survivors(self._pending, self.image)
        for n, data in sorted(survivors.items()):
            self.image.write_block(n, data)
        self.image.sync()
        log.debug("injected crash at boundary %d: %d of %d unflushed blocks survive",
                  self.faults.boundaries - 1, len(survivors), len(self._pending))
        self._pending.clear()
        self._dead = True
        raise SimulatedCrash(f"injected crash at boundary {self.faults.boundaries - 1}")

    def statistics(self) -> BlockDeviceStatistics:
        """Counters since creation."""
        with self._lock:
            return BlockDeviceStatistics(self._reads, self._writes, self._flushes,
                                         self._bytes_read, self._bytes_written, len(self._pending))


class DiskAdapter:
    """The device as the kernel's ``disk`` syscalls see it: byte offsets, whole blocks only.

    This is the syscall boundary: whatever a module asks for, or the host's image does, ends as a
    ``RequestError`` (a result code for the module), never as another exception in the kernel.

    :param device: the block device to serve.
    """

    def __init__(self, device: BlockDevice) -> None:
        self.device = device

    def _blocks(self, offset: int, size: int) -> tuple[int, int]:
        bs = self.device.block_size
        if offset < 0 or size < 0 or offset % bs or size % bs:
            raise InvalidParameter(f"disk I/O at {offset:#x}+{size:#x} is not {bs}-byte aligned")
        lba, count = offset // bs, size // bs
        if lba + count > self.device.num_blocks:
            raise InvalidParameter(f"disk I/O at {offset:#x}+{size:#x} ends past the device")
        return lba, count

    def read(self, offset: int, size: int) -> bytes:
        """Read ``size`` bytes at ``offset`` (both block-aligned).

        :raises InvalidParameter: misaligned or out of range.
        :raises InvalidRequest: the device failed or stopped.
        """
        lba, count = self._blocks(offset, size)
        try:
            return self.device.read(lba, count)
        except BlockDeviceError as exc:
            raise InvalidRequest(f"disk read failed: {exc}") from exc

    def write(self, offset: int, data: bytes) -> None:
        """Write whole blocks at ``offset``.

        :raises InvalidParameter: misaligned or out of range.
        :raises InvalidRequest: the device failed or stopped.
        """
        lba, _ = self._blocks(offset, len(data))
        try:
            self.device.write(lba, data)
        except BlockDeviceError as exc:
            raise InvalidRequest(f"disk write failed: {exc}") from exc

    def flush(self) -> None:
        """fsync.  :raises InvalidRequest: the device failed or stopped."""
        try:
            self.device.flush()
        except BlockDeviceError as exc:
            raise InvalidRequest(f"disk flush failed: {exc}") from exc

    def size(self) -> int:
        """Device size in bytes."""
        return self.device.num_blocks * self.device.block_size

    def close(self) -> None:
        """Close the image behind the device (a file)."""
        close = getattr(self.device.image, "close", None)
        if close is not None:
            close()


#: File name of the persistence image inside a CVM's state directory.
STATE_IMAGE = "persist.img"


def open_state_disk(state_dir: str | os.PathLike[str], size_mib: int = 64) -> DiskAdapter:
    """The host disk of a CVM whose state lives in ``state_dir`` (``svsm run --state DIR``).

    Creates ``state_dir/persist.img`` (sparse, ``size_mib``) on first use and reuses it after;
    pass the result as ``Providers.disk`` and :meth:`DiskAdapter.close` it at exit.
    """
    os.makedirs(state_dir, exist_ok=True)
    image = FileImage(os.path.join(state_dir, STATE_IMAGE), size_mib * (1 << 20) // BLOCK_SIZE)
    return DiskAdapter(BlockDevice(image))


#: Name of the kernel service the persistence module reaches its anchor through.
ANCHOR_SERVICE = "anchor"
_FRAME = struct.Struct(">I")
assert _FRAME.size == 4
_MAX_FRAME = 64 * 1024


class AnchorLink:
    """Kernel service ``anchor``: relays the persist module's frames to ``host:port`` unchanged.

    The module is sandboxed (no sockets) and the anchor protocol is authenticated end to end, so
    the relay is as untrusted as the host's network.  Register it with
    ``module_host.register_service(ANCHOR_SERVICE, AnchorLink(host, port, anchor_key))``.

    Ops: ``config`` -> JSON ``{"anchor_key": hex or ""}`` (the key to pin, if the operator gave
    one); ``exchange`` -> one frame body out, one frame body back (a TCP connection each).

    :raises Busy: (per call) the anchor is unreachable; the module retries or stops serving.
    :raises InvalidParameter: unknown op or an oversized frame.
    """

    def __init__(self, host: str, port: int, anchor_key: bytes | None = None, timeout: float = 10.0) -> None:
        self.address = (host, port)
        self.anchor_key = anchor_key
        self.timeout = timeout
        self.exchanges = 0

    def __call__(self, module: str, op: str, payload: bytes) -> bytes:
        if op == "config":
            return json.dumps({"anchor_key": self.anchor_key.hex() if self.anchor_key else ""}).encode()
        if op != "exchange" or len(payload) > _MAX_FRAME:
            raise InvalidParameter(f"anchor link: bad op {op!r} or frame size {len(payload)}")
        try:
            with socket.create_connection(self.address, timeout=self.timeout) as sock:
                sock.sendall(_FRAME.pack(len(payload)) + payload)
                (length,) = _FRAME.unpack(_recv(sock, _FRAME.size))
                if length > _MAX_FRAME:
                    raise InvalidParameter("anchor reply too large")
                reply = _recv(sock, length)
        except OSError as exc:
            raise Busy(f"anchor at {self.address[0]}:{self.address[1]} unreachable: {exc}") from None
        self.exchanges += 1
        return reply


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return bytes(buf)
