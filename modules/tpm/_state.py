"""Whole-TPM state to bytes and back (versioned), and the Shutdown(STATE) volatile snapshot.

Layout (all big-endian): ``b"PYTPMST\\0" | u16 version | u32 body length | body | SHA-256(body)``.
The trailing digest catches truncation and accidental corruption; confidentiality and
rollback protection are the storage layer's job (the persistence module seals records).
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
from typing import TYPE_CHECKING

from ._constants import RC, RH
from ._marshal import Reader, TpmError, tpm2b, u8, u16, u32, u64
from ._nv import NvIndex
from ._objects import marshal_object, unmarshal_object
from ._sessions import Session

if TYPE_CHECKING:
    from ._engine import Tpm

__all__ = ["save_state", "load_state", "save_volatile", "resume_volatile", "STATE_MAGIC", "STATE_VERSION",
           "StateError"]

STATE_MAGIC = b"PYTPMST\x00"
STATE_VERSION = 1
_HIERS = (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.NULL)
_AUTHS = (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.LOCKOUT)


class StateError(TpmError):
    """Saved TPM state is malformed, corrupt or of an unknown version; the caller must not use it."""

    def __init__(self) -> None:
        super().__init__(RC.FAILURE)


def save_volatile(tpm: "Tpm") -> bytes:
    """PCR values and loaded sessions kept by Shutdown(STATE) for Startup(STATE)."""
    from ._pcr import PCR_BANKS
    allocated = sum(1 << i for i, a in enumerate(PCR_BANKS) if a in tpm.pcrs.allocated)
    sess = [u8(s.state == "saved") + tpm2b(s.marshal()) for s in tpm.sessions.values()]
    return (u8(allocated) + tpm2b(tpm.pcrs.marshal()) + u32(tpm.pcrs.update_counter) + u16(len(sess))
            + b"".join(sess))


def resume_volatile(tpm: "Tpm", data: bytes, keep_resettable: bool = False) -> None:
    """Inverse of :func:`save_volatile` (TPM Resume)."""
    from ._pcr import NOT_STATE_SAVED, NUM_PCRS, PCR_BANKS, initial_value
    from ._crypto import HASHES
    r = Reader(data)
    allocated = r.u8()
    banks = Reader(r.tpm2b())
    tpm.pcrs.allocated = tuple(a for i, a in enumerate(PCR_BANKS) if allocated >> i & 1)
    for _ in tpm.pcrs.allocated:
        alg = banks.u16()
        size = HASHES[alg][1]
        vals = [banks.raw(size) for _ in range(NUM_PCRS)]
        if not keep_resettable:
            for i in NOT_STATE_SAVED:
                vals[i] = initial_value(i, size)
        tpm.pcrs.banks[alg] = vals
    tpm.pcrs.update_counter = r.u32()
    tpm.sessions.clear()
    for _ in range(r.u16()):
        state = "saved" if r.u8() else "loaded"
        s = Session.unmarshal(r.tpm2b())
        s.state = state
        tpm.sessions[s.handle] = s


def save_state(tpm: "Tpm", include_volatile: bool = False) -> bytes:
    """Everything that survives power loss, plus the Shutdown(STATE) snapshot if any.

    :param include_volatile: also PCRs, loaded objects, sessions and the started flag (migration,
        crash checkpoints): restoring such a blob resumes the TPM exactly where it was.
    """
    parts = [b"".join(tpm2b(tpm.seeds[h]) + tpm2b(tpm.proofs[h]) for h in _HIERS), tpm2b(tpm.context_key),
             b"".join(tpm2b(tpm.auths[h]) for h in _AUTHS),
             u16(len(tpm.policies)) + b"".join(u32(h) + u16(a) + tpm2b(d) for h, (a, d) in tpm.policies.items()),
             u8(tpm.enabled[RH.OWNER] | tpm.enabled[RH.ENDORSEMENT] << 1 | tpm.enabled[RH.PLATFORM] << 2
                | tpm.enabled[RH.PLATFORM_NV] << 3 | tpm.disable_clear << 4 | tpm.orderly << 5
                | (tpm.lockout_locked_at is not None) << 6),
             u32(tpm.failed_tries) + u32(tpm.max_tries) + u32(tpm.recovery_time) + u32(tpm.lockout_recovery),
             u64(tpm.now_ms()) + u32(tpm.reset_count) + u32(tpm.restart_count),
             u16(len(tpm.nv)) + b"".join(tpm2b(n.marshal()) for n in tpm.nv.values()),
             u16(len(tpm.persistent)) + b"".join(u32(h) + tpm2b(marshal_object(o)) for h, o in tpm.persistent.items()),
             tpm2b(tpm.saved_state or b"") + u8(tpm.saved_state is not None),
             u8(sum(1 << i for i, a in enumerate(_banks()) if a in (tpm.pcrs.pending or tpm.pcrs.allocated))),
             u16(tpm.audit_alg) + u64(tpm.audit_counter) + u16(len(tpm.audit_commands))
             + b"".join(u32(c) for c in sorted(tpm.audit_commands))]
    if tpm.dirty:  # a new generation only when persistent state changed since the last save, so
        tpm.generation += 1  # saving an unchanged TPM twice (or after a restore) gives the same bytes
    parts.append(u64(tpm.generation) + u64(tpm.max_nv_counter))
    if include_volatile:
        parts.append(u8(1) + u8(tpm.started) + tpm2b(save_volatile(tpm)) + u64(tpm.context_seq)
                     + u16(len(tpm.objects)) + b"".join(u32(h) + tpm2b(marshal_object(o)) for h, o in tpm.objects.items()))
    else:
        parts.append(u8(0))
    body = b"".join(parts)
    return STATE_MAGIC + u16(STATE_VERSION) + u32(len(body)) + body + hashlib.sha256(body).digest()


def _banks() -> tuple[int, ...]:
    from ._pcr import PCR_BANKS
    return PCR_BANKS


def load_state(tpm: "Tpm", blob: bytes) -> None:
    """Replace ``tpm``'s non-volatile state with ``blob`` (from :func:`save_state`).

    :raises StateError: bad magic, version, length or digest; the TPM is left manufactured-empty.
    """
    tpm.manufacture()
    if len(blob) < 14 + 32 or blob[:8] != STATE_MAGIC:
        raise StateError()
    r = Reader(blob, 8)
    if r.u16() != STATE_VERSION:
        raise StateError()
    n = r.u32()
    if 14 + n + 32 != len(blob):
        raise StateError()
    body = blob[14:14 + n]
    if not _hmac.compare_digest(hashlib.sha256(body).digest(), blob[14 + n:]):
        raise StateError()
    try:
        _load_body(tpm, Reader(body))
    except TpmError:
        tpm.manufacture()
        raise StateError() from None
    tpm.dirty = False  # exactly what was saved: nothing to write back


def _load_body(tpm: "Tpm", r: Reader) -> None:
    from ._pcr import Pcrs
    for h in _HIERS:
        tpm.seeds[h] = r.tpm2b()
        tpm.proofs[h] = r.tpm2b()
    tpm.context_key = r.tpm2b()
    for h in _AUTHS:
        tpm.auths[h] = r.tpm2b()
    tpm.policies = {}
    for _ in range(r.u16()):
        h, a = r.u32(), r.u16()
        tpm.policies[h] = (a, r.tpm2b())
    f = r.u8()
    tpm.enabled = {RH.OWNER: bool(f & 1), RH.ENDORSEMENT: bool(f & 2), RH.PLATFORM: bool(f & 4),
                   RH.PLATFORM_NV: bool(f & 8)}
    tpm.disable_clear, tpm.orderly = bool(f & 16), bool(f & 32)
    tpm.failed_tries, tpm.max_tries, tpm.recovery_time, tpm.lockout_recovery = r.u32(), r.u32(), r.u32(), r.u32()
    tpm.lockout_locked_at = tpm.clock() if f & 64 else None
    tpm.da_last = tpm.clock()
    tpm.clock_ms, tpm.reset_count, tpm.restart_count = r.u64(), r.u32(), r.u32()
    tpm.nv = {}
    for _ in range(r.u16()):
        nv = NvIndex.unmarshal(Reader(r.tpm2b()))
        tpm.nv[nv.handle] = nv
    tpm.persistent = {}
    for _ in range(r.u16()):
        h = r.u32()
        o = unmarshal_object(Reader(r.tpm2b()))
        o.evict_handle = h
        tpm.persistent[h] = o
    saved = r.tpm2b()
    tpm.saved_state = saved if r.u8() else None
    banks = r.u8()
    tpm.pcrs = Pcrs(tuple(a for i, a in enumerate(_banks()) if banks >> i & 1))
    tpm.audit_alg, tpm.audit_counter = r.u16(), r.u64()
    tpm.audit_commands = {r.u32() for _ in range(r.u16())}
    tpm.generation, tpm.max_nv_counter = r.u64(), r.u64()
    if r.u8():
        started = bool(r.u8())
        volatile = r.tpm2b()
        seq = r.u64()
        objects = {}
        for _ in range(r.u16()):
            h = r.u32()
            objects[h] = unmarshal_object(Reader(r.tpm2b()))
        r.done()
        tpm.power_on()
        resume_volatile(tpm, volatile, keep_resettable=True)
        for sess in tpm.sessions.values():
            sess.state = "saved" if sess.seq and sess.state == "saved" else sess.state
        tpm.context_seq = seq
        tpm.objects = objects
        tpm.started = started
    r.done()
