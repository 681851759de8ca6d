"""SNP guest request messages: header, payload layouts and AES-256-GCM sealing (snp.md 2).

Both ends use this file: the guest side (an SVSM at VMPL0, or a guest OS with VMPCK1..3)
through :class:`GuestMessageClient`, and the PSP model through :func:`open_message` /
:func:`seal_message`.  Pure functions on bytes; no I/O.

Hazardous layer: :func:`seal_message` reuses nothing by itself -- the caller owns the
sequence number, and reusing one under the same VMPCK reuses a GCM IV.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._errors import InvalidParameter

__all__ = [
    "AAD_OFFSET",
    "AUTHTAG_LEN",
    "GuestMessageClient",
    "GuestMessageError",
    "GuestMessageHeader",
    "HDR_SIZE",
    "MAX_PAYLOAD",
    "MsgType",
    "SNP_GUEST_MSG_HDR",
    "SNP_KEY_REQ",
    "SNP_KEY_RSP",
    "SNP_REPORT_REQ",
    "SNP_REPORT_RSP",
    "AEAD_ALGO_AES_256_GCM",
    "open_message",
    "seal_message",
]

PAGE_SIZE = 4096
HDR_SIZE = 0x60
AUTHTAG_LEN = 16
#: The AAD is the header from ALGO (0x30) to its end.
AAD_OFFSET = 0x30
AEAD_ALGO_AES_256_GCM = 1
HDR_VERSION = 1
#: Largest payload that fits in the 4 KiB message page.
MAX_PAYLOAD = PAGE_SIZE - HDR_SIZE


class MsgType(enum.IntEnum):
    """MSG_TYPE values (snp.md 2.1)."""

    INVALID = 0
    CPUID_REQ = 1
    CPUID_RSP = 2
    KEY_REQ = 3
    KEY_RSP = 4
    REPORT_REQ = 5
    REPORT_RSP = 6
    EXPORT_REQ = 7
    EXPORT_RSP = 8
    IMPORT_REQ = 9
    IMPORT_RSP = 10
    ABSORB_REQ = 11
    ABSORB_RSP = 12
    VMRK_REQ = 13
    VMRK_RSP = 14
    TSC_INFO_REQ = 17
    TSC_INFO_RSP = 18


_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class SNP_GUEST_MSG_HDR(ctypes.LittleEndianStructure):
    """Message header, 0x60 bytes (snp.md 2.1)."""

    _pack_ = 1
    _fields_ = [
        ("authtag", _u8 * 32),
        ("msg_seqno", _u64),
        ("reserved0", _u8 * 8),
        ("algo", _u8),
        ("hdr_version", _u8),
        ("hdr_size", _u16),
        ("msg_type", _u8),
        ("msg_version", _u8),
        ("msg_size", _u16),
        ("reserved1", _u32),
        ("msg_vmpck", _u8),
        ("reserved2", _u8 * 35),
    ]


assert ctypes.sizeof(SNP_GUEST_MSG_HDR) == HDR_SIZE
for _n, _o in {"authtag": 0, "msg_seqno": 0x20, "reserved0": 0x28, "algo": 0x30, "hdr_version": 0x31,
               "hdr_size": 0x32, "msg_type": 0x34, "msg_version": 0x35, "msg_size": 0x36,
               "reserved1": 0x38, "msg_vmpck": 0x3C, "reserved2": 0x3D}.items():  # fmt: skip
    assert getattr(SNP_GUEST_MSG_HDR, _n).offset == _o, _n


class SNP_REPORT_REQ(ctypes.LittleEndianStructure):
    """MSG_REPORT_REQ payload, 96 bytes (snp.md 2.2)."""

    _pack_ = 1
    _fields_ = [("report_data", _u8 * 64), ("vmpl", _u32), ("flags", _u32), ("reserved", _u8 * 24)]


assert ctypes.sizeof(SNP_REPORT_REQ) == 96
assert (SNP_REPORT_REQ.vmpl.offset, SNP_REPORT_REQ.flags.offset, SNP_REPORT_REQ.reserved.offset) == (0x40, 0x44, 0x48)


class SNP_REPORT_RSP(ctypes.LittleEndianStructure):
    """MSG_REPORT_RSP payload, 0x4C0 bytes (snp.md 2.2)."""

    _pack_ = 1
    _fields_ = [("status", _u32), ("report_size", _u32), ("reserved", _u8 * 24), ("report", _u8 * 0x4A0)]


assert ctypes.sizeof(SNP_REPORT_RSP) == 0x4C0
assert (SNP_REPORT_RSP.report_size.offset, SNP_REPORT_RSP.report.offset) == (0x04, 0x20)


class SNP_KEY_REQ(ctypes.LittleEndianStructure):
    """MSG_KEY_REQ payload, 32 bytes, plus the FW 1.58 LAUNCH_MIT_VECTOR (40; snp.md 2.3)."""

    _pack_ = 1
    _fields_ = [
        ("root_key_select", _u32),
        ("reserved", _u32),
        ("guest_field_select", _u64),
        ("vmpl", _u32),
        ("guest_svn", _u32),
        ("tcb_version", _u64),
        ("launch_mit_vector", _u64),
    ]


assert ctypes.sizeof(SNP_KEY_REQ) == 40
for _n, _o in {"root_key_select": 0, "reserved": 4, "guest_field_select": 8, "vmpl": 0x10,
               "guest_svn": 0x14, "tcb_version": 0x18, "launch_mit_vector": 0x20}.items():  # fmt: skip
    assert getattr(SNP_KEY_REQ, _n).offset == _o, _n
#: The pre-1.58 request size (without LAUNCH_MIT_VECTOR).
SNP_KEY_REQ_V1_SIZE = 32


class SNP_KEY_RSP(ctypes.LittleEndianStructure):
    """MSG_KEY_RSP payload, 64 bytes (snp.md 2.3)."""

    _pack_ = 1
    _fields_ = [("status", _u32), ("reserved", _u8 * 28), ("derived_key", _u8 * 32)]


assert ctypes.sizeof(SNP_KEY_RSP) == 64 and SNP_KEY_RSP.derived_key.offset == 0x20


class GuestMessageError(InvalidParameter):
    """A guest message was rejected (bad header, wrong key, tampered, replayed).

    The untrusted side learns only that; a guest driver must stop using that VMPCK,
    as Linux does, rather than risk IV reuse.
    """


@dataclasses.dataclass(frozen=True, slots=True)
class GuestMessageHeader:
    """A checked message header (no reserved bits set, sizes in range).

    .. versionadded:: 0.1
    """

    authtag: bytes
    msg_seqno: int
    algo: int
    hdr_version: int
    hdr_size: int
    msg_type: int
    msg_version: int
    msg_size: int
    msg_vmpck: int

    @classmethod
    def from_bytes(cls, page: bytes) -> GuestMessageHeader:
        """Parse the first 0x60 bytes of an untrusted message page.

        :raises GuestMessageError: short buffer, reserved bytes set, unknown algorithm or
            header version, zero sequence number or message version, VMPCK > 3, or a
            payload that does not fit in the page.
        """
        if len(page) < HDR_SIZE:
            raise GuestMessageError("message shorter than its header")
        raw = SNP_GUEST_MSG_HDR.from_buffer_copy(page[:HDR_SIZE])
        if any(bytes(raw.authtag)[AUTHTAG_LEN:]) or any(raw.reserved0) or raw.reserved1 or any(raw.reserved2):
            raise GuestMessageError("reserved header bytes set")
        if raw.algo != AEAD_ALGO_AES_256_GCM or raw.hdr_version != HDR_VERSION or raw.hdr_size != HDR_SIZE:
            raise GuestMessageError("unsupported algorithm or header version")
        if raw.msg_seqno == 0 or raw.msg_version == 0 or raw.msg_type == 0:
            raise GuestMessageError("zero sequence number, message type or version")
        if raw.msg_vmpck > 3:
            raise GuestMessageError("VMPCK index out of range")
        if raw.msg_size > MAX_PAYLOAD or HDR_SIZE + raw.msg_size > len(page):
            raise GuestMessageError("payload does not fit")
        return cls(
            authtag=bytes(raw.authtag)[:AUTHTAG_LEN],
            msg_seqno=raw.msg_seqno,
            algo=raw.algo,
            hdr_version=raw.hdr_version,
            hdr_size=raw.hdr_size,
            msg_type=raw.msg_type,
            msg_version=raw.msg_version,
            msg_size=raw.msg_size,
            msg_vmpck=raw.msg_vmpck,
        )


def _iv(seqno: int) -> bytes:
    return struct.pack("<Q4x", seqno)


def seal_message(
    key: bytes, *, seqno: int, msg_type: int, vmpck: int, payload: bytes, msg_version: int = 1
) -> bytes:
    """Encrypt ``payload`` into a full 4 KiB message page.

    :param key: the 32-byte VMPCK.
    :param seqno: the message sequence number (IV); never reuse one under a key.
    :returns: 4096 bytes: header, ciphertext, zero padding.
    :raises ValueError: payload too large, or a field out of range.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes does not fit in a message page")
    if not (0 < seqno < 1 << 64 and 0 <= vmpck <= 3 and 0 < msg_type < 256 and 0 < msg_version < 256):
        raise ValueError("message header field out of range")
    hdr = SNP_GUEST_MSG_HDR(
        msg_seqno=seqno,
        algo=AEAD_ALGO_AES_256_GCM,
        hdr_version=HDR_VERSION,
        hdr_size=HDR_SIZE,
        msg_type=msg_type,
        msg_version=msg_version,
        msg_size=len(payload),
        msg_vmpck=vmpck,
    )
    aad = bytes(hdr)[AAD_OFFSET:]
    sealed = AESGCM(key).encrypt(_iv(seqno), payload, aad)
    ciphertext, tag = sealed[:-AUTHTAG_LEN], sealed[-AUTHTAG_LEN:]
    ctypes.memmove(hdr.authtag, tag, AUTHTAG_LEN)
    page = bytes(hdr) + ciphertext
    return page + bytes(PAGE_SIZE - len(page))


def open_message(key: bytes, page: bytes) -> tuple[GuestMessageHeader, bytes]:
    """Authenticate and decrypt a message page.

    The caller checks the sequence number, type and VMPCK index against what it expects.

    :param key: the 32-byte VMPCK named by the header.
    :returns: the checked header and the plaintext payload.
    :raises GuestMessageError: malformed header or authentication failure.
    """
    hdr = GuestMessageHeader.from_bytes(page)
    aad = bytes(page[AAD_OFFSET:HDR_SIZE])
    ciphertext = bytes(page[HDR_SIZE : HDR_SIZE + hdr.msg_size])
    try:
        payload = AESGCM(key).decrypt(_iv(hdr.msg_seqno), ciphertext + hdr.authtag, aad)
    except InvalidTag as exc:
        raise GuestMessageError("message authentication failed") from exc
    return hdr, payload


class GuestMessageClient:
    """The guest end of one VMPCK: numbers requests and checks responses.

    Mirrors Linux's sev-guest driver: request seqno = counter + 1, the response must carry
    counter + 2 and type + 1; after a good response the counter advances by 2.  After any
    failed exchange the client wipes its key (IV reuse is worse than losing the channel).

    :param vmpck: the 32-byte key from the secrets page.
    :param index: which VMPCK (0-3) it is.
    :param counter: the starting sequence counter (the secrets page OS-area value).
    """

    def __init__(self, vmpck: bytes, index: int, counter: int = 0) -> None:
        if len(vmpck) != 32 or not 0 <= index <= 3:
            raise ValueError("VMPCK must be 32 bytes and index 0..3")
        self._key: bytes | None = bytes(vmpck)
        self.index = index
        self.counter = counter
        self._pending: int | None = None

    @property
    def usable(self) -> bool:
        """False once the key was wiped after a failed exchange."""
        return self._key is not None

    def request(self, msg_type: MsgType, payload: bytes, msg_version: int = 1) -> bytes:
        """Seal a request page with the next sequence number.

        :raises GuestMessageError: the key was wiped, or the counter would overflow.
        """
        if self._key is None:
            raise GuestMessageError("VMPCK wiped after an earlier failure")
        if self.counter + 2 >= 0xFFFFFFFF:
            raise GuestMessageError("sequence counter overflow")
        seqno = self.counter + 1
        self._pending = int(msg_type)
        return seal_message(self._key, seqno=seqno, msg_type=msg_type, vmpck=self.index, payload=payload,
                            msg_version=msg_version)  # fmt: skip

    def response(self, page: bytes) -> bytes:
        """Check and decrypt the response to the last :meth:`request`.

        :returns: the plaintext response payload.
        :raises GuestMessageError: wrong seqno/type/VMPCK or tampering (the key is wiped).
        """
        if self._key is None or self._pending is None:
            raise GuestMessageError("no request outstanding")
        try:
            hdr, payload = open_message(self._key, page)
            if hdr.msg_seqno != self.counter + 2 or hdr.msg_type != self._pending + 1 or hdr.msg_vmpck != self.index:
                raise GuestMessageError("unexpected response sequence number, type or VMPCK")
        except GuestMessageError:
            self._key = None
            raise
        self.counter += 2
        self._pending = None
        return payload
