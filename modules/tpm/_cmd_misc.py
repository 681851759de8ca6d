"""Startup/Shutdown, self test, random numbers, clock, TestParms and GetCapability (tpm.md 10)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._constants import ALG, CAP, CC, HT, RC, RH, SU, TPMA_NV, rc_param
from ._crypto import CURVES
from ._dispatch import COMMANDS, USER, Ctx, command, p_u16, p_u32, p_u64, p_yesno
from ._marshal import Reader, TpmError, tpm2b, u8, u16, u32, u64
from ._nv import NV_BUFFER_MAX, NV_INDEX_MAX, startup_clear
from ._pcr import NUM_PCRS, PCR_BANKS
from ._structs import read_parms

if TYPE_CHECKING:
    from ._engine import Tpm

__all__ = ["ALGORITHMS", "fixed_properties", "variable_properties", "clock_info"]

#: (alg, TPMA_ALGORITHM) as the reference TPM reports them (tpm.md 5), sorted by alg.
ALGORITHMS: list[tuple[int, int]] = sorted([
    (ALG.RSA, 0x009), (ALG.SHA1, 0x004), (ALG.HMAC, 0x104), (ALG.AES, 0x002), (ALG.MGF1, 0x404),
    (ALG.KEYEDHASH, 0x30C), (ALG.XOR, 0x006), (ALG.SHA256, 0x004), (ALG.SHA384, 0x004), (ALG.SHA512, 0x004),
    (ALG.NULL, 0x000), (ALG.RSASSA, 0x101), (ALG.RSAES, 0x201), (ALG.RSAPSS, 0x101), (ALG.OAEP, 0x201),
    (ALG.ECDSA, 0x101), (ALG.ECDH, 0x401), (ALG.KDF1_SP800_56A, 0x404), (ALG.KDF1_SP800_108, 0x404),
    (ALG.ECC, 0x009), (ALG.SYMCIPHER, 0x008), (ALG.CTR, 0x202), (ALG.OFB, 0x202), (ALG.CBC, 0x202),
    (ALG.CFB, 0x202), (ALG.ECB, 0x202),
])

MANUFACTURER = int.from_bytes(b"PYSV", "big")
VENDOR = (int.from_bytes(b"pysv", "big"), int.from_bytes(b"sm  ", "big"), 0, 0)
FIRMWARE = (0x20261126, 0x00000001)


def fixed_properties(tpm: "Tpm") -> list[tuple[int, int]]:
    """TPM_PT 0x100.. values (tpm.md 10)."""
    from ._engine import MAX_ACTIVE_SESSIONS, MAX_COMMAND_SIZE, MAX_LOADED_SESSIONS, MAX_OBJECTS, MAX_RESPONSE_SIZE
    return _fixed(MAX_OBJECTS, MAX_ACTIVE_SESSIONS, MAX_LOADED_SESSIONS, MAX_COMMAND_SIZE, MAX_RESPONSE_SIZE)


def _fixed(objs: int, active: int, loaded: int, cmd: int, rsp: int) -> list[tuple[int, int]]:
    return [
        (0x100, 0x322E3000), (0x101, 0), (0x102, 162), (0x103, 1), (0x104, 2020), (0x105, MANUFACTURER),
        (0x106, VENDOR[0]), (0x107, VENDOR[1]), (0x108, VENDOR[2]), (0x109, VENDOR[3]), (0x10A, 1),
        (0x10B, FIRMWARE[0]), (0x10C, FIRMWARE[1]), (0x10D, 1024), (0x10E, objs), (0x10F, 64),
        (0x110, loaded), (0x111, active), (0x112, NUM_PCRS), (0x113, 3), (0x114, 0xFFFF),
        (0x116, 0), (0x117, NV_INDEX_MAX), (0x118, 6), (0x119, 4096), (0x11A, ALG.SHA384), (0x11B, ALG.AES),
        (0x11C, 256), (0x11D, 255), (0x11E, cmd), (0x11F, rsp), (0x120, 64),
        (0x121, 2048), (0x122, 1024), (0x123, 1), (0x124, 0), (0x125, 162), (0x126, 1), (0x127, 2020),
        (0x128, 128), (0x129, len(COMMANDS)), (0x12A, len(COMMANDS)), (0x12B, 0), (0x12C, NV_BUFFER_MAX),
        (0x12D, 0), (0x12E, 1024),
    ]


def variable_properties(tpm: "Tpm") -> list[tuple[int, int]]:
    """TPM_PT 0x200.. values (tpm.md 10)."""
    from ._engine import MAX_ACTIVE_SESSIONS, MAX_LOADED_SESSIONS, MAX_OBJECTS
    perm = ((bool(tpm.auths[RH.OWNER]) * 0x1) | (bool(tpm.auths[RH.ENDORSEMENT]) * 0x2)
            | (bool(tpm.auths[RH.LOCKOUT]) * 0x4) | (tpm.disable_clear * 0x100) | (tpm.in_lockout() * 0x200)
            | 0x400)
    st = ((tpm.enabled[RH.PLATFORM] * 0x1) | (tpm.enabled[RH.OWNER] * 0x2) | (tpm.enabled[RH.ENDORSEMENT] * 0x4)
          | (tpm.enabled[RH.PLATFORM_NV] * 0x8) | (tpm.orderly * 0x80000000))
    loaded_sessions = sum(1 for s in tpm.sessions.values() if s.state == "loaded")
    counters = sum(1 for n in tpm.nv.values() if (n.attrs & TPMA_NV.TYPE_MASK) >> 4 == 1)
    return _var(tpm, perm, st, counters, loaded_sessions, MAX_OBJECTS, MAX_ACTIVE_SESSIONS, MAX_LOADED_SESSIONS)


def _var(tpm: "Tpm", perm: int, st: int, counters: int, loaded: int, objs: int, active: int,
         max_loaded: int) -> list[tuple[int, int]]:
    return [
        (0x200, perm), (0x201, st), (0x202, len(tpm.nv)), (0x203, len(tpm.objects) + loaded),
        (0x204, objs - len(tpm.objects)), (0x205, len(tpm.sessions)),
        (0x206, active - len(tpm.sessions)), (0x207, objs - len(tpm.objects)),
        (0x208, len(tpm.persistent)), (0x209, 64 - len(tpm.persistent)), (0x20A, counters), (0x20B, 64),
        (0x20C, 0), (0x20D, len(CURVES)), (0x20E, tpm.failed_tries), (0x20F, tpm.max_tries),
        (0x210, tpm.recovery_time), (0x211, tpm.lockout_recovery), (0x212, 0), (0x213, 0), (0x214, 0),
    ]


def clock_info(tpm: "Tpm") -> bytes:
    """TPMS_CLOCK_INFO = u64 clock | u32 resetCount | u32 restartCount | u8 safe."""
    return u64(tpm.now_ms()) + u32(tpm.reset_count) + u32(tpm.restart_count) + b"\x01"


def _p_su(r: Reader) -> int:
    """TPM_SU: CLEAR or STATE, else VALUE while unmarshalling (before the leftover-bytes check)."""
    su = r.u16()
    if su not in (SU.CLEAR, SU.STATE):
        raise TpmError(RC.VALUE)
    return su


@command(CC.Startup, params=(_p_su,), no_sessions=True)
def _startup(tpm: "Tpm", ctx: Ctx, su: int) -> bytes:
    from ._state import resume_volatile
    if su == SU.CLEAR and tpm.saved_state is None:
        tpm.audit_digest = b""  # TPM Reset clears the command audit digest
    if su == SU.STATE:
        if tpm.saved_state is None:
            raise TpmError(rc_param(RC.VALUE, 1))
        resume_volatile(tpm, tpm.saved_state)
        tpm.restart_count += 1
    elif tpm.saved_state is not None:
        # TPM Restart (Startup(CLEAR) after Shutdown(STATE)): PCRs reset, seeds and resetCount kept
        tpm.pcrs.reset_all()
        tpm.restart_count += 1
        tpm.sessions.clear()
        tpm.enabled[RH.OWNER] = tpm.enabled[RH.ENDORSEMENT] = True
        tpm.enabled[RH.PLATFORM] = tpm.enabled[RH.PLATFORM_NV] = True
    else:
        # TPM Reset
        tpm.pcrs.reset_all()
        tpm.reset_count += 1
        tpm.restart_count = 0
        tpm.seeds[RH.NULL] = tpm.rng(64)
        tpm.proofs[RH.NULL] = tpm.rng(64)
        tpm.enabled[RH.OWNER] = tpm.enabled[RH.ENDORSEMENT] = True
        tpm.enabled[RH.PLATFORM] = tpm.enabled[RH.PLATFORM_NV] = True
        tpm.auths[RH.PLATFORM] = b""
        tpm.policies.pop(RH.PLATFORM, None)
        tpm.sessions.clear()
        if tpm.lockout_recovery == 0:
            tpm.lockout_locked_at = None
    startup_clear(tpm)
    tpm.saved_state = None
    tpm.orderly = False
    tpm.started = True
    tpm.dirty = True
    return b""


@command(CC.Shutdown, params=(_p_su,))
def _shutdown(tpm: "Tpm", ctx: Ctx, su: int) -> bytes:
    from ._state import save_volatile
    tpm.saved_state = save_volatile(tpm) if su == SU.STATE else None
    tpm.orderly = True
    tpm.clock_ms = tpm.now_ms()
    tpm.dirty = True
    return b""


@command(CC.SelfTest, params=(p_yesno,))
def _self_test(tpm: "Tpm", ctx: Ctx, full: bool) -> bytes:
    return b""


def _p_alg_list(r: Reader) -> list[int]:
    n = r.u32()
    if n > 128:
        raise TpmError(RC.SIZE)
    return [r.u16() for _ in range(n)]


@command(CC.IncrementalSelfTest, params=(_p_alg_list,))
def _incremental_self_test(tpm: "Tpm", ctx: Ctx, algs: list[int]) -> bytes:
    return u32(0)


@command(CC.GetTestResult, encrypt=True)
def _get_test_result(tpm: "Tpm", ctx: Ctx) -> bytes:
    return tpm2b(b"") + u32(RC.SUCCESS)


@command(CC.GetRandom, encrypt=True, params=(p_u16,))
def _get_random(tpm: "Tpm", ctx: Ctx, n: int) -> bytes:
    return tpm2b(tpm.rng(min(n, 64)))


@command(CC.StirRandom, decrypt=True, params=(lambda r: r.tpm2b(128),))
def _stir_random(tpm: "Tpm", ctx: Ctx, data: bytes) -> bytes:
    return b""


@command(CC.ReadClock)
def _read_clock(tpm: "Tpm", ctx: Ctx) -> bytes:
    return u64(tpm.now_ms()) + clock_info(tpm)


@command(CC.ClockSet, ("prov",), (USER,), params=(p_u64,))
def _clock_set(tpm: "Tpm", ctx: Ctx, new: int) -> bytes:
    now = tpm.now_ms()
    if new < now:
        raise TpmError(rc_param(RC.VALUE, 1))
    tpm._clock_base += new - now
    tpm.clock_ms = new
    tpm.dirty = True
    return b""


def _p_public_parms(r: Reader) -> None:
    t = r.u16()
    read_parms(r, t)


@command(CC.TestParms, params=(_p_public_parms,))
def _test_parms(tpm: "Tpm", ctx: Ctx, _parms: None) -> bytes:
    return b""


def _handles(tpm: "Tpm", ht: int) -> list[int]:
    if ht == HT.PCR:
        return list(range(NUM_PCRS))
    if ht == HT.NV_INDEX:
        return sorted(h for h, nv in tpm.nv.items()
                      if tpm.enabled[RH.PLATFORM_NV] or not nv.attrs & TPMA_NV.PLATFORMCREATE)
    if ht == HT.HMAC_SESSION:  # loaded sessions of both kinds
        return sorted(h for h, s in tpm.sessions.items() if s.state == "loaded")
    if ht == HT.POLICY_SESSION:  # saved sessions
        return sorted(h for h, s in tpm.sessions.items() if s.state == "saved")
    if ht == HT.PERMANENT:
        return [RH.OWNER, RH.NULL, RH.PW, RH.LOCKOUT, RH.ENDORSEMENT, RH.PLATFORM, RH.PLATFORM_NV]
    if ht == HT.TRANSIENT:
        return sorted(tpm.objects)
    if ht == HT.PERSISTENT:
        return sorted(tpm.persistent)
    return []


def _cap_list(items: list, start_key, count: int, limit: int, enc) -> tuple[bool, bytes]:
    sel = [x for x in items if start_key(x)]
    n = min(count, limit)
    more = len(sel) > n
    sel = sel[:n]
    return more, u32(len(sel)) + b"".join(enc(x) for x in sel)


@command(CC.GetCapability, params=(p_u32, p_u32, p_u32))
def _get_capability(tpm: "Tpm", ctx: Ctx, cap: int, prop: int, count: int) -> bytes:
    if cap == CAP.ALGS:
        more, body = _cap_list(ALGORITHMS, lambda a: a[0] >= prop, count, 169,
                               lambda a: u16(a[0]) + u32(a[1]))
    elif cap == CAP.HANDLES:
        ht = prop >> 24
        if ht not in (HT.PCR, HT.NV_INDEX, HT.HMAC_SESSION, HT.POLICY_SESSION, HT.PERMANENT, HT.TRANSIENT,
                      HT.PERSISTENT):
            raise TpmError(rc_param(RC.VALUE, 2))
        if ht in (HT.HMAC_SESSION, HT.POLICY_SESSION):  # both list sessions of either type, by index
            handles = sorted(_handles(tpm, ht), key=lambda h: h & 0xFFFFFF)
            more, body = _cap_list(handles, lambda h: h & 0xFFFFFF >= prop & 0xFFFFFF, count, 254, u32)
        else:
            more, body = _cap_list(_handles(tpm, ht), lambda h: h >= prop, count, 254, u32)
    elif cap == CAP.COMMANDS:
        specs = sorted(COMMANDS.values(), key=lambda s: s.cc)
        more, body = _cap_list(specs, lambda s: s.cc >= (prop & 0xFFFF), count, 254, lambda s: u32(s.tpma_cc()))
    elif cap == CAP.AUDIT_COMMANDS:
        more, body = _cap_list(sorted(tpm.audit_commands), lambda c: c >= prop, count, 254, u32)
    elif cap == CAP.PP_COMMANDS:
        more, body = False, u32(0)
    elif cap == CAP.PCRS:
        more, body = False, u32(len(PCR_BANKS)) + b"".join(
            u16(a) + b"\x03" + (b"\xff\xff\xff" if a in tpm.pcrs.allocated else b"\x00\x00\x00") for a in PCR_BANKS)
    elif cap == CAP.TPM_PROPERTIES:
        group = prop & ~0xFF
        props = fixed_properties(tpm) if group == 0x100 else variable_properties(tpm) if group == 0x200 else []
        more, body = _cap_list(props, lambda p: p[0] >= prop, count, 127, lambda p: u32(p[0]) + u32(p[1]))
    elif cap == CAP.PCR_PROPERTIES:
        # TPM_PT_PCR: SAVE 0x00, then EXTEND_Ln / RESET_Ln pairs for localities 0..4 (0x01..0x0A);
        # any locality may extend every PCR; only 16 and 23 reset; Shutdown(STATE) saves all but those
        resettable = (1 << 16) | (1 << 23)
        props = [(0x00, 0xFFFFFF & ~resettable)] + [(0x01 + 2 * n + k, resettable if k else 0xFFFFFF)
                                                     for n in range(5) for k in (0, 1)]
        more, body = _cap_list(props, lambda p: p[0] >= prop, count, 127,
                               lambda p: u32(p[0]) + b"\x03" + p[1].to_bytes(3, "little"))
    elif cap == CAP.ECC_CURVES:
        more, body = _cap_list(sorted(CURVES), lambda c: c >= prop, count, 508, u16)
    else:
        raise TpmError(rc_param(RC.VALUE, 1))
    return u8(more) + u32(cap) + body

