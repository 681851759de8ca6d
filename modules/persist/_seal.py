"""Sealing: AES-256-GCM under subkeys of the PSP-derived key.

The module receives one 32-byte key from the derived-key syscall (MSG_KEY_REQ, snp.md 2.3, with
GUEST_FIELD_SELECT binding the measurement and the guest policy).  HKDF-SHA256 with the store's
clear salt splits it into one key per purpose, so a blob of one kind can never be opened as
another.  A different SVSM measurement derives a different key and every unseal fails.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._errors import IntegrityError
from ._format import NONCE_SIZE, SEAL_OVERHEAD

__all__ = ["Sealer", "KEY_SIZE"]

KEY_SIZE = 32
_INFO = b"pysvsm persist v1 "


class Sealer:
    """The three AEAD keys of one store (superblock, index nodes, records).

    :param sealing_key: 32 bytes from the PSP's derived-key service.
    :param salt: the store's clear 16-byte salt.
    :param rng: ``os.urandom``-like source of nonces (injected).
    """

    def __init__(self, sealing_key: bytes, salt: bytes, rng: Callable[[int], bytes]) -> None:
        if len(sealing_key) != KEY_SIZE:
            raise ValueError("sealing key must be 32 bytes")
        self._rng = rng
        self._aead = {p: AESGCM(self._derive(sealing_key, salt, p)) for p in ("superblock", "node", "record")}

    @staticmethod
    def _derive(key: bytes, salt: bytes, purpose: str) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt,
                    info=_INFO + purpose.encode()).derive(key)

    def seal(self, purpose: str, plaintext: bytes, aad: bytes) -> bytes:
        """``nonce || ciphertext || tag`` with a fresh random nonce."""
        nonce = self._rng(NONCE_SIZE)
        return nonce + self._aead[purpose].encrypt(nonce, plaintext, aad)

    def seal_with_nonce(self, purpose: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """``ciphertext || tag`` under a nonce the caller stores elsewhere (superblock header)."""
        return self._aead[purpose].encrypt(nonce, plaintext, aad)

    def unseal(self, purpose: str, blob: bytes, aad: bytes) -> bytes:
        """Open ``nonce || ciphertext || tag``.

        :raises IntegrityError: wrong key, wrong identity or modified bytes (all look the same).
        """
        if len(blob) < SEAL_OVERHEAD:
            raise IntegrityError(f"{purpose} blob short")
        return self.unseal_with_nonce(purpose, blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)

    def unseal_with_nonce(self, purpose: str, nonce: bytes, ct: bytes, aad: bytes) -> bytes:
        """Open ``ciphertext || tag`` under ``nonce``.

        :raises IntegrityError: authentication failed.
        """
        try:
            return self._aead[purpose].decrypt(nonce, ct, aad)
        except InvalidTag:
            raise IntegrityError(f"{purpose} tag") from None
