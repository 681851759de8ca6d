"""PCR banks (SHA-1, SHA-256, SHA-384; 24 PCRs; 16 and 23 resettable) and the PCR commands."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from ._constants import ALG, CC, RC, rc_param
from ._crypto import H, HASHES
from ._dispatch import USER, Ctx, command
from ._marshal import Reader, TpmError, tpm2b, u16, u32
from ._structs import marshal_pcr_selection, read_hash_alg, read_pcr_selection

if TYPE_CHECKING:
    from ._engine import Tpm

__all__ = ["Pcrs", "PCR_BANKS", "NUM_PCRS", "EXTEND_LOCALITIES", "RESET_LOCALITIES", "initial_value"]

PCR_BANKS = (ALG.SHA1, ALG.SHA256, ALG.SHA384)
NUM_PCRS = 24
#: resettable from locality 0 (debug and application PCRs)
RESETTABLE = (16, 23)
#: PCRs Shutdown(STATE)/Startup(STATE) does not keep (ref s_initAttributes: stateSave = 0)
NOT_STATE_SAVED = tuple(range(16, NUM_PCRS))
#: per PCR, the localities (bit n = locality n) that may extend / reset it: ms-tpm-20-ref PCR.c
#: s_initAttributes for the PC Client platform (17-22 are the D-RTM PCRs)
EXTEND_LOCALITIES = (0x1F,) * 17 + (0x1C, 0x1C, 0x0C, 0x0E, 0x04, 0x04, 0x1F)
RESET_LOCALITIES = (0,) * 16 + (0x0F, 0x10, 0x10, 0x10, 0x14, 0x04, 0x04, 0x0F)
assert len(EXTEND_LOCALITIES) == len(RESET_LOCALITIES) == NUM_PCRS
_ALL_PCRS = (1 << NUM_PCRS) - 1
_DIGEST_SIZE = {alg: size for alg, (_name, size) in HASHES.items()}
_HASH_NEW = {alg: getattr(hashlib, name) for alg, (name, _size) in HASHES.items()}


def initial_value(index: int, size: int) -> bytes:
    """The value of PCR ``index`` after TPM Reset: all ones for 17-22 (no D-RTM event), else zeros."""
    return b"\xff" * size if 17 <= index <= 22 else bytes(size)


class Pcrs:
    """The PCR banks and the update counter."""

    __slots__ = ("banks", "update_counter", "allocated", "pending")

    def __init__(self, allocated: tuple[int, ...] = PCR_BANKS) -> None:
        self.allocated = allocated
        self.pending: tuple[int, ...] | None = None
        self.update_counter = 0
        self.banks: dict[int, list[bytes]] = {}
        self.reset_all()

    def reset_all(self, locality: int = 0) -> None:
        """TPM Reset/Restart: PCRs to their initial values (zeros; ones for the D-RTM PCRs 17-22)."""
        if self.pending is not None:
            self.allocated, self.pending = self.pending, None
        self.banks = {alg: [initial_value(i, HASHES[alg][1]) for i in range(NUM_PCRS)] for alg in self.allocated}
        self.update_counter = 0

    def extend(self, index: int, alg: int, digest: bytes) -> None:
        """PCR[index] = H(PCR[index] || digest) in bank ``alg`` (ignored if not allocated)."""
        bank = self.banks.get(alg)
        if bank is not None:
            bank[index] = _HASH_NEW[alg](bank[index] + digest).digest()  # banks hold supported hashes only

    def read(self, sel: list[tuple[int, int]], limit: int = 1 << 30) -> tuple[list[tuple[int, int]], list[bytes]]:
        """Values for a selection, at most ``limit`` digests; returns (selection actually read, values)."""
        out_sel: list[tuple[int, int]] = []
        vals: list[bytes] = []
        banks = self.banks
        for alg, bits in sel:
            bank = banks.get(alg)
            got = 0
            if bank is not None:
                rest = bits & _ALL_PCRS
                while rest and len(vals) < limit:  # set bits only, lowest first
                    low = rest & -rest
                    vals.append(bank[low.bit_length() - 1])
                    got |= low
                    rest ^= low
            out_sel.append((alg, got))
        return out_sel, vals

    def digest(self, alg: int, sel: list[tuple[int, int]]) -> bytes:
        """H_alg(concatenation of the selected PCR values, in selection order)."""
        return H(alg, *self.read(sel)[1])

    def marshal(self) -> bytes:
        """All banks (for Shutdown(STATE) and whole-state save)."""
        return b"".join(u16(alg) + b"".join(self.banks[alg]) for alg in self.allocated)



def _read_digest_values(r: Reader) -> list[tuple[int, bytes]]:
    count = r.u32()
    if count > 16:
        raise TpmError(RC.SIZE)
    out = []
    for _ in range(count):
        alg = read_hash_alg(r)
        out.append((alg, r.raw(_DIGEST_SIZE[alg])))
    return out


def _marshal_digest_values(vals: list[tuple[int, bytes]]) -> bytes:
    return u32(len(vals)) + b"".join(u16(a) + d for a, d in vals)


def _check_extend_locality(index: int, ctx: Ctx) -> None:
    if not EXTEND_LOCALITIES[index] >> ctx.locality & 1:
        raise TpmError(RC.LOCALITY)


@command(CC.PCR_Extend, ("pcr+",), (USER,), params=(_read_digest_values,))
def _pcr_extend(tpm: "Tpm", ctx: Ctx, digests: list[tuple[int, bytes]]) -> bytes:
    idx = ctx.ent[0]
    if idx is not None:
        _check_extend_locality(idx, ctx)
        for alg, d in digests:
            tpm.pcrs.extend(idx, alg, d)
        tpm.pcrs.update_counter += 1
    return b""


def _p_event(r: Reader) -> bytes:
    return r.tpm2b(1024)


@command(CC.PCR_Event, ("pcr+",), (USER,), decrypt=True, params=(_p_event,))
def _pcr_event(tpm: "Tpm", ctx: Ctx, data: bytes) -> bytes:
    idx = ctx.ent[0]
    if idx is not None:
        _check_extend_locality(idx, ctx)
    vals = [(alg, H(alg, data)) for alg in tpm.pcrs.allocated]
    if idx is not None:
        for alg, d in vals:
            tpm.pcrs.extend(idx, alg, d)
        tpm.pcrs.update_counter += 1
    return _marshal_digest_values(vals)


@command(CC.PCR_Read, params=(read_pcr_selection,))
def _pcr_read(tpm: "Tpm", ctx: Ctx, sel: list[tuple[int, int]]) -> bytes:
    out_sel, vals = tpm.pcrs.read(sel, limit=8)
    key = tuple(out_sel)
    msel = _SELECTIONS.get(key)
    if msel is None:
        if len(_SELECTIONS) >= 64:
            _SELECTIONS.clear()
        msel = _SELECTIONS[key] = marshal_pcr_selection(out_sel) + u32(len(vals))
    return b"".join((u32(tpm.pcrs.update_counter), msel, *[tpm2b(v) for v in vals]))


#: marshalled pcrSelectionOut || digest count, by selection (the same few selections come back)
_SELECTIONS: dict[tuple[tuple[int, int], ...], bytes] = {}


@command(CC.PCR_Reset, ("pcr",), (USER,))
def _pcr_reset(tpm: "Tpm", ctx: Ctx) -> bytes:
    idx = ctx.ent[0]
    if not RESET_LOCALITIES[idx] >> ctx.locality & 1:
        raise TpmError(RC.LOCALITY)
    for alg, bank in tpm.pcrs.banks.items():
        bank[idx] = bytes(HASHES[alg][1])
    tpm.pcrs.update_counter += 1
    return b""


@command(CC.PCR_Allocate, ("platform",), (USER,), params=(read_pcr_selection,))
def _pcr_allocate(tpm: "Tpm", ctx: Ctx, sel: list[tuple[int, int]]) -> bytes:
    """Takes effect at the next TPM Reset; a bank is allocated if any bit is set."""
    want = dict(sel)
    for alg in want:
        if alg not in PCR_BANKS:
            raise TpmError(rc_param(RC.VALUE, 1))
    cur = {alg: (0xFFFFFF if alg in tpm.pcrs.allocated else 0) for alg in PCR_BANKS}
    cur.update(want)
    new = tuple(alg for alg in PCR_BANKS if cur[alg])
    if not new:
        raise TpmError(rc_param(RC.VALUE, 1))
    tpm.pcrs.pending = new
    tpm.dirty = True
    size = sum(HASHES[a][1] * NUM_PCRS for a in new)
    return b"\x01" + u32(NUM_PCRS) + u32(size) + u32(size)


