"""StartAuthSession and the policy commands (tpm.md 7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ._constants import ALG, CC, RC, RH, SE, ST, TPMA_OBJECT, rc_handle, rc_param
from ._crypto import CURVES, HASHES, kdfa, kdfe
from ._dispatch import COMMANDS, USER, Ctx, command, p_digest, p_i32, p_u8, p_u16, p_u32
from ._marshal import Reader, TpmError, tpm2b, u8, u16, u32
from ._sessions import Session
from ._structs import marshal_pcr_selection, read_hash_alg, read_pcr_selection, read_sym_def

if TYPE_CHECKING:
    from ._engine import Tpm
    from ._objects import TpmObject

__all__ = ["decrypt_secret", "HASH_OBJS"]

HASH_OBJS = {ALG.SHA1: hashes.SHA1, ALG.SHA256: hashes.SHA256, ALG.SHA384: hashes.SHA384, ALG.SHA512: hashes.SHA512}


def _p_encrypted_secret(r: Reader) -> bytes:
    return r.tpm2b(512)


def decrypt_secret(obj: "TpmObject", secret: bytes, label: bytes, pnum: int) -> bytes:
    """Recover a seed sent to ``obj`` (salt, credential seed): RSA-OAEP or ECDH+KDFe (tpm.md 7/8).

    :raises TpmError: VALUE/ECC_POINT on parameter ``pnum`` if it does not decrypt.
    """
    pub = obj.public
    alg = pub.name_alg
    if pub.type == ALG.RSA:
        h = pub.scheme[1] if pub.scheme[0] == ALG.OAEP else alg
        try:
            return obj.key.decrypt(secret, padding.OAEP(padding.MGF1(HASH_OBJS[h]()), HASH_OBJS[h](), label + b"\x00"))
        except ValueError:
            raise TpmError(rc_param(RC.VALUE, pnum)) from None
    if pub.type == ALG.ECC:
        r = Reader(secret)
        try:
            x, y = r.tpm2b(48), r.tpm2b(48)
            r.done()
        except TpmError:
            raise TpmError(rc_param(RC.VALUE, pnum)) from None
        cls, size = CURVES[pub.curve][:2]
        try:
            q = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), cls()).public_key()
        except ValueError:
            raise TpmError(rc_param(RC.ECC_POINT, pnum)) from None
        z = obj.key.exchange(ec.ECDH(), q)
        return kdfe(alg, z, label, x.rjust(size, b"\x00")[-size:] if x else x, pub.unique[0],  # type: ignore[index]
                    HASHES[alg][1] * 8)
    raise TpmError(rc_handle(RC.TYPE, 1))


@command(CC.StartAuthSession, ("obj+", "entity"), rhandle=True, decrypt=True, encrypt=True,
         params=(p_digest, _p_encrypted_secret, p_u8, read_sym_def, read_hash_alg))
def _start_auth_session(tpm: "Tpm", ctx: Ctx, nonce_caller: bytes, enc_salt: bytes, type_: int,
                        sym: tuple[int, int, int], auth_hash: int) -> bytes:
    dsize = HASHES[auth_hash][1]
    if not 16 <= len(nonce_caller) <= dsize:
        raise TpmError(rc_param(RC.SIZE, 1))
    if type_ not in (SE.HMAC, SE.POLICY, SE.TRIAL):
        raise TpmError(rc_param(RC.VALUE, 3))
    if sym[0] == ALG.AES and sym[2] != ALG.CFB:
        raise TpmError(rc_param(RC.MODE, 4))
    key_obj = ctx.ent[0]
    salt = b""
    if key_obj is None:
        if enc_salt:
            raise TpmError(rc_param(RC.VALUE, 2))
    else:
        if key_obj.public_only:
            raise TpmError(rc_handle(RC.HANDLE, 1))
        if not key_obj.attrs & TPMA_OBJECT.decrypt:
            raise TpmError(rc_handle(RC.ATTRIBUTES, 1))
        salt = decrypt_secret(key_obj, enc_salt, b"SECRET", 2)
        if len(salt) > HASHES[key_obj.public.name_alg][1]:
            raise TpmError(rc_param(RC.VALUE, 2))
    bind_ent = ctx.ent[1]
    bind: tuple[bytes, bytes] | None = None
    bind_auth = b""
    if ctx.handles[1] != RH.NULL:
        bind_auth = tpm.auth_of(ctx.handles[1], bind_ent)
        bind = (tpm.name_of(ctx.handles[1], bind_ent), bind_auth)
    nonce_tpm = tpm.rng(len(nonce_caller))
    if bind is not None or key_obj is not None:
        skey = kdfa(auth_hash, bind_auth + salt, b"ATH", nonce_tpm, nonce_caller, dsize * 8)
    else:
        skey = b""
    s = tpm.add_session(type_, lambda h: Session(h, type_, auth_hash, nonce_tpm, skey,
                                                 bind if type_ == SE.HMAC else None, sym))
    ctx.out_handle = s.handle
    return tpm2b(nonce_tpm)


def _ps(ctx: Ctx, i: int = 0) -> Session:
    return ctx.ent[i]


def _p_nonce(r: Reader) -> bytes:
    return r.tpm2b(64)


@command(CC.PolicySecret, ("entity", "policy"), (USER,), decrypt=True, encrypt=True,
         params=(_p_nonce, p_digest, _p_nonce, p_i32))
def _policy_secret(tpm: "Tpm", ctx: Ctx, nonce_tpm: bytes, cp_hash_a: bytes, policy_ref: bytes,
                   expiration: int) -> bytes:
    s = _ps(ctx, 1)
    if nonce_tpm and nonce_tpm != s.nonce_tpm:
        raise TpmError(rc_param(RC.NONCE, 1))
    if cp_hash_a:
        if len(cp_hash_a) != HASHES[s.hash_alg][1]:
            raise TpmError(rc_param(RC.SIZE, 2))
        if s.cp_hash and s.cp_hash != cp_hash_a:
            raise TpmError(RC.CPHASH)
    if expiration and s.type != SE.TRIAL:
        t = tpm.clock() + abs(expiration)
        s.timeout = t if s.timeout is None else min(s.timeout, t)
    if cp_hash_a and s.type != SE.TRIAL:
        s.cp_hash = cp_hash_a
    name = tpm.name_of(ctx.handles[0], ctx.ent[0])
    s.extend_policy(u32(CC.PolicySecret), name)
    s.policy = _h(s, s.policy, policy_ref)
    return _ticket_out(tpm, ST.AUTH_SECRET, _hierarchy_of(ctx.handles[0], ctx.ent[0]), expiration, nonce_tpm,
                       cp_hash_a, policy_ref, name)


def _hierarchy_of(h: int, ent: object) -> int:
    """The hierarchy an entity belongs to (ref EntityGetHierarchy), for ticket proofs."""
    from ._nv import NvIndex
    from ._objects import TpmObject
    from ._constants import TPMA_NV
    if isinstance(ent, TpmObject):
        return ent.hierarchy
    if isinstance(ent, NvIndex):
        return RH.PLATFORM if ent.attrs & TPMA_NV.PLATFORMCREATE else RH.OWNER
    return h if h in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM) else RH.OWNER


def _auth_ticket(tpm: "Tpm", tag: int, hier: int, timeout: bytes, cp_hash_a: bytes, policy_ref: bytes,
                 name: bytes) -> bytes:
    """TPMT_TK_AUTH: HMAC(proof(hierarchy), tag || timeout || cpHashA || policyRef || authName)."""
    from ._cmd_object import make_ticket
    return make_ticket(tpm, tag, hier, timeout, cp_hash_a, policy_ref, name)


def _ticket_out(tpm: "Tpm", tag: int, hier: int, expiration: int, nonce_tpm: bytes, cp_hash_a: bytes,
                policy_ref: bytes, name: bytes) -> bytes:
    """timeout || policyTicket: a real ticket only for a negative expiration bound to a nonce (ref)."""
    from ._marshal import u64
    if expiration < 0 and nonce_tpm and hier != RH.NULL:
        timeout = u64(tpm.now_ms() + 1000 * -expiration)
        return tpm2b(timeout) + _auth_ticket(tpm, tag, hier, timeout, cp_hash_a, policy_ref, name)
    return tpm2b(b"") + u16(tag) + u32(RH.NULL) + tpm2b(b"")


def _h(s: Session, *parts: bytes) -> bytes:
    from ._crypto import H
    return H(s.hash_alg, *parts)


@command(CC.PolicyPCR, ("policy",), decrypt=True, params=(p_digest, read_pcr_selection))
def _policy_pcr(tpm: "Tpm", ctx: Ctx, pcr_digest: bytes, sel: list[tuple[int, int]]) -> bytes:
    s = _ps(ctx)
    if s.type == SE.TRIAL and pcr_digest:
        d = pcr_digest
    else:
        d = tpm.pcrs.digest(s.hash_alg, sel)
        if pcr_digest and pcr_digest != d:
            raise TpmError(rc_param(RC.VALUE, 1))
    if s.type != SE.TRIAL:
        s.pcr_counter = tpm.pcrs.update_counter
    s.extend_policy(u32(CC.PolicyPCR), marshal_pcr_selection(sel), d)
    return b""


@command(CC.PolicyCommandCode, ("policy",), params=(p_u32,))
def _policy_command_code(tpm: "Tpm", ctx: Ctx, code: int) -> bytes:
    s = _ps(ctx)
    if s.cc and s.cc != code:
        raise TpmError(rc_param(RC.VALUE, 1))
    if code not in COMMANDS:
        raise TpmError(rc_param(RC.POLICY_CC, 1))
    s.cc = code
    s.extend_policy(u32(CC.PolicyCommandCode), u32(code))
    return b""


@command(CC.PolicyAuthValue, ("policy",))
def _policy_auth_value(tpm: "Tpm", ctx: Ctx) -> bytes:
    s = _ps(ctx)
    s.extend_policy(u32(CC.PolicyAuthValue))
    s.auth_value, s.password = True, False
    return b""


@command(CC.PolicyPassword, ("policy",))
def _policy_password(tpm: "Tpm", ctx: Ctx) -> bytes:
    s = _ps(ctx)
    s.extend_policy(u32(CC.PolicyAuthValue))
    s.auth_value, s.password = False, True
    return b""


@command(CC.PolicyRestart, ("policy",))
def _policy_restart(tpm: "Tpm", ctx: Ctx) -> bytes:
    _ps(ctx).restart()
    return b""


@command(CC.PolicyGetDigest, ("policy",), encrypt=True)
def _policy_get_digest(tpm: "Tpm", ctx: Ctx) -> bytes:
    return tpm2b(_ps(ctx).policy)


def _p_digest_list(r: Reader) -> list[bytes]:
    n = r.u32()
    if n > 8:
        raise TpmError(RC.SIZE)
    return [r.tpm2b(64) for _ in range(n)]


@command(CC.PolicyOR, ("policy",), params=(_p_digest_list,))
def _policy_or(tpm: "Tpm", ctx: Ctx, digests: list[bytes]) -> bytes:
    s = _ps(ctx)
    if len(digests) < 2:
        raise TpmError(rc_param(RC.VALUE, 1))
    if s.type != SE.TRIAL and s.policy not in digests:
        raise TpmError(rc_param(RC.VALUE, 1))
    s.policy = _h(s, bytes(HASHES[s.hash_alg][1]), u32(CC.PolicyOR), *digests)
    return b""


@command(CC.PolicyLocality, ("policy",), params=(p_u8,))
def _policy_locality(tpm: "Tpm", ctx: Ctx, loc: int) -> bytes:
    s = _ps(ctx)
    if not loc or s.locality and s.locality != loc:
        raise TpmError(rc_param(RC.RANGE, 1))
    s.locality = loc
    s.extend_policy(u32(CC.PolicyLocality), u8(loc))
    return b""


@command(CC.PolicyNvWritten, ("policy",), params=(p_u8,))
def _policy_nv_written(tpm: "Tpm", ctx: Ctx, yes: int) -> bytes:
    s = _ps(ctx)
    if yes > 1:
        raise TpmError(rc_param(RC.VALUE, 1))
    if s.nv_written is not None and s.nv_written != bool(yes):
        raise TpmError(rc_param(RC.VALUE, 1))
    s.nv_written = bool(yes)
    s.extend_policy(u32(CC.PolicyNvWritten), u8(yes))
    return b""


def _hash_policy(ctx: Ctx, digest: bytes, cc: int, attr: str) -> bytes:
    s = _ps(ctx)
    if len(digest) != HASHES[s.hash_alg][1]:
        raise TpmError(rc_param(RC.SIZE, 1))
    if s.cp_hash or s.name_hash:
        raise TpmError(RC.CPHASH)
    setattr(s, attr, digest)
    s.extend_policy(u32(cc), digest)
    return b""


@command(CC.PolicyCpHash, ("policy",), params=(p_digest,))
def _policy_cp_hash(tpm: "Tpm", ctx: Ctx, digest: bytes) -> bytes:
    return _hash_policy(ctx, digest, CC.PolicyCpHash, "cp_hash")


@command(CC.PolicyNameHash, ("policy",), params=(p_digest,))
def _policy_name_hash(tpm: "Tpm", ctx: Ctx, digest: bytes) -> bytes:
    return _hash_policy(ctx, digest, CC.PolicyNameHash, "name_hash")




def _policy_ref_update(s: Session, cc: int, name: bytes, policy_ref: bytes) -> None:
    """PolicySigned/PolicySecret/PolicyAuthorize form: d = H(H(d || cc || name) || policyRef)."""
    s.extend_policy(u32(cc), name)
    s.policy = _h(s, s.policy, policy_ref)


def _p_signature(r: Reader) -> tuple[int, int, object]:
    from ._structs import read_signature
    return read_signature(r)


@command(CC.PolicySigned, ("obj", "policy"), decrypt=True, encrypt=True,
         params=(_p_nonce, p_digest, _p_nonce, p_i32, _p_signature))
def _policy_signed(tpm: "Tpm", ctx: Ctx, nonce_tpm: bytes, cp_hash_a: bytes, policy_ref: bytes, expiration: int,
                   sig: tuple[int, int, object]) -> bytes:
    from ._cmd_crypto import verify_signature
    from ._crypto import H
    key = ctx.ent[0]
    s = _ps(ctx, 1)
    if nonce_tpm and nonce_tpm != s.nonce_tpm:
        raise TpmError(rc_param(RC.NONCE, 1))
    if cp_hash_a and len(cp_hash_a) != HASHES[s.hash_alg][1]:
        raise TpmError(rc_param(RC.SIZE, 2))
    if s.type != SE.TRIAL:
        a_hash = H(sig[1] if sig[1] in HASHES else key.public.name_alg, nonce_tpm, u32(expiration & 0xFFFFFFFF),
                   cp_hash_a, policy_ref)
        try:
            verify_signature(key, a_hash, sig)
        except TpmError:
            raise TpmError(rc_param(RC.SIGNATURE, 5)) from None
        if expiration:
            t = tpm.clock() + abs(expiration)
            s.timeout = t if s.timeout is None else min(s.timeout, t)
        if cp_hash_a:
            if s.cp_hash and s.cp_hash != cp_hash_a:
                raise TpmError(RC.CPHASH)
            s.cp_hash = cp_hash_a
    _policy_ref_update(s, CC.PolicySigned, key.name, policy_ref)
    return _ticket_out(tpm, ST.AUTH_SIGNED, key.hierarchy, expiration, nonce_tpm, cp_hash_a, policy_ref, key.name)


def _p_ticket(r: Reader) -> tuple[int, int, bytes]:
    from ._structs import read_ticket
    return read_ticket(r)


def _p_timeout(r: Reader) -> bytes:
    return r.tpm2b(8)


@command(CC.PolicyTicket, ("policy",), decrypt=True,
         params=(_p_timeout, p_digest, _p_nonce, lambda r: r.tpm2b(66), _p_ticket))
def _policy_ticket(tpm: "Tpm", ctx: Ctx, timeout: bytes, cp_hash_a: bytes, policy_ref: bytes, auth_name: bytes,
                   ticket: tuple[int, int, bytes]) -> bytes:
    import hmac as _hmac
    s = _ps(ctx)
    tag, hier, digest = ticket
    if tag not in (ST.AUTH_SECRET, ST.AUTH_SIGNED) or hier not in tpm.proofs or hier == RH.NULL:
        raise TpmError(rc_param(RC.TICKET, 5))
    if len(timeout) != 8 or int.from_bytes(timeout, "big") < tpm.now_ms():
        raise TpmError(rc_param(RC.EXPIRED, 1))
    expect = _auth_ticket(tpm, tag, hier, timeout, cp_hash_a, policy_ref, auth_name)
    if not _hmac.compare_digest(expect, u16(tag) + u32(hier) + tpm2b(digest)):
        raise TpmError(rc_param(RC.TICKET, 5))
    if cp_hash_a:
        if s.cp_hash and s.cp_hash != cp_hash_a:
            raise TpmError(RC.CPHASH)
        s.cp_hash = cp_hash_a
    s.timeout = tpm.clock() + (int.from_bytes(timeout, "big") - tpm.now_ms()) / 1000
    _policy_ref_update(s, CC.PolicySigned if tag == ST.AUTH_SIGNED else CC.PolicySecret, auth_name, policy_ref)
    return b""


@command(CC.PolicyAuthorize, ("policy",), decrypt=True,
         params=(p_digest, _p_nonce, lambda r: r.tpm2b(66), _p_ticket))
def _policy_authorize(tpm: "Tpm", ctx: Ctx, approved: bytes, policy_ref: bytes, key_sign: bytes,
                      ticket: tuple[int, int, bytes]) -> bytes:
    import hmac as _hmac
    from ._cmd_object import make_ticket
    from ._crypto import H
    s = _ps(ctx)
    if s.type != SE.TRIAL:
        if len(key_sign) < 2 or int.from_bytes(key_sign[:2], "big") not in HASHES:
            raise TpmError(rc_param(RC.SIZE, 3))
        if approved != s.policy:
            raise TpmError(rc_param(RC.VALUE, 1))
        a_hash = H(int.from_bytes(key_sign[:2], "big"), approved, policy_ref)
        tag, hier, digest = ticket
        if tag != ST.VERIFIED or hier not in tpm.proofs or hier == RH.NULL or not _hmac.compare_digest(
                make_ticket(tpm, ST.VERIFIED, hier, a_hash, key_sign), u16(tag) + u32(hier) + tpm2b(digest)):
            raise TpmError(rc_param(RC.TICKET, 4))
    s.policy = bytes(HASHES[s.hash_alg][1])
    _policy_ref_update(s, CC.PolicyAuthorize, key_sign, policy_ref)
    return b""


_NV_OPS = {
    0x0000: lambda a, b: a == b, 0x0001: lambda a, b: a != b,
    0x0002: lambda a, b: int.from_bytes(a, "big", signed=True) > int.from_bytes(b, "big", signed=True),
    0x0003: lambda a, b: int.from_bytes(a, "big") > int.from_bytes(b, "big"),
    0x0004: lambda a, b: int.from_bytes(a, "big", signed=True) < int.from_bytes(b, "big", signed=True),
    0x0005: lambda a, b: int.from_bytes(a, "big") < int.from_bytes(b, "big"),
    0x0006: lambda a, b: int.from_bytes(a, "big", signed=True) >= int.from_bytes(b, "big", signed=True),
    0x0007: lambda a, b: int.from_bytes(a, "big") >= int.from_bytes(b, "big"),
    0x0008: lambda a, b: int.from_bytes(a, "big", signed=True) <= int.from_bytes(b, "big", signed=True),
    0x0009: lambda a, b: int.from_bytes(a, "big") <= int.from_bytes(b, "big"),
    0x000A: lambda a, b: int.from_bytes(a, "big") & int.from_bytes(b, "big") == int.from_bytes(b, "big"),
    0x000B: lambda a, b: int.from_bytes(a, "big") & int.from_bytes(b, "big") == 0,
}  # TPM_EO (Part 2 table "TPM_EO Constants")


def _p_operation(r: Reader) -> int:
    op = r.u16()
    if op not in _NV_OPS:
        raise TpmError(RC.VALUE)
    return op


@command(CC.PolicyNV, ("nvauth", "nv", "policy"), (USER,), decrypt=True,
         params=(lambda r: r.tpm2b(64), p_u16, _p_operation))
def _policy_nv(tpm: "Tpm", ctx: Ctx, operand_b: bytes, offset: int, operation: int) -> bytes:
    from ._crypto import H
    from ._nv import check_read
    nv = ctx.ent[1]
    s = _ps(ctx, 2)
    if s.type != SE.TRIAL:
        check_read(tpm, ctx, nv)
        if offset + len(operand_b) > nv.size:
            raise TpmError(RC.NV_RANGE)
        if not _NV_OPS[operation](bytes(nv.data[offset:offset + len(operand_b)]), operand_b):
            raise TpmError(RC.POLICY)
    args = H(s.hash_alg, operand_b, u16(offset), u16(operation))
    s.extend_policy(u32(CC.PolicyNV), args, nv.name())
    return b""


@command(CC.PolicyCounterTimer, ("policy",), decrypt=True, params=(lambda r: r.tpm2b(64), p_u16, _p_operation))
def _policy_counter_timer(tpm: "Tpm", ctx: Ctx, operand_b: bytes, offset: int, operation: int) -> bytes:
    from ._cmd_misc import clock_info
    from ._crypto import H
    from ._marshal import u64
    s = _ps(ctx)
    if s.type != SE.TRIAL:
        info = u64(tpm.now_ms()) + clock_info(tpm)  # TPMS_TIME_INFO
        if offset + len(operand_b) > len(info):
            raise TpmError(rc_param(RC.RANGE, 2))
        if not _NV_OPS[operation](info[offset:offset + len(operand_b)], operand_b):
            raise TpmError(RC.POLICY)
    s.extend_policy(u32(CC.PolicyCounterTimer), H(s.hash_alg, operand_b, u16(offset), u16(operation)))
    return b""


@command(CC.PolicyPhysicalPresence, ("policy",))
def _policy_physical_presence(tpm: "Tpm", ctx: Ctx) -> bytes:
    _ps(ctx).extend_policy(u32(CC.PolicyPhysicalPresence))
    return b""


@command(CC.PolicyDuplicationSelect, ("policy",), decrypt=True,
         params=(lambda r: r.tpm2b(66), lambda r: r.tpm2b(66), p_u8))
def _policy_duplication_select(tpm: "Tpm", ctx: Ctx, object_name: bytes, new_parent_name: bytes,
                               include_object: int) -> bytes:
    from ._crypto import H
    s = _ps(ctx)
    if include_object > 1:
        raise TpmError(rc_param(RC.VALUE, 3))
    if s.cp_hash or s.name_hash or s.cc and s.cc != CC.Duplicate:
        raise TpmError(RC.CPHASH)
    s.name_hash = H(s.hash_alg, object_name, new_parent_name)
    s.cc = CC.Duplicate
    s.extend_policy(u32(CC.PolicyDuplicationSelect), object_name if include_object else b"", new_parent_name,
                    u8(include_object))
    return b""


@command(CC.PolicyAuthorizeNV, ("nvauth", "nv", "policy"), (USER,))
def _policy_authorize_nv(tpm: "Tpm", ctx: Ctx) -> bytes:
    from ._nv import check_read
    nv = ctx.ent[1]
    s = _ps(ctx, 2)
    if s.type != SE.TRIAL:
        check_read(tpm, ctx, nv)
        data = bytes(nv.data)
        alg = int.from_bytes(data[:2], "big")
        if alg not in HASHES or len(data) < 2 + HASHES[alg][1] or data[2:2 + HASHES[alg][1]] != s.policy:
            raise TpmError(RC.VALUE)
    s.policy = bytes(HASHES[s.hash_alg][1])
    s.extend_policy(u32(CC.PolicyAuthorizeNV), nv.name())
    return b""


@command(CC.PolicyTemplate, ("policy",), decrypt=True, params=(p_digest,))
def _policy_template(tpm: "Tpm", ctx: Ctx, template_hash: bytes) -> bytes:
    s = _ps(ctx)
    if len(template_hash) != HASHES[s.hash_alg][1]:
        raise TpmError(rc_param(RC.SIZE, 1))
    if s.cp_hash or s.name_hash or s.template_hash and s.template_hash != template_hash:
        raise TpmError(RC.CPHASH)
    s.template_hash = template_hash
    s.extend_policy(u32(CC.PolicyTemplate), template_hash)
    return b""
