"""Blocking clients for the mssim and swtpm protocols; each is a :class:`TpmDevice`.

Used to reach a TPM behind a socket from Python: tests and benches, and as the backend of a
proxy (serve a real ``swtpm`` behind our mssim server to tell transport bugs from engine bugs).
"""

from __future__ import annotations

import logging
import socket
import struct

from ._errors import TransportError
from ._mssim import MssimCode, encode_send_command
from ._swtpm import TPM_SUCCESS, SwtpmCmd

__all__ = ["MssimClient", "SwtpmClient", "recv_exact"]

log = logging.getLogger(__name__)

_U32 = struct.Struct(">I")
_TPM_HEADER = struct.Struct(">HII")
#: Largest response accepted from a peer (the TSS's buffer size, tpm.md section 2).
MAX_RESPONSE = 4096


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes.

    :raises TransportError: the peer closed the connection first.
    """
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise TransportError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class MssimClient:
    """Client of an mssim server (what tcti-mssim does, tpm.md 1.1), usable as a :class:`TpmDevice`.

    :param host: server address.
    :param port: the command port P (platform = P+1).
    :param power_on: send POWER_ON and NV_ON at connect, like tcti-mssim.

    .. versionadded:: 0.1
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 2321, *, power_on: bool = True, timeout: float = 30.0) -> None:
        self.command = _connect(host, port, timeout)
        try:
            self.platform = _connect(host, port + 1, timeout)
        except OSError:
            self.command.close()
            raise
        if power_on:
            self.signal(MssimCode.SIGNAL_POWER_ON)
            self.signal(MssimCode.SIGNAL_NV_ON)

    def signal(self, code: int) -> int:
        """Send a payload-less platform signal; return the u32 the server answered (0 = OK)."""
        self.platform.sendall(_U32.pack(code))
        return int(_U32.unpack(recv_exact(self.platform, 4))[0])

    def power_on(self) -> None:
        """TPM_SIGNAL_POWER_ON."""
        self._ok(MssimCode.SIGNAL_POWER_ON)

    def power_off(self) -> None:
        """TPM_SIGNAL_POWER_OFF."""
        self._ok(MssimCode.SIGNAL_POWER_OFF)

    def nv_on(self) -> None:
        """TPM_SIGNAL_NV_ON."""
        self._ok(MssimCode.SIGNAL_NV_ON)

    def reset(self) -> None:
        """TPM_SIGNAL_RESET (``_TPM_Init``)."""
        self._ok(MssimCode.SIGNAL_RESET)

    def _ok(self, code: int) -> None:
        rc = self.signal(code)
        if rc != 0:
            raise TransportError(f"mssim signal {code} answered {rc}")

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        """TPM_SEND_COMMAND; returns the response (empty when the TPM has no power).

        :raises TransportError: the server closed or sent an oversized response.
        """
        self.command.sendall(encode_send_command(command, locality))
        (size,) = _U32.unpack(recv_exact(self.command, 4))
        if size > MAX_RESPONSE:
            raise TransportError(f"mssim response size {size} exceeds {MAX_RESPONSE}")
        # The body and the ack usually arrive together: read both at once.
        data = recv_exact(self.command, size + 4)
        return data[:size]

    def close(self) -> None:
        """TPM_SESSION_END on both sockets, then close them."""
        for s in (self.platform, self.command):
            try:
                s.sendall(_U32.pack(MssimCode.SESSION_END))
            except OSError:
                pass  # already gone: nothing to end
            s.close()

    def __enter__(self) -> MssimClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SwtpmClient:
    """Client of a swtpm socket server (``swtpm socket --server ... --ctrl ...``), a :class:`TpmDevice`.

    Keeps one data connection open (swtpm allows it) and opens a control connection per
    control command, as tcti-swtpm does.

    :param port: the data port P (control = P+1).

    .. versionadded:: 0.1
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 2321, *, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.data = _connect(host, port, timeout)
        self._locality = 0

    def control(self, code: int, payload: bytes = b"", reply_size: int = 0) -> tuple[int, bytes]:
        """One control command; returns ``(result, payload)`` (payload read only on success).

        :param reply_size: bytes of payload expected after the u32 result.
        """
        with _connect(self.host, self.port + 1, self.timeout) as s:
            s.sendall(_U32.pack(code) + payload)
            (result,) = _U32.unpack(recv_exact(s, 4))
            body = recv_exact(s, reply_size) if result == TPM_SUCCESS and reply_size else b""
        return int(result), body

    def _ok(self, code: int, payload: bytes = b"", reply_size: int = 0) -> bytes:
        result, body = self.control(code, payload, reply_size)
        if result != TPM_SUCCESS:
            raise TransportError(f"swtpm control {code:#x} failed with {result:#x}")
        return body

    def init(self, flags: int = 0) -> None:
        """CMD_INIT (``_TPM_Init``; bit 0 deletes volatile state)."""
        self._ok(SwtpmCmd.INIT, _U32.pack(flags))

    def reset(self) -> None:
        """Platform reset = CMD_INIT without flags."""
        self.init(0)

    def capabilities(self) -> int:
        """CMD_GET_CAPABILITY bitmap."""
        return int(_U32.unpack(self._ok(SwtpmCmd.GET_CAPABILITY, reply_size=4))[0])

    def set_locality(self, locality: int) -> None:
        """CMD_SET_LOCALITY."""
        self._ok(SwtpmCmd.SET_LOCALITY, bytes([locality]))
        self._locality = locality

    def shutdown(self) -> None:
        """CMD_SHUTDOWN: the swtpm process exits."""
        self._ok(SwtpmCmd.SHUTDOWN)

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        """Send raw command bytes; read the 10-byte header, then the rest.

        :raises TransportError: short read or a response size outside 10..4096.
        """
        if locality != self._locality:
            self.set_locality(locality)
        self.data.sendall(command)
        head = recv_exact(self.data, 10)
        _, size, _ = _TPM_HEADER.unpack(head)
        if not 10 <= size <= MAX_RESPONSE:
            raise TransportError(f"swtpm response size {size} outside 10..{MAX_RESPONSE}")
        return head + recv_exact(self.data, size - 10)

    def close(self) -> None:
        """Close the data connection (the TPM keeps running)."""
        self.data.close()

    def __enter__(self) -> SwtpmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
