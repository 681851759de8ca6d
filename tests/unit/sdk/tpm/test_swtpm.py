"""swtpm socket protocol (tpm.md 1.2): data framing, control commands, parser fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.sdk.tpm import SwtpmCmd, SwtpmControl, SwtpmControlReader, SwtpmData, SwtpmDataReader, TpmPlatform, TransportError
from svsm.sdk.tpm._swtpm import SUPPORTED_CAPS, SwtpmCap, SwtpmControlRequest, SwtpmDataCommand

STARTUP = bytes.fromhex("80010000000c000001440000")
GETRANDOM = bytes.fromhex("80010000000c0000017b0008")


class Echo:
    """Answers every command with a success header followed by the command code; remembers locality."""

    def __init__(self) -> None:
        self.localities: list[int] = []

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        self.localities.append(locality)
        return struct.pack(">HII", 0x8001, 14, 0) + command[6:10]


def u32(*values: int) -> bytes:
    return b"".join(struct.pack(">I", v) for v in values)


def test_raw_commands_are_split_by_header_size() -> None:
    r = SwtpmDataReader()
    stream = STARTUP + GETRANDOM
    out = []
    for b in stream:  # one byte at a time
        out += r.feed(bytes([b]))
    assert out == [SwtpmDataCommand(STARTUP), SwtpmDataCommand(GETRANDOM)]


def test_mssim_prefix_accepted_on_data_channel() -> None:
    framed = u32(8) + b"\x02" + u32(len(STARTUP)) + STARTUP
    assert SwtpmDataReader().feed(framed) == [SwtpmDataCommand(STARTUP, 2, True)]
    dev = Echo()
    (reply,) = SwtpmData(TpmPlatform(dev)).receive(framed)
    assert reply[:4] == u32(14) and reply[-4:] == u32(0) and dev.localities == [2]


@pytest.mark.parametrize("size", [0, 9, 4097])
def test_bad_sizes_are_transport_errors(size: int) -> None:
    with pytest.raises(TransportError):
        SwtpmDataReader().feed(struct.pack(">HI", 0x8001, size))


def test_raw_reply_and_stopped_tpm_gets_failure() -> None:
    plat = TpmPlatform(Echo())
    data = SwtpmData(plat)
    assert data.receive(STARTUP) == [struct.pack(">HII", 0x8001, 14, 0) + STARTUP[6:10]]
    ctrl = SwtpmControl(plat)
    assert ctrl.handle(SwtpmControlRequest(SwtpmCmd.STOP, b"")).data == u32(0)
    assert data.receive(STARTUP) == [bytes.fromhex("80010000000a00000101")]  # TPM_RC_FAILURE
    assert ctrl.handle(SwtpmControlRequest(SwtpmCmd.INIT, u32(1))).data == u32(0)
    assert data.receive(STARTUP)[0][6:10] == u32(0)


def test_control_reader_framing() -> None:
    r = SwtpmControlReader()
    stream = u32(5) + b"\x03" + u32(7, 2) + b"hi" + u32(0x0D, 0, 1, 3) + b"abc" + u32(1)
    out = []
    for b in stream:
        out += r.feed(bytes([b]))
    assert out == [
        SwtpmControlRequest(5, b"\x03"),
        SwtpmControlRequest(7, u32(2) + b"hi"),
        SwtpmControlRequest(0x0D, u32(0, 1, 3) + b"abc"),
        SwtpmControlRequest(1, b""),
    ]
    assert SwtpmControlReader().feed(u32(0x77) + b"junk") == [SwtpmControlRequest(0x77, b"")]
    with pytest.raises(TransportError):
        SwtpmControlReader(max_data=8).feed(u32(7, 9))


def test_control_commands() -> None:
    dev = Echo()
    plat = TpmPlatform(dev)
    ctrl = SwtpmControl(plat)

    def call(code: int, payload: bytes = b"") -> bytes:
        return ctrl.handle(SwtpmControlRequest(code, payload)).data

    caps = call(SwtpmCmd.GET_CAPABILITY)
    assert caps == u32(0, int(SUPPORTED_CAPS))
    assert SwtpmCap.SET_LOCALITY in SUPPORTED_CAPS and SwtpmCap.SEND_COMMAND_HEADER in SUPPORTED_CAPS
    assert call(SwtpmCmd.SET_LOCALITY, b"\x05") == u32(0x3D)  # TPM_BAD_LOCALITY
    assert call(SwtpmCmd.SET_LOCALITY, b"\x03") == u32(0)
    SwtpmData(plat).receive(STARTUP)
    assert dev.localities == [3]
    assert call(SwtpmCmd.GET_TPMESTABLISHED) == u32(0) + b"\0\0\0\0"
    assert call(SwtpmCmd.SET_BUFFERSIZE, u32(0)) == u32(0, 4096, 4096, 4096)
    assert call(SwtpmCmd.SET_BUFFERSIZE, u32(100)) == u32(3)
    assert call(SwtpmCmd.GET_STATEBLOB, u32(0, 1, 0)) == u32(9)  # not offered: TPM_FAIL
    assert call(SwtpmCmd.HASH_START) == u32(9)  # the device has no H-CRTM hooks
    reply = ctrl.handle(SwtpmControlRequest(SwtpmCmd.SHUTDOWN, b""))
    assert reply.stop and not plat.powered


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=80), st.integers(1, 9))
def test_fuzz_data_reader_chunking_invariant(data: bytes, chunk: int) -> None:
    def run(step: int) -> list | None:
        r = SwtpmDataReader(max_command=40)
        out: list = []
        try:
            for i in range(0, len(data), step):
                out += r.feed(data[i : i + step])
        except TransportError:
            return None
        return out

    whole = run(len(data))
    assert whole == run(chunk)
    for cmd in whole or []:
        assert len(cmd.command) <= 40


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=80), st.integers(1, 9))
def test_fuzz_control_reader_and_handler(data: bytes, chunk: int) -> None:
    plat = TpmPlatform(Echo())
    ctrl = SwtpmControl(plat)
    r = SwtpmControlReader(max_data=40)
    try:
        for i in range(0, len(data), chunk):
            for req in r.feed(data[i : i + chunk]):
                reply = ctrl.handle(req)
                assert len(reply.data) >= 4 and len(reply.data) <= 64  # tcti-swtpm reads <= 64 bytes
    except TransportError:
        pass  # an oversized length: the driver drops the connection


def test_auto_shutdown_before_init_stop_and_shutdown() -> None:
    seen: list[bytes] = []

    class Rec(Echo):
        def execute(self, command: bytes, locality: int = 0) -> bytes:
            seen.append(command)
            return super().execute(command, locality)

    plat = TpmPlatform(Rec())
    ctrl = SwtpmControl(plat)
    ctrl.handle(SwtpmControlRequest(SwtpmCmd.INIT, u32(0)))
    ctrl.handle(SwtpmControlRequest(SwtpmCmd.STOP, b""))
    ctrl.handle(SwtpmControlRequest(SwtpmCmd.STOP, b""))  # already stopped: nothing to shut down
    assert seen == [bytes.fromhex("80010000000c000001450000")] * 2 and ctrl.auto_shutdowns == 2
    quiet = SwtpmControl(TpmPlatform(Rec()), auto_shutdown=False)
    quiet.handle(SwtpmControlRequest(SwtpmCmd.INIT, u32(0)))
    assert len(seen) == 2
