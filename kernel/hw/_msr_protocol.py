"""GHCB MSR protocol (snp.md 4.2) as a sans-IO codec.

A value written to MSR 0xC001_0130 is GHCBInfo (bits 11:0) plus data (bits 63:12).  Each message
is a frozen dataclass that checks its fields when built; :func:`decode_msr` turns a 64-bit value
into one of them, and ``encode()`` turns it back.  Nothing here reads or writes an MSR.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from ._errors import GhcbProtocolError

__all__ = [
    "MsrProtocolCode",
    "MsrMessage",
    "SevInfoResponse",
    "SevInfoRequest",
    "CpuidRequest",
    "CpuidResponse",
    "ApResetHoldRequest",
    "ApResetHoldResponse",
    "RegisterGhcbRequest",
    "RegisterGhcbResponse",
    "PageStateChangeRequest",
    "PageStateChangeResponse",
    "RunVmplRequest",
    "RunVmplResponse",
    "HypervisorFeaturesRequest",
    "HypervisorFeaturesResponse",
    "TerminationRequest",
    "HypervisorFeature",
    "decode_msr",
]

_U64 = (1 << 64) - 1


class MsrProtocolCode(enum.IntEnum):
    """GHCBInfo values (snp.md 4.2)."""

    SEV_INFO_RESPONSE = 0x001
    SEV_INFO_REQUEST = 0x002
    CPUID_REQUEST = 0x004
    CPUID_RESPONSE = 0x005
    AP_RESET_HOLD_REQUEST = 0x006
    AP_RESET_HOLD_RESPONSE = 0x007
    REGISTER_GHCB_REQUEST = 0x012
    REGISTER_GHCB_RESPONSE = 0x013
    PAGE_STATE_CHANGE_REQUEST = 0x014
    PAGE_STATE_CHANGE_RESPONSE = 0x015
    RUN_VMPL_REQUEST = 0x016
    RUN_VMPL_RESPONSE = 0x017
    HYPERVISOR_FEATURES_REQUEST = 0x080
    HYPERVISOR_FEATURES_RESPONSE = 0x081
    TERMINATION_REQUEST = 0x100


class HypervisorFeature(enum.IntFlag):
    """Hypervisor feature bitmap (snp.md 4.2); COCONUT-SVSM needs SEV_SNP, AP_CREATION, SNP_MULTI_VMPL."""

    SEV_SNP = 1 << 0
    AP_CREATION = 1 << 1
    RESTRICTED_INJECTION = 1 << 2
    RESTRICTED_INJECTION_TIMER = 1 << 3
    APIC_ID_LIST = 1 << 4
    SNP_MULTI_VMPL = 1 << 5
    PAGE_STATE_CHANGE = 1 << 6
    EXT_INTERRUPTS = 1 << 9


def _check(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise GhcbProtocolError(f"{name}={value:#x} does not fit {bits} bits")


class MsrMessage:
    """Base of the MSR protocol messages; ``encode()`` gives the 64-bit MSR value."""

    code: ClassVar[MsrProtocolCode]

    def _data(self) -> int:
        return 0

    def encode(self) -> int:
        """The value to write to the GHCB MSR."""
        return (self._data() << 12 | self.code) & _U64

    @classmethod
    def _from_data(cls, data: int) -> MsrMessage:
        if data:
            raise GhcbProtocolError(f"{cls.__name__} carries no data, got {data:#x}")
        return cls()


@dataclass(frozen=True, slots=True)
class SevInfoRequest(MsrMessage):
    """Ask for the supported GHCB protocol range and the C-bit position."""

    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.SEV_INFO_REQUEST


@dataclass(frozen=True, slots=True)
class SevInfoResponse(MsrMessage):
    """[63:48] max protocol, [47:32] min protocol, [31:24] C-bit position."""

    max_protocol: int
    min_protocol: int
    c_bit: int
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.SEV_INFO_RESPONSE

    def __post_init__(self) -> None:
        _check("max_protocol", self.max_protocol, 16)
        _check("min_protocol", self.min_protocol, 16)
        _check("c_bit", self.c_bit, 8)

    def _data(self) -> int:
        return (self.max_protocol << 48 | self.min_protocol << 32 | self.c_bit << 24) >> 12

    @classmethod
    def _from_data(cls, data: int) -> SevInfoResponse:
        v = data << 12
        return cls((v >> 48) & 0xFFFF, (v >> 32) & 0xFFFF, (v >> 24) & 0xFF)


@dataclass(frozen=True, slots=True)
class CpuidRequest(MsrMessage):
    """[63:32] leaf, [31:30] register (0 EAX, 1 EBX, 2 ECX, 3 EDX)."""

    leaf: int
    register: int
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.CPUID_REQUEST

    def __post_init__(self) -> None:
        _check("leaf", self.leaf, 32)
        _check("register", self.register, 2)

    def _data(self) -> int:
        return (self.leaf << 32 | self.register << 30) >> 12

    @classmethod
    def _from_data(cls, data: int) -> CpuidRequest:
        v = data << 12
        if v & 0x3FFF_F000:
            raise GhcbProtocolError("CPUID request reserved bits 29:12 set")
        return cls(v >> 32, (v >> 30) & 3)


@dataclass(frozen=True, slots=True)
class CpuidResponse(MsrMessage):
    """[63:32] the register value (and [31:30] echo the register)."""

    value: int
    register: int = 0
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.CPUID_RESPONSE

    def __post_init__(self) -> None:
        _check("value", self.value, 32)
        _check("register", self.register, 2)

    def _data(self) -> int:
        return (self.value << 32 | self.register << 30) >> 12

    @classmethod
    def _from_data(cls, data: int) -> CpuidResponse:
        v = data << 12
        return cls(v >> 32, (v >> 30) & 3)


@dataclass(frozen=True, slots=True)
class ApResetHoldRequest(MsrMessage):
    """AP reset hold request."""

    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.AP_RESET_HOLD_REQUEST


@dataclass(frozen=True, slots=True)
class ApResetHoldResponse(MsrMessage):
    """AP reset hold response; data non-zero means the AP was woken."""

    data: int = 0
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.AP_RESET_HOLD_RESPONSE

    def __post_init__(self) -> None:
        _check("data", self.data, 52)

    def _data(self) -> int:
        return self.data

    @classmethod
    def _from_data(cls, data: int) -> ApResetHoldResponse:
        return cls(data)


@dataclass(frozen=True, slots=True)
class RegisterGhcbRequest(MsrMessage):
    """[63:12] GFN of the GHCB page to register."""

    gfn: int
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.REGISTER_GHCB_REQUEST

    def __post_init__(self) -> None:
        _check("gfn", self.gfn, 52)

    def _data(self) -> int:
        return self.gfn

    @classmethod
    def _from_data(cls, data: int) -> RegisterGhcbRequest:
        return cls(data)


@dataclass(frozen=True, slots=True)
class RegisterGhcbResponse(MsrMessage):
    """[63:12] the registered GFN; a mismatch with the request means failure."""

    gfn: int
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.REGISTER_GHCB_RESPONSE

    def __post_init__(self) -> None:
        _check("gfn", self.gfn, 52)

    def _data(self) -> int:
        return self.gfn

    @classmethod
    def _from_data(cls, data: int) -> RegisterGhcbResponse:
        return cls(data)


@dataclass(frozen=True, slots=True)
class PageStateChangeRequest(MsrMessage):
    """[51:12] GFN of one 4 KiB page, [55:52] operation (1 private, 2 shared)."""

    gfn: int
    operation: int
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.PAGE_STATE_CHANGE_REQUEST

    def __post_init__(self) -> None:
        _check("gfn", self.gfn, 40)
        if self.operation not in (1, 2):
            raise GhcbProtocolError(f"MSR page state change operation {self.operation} is not 1 or 2")

    def _data(self) -> int:
        return self.gfn | self.operation << 40

    @classmethod
    def _from_data(cls, data: int) -> PageStateChangeRequest:
        if data >> 44:
            raise GhcbProtocolError("page state change request reserved bits 63:56 set")
        return cls(data & ((1 << 40) - 1), (data >> 40) & 0xF)


@dataclass(frozen=True, slots=True)
class PageStateChangeResponse(MsrMessage):
    """[63:32] error code, 0 = success."""

    error: int
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.PAGE_STATE_CHANGE_RESPONSE

    def __post_init__(self) -> None:
        _check("error", self.error, 32)

    def _data(self) -> int:
        return self.error << 20

    @classmethod
    def _from_data(cls, data: int) -> PageStateChangeResponse:
        return cls(data >> 20)


@dataclass(frozen=True, slots=True)
class RunVmplRequest(MsrMessage):
    """[39:32] target VMPL (0 = call the SVSM)."""

    vmpl: int
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.RUN_VMPL_REQUEST

    def __post_init__(self) -> None:
        _check("vmpl", self.vmpl, 8)

    def _data(self) -> int:
        return self.vmpl << 20

    @classmethod
    def _from_data(cls, data: int) -> RunVmplRequest:
        v = data << 12
        if v & ~(0xFF << 32):
            raise GhcbProtocolError("run-VMPL request reserved bits set")
        return cls((v >> 32) & 0xFF)


@dataclass(frozen=True, slots=True)
class RunVmplResponse(MsrMessage):
    """[63:32] error, 0 = success."""

    error: int
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.RUN_VMPL_RESPONSE

    def __post_init__(self) -> None:
        _check("error", self.error, 32)

    def _data(self) -> int:
        return self.error << 20

    @classmethod
    def _from_data(cls, data: int) -> RunVmplResponse:
        return cls(data >> 20)


@dataclass(frozen=True, slots=True)
class HypervisorFeaturesRequest(MsrMessage):
    """Ask for the hypervisor feature bitmap."""

    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.HYPERVISOR_FEATURES_REQUEST


@dataclass(frozen=True, slots=True)
class HypervisorFeaturesResponse(MsrMessage):
    """[63:12] feature bitmap (:class:`HypervisorFeature`)."""

    features: int
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.HYPERVISOR_FEATURES_RESPONSE

    def __post_init__(self) -> None:
        _check("features", self.features, 52)

    def _data(self) -> int:
        return self.features

    @classmethod
    def _from_data(cls, data: int) -> HypervisorFeaturesResponse:
        return cls(data)


@dataclass(frozen=True, slots=True)
class TerminationRequest(MsrMessage):
    """[15:12] reason set, [23:16] reason code."""

    reason_set: int
    reason_code: int
    code: ClassVar[MsrProtocolCode] = MsrProtocolCode.TERMINATION_REQUEST

    def __post_init__(self) -> None:
        _check("reason_set", self.reason_set, 4)
        _check("reason_code", self.reason_code, 8)

    def _data(self) -> int:
        return self.reason_set | self.reason_code << 4

    @classmethod
    def _from_data(cls, data: int) -> TerminationRequest:
        return cls(data & 0xF, (data >> 4) & 0xFF)


_BY_CODE: dict[int, type[MsrMessage]] = {
    c.code: c
    for c in (
        SevInfoRequest,
        SevInfoResponse,
        CpuidRequest,
        CpuidResponse,
        ApResetHoldRequest,
        ApResetHoldResponse,
        RegisterGhcbRequest,
        RegisterGhcbResponse,
        PageStateChangeRequest,
        PageStateChangeResponse,
        RunVmplRequest,
        RunVmplResponse,
        HypervisorFeaturesRequest,
        HypervisorFeaturesResponse,
        TerminationRequest,
    )
}


def decode_msr(value: int) -> MsrMessage:
    """Decode a GHCB MSR value into its message.

    :param value: the 64-bit MSR content; GHCBInfo 0 means "a GHCB GPA", not an MSR message.
    :returns: the typed message.
    :raises GhcbProtocolError: unknown GHCBInfo, or reserved bits / bad field values.
    """
    msg = _DECODED.get(value)
    if msg is not None:
        return msg
    if not 0 <= value <= _U64:
        raise GhcbProtocolError(f"MSR value {value:#x} is not 64-bit")
    cls = _BY_CODE.get(value & 0xFFF)
    if cls is None:
        raise GhcbProtocolError(f"unknown GHCB MSR protocol code {value & 0xFFF:#x}")
    msg = cls._from_data(value >> 12)
    if cls in _MEMO_CLASSES and len(_DECODED) < 512:  # bounded: error fields can take any value
        _DECODED[value] = msg
    return msg


#: Messages are frozen values, so a decoded one can be handed out again: the request-loop
#: messages (a handful of distinct values each) are decoded once per value.
_MEMO_CLASSES = frozenset({RunVmplRequest, RunVmplResponse, SevInfoRequest, HypervisorFeaturesRequest})
_DECODED: dict[int, MsrMessage] = {}
