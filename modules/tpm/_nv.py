"""NV indices (ordinary, counter, bits, extend) and the NV commands (tpm.md 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._constants import CC, NT, RC, RH, SE, TPMA_NV, rc_handle, rc_param
from ._crypto import H, HASHES, strip_zeros
from ._dispatch import ADMIN, USER, Ctx, command, p_digest, p_u16, p_u64
from ._marshal import Reader, TpmError, tpm2b, u16, u32, u64
from ._structs import MAX_DIGEST, read_hash_alg

if TYPE_CHECKING:
    from ._engine import Tpm

__all__ = ["NvIndex", "NV_INDEX_MAX", "NV_BUFFER_MAX", "read_nv_public"]

NV_INDEX_MAX = 2048
NV_BUFFER_MAX = 1024
NV_MAX_INDICES = 128


class NvIndex:
    """One NV index: public area, auth and data."""

    __slots__ = ("handle", "name_alg", "attrs", "policy", "size", "auth", "data")

    def __init__(self, handle: int, name_alg: int, attrs: int, policy: bytes, size: int, auth: bytes,
                 data: bytes | None = None) -> None:
        self.handle, self.name_alg, self.attrs, self.policy, self.size = handle, name_alg, attrs, policy, size
        self.auth = auth
        self.data = bytearray(data if data is not None else bytes(size))

    @property
    def nt(self) -> int:
        """TPM_NT of this index."""
        return (self.attrs & TPMA_NV.TYPE_MASK) >> 4

    def public(self) -> bytes:
        """TPMS_NV_PUBLIC with the current attributes."""
        return u32(self.handle) + u16(self.name_alg) + u32(self.attrs) + tpm2b(self.policy) + u16(self.size)

    def name(self) -> bytes:
        """nameAlg || H(TPMS_NV_PUBLIC)."""
        return u16(self.name_alg) + H(self.name_alg, self.public())

    def marshal(self) -> bytes:
        """State for the whole-TPM save."""
        return self.public() + tpm2b(self.auth) + tpm2b(bytes(self.data))

    @classmethod
    def unmarshal(cls, r: Reader) -> "NvIndex":
        """Inverse of :meth:`marshal`."""
        h, alg, attrs, pol, size = r.u32(), r.u16(), r.u32(), r.tpm2b(), r.u16()
        return cls(h, alg, attrs, pol, size, r.tpm2b(), r.tpm2b())


def read_nv_public(r: Reader) -> NvIndex:
    """TPM2B_NV_PUBLIC -> an (unwritten, auth-less) :class:`NvIndex`."""
    sub = r.sized()
    if sub.end == sub.pos:
        raise TpmError(RC.SIZE)
    h = sub.u32()
    if h >> 24 != 0x01:
        raise TpmError(RC.HANDLE)
    alg = read_hash_alg(sub)
    attrs = sub.u32()
    if attrs & TPMA_NV.RESERVED:
        raise TpmError(RC.RESERVED_BITS)
    policy = sub.tpm2b(MAX_DIGEST)
    size = sub.u16()
    sub.done()
    return NvIndex(h, alg, attrs, policy, size, b"")


@command(CC.NV_DefineSpace, ("prov",), (USER,), decrypt=True, params=(p_digest, read_nv_public))
def _nv_define(tpm: "Tpm", ctx: Ctx, auth: bytes, nv: NvIndex) -> bytes:
    a = nv.attrs
    dsize = HASHES[nv.name_alg][1]
    if nv.policy and len(nv.policy) != dsize:
        raise TpmError(rc_param(RC.SIZE, 2))
    if len(strip_zeros(auth)) > dsize:
        raise TpmError(rc_param(RC.SIZE, 1))
    nt = nv.nt
    if nt not in (NT.ORDINARY, NT.COUNTER, NT.BITS, NT.EXTEND, NT.PIN_FAIL, NT.PIN_PASS):
        raise TpmError(rc_param(RC.ATTRIBUTES, 2))
    if nt in (NT.COUNTER, NT.BITS, NT.PIN_FAIL, NT.PIN_PASS) and nv.size != 8 or \
            nt == NT.EXTEND and nv.size != dsize:
        raise TpmError(rc_param(RC.SIZE, 2))
    if nv.size > NV_INDEX_MAX:
        raise TpmError(rc_param(RC.SIZE, 2))
    if a & (TPMA_NV.WRITTEN | TPMA_NV.WRITELOCKED | TPMA_NV.READLOCKED):
        raise TpmError(rc_param(RC.ATTRIBUTES, 2))
    if not a & (TPMA_NV.PPREAD | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.POLICYREAD) or \
            not a & (TPMA_NV.PPWRITE | TPMA_NV.OWNERWRITE | TPMA_NV.AUTHWRITE | TPMA_NV.POLICYWRITE):
        raise TpmError(rc_param(RC.ATTRIBUTES, 2))
    if a & TPMA_NV.POLICY_DELETE and not nv.policy:
        raise TpmError(rc_param(RC.SIZE, 2))
    if (ctx.handles[0] == RH.PLATFORM) != bool(a & TPMA_NV.PLATFORMCREATE):
        raise TpmError(rc_handle(RC.ATTRIBUTES, 1))
    if nv.handle in tpm.nv:
        raise TpmError(RC.NV_DEFINED)
    if len(tpm.nv) >= NV_MAX_INDICES:
        raise TpmError(RC.NV_SPACE)
    nv.auth = strip_zeros(auth)
    if nt in (NT.BITS,):
        nv.data = bytearray(8)
    tpm.nv[nv.handle] = nv
    return b""


def delete_index(tpm: "Tpm", nv: NvIndex) -> None:
    """Remove ``nv``; a written counter raises the TPM's max counter value (ref NvDeleteIndex)."""
    if nv.nt == NT.COUNTER and nv.attrs & TPMA_NV.WRITTEN:
        tpm.max_nv_counter = max(tpm.max_nv_counter, int.from_bytes(nv.data, "big"))
    del tpm.nv[nv.handle]
    tpm.dirty = True


def _undefine_checks(tpm: "Tpm", ctx: Ctx, nv: NvIndex) -> None:
    if nv.attrs & TPMA_NV.PLATFORMCREATE and ctx.handles[0] != RH.PLATFORM:
        raise TpmError(RC.NV_AUTHORIZATION)
    if not nv.attrs & TPMA_NV.PLATFORMCREATE and ctx.handles[0] == RH.PLATFORM:
        raise TpmError(RC.NV_AUTHORIZATION)


@command(CC.NV_UndefineSpace, ("prov", "nv"), (USER,))
def _nv_undefine(tpm: "Tpm", ctx: Ctx) -> bytes:
    nv = ctx.ent[1]
    if nv.attrs & TPMA_NV.POLICY_DELETE:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 2))
    _undefine_checks(tpm, ctx, nv)
    delete_index(tpm, nv)
    return b""


@command(CC.NV_UndefineSpaceSpecial, ("nv", "platform"), (ADMIN, USER))
def _nv_undefine_special(tpm: "Tpm", ctx: Ctx) -> bytes:
    nv = ctx.ent[0]
    if not nv.attrs & TPMA_NV.POLICY_DELETE:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 1))
    delete_index(tpm, nv)
    return b""


def _uses_policy(ctx: Ctx, i: int = 0) -> bool:
    s = ctx.auth_kinds[i] if len(ctx.auth_kinds) > i else None
    return s is not None and s.type != SE.HMAC


def check_write(ctx: Ctx, nv: NvIndex) -> None:
    """NvWriteAccessChecks: the auth handle may write; the index is not locked."""
    a = nv.attrs
    h = ctx.handles[0]
    if h == RH.OWNER:
        ok = a & TPMA_NV.OWNERWRITE
    elif h == RH.PLATFORM:
        ok = a & TPMA_NV.PPWRITE
    else:
        ok = a & (TPMA_NV.POLICYWRITE if _uses_policy(ctx) else TPMA_NV.AUTHWRITE)
    if not ok:
        raise TpmError(RC.NV_AUTHORIZATION)
    if a & TPMA_NV.WRITELOCKED:
        raise TpmError(RC.NV_LOCKED)


def check_read(tpm: "Tpm", ctx: Ctx, nv: NvIndex) -> None:
    """NvReadAccessChecks: the auth handle may read; not read-locked; written."""
    a = nv.attrs
    h = ctx.handles[0]
    if h == RH.OWNER:
        ok = a & TPMA_NV.OWNERREAD
    elif h == RH.PLATFORM:
        ok = a & TPMA_NV.PPREAD
    else:
        ok = a & (TPMA_NV.POLICYREAD if _uses_policy(ctx) else TPMA_NV.AUTHREAD)
    if not ok:
        raise TpmError(RC.NV_AUTHORIZATION)
    if a & TPMA_NV.READLOCKED:
        raise TpmError(RC.NV_LOCKED)
    if not a & TPMA_NV.WRITTEN:
        raise TpmError(RC.NV_UNINITIALIZED)


def _written(tpm: "Tpm", nv: NvIndex) -> None:
    nv.attrs |= TPMA_NV.WRITTEN
    tpm.dirty = True


def _p_nv_buffer(r: Reader) -> bytes:
    return r.tpm2b(NV_BUFFER_MAX)


@command(CC.NV_Write, ("nvauth", "nv"), (USER,), decrypt=True, params=(_p_nv_buffer, p_u16))
def _nv_write(tpm: "Tpm", ctx: Ctx, data: bytes, offset: int) -> bytes:
    nv = ctx.ent[1]
    check_write(ctx, nv)
    if nv.nt not in (NT.ORDINARY, NT.PIN_FAIL, NT.PIN_PASS):
        raise TpmError(rc_handle(RC.ATTRIBUTES, 2))
    if offset + len(data) > nv.size:
        raise TpmError(RC.NV_RANGE)
    if nv.attrs & TPMA_NV.WRITEALL and len(data) != nv.size:
        raise TpmError(RC.NV_RANGE)
    nv.data[offset:offset + len(data)] = data
    _written(tpm, nv)
    return b""


@command(CC.NV_Read, ("nvauth", "nv"), (USER,), encrypt=True, params=(p_u16, p_u16))
def _nv_read(tpm: "Tpm", ctx: Ctx, size: int, offset: int) -> bytes:
    nv = ctx.ent[1]
    check_read(tpm, ctx, nv)
    if size > NV_BUFFER_MAX:
        raise TpmError(rc_param(RC.VALUE, 1))
    if offset + size > nv.size:
        raise TpmError(RC.NV_RANGE)
    return tpm2b(bytes(nv.data[offset:offset + size]))


@command(CC.NV_ReadPublic, ("nv",), encrypt=True)
def _nv_read_public(tpm: "Tpm", ctx: Ctx) -> bytes:
    nv = ctx.ent[0]
    return tpm2b(nv.public()) + tpm2b(nv.name())


@command(CC.NV_Increment, ("nvauth", "nv"), (USER,))
def _nv_increment(tpm: "Tpm", ctx: Ctx) -> bytes:
    nv = ctx.ent[1]
    check_write(ctx, nv)
    if nv.nt != NT.COUNTER:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 2))
    # an unwritten counter starts above every counter ever deleted (ref NvReadMaxCount): no rollback
    v = (int.from_bytes(nv.data, "big") if nv.attrs & TPMA_NV.WRITTEN else tpm.max_nv_counter) + 1
    nv.data[:] = (v & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
    _written(tpm, nv)
    return b""


@command(CC.NV_SetBits, ("nvauth", "nv"), (USER,), params=(p_u64,))
def _nv_set_bits(tpm: "Tpm", ctx: Ctx, bits: int) -> bytes:
    nv = ctx.ent[1]
    check_write(ctx, nv)
    if nv.nt != NT.BITS:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 2))
    v = int.from_bytes(nv.data, "big") if nv.attrs & TPMA_NV.WRITTEN else 0
    nv.data[:] = u64(v | bits)
    _written(tpm, nv)
    return b""


@command(CC.NV_Extend, ("nvauth", "nv"), (USER,), decrypt=True, params=(_p_nv_buffer,))
def _nv_extend(tpm: "Tpm", ctx: Ctx, data: bytes) -> bytes:
    nv = ctx.ent[1]
    check_write(ctx, nv)
    if nv.nt != NT.EXTEND:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 2))
    old = bytes(nv.data) if nv.attrs & TPMA_NV.WRITTEN else bytes(nv.size)
    nv.data[:] = H(nv.name_alg, old, data)
    _written(tpm, nv)
    return b""


@command(CC.NV_WriteLock, ("nvauth", "nv"), (USER,))
def _nv_write_lock(tpm: "Tpm", ctx: Ctx) -> bytes:
    nv = ctx.ent[1]
    if not nv.attrs & (TPMA_NV.WRITEDEFINE | TPMA_NV.WRITE_STCLEAR):
        raise TpmError(rc_handle(RC.ATTRIBUTES, 2))
    check_write(ctx, nv)
    nv.attrs |= TPMA_NV.WRITELOCKED
    tpm.dirty = True
    return b""


@command(CC.NV_ReadLock, ("nvauth", "nv"), (USER,))
def _nv_read_lock(tpm: "Tpm", ctx: Ctx) -> bytes:
    nv = ctx.ent[1]
    if not nv.attrs & TPMA_NV.READ_STCLEAR:
        raise TpmError(rc_handle(RC.ATTRIBUTES, 2))
    a = nv.attrs
    h = ctx.handles[0]
    ok = (a & TPMA_NV.OWNERREAD if h == RH.OWNER else a & TPMA_NV.PPREAD if h == RH.PLATFORM
          else a & (TPMA_NV.POLICYREAD if _uses_policy(ctx) else TPMA_NV.AUTHREAD))
    if not ok:
        raise TpmError(RC.NV_AUTHORIZATION)
    nv.attrs |= TPMA_NV.READLOCKED
    tpm.dirty = True
    return b""


@command(CC.NV_GlobalWriteLock, ("prov",), (USER,))
def _nv_global_lock(tpm: "Tpm", ctx: Ctx) -> bytes:
    for nv in tpm.nv.values():
        if nv.attrs & TPMA_NV.GLOBALLOCK:
            nv.attrs |= TPMA_NV.WRITELOCKED
    tpm.dirty = True
    return b""


@command(CC.NV_ChangeAuth, ("nv",), (ADMIN,), decrypt=True, params=(p_digest,))
def _nv_change_auth(tpm: "Tpm", ctx: Ctx, new_auth: bytes) -> bytes:
    nv = ctx.ent[0]
    if len(strip_zeros(new_auth)) > HASHES[nv.name_alg][1]:
        raise TpmError(rc_param(RC.SIZE, 1))
    nv.auth = strip_zeros(new_auth)
    ctx.resp_auth = nv.auth
    tpm.dirty = True
    return b""


def startup_clear(tpm: "Tpm") -> None:
    """TPM Reset/Restart effects on NV attributes (locks, CLEAR_STCLEAR)."""
    for nv in tpm.nv.values():
        if nv.attrs & TPMA_NV.WRITE_STCLEAR:
            nv.attrs &= ~TPMA_NV.WRITELOCKED
        if nv.attrs & TPMA_NV.READ_STCLEAR:
            nv.attrs &= ~TPMA_NV.READLOCKED
        if nv.attrs & TPMA_NV.CLEAR_STCLEAR:
            nv.attrs &= ~TPMA_NV.WRITTEN
        if nv.attrs & TPMA_NV.GLOBALLOCK and not nv.attrs & TPMA_NV.WRITEDEFINE:
            nv.attrs &= ~TPMA_NV.WRITELOCKED


