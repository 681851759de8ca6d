"""The MS/TCG TPM simulator ("mssim") TCP protocol, sans-IO (tpm.md section 1.1).

Two ports: the *command* port P carries TPM_SEND_COMMAND and a few signals, the
*platform* port P+1 carries power/NV/reset signals.  Every code is a big-endian u32.
:class:`MssimReader` turns received bytes into frozen events; :class:`MssimConnection`
turns events into the exact reply bytes, driving a :class:`TpmPlatform`.  Sockets live
in :mod:`._server`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import struct

from ._errors import TransportError
from ._platform import SignalNotSupported, TpmPlatform

__all__ = [
    "MssimCode",
    "MssimPort",
    "MssimReader",
    "MssimConnection",
    "MssimReply",
    "SendCommand",
    "Signal",
    "HashData",
    "RemoteHandshake",
    "SetAlternativeResult",
    "ActGetSignaled",
    "SessionEnd",
    "Stop",
    "UnknownCode",
    "MssimEvent",
    "MAX_COMMAND_SIZE",
    "SERVER_VERSION",
    "SERVER_FLAGS",
    "encode_send_command",
    "encode_command_response",
]

log = logging.getLogger(__name__)

#: TPM_PT_MAX_COMMAND_SIZE (tpm.md section 10): the reference drops a client sending more.
MAX_COMMAND_SIZE = 4096
#: TPM_REMOTE_HANDSHAKE answer: serverVersion 1, flags PlatformAvailable|InRawMode|SupportsPP.
SERVER_VERSION = 1
SERVER_FLAGS = 0x0D


class MssimCode(enum.IntEnum):
    """Codes of ``TpmTcpProtocol.h`` (tpm.md 1.1 table)."""

    SIGNAL_POWER_ON = 1
    SIGNAL_POWER_OFF = 2
    SIGNAL_PHYS_PRES_ON = 3
    SIGNAL_PHYS_PRES_OFF = 4
    SIGNAL_HASH_START = 5
    SIGNAL_HASH_DATA = 6
    SIGNAL_HASH_END = 7
    SEND_COMMAND = 8
    SIGNAL_CANCEL_ON = 9
    SIGNAL_CANCEL_OFF = 10
    SIGNAL_NV_ON = 11
    SIGNAL_NV_OFF = 12
    SIGNAL_KEY_CACHE_ON = 13
    SIGNAL_KEY_CACHE_OFF = 14
    REMOTE_HANDSHAKE = 15
    SET_ALTERNATIVE_RESULT = 16
    SIGNAL_RESET = 17
    SIGNAL_RESTART = 18
    SESSION_END = 20
    STOP = 21
    GET_COMMAND_RESPONSE_SIZES = 25
    ACT_GET_SIGNALED = 26
    TEST_FAILURE_MODE = 30


class MssimPort(enum.Enum):
    """Which of the two sockets a connection arrived on."""

    COMMAND = "command"
    PLATFORM = "platform"


#: Codes served per port (tpm.md 1.1 "port" column; SESSION_END and STOP on both).
_PORT_CODES: dict[MssimPort, frozenset[int]] = {
    MssimPort.COMMAND: frozenset({5, 6, 7, 8, 15, 16, 20, 21}),
    MssimPort.PLATFORM: frozenset({1, 2, 3, 4, 9, 10, 11, 12, 13, 14, 17, 18, 20, 21, 26, 30}),
}

_U32 = struct.Struct(">I")
#: TPM_SEND_COMMAND prefix: u32 code, u8 locality, u32 size (the 9 bytes tcti-mssim writes at once).
SEND_COMMAND_PREFIX = struct.Struct(">IBI")
assert SEND_COMMAND_PREFIX.size == 9
_HANDSHAKE_REPLY = struct.Struct(">III")  # serverVersion, flags, ack
assert _HANDSHAKE_REPLY.size == 12
_ACK = _U32.pack(0)
_NAK = _U32.pack(1)


@dataclasses.dataclass(frozen=True)
class SendCommand:
    """TPM_SEND_COMMAND: ``command`` to run at ``locality``."""

    locality: int
    command: bytes


@dataclasses.dataclass(frozen=True)
class Signal:
    """A payload-less signal (power, NV, reset, cancel, physical presence, hash start/end...)."""

    code: MssimCode


@dataclasses.dataclass(frozen=True)
class HashData:
    """TPM_SIGNAL_HASH_DATA with its bytes."""

    data: bytes


@dataclasses.dataclass(frozen=True)
class RemoteHandshake:
    """TPM_REMOTE_HANDSHAKE with the client's version (must be non-zero)."""

    client_version: int


@dataclasses.dataclass(frozen=True)
class SetAlternativeResult:
    """TPM_SET_ALTERNATIVE_RESULT (test hook of the reference)."""

    value: int


@dataclasses.dataclass(frozen=True)
class ActGetSignaled:
    """TPM_ACT_GET_SIGNALED for one ACT handle."""

    handle: int


@dataclasses.dataclass(frozen=True)
class SessionEnd:
    """TPM_SESSION_END, or EOF: the client is gone."""


@dataclasses.dataclass(frozen=True)
class Stop:
    """TPM_STOP: the server exits."""


@dataclasses.dataclass(frozen=True)
class UnknownCode:
    """A code not served on this port; the connection ends after it."""

    code: int


MssimEvent = SendCommand | Signal | HashData | RemoteHandshake | SetAlternativeResult | ActGetSignaled | SessionEnd | Stop | UnknownCode


class MssimReader:
    """Incremental parser for one mssim connection.

    :param port: the port this connection came in on (decides which codes are valid).
    :param max_command: largest TPM command (and hash chunk) accepted.

    .. versionadded:: 0.1
    """

    def __init__(self, port: MssimPort, *, max_command: int = MAX_COMMAND_SIZE) -> None:
        self.port = port
        self.max_command = max_command
        self._buf = bytearray()
        self.closed = False

    def feed(self, data: bytes) -> list[MssimEvent]:
        """Add received bytes; return every complete event, in order.

        After :class:`SessionEnd`, :class:`Stop` or :class:`UnknownCode` the reader is
        closed and ignores further bytes.  An empty ``data`` means EOF (SessionEnd).

        :raises TransportError: a length field exceeds :attr:`max_command`, or a handshake
            carries client version 0.  Drop the connection.
        """
        if self.closed:
            return []
        if not data:
            self.closed = True
            return [SessionEnd()]
        self._buf += data
        events: list[MssimEvent] = []
        while not self.closed:
            event = self._next()
            if event is None:
                break
            events.append(event)
            if isinstance(event, SessionEnd | Stop | UnknownCode):
                self.closed = True
                self._buf.clear()
        return events

    def _length_field(self, at: int) -> int | None:
        if len(self._buf) < at + 4:
            return None
        (n,) = _U32.unpack_from(self._buf, at)
        if n > self.max_command:
            self.closed = True
            raise TransportError(f"mssim length {n} exceeds {self.max_command}")
        return n

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _next(self) -> MssimEvent | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        (code,) = _U32.unpack_from(buf, 0)
        if code not in _PORT_CODES[self.port]:
            return UnknownCode(code)
        if code == MssimCode.SEND_COMMAND:
            size = self._length_field(5)
            if size is None or len(buf) < 9 + size:
                return None
            locality = buf[4]
            return SendCommand(locality, self._take(9 + size)[9:])
        if code == MssimCode.SIGNAL_HASH_DATA:
            size = self._length_field(4)
            if size is None or len(buf) < 8 + size:
                return None
            return HashData(self._take(8 + size)[8:])
        if code in (MssimCode.REMOTE_HANDSHAKE, MssimCode.SET_ALTERNATIVE_RESULT, MssimCode.ACT_GET_SIGNALED):
            if len(buf) < 8:
                return None
            (value,) = _U32.unpack_from(self._take(8), 4)
            if code == MssimCode.REMOTE_HANDSHAKE:
                if value == 0:
                    self.closed = True
                    raise TransportError("mssim handshake with client version 0")
                return RemoteHandshake(value)
            if code == MssimCode.SET_ALTERNATIVE_RESULT:
                return SetAlternativeResult(value)
            return ActGetSignaled(value)
        self._take(4)
        if code == MssimCode.SESSION_END:
            return SessionEnd()
        if code == MssimCode.STOP:
            return Stop()
        return Signal(MssimCode(code))


def encode_send_command(command: bytes, locality: int = 0) -> bytes:
    """Client side: the TPM_SEND_COMMAND frame for ``command`` (one buffer, one write).

    .. versionadded:: 0.1
    """
    return SEND_COMMAND_PREFIX.pack(MssimCode.SEND_COMMAND, locality, len(command)) + command


def encode_command_response(response: bytes) -> bytes:
    """Server side: ``u32 size | response | u32 0`` as one buffer (tpm.md 1.1).

    .. versionadded:: 0.1
    """
    return _U32.pack(len(response)) + response + _ACK


@dataclasses.dataclass(frozen=True)
class MssimReply:
    """What the driver must do for one event.

    :ivar data: bytes to send, as one write (may be empty).
    :ivar parts: the same bytes split the way a naive server writes them (for the
        delayed-ACK measurement in bench/tpm.py); ``b"".join(parts) == data``.
    :ivar close: drop this connection after sending.
    :ivar stop: stop the whole server.
    """

    data: bytes = b""
    parts: tuple[bytes, ...] = ()
    close: bool = False
    stop: bool = False


_SIGNALS = {
    MssimCode.SIGNAL_POWER_ON: lambda p: p.power_on(),
    MssimCode.SIGNAL_POWER_OFF: lambda p: p.power_off(),
    MssimCode.SIGNAL_NV_ON: lambda p: p.nv_on(),
    MssimCode.SIGNAL_NV_OFF: lambda p: p.nv_off(),
    MssimCode.SIGNAL_RESET: lambda p: p.reset(),
    MssimCode.SIGNAL_RESTART: lambda p: p.reset(),
    MssimCode.SIGNAL_CANCEL_ON: lambda p: p.cancel(True),
    MssimCode.SIGNAL_CANCEL_OFF: lambda p: p.cancel(False),
    MssimCode.SIGNAL_HASH_START: lambda p: p.hash_start(),
    MssimCode.SIGNAL_HASH_END: lambda p: p.hash_end(),
}
#: Signals that only matter to hardware (physical presence, key cache) and tests of the
#: reference (failure mode): acknowledged, no state to change in this simulator.
_ACK_ONLY = frozenset(
    {
        MssimCode.SIGNAL_PHYS_PRES_ON,
        MssimCode.SIGNAL_PHYS_PRES_OFF,
        MssimCode.SIGNAL_KEY_CACHE_ON,
        MssimCode.SIGNAL_KEY_CACHE_OFF,
    }
)


class MssimConnection:
    """Server-side state machine of one mssim connection: events in, :class:`MssimReply` out.

    :param port: which socket this is.
    :param platform: the TPM platform to drive (shared by all connections).

    .. versionadded:: 0.1
    """

    def __init__(self, port: MssimPort, platform: TpmPlatform) -> None:
        self.port = port
        self.platform = platform
        self.reader = MssimReader(port)

    def receive(self, data: bytes) -> list[MssimReply]:
        """Feed received bytes (``b""`` = EOF) and return the replies in order.

        :raises TransportError: malformed framing; drop the connection.
        """
        return [self.handle(event) for event in self.reader.feed(data)]

    def handle(self, event: MssimEvent) -> MssimReply:
        """The reply to one event (tpm.md 1.1)."""
        if isinstance(event, SendCommand):
            response = self.platform.execute(event.command, event.locality)
            body = response if response is not None else b""
            data = encode_command_response(body)
            return MssimReply(data, (data[:4], body, _ACK) if body else (data[:4], _ACK))
        if isinstance(event, Signal):
            ok = self._signal(event.code)
            return self._ack(ok)
        if isinstance(event, HashData):
            try:
                self.platform.hash_data(event.data)
            except SignalNotSupported:
                return self._ack(False)
            return self._ack(True)
        if isinstance(event, RemoteHandshake):
            data = _HANDSHAKE_REPLY.pack(SERVER_VERSION, SERVER_FLAGS, 0)
            return MssimReply(data, (data,))
        if isinstance(event, SetAlternativeResult):
            return self._ack(True)
        if isinstance(event, ActGetSignaled):
            # No Authenticated Countdown Timers are implemented: none is ever signaled.
            data = _U32.pack(0) + _ACK
            return MssimReply(data, (data,))
        if isinstance(event, SessionEnd):
            return MssimReply(close=True)
        if isinstance(event, Stop):
            return MssimReply(close=True, stop=True)
        # UnknownCode: the platform port answers 1 and drops, the command port just drops.
        log.info("mssim %s port: unknown code %#x, dropping client", self.port.value, event.code)
        if self.port is MssimPort.PLATFORM:
            return MssimReply(_NAK, (_NAK,), close=True)
        return MssimReply(close=True)

    def _signal(self, code: MssimCode) -> bool:
        if code in _ACK_ONLY:
            return True
        if code == MssimCode.TEST_FAILURE_MODE:
            return False  # the engine has no test hook to force failure mode
        try:
            _SIGNALS[code](self.platform)
        except SignalNotSupported:
            log.info("mssim signal %s not supported by the device", code.name)
            return False
        return True

    @staticmethod
    def _ack(ok: bool) -> MssimReply:
        data = _ACK if ok else _NAK
        return MssimReply(data, (data,))
