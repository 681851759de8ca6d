"""Page State Change buffer format (snp.md 4.4) and its decoder fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.kernel.hw import PSC_MAX_ENTRIES, PageStateChangeBuffer, PageStateChangeEntry, PageStateChangeFormatError, PageStateChangeOp


def test_limits_and_entry_bits() -> None:
    assert PSC_MAX_ENTRIES == 253 == (0x7F0 - 8) // 8
    e = PageStateChangeEntry(0x200, PageStateChangeOp.SHARED, huge=True, cur_page=5)
    assert e.encode() == 5 | (0x200 << 12) | (2 << 52) | (1 << 56)
    assert PageStateChangeEntry.decode(e.encode()) == e
    assert e.size == 2 << 20 and e.gpa == 0x200000


def test_buffer_header_layout() -> None:
    entries = tuple(PageStateChangeEntry(i, PageStateChangeOp.PRIVATE) for i in range(3))
    raw = PageStateChangeBuffer(entries, cur_entry=1).encode()
    assert struct.unpack_from("<HHI", raw) == (1, 2, 0)
    assert len(raw) == 8 + 3 * 8
    assert struct.unpack_from("<Q", raw, 16)[0] == (1 << 12) | (1 << 52)
    back = PageStateChangeBuffer.decode(raw + bytes(100))
    assert back.entries == entries and back.cur_entry == 1 and back.end_entry == 2 and not back.done


def test_rejects_bad_buffers() -> None:
    with pytest.raises(PageStateChangeFormatError):
        PageStateChangeBuffer.decode(struct.pack("<HHI", 0, 253, 0) + bytes(8 * 254))
    with pytest.raises(PageStateChangeFormatError):
        PageStateChangeBuffer.decode(struct.pack("<HHI", 0, 0, 1) + bytes(8))
    with pytest.raises(PageStateChangeFormatError):
        PageStateChangeBuffer.decode(struct.pack("<HHIQ", 0, 0, 0, 1 << 57))
    with pytest.raises(PageStateChangeFormatError):
        PageStateChangeBuffer.decode(struct.pack("<HHIQ", 0, 0, 0, 5 << 52))
    with pytest.raises(PageStateChangeFormatError):  # 2 MiB entry at an unaligned GFN
        PageStateChangeBuffer.decode(struct.pack("<HHIQ", 0, 0, 0, (1 << 56) | (1 << 52) | (3 << 12)))
    with pytest.raises(PageStateChangeFormatError):
        PageStateChangeBuffer.decode(struct.pack("<HHI", 0, 3, 0) + bytes(8))
    with pytest.raises(PageStateChangeFormatError):
        PageStateChangeBuffer(tuple(PageStateChangeEntry(0, PageStateChangeOp.PRIVATE) for _ in range(254)))


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=0x7F0))
def test_fuzz_decode(raw: bytes) -> None:
    try:
        buf = PageStateChangeBuffer.decode(raw)
    except PageStateChangeFormatError:
        return
    assert len(buf.entries) == buf.end_entry + 1 <= PSC_MAX_ENTRIES
    assert PageStateChangeBuffer.decode(buf.encode()) == buf
