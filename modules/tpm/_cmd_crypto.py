"""Signing, hashing, HMAC, sequences, RSA/ECDH and symmetric commands (tpm.md 3, 6)."""

from __future__ import annotations

import hmac as _hmac
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ._cmd_object import make_ticket
from ._cmd_policy import HASH_OBJS
from ._constants import ALG, CC, RC, RH, ST, TPMA_OBJECT, rc_handle, rc_param
from ._crypto import CFB, CURVES, H, HASHES, OFB, ec_mul, hmac_digest
from ._dispatch import USER, Ctx, command, p_buffer, p_data, p_digest, p_yesno
from ._marshal import Reader, TpmError, tpm2b, u16, u32
from ._objects import KIND_EVENT_SEQ, KIND_HASH_SEQ, KIND_HMAC_SEQ, KIND_OBJECT, TpmObject
from ._structs import Public, read_hash_alg, read_sig_scheme, read_signature, read_ticket

if TYPE_CHECKING:
    from ._engine import Tpm

__all__ = ["resolve_sig_scheme", "sign_digest"]

TPM_GENERATED = b"\xffTCG"


def resolve_sig_scheme(obj: TpmObject, scheme: tuple[int, int, int], pnum: int) -> tuple[int, int, int]:
    """The signing scheme from the key's scheme and the caller's (tpm.md 6).

    :raises TpmError: SCHEME on parameter ``pnum`` when both are NULL, they differ, or it does not fit the key.
    """
    pub = obj.public
    key_scheme = pub.scheme
    if key_scheme[0] == ALG.NULL:
        s = scheme
    elif scheme[0] == ALG.NULL or scheme[:2] == key_scheme[:2]:
        s = key_scheme
    else:
        raise TpmError(rc_param(RC.SCHEME, pnum))
    ok = {ALG.RSA: (ALG.RSASSA, ALG.RSAPSS), ALG.ECC: (ALG.ECDSA,), ALG.KEYEDHASH: (ALG.HMAC,)}.get(pub.type, ())
    if s[0] not in ok:
        raise TpmError(rc_param(RC.SCHEME, pnum))
    return s


def sign_digest(obj: TpmObject, scheme: tuple[int, int, int], digest: bytes) -> bytes:
    """TPMT_SIGNATURE over ``digest`` with ``obj`` using the resolved ``scheme``."""
    alg, h, _ = scheme
    if alg == ALG.HMAC:
        return u16(alg) + u16(h) + hmac_digest(h, obj.sens, digest)
    pre = Prehashed(HASH_OBJS[h]())
    if alg == ALG.RSASSA:
        return u16(alg) + u16(h) + tpm2b(obj.key.sign(digest, padding.PKCS1v15(), pre))
    if alg == ALG.RSAPSS:
        sig = obj.key.sign(digest, padding.PSS(padding.MGF1(HASH_OBJS[h]()), padding.PSS.DIGEST_LENGTH), pre)
        return u16(alg) + u16(h) + tpm2b(sig)
    r, s = decode_dss_signature(obj.key.sign(digest, ec.ECDSA(pre)))
    size = CURVES[obj.public.curve][1]
    return u16(alg) + u16(h) + tpm2b(r.to_bytes(size, "big")) + tpm2b(s.to_bytes(size, "big"))


def _signing_key(ctx: Ctx, i: int = 0) -> TpmObject:
    obj: TpmObject = ctx.ent[i]
    if obj.kind != KIND_OBJECT or not obj.attrs & TPMA_OBJECT.sign:
        raise TpmError(rc_handle(RC.KEY, i + 1))
    if obj.public_only:
        raise TpmError(rc_handle(RC.HANDLE, i + 1))
    return obj


def hashcheck_ticket(tpm: "Tpm", hierarchy: int, digest: bytes) -> bytes:
    """TPMT_TK_HASHCHECK for ``digest`` (NULL ticket for the NULL hierarchy)."""
    return make_ticket(tpm, ST.HASHCHECK, hierarchy, digest)


@command(CC.Sign, ("obj",), (USER,), decrypt=True, params=(p_digest, read_sig_scheme, read_ticket))
def _sign(tpm: "Tpm", ctx: Ctx, digest: bytes, scheme: tuple[int, int, int],
          ticket: tuple[int, int, bytes]) -> bytes:
    obj = _signing_key(ctx)
    s = resolve_sig_scheme(obj, scheme, 2)
    if len(digest) != HASHES[s[1]][1]:
        raise TpmError(rc_param(RC.SIZE, 1))
    if obj.attrs & TPMA_OBJECT.restricted:
        tag, hier, tdig = ticket
        if tag != ST.HASHCHECK or hier == RH.NULL or hier not in tpm.proofs or not _hmac.compare_digest(
                make_ticket(tpm, ST.HASHCHECK, hier, digest), u16(tag) + u32(hier) + tpm2b(tdig)):
            raise TpmError(rc_param(RC.TICKET, 3))
    return sign_digest(obj, s, digest)


def verify_signature(obj: TpmObject, digest: bytes, sig: tuple[int, int, object]) -> None:
    """Check ``sig`` over ``digest``.

    :raises TpmError: SIGNATURE (param 2) / SCHEME.
    """
    alg, h, val = sig
    pub = obj.public
    try:
        if alg == ALG.HMAC and pub.type == ALG.KEYEDHASH:
            if not _hmac.compare_digest(hmac_digest(h, obj.sens, digest), val):  # type: ignore[arg-type]
                raise InvalidSignature()
        elif alg in (ALG.RSASSA, ALG.RSAPSS) and pub.type == ALG.RSA:
            pad = padding.PKCS1v15() if alg == ALG.RSASSA else padding.PSS(padding.MGF1(HASH_OBJS[h]()),
                                                                              padding.PSS.AUTO)
            obj.public_key().verify(val, digest, pad, Prehashed(HASH_OBJS[h]()))
        elif alg == ALG.ECDSA and pub.type == ALG.ECC:
            r, s = val  # type: ignore[misc]
            obj.public_key().verify(encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big")),
                                    digest, ec.ECDSA(Prehashed(HASH_OBJS[h]())))
        else:
            raise TpmError(rc_param(RC.SCHEME, 2))
    except (InvalidSignature, ValueError):
        raise TpmError(rc_param(RC.SIGNATURE, 2)) from None


@command(CC.VerifySignature, ("obj",), decrypt=True, params=(p_digest, read_signature))
def _verify_signature(tpm: "Tpm", ctx: Ctx, digest: bytes, sig: tuple[int, int, object]) -> bytes:
    obj: TpmObject = ctx.ent[0]
    if obj.kind != KIND_OBJECT or not obj.attrs & TPMA_OBJECT.sign:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 1))
    verify_signature(obj, digest, sig)
    return make_ticket(tpm, ST.VERIFIED, obj.hierarchy, digest, obj.name)


def _p_hierarchy(r: Reader) -> int:
    h = r.u32()
    if h not in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.NULL):
        raise TpmError(RC.VALUE)
    return h


@command(CC.Hash, (), decrypt=True, encrypt=True, params=(p_buffer, read_hash_alg, _p_hierarchy))
def _hash(tpm: "Tpm", ctx: Ctx, data: bytes, alg: int, hier: int) -> bytes:
    if not tpm.hierarchy_enabled(hier):
        raise TpmError(rc_param(RC.HIERARCHY, 3))
    d = H(alg, data)
    ticket = hashcheck_ticket(tpm, RH.NULL if data[:4] == TPM_GENERATED else hier, d)
    return tpm2b(d) + ticket


def _new_sequence(tpm: "Tpm", ctx: Ctx, kind: int, alg: int, auth: bytes, key: bytes = b"") -> bytes:
    from ._crypto import strip_zeros
    pub = Public(ALG.KEYEDHASH, ALG.NULL, TPMA_OBJECT.userWithAuth | TPMA_OBJECT.noDA, b"")
    seq = TpmObject(pub, RH.NULL, strip_zeros(auth), b"", key, b"", kind=kind)
    seq.seq_alg = alg
    h = tpm.add_object(seq)
    seq.name = u32(h)
    seq.qn = seq.name
    ctx.out_handle = h
    return b""


@command(CC.HashSequenceStart, (), rhandle=True, decrypt=True,
         params=(p_digest, lambda r: read_hash_alg(r, allow_null=True)))
def _hash_sequence_start(tpm: "Tpm", ctx: Ctx, auth: bytes, alg: int) -> bytes:
    return _new_sequence(tpm, ctx, KIND_EVENT_SEQ if alg == ALG.NULL else KIND_HASH_SEQ, alg, auth)


def _hmac_key(ctx: Ctx, alg: int, pnum: int) -> tuple[TpmObject, int]:
    obj: TpmObject = ctx.ent[0]
    pub = obj.public
    if pub.type != ALG.KEYEDHASH or obj.kind != KIND_OBJECT or obj.public_only:
        raise TpmError(rc_handle(RC.TYPE, 1))
    if not obj.attrs & TPMA_OBJECT.sign or obj.attrs & TPMA_OBJECT.restricted:
        raise TpmError(rc_handle(RC.KEY, 1))
    kh = pub.scheme[1] if pub.scheme[0] == ALG.HMAC else ALG.NULL
    if alg == ALG.NULL:
        alg = kh
    elif kh != ALG.NULL and kh != alg:
        raise TpmError(rc_param(RC.VALUE, pnum))
    if alg == ALG.NULL:
        raise TpmError(rc_param(RC.VALUE, pnum))
    return obj, alg


@command(CC.HMAC_Start, ("obj",), (USER,), rhandle=True, decrypt=True,
         params=(p_digest, lambda r: read_hash_alg(r, allow_null=True)))
def _hmac_start(tpm: "Tpm", ctx: Ctx, auth: bytes, alg: int) -> bytes:
    obj, alg = _hmac_key(ctx, alg, 2)
    return _new_sequence(tpm, ctx, KIND_HMAC_SEQ, alg, auth, obj.sens)


@command(CC.HMAC, ("obj",), (USER,), decrypt=True, encrypt=True,
         params=(p_buffer, lambda r: read_hash_alg(r, allow_null=True)))
def _hmac_command(tpm: "Tpm", ctx: Ctx, data: bytes, alg: int) -> bytes:
    obj, alg = _hmac_key(ctx, alg, 2)
    return tpm2b(hmac_digest(alg, obj.sens, data))


def _sequence(ctx: Ctx) -> TpmObject:
    seq: TpmObject = ctx.ent[0]
    if seq.kind == KIND_OBJECT:
        raise TpmError(rc_handle(RC.MODE, 1))
    return seq


@command(CC.SequenceUpdate, ("obj",), (USER,), decrypt=True, params=(p_buffer,))
def _sequence_update(tpm: "Tpm", ctx: Ctx, data: bytes) -> bytes:
    seq = _sequence(ctx)
    seq.seq_update(data)
    return b""


@command(CC.SequenceComplete, ("obj",), (USER,), decrypt=True, encrypt=True, params=(p_buffer, _p_hierarchy),
         flushed=True)
def _sequence_complete(tpm: "Tpm", ctx: Ctx, data: bytes, hier: int) -> bytes:
    seq = _sequence(ctx)
    if seq.kind == KIND_EVENT_SEQ:
        raise TpmError(rc_handle(RC.MODE, 1))
    if not tpm.hierarchy_enabled(hier):
        raise TpmError(rc_param(RC.HIERARCHY, 2))
    seq.seq_update(data)
    del tpm.objects[ctx.handles[0]]
    if seq.kind == KIND_HMAC_SEQ:
        return tpm2b(seq.seq_digest(seq.seq_alg)) + hashcheck_ticket(tpm, RH.NULL, b"")
    d = seq.seq_digest(seq.seq_alg)
    no_ticket = seq.seq_prefix == TPM_GENERATED
    return tpm2b(d) + hashcheck_ticket(tpm, RH.NULL if no_ticket else hier, d)


def _p_rsa_buf(r: Reader) -> bytes:
    return r.tpm2b(512)


def _p_rsa_decrypt_scheme(r: Reader) -> tuple[int, int]:
    alg = r.u16()
    if alg in (ALG.NULL, ALG.RSAES):
        return alg, ALG.NULL
    if alg == ALG.OAEP:
        return alg, read_hash_alg(r)
    raise TpmError(RC.SCHEME)


def _rsa_key(ctx: Ctx, scheme: tuple[int, int], need_private: bool) -> tuple[TpmObject, tuple[int, int]]:
    obj: TpmObject = ctx.ent[0]
    pub = obj.public
    if pub.type != ALG.RSA or obj.kind != KIND_OBJECT:
        raise TpmError(rc_handle(RC.KEY, 1))
    if not obj.attrs & TPMA_OBJECT.decrypt or obj.attrs & TPMA_OBJECT.restricted:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 1))
    if need_private and obj.public_only:
        raise TpmError(rc_handle(RC.HANDLE, 1))
    ks = pub.scheme[:2]
    if ks[0] != ALG.NULL:
        if scheme[0] != ALG.NULL and scheme != ks:
            raise TpmError(rc_param(RC.SCHEME, 2))
        scheme = ks  # type: ignore[assignment]
    if scheme[0] not in (ALG.NULL, ALG.RSAES, ALG.OAEP):
        raise TpmError(rc_param(RC.SCHEME, 2))
    return obj, scheme


def _label(label: bytes) -> bytes | None:
    if not label:
        return None
    return label if label.endswith(b"\x00") else label + b"\x00"


@command(CC.RSA_Encrypt, ("obj",), decrypt=True, encrypt=True, params=(_p_rsa_buf, _p_rsa_decrypt_scheme, p_data))
def _rsa_encrypt(tpm: "Tpm", ctx: Ctx, msg: bytes, scheme: tuple[int, int], label: bytes) -> bytes:
    obj, (alg, h) = _rsa_key(ctx, scheme, False)
    pk = obj.public_key()
    nbytes = obj.public.key_bits // 8
    try:
        if alg == ALG.OAEP:
            out = pk.encrypt(msg, padding.OAEP(padding.MGF1(HASH_OBJS[h]()), HASH_OBJS[h](), _label(label)))
        elif alg == ALG.RSAES:
            out = pk.encrypt(msg, padding.PKCS1v15())
        else:
            m = int.from_bytes(msg, "big")
            n = pk.public_numbers().n
            if len(msg) > nbytes or m >= n:
                raise TpmError(rc_param(RC.VALUE, 1))
            out = pow(m, pk.public_numbers().e, n).to_bytes(nbytes, "big")
    except ValueError:
        raise TpmError(rc_param(RC.VALUE, 1)) from None
    return tpm2b(out)


@command(CC.RSA_Decrypt, ("obj",), (USER,), decrypt=True, encrypt=True,
         params=(_p_rsa_buf, _p_rsa_decrypt_scheme, p_data))
def _rsa_decrypt(tpm: "Tpm", ctx: Ctx, ct: bytes, scheme: tuple[int, int], label: bytes) -> bytes:
    obj, (alg, h) = _rsa_key(ctx, scheme, True)
    nbytes = obj.public.key_bits // 8
    if len(ct) > nbytes:
        raise TpmError(rc_param(RC.SIZE, 1))
    try:
        if alg == ALG.OAEP:
            out = obj.key.decrypt(ct, padding.OAEP(padding.MGF1(HASH_OBJS[h]()), HASH_OBJS[h](), _label(label)))
        elif alg == ALG.RSAES:
            out = obj.key.decrypt(ct, padding.PKCS1v15())
        else:
            nums = obj.key.private_numbers()
            c = int.from_bytes(ct, "big")
            n = nums.public_numbers.n
            if c >= n:
                raise TpmError(rc_param(RC.VALUE, 1))
            out = pow(c, nums.d, n).to_bytes(nbytes, "big")
    except ValueError:
        raise TpmError(rc_param(RC.VALUE, 1)) from None
    return tpm2b(out)


def _ecc_point_2b(curve: int, x: int, y: int) -> bytes:
    size = CURVES[curve][1]
    return tpm2b(tpm2b(x.to_bytes(size, "big")) + tpm2b(y.to_bytes(size, "big")))


def _p_ecc_point_2b(r: Reader) -> tuple[int, int]:
    sub = r.sized()
    x, y = sub.tpm2b(48), sub.tpm2b(48)
    sub.done()
    return int.from_bytes(x, "big"), int.from_bytes(y, "big")


def _ecc_key(ctx: Ctx) -> TpmObject:
    obj: TpmObject = ctx.ent[0]
    if obj.public.type != ALG.ECC or obj.kind != KIND_OBJECT:
        raise TpmError(rc_handle(RC.KEY, 1))
    if not obj.attrs & TPMA_OBJECT.decrypt or obj.attrs & TPMA_OBJECT.restricted:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 1))
    return obj


@command(CC.ECDH_KeyGen, ("obj",), encrypt=True)
def _ecdh_keygen(tpm: "Tpm", ctx: Ctx) -> bytes:
    obj = _ecc_key(ctx)
    curve = obj.public.curve
    order = CURVES[curve][2]
    d = int.from_bytes(tpm.rng(CURVES[curve][1] + 8), "big") % (order - 1) + 1
    x, y = obj.public.unique  # type: ignore[misc]
    zx, zy = ec_mul(curve, d, int.from_bytes(x, "big"), int.from_bytes(y, "big"))
    q = ec.derive_private_key(d, CURVES[curve][0]()).public_key().public_numbers()
    return _ecc_point_2b(curve, zx, zy) + _ecc_point_2b(curve, q.x, q.y)


@command(CC.ECDH_ZGen, ("obj",), (USER,), decrypt=True, encrypt=True, params=(_p_ecc_point_2b,))
def _ecdh_zgen(tpm: "Tpm", ctx: Ctx, point: tuple[int, int]) -> bytes:
    obj = _ecc_key(ctx)
    if obj.public_only:
        raise TpmError(rc_handle(RC.HANDLE, 1))
    curve = obj.public.curve
    try:
        zx, zy = ec_mul(curve, obj.key.private_numbers().private_value, *point)
    except TpmError:
        raise TpmError(rc_param(RC.ECC_POINT, 1)) from None
    return _ecc_point_2b(curve, zx, zy)


_MODES = {ALG.CFB: CFB, ALG.CBC: modes.CBC, ALG.OFB: OFB, ALG.CTR: modes.CTR}


def _sym_crypt(ctx: Ctx, decrypt: bool, mode: int, iv: bytes, data: bytes, p_mode: int, p_iv: int,
               p_data: int) -> bytes:
    obj: TpmObject = ctx.ent[0]
    pub = obj.public
    if pub.type != ALG.SYMCIPHER or obj.kind != KIND_OBJECT:
        raise TpmError(rc_handle(RC.KEY, 1))
    if obj.attrs & TPMA_OBJECT.restricted or not obj.attrs & (TPMA_OBJECT.decrypt if decrypt else TPMA_OBJECT.sign):
        raise TpmError(rc_handle(RC.ATTRIBUTES, 1))
    kmode = pub.sym[2]
    if mode == ALG.NULL:
        mode = kmode
    elif kmode != ALG.NULL and kmode != mode:
        raise TpmError(rc_param(RC.MODE, p_mode))
    if mode not in (ALG.CFB, ALG.CBC, ALG.OFB, ALG.CTR, ALG.ECB):
        raise TpmError(rc_param(RC.MODE, p_mode))
    if mode == ALG.ECB:
        iv = iv or bytes(16)
    if len(iv) != 16:
        raise TpmError(rc_param(RC.SIZE, p_iv))
    if mode in (ALG.CBC, ALG.ECB) and len(data) % 16:
        raise TpmError(rc_param(RC.SIZE, p_data))
    c = Cipher(algorithms.AES(obj.sens), modes.ECB() if mode == ALG.ECB else _MODES[mode](iv))
    op = c.decryptor() if decrypt else c.encryptor()
    out = op.update(data) + op.finalize()
    ct = data if decrypt else out
    nblocks = (len(data) + 15) // 16
    if mode in (ALG.CBC, ALG.CFB) and len(ct) >= 16:
        iv_out = ct[(len(ct) // 16 - 1) * 16:(len(ct) // 16) * 16]
    elif mode == ALG.CTR:
        iv_out = ((int.from_bytes(iv, "big") + nblocks) % (1 << 128)).to_bytes(16, "big")
    elif mode == ALG.OFB and len(data) >= 16:
        k = (len(data) // 16 - 1) * 16
        iv_out = bytes(a ^ b for a, b in zip(data[k:k + 16], out[k:k + 16]))
    else:
        iv_out = iv
    return tpm2b(out) + tpm2b(iv_out)


def _p_iv(r: Reader) -> bytes:
    return r.tpm2b(16)


def _p_mode(r: Reader) -> int:
    m = r.u16()
    if m not in (ALG.CFB, ALG.CBC, ALG.OFB, ALG.CTR, ALG.ECB, ALG.NULL):
        raise TpmError(RC.MODE)
    return m


@command(CC.EncryptDecrypt, ("obj",), (USER,), encrypt=True, params=(p_yesno, _p_mode, _p_iv, p_buffer))
def _encrypt_decrypt(tpm: "Tpm", ctx: Ctx, decrypt: bool, mode: int, iv: bytes, data: bytes) -> bytes:
    return _sym_crypt(ctx, decrypt, mode, iv, data, 2, 3, 4)


@command(CC.EncryptDecrypt2, ("obj",), (USER,), decrypt=True, encrypt=True,
         params=(p_buffer, p_yesno, _p_mode, _p_iv))
def _encrypt_decrypt2(tpm: "Tpm", ctx: Ctx, data: bytes, decrypt: bool, mode: int, iv: bytes) -> bytes:
    return _sym_crypt(ctx, decrypt, mode, iv, data, 3, 4, 1)




@command(CC.EventSequenceComplete, ("pcr+", "obj"), (USER, USER), decrypt=True, params=(p_buffer,), flushed=True)
def _event_sequence_complete(tpm: "Tpm", ctx: Ctx, data: bytes) -> bytes:
    seq: TpmObject = ctx.ent[1]
    if seq.kind != KIND_EVENT_SEQ:
        raise TpmError(rc_handle(RC.MODE, 2))
    seq.seq_update(data)
    del tpm.objects[ctx.handles[1]]
    vals = [(alg, seq.seq_digest(alg)) for alg in tpm.pcrs.allocated]
    if ctx.ent[0] is not None:
        for alg, d in vals:
            tpm.pcrs.extend(ctx.ent[0], alg, d)
        tpm.pcrs.update_counter += 1
    return u32(len(vals)) + b"".join(u16(a) + d for a, d in vals)


def _p_curve(r: Reader) -> int:
    c = r.u16()
    if c not in CURVES:
        raise TpmError(RC.CURVE)
    return c


@command(CC.ECC_Parameters, params=(_p_curve,))
def _ecc_parameters(tpm: "Tpm", ctx: Ctx, curve: int) -> bytes:
    """TPMS_ALGORITHM_DETAIL_ECC: curveID, keySize, kdf, sign, p, a, b, gX, gY, n, h."""
    from ._crypto import _EC_FIELD
    cls, size, order = CURVES[curve]
    p, b = _EC_FIELD[curve]
    g = ec.derive_private_key(1, cls()).public_key().public_numbers()

    def num(v: int) -> bytes:
        return tpm2b(v.to_bytes(size, "big"))
    return (u16(curve) + u16(size * 8) + u16(ALG.NULL) + u16(ALG.NULL) + num(p) + num(p - 3) + num(b)
            + num(g.x) + num(g.y) + num(order) + tpm2b(b"\x01"))
