"""What the migration engine needs from the VM and from the wire (structural interfaces).

The engine is written against :class:`VmPort` and :class:`Stream` only.  The kernel's
``svsm.kernel.migration.MigratableVm`` is a ``VmPort``; a connected TCP socket is a
``Stream``.  Once the module runtime carries kernel services (``Syscalls.service("vm", ...)``)
the same engine runs sandboxed with a port that forwards each call (docs/migration.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

__all__ = ["Page", "Stream", "VmPort"]

#: ``(gfn, state word, plaintext or None for an all-zero page)``; the state word is the
#: kernel's encoding of the frame's RMP state (opaque to the engine).  ``(gfn, 0, None)`` is a
#: frame as a freshly booted destination has it (hypervisor-owned, zero).
Page = tuple[int, int, "bytes | None"]


class Stream(Protocol):
    """A reliable byte stream to the peer (the host relays it; it sees ciphertext only)."""

    def sendall(self, data: bytes, /) -> None: ...

    def recv(self, bufsize: int, /) -> bytes: ...


class VmPort(Protocol):
    """The kernel's ``vm`` service as the engine uses it.  All methods may raise a RequestError."""

    def info(self) -> dict[str, Any]: ...

    def attest(self, report_data: bytes) -> tuple[bytes, bytes, bytes, bytes]: ...

    def frames(self) -> Sequence[int]: ...

    def start_dirty_log(self) -> None: ...

    def dirty_frames(self) -> set[int]: ...

    def stop_dirty_log(self) -> None: ...

    def read_pages(self, gfns: Sequence[int]) -> list[Page]: ...

    def write_pages(self, pages: Iterable[Page]) -> None: ...

    def chunk_count(self) -> int: ...

    def chunk_frames(self, chunk: int) -> Sequence[int]: ...

    def digests(self, chunks: Sequence[int] | None = None) -> list[bytes]: ...

    def pause(self) -> float: ...

    def resume(self) -> None: ...

    def fence(self) -> None: ...

    def export_state(self) -> bytes: ...

    def import_state(self, blob: bytes) -> None: ...

    def fingerprint(self, digests: Sequence[bytes] | None = None) -> dict[str, str]: ...
