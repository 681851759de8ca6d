"""Threaded socket drivers for the mssim and swtpm protocols.

All protocol logic is in :mod:`._mssim` / :mod:`._swtpm`; this file only moves bytes.

Latency: tcti-mssim reads a response as ``u32 size``, then the body, then the ack.  A
server that writes those as three small writes with Nagle on makes the second write wait
for the client's delayed ACK (~40 ms on Linux) on *every* command.  Likewise the TSS's own
split writes (9-byte prefix, then the command) wait for *our* delayed ACK.  So by default
each socket gets TCP_NODELAY, every reply goes out as one ``sendall``, and TCP_QUICKACK is
re-armed after each ``recv`` (Linux clears it by itself).  ``low_latency=False`` turns all
three off, for bench/tpm.py to show the difference.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import socket
import threading
from collections.abc import Callable

from ._errors import TransportError
from ._mssim import MssimConnection, MssimPort
from ._platform import TpmDevice, TpmPlatform
from ._swtpm import SwtpmControl, SwtpmControlReader, SwtpmData

__all__ = ["MssimServer", "SwtpmServer", "TpmServer", "ServerStatistics", "free_port_pair"]

log = logging.getLogger(__name__)

_RECV = 65536


def free_port_pair(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A port P such that P and P+1 were both free on ``host`` a moment ago.

    Both TPM protocols put their second channel on P+1, so an ephemeral single port is not
    enough.  There is an unavoidable race with other processes; callers retry on EADDRINUSE.

    :raises OSError: no pair found in ``attempts`` tries.
    """
    for _ in range(attempts):
        with socket.socket() as a:
            a.bind((host, 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind((host, port + 1))
                except OSError:
                    continue
                return int(port)
    raise OSError("no two consecutive free TCP ports found")


@dataclasses.dataclass(frozen=True)
class ServerStatistics:
    """Counters of one server (house rule 10)."""

    port: int
    connections: int
    active_connections: int
    transport_errors: int
    replies: int


class TpmServer(abc.ABC):
    """Two listening sockets (P and P+1), one thread per connection, a shared :class:`TpmPlatform`.

    :param target: the TPM (a :class:`TpmDevice`, wrapped in a powered-on platform) or a platform.
    :param host: address to bind; loopback by default.
    :param port: the first port P (``0``: pick a free pair).
    :param low_latency: TCP_NODELAY + one write per reply + TCP_QUICKACK (see the module doc).
    """

    def __init__(
        self,
        target: TpmDevice | TpmPlatform,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        low_latency: bool = True,
    ) -> None:
        self.platform = target if isinstance(target, TpmPlatform) else TpmPlatform(target)
        self.host = host
        self.low_latency = low_latency
        self._requested_port = port
        self.port = port
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._n_conn = 0
        self._n_err = 0
        self._n_replies = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> TpmServer:
        """Bind both ports and start accepting.

        :raises OSError: the ports are taken (with ``port=0`` a few pairs are tried first).
        """
        for attempt in range(10):
            port = self._requested_port or free_port_pair(self.host)
            try:
                self._listeners = [self._listen(port), self._listen(port + 1)]
                break
            except OSError:
                for s in self._listeners:
                    s.close()
                self._listeners = []
                if self._requested_port or attempt == 9:
                    raise
        self.port = port
        for sock, handler in zip(self._listeners, self._handlers(), strict=True):
            t = threading.Thread(target=self._accept_loop, args=(sock, handler), daemon=True, name=f"tpm-accept-{port}")
            t.start()
            self._threads.append(t)
        log.info("%s listening on %s:%d/%d", type(self).__name__, self.host, port, port + 1)
        return self

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.host, port))
            s.listen(16)
        except OSError:
            s.close()
            raise
        return s

    def stop(self) -> None:
        """Close the listeners and every open connection; idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for s in self._listeners:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # never connected: close() below is enough
            s.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the peer already closed it
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join(timeout=5)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the server stopped (TPM_STOP, CMD_SHUTDOWN or :meth:`stop`)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> TpmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def statistics(self) -> ServerStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return ServerStatistics(self.port, self._n_conn, len(self._conns), self._n_err, self._n_replies)

    # -- plumbing ----------------------------------------------------------------------

    @abc.abstractmethod
    def _handlers(self) -> list[Callable[[socket.socket], None]]:
        """The connection handlers of port P and port P+1, in that order."""

    def _accept_loop(self, listener: socket.socket, handler: Callable[[socket.socket], None]) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # listener closed by stop()
            if self.low_latency:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
                self._n_conn += 1
            t = threading.Thread(target=self._serve, args=(conn, handler), daemon=True, name="tpm-conn")
            t.start()

    def _serve(self, conn: socket.socket, handler: Callable[[socket.socket], None]) -> None:
        try:
            handler(conn)
        except TransportError as exc:
            log.info("dropping TPM client: %s", exc)
            with self._lock:
                self._n_err += 1
        except OSError as exc:
            log.debug("TPM client connection error: %s", exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _recv(self, conn: socket.socket) -> bytes:
        data = conn.recv(_RECV)
        if self.low_latency and data:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data

    def _send(self, conn: socket.socket, data: bytes, parts: tuple[bytes, ...] = ()) -> None:
        with self._lock:
            self._n_replies += 1
        if self.low_latency or not parts:
            if data:
                conn.sendall(data)
            return
        for part in parts:
            conn.sendall(part)

    def _stop_async(self) -> None:
        threading.Thread(target=self.stop, daemon=True, name="tpm-stop").start()


class MssimServer(TpmServer):
    """The TPM simulator protocol: command port P, platform port P+1 (tpm2-tss ``mssim:`` TCTI)."""

    def _handlers(self) -> list[Callable[[socket.socket], None]]:
        return [lambda c: self._mssim(c, MssimPort.COMMAND), lambda c: self._mssim(c, MssimPort.PLATFORM)]

    def _mssim(self, conn: socket.socket, port: MssimPort) -> None:
        machine = MssimConnection(port, self.platform)
        while True:
            data = self._recv(conn)
            for reply in machine.receive(data):
                self._send(conn, reply.data, reply.parts)
                if reply.stop:
                    self._stop_async()
                if reply.close:
                    return
            if not data:
                return


class SwtpmServer(TpmServer):
    """The swtpm socket protocol: data port P, control port P+1 (tpm2-tss ``swtpm:`` TCTI)."""

    def __init__(self, target: TpmDevice | TpmPlatform, host: str = "127.0.0.1", port: int = 0, **kw: bool) -> None:
        super().__init__(target, host, port, **kw)
        self.control = SwtpmControl(self.platform)

    def _handlers(self) -> list[Callable[[socket.socket], None]]:
        return [self._data, self._ctrl]

    def _data(self, conn: socket.socket) -> None:
        machine = SwtpmData(self.platform)
        while data := self._recv(conn):
            for reply in machine.receive(data):
                self._send(conn, reply)

    def _ctrl(self, conn: socket.socket) -> None:
        reader = SwtpmControlReader()
        while data := self._recv(conn):
            for req in reader.feed(data):
                reply = self.control.handle(req)
                self._send(conn, reply.data)
                if reply.stop:
                    self._stop_async()
                    return
