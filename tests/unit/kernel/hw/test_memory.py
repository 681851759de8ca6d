"""Memory encryption observations (DESIGN.md "The simulated platform")."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from svsm.kernel.hw import PAGE_SIZE, PhysicalMemory

KEY = bytes(range(64))


def test_ciphertext_is_aes_xts_tweaked_by_spa() -> None:
    """An independent AES-XTS computation predicts exactly what the host sees."""
    m = PhysicalMemory(1 << 20, KEY)
    m.write_plain(3, 0, b"secret" * 10)
    plain = bytes(m.plaintext_page(3))
    enc = Cipher(algorithms.AES(KEY), modes.XTS((3 * PAGE_SIZE).to_bytes(16, "little"))).encryptor()
    assert m.read_raw(3, 0, PAGE_SIZE) == enc.update(plain) + enc.finalize()


def test_ciphertext_differs_per_address_and_content() -> None:
    m = PhysicalMemory(1 << 20, KEY)
    for sfn in (1, 2):
        m.write_plain(sfn, 0, b"A" * PAGE_SIZE)
    m.write_plain(4, 0, b"B" * PAGE_SIZE)
    c1, c2, c4 = (m.read_raw(s, 0, PAGE_SIZE) for s in (1, 2, 4))
    assert c1 != c2 and c1 != c4 and b"A" * 16 not in c1
    assert m.read_plain(1, 0, 4) == b"AAAA"


def test_raw_write_then_private_read_is_garbage_decryption() -> None:
    m = PhysicalMemory(1 << 20, KEY)
    m.write_raw(5, 0, b"plain shared data")
    assert m.read_raw(5, 0, 17) == b"plain shared data"
    seen = m.read_plain(5, 0, 17)
    assert seen != b"plain shared data"
    # Reading privately did not change what DRAM holds.
    assert m.read_raw(5, 0, 17) == b"plain shared data"


def test_private_roundtrip_through_dram_is_stable() -> None:
    """Converting between storage forms never changes observations."""
    m = PhysicalMemory(1 << 20, KEY)
    m.write_plain(6, 100, b"xyz")
    ct = m.read_raw(6, 0, PAGE_SIZE)
    m.write_raw(6, 0, ct)  # host rewrites the same ciphertext: DRAM unchanged
    assert m.read_plain(6, 100, 3) == b"xyz"
    assert m.read_raw(6, 0, PAGE_SIZE) == ct


def test_untouched_pages_are_free_and_zero() -> None:
    m = PhysicalMemory(64 << 30, KEY)
    assert m.read_raw(12345, 0, 8) == bytes(8)
    st = m.statistics()
    assert st.backed_pages == 0 and st.size == 64 << 30
    m.discard(12345)
    with pytest.raises(ValueError):
        m.check_sfn(m.npages)


def test_key_and_size_checked() -> None:
    with pytest.raises(ValueError):
        PhysicalMemory(1 << 20, bytes(64))
    with pytest.raises(ValueError):
        PhysicalMemory(100, KEY)


def test_runs_match_page_by_page_operations() -> None:
    """zero_plain_run / discard_run leave exactly what the per-page calls leave."""
    a, b = PhysicalMemory(1 << 22, KEY), PhysicalMemory(1 << 22, KEY)
    for m in (a, b):
        m.write_plain(16, 0, b"plain")
        m.write_raw(17, 0, b"raw")
        m.zero_plain(18)
    for start, n in ((16, 24), (19, 5), (40, 512)):  # aligned to bitmap bytes, unaligned, a 2 MiB run
        a.zero_plain_run(start, n)
        for s in range(start, start + n):
            b.zero_plain(s)
        assert a.statistics() == b.statistics()
        assert all(a.read_raw(s, 0, 64) == b.read_raw(s, 0, 64) for s in range(start, start + n))
    a.discard_run(20, 30)
    for s in range(20, 50):
        b.discard(s)
    assert a.statistics() == b.statistics() and a.read_raw(25, 0, 8) == bytes(8) == b.read_raw(25, 0, 8)


def test_write_record_sees_every_write_path_and_only_writes() -> None:
    """MIGRATE2 01:15: the controller's write record (the hypervisor cannot clear or forge it)."""
    m = PhysicalMemory(1 << 22, KEY)
    with pytest.raises(ValueError):
        m.take_written(0, 8)
    m.write_plain(3, 0, b"before tracking")
    m.track_writes(True)
    m.read_plain(3, 0, 4)  # reads (and the conversion they need) are not writes
    m.read_raw(4, 0, 4)
    assert m.take_written(0, 16) == bytes(2)
    m.write_plain(1, 0, b"x")
    m.write_raw(2, 0, b"y")
    m.plaintext_page(9)[0] = 1  # VMSA accessors write through the page
    m.zero_plain(10)
    m.zero_plain_run(16, 8)
    m.discard(11)
    m.discard_run(30, 2)
    got = m.take_written(0, 40)
    frames = {i for i in range(40) if got[i >> 3] >> (i & 7) & 1}
    assert frames == {1, 2, 9, 10, 11, *range(16, 24), 30, 31}
    assert m.take_written(0, 40) == bytes(5)  # cleared by the call
    m.write_plain(13, 0, b"z")
    m.write_plain(20, 0, b"z")
    assert m.take_written(13, 20) == b"\x01"  # unaligned range: bit 0 = frame 13; 20 is outside
    assert m.take_written(16, 24) == b"\x10"  # frame 20 still recorded
    m.track_writes(False)
    with pytest.raises(ValueError):
        m.take_written(0, 8)
