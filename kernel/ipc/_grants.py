"""Grants: a module's window onto exactly the guest pages of one request.

Hazardous layer.  A grant is created by the kernel for one request from that
request's guest-memory window and revoked when the request completes; every access
is checked against the window here, before guest memory is touched.
"""

from __future__ import annotations

import itertools
import threading
from typing import NamedTuple, Protocol

from svsm.sdk import InvalidAddress, InvalidParameter, InvalidRequest

__all__ = ["GrantTable", "GrantStatistics", "MemoryWindow"]


class MemoryWindow(Protocol):
    """The request-limited guest-memory accessor (``svsm.kernel.protocols.GuestMemoryWindow``)."""

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...


class _Grant(NamedTuple):
    gpa: int
    size: int
    writable: bool
    memory: MemoryWindow


class GrantStatistics(NamedTuple):
    """Grant counters of one module."""

    created: int
    live: int
    revoked: int
    refused: int


class GrantTable:
    """The live grants of one module."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grants: dict[int, _Grant] = {}
        self._ids = itertools.count(1)
        self._created = self._revoked = self._refused = 0

    def create(self, memory: MemoryWindow, gpa: int, size: int, writable: bool) -> int:
        """Register a grant over ``[gpa, gpa + size)`` of ``memory``; returns its id."""
        with self._lock:
            gid = next(self._ids) & 0xFFFF_FFFF
            self._grants[gid] = _Grant(gpa, size, writable, memory)
            self._created += 1
            return gid

    def _get(self, gid: int) -> _Grant:
        g = self._grants.get(gid)
        if g is None:
            self._refused += 1
            raise InvalidRequest("no such grant (revoked or never granted)")
        return g

    def map(self, gid: int) -> bytes:
        """The window's bytes.  :raises InvalidRequest: unknown or revoked grant."""
        with self._lock:
            g = self._get(gid)
        return g.memory.read(g.gpa, g.size)

    def write(self, gid: int, offset: int, data: bytes) -> None:
        """Write inside the window.

        :raises InvalidRequest: unknown or revoked grant.
        :raises InvalidParameter: read-only grant.
        :raises InvalidAddress: outside the window.
        """
        with self._lock:
            g = self._get(gid)
            if not g.writable:
                self._refused += 1
                raise InvalidParameter("grant is read-only")
            if offset < 0 or offset + len(data) > g.size:
                self._refused += 1
                raise InvalidAddress("write outside the grant window")
        g.memory.write(g.gpa + offset, data)

    def revoke(self, gid: int) -> None:
        """End a grant (request completed, or the module unmapped it).  Unknown ids are ignored."""
        with self._lock:
            if self._grants.pop(gid, None) is not None:
                self._revoked += 1

    def unmap(self, gid: int) -> None:
        """The module gives a grant back.  :raises InvalidRequest: unknown or revoked grant."""
        with self._lock:
            self._get(gid)
            del self._grants[gid]
            self._revoked += 1

    def revoke_all(self) -> None:
        """Revoke every grant (module died)."""
        with self._lock:
            self._revoked += len(self._grants)
            self._grants.clear()

    def statistics(self) -> GrantStatistics:
        """Counters."""
        with self._lock:
            return GrantStatistics(self._created, len(self._grants), self._revoked, self._refused)
