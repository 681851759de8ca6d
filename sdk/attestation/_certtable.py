"""The certificate table returned by SNP_EXTENDED_GUEST_REQUEST (snp.md 2.4).

A table of 24-byte entries ``{GUID[16], u32 offset, u32 length}`` ended by an all-zero
entry, followed by the certificates (DER) at the given offsets from the buffer start.
"""

from __future__ import annotations

import struct
import uuid

from .._errors import InvalidFormat

__all__ = ["ARK_GUID", "ASK_GUID", "CERT_TABLE_ENTRY", "CertTableError", "VCEK_GUID", "VLEK_GUID",
           "build_cert_table", "parse_cert_table"]  # fmt: skip

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")

#: One table entry: GUID (EFI byte order), offset, length.
CERT_TABLE_ENTRY = struct.Struct("<16sII")
assert CERT_TABLE_ENTRY.size == 24


class CertTableError(InvalidFormat):
    """The certificate buffer is malformed (no terminator, entry out of bounds)."""


def build_cert_table(certs: dict[uuid.UUID, bytes]) -> bytes:
    """Lay out a certificate table with the certificates after the terminator.

    :param certs: GUID -> certificate bytes, in table order.
    :returns: the buffer (not padded to pages; the caller pads).
    """
    offset = CERT_TABLE_ENTRY.size * (len(certs) + 1)
    table, blobs = bytearray(), bytearray()
    for guid, blob in certs.items():
        table += CERT_TABLE_ENTRY.pack(guid.bytes_le, offset + len(blobs), len(blob))
        blobs += blob
    table += bytes(CERT_TABLE_ENTRY.size)
    return bytes(table + blobs)


def parse_cert_table(buf: bytes) -> dict[uuid.UUID, bytes]:
    """Read an untrusted certificate table.

    :returns: GUID -> certificate bytes.
    :raises CertTableError: missing terminator, duplicate GUID, or an entry outside ``buf``.
    """
    out: dict[uuid.UUID, bytes] = {}
    pos = 0
    while True:
        if pos + CERT_TABLE_ENTRY.size > len(buf):
            raise CertTableError("certificate table has no terminating entry")
        raw_guid, offset, length = CERT_TABLE_ENTRY.unpack_from(buf, pos)
        pos += CERT_TABLE_ENTRY.size
        if raw_guid == bytes(16) and offset == 0 and length == 0:
            return out
        guid = uuid.UUID(bytes_le=raw_guid)
        if guid in out:
            raise CertTableError(f"duplicate certificate entry {guid}")
        if offset + length > len(buf):
            raise CertTableError(f"certificate {guid} lies outside the buffer")
        out[guid] = bytes(buf[offset : offset + length])
