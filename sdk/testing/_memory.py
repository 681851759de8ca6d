"""A guest-memory window for module tests without booting a VM."""

from __future__ import annotations

from svsm.sdk import InvalidAddress

__all__ = ["FakeGuestMemory"]


class FakeGuestMemory:
    """``read``/``write`` over a zero-filled bytearray, with the window contract of dispatch.

    :param size: bytes of "guest memory" starting at GPA 0.
    """

    def __init__(self, size: int = 1 << 20) -> None:
        self.data = bytearray(size)
        self.revoked = False

    def _check(self, gpa: int, length: int) -> None:
        if self.revoked:
            raise InvalidAddress("window revoked")
        if gpa < 0 or length < 0 or gpa + length > len(self.data):
            raise InvalidAddress(f"[{gpa:#x}, +{length}) outside guest memory")

    def read(self, gpa: int, length: int) -> bytes:
        """Bytes at ``gpa``.  :raises InvalidAddress: outside memory or revoked."""
        self._check(gpa, length)
        return bytes(self.data[gpa : gpa + length])

    def write(self, gpa: int, data: bytes) -> None:
        """Store ``data`` at ``gpa``.  :raises InvalidAddress: outside memory or revoked."""
        self._check(gpa, len(data))
        self.data[gpa : gpa + len(data)] = data

    def revoke(self) -> None:
        """End the window: every later access raises."""
        self.revoked = True
