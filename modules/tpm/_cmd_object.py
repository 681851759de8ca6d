"""Object commands: CreatePrimary, Create, CreateLoaded, Load, LoadExternal, ReadPublic,
EvictControl, ObjectChangeAuth, Unseal (tpm.md 3, 6, 8)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._constants import ALG, CC, HT, RC, RH, ST, TPMA_OBJECT, rc_handle, rc_param, rc_session
from ._crypto import H, HASHES, hmac_digest, strip_zeros
from ._dispatch import ADMIN, USER, Ctx, command, p_data, p_digest, p_u32
from ._marshal import Reader, TpmError, tpm2b, u8, u16, u32
from ._objects import (KIND_OBJECT, TpmObject, derive_primary, generate_object, key_from_public,
                       marshal_sensitive, read_sensitive, unwrap_sensitive, validate_public, wrap_sensitive)
from ._structs import Public, marshal_pcr_selection, read_pcr_selection, read_public_2b, read_sensitive_create

if TYPE_CHECKING:
    from ._engine import Tpm

__all__ = ["qualified_name", "creation_outputs", "make_ticket", "check_template"]


def qualified_name(parent_qn: bytes, name: bytes, name_alg: int) -> bytes:
    """QN(obj) = nameAlg || H(QN(parent) || Name(obj))."""
    if name_alg == ALG.NULL:
        return name
    return u16(name_alg) + H(name_alg, parent_qn, name)


def make_ticket(tpm: "Tpm", tag: int, hierarchy: int, *parts: bytes) -> bytes:
    """A TPMT_TK_* with digest HMAC(proof(hierarchy), u16 tag || parts)."""
    if hierarchy == RH.NULL and tag != ST.CREATION:
        return u16(tag) + u32(RH.NULL) + tpm2b(b"")
    return u16(tag) + u32(hierarchy) + tpm2b(hmac_digest(ALG.SHA256, tpm.proofs[hierarchy], u16(tag), *parts))


def creation_outputs(tpm: "Tpm", ctx: Ctx, obj: TpmObject, parent: TpmObject | int, outside: bytes,
                     sel: list[tuple[int, int]]) -> bytes:
    """creationData, creationHash and creationTicket for a new object."""
    alg = obj.public.name_alg
    if isinstance(parent, TpmObject):
        pname_alg, pname, pqn = parent.public.name_alg, parent.name, parent.qn
    else:
        pname_alg, pname, pqn = ALG.NULL, u32(parent), u32(parent)
    cdata = (marshal_pcr_selection(sel) + tpm2b(tpm.pcrs.digest(alg, sel)) + u8(1 << ctx.locality)
             + u16(pname_alg) + tpm2b(pname) + tpm2b(pqn) + tpm2b(outside))
    chash = H(alg, cdata)
    ticket = make_ticket(tpm, ST.CREATION, obj.hierarchy, obj.name, chash)
    return tpm2b(cdata) + tpm2b(chash) + ticket


def _check_sel(sel: list[tuple[int, int]]) -> None:
    for _alg, bits in sel:
        if bits >> 24:
            raise TpmError(rc_param(RC.VALUE, 4))


def check_template(ctx: Ctx, pub: Public) -> None:
    """A PolicyTemplate session only authorizes creating objects from exactly that template.

    :raises TpmError: POLICY_FAIL on the session.
    """
    if ctx.template is not None:
        digest, alg, i = ctx.template
        if H(alg, pub.marshal()) != digest:
            raise TpmError(rc_session(RC.POLICY_FAIL, i + 1))


def _new_primary(tpm: "Tpm", hier: int, sens: tuple[bytes, bytes], pub: Public) -> TpmObject:
    auth, data = sens
    validate_public(pub, data, auth, None)
    out, key, seed, sens_bytes = derive_primary(tpm.seeds[hier], pub, data)
    obj = TpmObject(out, hier, strip_zeros(auth), seed, sens_bytes, b"", key=key)
    obj.qn = qualified_name(u32(hier), obj.name, out.name_alg)
    return obj


@command(CC.CreatePrimary, ("hier+",), (USER,), rhandle=True, decrypt=True, encrypt=True,
         params=(read_sensitive_create, read_public_2b, p_data, read_pcr_selection))
def _create_primary(tpm: "Tpm", ctx: Ctx, sens: tuple[bytes, bytes], pub: Public, outside: bytes,
                    sel: list[tuple[int, int]]) -> bytes:
    _check_sel(sel)
    check_template(ctx, pub)
    hier = ctx.handles[0]
    obj = _new_primary(tpm, hier, sens, pub)
    ctx.out_handle = tpm.add_object(obj)
    return (tpm2b(obj.public.marshal()) + creation_outputs(tpm, ctx, obj, hier, outside, sel) + tpm2b(obj.name))


def _storage_parent(ctx: Ctx) -> TpmObject:
    parent = ctx.ent[0]
    if not parent.is_storage_parent():
        raise TpmError(rc_handle(RC.TYPE, 1))
    return parent


def _new_child(tpm: "Tpm", parent: TpmObject, sens: tuple[bytes, bytes], pub: Public) -> tuple[TpmObject, bytes]:
    auth, data = sens
    validate_public(pub, data, auth, parent)
    out, key, seed, sens_bytes = generate_object(pub, data, tpm.rng)
    obj = TpmObject(out, parent.hierarchy, strip_zeros(auth), seed, sens_bytes, b"", key=key)
    obj.qn = qualified_name(parent.qn, obj.name, out.name_alg)
    dsize = HASHES[out.name_alg][1]
    private = wrap_sensitive(parent, obj.name,
                             marshal_sensitive(out.type, obj.auth.ljust(dsize, b"\x00"),
                                               seed, sens_bytes), tpm.rng(16))
    return obj, private


@command(CC.Create, ("obj",), (USER,), decrypt=True, encrypt=True,
         params=(read_sensitive_create, read_public_2b, p_data, read_pcr_selection))
def _create(tpm: "Tpm", ctx: Ctx, sens: tuple[bytes, bytes], pub: Public, outside: bytes,
            sel: list[tuple[int, int]]) -> bytes:
    _check_sel(sel)
    check_template(ctx, pub)
    parent = _storage_parent(ctx)
    obj, private = _new_child(tpm, parent, sens, pub)
    return tpm2b(private) + tpm2b(obj.public.marshal()) + creation_outputs(tpm, ctx, obj, parent, outside, sel)


@command(CC.CreateLoaded, ("parent",), (USER,), rhandle=True, decrypt=True, encrypt=True,
         params=(read_sensitive_create, read_public_2b))
def _create_loaded(tpm: "Tpm", ctx: Ctx, sens: tuple[bytes, bytes], pub: Public) -> bytes:
    check_template(ctx, pub)
    if isinstance(ctx.ent[0], int):
        obj = _new_primary(tpm, ctx.ent[0], sens, pub)
        private = b""
    else:
        obj, private = _new_child(tpm, _storage_parent(ctx), sens, pub)
    ctx.out_handle = tpm.add_object(obj)
    return tpm2b(private) + tpm2b(obj.public.marshal()) + tpm2b(obj.name)


def _p_private(r: Reader) -> bytes:
    return r.tpm2b(2048)


def _check_pair(pub: Public, sens: bytes, pnum: int) -> object:
    try:
        key = key_from_public(pub, sens)
    except TpmError:
        raise TpmError(rc_param(RC.BINDING, pnum)) from None
    if pub.type == ALG.ECC:
        nums = key.public_key().public_numbers()
        x, y = pub.unique  # type: ignore[misc]
        if nums.x != int.from_bytes(x, "big") or nums.y != int.from_bytes(y, "big"):
            raise TpmError(rc_param(RC.BINDING, pnum))
    return key


@command(CC.Load, ("obj",), (USER,), rhandle=True, decrypt=True, encrypt=True, params=(_p_private, read_public_2b))
def _load(tpm: "Tpm", ctx: Ctx, private: bytes, pub: Public) -> bytes:
    parent = _storage_parent(ctx)
    validate_public(pub, b"", b"", parent)
    from ._objects import compute_name
    name = compute_name(pub)
    try:
        inner = unwrap_sensitive(parent, name, private)
    except TpmError as e:
        raise TpmError(rc_param(e.rc, 1)) from None
    try:
        r = Reader(inner)
        t, auth, seed, sens = read_sensitive(r)
        r.done()
    except TpmError:
        raise TpmError(rc_param(RC.INTEGRITY, 1)) from None
    if t != pub.type:
        raise TpmError(rc_param(RC.TYPE, 2))
    if pub.type in (ALG.KEYEDHASH, ALG.SYMCIPHER) and pub.unique != H(pub.name_alg, seed, sens):
        raise TpmError(rc_param(RC.BINDING, 2))
    key = _check_pair(pub, sens, 2) if pub.type in (ALG.RSA, ALG.ECC) else None
    obj = TpmObject(pub, parent.hierarchy, strip_zeros(auth), seed, sens, qualified_name(parent.qn, name, pub.name_alg),
                    key=key)
    ctx.out_handle = tpm.add_object(obj)
    return tpm2b(obj.name)


def _p_sensitive_2b(r: Reader) -> tuple[int, bytes, bytes, bytes] | None:
    """TPM2B_SENSITIVE as the reference reads it: the TPMT_SENSITIVE is unmarshalled from what follows
    the size (so a bad type is TYPE whatever the size says), then the size must match what was read."""
    n = r.u16()
    if n == 0:
        return None
    start = r.pos
    out = read_sensitive(r)
    if r.pos - start != n:
        raise TpmError(RC.SIZE)
    return out


@command(CC.LoadExternal, (), rhandle=True, decrypt=True, encrypt=True,
         params=(_p_sensitive_2b, lambda r: read_public_2b(r, allow_null_name=True), p_u32))
def _load_external(tpm: "Tpm", ctx: Ctx, sens: tuple[int, bytes, bytes, bytes] | None, pub: Public,
                   hier: int) -> bytes:
    if hier not in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.NULL):
        raise TpmError(rc_param(RC.VALUE, 3))
    if not tpm.hierarchy_enabled(hier):
        raise TpmError(rc_param(RC.HIERARCHY, 3))
    if sens is not None:
        if hier != RH.NULL:
            raise TpmError(rc_param(RC.HIERARCHY, 3))
        if pub.attrs & (TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent):
            raise TpmError(rc_param(RC.ATTRIBUTES, 2))
        t, auth, seed, sbytes = sens
        if t != pub.type:
            raise TpmError(rc_param(RC.TYPE, 2))
        if pub.name_alg == ALG.NULL:
            raise TpmError(rc_param(RC.HASH, 2))
        if pub.type in (ALG.KEYEDHASH, ALG.SYMCIPHER):
            if pub.unique != H(pub.name_alg, seed, sbytes):
                raise TpmError(rc_param(RC.BINDING, 2))
            key = None
        else:
            key = _check_pair(pub, sbytes, 2)
        obj = TpmObject(pub, hier, strip_zeros(auth), seed, sbytes, b"", key=key)
    else:
        key = key_from_public(pub, None) if pub.type in (ALG.RSA, ALG.ECC) else None
        obj = TpmObject(pub, hier, b"", b"", b"", b"", key=key, public_only=True)
    obj.qn = qualified_name(u32(hier), obj.name, pub.name_alg)
    ctx.out_handle = tpm.add_object(obj)
    return tpm2b(obj.name)


@command(CC.ReadPublic, ("obj",), encrypt=True)
def _read_public(tpm: "Tpm", ctx: Ctx) -> bytes:
    obj = ctx.ent[0]
    if obj.kind != KIND_OBJECT:
        raise TpmError(rc_handle(RC.SEQUENCE, 1))
    return tpm2b(obj.public.marshal()) + tpm2b(obj.name) + tpm2b(obj.qn)


@command(CC.EvictControl, ("prov", "obj"), (USER,), params=(p_u32,))
def _evict_control(tpm: "Tpm", ctx: Ctx, persistent: int) -> bytes:
    auth = ctx.handles[0]
    obj: TpmObject = ctx.ent[1]
    oh = ctx.handles[1]
    if obj.hierarchy == RH.PLATFORM and auth == RH.OWNER or obj.hierarchy != RH.PLATFORM and auth == RH.PLATFORM:
        raise TpmError(rc_handle(RC.HIERARCHY, 2))
    if oh >> 24 == HT.PERSISTENT:
        if persistent != oh:
            raise TpmError(rc_param(RC.RANGE, 1))
        del tpm.persistent[oh]
        tpm.dirty = True
        return b""
    lo, hi = (0x81000000, 0x817FFFFF) if auth == RH.OWNER else (0x81800000, 0x81FFFFFF)
    if not lo <= persistent <= hi:
        raise TpmError(rc_param(RC.RANGE, 1))
    if obj.attrs & TPMA_OBJECT.stClear or obj.public_only or obj.kind != KIND_OBJECT or obj.hierarchy == RH.NULL:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 2))
    if persistent in tpm.persistent:
        raise TpmError(RC.NV_DEFINED)
    if len(tpm.persistent) >= 64:
        raise TpmError(RC.NV_SPACE)
    copy = TpmObject(obj.public, obj.hierarchy, obj.auth, obj.seed, obj.sens, obj.qn, key=obj._key)
    copy.evict_handle = persistent
    tpm.persistent[persistent] = copy
    tpm.dirty = True
    return b""


@command(CC.ObjectChangeAuth, ("obj", "obj"), (ADMIN,), decrypt=True, encrypt=True, params=(p_digest,))
def _object_change_auth(tpm: "Tpm", ctx: Ctx, new_auth: bytes) -> bytes:
    obj: TpmObject = ctx.ent[0]
    parent: TpmObject = ctx.ent[1]
    if obj.kind != KIND_OBJECT:
        raise TpmError(rc_handle(RC.TYPE, 1))
    if qualified_name(parent.qn, obj.name, obj.public.name_alg) != obj.qn or not parent.is_storage_parent():
        raise TpmError(rc_handle(RC.TYPE, 2))
    dsize = HASHES[obj.public.name_alg][1]
    new = strip_zeros(new_auth)
    if len(new) > dsize:
        raise TpmError(rc_param(RC.SIZE, 1))
    private = wrap_sensitive(parent, obj.name, marshal_sensitive(obj.public.type, new.ljust(dsize, b"\x00"),
                                                                 obj.seed, obj.sens), tpm.rng(16))
    return tpm2b(private)


@command(CC.Unseal, ("obj",), (USER,), encrypt=True)
def _unseal(tpm: "Tpm", ctx: Ctx) -> bytes:
    obj: TpmObject = ctx.ent[0]
    if obj.public.type != ALG.KEYEDHASH or obj.kind != KIND_OBJECT:
        raise TpmError(rc_handle(RC.TYPE, 1))
    if obj.attrs & (TPMA_OBJECT.sign | TPMA_OBJECT.decrypt | TPMA_OBJECT.restricted):
        raise TpmError(rc_handle(RC.ATTRIBUTES, 1))
    return tpm2b(obj.sens)
