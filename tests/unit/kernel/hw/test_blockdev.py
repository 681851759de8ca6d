"""The host block device: durability model, crash injection and the adversary hooks."""

from __future__ import annotations

import random

import pytest

from svsm.kernel.hw.blockdev import (BLOCK_SIZE, Adversary, BlockDevice, BlockDeviceError, CrashPolicy, DiskAdapter,
                                     open_state_disk,
                                     FaultInjector, FileImage, MemoryImage, SimulatedCrash,
                                     TamperingAdversary)
from svsm.sdk import InvalidParameter


def blk(byte: int) -> bytes:
    return bytes([byte]) * BLOCK_SIZE


@pytest.fixture(params=["memory", "file"])
def image(request, tmp_path):
    if request.param == "memory":
        yield MemoryImage(16)
        return
    img = FileImage(tmp_path / "disk.img", 16)
    yield img
    img.close()


def test_roundtrip_and_zero_fill(image) -> None:
    dev = BlockDevice(image)
    assert dev.num_blocks == 16
    assert dev.read(3) == bytes(BLOCK_SIZE)
    dev.write(3, blk(1) + blk(2))
    dev.flush()
    assert dev.read(3, 2) == blk(1) + blk(2)
    assert image.read_block(4) == blk(2)
    st = dev.statistics()
    assert (st.writes, st.flushes, st.bytes_written) == (1, 1, 2 * BLOCK_SIZE)


def test_rejects_out_of_range_and_partial_blocks() -> None:
    dev = BlockDevice(MemoryImage(4))
    with pytest.raises(BlockDeviceError):
        dev.read(3, 2)
    with pytest.raises(BlockDeviceError):
        dev.write(-1, blk(0))
    with pytest.raises(BlockDeviceError):
        dev.write(0, b"short")


def test_volatile_cache_holds_writes_until_flush() -> None:
    img = MemoryImage(8)
    dev = BlockDevice(img, volatile_cache=True)
    dev.write(1, blk(7))
    assert dev.read(1) == blk(7)  # the guest sees its own write
    assert img.read_block(1) == bytes(BLOCK_SIZE)  # but the disk does not have it yet
    assert dev.statistics().pending_blocks == 1
    dev.flush()
    assert img.read_block(1) == blk(7) and img.syncs == 1


@pytest.mark.parametrize("policy,expect", [(CrashPolicy.LOSE_ALL, 0), (CrashPolicy.KEEP_ALL, 2)])
def test_crash_at_flush_boundary(policy: str, expect: int) -> None:
    img = MemoryImage(8)
    dev = BlockDevice(img, faults=FaultInjector(crash_at=2, policy=policy))
    dev.write(1, blk(1) + blk(2))  # boundaries 0 and 1
    with pytest.raises(SimulatedCrash):
        dev.flush()  # boundary 2
    assert sum(img.read_block(n) != bytes(BLOCK_SIZE) for n in (1, 2)) == expect
    with pytest.raises(BlockDeviceError):
        dev.read(0)  # the machine is down


def test_crash_inside_a_multi_block_write_keeps_the_earlier_blocks_pending() -> None:
    img = MemoryImage(8)
    dev = BlockDevice(img, faults=FaultInjector(crash_at=1, policy=CrashPolicy.KEEP_ALL))
    with pytest.raises(SimulatedCrash):
        dev.write(1, blk(1) + blk(2))
    assert img.read_block(1) == blk(1)
    assert img.read_block(2) == bytes(BLOCK_SIZE)


def test_torn_write_mixes_new_head_and_old_tail() -> None:
    img = MemoryImage(4)
    img.write_block(1, blk(0xAA))
    dev = BlockDevice(img, faults=FaultInjector(crash_at=1, policy=CrashPolicy.TORN, rng=random.Random(3)))
    dev.write(1, blk(0x55))
    with pytest.raises(SimulatedCrash):
        dev.flush()
    got = img.read_block(1)
    cut = got.index(0xAA)
    assert 0 < cut < BLOCK_SIZE and cut % 512 == 0
    assert got[:cut] == b"\x55" * cut and got[cut:] == b"\xaa" * (BLOCK_SIZE - cut)


def test_injector_counts_every_boundary() -> None:
    fi = FaultInjector()
    dev = BlockDevice(MemoryImage(8), faults=fi)
    dev.write(0, blk(1) * 3)
    dev.flush()
    assert fi.boundaries == 4


def test_unknown_policy_rejected() -> None:
    with pytest.raises(ValueError):
        FaultInjector(policy="nope")


def test_adversary_drops_flips_remaps_and_replays() -> None:
    img = MemoryImage(8)
    adv = TamperingAdversary()
    dev = BlockDevice(img, adversary=adv)
    dev.write(1, blk(1))
    dev.write(1, blk(2))
    dev.write(2, blk(3))
    adv.drop = lambda lba: lba == 3
    dev.write(3, blk(4))
    assert img.read_block(3) == bytes(BLOCK_SIZE)  # acknowledged, never stored
    adv.flips = {2: [0, 100]}
    got = dev.read(2)
    assert got[0] == 2 and got[100] == 2 and got[1] == 3
    adv.flips = {}
    adv.remap = {1: 2}
    assert dev.read(1) == blk(3)
    adv.remap = {}
    adv.replay = True
    assert dev.read(1) == blk(1)  # the oldest version ever written


def test_lying_flush_makes_nothing_durable() -> None:
    class Liar(Adversary):
        def on_flush(self) -> bool:
            return False

    img = MemoryImage(4)
    dev = BlockDevice(img, volatile_cache=True, adversary=Liar())
    dev.write(0, blk(9))
    dev.flush()
    assert img.read_block(0) == bytes(BLOCK_SIZE)


def test_memory_image_snapshot_restore_truncate() -> None:
    img = MemoryImage(8)
    img.write_block(5, blk(1))
    snap = img.snapshot()
    img.write_block(5, blk(2))
    img.restore(snap)
    assert img.read_block(5) == blk(1)
    img.truncate(4)
    assert img.num_blocks() == 4 and img.read_block(5) == bytes(BLOCK_SIZE)


def test_file_image_persists_and_reports_truncation(tmp_path) -> None:
    path = tmp_path / "d.img"
    with FileImage(path, 8) as img:
        BlockDevice(img).write(2, blk(5))
        img.sync()
    with FileImage(path) as img:
        assert img.num_blocks() == 8 and img.read_block(2) == blk(5)
    with open(path, "r+b") as f:
        f.truncate(2 * BLOCK_SIZE + 100)
    with FileImage(path) as img:
        assert img.num_blocks() == 2
    with pytest.raises(BlockDeviceError):
        FileImage(tmp_path / "missing.img")


def test_disk_adapter_speaks_byte_offsets_of_whole_blocks() -> None:
    disk = DiskAdapter(BlockDevice(MemoryImage(4)))
    assert disk.size() == 4 * BLOCK_SIZE
    disk.write(BLOCK_SIZE, blk(3))
    disk.flush()
    assert disk.read(BLOCK_SIZE, BLOCK_SIZE) == blk(3)
    with pytest.raises(InvalidParameter):
        disk.read(100, BLOCK_SIZE)
    with pytest.raises(InvalidParameter):
        disk.write(0, b"x")


def test_state_disk_is_created_once_and_reused(tmp_path) -> None:
    disk = open_state_disk(tmp_path / "cvm", size_mib=1)
    assert disk.size() == 1 << 20
    disk.write(0, blk(7))
    disk.flush()
    disk.close()
    again = open_state_disk(tmp_path / "cvm", size_mib=8)  # the existing image keeps its size and data
    assert again.size() == 1 << 20 and again.read(0, BLOCK_SIZE) == blk(7)
    again.close()


def test_anchor_link_relays_frames_and_reports_unreachable_as_busy() -> None:
    import json
    import socket
    import struct
    import threading

    from svsm.kernel.hw.blockdev import AnchorLink
    from svsm.sdk import Busy

    srv = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = srv.accept()
        with conn:
            (n,) = struct.unpack(">I", conn.recv(4))
            body = b""
            while len(body) < n:
                body += conn.recv(n - len(body))
            conn.sendall(struct.pack(">I", n + 3) + b"re:" + body)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    host, port = srv.getsockname()
    link = AnchorLink(host, port, anchor_key=b"\x01" * 32)
    assert json.loads(link("persist", "config", b"")) == {"anchor_key": "01" * 32}
    assert link("persist", "exchange", b'{"type":"x"}') == b're:{"type":"x"}'
    t.join(5)
    srv.close()
    with pytest.raises(InvalidParameter):
        link("persist", "bogus", b"")
    with pytest.raises(Busy):
        link("persist", "exchange", b"{}")  # nobody listens any more
