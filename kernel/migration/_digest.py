"""Chunk digests of the final check: the keyed form, the thread count, the write-tracked source cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["default_threads", "keyed_digest", "WriteTrackedDigests"]

_KEYED_LABEL = b"pysvsm final check gmac v1\0"


def keyed_digest(gmac: AESGCM, chunk: int, joined: bytes) -> bytes:
    """The keyed chunk digest (see :meth:`MigratableVm.set_digest_key`).

    The nonce is the chunk number: a chunk's tag is recomputed over new contents under the same
    nonce, which would let someone holding two tags solve for the GHASH key -- so the tag never
    leaves the kernel as such; only its SHA-256 does (inside the sealed channel).
    """
    tag = gmac.encrypt(chunk.to_bytes(12, "big"), b"", joined)
    return hashlib.sha256(_KEYED_LABEL + chunk.to_bytes(8, "little") + tag).digest()


def default_threads() -> int:
    """Hashing threads: twice the CPUs this process may use, at most 8.

    hashlib releases the GIL while it hashes a joined 1 MiB chunk, so one thread reads the next
    chunk's pages (holding the GIL) while others hash: on 2 CPUs 4 threads beat 2 by ~20%.
    """
    return max(1, min(8, 2 * len(os.sched_getaffinity(0))))


class WriteTrackedDigests:
    """Chunk digests of a *running* source, kept only while the trusted write record vouches for them.

    A digest computed during pre-copy may be reused at stop time only if, since it was computed,
    (1) no frame of its chunk is in the memory controller's write record (which the hypervisor can
    neither clear nor forge, unlike its dirty log), and (2) every frame still has the same system
    frame and RMP entry -- the record covers memory writes, not RMP or nested-page-table changes,
    and a chunk's digest covers the state words.  The record is taken (cleared) and each chunk's
    mapping captured *before* the chunk is hashed, so a write or remap during hashing only makes
    the next check throw the digest away.

    :param memory: the platform's ``PhysicalMemory`` (``track_writes`` / ``take_written``).
    :param chunk_frames: ``chunk -> range`` of its guest frames.
    :param mapping: ``chunk -> comparable snapshot`` of its frames' system frames and RMP entries.
    """

    def __init__(self, memory: Any, chunk_frames: Callable[[int], range], mapping: Callable[[int], Any]) -> None:
        self._mem, self._frames_of, self._mapping = memory, chunk_frames, mapping
        self._cache: dict[int, tuple[bytes, Any]] = {}
        self.reused = 0
        memory.track_writes(True)

    def close(self) -> None:
        """Stop the record and forget every digest."""
        self._mem.track_writes(False)
        self._cache.clear()

    def forget(self) -> None:
        """Drop every cached digest (e.g. the digest key changed)."""
        self._cache.clear()

    def take(self) -> None:
        """Drop every cached digest whose chunk the record marks (clearing the record)."""
        w = self._mem.take_written(0, self._mem.npages)
        if not self._cache or not w.strip(b"\0"):
            return
        for c in list(self._cache):
            snap = self._cache[c][1]
            sfns = snap[0]
            if isinstance(sfns, range) and not sfns.start & 7 and not len(sfns) & 7:
                hit = bool(w[sfns.start >> 3 : sfns.stop >> 3].strip(b"\0"))
            else:
                hit = any(w[s >> 3] >> (s & 7) & 1 for s in sfns if s is not None)
            if hit:
                del self._cache[c]

    def split(self, todo: list[int]) -> tuple[dict[int, bytes], dict[int, Any]]:
        """(still valid digests, snapshots for the chunks to hash now) -- call :meth:`take` first."""
        valid: dict[int, bytes] = {}
        fresh: dict[int, Any] = {}
        for c in todo:
            snap = self._mapping(c)
            got = self._cache.get(c)
            if got is not None and got[1] == snap:
                valid[c] = got[0]
            else:
                fresh[c] = snap
        self.reused += len(valid)
        return valid, fresh

    def store(self, chunk: int, digest: bytes, snap: Any) -> None:
        """Remember ``digest`` of ``chunk`` hashed after ``snap`` was taken."""
        self._cache[chunk] = (digest, snap)
