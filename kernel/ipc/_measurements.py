"""The pysvsm module-measurement entry of the attestation services manifest.

GUID :data:`MODULE_MEASUREMENTS_GUID` (defined by pysvsm).  Layout, little-endian:

* header (8 bytes): u32 version = 1 @0, u32 count @4;
* per module, in name order: u8 name_len @0, u8 version_len @1, u16 reserved = 0 @2,
  SHA-384 measurement[48] @4, then name (UTF-8) and version (UTF-8).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable
from typing import NamedTuple

from svsm.sdk import InvalidFormat

__all__ = ["MODULE_MEASUREMENTS_GUID", "MeasurementEntry", "encode_measurements", "decode_measurements"]

#: Service GUID of the module-measurement entry (pysvsm-defined; docs/modules.md).
MODULE_MEASUREMENTS_GUID = uuid.UUID("c1d6e8b3-6f0e-4a37-9a52-2f3b5e0d7a41")

_HEADER = struct.Struct("<II")
assert _HEADER.size == 8
_ENTRY = struct.Struct("<BBH48s")
assert _ENTRY.size == 52
VERSION = 1


class MeasurementEntry(NamedTuple):
    """One measured module."""

    name: str
    version: str
    measurement: bytes


def encode_measurements(entries: Iterable[MeasurementEntry]) -> bytes:
    """Serialise entries (sorted by name)."""
    items = sorted(entries, key=lambda e: e.name)
    out = bytearray(_HEADER.pack(VERSION, len(items)))
    for e in items:
        name, ver = e.name.encode(), e.version.encode()
        if len(name) > 255 or len(ver) > 255 or len(e.measurement) != 48:
            raise ValueError("measurement entry out of bounds")
        out += _ENTRY.pack(len(name), len(ver), 0, e.measurement) + name + ver
    return bytes(out)


def decode_measurements(data: bytes) -> list[MeasurementEntry]:
    """Parse the entry (for verifiers).  :raises InvalidFormat: malformed."""
    if len(data) < _HEADER.size:
        raise InvalidFormat("measurement entry too short")
    version, count = _HEADER.unpack_from(data, 0)
    if version != VERSION:
        raise InvalidFormat(f"measurement entry version {version}")
    pos, out = _HEADER.size, []
    for _ in range(count):
        if pos + _ENTRY.size > len(data):
            raise InvalidFormat("truncated measurement entry")
        nlen, vlen, reserved, digest = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        if reserved or pos + nlen + vlen > len(data):
            raise InvalidFormat("bad measurement entry")
        try:
            name = data[pos : pos + nlen].decode()
            ver = data[pos + nlen : pos + nlen + vlen].decode()
        except UnicodeDecodeError:
            raise InvalidFormat("measurement entry name is not UTF-8") from None
        pos += nlen + vlen
        out.append(MeasurementEntry(name, ver, digest))
    if pos != len(data):
        raise InvalidFormat("trailing bytes in measurement entry")
    return out
