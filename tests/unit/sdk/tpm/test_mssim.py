"""mssim framing (tpm.md 1.1): parser events, replies, and a fuzz of the parser."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.sdk import InvalidFormat
from svsm.sdk.tpm import MssimConnection, MssimPort, MssimReader, TpmPlatform, TransportError, encode_send_command
from svsm.sdk.tpm._mssim import (
    ActGetSignaled,
    HashData,
    MssimCode,
    RemoteHandshake,
    SendCommand,
    SessionEnd,
    Signal,
    Stop,
    UnknownCode,
)

STARTUP = bytes.fromhex("80010000000c000001440000")


class Recorder:
    """A device that records calls and answers each command with TPM_RC_SUCCESS + the command code."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        self.calls.append(("execute", command, locality))
        return struct.pack(">HII", 0x8001, 14, 0) + command[6:10]

    def power_on(self) -> None:
        self.calls.append(("power_on",))

    def power_off(self) -> None:
        self.calls.append(("power_off",))

    def reset(self) -> None:
        self.calls.append(("reset",))


def u32(*values: int) -> bytes:
    return b"".join(struct.pack(">I", v) for v in values)


def test_send_command_split_anywhere_gives_one_event() -> None:
    frame = encode_send_command(STARTUP, locality=3)
    assert frame[:9] == bytes.fromhex("00000008" "03" "0000000c")
    for cut in range(1, len(frame)):
        r = MssimReader(MssimPort.COMMAND)
        events = r.feed(frame[:cut]) + r.feed(frame[cut:])
        assert events == [SendCommand(3, STARTUP)]


def test_port_codes_and_payloads() -> None:
    r = MssimReader(MssimPort.COMMAND)
    data = u32(15, 1) + u32(6, 3) + b"abc" + u32(5) + u32(20)
    assert r.feed(data) == [RemoteHandshake(1), HashData(b"abc"), Signal(MssimCode.SIGNAL_HASH_START), SessionEnd()]
    assert r.closed and r.feed(u32(8)) == []
    p = MssimReader(MssimPort.PLATFORM)
    assert p.feed(u32(1, 11, 26, 7)) == [
        Signal(MssimCode.SIGNAL_POWER_ON),
        Signal(MssimCode.SIGNAL_NV_ON),
        ActGetSignaled(7),
    ]
    # SEND_COMMAND belongs to the command port only.
    assert p.feed(encode_send_command(STARTUP)) == [UnknownCode(8)]


def test_eof_is_session_end_and_stop() -> None:
    assert MssimReader(MssimPort.PLATFORM).feed(b"") == [SessionEnd()]
    assert MssimReader(MssimPort.PLATFORM).feed(u32(21)) == [Stop()]


def test_oversize_and_zero_handshake_are_transport_errors() -> None:
    with pytest.raises(TransportError) as exc:
        MssimReader(MssimPort.COMMAND).feed(u32(8) + b"\0" + u32(4097))
    assert isinstance(exc.value, InvalidFormat)
    with pytest.raises(TransportError):
        MssimReader(MssimPort.COMMAND).feed(u32(6, 5000))
    with pytest.raises(TransportError):
        MssimReader(MssimPort.COMMAND).feed(u32(15, 0))


def test_connection_replies() -> None:
    dev = Recorder()
    plat = TpmPlatform(dev, powered=False)
    cmd = MssimConnection(MssimPort.COMMAND, plat)
    pf = MssimConnection(MssimPort.PLATFORM, plat)
    # Power off: rspSize 0 then the ack, and the device is not called.
    (reply,) = cmd.receive(encode_send_command(STARTUP))
    assert reply.data == u32(0, 0) and not dev.calls
    assert [r.data for r in pf.receive(u32(1, 11, 1))] == [u32(0)] * 3
    assert dev.calls == [("power_on",)]  # the second POWER_ON is a no-op
    (reply,) = cmd.receive(encode_send_command(STARTUP, 2))
    expected = struct.pack(">HII", 0x8001, 14, 0) + STARTUP[6:10]
    assert reply.data == u32(14) + expected + u32(0)
    assert b"".join(reply.parts) == reply.data and len(reply.parts) == 3
    assert dev.calls[-1] == ("execute", STARTUP, 2)
    (hs,) = cmd.receive(u32(15, 1))
    assert hs.data == u32(1, 0x0D, 0)
    assert [r.data for r in pf.receive(u32(17, 2))] == [u32(0), u32(0)]
    assert dev.calls[-2:] == [("reset",), ("power_off",)]
    assert plat.statistics().powered is False


def test_unknown_code_platform_naks_command_drops() -> None:
    plat = TpmPlatform(Recorder())
    (r,) = MssimConnection(MssimPort.PLATFORM, plat).receive(u32(99))
    assert r.data == u32(1) and r.close
    (r,) = MssimConnection(MssimPort.COMMAND, plat).receive(u32(99))
    assert r.data == b"" and r.close
    (r,) = MssimConnection(MssimPort.COMMAND, plat).receive(u32(21))
    assert r.close and r.stop


def test_unsupported_hash_signal_answers_failure() -> None:
    plat = TpmPlatform(Recorder())
    replies = MssimConnection(MssimPort.COMMAND, plat).receive(u32(5) + u32(6, 1) + b"x" + u32(7))
    assert [r.data for r in replies] == [u32(1)] * 3


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.sampled_from(list(MssimPort)), st.integers(1, 16))
def test_fuzz_reader_never_raises_other_errors(data: bytes, port: MssimPort, chunk: int) -> None:
    whole = MssimReader(port, max_command=32)
    pieces = MssimReader(port, max_command=32)
    try:
        a = whole.feed(data)
    except TransportError:
        a = None
    try:
        b: list | None = []
        for i in range(0, len(data), chunk):
            b += pieces.feed(data[i : i + chunk])  # type: ignore[operator]
    except TransportError:
        b = None
    # Chunking never changes the outcome, and no event carries more than the cap.
    assert a == b
    for event in a or []:
        if isinstance(event, SendCommand | HashData):
            assert len(getattr(event, "command", getattr(event, "data", b""))) <= 32


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=96), st.sampled_from(list(MssimPort)))
def test_fuzz_connection_replies_are_well_formed(data: bytes, port: MssimPort) -> None:
    conn = MssimConnection(port, TpmPlatform(Recorder(), powered=False))
    try:
        replies = conn.receive(data)
    except TransportError:
        return
    for r in replies:
        assert b"".join(r.parts) == r.data
        # Every reply ends with a u32 status word, or is empty (session end / command-port drop).
        assert r.data == b"" or len(r.data) >= 4
        if r.close:
            assert r is replies[-1]
