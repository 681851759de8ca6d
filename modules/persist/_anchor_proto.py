"""Wire format of the freshness-anchor protocol (JSON over length-prefixed frames).

Frame: u32 big-endian length, then a UTF-8 JSON object; at most :data:`MAX_FRAME` bytes.
The same framing as COCONUT's aproxy link (coconut-svsm.md 6.1) with a 4-byte length.

Exchange (one TCP connection per message pair is fine):

1. ``{"type": "challenge"}`` -> ``{"type": "challenge", "challenge": hex32, "anchor_key": hex32}``
2. ``{"type": "op", "request": Request, "report": hex, "vcek": hex}`` ->
   ``{"type": "reply", "reply": Reply, "signature": hex64}``

``Request`` = ``{op, store_id, generation, lease, challenge, client_nonce}``; the SVSM's attestation
report carries ``REPORT_DATA = SHA-512(canonical(Request))``.  ``Reply`` = ``{op, status,
generation, lease, client_nonce}`` signed with the anchor's Ed25519 key over ``canonical(Reply)``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

from svsm.sdk import InvalidFormat

__all__ = [
    "MAX_FRAME",
    "OPS",
    "STATUSES",
    "FRAME_HEADER",
    "ProtocolViolation",
    "canonical",
    "decode",
    "encode",
    "parse_reply",
    "parse_request",
    "parse_module",
    "report_data_for",
]

MAX_FRAME = 64 * 1024
FRAME_HEADER = struct.Struct(">I")
assert FRAME_HEADER.size == 4
OPS = ("acquire", "advance", "heartbeat", "release")
STATUSES = ("ok", "clone", "rollback", "refused")


class ProtocolViolation(InvalidFormat):
    """A frame that is not a well-formed anchor message (too big, bad JSON, bad fields)."""


def canonical(obj: dict[str, Any]) -> bytes:
    """The one byte string that is hashed or signed for ``obj``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def report_data_for(request: dict[str, Any]) -> bytes:
    """REPORT_DATA binding the attestation report to ``request`` (64 bytes)."""
    return hashlib.sha512(b"pysvsm anchor v1\0" + canonical(request)).digest()


def encode(obj: dict[str, Any]) -> bytes:
    """Frame ``obj``.

    :raises ProtocolViolation: larger than :data:`MAX_FRAME`.
    """
    body = canonical(obj)
    if len(body) > MAX_FRAME:
        raise ProtocolViolation("frame too large")
    return FRAME_HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    """Parse one frame body (without its length) into a JSON object.

    :raises ProtocolViolation: oversized, not UTF-8 JSON, or not an object with a string ``type``.
    """
    if len(body) > MAX_FRAME:
        raise ProtocolViolation("frame too large")
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolViolation("frame is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolViolation("frame is not a typed object")
    return obj


def _hex(obj: dict[str, Any], name: str, size: int | None, max_size: int = MAX_FRAME) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str) or len(value) > 2 * max_size:
        raise ProtocolViolation(f"{name} must be hex")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ProtocolViolation(f"{name} must be hex") from None
    if size is not None and len(raw) != size:
        raise ProtocolViolation(f"{name} must be {size} bytes")
    return raw


def _gen(obj: dict[str, Any], nullable: bool) -> int | None:
    g = obj.get("generation")
    if g is None and nullable:
        return None
    if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < 2**64:
        raise ProtocolViolation("generation must be a u64")
    return g


def parse_request(obj: Any) -> dict[str, Any]:
    """Validate a ``Request`` object; returns it with typed fields (bytes for hex).

    :raises ProtocolViolation: missing, extra or ill-typed fields.
    """
    keys = {"op", "store_id", "generation", "lease", "challenge", "client_nonce"}
    if not isinstance(obj, dict) or set(obj) != keys or obj["op"] not in OPS:
        raise ProtocolViolation("bad request fields")
    lease = obj["lease"]
    return {
        "op": obj["op"],
        "store_id": _hex(obj, "store_id", 16),
        "generation": _gen(obj, nullable=False),
        "lease": _hex(obj, "lease", 16) if lease else b"",
        "challenge": _hex(obj, "challenge", 32),
        "client_nonce": _hex(obj, "client_nonce", 32),
    }


#: Longest module name the anchor accepts in a ``module`` field (the ABI's name limit).
MAX_MODULE_NAME = 64


def parse_module(obj: Any) -> tuple[str, bytes]:
    """Validate the optional ``module`` field of an ``op`` message: whose report this is.

    A kernel that domain-separates module reports signs ``svsm.sdk.module_report_data(name,
    measurement, report_data)``; the field names the module and its code measurement (SHA-384).

    :raises ProtocolViolation: not ``{"name": str, "measurement": 48-byte hex}``.
    """
    if not isinstance(obj, dict) or set(obj) != {"name", "measurement"}:
        raise ProtocolViolation("bad module fields")
    name = obj["name"]
    if not isinstance(name, str) or not 0 < len(name) <= MAX_MODULE_NAME:
        raise ProtocolViolation("module name must be a short string")
    return name, _hex(obj, "measurement", 48)


def parse_reply(obj: Any) -> dict[str, Any]:
    """Validate a ``Reply`` object.

    :raises ProtocolViolation: missing, extra or ill-typed fields.
    """
    keys = {"op", "status", "generation", "lease", "client_nonce"}
    if not isinstance(obj, dict) or set(obj) != keys or obj["op"] not in OPS or obj["status"] not in STATUSES:
        raise ProtocolViolation("bad reply fields")
    return {
        "op": obj["op"],
        "status": obj["status"],
        "generation": _gen(obj, nullable=True),
        "lease": _hex(obj, "lease", 16) if obj["lease"] else b"",
        "client_nonce": _hex(obj, "client_nonce", 32),
    }
