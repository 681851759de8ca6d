"""Big-endian TPM marshalling: a bounds-checked reader and packing helpers (sans-IO).

Every short read raises :class:`TpmError` with ``TPM_RC_INSUFFICIENT``; the command
dispatcher adds the parameter number (tpm.md 9).  Struct formats are compiled once.
"""

from __future__ import annotations

import struct

from svsm.sdk import InvalidRequest

from ._constants import RC

__all__ = ["TpmError", "Reader", "u8", "u16", "u32", "u64", "i32", "tpm2b", "TPM2B_EMPTY"]

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I32 = struct.Struct(">i")
_U32_FROM = _U32.unpack_from

u8 = _U8.pack
u16 = _U16.pack
u32 = _U32.pack
u64 = _U64.pack
i32 = _I32.pack
TPM2B_EMPTY = b"\x00\x00"


def tpm2b(data: bytes) -> bytes:
    """``u16 size || data`` -- a TPM2B on the wire."""
    return _U16.pack(len(data)) + data


class TpmError(InvalidRequest):
    """A TPM command failed with response code :attr:`rc`.

    Raised inside the engine only; :meth:`Tpm.execute` turns it into a 10-byte error
    response.  Callers outside the engine never see it.

    :param rc: the TPM_RC value (possibly already tagged with a handle/parameter/session number).
    """

    def __init__(self, rc: int) -> None:
        super().__init__(f"TPM_RC {rc:#05x}")
        self.rc = rc


class Reader:
    """Cursor over an untrusted big-endian byte string.

    :param data: the bytes to read.
    :param pos: start offset.
    :param end: end offset (defaults to ``len(data)``).
    """

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        """Bytes left before :attr:`end`."""
        return self.end - self.pos

    def _take(self, n: int) -> int:
        p = self.pos
        if p + n > self.end:
            raise TpmError(RC.INSUFFICIENT)
        self.pos = p + n
        return p

    # The readers below inline _take: they run several times per command.
    def u8(self) -> int:
        """Read a u8."""
        p = self.pos
        if p >= self.end:
            raise TpmError(RC.INSUFFICIENT)
        self.pos = p + 1
        return self.data[p]

    def u16(self) -> int:
        """Read a big-endian u16."""
        p = self.pos
        q = p + 2
        if q > self.end:
            raise TpmError(RC.INSUFFICIENT)
        self.pos = q
        d = self.data
        return d[p] << 8 | d[p + 1]

    def u32(self) -> int:
        """Read a big-endian u32."""
        p = self.pos
        if p + 4 > self.end:
            raise TpmError(RC.INSUFFICIENT)
        self.pos = p + 4
        return _U32_FROM(self.data, p)[0]

    def u64(self) -> int:
        """Read a big-endian u64."""
        return _U64.unpack_from(self.data, self._take(8))[0]

    def i32(self) -> int:
        """Read a big-endian signed 32-bit integer."""
        return _I32.unpack_from(self.data, self._take(4))[0]

    def raw(self, n: int) -> bytes:
        """Read ``n`` raw bytes."""
        p = self.pos
        q = p + n
        if q > self.end:
            raise TpmError(RC.INSUFFICIENT)
        self.pos = q
        return bytes(self.data[p:q])

    def tpm2b(self, limit: int = 0xFFFF) -> bytes:
        """Read a TPM2B and return its buffer.

        :param limit: largest size the structure allows.
        :raises TpmError: SIZE if the size exceeds ``limit``, INSUFFICIENT if the bytes run out.
        """
        p = self.pos
        end = self.end
        if p + 2 > end:
            raise TpmError(RC.INSUFFICIENT)
        d = self.data
        n = d[p] << 8 | d[p + 1]
        if n > limit:
            self.pos = p + 2
            raise TpmError(RC.SIZE)
        q = p + 2 + n
        if q > end:
            self.pos = p + 2
            raise TpmError(RC.INSUFFICIENT)
        self.pos = q
        return bytes(d[p + 2:q])

    def sized(self) -> "Reader":
        """Read a u16 size and return a sub-reader over exactly that many bytes (TPM2B of a struct)."""
        n = self.u16()
        p = self._take(n)
        return Reader(self.data, p, p + n)

    def done(self) -> None:
        """Insist nothing is left (extra bytes in a sized structure -> SIZE)."""
        if self.pos != self.end:
            raise TpmError(RC.SIZE)
