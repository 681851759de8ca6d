"""The host's relay for the migration stream: plain TCP carrying the channel's ciphertext.

Like COCONUT's host-side proxy, the host only moves bytes: everything on this socket is
already sealed by the attested channel, so the transport needs no security of its own.
"""

from __future__ import annotations

import logging
import os
import pathlib
import socket

from svsm.sdk import InvalidParameter

__all__ = ["accept_one", "connect", "listen", "parse_endpoint"]

log = logging.getLogger("svsm.kernel.migration.transport")

_BUF = 4 << 20


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` / ``"[v6]:PORT"`` -> (host, port).  :raises InvalidParameter: malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidParameter(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _tune(sock: socket.socket, timeout: float | None) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, _BUF)
        except OSError:
            pass  # a smaller buffer only costs throughput
    sock.settimeout(timeout)
    return sock


def listen(host: str, port: int, *, port_file: pathlib.Path | None = None) -> socket.socket:
    """A listening socket (``port`` 0 picks one; written to ``port_file`` atomically if given)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    bound = srv.getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(bound))
        os.replace(tmp, port_file)
    log.info("waiting for a migration on %s:%d", host, bound)
    return srv


def accept_one(srv: socket.socket, *, timeout: float | None, io_timeout: float | None = 120.0) -> socket.socket:
    """Accept one source.  :raises TimeoutError: nobody came within ``timeout`` seconds."""
    srv.settimeout(timeout)
    try:
        conn, peer = srv.accept()
    except socket.timeout:
        raise TimeoutError("no migration source connected") from None
    log.info("migration source connected from %s", peer)
    return _tune(conn, io_timeout)


def connect(host: str, port: int, *, timeout: float | None = 30.0, io_timeout: float | None = 120.0) -> socket.socket:
    """Connect to a waiting destination.  :raises OSError: unreachable."""
    sock = socket.create_connection((host, port), timeout=timeout)
    return _tune(sock, io_timeout)
