"""The command table: one :class:`CommandSpec` per TPM_CC, filled by the ``_cmd_*`` modules.

A spec says how many handles the command has, which kind each must be (so the dispatcher
resolves and checks them before the action runs, with the reference TPM's error codes), which
handles need an authorization session and in which role, whether the first command/response
parameter may be encrypted, and how to unmarshal each parameter (so errors carry the right
parameter number, tpm.md 9).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ._marshal import Reader

__all__ = ["CommandSpec", "Ctx", "COMMANDS", "command", "USER", "ADMIN", "DUP", "NOAUTH"]

NOAUTH, USER, ADMIN, DUP = 0, 1, 2, 3


class CommandSpec(NamedTuple):
    """Static description of one command (ms-tpm-20-ref CommandAttributeData.h, tpm.md 3)."""

    cc: int
    handles: tuple[str, ...]
    auth: tuple[int, ...]
    rhandle: bool
    decrypt: bool
    encrypt: bool
    params: tuple[Callable[[Reader], Any], ...]
    fn: Callable[..., bytes]
    no_sessions: bool
    nv: bool
    extensive: bool
    flushed: bool
    #: how many leading handles need an authorization session
    n_auth: int

    def tpma_cc(self) -> int:
        """TPMA_CC for GetCapability(COMMANDS) (tpm.md 3)."""
        return (self.cc | self.nv << 22 | self.extensive << 23 | self.flushed << 24
                | len(self.handles) << 25 | self.rhandle << 28)


class Ctx:
    """Per-command scratch: resolved handles, sessions, locality, the output handle."""

    __slots__ = ("cc", "handles", "ent", "locality", "sessions", "auth_kinds", "out_handle",
                 "resp_auth", "spec", "template")

    def __init__(self, spec: CommandSpec, locality: int) -> None:
        self.spec = spec
        self.cc = spec.cc
        self.handles: list[int] = []
        self.ent: list[Any] = []
        self.locality = locality
        self.sessions: list[Any] = []
        #: per authorized handle: the Session used, or None for TPM_RS_PW
        self.auth_kinds: list[Any] = []
        self.out_handle: int | None = None
        #: authValue to use for the response HMAC of handle 0 when the command changed it
        self.resp_auth: bytes | None = None
        #: (template hash, hash alg, session index) from a PolicyTemplate session authorizing this command
        self.template: tuple[bytes, int, int] | None = None


COMMANDS: dict[int, CommandSpec] = {}
#: Outside 0x11F..0x146 but TPMA_CC.nv = 1 in the reference: PCR_Extend, NV_ReadLock, EventSequenceComplete.
_NV_EXTRA = (0x182, 0x14F, 0x185)


def command(cc: int, handles: tuple[str, ...] = (), auth: tuple[int, ...] = (), *, rhandle: bool = False,
            decrypt: bool = False, encrypt: bool = False,
            params: tuple[Callable[[Reader], Any], ...] = (), no_sessions: bool = False, nv: bool = False,
            extensive: bool = False, flushed: bool = False) -> Callable[[Callable[..., bytes]], Callable[..., bytes]]:
    """Register ``fn`` as the action of command ``cc``.

    :param handles: one kind per command handle (see ``Tpm._resolve``).
    :param auth: role per handle (``USER``/``ADMIN``/``DUP``), ``NOAUTH`` or shorter for none.
    """
    def deco(fn: Callable[..., bytes]) -> Callable[..., bytes]:
        a = tuple(auth) + (NOAUTH,) * (len(handles) - len(auth))
        COMMANDS[cc] = CommandSpec(cc, handles, a, rhandle, decrypt, encrypt, params, fn, no_sessions,
                                   nv or 0x11F <= cc <= 0x146 and cc not in (0x131, 0x13E) or cc in _NV_EXTRA,
                                   extensive, flushed, sum(1 for x in a if x))
        return fn
    return deco


# parameter unmarshallers shared by the command modules
def p_u8(r: Reader) -> int:
    return r.u8()


def p_u16(r: Reader) -> int:
    return r.u16()


def p_u32(r: Reader) -> int:
    return r.u32()


def p_u64(r: Reader) -> int:
    return r.u64()


def p_i32(r: Reader) -> int:
    return r.i32()


def p_digest(r: Reader) -> bytes:
    """TPM2B_DIGEST / TPM2B_NONCE / TPM2B_AUTH (≤ 64 bytes)."""
    return r.tpm2b(64)


def p_data(r: Reader) -> bytes:
    """TPM2B_DATA (≤ 64 bytes... the reference allows sizeof(TPMT_HA) = 66)."""
    return r.tpm2b(66)


def p_buffer(r: Reader) -> bytes:
    """TPM2B_MAX_BUFFER (≤ 1024 bytes)."""
    return r.tpm2b(1024)


def p_yesno(r: Reader) -> bool:
    """TPMI_YES_NO: 0 or 1, else VALUE."""
    v = r.u8()
    if v > 1:
        from ._constants import RC
        from ._marshal import TpmError
        raise TpmError(RC.VALUE)
    return bool(v)
