"""GHCB MSR protocol codec: bit positions from snp.md 4.2, round trips, and a decoder fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.kernel.hw import (
    CpuidRequest,
    GhcbProtocolError,
    HypervisorFeature,
    HypervisorFeaturesRequest,
    HypervisorFeaturesResponse,
    MsrMessage,
    PageStateChangeRequest,
    PageStateChangeResponse,
    RegisterGhcbRequest,
    RegisterGhcbResponse,
    RunVmplRequest,
    RunVmplResponse,
    SevInfoRequest,
    SevInfoResponse,
    TerminationRequest,
    decode_msr,
)


@pytest.mark.parametrize(
    ("msg", "value"),
    [
        (SevInfoRequest(), 0x002),
        (SevInfoResponse(2, 1, 51), (2 << 48) | (1 << 32) | (51 << 24) | 0x001),
        (CpuidRequest(0x8000_001F, 1), (0x8000_001F << 32) | (1 << 30) | 0x004),
        (RegisterGhcbRequest(0x1234), (0x1234 << 12) | 0x012),
        (RegisterGhcbResponse(0x1234), (0x1234 << 12) | 0x013),
        (PageStateChangeRequest(0xABCDE, 2), (0xABCDE << 12) | (2 << 52) | 0x014),
        (PageStateChangeResponse(7), (7 << 32) | 0x015),
        (RunVmplRequest(0), 0x016),
        (RunVmplRequest(1), (1 << 32) | 0x016),
        (RunVmplResponse(0), 0x017),
        (HypervisorFeaturesRequest(), 0x080),
        (HypervisorFeaturesResponse(0x23), (0x23 << 12) | 0x081),
        (TerminationRequest(1, 3), (1 << 12) | (3 << 16) | 0x100),
    ],
)
def test_encoding_matches_spec(msg: MsrMessage, value: int) -> None:
    assert msg.encode() == value
    assert decode_msr(value) == msg


def test_feature_bits() -> None:
    assert HypervisorFeature.SEV_SNP == 1 and HypervisorFeature.AP_CREATION == 2
    assert HypervisorFeature.SNP_MULTI_VMPL == 1 << 5


@pytest.mark.parametrize("bad", [0x003, 0xFFF, (1 << 64), -1, (1 << 60) | 0x002, (3 << 52) | 0x014, (1 << 40) | (5 << 32) | 0x016])
def test_rejects_unknown_or_reserved(bad: int) -> None:
    with pytest.raises(GhcbProtocolError):
        decode_msr(bad)


def test_constructors_check_fields() -> None:
    with pytest.raises(GhcbProtocolError):
        PageStateChangeRequest(1, 3)
    with pytest.raises(GhcbProtocolError):
        RunVmplRequest(256)
    with pytest.raises(GhcbProtocolError):
        TerminationRequest(16, 0)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_fuzz_decode(value: int) -> None:
    """Any 64-bit value either decodes to a message that re-encodes to itself, or is refused."""
    try:
        msg = decode_msr(value)
    except GhcbProtocolError:
        return
    assert decode_msr(msg.encode()) == msg


def test_memoised_decodes_are_the_same_values_and_errors_still_raise() -> None:
    """The request-loop messages are decoded once per value; nothing else changes."""
    for value, msg in ((0x016, RunVmplRequest(0)), ((2 << 32) | 0x016, RunVmplRequest(2)), (0x017, RunVmplResponse(0)),
                       ((5 << 32) | 0x017, RunVmplResponse(5))):  # fmt: skip
        assert decode_msr(value) == msg and decode_msr(value) == msg and decode_msr(value).encode() == value
    with pytest.raises(GhcbProtocolError):
        decode_msr((1 << 12) | 0x016)  # reserved bits of RUN_VMPL, never cached
    with pytest.raises(GhcbProtocolError):
        decode_msr((1 << 12) | 0x016)
    from svsm.kernel.hw import _msr_protocol

    for err in range(2000):  # an adversary's error codes cannot grow the memo without bound
        decode_msr((err << 32) | 0x017)
    assert len(_msr_protocol._DECODED) <= 512
