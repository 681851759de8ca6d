"""The machine state that moves at stop-and-copy, as one declared, bounded msgpack structure.

What a guest needs besides its memory: the VMSA of its VMPL on every vCPU (plus the GHCB MSR
the hypervisor holds for it), the guest's firmware keys -- the VMPCKs of the guest's VMPLs with
the PSP's message sequence counters, and the VM root key (VMRK) that derived keys may be rooted
in -- which an SNP migration agent would import into the destination's guest context, and every
module's saved state.  The SVSM's own VMPCKs (below the guest VMPL) never leave the machine.

The page state word (:data:`PAGE_ASSIGNED` ...) is the RMP state of one guest frame as the
destination re-creates it; only this package interprets it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "GuestKeys",
    "MachineState",
    "ModuleState",
    "VcpuState",
    "PAGE_ASSIGNED",
    "PAGE_VALIDATED",
    "PAGE_VMSA",
    "PAGE_PERMS_SHIFT",
    "PAGE_STATE_MASK",
    "STATE_VERSION",
    "decode_state",
    "encode_state",
]

#: Version of :class:`MachineState`; a destination refuses any other.
STATE_VERSION = 1

#: The frame is private to the guest (RMP ASSIGNED with the guest's ASID).
PAGE_ASSIGNED = 1 << 0
#: PVALIDATEd (content is meaningful only then).
PAGE_VALIDATED = 1 << 1
#: The page is a VMSA (RMP VMSA bit).
PAGE_VMSA = 1 << 2
#: VMPL1..3 permission masks live in bits 8..31 (VMPL v at ``8 * v``); VMPL0 always has all.
PAGE_PERMS_SHIFT = 8
#: Every bit a state word may have.
PAGE_STATE_MASK = PAGE_ASSIGNED | PAGE_VALIDATED | PAGE_VMSA | (0xFFFFFF << PAGE_PERMS_SHIFT)

_PAGE = 4096
_Key = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
_U64 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class VcpuState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One vCPU as the guest left it.

    :ivar vmsa_gpa: the guest VMSA's GPA (0: the guest does not run on this vCPU).
    :ivar caa_gpa: its calling area.
    :ivar guest_owned: the guest supplied the VMSA page (CREATE_VCPU): it travels with guest
        memory.  Otherwise the SVSM owns the page and :attr:`vmsa` carries its bytes.
    :ivar ghcb_msr: the GHCB MSR of the guest VMPL.
    :ivar host_ghcb_gfn: see the field comment.
    """

    index: Annotated[int, msgspec.Meta(ge=0, le=255)]
    apic_id: Annotated[int, msgspec.Meta(ge=0, lt=1 << 32)]
    vmsa_gpa: _U64
    caa_gpa: _U64
    guest_owned: bool
    vmsa: Annotated[bytes, msgspec.Meta(min_length=_PAGE, max_length=_PAGE)] | None
    ghcb_msr: _U64
    #: The GHCB frame the source's hypervisor has registered for the guest VMPL (0: none): host
    #: state that the VMM migrates alongside, so the guest's next VMGEXIT finds its GHCB known.
    host_ghcb_gfn: _U64 = 0


class GuestKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The guest's PSP secrets: VMPCK[first..3], their sequence counters, and the VMRK."""

    first: Annotated[int, msgspec.Meta(ge=1, le=3)]
    vmpcks: Annotated[list[_Key], msgspec.Meta(min_length=1, max_length=3)]
    seqnos: Annotated[list[_U64], msgspec.Meta(min_length=1, max_length=3)]
    vmrk: _Key


class ModuleState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One module's ``svsm_save_state`` output."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    state: Annotated[bytes, msgspec.Meta(max_length=8 << 20)]


class MachineState(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="machine/1"):
    """Everything but guest memory, sent once the guest is paused."""

    version: int
    memory_size: _U64
    guest_vmpl: Annotated[int, msgspec.Meta(ge=1, le=3)]
    vcpus: Annotated[list[VcpuState], msgspec.Meta(min_length=1, max_length=256)]
    keys: GuestKeys
    modules: Annotated[list[ModuleState], msgspec.Meta(max_length=32)]


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(MachineState)


def encode_state(state: MachineState) -> bytes:
    """msgpack bytes of ``state``."""
    return _ENC.encode(state)


def decode_state(data: bytes) -> MachineState:
    """Parse a peer's machine state (strict, bounded).

    :raises msgspec.ValidationError: malformed or out-of-bounds (callers map it to a refusal).
    :raises msgspec.DecodeError: not msgpack.
    """
    return _DEC.decode(data)
