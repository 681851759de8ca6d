"""SNP_LAUNCH_FINISH's ID block and ID authentication structure.

The guest owner signs an ID block (expected measurement, family/image IDs, SVN, policy) with
an ID key, optionally certified by an author key; the firmware refuses to finish a launch whose
measurement or policy differ, and the reports then carry the IDs and the keys' digests.
Layouts as sev-snp-measure's ``snp-create-id-block`` produces them (checked in the tests):
ID_BLOCK 0x60 bytes, ID_AUTH 0x1000, public keys 0x404 (curve u32 = 2 for P-384, Qx/Qy
little-endian in 72-byte fields), signatures 0x200 (R/S little-endian in 72-byte fields).
ID_KEY_DIGEST / AUTHOR_KEY_DIGEST = SHA-384 of the 0x404-byte public key structure.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

__all__ = ["ID_AUTH", "ID_BLOCK", "IdBlockError", "IdBlockInfo", "SNP_ECDSA_PUBKEY", "SNP_SIGNATURE", "build_id_block",
           "key_digest", "marshal_public_key", "parse_id_block"]  # fmt: skip

_u8, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64
ALGO_ECDSA_P384_SHA384 = 1
CURVE_P384 = 2


class ID_BLOCK(ctypes.LittleEndianStructure):
    """ID block, 0x60 bytes."""

    _pack_ = 1
    _fields_ = [("launch_digest", _u8 * 48), ("family_id", _u8 * 16), ("image_id", _u8 * 16),
                ("version", _u32), ("guest_svn", _u32), ("policy", _u64)]  # fmt: skip


assert ctypes.sizeof(ID_BLOCK) == 0x60
assert (ID_BLOCK.family_id.offset, ID_BLOCK.image_id.offset, ID_BLOCK.version.offset, ID_BLOCK.guest_svn.offset,
        ID_BLOCK.policy.offset) == (0x30, 0x40, 0x50, 0x54, 0x58)  # fmt: skip


class SNP_ECDSA_PUBKEY(ctypes.LittleEndianStructure):
    """ECDSA public key, 0x404 bytes."""

    _pack_ = 1
    _fields_ = [("curve", _u32), ("qx", _u8 * 72), ("qy", _u8 * 72), ("reserved", _u8 * 0x370)]


assert ctypes.sizeof(SNP_ECDSA_PUBKEY) == 0x404 and SNP_ECDSA_PUBKEY.qy.offset == 0x4C


class SNP_SIGNATURE(ctypes.LittleEndianStructure):
    """ECDSA signature, 0x200 bytes."""

    _pack_ = 1
    _fields_ = [("r", _u8 * 72), ("s", _u8 * 72), ("reserved", _u8 * 368)]


assert ctypes.sizeof(SNP_SIGNATURE) == 0x200


class ID_AUTH(ctypes.LittleEndianStructure):
    """ID authentication information, 0x1000 bytes."""

    _pack_ = 1
    _fields_ = [
        ("id_key_algo", _u32),
        ("auth_key_algo", _u32),
        ("reserved1", _u8 * 56),
        ("id_block_sig", SNP_SIGNATURE),
        ("id_key", SNP_ECDSA_PUBKEY),
        ("reserved2", _u8 * 60),
        ("id_key_sig", SNP_SIGNATURE),
        ("author_key", SNP_ECDSA_PUBKEY),
        ("reserved3", _u8 * 892),
    ]


assert ctypes.sizeof(ID_AUTH) == 0x1000
assert (ID_AUTH.id_block_sig.offset, ID_AUTH.id_key.offset, ID_AUTH.id_key_sig.offset, ID_AUTH.author_key.offset) == (
    0x40, 0x240, 0x680, 0x880)


class IdBlockError(ValueError):
    """Why an ID block was refused (the firmware maps it to a status code)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


# SEV firmware status codes (Linux psp-sev.h) used by LAUNCH_FINISH's ID checks.
POLICY_FAILURE, BAD_SIGNATURE, BAD_MEASUREMENT, INVALID_PARAM = 0x07, 0x0A, 0x0B, 0x16


def marshal_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 0x404-byte SNP form of a P-384 public key."""
    if not isinstance(key.curve, ec.SECP384R1):
        raise ValueError("ID and author keys must be P-384")
    n = key.public_numbers()
    out = SNP_ECDSA_PUBKEY(curve=CURVE_P384)
    ctypes.memmove(out.qx, n.x.to_bytes(72, "little"), 72)
    ctypes.memmove(out.qy, n.y.to_bytes(72, "little"), 72)
    return bytes(out)


def key_digest(key: ec.EllipticCurvePublicKey) -> bytes:
    """ID_KEY_DIGEST / AUTHOR_KEY_DIGEST: SHA-384 of the marshalled key."""
    return hashlib.sha384(marshal_public_key(key)).digest()


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> SNP_SIGNATURE:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA384())))
    sig = SNP_SIGNATURE()
    ctypes.memmove(sig.r, r.to_bytes(72, "little"), 72)
    ctypes.memmove(sig.s, s.to_bytes(72, "little"), 72)
    return sig


def _verify(raw_key: SNP_ECDSA_PUBKEY, sig: SNP_SIGNATURE, data: bytes, what: str) -> ec.EllipticCurvePublicKey:
    if raw_key.curve != CURVE_P384 or any(raw_key.reserved) or any(sig.reserved):
        raise IdBlockError(f"{what}: unsupported curve or reserved bytes set", INVALID_PARAM)
    try:
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(bytes(raw_key.qx), "little"), int.from_bytes(bytes(raw_key.qy), "little"), ec.SECP384R1()
        ).public_key()
        key.verify(encode_dss_signature(int.from_bytes(bytes(sig.r), "little"), int.from_bytes(bytes(sig.s), "little")),
                   data, ec.ECDSA(hashes.SHA384()))  # fmt: skip
    except (ValueError, InvalidSignature) as exc:
        raise IdBlockError(f"{what}: bad key or signature", BAD_SIGNATURE) from exc
    return key


def build_id_block(
    measurement: bytes,
    id_key: ec.EllipticCurvePrivateKey,
    author_key: ec.EllipticCurvePrivateKey | None = None,
    *,
    family_id: bytes = bytes(16),
    image_id: bytes = bytes(16),
    guest_svn: int = 0,
    policy: int = 0x30000,
) -> tuple[bytes, bytes]:
    """What a guest owner hands the host for LAUNCH_FINISH: (ID_BLOCK, ID_AUTH)."""
    blk = ID_BLOCK(version=1, guest_svn=guest_svn, policy=policy)
    ctypes.memmove(blk.launch_digest, measurement, 48)
    ctypes.memmove(blk.family_id, family_id, 16)
    ctypes.memmove(blk.image_id, image_id, 16)
    auth = ID_AUTH(id_key_algo=ALGO_ECDSA_P384_SHA384)
    auth.id_block_sig = _sign(id_key, bytes(blk))
    auth.id_key = SNP_ECDSA_PUBKEY.from_buffer_copy(marshal_public_key(id_key.public_key()))
    if author_key is not None:
        auth.auth_key_algo = ALGO_ECDSA_P384_SHA384
        auth.id_key_sig = _sign(author_key, bytes(auth.id_key))
        auth.author_key = SNP_ECDSA_PUBKEY.from_buffer_copy(marshal_public_key(author_key.public_key()))
    return bytes(blk), bytes(auth)


@dataclasses.dataclass(frozen=True, slots=True)
class IdBlockInfo:
    """What a verified ID block puts into the guest context."""

    family_id: bytes
    image_id: bytes
    guest_svn: int
    id_key_digest: bytes
    author_key_digest: bytes


def parse_id_block(id_block: bytes, id_auth: bytes, *, measurement: bytes, policy: int,
                   author_key_en: bool) -> IdBlockInfo:  # fmt: skip
    """Check an untrusted ID block against the launch (the firmware's LAUNCH_FINISH checks).

    :raises IdBlockError: with ``status`` BAD_SIGNATURE, BAD_MEASUREMENT, POLICY_FAILURE or
        INVALID_PARAM.
    """
    if len(id_block) != ctypes.sizeof(ID_BLOCK) or len(id_auth) != ctypes.sizeof(ID_AUTH):
        raise IdBlockError("ID block or ID auth has the wrong size", INVALID_PARAM)
    blk = ID_BLOCK.from_buffer_copy(id_block)
    auth = ID_AUTH.from_buffer_copy(id_auth)
    if blk.version != 1 or auth.id_key_algo != ALGO_ECDSA_P384_SHA384:
        raise IdBlockError("unsupported ID block version or key algorithm", INVALID_PARAM)
    id_key = _verify(auth.id_key, auth.id_block_sig, id_block, "ID block")
    author_digest = bytes(48)
    if author_key_en:
        if auth.auth_key_algo != ALGO_ECDSA_P384_SHA384:
            raise IdBlockError("unsupported author key algorithm", INVALID_PARAM)
        author = _verify(auth.author_key, auth.id_key_sig, bytes(auth.id_key), "ID key")
        author_digest = key_digest(author)
    if bytes(blk.launch_digest) != measurement:
        raise IdBlockError("ID block measurement differs from the launch digest", BAD_MEASUREMENT)
    if blk.policy != policy:
        raise IdBlockError("ID block policy differs from the guest policy", POLICY_FAILURE)
    return IdBlockInfo(bytes(blk.family_id), bytes(blk.image_id), blk.guest_svn, key_digest(id_key), author_digest)
