"""The sans-IO ABI channel: framing, cap before body, strict decoding, fuzzing."""

from __future__ import annotations

import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.sdk import InvalidFormat, ResultCode
from svsm.sdk.abi import (
    CLOSED,
    NEED_DATA,
    CallRequest,
    CallResult,
    Channel,
    FRAME_HEADER,
    FrameTooLarge,
    MAX_FRAME,
    Hello,
    MalformedFrame,
    SysLog,
    SysStoragePut,
)


def pair() -> tuple[Channel, Channel]:
    return Channel("kernel"), Channel("module")


def test_round_trip_both_directions() -> None:
    k, mod = pair()
    mod.receive_data(k.send(CallRequest(id=7, protocol=0x4000_0001, call=2, rcx=1 << 63, buffer=b"abc")))
    ev = mod.next_event()
    assert ev == CallRequest(id=7, protocol=0x4000_0001, call=2, rcx=1 << 63, buffer=b"abc")
    assert mod.next_event() is NEED_DATA
    k.receive_data(mod.send(CallResult(id=7, rcx=5)))
    assert k.next_event() == CallResult(id=7, rcx=5)


def test_byte_at_a_time_and_several_frames_per_read() -> None:
    k, mod = pair()
    data = bytes(mod.send(SysLog(id=1, level=20, message="a"))) + bytes(mod.send(SysLog(id=2, level=20, message="b")))
    seen = []
    for i in range(len(data)):
        k.receive_data(data[i : i + 1])
        while (ev := k.next_event()) is not NEED_DATA:
            seen.append(ev.id)
    assert seen == [1, 2]
    k.receive_data(data)
    assert [k.next_event().id, k.next_event().id] == [1, 2]


def test_wrong_direction_is_rejected_on_send_and_receive() -> None:
    k, mod = pair()
    with pytest.raises(TypeError):
        k.send(CallResult(id=1))
    # A kernel frame arriving at the kernel (a module replaying it) is malformed there.
    k.receive_data(k.send(Hello(abi_major=1, abi_minor=0, module="x")))
    with pytest.raises(MalformedFrame) as ei:
        k.next_event()
    assert isinstance(ei.value, InvalidFormat) and ei.value.code == ResultCode.INVALID_FORMAT


def test_oversized_frame_is_skipped_without_buffering() -> None:
    k = Channel("kernel", max_frame=64)
    k.receive_data(struct.pack("<I", 10_000) + b"\0" * 100)
    with pytest.raises(FrameTooLarge):
        k.next_event()
    assert k.statistics().buffered == 0
    k.receive_data(b"\0" * (10_000 - 100))  # the rest of the huge body: discarded
    assert k.statistics().buffered == 0
    good = Channel("module").send(SysLog(id=3, level=10, message="ok"))
    k.receive_data(good)
    assert k.next_event().id == 3  # stream back in sync


def test_bounds_enforced_while_decoding() -> None:
    k = Channel("kernel")
    enc = msgspec.msgpack.Encoder()
    body = enc.encode({"t": "s.put", "id": 1, "key": "k" * 300, "value": b""})
    k.receive_data(struct.pack("<I", len(body)) + body)
    with pytest.raises(MalformedFrame):
        k.next_event()
    body = enc.encode({"t": "s.log", "id": -1, "level": 10, "message": ""})
    k.receive_data(struct.pack("<I", len(body)) + body)
    with pytest.raises(MalformedFrame):
        k.next_event()
    body = enc.encode({"t": "s.log", "id": "1", "level": 10, "message": ""})  # strict: no str -> int
    k.receive_data(struct.pack("<I", len(body)) + body)
    with pytest.raises(MalformedFrame):
        k.next_event()
    body = enc.encode({"t": "nope", "id": 1})
    k.receive_data(struct.pack("<I", len(body)) + body)
    with pytest.raises(MalformedFrame):
        k.next_event()
    assert k.statistics().rejected == 4


def test_unknown_fields_are_skipped_for_minor_versions() -> None:
    k = Channel("kernel")
    body = msgspec.msgpack.encode({"t": "s.del", "id": 4, "key": "a", "added_in_1_1": [1, 2]})
    k.receive_data(struct.pack("<I", len(body)) + body)
    assert k.next_event().key == "a"


def test_eof() -> None:
    k = Channel("kernel")
    k.receive_data(b"\x01\x00")
    assert k.next_event() is NEED_DATA
    k.receive_data(b"")
    assert k.next_event() is CLOSED


def test_recorder_sees_both_directions() -> None:
    seen: list[tuple[str, object]] = []
    k = Channel("kernel", recorder=lambda d, msg: seen.append((d, type(msg).__name__)))
    mod = Channel("module")
    mod.receive_data(k.send(Hello(abi_major=1, abi_minor=0, module="m")))
    k.receive_data(mod.send(SysStoragePut(id=1, key="k", value=b"v")))
    k.next_event()
    assert seen == [("out", "Hello"), ("in", "SysStoragePut")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_kernel_decoder_never_raises_anything_else(chunks: list[bytes]) -> None:
    k = Channel("kernel", max_frame=512)
    for chunk in chunks:
        k.receive_data(chunk)
        for _ in range(50):
            try:
                ev = k.next_event()
            except (MalformedFrame, FrameTooLarge):
                continue
            if ev is NEED_DATA or ev is CLOSED:
                break
    assert k.statistics().buffered <= 512 + 4 + 200


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_framed_garbage(body: bytes) -> None:
    k = Channel("kernel")
    k.receive_data(struct.pack("<I", len(body)) + body)
    try:
        ev = k.next_event()
    except MalformedFrame:
        return
    assert ev is not NEED_DATA  # a whole frame was there: it decoded to some valid message


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_module_side_decoder(body: bytes) -> None:
    mod = Channel("module")
    mod.receive_data(struct.pack("<I", len(body)) + body)
    try:
        ev = mod.next_event()
    except MalformedFrame:
        return
    assert ev is not NEED_DATA


def test_receive_frame_fast_path_matches_the_buffered_path() -> None:
    k = Channel("kernel")
    frames = [bytes(k.send(CallRequest(id=i, protocol=5, call=0, rcx=i))) for i in range(3)]
    fast = Channel("module")
    # one read = one frame: decoded in place
    assert fast.receive_frame(frames[0]).id == 0 and not fast.buffered()
    # a split frame: NEED_DATA, then the rest completes it
    assert fast.receive_frame(frames[1][:3]) is NEED_DATA and fast.buffered()
    assert fast.receive_frame(frames[1][3:]).id == 1
    # two frames in one read: the first now, the second stays buffered
    assert fast.receive_frame(frames[2] + frames[0]).id == 2 and fast.buffered()
    assert fast.next_event().id == 0 and not fast.buffered()
    # malformed body and oversized prefix raise as before; the stream stays usable
    with pytest.raises(MalformedFrame):
        fast.receive_frame(FRAME_HEADER.pack(3) + b"\xc1\xc1\xc1")
    with pytest.raises(FrameTooLarge):
        fast.receive_frame(FRAME_HEADER.pack(MAX_FRAME + 1) + b"xx")
    assert fast.buffered()  # still skipping the oversized body
    fast.receive_data(b"\0" * (MAX_FRAME - 1))
    assert fast.receive_frame(frames[1]).id == 1
    assert fast.receive_frame(b"") is CLOSED
    s = fast.statistics()
    assert (s.frames_in, s.rejected) == (5, 2)
