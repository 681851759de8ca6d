"""The bounds-checked big-endian reader."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.modules.tpm import TpmError
from svsm.modules.tpm._marshal import Reader, tpm2b, u16, u32, u64


def test_reads_big_endian_and_tracks_position() -> None:
    r = Reader(u16(0x1234) + u32(0xDEADBEEF) + u64(7) + tpm2b(b"abc") + b"\xff")
    assert (r.u16(), r.u32(), r.u64(), r.tpm2b(), r.u8()) == (0x1234, 0xDEADBEEF, 7, b"abc", 0xFF)
    r.done()


def test_short_reads_are_insufficient_and_oversize_is_size() -> None:
    with pytest.raises(TpmError) as e:
        Reader(b"\x00").u16()
    assert e.value.rc == 0x09A
    with pytest.raises(TpmError) as e:
        Reader(tpm2b(b"x" * 70)).tpm2b(64)
    assert e.value.rc == 0x095
    with pytest.raises(TpmError) as e:
        Reader(b"\x00\x05ab").tpm2b()
    assert e.value.rc == 0x09A


def test_sized_sub_reader_stays_inside_its_window() -> None:
    r = Reader(tpm2b(u16(1) + u16(2)) + u16(3))
    sub = r.sized()
    assert (sub.u16(), sub.u16()) == (1, 2)
    with pytest.raises(TpmError):
        sub.u8()
    sub.done()
    assert r.u16() == 3
    extra = Reader(tpm2b(b"\x00\x01\x02")).sized()
    extra.u16()
    with pytest.raises(TpmError) as e:
        extra.done()
    assert e.value.rc == 0x095


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_tpm2b_round_trip(parts: list[bytes]) -> None:
    r = Reader(b"".join(tpm2b(p) for p in parts))
    assert [r.tpm2b() for _ in parts] == parts
    r.done()
