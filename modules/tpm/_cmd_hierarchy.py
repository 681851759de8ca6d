"""Hierarchy and dictionary-attack commands: HierarchyChangeAuth, SetPrimaryPolicy, Clear,
ClearControl, HierarchyControl, DictionaryAttackLockReset, DictionaryAttackParameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._constants import ALG, CC, RC, RH, TPMA_NV, rc_param
from ._crypto import HASHES, strip_zeros
from ._dispatch import USER, Ctx, command, p_digest, p_u32, p_yesno
from ._marshal import Reader, TpmError
from ._nv import delete_index
from ._structs import read_hash_alg

if TYPE_CHECKING:
    from ._engine import Tpm

__all__: list[str] = []

#: CONTEXT_INTEGRITY_HASH (SHA-384) size: the largest hierarchy authValue (ref HierarchyChangeAuth).
MAX_HIERARCHY_AUTH = 48


@command(CC.HierarchyChangeAuth, ("hierauth",), (USER,), decrypt=True, params=(p_digest,))
def _hierarchy_change_auth(tpm: "Tpm", ctx: Ctx, new_auth: bytes) -> bytes:
    new = strip_zeros(new_auth)
    if len(new) > MAX_HIERARCHY_AUTH:
        raise TpmError(rc_param(RC.SIZE, 1))
    tpm.auths[ctx.handles[0]] = new
    ctx.resp_auth = new
    tpm.dirty = True
    return b""


@command(CC.SetPrimaryPolicy, ("hierauth",), (USER,), decrypt=True,
         params=(p_digest, lambda r: read_hash_alg(r, allow_null=True)))
def _set_primary_policy(tpm: "Tpm", ctx: Ctx, policy: bytes, alg: int) -> bytes:
    if alg == ALG.NULL:
        if policy:
            raise TpmError(rc_param(RC.SIZE, 1))
        tpm.policies.pop(ctx.handles[0], None)
    else:
        if len(policy) != HASHES[alg][1]:
            raise TpmError(rc_param(RC.SIZE, 1))
        tpm.policies[ctx.handles[0]] = (alg, policy)
    tpm.dirty = True
    return b""


@command(CC.Clear, ("clear",), (USER,))
def _clear(tpm: "Tpm", ctx: Ctx) -> bytes:
    if tpm.disable_clear:
        raise TpmError(RC.DISABLED)
    tpm.seeds[RH.OWNER] = tpm.rng(64)
    tpm.proofs[RH.OWNER] = tpm.rng(64)
    tpm.proofs[RH.ENDORSEMENT] = tpm.rng(64)
    for h in (RH.OWNER, RH.ENDORSEMENT, RH.LOCKOUT):
        tpm.auths[h] = b""
        tpm.policies.pop(h, None)
    tpm.enabled[RH.OWNER] = tpm.enabled[RH.ENDORSEMENT] = True
    for h, o in list(tpm.objects.items()):
        if o.hierarchy in (RH.OWNER, RH.ENDORSEMENT):
            del tpm.objects[h]
    for h, o in list(tpm.persistent.items()):
        if o.hierarchy in (RH.OWNER, RH.ENDORSEMENT):
            del tpm.persistent[h]
    for nv in list(tpm.nv.values()):
        if not nv.attrs & TPMA_NV.PLATFORMCREATE:
            delete_index(tpm, nv)
    # DA parameters go back to their manufacturing values (ref DAPreInstall_Init, restored by Clear)
    tpm.failed_tries, tpm.max_tries, tpm.recovery_time, tpm.lockout_recovery = 0, 3, 1000, 1000
    tpm.lockout_locked_at = None
    tpm.dirty = True
    return b""


@command(CC.ClearControl, ("clear",), (USER,), params=(p_yesno,))
def _clear_control(tpm: "Tpm", ctx: Ctx, disable: bool) -> bytes:
    if ctx.handles[0] == RH.LOCKOUT and not disable:
        raise TpmError(RC.AUTH_FAIL)
    tpm.disable_clear = disable
    tpm.dirty = True
    return b""


def _p_enables(r: Reader) -> int:
    h = r.u32()
    if h not in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.PLATFORM_NV):
        raise TpmError(RC.VALUE)
    return h


@command(CC.HierarchyControl, ("hier",), (USER,), params=(_p_enables, p_yesno), extensive=True)
def _hierarchy_control(tpm: "Tpm", ctx: Ctx, enable: int, state: bool) -> bytes:
    auth = ctx.handles[0]
    if auth != RH.PLATFORM:
        if state:
            raise TpmError(RC.AUTH_TYPE)
        if enable != auth:
            raise TpmError(RC.AUTH_TYPE)
    tpm.enabled[enable] = state
    if not state and enable in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM):
        for h, o in list(tpm.objects.items()):
            if o.hierarchy == enable:
                del tpm.objects[h]
    tpm.dirty = True
    return b""


@command(CC.DictionaryAttackLockReset, ("lockout",), (USER,))
def _da_lock_reset(tpm: "Tpm", ctx: Ctx) -> bytes:
    tpm.failed_tries = 0
    tpm.dirty = True
    return b""


@command(CC.DictionaryAttackParameters, ("lockout",), (USER,), params=(p_u32, p_u32, p_u32))
def _da_parameters(tpm: "Tpm", ctx: Ctx, max_tries: int, recovery: int, lockout_recovery: int) -> bytes:
    tpm.max_tries, tpm.recovery_time, tpm.lockout_recovery = max_tries, recovery, lockout_recovery
    tpm.failed_tries = min(tpm.failed_tries, max_tries)
    tpm.da_last = tpm.clock()
    tpm.dirty = True
    return b""




def _change_seed(tpm: "Tpm", hier: int) -> None:
    """ChangeEPS/ChangePPS: new seed and proof; the hierarchy's objects, auth and policy are gone."""
    tpm.seeds[hier] = tpm.rng(64)
    tpm.proofs[hier] = tpm.rng(64)
    tpm.policies.pop(hier, None)
    if hier == RH.ENDORSEMENT:
        tpm.auths[hier] = b""
    for table in (tpm.objects, tpm.persistent):
        for h, o in list(table.items()):
            if o.hierarchy == hier:
                del table[h]
    tpm.dirty = True


@command(CC.ChangeEPS, ("platform",), (USER,), extensive=True)
def _change_eps(tpm: "Tpm", ctx: Ctx) -> bytes:
    _change_seed(tpm, RH.ENDORSEMENT)
    return b""


@command(CC.ChangePPS, ("platform",), (USER,), extensive=True)
def _change_pps(tpm: "Tpm", ctx: Ctx) -> bytes:
    _change_seed(tpm, RH.PLATFORM)
    return b""
