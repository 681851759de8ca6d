"""Duplicate and Import: the TPM 2.0 Part 1 duplication wrap (tpm.md 8).

``duplicate`` = ``TPM2B outerHMAC | AES-CFB(symKey, IV 0, inner)`` with seed-derived
symKey = KDFa(newParent nameAlg, seed, "STORAGE", Name, -, newParent sym bits) and
hmacKey = KDFa(nameAlg, seed, "INTEGRITY"); ``inner`` is TPM2B_SENSITIVE, or with an inner wrap
AES-CFB(encryptionKey, IV 0, TPM2B H(TPM2B_SENSITIVE || Name) || TPM2B_SENSITIVE).
"""

from __future__ import annotations

import hmac as _hmac
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec, padding

from ._cmd_policy import HASH_OBJS, decrypt_secret
from ._constants import ALG, CC, RC, TPMA_OBJECT, rc_handle, rc_param
from ._crypto import CURVES, H, HASHES, aes_cfb, hmac_digest, kdfa, kdfe
from ._dispatch import DUP, USER, Ctx, command, p_data
from ._marshal import Reader, TpmError, tpm2b
from ._objects import TpmObject, compute_name, key_from_public, marshal_sensitive, read_sensitive, wrap_sensitive
from ._structs import Public, read_public_2b, read_sym_def_object

if TYPE_CHECKING:
    from ._engine import Tpm

__all__: list[str] = []


def _outer_keys(parent: TpmObject, seed: bytes, name: bytes) -> tuple[bytes, bytes]:
    alg = parent.public.name_alg
    return (kdfa(alg, seed, b"STORAGE", name, b"", parent.public.sym[1]),
            kdfa(alg, seed, b"INTEGRITY", b"", b"", HASHES[alg][1] * 8))


def _encrypt_seed(tpm: "Tpm", parent: TpmObject) -> tuple[bytes, bytes]:
    pub = parent.public
    alg = pub.name_alg
    if pub.type == ALG.RSA:
        seed = tpm.rng(HASHES[alg][1])
        return seed, parent.public_key().encrypt(seed, padding.OAEP(padding.MGF1(HASH_OBJS[alg]()), HASH_OBJS[alg](),
                                                                    b"DUPLICATE\x00"))
    cls, size = CURVES[pub.curve][:2]
    eph = ec.generate_private_key(cls())
    q = eph.public_key().public_numbers()
    qx = q.x.to_bytes(size, "big")
    z = eph.exchange(ec.ECDH(), parent.public_key())
    seed = kdfe(alg, z, b"DUPLICATE", qx, pub.unique[0], HASHES[alg][1] * 8)  # type: ignore[index]
    return seed, tpm2b(qx) + tpm2b(q.y.to_bytes(size, "big"))


@command(CC.Duplicate, ("obj", "obj+"), (DUP,), decrypt=True, encrypt=True, params=(p_data, read_sym_def_object))
def _duplicate(tpm: "Tpm", ctx: Ctx, enc_key_in: bytes, sym: tuple[int, int, int]) -> bytes:
    obj: TpmObject = ctx.ent[0]
    new_parent: TpmObject | None = ctx.ent[1]
    a = obj.attrs
    if a & TPMA_OBJECT.fixedParent:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 1))
    if a & TPMA_OBJECT.encryptedDuplication and (sym[0] == ALG.NULL or new_parent is None):
        raise TpmError(rc_param(RC.SYMMETRIC, 2) if sym[0] == ALG.NULL else rc_handle(RC.HIERARCHY, 2))
    if new_parent is not None:  # a public-only (LoadExternal) parent is fine: only its public key is used
        pa = new_parent.attrs
        if new_parent.public.type not in (ALG.RSA, ALG.ECC) or not (pa & TPMA_OBJECT.restricted
                                                                    and pa & TPMA_OBJECT.decrypt):
            raise TpmError(rc_handle(RC.TYPE, 2))
    name = obj.name
    sens2b = tpm2b(marshal_sensitive(obj.public.type, obj.auth, obj.seed, obj.sens))
    enc_key_out = b""
    if sym[0] != ALG.NULL:
        if enc_key_in and len(enc_key_in) != sym[1] // 8:
            raise TpmError(rc_param(RC.SIZE, 1))
        key = enc_key_in or tpm.rng(sym[1] // 8)
        enc_key_out = b"" if enc_key_in else key
        inner = aes_cfb(key, bytes(16), tpm2b(H(obj.public.name_alg, sens2b, name)) + sens2b, False)
    else:
        inner = sens2b
    if new_parent is None:
        return tpm2b(enc_key_out) + tpm2b(inner) + tpm2b(b"")
    seed, secret = _encrypt_seed(tpm, new_parent)
    sym_key, mac_key = _outer_keys(new_parent, seed, name)
    enc = aes_cfb(sym_key, bytes(16), inner, False)
    dup = tpm2b(hmac_digest(new_parent.public.name_alg, mac_key, enc, name)) + enc
    return tpm2b(enc_key_out) + tpm2b(dup) + tpm2b(secret)


@command(CC.Import, ("obj",), (USER,), decrypt=True, encrypt=True,
         params=(p_data, read_public_2b, lambda r: r.tpm2b(2048), lambda r: r.tpm2b(512), read_sym_def_object))
def _import(tpm: "Tpm", ctx: Ctx, enc_key: bytes, pub: Public, duplicate: bytes, sym_seed: bytes,
            sym: tuple[int, int, int]) -> bytes:
    parent: TpmObject = ctx.ent[0]
    if not parent.is_storage_parent():
        raise TpmError(rc_handle(RC.TYPE, 1))
    if pub.attrs & (TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent):
        raise TpmError(rc_param(RC.ATTRIBUTES, 2))
    if pub.attrs & TPMA_OBJECT.encryptedDuplication and (sym[0] == ALG.NULL or not sym_seed):
        raise TpmError(rc_param(RC.ATTRIBUTES, 2))
    name = compute_name(pub)
    data = duplicate
    if sym_seed:
        seed = decrypt_secret(parent, sym_seed, b"DUPLICATE", 4)
        r = Reader(duplicate)
        try:
            tag = r.tpm2b(64)
        except TpmError:
            raise TpmError(rc_param(RC.INTEGRITY, 3)) from None
        enc = duplicate[r.pos:]
        sym_key, mac_key = _outer_keys(parent, seed, name)
        if not _hmac.compare_digest(tag, hmac_digest(parent.public.name_alg, mac_key, enc, name)):
            raise TpmError(rc_param(RC.INTEGRITY, 3))
        data = aes_cfb(sym_key, bytes(16), enc, True)
    try:
        if sym[0] != ALG.NULL:
            if len(enc_key) != sym[1] // 8:
                raise TpmError(rc_param(RC.SIZE, 1))
            plain = aes_cfb(enc_key, bytes(16), data, True)
            r = Reader(plain)
            integrity = r.tpm2b(64)
            sens2b = plain[r.pos:]
            if not _hmac.compare_digest(integrity, H(pub.name_alg, sens2b, name)):
                raise TpmError(RC.INTEGRITY)
        else:
            sens2b = data
        r = Reader(sens2b)
        sub = r.sized()
        t, auth, seed_value, sens = read_sensitive(sub)
        sub.done()
        r.done()
    except TpmError as e:
        if e.rc & 0xF00:
            raise
        raise TpmError(rc_param(RC.INTEGRITY, 3)) from None
    if t != pub.type:
        raise TpmError(rc_param(RC.TYPE, 2))
    if pub.type in (ALG.RSA, ALG.ECC):
        try:
            key_from_public(pub, sens)
        except TpmError:
            raise TpmError(rc_param(RC.BINDING, 2)) from None
    elif pub.unique != H(pub.name_alg, seed_value, sens):
        raise TpmError(rc_param(RC.BINDING, 2))
    private = wrap_sensitive(parent, name, marshal_sensitive(pub.type, auth, seed_value, sens), tpm.rng(16))
    return tpm2b(private)
