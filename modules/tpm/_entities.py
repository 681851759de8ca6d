"""Entities behind handles: resolution and checks, Names, authValues, policies, slots, dictionary attack.

Mixed into :class:`~._engine.Tpm`; split out of ``_engine.py`` to keep each file small.  The
checks follow the reference TPM's handle unmarshalling (TPMI_* types) and its error codes (tpm.md 9).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ._constants import HT, RC, RH, SE, TPMA_NV, TPMA_OBJECT, rc_handle
from ._crypto import strip_zeros
from ._marshal import TpmError, u32
from ._nv import NvIndex
from ._objects import TpmObject
from ._sessions import Session

__all__ = ["EntityMixin", "handle_type_ok", "MAX_OBJECTS", "MAX_LOADED_SESSIONS", "MAX_ACTIVE_SESSIONS"]

#: transient object slots: tpm2-tools never flushes what it loads, so be generous (tpm.md 9)
MAX_OBJECTS = 128
MAX_LOADED_SESSIONS = 32
MAX_ACTIVE_SESSIONS = 64
_HIERARCHIES = (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM)


def handle_type_ok(kind: str, h: int) -> bool:
    """Whether ``h`` unmarshals as a handle of ``kind`` (its TPMI_* range check, no lookup).

    The reference unmarshals every handle before it looks any up, so a later handle's VALUE error
    wins over an earlier handle that is merely not loaded.  Kept in step with
    :meth:`EntityMixin._resolve`: a False here is a VALUE error there.
    """
    ht = h >> 24
    perm = EntityMixin._KINDS.get(kind)
    if perm is not None:
        return h in perm
    if kind == "parent":
        return h in _HIERARCHIES or h == RH.NULL or ht == HT.TRANSIENT or ht == HT.PERSISTENT
    if kind == "obj" or kind == "obj+":
        return kind == "obj+" and h == RH.NULL or ht == HT.TRANSIENT or ht == HT.PERSISTENT
    if kind == "entity":
        return (h == RH.NULL or ht in (HT.TRANSIENT, HT.PERSISTENT, HT.NV_INDEX) or h in _HIERARCHIES
                or h == RH.LOCKOUT or ht == HT.PCR and h < 24)
    if kind == "nvauth":
        return ht == HT.NV_INDEX or h == RH.OWNER or h == RH.PLATFORM
    if kind == "nv":
        return ht == HT.NV_INDEX
    if kind == "pcr" or kind == "pcr+":
        return kind == "pcr+" and h == RH.NULL or ht == HT.PCR and h < 24
    if kind == "policy":
        return ht == HT.POLICY_SESSION
    if kind == "hsession":
        return ht == HT.HMAC_SESSION
    if kind == "any":
        return ht in (HT.TRANSIENT, HT.HMAC_SESSION, HT.POLICY_SESSION)
    return True


class EntityMixin:
    """Handle resolution, entity properties, slots and DA state of the TPM."""

    if TYPE_CHECKING:
        clock: Callable[[], float]
        objects: dict[int, TpmObject]
        persistent: dict[int, TpmObject]
        sessions: dict[int, Session]
        nv: dict[int, NvIndex]
        auths: dict[int, bytes]
        policies: dict[int, tuple[int, bytes]]
        enabled: dict[int, bool]
        failed_tries: int
        max_tries: int
        recovery_time: int
        lockout_recovery: int
        lockout_locked_at: float | None
        da_last: float
        dirty: bool
        _next_session: int

    # -- dictionary attack ----------------------------------------------------------------------
    def _is_da(self, h: int, ent: Any) -> bool:
        if isinstance(ent, TpmObject):
            return not ent.attrs & TPMA_OBJECT.noDA
        if isinstance(ent, NvIndex):
            return not ent.attrs & TPMA_NV.NO_DA
        return h == RH.LOCKOUT

    def da_update(self) -> None:
        """Apply time-based recovery of failedTries and of the lockout auth."""
        now = self.clock()
        if self.failed_tries and self.recovery_time:
            n = int((now - self.da_last) // self.recovery_time)
            if n:
                self.failed_tries = max(0, self.failed_tries - n)
                self.da_last += n * self.recovery_time
                self.dirty = True
        if self.lockout_locked_at is not None and self.lockout_recovery and \
                now - self.lockout_locked_at >= self.lockout_recovery:
            self.lockout_locked_at = None
            self.dirty = True

    def in_lockout(self) -> bool:
        """TPMA_PERMANENT.inLockout."""
        self.da_update()
        return self.failed_tries >= self.max_tries

    def _da_check(self, h: int, da: bool) -> None:
        if not da:
            return
        self.da_update()
        if h == RH.LOCKOUT:
            if self.lockout_locked_at is not None:
                raise TpmError(RC.LOCKOUT)
        elif self.failed_tries >= self.max_tries:
            raise TpmError(RC.LOCKOUT)

    def _auth_failed(self, h: int, da: bool) -> None:
        if not da:
            return
        self.dirty = True
        if h == RH.LOCKOUT:
            self.lockout_locked_at = self.clock()
        else:
            if not self.failed_tries:
                self.da_last = self.clock()
            self.failed_tries += 1

    # -- entities ---------------------------------------------------------------------------------
    def name_of(self, h: int, ent: Any) -> bytes:
        """Name of the entity behind handle ``h`` (tpm.md 4)."""
        if isinstance(ent, TpmObject):
            return ent.name
        if isinstance(ent, NvIndex):
            return ent.name()
        return u32(h)

    def auth_of(self, h: int, ent: Any) -> bytes:
        """authValue (trailing zeros removed) of the entity behind ``h``."""
        if isinstance(ent, (TpmObject, NvIndex)):
            return strip_zeros(ent.auth)
        return strip_zeros(self.auths.get(h, b""))

    def policy_of(self, h: int, ent: Any) -> tuple[bytes, int]:
        """(authPolicy, its hash algorithm) of the entity behind ``h``."""
        if isinstance(ent, TpmObject):
            return ent.public.policy, ent.public.name_alg
        if isinstance(ent, NvIndex):
            return ent.policy, ent.name_alg
        alg, digest = self.policies.get(h, (0x0010, b""))
        return digest, alg

    def find_object(self, h: int) -> TpmObject | None:
        """A loaded transient or persistent object."""
        return self.objects.get(h) if h >> 24 == HT.TRANSIENT else self.persistent.get(h)

    def hierarchy_enabled(self, h: int) -> bool:
        """Whether hierarchy ``h`` (or NULL) is enabled."""
        if h == RH.NULL:
            return True
        if h == RH.OWNER:
            return self.enabled[RH.OWNER]
        if h == RH.ENDORSEMENT:
            return self.enabled[RH.ENDORSEMENT]
        return self.enabled[RH.PLATFORM]

    _KINDS: dict[str, tuple[int, ...]] = {
        "hier": _HIERARCHIES, "hier+": _HIERARCHIES + (RH.NULL,), "prov": (RH.OWNER, RH.PLATFORM),
        "clear": (RH.LOCKOUT, RH.PLATFORM), "lockout": (RH.LOCKOUT,), "platform": (RH.PLATFORM,),
        "hierauth": _HIERARCHIES + (RH.LOCKOUT,), "endorse": (RH.ENDORSEMENT,),
    }

    def _resolve(self, kind: str, h: int, i: int) -> Any:
        """Check handle ``h`` against ``kind`` and return its entity (ref handle unmarshal + checks)."""
        n = i + 1
        ht = h >> 24
        perm = self._KINDS.get(kind)
        if perm is not None:
            if h not in perm:
                raise TpmError(rc_handle(RC.VALUE, n))
            if h != RH.LOCKOUT and not self.hierarchy_enabled(h):
                raise TpmError(rc_handle(RC.HIERARCHY, n))
            return h
        if kind == "parent" and h in _HIERARCHIES + (RH.NULL,):
            if not self.hierarchy_enabled(h):
                raise TpmError(rc_handle(RC.HIERARCHY, n))
            return h
        if kind in ("obj", "obj+", "entity", "parent"):
            if h == RH.NULL and kind in ("obj+", "entity"):
                return None
            if ht in (HT.TRANSIENT, HT.PERSISTENT):
                o = self.find_object(h)
                if o is None:
                    raise TpmError(RC.REFERENCE_H0 + i if ht == HT.TRANSIENT else rc_handle(RC.HANDLE, n))
                if not self.hierarchy_enabled(o.hierarchy):
                    raise TpmError(rc_handle(RC.HIERARCHY, n))
                return o
            if kind != "entity":
                raise TpmError(rc_handle(RC.VALUE, n))
        if kind in ("entity", "nvauth", "nv"):
            if ht == HT.NV_INDEX:
                nv = self.nv.get(h)
                # platform-created indices vanish while phEnableNV is clear (TPMA_STARTUP_CLEAR)
                if nv is None or nv.attrs & TPMA_NV.PLATFORMCREATE and not self.enabled[RH.PLATFORM_NV]:
                    raise TpmError(rc_handle(RC.HANDLE, n))
                return nv
            if kind == "nv":
                raise TpmError(rc_handle(RC.VALUE, n))
            if h in ((RH.OWNER, RH.PLATFORM) if kind == "nvauth" else _HIERARCHIES + (RH.LOCKOUT,)):
                if not self.hierarchy_enabled(h):
                    raise TpmError(rc_handle(RC.HIERARCHY, n))
                return h
            if kind == "entity" and ht == HT.PCR and h < 24:
                return h
            raise TpmError(rc_handle(RC.VALUE, n))
        if kind in ("pcr", "pcr+"):
            if kind == "pcr+" and h == RH.NULL:
                return None
            if ht == HT.PCR and h < 24:
                return h
            raise TpmError(rc_handle(RC.VALUE, n))
        if kind == "policy":
            if ht != HT.POLICY_SESSION:
                raise TpmError(rc_handle(RC.VALUE, n))
            s = self.sessions.get(h)
            if s is None or s.state != "loaded":
                raise TpmError(RC.REFERENCE_H0 + i)
            return s
        if kind == "hsession":
            if ht != HT.HMAC_SESSION:
                raise TpmError(rc_handle(RC.VALUE, n))
            s = self.sessions.get(h)
            if s is None or s.state != "loaded":
                raise TpmError(RC.REFERENCE_H0 + i)
            return s
        if kind == "any":  # ContextSave: object, sequence or session
            if ht == HT.TRANSIENT:
                o = self.objects.get(h)
                if o is None:
                    raise TpmError(RC.REFERENCE_H0 + i)
                return o
            if ht in (HT.HMAC_SESSION, HT.POLICY_SESSION):
                s = self.sessions.get(h)
                if s is None or s.state != "loaded":
                    raise TpmError(RC.REFERENCE_H0 + i)
                return s
            raise TpmError(rc_handle(RC.VALUE, n))
        raise TpmError(RC.FAILURE)

    # -- slots ------------------------------------------------------------------------------------
    def add_object(self, obj: TpmObject) -> int:
        """Load ``obj`` into a free transient slot.

        :raises TpmError: OBJECT_MEMORY when all slots are used.
        """
        if len(self.objects) >= MAX_OBJECTS:
            raise TpmError(RC.OBJECT_MEMORY)
        h = 0x80000000
        while h in self.objects:
            h += 1
        self.objects[h] = obj
        return h

    def add_session(self, type_: int, make: Callable[[int], Session]) -> Session:
        """Allocate a session handle and build the session.

        :raises TpmError: SESSION_MEMORY / SESSION_HANDLES when out of slots.
        """
        if len(self.sessions) >= MAX_ACTIVE_SESSIONS:
            raise TpmError(RC.SESSION_HANDLES)
        if sum(1 for s in self.sessions.values() if s.state == "loaded") >= MAX_LOADED_SESSIONS:
            raise TpmError(RC.SESSION_MEMORY)
        base = 0x02000000 if type_ == SE.HMAC else 0x03000000
        used = {h & 0xFFFFFF for h in self.sessions}
        idx = self._next_session
        while idx in used:
            idx = (idx + 1) % 0xFFFFFF
        self._next_session = (idx + 1) % 0xFFFFFF
        s = make(base | idx)
        self.sessions[s.handle] = s
        return s

