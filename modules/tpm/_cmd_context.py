"""ContextSave, ContextLoad and FlushContext (tpm.md 6: TPMS_CONTEXT).

Context blob: ``HMAC-SHA256(integrityKey, seq || handle || iv || enc) (32) | iv (16) | AES-256-CFB(encKey, iv,
u8 kind || state)`` with both keys from KDFa(SHA-256, proof(hierarchy) || contextKey, "CONTEXT" / "INTEGRITY",
u64 sequence).  Using the hierarchy proof means a NULL-hierarchy context dies at TPM Reset, as in the reference.
"""

from __future__ import annotations

import hmac as _hmac
from typing import TYPE_CHECKING

from ._constants import ALG, CC, HT, RC, RH, TPMA_OBJECT, rc_param
from ._crypto import aes_cfb, hmac_digest, kdfa
from ._dispatch import Ctx, command, p_u32
from ._marshal import Reader, TpmError, tpm2b, u32, u64
from ._objects import KIND_OBJECT, TpmObject, marshal_object, unmarshal_object
from ._sessions import Session

if TYPE_CHECKING:
    from ._engine import Tpm

__all__ = ["MAX_CONTEXT_BLOB"]

MAX_CONTEXT_BLOB = 2048
_KIND_OBJ, _KIND_SESSION = 0, 1


def _keys(tpm: "Tpm", hierarchy: int, seq: int) -> tuple[bytes, bytes]:
    base = tpm.proofs.get(hierarchy, tpm.proofs[RH.NULL]) + tpm.context_key
    return (kdfa(ALG.SHA256, base, b"CONTEXT", u64(seq), b"", 256),
            kdfa(ALG.SHA256, base, b"INTEGRITY", u64(seq), b"", 256))


def _seal(tpm: "Tpm", hierarchy: int, seq: int, handle: int, payload: bytes) -> bytes:
    enc_key, mac_key = _keys(tpm, hierarchy, seq)
    iv = tpm.rng(16)
    enc = aes_cfb(enc_key, iv, payload, False)
    return hmac_digest(ALG.SHA256, mac_key, u64(seq), u32(handle), iv, enc) + iv + enc


def _open(tpm: "Tpm", hierarchy: int, seq: int, handle: int, blob: bytes) -> bytes:
    if len(blob) < 49:
        raise TpmError(rc_param(RC.INTEGRITY, 1))
    enc_key, mac_key = _keys(tpm, hierarchy, seq)
    tag, iv, enc = blob[:32], blob[32:48], blob[48:]
    if not _hmac.compare_digest(tag, hmac_digest(ALG.SHA256, mac_key, u64(seq), u32(handle), iv, enc)):
        raise TpmError(rc_param(RC.INTEGRITY, 1))
    return aes_cfb(enc_key, iv, enc, True)


@command(CC.ContextSave, ("any",), no_sessions=True)
def _context_save(tpm: "Tpm", ctx: Ctx) -> bytes:
    ent = ctx.ent[0]
    tpm.context_seq += 1
    seq = tpm.context_seq
    if isinstance(ent, TpmObject):
        if ent.seq_data is None:  # deviation: the reference saves hash state; hashlib cannot export it
            raise TpmError(RC.MEMORY)
        saved = 0x80000000 if ent.kind == KIND_OBJECT else 0x80000001
        if ent.attrs & TPMA_OBJECT.stClear:
            saved = 0x80000002
        hier = ent.hierarchy
        payload = bytes((_KIND_OBJ,)) + marshal_object(ent)
    else:
        s: Session = ent
        s.seq = seq
        saved = s.handle
        hier = RH.NULL
        payload = bytes((_KIND_SESSION,)) + s.marshal()
    blob = _seal(tpm, hier, seq, saved, payload)
    if len(blob) > MAX_CONTEXT_BLOB:
        raise TpmError(RC.MEMORY)
    if not isinstance(ent, TpmObject):
        ent.transition("save")
    return u64(seq) + u32(saved) + u32(hier) + tpm2b(blob)


def _p_context(r: Reader) -> tuple[int, int, int, bytes]:
    seq, handle, hier = r.u64(), r.u32(), r.u32()
    return seq, handle, hier, r.tpm2b(MAX_CONTEXT_BLOB)


@command(CC.ContextLoad, (), rhandle=True, no_sessions=True, params=(_p_context,))
def _context_load(tpm: "Tpm", ctx: Ctx, context: tuple[int, int, int, bytes]) -> bytes:
    seq, handle, hier, blob = context
    ht = handle >> 24
    if ht in (HT.HMAC_SESSION, HT.POLICY_SESSION):
        s = tpm.sessions.get(handle)
        if s is None or s.state != "saved" or s.seq != seq:
            raise TpmError(rc_param(RC.HANDLE, 1))
        payload = _open(tpm, RH.NULL, seq, handle, blob)
        if payload[:1] != bytes((_KIND_SESSION,)):
            raise TpmError(rc_param(RC.INTEGRITY, 1))
        try:
            restored = Session.unmarshal(payload[1:])
        except TpmError:
            raise TpmError(rc_param(RC.INTEGRITY, 1)) from None
        if sum(1 for x in tpm.sessions.values() if x.state == "loaded") >= 32:
            raise TpmError(RC.SESSION_MEMORY)
        restored.state = "saved"
        restored.transition("load")
        tpm.sessions[handle] = restored
        ctx.out_handle = handle
        return b""
    if handle not in (0x80000000, 0x80000001, 0x80000002):
        raise TpmError(rc_param(RC.HANDLE, 1))
    if hier not in tpm.proofs:
        raise TpmError(rc_param(RC.HIERARCHY, 1))
    if not tpm.hierarchy_enabled(hier):
        raise TpmError(rc_param(RC.HIERARCHY, 1))
    payload = _open(tpm, hier, seq, handle, blob)
    if payload[:1] != bytes((_KIND_OBJ,)):
        raise TpmError(rc_param(RC.INTEGRITY, 1))
    try:
        r = Reader(payload, 1)
        obj = unmarshal_object(r)
        r.done()
    except TpmError:
        raise TpmError(rc_param(RC.INTEGRITY, 1)) from None
    ctx.out_handle = tpm.add_object(obj)
    if obj.kind != KIND_OBJECT:  # a sequence is named by its handle
        obj.name = obj.qn = u32(ctx.out_handle)
    return b""


@command(CC.FlushContext, (), no_sessions=True, params=(p_u32,))
def _flush_context(tpm: "Tpm", ctx: Ctx, handle: int) -> bytes:
    ht = handle >> 24
    if ht == HT.TRANSIENT:
        if tpm.objects.pop(handle, None) is None:
            raise TpmError(rc_param(RC.HANDLE, 1))
    elif ht in (HT.HMAC_SESSION, HT.POLICY_SESSION):
        s = tpm.sessions.pop(handle, None)
        if s is None:
            raise TpmError(rc_param(RC.HANDLE, 1))
        s.transition("flush")
    else:
        raise TpmError(rc_param(RC.VALUE, 1))
    return b""
