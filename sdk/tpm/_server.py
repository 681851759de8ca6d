"""Socket drivers for the mssim and swtpm protocols: one epoll thread per server.

All protocol logic is in :mod:`._mssim` / :mod:`._swtpm`; this file only moves bytes.  One
thread multiplexes every connection of both ports: the TPM runs one command at a time anyway,
and tcti-swtpm opens a TCP connection per command, so a thread per connection would cost a
thread start per command.

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
import contextlib
import dataclasses
import logging
import os
import pathlib
import select
import random
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any

from ._errors import TransportError
from ._mssim import MssimConnection, MssimPort
from ._platform import TpmDevice, TpmPlatform
from ._swtpm import SwtpmControl, SwtpmControlReader, SwtpmData

__all__ = ["MssimServer", "SwtpmServer", "TpmServer", "ServerStatistics", "free_port_pair"]

log = logging.getLogger(__name__)

_RECV = 65536


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # the Linux default


def free_port_pair(host: str = "127.0.0.1", attempts: int = 200, rng: random.Random | None = None) -> int:
    """A port P such that P and P+1 were both free on ``host`` a moment ago.

    Both TPM protocols put their second channel on P+1, so one ephemeral port is not enough.
    Candidates come from *outside* the kernel's ephemeral range: tcti-swtpm opens a TCP
    connection per command, and the thousands of client ports it leaves in TIME_WAIT make
    most ephemeral pairs unusable.  There is an unavoidable race with other processes;
    :meth:`TpmServer.start` retries on EADDRINUSE.

    :param rng: source of candidate ports (injectable for tests).
    :raises OSError: no pair found in ``attempts`` tries.

    .. versionadded:: 0.1
    """
    rng = rng or random.Random()
    lo, hi = _ephemeral_range()
    ranges = [(r0, r1) for r0, r1 in ((10000, lo - 2), (hi + 1, 65533)) if r1 > r0] or [(1024, 65533)]
    for _ in range(attempts):
        r0, r1 = rng.choice(ranges)
        port = rng.randint(r0, r1)
        try:
            for p in (port, port + 1):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((host, p))
        except OSError:
            continue
        return port
    raise OSError("no two consecutive free TCP ports found")


@dataclasses.dataclass(frozen=True)
class ServerStatistics:
    """Counters of one server (house rule 10)."""

    port: int
    connections: int
    active_connections: int
    transport_errors: int
    replies: int
    internal_errors: int = 0


@dataclasses.dataclass(frozen=True)
class Output:
    """One thing a connection handler wants done: send ``data`` (or ``parts`` one by one when not
    in low-latency mode), then maybe close the connection or stop the server."""

    data: bytes = b""
    parts: tuple[bytes, ...] = ()
    close: bool = False
    stop: bool = False


#: A connection handler: received bytes (``b""`` = EOF) -> outputs.
Handler = Callable[[bytes], list[Output]]


class TpmServer(abc.ABC):
    """Two listening sockets (P and P+1) served by one epoll thread, a shared :class:`TpmPlatform`.

    :param target: the TPM (a :class:`TpmDevice`, wrapped in a powered-on platform) or a platform.
    :param host: address to bind; loopback by default.
    :param port: the first port P (``0``: pick a free pair).
    :param low_latency: TCP_NODELAY + one write per reply + TCP_QUICKACK (see the module doc).
    :param path: listen on AF_UNIX sockets ``path`` and ``path + ".ctrl"`` instead of TCP
        (the TCTIs' ``path=`` option); stale socket files there are replaced.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        target: TpmDevice | TpmPlatform,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        low_latency: bool = True,
        path: str | None = None,
    ) -> None:
        self.platform = target if isinstance(target, TpmPlatform) else TpmPlatform(target)
        self.host = host
        self.path = path
        self.low_latency = low_latency
        #: TCP options apply to TCP only; AF_UNIX has no Nagle and no delayed ACKs.
        self._tcp = path is None
        #: Re-arm TCP_QUICKACK after each recv: only where clients split a request over writes.
        self.quickack = low_latency and self.SPLIT_WRITES and self._tcp
        self._requested_port = port
        self.port = port
        self._listeners: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._epoll = select.epoll()
        #: fd -> (socket, "listen" | "wake" | "conn", listener index or connection handler)
        self._fds: dict[int, tuple[socket.socket, str, object]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._n_conn = 0
        self._n_err = 0
        self._n_replies = 0
        self._n_internal = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> TpmServer:
        """Bind both ports and start serving.

        :raises OSError: the ports are taken (with ``port=0`` several pairs are tried first).
        """
        if self.path is not None:
            self._listeners = [self._listen_unix(self.path), self._listen_unix(self.path + ".ctrl")]
            return self._run(f"{self.path} (+.ctrl)")
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
        return self._run(f"{self.host}:{port}/{port + 1}")

    def _run(self, where: str) -> TpmServer:
        for index, sock in enumerate(self._listeners):
            self._watch(sock, "listen", index)
        self._watch(self._wake_r, "wake", None)
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"tpm-server {where}")
        self._thread.start()
        log.info("%s listening on %s", type(self).__name__, where)
        return self

    def _listen_unix(self, path: str) -> socket.socket:
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(path)
            s.listen(64)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        return s

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.host, port))
            s.listen(64)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        return s

    def stop(self) -> None:
        """Stop serving, close the listeners and every open connection; idempotent."""
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # already closed by an earlier stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self._thread is None or not self._thread.is_alive():
            self._close_all()

    def _close_all(self) -> None:
        if self._stopped.is_set():
            return
        for s in [*self._listeners, *self._conns]:
            s.close()
        self._conns.clear()
        if self.path is not None:
            for p in (self.path, self.path + ".ctrl"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        self._epoll.close()
        self._wake_r.close()
        self._wake_w.close()
        self._stopped.set()

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
            return ServerStatistics(self.port, self._n_conn, len(self._conns), self._n_err, self._n_replies, self._n_internal)

    # -- plumbing ----------------------------------------------------------------------

    #: Whether this protocol's clients split one request over several writes (see the module doc).
    SPLIT_WRITES: bool = True

    @abc.abstractmethod
    def _handler(self, index: int) -> Handler:
        """A fresh handler for a connection on port P (``index`` 0) or P+1 (``index`` 1)."""

    def _watch(self, sock: socket.socket, kind: str, arg: object) -> None:
        self._fds[sock.fileno()] = (sock, kind, arg)
        self._epoll.register(sock.fileno(), select.EPOLLIN)

    def _loop(self) -> None:
        # epoll directly rather than `selectors`: tcti-swtpm makes a connection per command, so
        # the per-event overhead is per TPM command.
        fds = self._fds
        try:
            while not self._stopping.is_set():
                for fd, _ in self._epoll.poll():
                    entry = fds.get(fd)
                    if entry is None:
                        continue  # dropped earlier in this batch
                    sock, kind, arg = entry
                    if kind == "conn":
                        self._readable(sock, arg)  # type: ignore[arg-type]
                    elif kind == "listen":
                        self._accept(sock, arg)  # type: ignore[arg-type]
                    else:
                        return
        finally:
            self._close_all()

    def _accept(self, listener: socket.socket, index: int) -> None:
        try:
            fd, _ = listener._accept()  # type: ignore[attr-defined]  # no getsockname/ioctl of accept()
        except BlockingIOError:
            return  # the client went away between poll and accept
        # accept4 without SOCK_NONBLOCK: the new fd is blocking, as Python assumes by default.
        conn = socket.socket(listener.family, socket.SOCK_STREAM, 0, fd)
        if self.low_latency and self._tcp:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handler = self._handler(index)
        self._watch(conn, "conn", handler)
        with self._lock:
            self._conns.add(conn)
            self._n_conn += 1
        # tcti-swtpm connects and writes at once: serve the command without another select round.
        try:
            early = conn.recv(_RECV, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        self._readable(conn, handler, early)

    def _drop(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        self._fds.pop(fd, None)
        self._epoll.unregister(fd)
        with self._lock:
            self._conns.discard(conn)
        conn.close()

    def _readable(self, conn: socket.socket, handler: Handler, data: bytes | None = None) -> None:
        try:
            if data is None:
                data = conn.recv(_RECV)
            if self.quickack and data:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            outputs = handler(data)
            for out in outputs:
                self._send(conn, out)
                if out.stop:
                    self._stopping.set()
                if out.close:
                    self._drop(conn)
                    return
        except TransportError as exc:
            log.info("dropping TPM client: %s", exc)
            with self._lock:
                self._n_err += 1
            self._drop(conn)
            return
        except OSError as exc:
            log.debug("TPM client connection error: %s", exc)
            self._drop(conn)
            return
        except Exception:  # noqa: BLE001 -- a device bug must not kill the server thread
            # Logged with its traceback and counted; the client loses this connection only.
            log.exception("TPM server: unexpected error while serving a client; dropping it")
            with self._lock:
                self._n_internal += 1
            self._drop(conn)
            return
        if not data:
            self._drop(conn)

    def _send(self, conn: socket.socket, out: Output) -> None:
        if not out.data:
            return
        with self._lock:
            self._n_replies += 1
        if self.low_latency or not out.parts:
            conn.sendall(out.data)
            return
        for part in out.parts:
            conn.sendall(part)


class MssimServer(TpmServer):
    """The TPM simulator protocol: command port P, platform port P+1 (tpm2-tss ``mssim:`` TCTI).

    .. versionadded:: 0.1
    """

    #: tcti-mssim writes the 9-byte prefix and the command separately.
    SPLIT_WRITES = True

    def _handler(self, index: int) -> Handler:
        machine = MssimConnection(MssimPort.COMMAND if index == 0 else MssimPort.PLATFORM, self.platform)

        def handle(data: bytes) -> list[Output]:
            return [Output(r.data, r.parts, r.close, r.stop) for r in machine.receive(data)]

        return handle


class SwtpmServer(TpmServer):
    """The swtpm socket protocol: data port P, control port P+1 (tpm2-tss ``swtpm:`` TCTI).

    .. versionadded:: 0.1
    """

    #: tcti-swtpm writes each command (and control request) in one write.
    SPLIT_WRITES = False

    def __init__(self, target: TpmDevice | TpmPlatform, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        super().__init__(target, host, port, **kw)
        self.control = SwtpmControl(self.platform)

    def _handler(self, index: int) -> Handler:
        if index == 0:
            data_machine = SwtpmData(self.platform)

            def data(raw: bytes) -> list[Output]:
                return [Output(r) for r in data_machine.receive(raw)]

            return data
        reader = SwtpmControlReader()

        def ctrl(raw: bytes) -> list[Output]:
            outs = []
            for req in reader.feed(raw):
                reply = self.control.handle(req)
                outs.append(Output(reply.data, close=reply.stop, stop=reply.stop))
            return outs

        return ctrl
