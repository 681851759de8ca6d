"""SVSM vTPM buffer codec (coconut-svsm.md 2.5): layout, COCONUT's checks, fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.sdk import InvalidFormat, InvalidParameter, ResultCode
from svsm.sdk.tpm import (
    VTPM_MAX_COMMAND,
    VTPM_MAX_RESPONSE,
    VTPM_QUERY_PLATFORM_COMMANDS,
    TransportError,
    VtpmRequest,
    decode_vtpm_request,
    decode_vtpm_response,
    encode_vtpm_request,
    encode_vtpm_response,
)

STARTUP = bytes.fromhex("80010000000c000001440000")


def test_request_layout_is_little_endian_platform_header() -> None:
    buf = encode_vtpm_request(STARTUP)
    # u32 cmd=8 @0, u8 locality @4, u32 inbuf_size @5 (LE), command @9 (BE inside).
    assert buf[:9] == bytes([8, 0, 0, 0, 0, 12, 0, 0, 0])
    assert buf[9:] == STARTUP
    page = buf.ljust(4096, b"\xcc")
    assert decode_vtpm_request(page) == VtpmRequest(0, STARTUP)
    assert VTPM_QUERY_PLATFORM_COMMANDS == 0x100


def test_response_layout() -> None:
    rsp = bytes.fromhex("80010000000a00000000")
    buf = encode_vtpm_response(rsp)
    assert buf == bytes([10, 0, 0, 0]) + rsp
    assert decode_vtpm_response(buf.ljust(4096, b"\0")) == rsp


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("<IBI", 9, 0, 12),  # not TPM_SEND_COMMAND
        struct.pack(">IBI", 8, 0, 12),  # big-endian cmd is not 8
        struct.pack("<IBI", 8, 1, 12),  # locality must be 0
        struct.pack("<IBI", 8, 0, 4088),  # > 4087
    ],
)
def test_coconut_rejections_are_invalid_parameter(header: bytes) -> None:
    with pytest.raises(InvalidParameter) as exc:
        decode_vtpm_request((header + STARTUP).ljust(4096, b"\0"))
    assert exc.value.code == ResultCode.INVALID_PARAMETER


def test_limits() -> None:
    assert len(encode_vtpm_request(b"\0" * VTPM_MAX_COMMAND)) == 4096
    with pytest.raises(InvalidParameter):
        encode_vtpm_request(b"\0" * (VTPM_MAX_COMMAND + 1))
    assert len(encode_vtpm_response(b"\0" * VTPM_MAX_RESPONSE)) == 4096
    with pytest.raises(TransportError):
        encode_vtpm_response(b"\0" * (VTPM_MAX_RESPONSE + 1))
    with pytest.raises(TransportError) as exc:
        decode_vtpm_response(struct.pack("<I", 4093).ljust(4096, b"\0"))
    assert isinstance(exc.value, InvalidFormat)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        # Mostly-valid headers so the size/locality paths are reached, not just cmd != 8.
        st.builds(
            lambda loc, size, body: struct.pack("<IBI", 8, loc, size) + body,
            st.sampled_from([0, 0, 1, 255]),
            st.integers(0, 5000),
            st.binary(max_size=64),
        ),
    )
)
def test_fuzz_request_decoder(buf: bytes) -> None:
    try:
        req = decode_vtpm_request(buf)
    except InvalidParameter:
        return
    assert req.locality == 0 and 9 + len(req.command) <= len(buf)
    assert encode_vtpm_request(req.command) == bytes(buf[: 9 + len(req.command)])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_response_decoder(buf: bytes) -> None:
    try:
        rsp = decode_vtpm_response(buf)
    except TransportError:
        return
    assert encode_vtpm_response(rsp) == buf[: 4 + len(rsp)]
