"""Migration messages: round trips, record-type binding, bounds, and a fuzz target for the decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.modules.migrate import ChannelError
from svsm.modules.migrate._wire import (
    CODES,
    MAX_BATCH,
    Abort,
    Begin,
    Digests,
    Pages,
    Prepared,
    Resend,
    VmShape,
    decode_message,
    encode_message,
)

MSGS = [
    Begin(1, VmShape(1 << 26, 16384, 2, 2, ["tpm"])),
    Pages(3, [1, 2], [0x30003, 0], [b"\x01" * 4096, None]),
    Digests([0, 1], [b"\x00" * 32, b"\x11" * 32]),
    Resend([4]),
    Prepared({"memory": "ab"}),
    Abort("source aborted"),
]


@pytest.mark.parametrize("msg", MSGS, ids=lambda m: type(m).__name__)
def test_round_trip(msg) -> None:
    t, payload = encode_message(msg)
    assert t == CODES[type(msg)]
    assert decode_message(t, payload) == msg


def test_every_code_is_distinct_and_a_relabelled_record_is_refused() -> None:
    assert len(set(CODES.values())) == len(CODES)
    t, payload = encode_message(Resend([1]))
    with pytest.raises(ChannelError):
        decode_message(CODES[Prepared], payload)


@pytest.mark.parametrize(
    "bad",
    [
        Pages(0, [1, 2], [0], [None]),  # lists of different lengths
        Digests([0, 1], [b"\x00" * 32]),
    ],
)
def test_inconsistent_lists_are_refused(bad) -> None:
    t, payload = encode_message(bad)
    with pytest.raises(ChannelError):
        decode_message(t, payload)


def test_bounds_are_enforced_while_decoding() -> None:
    big = Pages(0, list(range(MAX_BATCH + 1)), [0] * (MAX_BATCH + 1), [None] * (MAX_BATCH + 1))
    t, payload = encode_message(big)
    with pytest.raises(ChannelError):
        decode_message(t, payload)
    short_page = Pages(0, [1], [0], [b"x" * 100])
    with pytest.raises(ChannelError):
        decode_message(*encode_message(short_page))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=512))
def test_fuzz_decoder_raises_only_channel_error(type_: int, payload: bytes) -> None:
    try:
        msg = decode_message(type_, payload)
    except ChannelError:
        return
    assert CODES[type(msg)] == type_


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(MSGS), st.data())
def test_fuzz_mutated_valid_messages(msg, data) -> None:
    t, payload = encode_message(msg)
    raw = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode_message(t, bytes(raw))
    except ChannelError:
        pass
