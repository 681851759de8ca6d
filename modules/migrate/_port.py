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

    def sendall(self, data: bytes, /) -> None:
        """Write all of ``data``."""
        ...

    def recv(self, bufsize: int, /) -> bytes:
        """Up to ``bufsize`` bytes; ``b""`` at end of stream."""
        ...


class VmPort(Protocol):
    """The kernel's ``vm`` service as the engine uses it.  All methods may raise a RequestError."""

    def info(self) -> dict[str, Any]:
        """Shape of the VM (memory_size, guest_frames, vcpus, guest_vmpl, modules, measurement)."""
        ...

    def attest(self, report_data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """(report, ARK, ASK, VCEK PEMs) of this SVSM; the report's REPORT_DATA is
        ``migration_report_data(report_data)`` (labelled: never the caller's bytes as they are)."""
        ...

    def frames(self) -> Sequence[int]:
        """Every guest frame that migrates."""
        ...

    def start_dirty_log(self) -> None:
        """Ask the hypervisor to log guest writes."""
        ...

    def dirty_frames(self) -> set[int]:
        """Frames the hypervisor says were written since the last call (a hint, never trusted)."""
        ...

    def stop_dirty_log(self) -> None:
        """Stop logging."""
        ...

    def read_pages(self, gfns: Sequence[int]) -> list[Page]:
        """Plaintext and state of ``gfns`` through the SVSM's own mappings."""
        ...

    def write_pages(self, pages: Iterable[Page]) -> None:
        """Import pages (destination; all checked before any is applied)."""
        ...

    def set_digest_key(self, key: bytes) -> None:
        """Key the final check's chunk digests with the channel's 32-byte ``digest_key`` (both ends)."""
        ...

    def chunk_count(self) -> int:
        """Number of digest chunks over guest memory."""
        ...

    def chunk_frames(self, chunk: int) -> Sequence[int]:
        """The frames of one digest chunk."""
        ...

    def digests(self, chunks: Sequence[int] | None = None) -> list[bytes]:
        """SHA-256 per chunk of guest memory as it is now (the final check)."""
        ...

    def pause(self) -> float:
        """Stop the guest's vCPUs; seconds waited for them."""
        ...

    def resume(self) -> None:
        """Run the guest again (raises once fenced)."""
        ...

    def fence(self) -> None:
        """Never run this guest here again (the commit decision)."""
        ...

    def export_state(self) -> bytes:
        """VMSAs, keys and module states of the paused guest (opaque to the engine)."""
        ...

    def import_state(self, blob: bytes) -> None:
        """Install a peer's :meth:`export_state` output."""
        ...

    def fingerprint(self, digests: Sequence[bytes] | None = None) -> dict[str, str]:
        """Hashes that must be equal on both ends before the commit."""
        ...
