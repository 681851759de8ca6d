"""Authorization sessions: state, session-key derivation, HMACs and parameter encryption (tpm.md 7).

The lifecycle of a session (loaded -> saved -> loaded ... -> flushed) lives in
:data:`SESSION_TRANSITIONS`; the engine calls :meth:`Session.transition` for every move.
"""

from __future__ import annotations

from ._constants import ALG, RC, SE
from ._crypto import H, HASHES, aes_cfb, hmac_digest, kdfa, xor_obfuscate
from ._marshal import Reader, TpmError, tpm2b, u8, u16, u32, u64

__all__ = ["Session", "SESSION_TRANSITIONS"]

#: (state, event) -> new state.  An event not in the table raises TPM_RC_HANDLE/REFERENCE.
SESSION_TRANSITIONS: dict[tuple[str, str], str] = {
    ("loaded", "use"): "loaded",
    ("loaded", "save"): "saved",
    ("saved", "load"): "loaded",
    ("loaded", "flush"): "flushed",
    ("saved", "flush"): "flushed",
}


class Session:
    """One HMAC, policy or trial session."""

    __slots__ = ("handle", "type", "hash_alg", "nonce_tpm", "session_key", "bind", "sym", "policy",
                 "cc", "auth_value", "password", "pcr_counter", "cp_hash", "name_hash", "timeout",
                 "locality", "nv_written", "state", "seq", "audit_digest", "template_hash")

    def __init__(self, handle: int, type: int, hash_alg: int, nonce_tpm: bytes, session_key: bytes,
                 bind: tuple[bytes, bytes] | None, sym: tuple[int, int, int]) -> None:
        self.handle = handle
        self.type = type
        self.hash_alg = hash_alg
        self.nonce_tpm = nonce_tpm
        self.session_key = session_key
        #: (Name, authValue stripped) of the bind entity, or None
        self.bind = bind
        self.sym = sym
        self.state = "loaded"
        self.seq = 0
        #: session audit digest (empty until the session first audits a command)
        self.audit_digest = b""
        self.restart()

    def restart(self) -> None:
        """Reset the policy state (PolicyRestart; also after a policy session is used)."""
        self.policy = bytes(HASHES[self.hash_alg][1])
        self.cc = 0
        self.auth_value = False
        self.password = False
        self.pcr_counter: int | None = None
        self.cp_hash = b""
        self.name_hash = b""
        self.timeout: float | None = None
        self.locality = 0
        self.nv_written: bool | None = None
        #: PolicyTemplate: H(TPMT_PUBLIC) the object-creating command must use
        self.template_hash = b""

    def transition(self, event: str) -> None:
        """Apply a lifecycle event.

        :raises TpmError: HANDLE if the event is illegal in the current state.
        """
        try:
            self.state = SESSION_TRANSITIONS[(self.state, event)]
        except KeyError:
            raise TpmError(RC.HANDLE) from None

    @property
    def is_policy(self) -> bool:
        """True for policy and trial sessions."""
        return self.type != SE.HMAC

    def extend_policy(self, *parts: bytes) -> None:
        """policyDigest = H(policyDigest || parts...)."""
        self.policy = H(self.hash_alg, self.policy, *parts)

    def bound_to(self, name: bytes, auth: bytes) -> bool:
        """Whether this session is bound to the entity with ``name`` and stripped ``auth``."""
        return self.bind is not None and self.bind == (name, auth)

    # -- crypto -------------------------------------------------------------------------------
    def command_hmac(self, key: bytes, cp_hash: bytes, nonce_caller: bytes, extra: bytes, attrs: int) -> bytes:
        """HMAC(key, cpHash || nonceCaller || nonceTPM || [nonceDecrypt] || [nonceEncrypt] || attrs)."""
        return hmac_digest(self.hash_alg, key, cp_hash, nonce_caller, self.nonce_tpm, extra, u8(attrs))

    def response_hmac(self, key: bytes, rp_hash: bytes, nonce_caller: bytes, attrs: int) -> bytes:
        """HMAC(key, rpHash || nonceTPM || nonceCaller || attrs)."""
        return hmac_digest(self.hash_alg, key, rp_hash, self.nonce_tpm, nonce_caller, u8(attrs))

    def crypt(self, key: bytes, data: bytes, nonce_newer: bytes, nonce_older: bytes, decrypt: bool) -> bytes:
        """Parameter (de)obfuscation with this session's symmetric definition.

        Command direction: newer = nonceCaller, older = nonceTPM, ``decrypt`` True.
        Response direction: newer = nonceTPM, older = nonceCaller, ``decrypt`` False.
        """
        alg, bits, _mode = self.sym
        if alg == ALG.XOR:
            return xor_obfuscate(self.hash_alg, key, nonce_newer, nonce_older, data)
        km = kdfa(self.hash_alg, key, b"CFB", nonce_newer, nonce_older, bits + 128)
        return aes_cfb(km[:bits // 8], km[bits // 8:], data, decrypt)

    # -- context blob -------------------------------------------------------------------------
    def marshal(self) -> bytes:
        """State for ContextSave (inside the encrypted context blob)."""
        b = self.bind
        return b"".join((
            u32(self.handle), u8(self.type), u16(self.hash_alg), tpm2b(self.nonce_tpm), tpm2b(self.session_key),
            u8(b is not None), tpm2b(b[0] if b else b""), tpm2b(b[1] if b else b""),
            u16(self.sym[0]), u16(self.sym[1]), u16(self.sym[2]), tpm2b(self.policy), u32(self.cc),
            u8(self.auth_value | self.password << 1 | (self.nv_written is not None) << 2 | bool(self.nv_written) << 3
               | (self.pcr_counter is not None) << 4 | (self.timeout is not None) << 5),
            u32(self.pcr_counter or 0), tpm2b(self.cp_hash), tpm2b(self.name_hash),
            u64(int((self.timeout or 0) * 1000)), u8(self.locality), u64(self.seq), tpm2b(self.audit_digest),
            tpm2b(self.template_hash)))

    @classmethod
    def unmarshal(cls, data: bytes) -> "Session":
        """Inverse of :meth:`marshal`."""
        r = Reader(data)
        handle, type_, alg = r.u32(), r.u8(), r.u16()
        nonce, key = r.tpm2b(), r.tpm2b()
        has_bind, bn, ba = r.u8(), r.tpm2b(), r.tpm2b()
        sym = (r.u16(), r.u16(), r.u16())
        s = cls(handle, type_, alg, nonce, key, (bn, ba) if has_bind else None, sym)
        s.policy, s.cc = r.tpm2b(), r.u32()
        flags = r.u8()
        s.auth_value, s.password = bool(flags & 1), bool(flags & 2)
        s.nv_written = bool(flags & 8) if flags & 4 else None
        pcr = r.u32()
        s.pcr_counter = pcr if flags & 16 else None
        s.cp_hash, s.name_hash = r.tpm2b(), r.tpm2b()
        t = r.u64()
        s.timeout = t / 1000 if flags & 32 else None
        s.locality, s.seq = r.u8(), r.u64()
        s.audit_digest = r.tpm2b(64)
        s.template_hash = r.tpm2b(64)
        r.done()
        return s
