"""Chunk digests of the final check: the keyed form and the hashing-thread count."""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["default_threads", "keyed_digest"]

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
