"""Attestation and credential commands: Quote, Certify, GetTime, MakeCredential, ActivateCredential."""

from __future__ import annotations

import hmac as _hmac
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec, padding

from ._cmd_crypto import resolve_sig_scheme, sign_digest
from ._cmd_misc import FIRMWARE, clock_info
from ._cmd_policy import HASH_OBJS, decrypt_secret
from ._constants import ALG, CC, RC, RH, ST, TPMA_OBJECT, rc_handle, rc_param
from ._crypto import CURVES, H, HASHES, aes_cfb, hmac_digest, kdfa, kdfe
from ._dispatch import ADMIN, USER, Ctx, command, p_data, p_digest
from ._marshal import Reader, TpmError, tpm2b, u16, u32, u64
from ._objects import KIND_OBJECT, TpmObject
from ._structs import marshal_pcr_selection, read_pcr_selection, read_sig_scheme, read_ticket

if TYPE_CHECKING:
    from ._engine import Tpm

__all__ = ["make_credential"]

TPM_GENERATED_VALUE = 0xFF544347
FIRMWARE_VERSION = FIRMWARE[0] << 32 | FIRMWARE[1]


def _attest(tpm: "Tpm", type_: int, signer: TpmObject | None, extra: bytes, attested: bytes) -> bytes:
    """TPMS_ATTEST; resetCount, restartCount and firmwareVersion are obfuscated unless the signer is in the
    endorsement or platform hierarchy (privacy rule, tpm.md 6)."""
    qs = signer.qn if signer is not None else u32(RH.NULL)
    reset, restart, fw = tpm.reset_count, tpm.restart_count, FIRMWARE_VERSION
    if signer is None or signer.hierarchy not in (RH.ENDORSEMENT, RH.PLATFORM):
        ob = kdfa(ALG.SHA384, tpm.proofs[RH.OWNER], b"OBFUSCATE", qs, b"", 128)
        fw = (fw + int.from_bytes(ob[:8], "big")) & 0xFFFFFFFFFFFFFFFF
        reset = (reset + int.from_bytes(ob[8:12], "big")) & 0xFFFFFFFF
        restart = (restart + int.from_bytes(ob[12:], "big")) & 0xFFFFFFFF
    clock = u64(tpm.now_ms()) + u32(reset) + u32(restart) + b"\x01"
    return u32(TPM_GENERATED_VALUE) + u16(type_) + tpm2b(qs) + tpm2b(extra) + clock + u64(fw) + attested


def _signer(ctx: Ctx, i: int) -> TpmObject | None:
    obj = ctx.ent[i]
    if obj is None:
        return None
    if obj.kind != KIND_OBJECT or not obj.attrs & TPMA_OBJECT.sign:
        raise TpmError(rc_handle(RC.KEY, i + 1))
    if obj.public_only:
        raise TpmError(rc_handle(RC.HANDLE, i + 1))
    return obj


def _sign_attest(signer: TpmObject | None, scheme: tuple[int, int, int], attest: bytes) -> bytes:
    if signer is None:
        return u16(ALG.NULL)
    return sign_digest(signer, scheme, H(scheme[1], attest))


def _scheme(signer: TpmObject | None, scheme: tuple[int, int, int], pnum: int) -> tuple[int, int, int]:
    if signer is None:
        return scheme
    return resolve_sig_scheme(signer, scheme, pnum)


@command(CC.Quote, ("obj",), (USER,), decrypt=True, encrypt=True, params=(p_data, read_sig_scheme, read_pcr_selection))
def _quote(tpm: "Tpm", ctx: Ctx, extra: bytes, scheme: tuple[int, int, int], sel: list[tuple[int, int]]) -> bytes:
    signer = _signer(ctx, 0)
    assert signer is not None
    s = _scheme(signer, scheme, 2)
    sel_read, vals = tpm.pcrs.read(sel)
    attest = _attest(tpm, ST.ATTEST_QUOTE, signer, extra,
                     marshal_pcr_selection(sel_read) + tpm2b(H(s[1], *vals)))
    return tpm2b(attest) + _sign_attest(signer, s, attest)


@command(CC.Certify, ("obj", "obj+"), (ADMIN, USER), decrypt=True, encrypt=True, params=(p_data, read_sig_scheme))
def _certify(tpm: "Tpm", ctx: Ctx, extra: bytes, scheme: tuple[int, int, int]) -> bytes:
    obj: TpmObject = ctx.ent[0]
    signer = _signer(ctx, 1)
    s = _scheme(signer, scheme, 2)
    attest = _attest(tpm, ST.ATTEST_CERTIFY, signer, extra, tpm2b(obj.name) + tpm2b(obj.qn))
    return tpm2b(attest) + _sign_attest(signer, s, attest)


@command(CC.GetTime, ("endorse", "obj+"), (USER, USER), decrypt=True, encrypt=True, params=(p_data, read_sig_scheme))
def _get_time(tpm: "Tpm", ctx: Ctx, extra: bytes, scheme: tuple[int, int, int]) -> bytes:
    signer = _signer(ctx, 1)
    s = _scheme(signer, scheme, 2)
    info = u64(tpm.now_ms()) + clock_info(tpm) + u64(FIRMWARE_VERSION)
    attest = _attest(tpm, ST.ATTEST_TIME, signer, extra, info)
    return tpm2b(attest) + _sign_attest(signer, s, attest)


def _credential_key(ctx: Ctx, i: int) -> TpmObject:
    key: TpmObject = ctx.ent[i]
    a = key.attrs
    if key.public.type not in (ALG.RSA, ALG.ECC) or key.kind != KIND_OBJECT:
        raise TpmError(rc_handle(RC.TYPE, i + 1))
    if not (a & TPMA_OBJECT.restricted and a & TPMA_OBJECT.decrypt) or a & TPMA_OBJECT.sign:
        raise TpmError(rc_handle(RC.TYPE, i + 1))
    return key


def _wrap_credential(key: TpmObject, seed: bytes, credential: bytes, name: bytes) -> bytes:
    alg = key.public.name_alg
    sym = kdfa(alg, seed, b"STORAGE", name, b"", key.public.sym[1])
    enc = aes_cfb(sym, bytes(16), tpm2b(credential), False)
    mac = kdfa(alg, seed, b"INTEGRITY", b"", b"", HASHES[alg][1] * 8)
    return tpm2b(hmac_digest(alg, mac, enc, name)) + enc


def make_credential(key: TpmObject, credential: bytes, name: bytes, rng: object) -> tuple[bytes, bytes]:
    """(credentialBlob contents, secret contents) for ``key`` (an EK-like restricted decrypt key), tpm.md 8."""
    pub = key.public
    alg = pub.name_alg
    if pub.type == ALG.RSA:
        seed = rng(HASHES[alg][1])  # type: ignore[operator]
        secret = key.public_key().encrypt(seed, padding.OAEP(padding.MGF1(HASH_OBJS[alg]()), HASH_OBJS[alg](),
                                                             b"IDENTITY\x00"))
    else:
        cls, size = CURVES[pub.curve][:2]
        eph = ec.generate_private_key(cls())
        q = eph.public_key().public_numbers()
        qx, qy = q.x.to_bytes(size, "big"), q.y.to_bytes(size, "big")
        z = eph.exchange(ec.ECDH(), key.public_key())
        seed = kdfe(alg, z, b"IDENTITY", qx, pub.unique[0], HASHES[alg][1] * 8)  # type: ignore[index]
        secret = tpm2b(qx) + tpm2b(qy)
    return _wrap_credential(key, seed, credential, name), secret


@command(CC.MakeCredential, ("obj",), decrypt=True, encrypt=True, params=(p_digest, lambda r: r.tpm2b(66)))
def _make_credential(tpm: "Tpm", ctx: Ctx, credential: bytes, name: bytes) -> bytes:
    key = _credential_key(ctx, 0)
    if len(credential) > HASHES[key.public.name_alg][1]:
        raise TpmError(rc_param(RC.SIZE, 1))
    blob, secret = make_credential(key, credential, name, tpm.rng)
    return tpm2b(blob) + tpm2b(secret)


@command(CC.ActivateCredential, ("obj", "obj"), (ADMIN, USER), decrypt=True, encrypt=True,
         params=(lambda r: r.tpm2b(256), lambda r: r.tpm2b(512)))
def _activate_credential(tpm: "Tpm", ctx: Ctx, blob: bytes, secret: bytes) -> bytes:
    obj: TpmObject = ctx.ent[0]
    key = _credential_key(ctx, 1)
    if key.public_only:
        raise TpmError(rc_handle(RC.HANDLE, 2))
    seed = decrypt_secret(key, secret, b"IDENTITY", 2)
    alg = key.public.name_alg
    r = Reader(blob)
    try:
        tag = r.tpm2b(64)
    except TpmError:
        raise TpmError(rc_param(RC.SIZE, 1)) from None
    enc = blob[r.pos:]
    mac = kdfa(alg, seed, b"INTEGRITY", b"", b"", HASHES[alg][1] * 8)
    if not _hmac.compare_digest(tag, hmac_digest(alg, mac, enc, obj.name)):
        raise TpmError(rc_param(RC.INTEGRITY, 1))
    sym = kdfa(alg, seed, b"STORAGE", obj.name, b"", key.public.sym[1])
    pr = Reader(aes_cfb(sym, bytes(16), enc, True))
    try:
        cred = pr.tpm2b(64)
        pr.done()
    except TpmError:
        raise TpmError(rc_param(RC.SIZE, 1)) from None
    return tpm2b(cred)


@command(CC.GetSessionAuditDigest, ("endorse", "obj+", "hsession"), (USER, USER), decrypt=True, encrypt=True,
         params=(p_data, read_sig_scheme))
def _get_session_audit_digest(tpm: "Tpm", ctx: Ctx, extra: bytes, scheme: tuple[int, int, int]) -> bytes:
    signer = _signer(ctx, 1)
    s = _scheme(signer, scheme, 2)
    session = ctx.ent[2]
    exclusive = tpm.exclusive_audit == session.handle
    attest = _attest(tpm, ST.ATTEST_SESSION_AUDIT, signer, extra,
                     bytes((exclusive,)) + tpm2b(session.audit_digest or bytes(HASHES[session.hash_alg][1])))
    return tpm2b(attest) + _sign_attest(signer, s, attest)


@command(CC.CertifyCreation, ("obj+", "obj"), (USER,), decrypt=True, encrypt=True,
         params=(p_data, p_digest, read_sig_scheme, read_ticket))
def _certify_creation(tpm: "Tpm", ctx: Ctx, extra: bytes, creation_hash: bytes, scheme: tuple[int, int, int],
                      ticket: tuple[int, int, bytes]) -> bytes:
    from ._cmd_object import make_ticket
    signer = _signer(ctx, 0)
    obj: TpmObject = ctx.ent[1]
    s = _scheme(signer, scheme, 3)
    tag, hier, digest = ticket
    if tag != ST.CREATION or hier not in tpm.proofs or not _hmac.compare_digest(
            make_ticket(tpm, ST.CREATION, hier, obj.name, creation_hash), u16(tag) + u32(hier) + tpm2b(digest)):
        raise TpmError(rc_param(RC.TICKET, 4))
    attest = _attest(tpm, ST.ATTEST_CREATION, signer, extra, tpm2b(obj.name) + tpm2b(creation_hash))
    return tpm2b(attest) + _sign_attest(signer, s, attest)


@command(CC.NV_Certify, ("obj+", "nvauth", "nv"), (USER, USER), decrypt=True, encrypt=True,
         params=(p_data, read_sig_scheme, lambda r: r.u16(), lambda r: r.u16()))
def _nv_certify(tpm: "Tpm", ctx: Ctx, extra: bytes, scheme: tuple[int, int, int], size: int, offset: int) -> bytes:
    from ._nv import NV_BUFFER_MAX, check_read
    signer = _signer(ctx, 0)
    s = _scheme(signer, scheme, 2)
    nv = ctx.ent[2]
    shifted = Ctx(ctx.spec, ctx.locality)  # the NV access check looks at handle 0 = the auth handle
    shifted.handles, shifted.ent, shifted.auth_kinds = ctx.handles[1:], ctx.ent[1:], ctx.auth_kinds[1:]
    check_read(tpm, shifted, nv)
    if size > NV_BUFFER_MAX:
        raise TpmError(rc_param(RC.VALUE, 3))
    if offset + size > nv.size:
        raise TpmError(RC.NV_RANGE)
    attest = _attest(tpm, ST.ATTEST_NV, signer, extra,
                     tpm2b(nv.name()) + u16(offset) + tpm2b(bytes(nv.data[offset:offset + size])))
    return tpm2b(attest) + _sign_attest(signer, s, attest)


def _p_cc_list(r: Reader) -> list[int]:
    n = r.u32()
    if n > 256:
        raise TpmError(RC.SIZE)
    return [r.u32() for _ in range(n)]


@command(CC.SetCommandCodeAuditStatus, ("prov",), (USER,),
         params=(lambda r: r.u16(), _p_cc_list, _p_cc_list))
def _set_command_code_audit_status(tpm: "Tpm", ctx: Ctx, alg: int, set_list: list[int],
                                   clear_list: list[int]) -> bytes:
    from ._dispatch import COMMANDS
    if alg != ALG.NULL:
        if alg not in HASHES:
            raise TpmError(rc_param(RC.HASH, 1))
        if alg != tpm.audit_alg:
            if set_list or clear_list:
                raise TpmError(rc_param(RC.VALUE, 2))
            tpm.audit_alg, tpm.audit_digest = alg, b""
    tpm.audit_commands |= {c for c in set_list if c in COMMANDS}
    tpm.audit_commands -= {c for c in clear_list if c != CC.SetCommandCodeAuditStatus}
    tpm.dirty = True
    return b""


@command(CC.GetCommandAuditDigest, ("endorse", "obj+"), (USER, USER), decrypt=True, encrypt=True,
         params=(p_data, read_sig_scheme))
def _get_command_audit_digest(tpm: "Tpm", ctx: Ctx, extra: bytes, scheme: tuple[int, int, int]) -> bytes:
    signer = _signer(ctx, 1)
    s = _scheme(signer, scheme, 2)
    alg = tpm.audit_alg
    command_digest = H(alg, *(u32(c) for c in sorted(tpm.audit_commands)))
    info = (u64(tpm.audit_counter) + u16(alg) + tpm2b(tpm.audit_digest or bytes(HASHES[alg][1]))
            + tpm2b(command_digest))
    attest = _attest(tpm, ST.ATTEST_COMMAND_AUDIT, signer, extra, info)
    if signer is not None:
        tpm.audit_digest = b""  # a signed report starts a new audit run
    return tpm2b(attest) + _sign_attest(signer, s, attest)
