"""The machine-state structure: round trip, strict bounds, and a fuzz target for its decoder."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.kernel.migration import MachineState, decode_state
from svsm.kernel.migration._state import GuestKeys, ModuleState, VcpuState, encode_state


def _state(**kw) -> MachineState:
    base = dict(version=1, memory_size=1 << 24, guest_vmpl=2,
                vcpus=[VcpuState(0, 0, 0x1000, 0x7000, False, b"\x01" * 4096, 0x2000)],
                keys=GuestKeys(2, [b"k" * 32, b"l" * 32], [4, 0], b"r" * 32), modules=[ModuleState("tpm", b"s")])
    base.update(kw)
    return MachineState(**base)


def test_round_trip() -> None:
    st_ = _state()
    assert decode_state(encode_state(st_)) == st_


@pytest.mark.parametrize(
    "bad",
    [
        {"guest_vmpl": 0},
        {"vcpus": []},
        {"keys": GuestKeys(2, [b"short"], [0], b"r" * 32)},
        {"vcpus": [VcpuState(0, 0, 0, 0, False, b"\x00" * 100, 0)]},
    ],
)
def test_out_of_bounds_fields_are_refused(bad) -> None:
    raw = msgspec.msgpack.encode(_state(**bad))
    with pytest.raises(msgspec.ValidationError):
        decode_state(raw)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decoder_raises_only_msgspec_errors(raw: bytes) -> None:
    try:
        decode_state(raw)
    except (msgspec.MsgspecError, ValueError):
        pass
