"""The swtpm socket protocol, sans-IO (tpm.md section 1.2).

Data channel (port P): raw TPM 2.0 commands, delimited by the header's size field; an
mssim ``u32 8 | u8 locality | u32 size`` prefix is accepted too (PTM_CAP_SEND_COMMAND_HEADER)
and then answered mssim-style.  Control channel (port P+1): ``u32 code | payload`` ->
``u32 result | payload`` with the CMD_* codes.  Sockets live in :mod:`._server`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import struct

from ._errors import TransportError
from ._mssim import MAX_COMMAND_SIZE, SEND_COMMAND_PREFIX, encode_command_response
from ._platform import SignalNotSupported, TpmPlatform, failure_response

__all__ = [
    "SwtpmCmd",
    "SwtpmCap",
    "SwtpmDataReader",
    "SwtpmControlReader",
    "SwtpmDataCommand",
    "SwtpmControlRequest",
    "SwtpmData",
    "SwtpmControl",
    "ControlReply",
    "TPM_SUCCESS",
    "TPM_FAIL",
    "TPM_BAD_PARAMETER",
    "TPM_BAD_LOCALITY",
    "PTM_INIT_FLAG_DELETE_VOLATILE",
    "BUFFER_SIZE",
]

log = logging.getLogger(__name__)

#: Result codes on the control channel (TPM 1.2 numbering, as swtpm uses).
TPM_SUCCESS = 0
TPM_BAD_PARAMETER = 0x03
TPM_FAIL = 0x09
TPM_BAD_LOCALITY = 0x3D
PTM_INIT_FLAG_DELETE_VOLATILE = 1
#: The one TPM I/O buffer size this simulator supports (CMD_SET_BUFFERSIZE answers it).
BUFFER_SIZE = 4096
#: Largest locality CMD_SET_LOCALITY accepts.
MAX_LOCALITY = 4


class SwtpmCmd(enum.IntEnum):
    """Control channel command codes (tpm.md 1.2 table)."""

    GET_CAPABILITY = 0x01
    INIT = 0x02
    SHUTDOWN = 0x03
    GET_TPMESTABLISHED = 0x04
    SET_LOCALITY = 0x05
    HASH_START = 0x06
    HASH_DATA = 0x07
    HASH_END = 0x08
    CANCEL_TPM_CMD = 0x09
    STORE_VOLATILE = 0x0A
    RESET_TPMESTABLISHED = 0x0B
    GET_STATEBLOB = 0x0C
    SET_STATEBLOB = 0x0D
    STOP = 0x0E
    GET_CONFIG = 0x0F
    SET_DATAFD = 0x10
    SET_BUFFERSIZE = 0x11
    GET_INFO = 0x12
    LOCK_STORAGE = 0x13


class SwtpmCap(enum.IntFlag):
    """CMD_GET_CAPABILITY bits (tpm.md 1.2)."""

    INIT = 1 << 0
    SHUTDOWN = 1 << 1
    GET_TPMESTABLISHED = 1 << 2
    SET_LOCALITY = 1 << 3
    HASHING = 1 << 4
    CANCEL_TPM_CMD = 1 << 5
    STORE_VOLATILE = 1 << 6
    RESET_TPMESTABLISHED = 1 << 7
    GET_STATEBLOB = 1 << 8
    SET_STATEBLOB = 1 << 9
    STOP = 1 << 10
    GET_CONFIG = 1 << 11
    SET_DATAFD = 1 << 12
    SET_BUFFERSIZE = 1 << 13
    GET_INFO = 1 << 14
    SEND_COMMAND_HEADER = 1 << 15
    LOCK_STORAGE = 1 << 16


#: What this server implements.  State blobs, data fds, GET_INFO and storage locking are
#: not offered: the vTPM's state belongs to the SVSM's persistence module, not to the host.
SUPPORTED_CAPS = (
    SwtpmCap.INIT
    | SwtpmCap.SHUTDOWN
    | SwtpmCap.GET_TPMESTABLISHED
    | SwtpmCap.SET_LOCALITY
    | SwtpmCap.HASHING
    | SwtpmCap.CANCEL_TPM_CMD
    | SwtpmCap.RESET_TPMESTABLISHED
    | SwtpmCap.STOP
    | SwtpmCap.GET_CONFIG
    | SwtpmCap.SET_BUFFERSIZE
    | SwtpmCap.SEND_COMMAND_HEADER
)

_U32 = struct.Struct(">I")
_TPM_HEADER = struct.Struct(">HI")  # tag, commandSize (first 6 of the 10 header bytes)
assert _TPM_HEADER.size == 6
TPM_HEADER_SIZE = 10
_TPM_TAGS = (0x8001, 0x8002)

#: Fixed control payload sizes; HASH_DATA and SET_STATEBLOB carry a length after these.
_CONTROL_FIXED: dict[int, int] = {
    SwtpmCmd.GET_CAPABILITY: 0,
    SwtpmCmd.INIT: 4,
    SwtpmCmd.SHUTDOWN: 0,
    SwtpmCmd.GET_TPMESTABLISHED: 0,
    SwtpmCmd.SET_LOCALITY: 1,
    SwtpmCmd.HASH_START: 0,
    SwtpmCmd.HASH_DATA: 4,
    SwtpmCmd.HASH_END: 0,
    SwtpmCmd.CANCEL_TPM_CMD: 0,
    SwtpmCmd.STORE_VOLATILE: 0,
    SwtpmCmd.RESET_TPMESTABLISHED: 1,
    SwtpmCmd.GET_STATEBLOB: 12,
    SwtpmCmd.SET_STATEBLOB: 12,
    SwtpmCmd.STOP: 0,
    SwtpmCmd.GET_CONFIG: 0,
    SwtpmCmd.SET_DATAFD: 0,
    SwtpmCmd.SET_BUFFERSIZE: 4,
    SwtpmCmd.GET_INFO: 16,
    SwtpmCmd.LOCK_STORAGE: 4,
}
#: Offset of the trailing-data length inside the fixed payload, for the two variable commands.
_CONTROL_VARLEN = {SwtpmCmd.HASH_DATA: 0, SwtpmCmd.SET_STATEBLOB: 8}


@dataclasses.dataclass(frozen=True)
class SwtpmDataCommand:
    """One TPM command from the data channel.

    :ivar locality: from the mssim prefix, or ``None`` (use the control channel's locality).
    :ivar prefixed: the client used the mssim prefix, so the reply must be mssim-framed.

    .. versionadded:: 0.1
    """

    command: bytes
    locality: int | None = None
    prefixed: bool = False


@dataclasses.dataclass(frozen=True)
class SwtpmControlRequest:
    """One control channel request: ``code`` (may be unknown) and its payload bytes.

    .. versionadded:: 0.1
    """

    code: int
    payload: bytes


class SwtpmDataReader:
    """Incremental parser of the data channel.

    .. versionadded:: 0.1
    """

    def __init__(self, *, max_command: int = MAX_COMMAND_SIZE) -> None:
        self.max_command = max_command
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[SwtpmDataCommand]:
        """Add received bytes and return every complete command.

        :raises TransportError: a size below the 10-byte header or above ``max_command``;
            drop the connection.
        """
        if not self._buf and len(data) >= TPM_HEADER_SIZE and data[0] == 0x80:
            # Fast path: exactly one raw command in one read (what tcti-swtpm sends).
            tag, size = _TPM_HEADER.unpack_from(data, 0)
            if tag in _TPM_TAGS and size == len(data) and size <= self.max_command:
                return [SwtpmDataCommand(bytes(data))]
        self._buf += data
        out: list[SwtpmDataCommand] = []
        while True:
            cmd = self._next()
            if cmd is None:
                return out
            out.append(cmd)

    def _next(self) -> SwtpmDataCommand | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        tag = int.from_bytes(buf[:2], "big")
        if tag not in _TPM_TAGS and _U32.unpack_from(buf, 0)[0] == 8:
            if len(buf) < SEND_COMMAND_PREFIX.size:
                return None
            _, locality, size = SEND_COMMAND_PREFIX.unpack_from(buf, 0)
            self._check(size)
            end = SEND_COMMAND_PREFIX.size + size
            if len(buf) < end:
                return None
            command = bytes(buf[SEND_COMMAND_PREFIX.size : end])
            del buf[:end]
            return SwtpmDataCommand(command, locality, True)
        if len(buf) < _TPM_HEADER.size:
            return None
        _, size = _TPM_HEADER.unpack_from(buf, 0)
        self._check(size)
        if len(buf) < size:
            return None
        command = bytes(buf[:size])
        del buf[:size]
        return SwtpmDataCommand(command)

    def _check(self, size: int) -> None:
        if not TPM_HEADER_SIZE <= size <= self.max_command:
            self._buf.clear()
            raise TransportError(f"swtpm data: command size {size} outside 10..{self.max_command}")


class SwtpmControlReader:
    """Incremental parser of the control channel.

    .. versionadded:: 0.1
    """

    def __init__(self, *, max_data: int = MAX_COMMAND_SIZE) -> None:
        self.max_data = max_data
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[SwtpmControlRequest]:
        """Add received bytes and return every complete request.

        An unknown code is returned with an empty payload and the rest of the buffer is
        discarded (its framing is unknowable).

        :raises TransportError: a HASH_DATA/SET_STATEBLOB length above ``max_data``.
        """
        self._buf += data
        out: list[SwtpmControlRequest] = []
        while len(self._buf) >= 4:
            (code,) = _U32.unpack_from(self._buf, 0)
            fixed = _CONTROL_FIXED.get(code)
            if fixed is None:
                self._buf.clear()
                out.append(SwtpmControlRequest(code, b""))
                break
            need = 4 + fixed
            if len(self._buf) < need:
                break
            if code in _CONTROL_VARLEN:
                (extra,) = _U32.unpack_from(self._buf, 4 + _CONTROL_VARLEN[SwtpmCmd(code)])
                if extra > self.max_data:
                    self._buf.clear()
                    raise TransportError(f"swtpm control: data length {extra} exceeds {self.max_data}")
                need += extra
                if len(self._buf) < need:
                    break
            payload = bytes(self._buf[4:need])
            del self._buf[:need]
            out.append(SwtpmControlRequest(code, payload))
        return out


@dataclasses.dataclass(frozen=True)
class ControlReply:
    """A control channel answer: the bytes to send, and whether the server must stop."""

    data: bytes
    stop: bool = False


class SwtpmData:
    """Server side of one data connection: bytes in, response bytes out."""

    def __init__(self, platform: TpmPlatform) -> None:
        self.platform = platform
        self.reader = SwtpmDataReader()

    def receive(self, data: bytes) -> list[bytes]:
        """Feed received bytes; return one reply (send as one write) per complete command.

        :raises TransportError: bad framing; drop the connection.
        """
        replies = []
        for cmd in self.reader.feed(data):
            response = self.platform.execute(cmd.command, cmd.locality)
            if response is None:
                response = failure_response()  # TPM stopped / not initialised
            replies.append(encode_command_response(response) if cmd.prefixed else response)
        return replies


def _result(code: int, payload: bytes = b"") -> bytes:
    return _U32.pack(code) + payload


#: TPM2_Shutdown(TPM_SU_CLEAR): what swtpm sends by itself before CMD_INIT / STOP / SHUTDOWN.
TPM2_SHUTDOWN_CLEAR = struct.pack(">HIIH", 0x8001, 12, 0x145, 0)
assert len(TPM2_SHUTDOWN_CLEAR) == 12


class SwtpmControl:
    """Server side of the control channel, shared by all control connections of one server.

    :param auto_shutdown: like swtpm without ``--flags disable-auto-shutdown``, send
        TPM2_Shutdown(CLEAR) before CMD_INIT, CMD_STOP and CMD_SHUTDOWN act on a running TPM,
        so the next Startup finds an orderly shutdown (tpm.md 1.2).
    """

    def __init__(self, platform: TpmPlatform, *, auto_shutdown: bool = True) -> None:
        self.platform = platform
        self.auto_shutdown = auto_shutdown
        self.auto_shutdowns = 0

    def _shutdown_first(self) -> None:
        if self.auto_shutdown and self.platform.powered:
            # Its answer does not matter: TPM_RC_INITIALIZE if never started is fine.
            self.platform.execute(TPM2_SHUTDOWN_CLEAR)
            self.auto_shutdowns += 1

    def handle(self, req: SwtpmControlRequest) -> ControlReply:
        """Answer one control request (tpm.md 1.2 table)."""
        code, p = req.code, req.payload
        plat = self.platform
        if code == SwtpmCmd.GET_CAPABILITY:
            return ControlReply(_result(TPM_SUCCESS, _U32.pack(int(SUPPORTED_CAPS))))
        if code == SwtpmCmd.INIT:
            # Power-cycle semantics: _TPM_Init; the client then sends TPM2_Startup.
            self._shutdown_first()
            if plat.powered:
                plat.reset()
            else:
                plat.power_on()
                plat.nv_on()
            return ControlReply(_result(TPM_SUCCESS))
        if code in (SwtpmCmd.SHUTDOWN, SwtpmCmd.STOP):
            self._shutdown_first()
            plat.power_off()
            return ControlReply(_result(TPM_SUCCESS), stop=code == SwtpmCmd.SHUTDOWN)
        if code == SwtpmCmd.GET_TPMESTABLISHED:
            return ControlReply(_result(TPM_SUCCESS, bytes([int(plat.established), 0, 0, 0])))
        if code == SwtpmCmd.SET_LOCALITY:
            if p[0] > MAX_LOCALITY:
                return ControlReply(_result(TPM_BAD_LOCALITY))
            plat.locality = p[0]
            return ControlReply(_result(TPM_SUCCESS))
        if code == SwtpmCmd.RESET_TPMESTABLISHED:
            if p[0] > MAX_LOCALITY:
                return ControlReply(_result(TPM_BAD_LOCALITY))
            plat.established = False
            return ControlReply(_result(TPM_SUCCESS))
        if code in (SwtpmCmd.HASH_START, SwtpmCmd.HASH_DATA, SwtpmCmd.HASH_END):
            try:
                if code == SwtpmCmd.HASH_START:
                    plat.hash_start()
                elif code == SwtpmCmd.HASH_DATA:
                    plat.hash_data(p[4:])
                else:
                    plat.hash_end()
                    plat.established = True
            except SignalNotSupported:
                return ControlReply(_result(TPM_FAIL))
            return ControlReply(_result(TPM_SUCCESS))
        if code == SwtpmCmd.CANCEL_TPM_CMD:
            plat.cancel(True)
            return ControlReply(_result(TPM_SUCCESS))
        if code == SwtpmCmd.GET_CONFIG:
            return ControlReply(_result(TPM_SUCCESS, _U32.pack(0)))  # no file key, no migration key
        if code == SwtpmCmd.SET_BUFFERSIZE:
            (want,) = _U32.unpack(p)
            if want not in (0, BUFFER_SIZE):
                return ControlReply(_result(TPM_BAD_PARAMETER))
            return ControlReply(_result(TPM_SUCCESS, struct.pack(">III", BUFFER_SIZE, BUFFER_SIZE, BUFFER_SIZE)))
        log.info("swtpm control: command %#x not supported", code)
        return ControlReply(_result(TPM_FAIL))
