"""Guest vTPM driver against a fake guest that plays the SVSM's part with the shared codec."""

from __future__ import annotations

import struct
from typing import NamedTuple

import pytest

from svsm.sdk import RequestError, ResultCode, UnsupportedProtocol
from svsm.sdk.tpm import (
    SVSM_VTPM_CMD,
    SVSM_VTPM_PROTOCOL,
    SVSM_VTPM_QUERY,
    TransportError,
    VtpmDriver,
    decode_vtpm_request,
    encode_vtpm_response,
)

GETRANDOM = bytes.fromhex("80010000000c0000017b0008")


class Result(NamedTuple):
    rax: int
    rcx: int = 0
    rdx: int = 0
    r8: int = 0
    r9: int = 0

    def raise_for_result(self) -> "Result":
        if self.rax:
            raise RequestError("SVSM call failed", code=self.rax)
        return self


class Memory:
    def __init__(self) -> None:
        self.bytes = bytearray(0x10000)

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.bytes[gpa : gpa + n])

    def write(self, gpa: int, data: bytes) -> None:
        self.bytes[gpa : gpa + len(data)] = data


class Pool:
    def __init__(self) -> None:
        self.free = [0x3000, 0x2000]

    def take(self) -> int:
        return self.free.pop()

    def give(self, gpa: int) -> None:
        self.free.append(gpa)


class FakeGuest:
    """Serves protocol 2 the way COCONUT's vtpm.rs does, with a TPM that echoes the command code."""

    def __init__(self, query: Result = Result(0, 1 << 8, 0), corrupt: bool = False) -> None:
        self.mem, self.pool, self.query, self.corrupt = Memory(), Pool(), query, corrupt
        self.calls: list[tuple[int, int, int]] = []

    def svsm_call(self, protocol: int, call: int, rcx: int = 0, rdx: int = 0, r8: int = 0, r9: int = 0) -> Result:
        self.calls.append((protocol, call, rcx))
        assert protocol == SVSM_VTPM_PROTOCOL
        if call == SVSM_VTPM_QUERY:
            return self.query
        assert call == SVSM_VTPM_CMD
        try:
            req = decode_vtpm_request(self.mem.read(rcx, 4096))
        except RequestError as exc:
            return Result(exc.code)
        rsp = struct.pack(">HII", 0x8001, 14, 0) + req.command[6:10]
        out = encode_vtpm_response(rsp)
        if self.corrupt:
            out = struct.pack("<I", 5000) + out[4:]
        self.mem.write(rcx, out)
        return Result(0)


def test_probe_then_command_through_one_page() -> None:
    g = FakeGuest()
    d = VtpmDriver(g)
    assert (d.platform_commands, d.features) == (0x100, 0)
    assert d.gpa == 0x2000
    assert d.execute(GETRANDOM) == struct.pack(">HII", 0x8001, 14, 0) + GETRANDOM[6:10]
    assert g.calls == [(2, 0, 0), (2, 1, 0x2000)]
    # The request the SVSM saw: LE header then the BE command.
    assert g.mem.read(0x2000, 4)[:4] == struct.pack("<I", 14)
    d.close()
    assert 0x2000 in g.pool.free and d.statistics().commands == 1


def test_nonzero_locality_is_refused_by_the_svsm() -> None:
    d = VtpmDriver(FakeGuest(), buffer_gpa=0x5000)
    with pytest.raises(RequestError) as exc:
        d.execute(GETRANDOM, locality=3)
    assert exc.value.code == ResultCode.INVALID_PARAMETER
    assert d.statistics().failed_calls == 1
    d.close()  # a caller-supplied buffer is not the driver's to give back


def test_probe_failures() -> None:
    with pytest.raises(UnsupportedProtocol):
        VtpmDriver(FakeGuest(query=Result(ResultCode.UNSUPPORTED_PROTOCOL)))
    with pytest.raises(UnsupportedProtocol):
        VtpmDriver(FakeGuest(query=Result(0, 0, 0)))  # no TPM_SEND_COMMAND bit


def test_malformed_response_from_the_svsm_is_a_transport_error() -> None:
    d = VtpmDriver(FakeGuest(corrupt=True))
    with pytest.raises(TransportError):
        d.execute(GETRANDOM)
