"""Build packed little-endian ctypes structures from (offset, name, type) tables.

The hardware layouts (VMSA, GHCB) are declared as spec tables; this fills the gaps with
``_reserved_<off>`` byte arrays so each structure is written once and every offset can be
asserted right after the declaration (house rule 3).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

__all__ = ["packed_fields", "check_layout"]


def packed_fields(table: Sequence[tuple[int, str, Any]], total: int) -> list[tuple[str, Any]]:
    """Return a ``_fields_`` list placing each field at its offset, reserved bytes in between.

    :param table: (offset, name, ctypes type) sorted by offset.
    :param total: structure size; the tail is padded up to it.
    :raises ValueError: fields overlap or run past ``total``.
    """
    fields: list[tuple[str, Any]] = []
    pos = 0
    for off, name, ctype in table:
        if off < pos:
            raise ValueError(f"field {name} at {off:#x} overlaps the previous one (ends {pos:#x})")
        if off > pos:
            fields.append((f"_reserved_{pos:03x}", ctypes.c_uint8 * (off - pos)))
        fields.append((name, ctype))
        pos = off + ctypes.sizeof(ctype)
    if pos > total:
        raise ValueError(f"fields run to {pos:#x}, past {total:#x}")
    if pos < total:
        fields.append((f"_reserved_{pos:03x}", ctypes.c_uint8 * (total - pos)))
    return fields


def check_layout(struct: type[ctypes.Structure], table: Sequence[tuple[int, str, Any]], total: int) -> None:
    """Assert ``struct`` has size ``total`` and every table field at its offset (import time)."""
    assert ctypes.sizeof(struct) == total, (struct.__name__, ctypes.sizeof(struct))
    for off, name, _ in table:
        assert getattr(struct, name).offset == off, (struct.__name__, name, off)
