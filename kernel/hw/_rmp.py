"""The Reverse Map Table and the four RMP instructions (snp.md 5).

One entry per 4 KiB system-physical page, indexed by SFN (SPA >> 12).  Entries are packed into a
single int per page and stored sparsely: a page absent from the dict is hypervisor-owned (all
fields zero), which is what most pages of a big idle guest are.  A 2 MiB entry is stored once at
its 2 MiB-aligned SFN with PAGE_SIZE set; the other 511 SFNs stay absent and lookups fall back to
the aligned entry.

Packed layout (internal, not the in-memory Zen layout; :meth:`RmpEntry.to_bytes` gives that):
bit 0 ASSIGNED, 1 PAGE_SIZE, 2 IMMUTABLE, 3 VMSA, 4 VALIDATED, bits 8+8*v..15+8*v permission
mask of VMPL v (v = 0..3), bits 40..55 ASID, bits 56.. GPA >> 12.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ._constants import (
    PAGE_SHIFT,
    PAGES_PER_2M,
    RMPADJUST_PERMS_SHIFT,
    RMPADJUST_TARGET_VMPL_MASK,
    RMPADJUST_VMSA,
    VMPL_COUNT,
    VMPL_PERMS_ALL,
    VMPL_PERMS_RESERVED,
    PvalidateResult,
    RmpadjustResult,
    RmpPageSize,
    RmpupdateResult,
)

__all__ = ["RMP", "RmpEntry", "RmpStatistics", "InstructionResult", "RmpUpdateState"]

A = 1 << 0
PS = 1 << 1
IMM = 1 << 2
VMSA = 1 << 3
VAL = 1 << 4
PERM_SHIFT = 8
PERMS_MASK = ((1 << (8 * VMPL_COUNT)) - 1) << PERM_SHIFT
ASID_SHIFT = 40
ASID_MASK = 0xFFFF << ASID_SHIFT
GFN_SHIFT = 56
#: Bits that must equal (ASSIGNED | asid | gfn) with IMMUTABLE clear for a guest-owned page.
_OWNER_IGNORE = PS | VMSA | VAL | PERMS_MASK
_ALIGN_2M = ~(PAGES_PER_2M - 1)

#: RMPUPDATE's 16-byte new-state operand {u64 gpa; u8 assigned; u8 pagesize; u8 immutable;
#: u8 rsvd; u32 asid} (snp.md 5.4).
RMPUPDATE_STATE = struct.Struct("<QBBBBI")
assert RMPUPDATE_STATE.size == 16


class RmpUpdateState(NamedTuple):
    """Decoded RMPUPDATE operand (snp.md 5.4)."""

    gpa: int
    assigned: bool
    page_size: int
    immutable: bool
    asid: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> RmpUpdateState:
        """Decode the 16-byte operand."""
        gpa, assigned, ps, imm, _rsvd, asid = RMPUPDATE_STATE.unpack(raw)
        return cls(gpa, bool(assigned), ps, bool(imm), asid)

    def to_bytes(self) -> bytes:
        """Encode the 16-byte operand."""
        return RMPUPDATE_STATE.pack(self.gpa, int(self.assigned), self.page_size, int(self.immutable), 0, self.asid)


class InstructionResult(NamedTuple):
    """EAX and rFLAGS.CF after PVALIDATE/RMPADJUST (or RMPUPDATE/PSMASH's return code)."""

    rc: int
    carry: bool = False


class RmpEntry(NamedTuple):
    """A decoded RMP entry (snp.md 5.1), as the AMD-SP or RMPREAD would report it."""

    assigned: bool
    page_size: int
    immutable: bool
    gpa: int
    asid: int
    vmsa: bool
    validated: bool
    perms: tuple[int, int, int, int]

    @classmethod
    def unpack(cls, e: int, sub: int = 0) -> RmpEntry:
        """Decode a packed entry; ``sub`` is the 4 KiB index inside a 2 MiB entry."""
        return cls(
            bool(e & A),
            RmpPageSize.SIZE_2M if e & PS else RmpPageSize.SIZE_4K,
            bool(e & IMM),
            ((e >> GFN_SHIFT) + sub) << PAGE_SHIFT if e & A else 0,
            (e & ASID_MASK) >> ASID_SHIFT,
            bool(e & VMSA),
            bool(e & VAL),
            tuple((e >> (PERM_SHIFT + 8 * v)) & 0xFF for v in range(VMPL_COUNT)),  # type: ignore[arg-type]
        )

    def to_bytes(self) -> bytes:
        """16 bytes: the Zen3/Zen4 low qword (snp.md 5.1) and the VMPL masks in the high qword.

        The high qword's layout is not architectural (snp.md 7); we put VMPL v's mask in byte v.
        """
        lo = (
            int(self.assigned)
            | (int(self.page_size) << 1)
            | (int(self.immutable) << 2)
            | (((self.gpa >> 12) & ((1 << 39) - 1)) << 12)
            | ((self.asid & 0x3FF) << 51)
            | (int(self.vmsa) << 61)
            | (int(self.validated) << 62)
        )
        hi = int.from_bytes(bytes(self.perms), "little")
        return struct.pack("<QQ", lo, hi)


class RmpStatistics(NamedTuple):
    """Counters of :class:`RMP` (house rule 10)."""

    entries: int
    assigned_4k: int
    assigned_2m: int
    validated: int
    pvalidate: int
    rmpadjust: int
    rmpupdate: int
    psmash: int


class RMP:
    """Reverse Map Table of one machine.

    Guest-side instruction semantics (PVALIDATE, RMPADJUST) take the *system* frame the guest's
    GPA translated to plus the GPA itself; the vCPU does the translation and raises the faults.

    :param npages: number of 4 KiB system pages covered.
    """

    __slots__ = ("npages", "_e", "_busy", "n_pvalidate", "n_rmpadjust", "n_rmpupdate", "n_psmash")

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self._e: dict[int, int] = {}
        #: SFNs in use by a running VMRUN (VMSA pages of running vCPUs): FAIL_INUSE.
        self._busy: set[int] = set()
        self.n_pvalidate = self.n_rmpadjust = self.n_rmpupdate = self.n_psmash = 0

    # -- lookups ---------------------------------------------------------------------------------
    def raw(self, sfn: int) -> tuple[int, int]:
        """Packed entry covering ``sfn`` and the index of ``sfn`` inside it (0 for 4 KiB)."""
        e = self._e.get(sfn)
        if e is not None:
            return e, 0
        base = sfn & _ALIGN_2M
        b = self._e.get(base)
        if b is not None and b & PS:
            return b, sfn - base
        return 0, 0

    def read(self, sfn: int) -> RmpEntry:
        """Decoded entry for page ``sfn`` (what RMPREAD returns)."""
        e, sub = self.raw(sfn)
        return RmpEntry.unpack(e, sub)

    def guest_owned(self, sfn: int, gfn: int, asid: int) -> tuple[int, int]:
        """Return (packed entry, sub-index) if ``sfn`` is a mutable page of ``asid`` mapped at ``gfn``.

        Covers the first four checks of Table 15-39 (RMP-covered is the caller's job).  Returns
        entry 0 when the check fails.
        """
        e, sub = self.raw(sfn)
        if e & ~_OWNER_IGNORE != A | (asid << ASID_SHIFT) | ((gfn - sub) << GFN_SHIFT):
            return 0, sub
        return e, sub

    def _store(self, sfn: int, e: int) -> None:
        if e:
            self._e[sfn] = e
        else:
            self._e.pop(sfn, None)

    def set_busy(self, sfn: int, busy: bool) -> None:
        """Mark a VMSA page as in use by a running VMRUN (RMPUPDATE/PSMASH answer FAIL_INUSE)."""
        if busy:
            self._busy.add(sfn)
        else:
            self._busy.discard(sfn)

    # -- guest instructions ----------------------------------------------------------------------
    def pvalidate(self, e: int, base_sfn: int, size: int, validate: bool) -> InstructionResult:
        """Apply PVALIDATE to an entry that already passed the ownership checks.

        :param e: packed entry returned by :meth:`guest_owned`.
        :param base_sfn: SFN where that entry is stored (2 MiB-aligned for 2 MiB entries).
        :param size: the instruction's ECX size; the caller has already turned a 4 KiB request on a
            2 MiB entry into an NPF.
        :returns: FAIL_SIZEMISMATCH for a 2 MiB request on a 4 KiB entry; CF=1 if unchanged.
        """
        self.n_pvalidate += 1
        if size == RmpPageSize.SIZE_2M and not e & PS:
            return InstructionResult(PvalidateResult.FAIL_SIZEMISMATCH)
        if bool(e & VAL) == validate:
            return InstructionResult(PvalidateResult.SUCCESS, True)
        self._e[base_sfn] = e ^ VAL
        return InstructionResult(PvalidateResult.SUCCESS)

    def rmpadjust(self, e: int, base_sfn: int, caller_vmpl: int, size: int, attrs: int) -> InstructionResult:
        """Apply RMPADJUST (snp.md 5.3) to an entry that passed the ownership/validation checks.

        :param attrs: RDX: [7:0] target VMPL, [15:8] permission mask, bit 16 VMSA.
        """
        self.n_rmpadjust += 1
        target = attrs & RMPADJUST_TARGET_VMPL_MASK
        perms = (attrs >> RMPADJUST_PERMS_SHIFT) & 0xFF
        if target >= VMPL_COUNT or perms & VMPL_PERMS_RESERVED or attrs & ~0x1FFFF:
            return InstructionResult(RmpadjustResult.FAIL_INPUT)
        if size == RmpPageSize.SIZE_2M and not e & PS:
            return InstructionResult(RmpadjustResult.FAIL_SIZEMISMATCH)
        if target <= caller_vmpl:
            return InstructionResult(RmpadjustResult.FAIL_PERMISSION)
        caller_perms = (e >> (PERM_SHIFT + 8 * caller_vmpl)) & 0xFF
        if perms & ~caller_perms:
            return InstructionResult(RmpadjustResult.FAIL_PERMISSION)
        shift = PERM_SHIFT + 8 * target
        e = (e & ~(0xFF << shift)) | (perms << shift)
        if caller_vmpl == 0:  # the VMSA bit is honoured only at VMPL0 (snp.md 5.3)
            e = (e | VMSA) if attrs & RMPADJUST_VMSA else (e & ~VMSA)
        self._e[base_sfn] = e
        return InstructionResult(RmpadjustResult.SUCCESS)

    # -- hypervisor instructions -----------------------------------------------------------------
    def rmpupdate(self, sfn: int, state: RmpUpdateState) -> InstructionResult:
        """RMPUPDATE (snp.md 5.4): set owner fields; clears VALIDATED, VMSA and the VMPL masks.

        Assignment to a guest gives VMPL0 all permissions and VMPL1-3 none.
        """
        self.n_rmpupdate += 1
        if not 0 <= sfn < self.npages or state.page_size not in (0, 1) or state.asid > 0xFFFF:
            return InstructionResult(RmpupdateResult.FAIL_INPUT)
        big = state.page_size == RmpPageSize.SIZE_2M
        if big and (sfn % PAGES_PER_2M or sfn + PAGES_PER_2M > self.npages or state.gpa >> PAGE_SHIFT & (PAGES_PER_2M - 1)):
            return InstructionResult(RmpupdateResult.FAIL_INPUT)
        cur, sub = self.raw(sfn)
        if cur & IMM:
            return InstructionResult(RmpupdateResult.FAIL_PERMISSION)
        if sfn in self._busy:
            return InstructionResult(RmpupdateResult.FAIL_INUSE)
        if big:
            e_get = self._e.get
            for s in range(sfn + 1, sfn + PAGES_PER_2M):
                if e_get(s) is not None:
                    return InstructionResult(RmpupdateResult.FAIL_OVERLAP)
            if cur and not cur & PS:  # a 4 KiB entry at the aligned SFN overlaps too
                return InstructionResult(RmpupdateResult.FAIL_OVERLAP)
        elif cur & PS:
            return InstructionResult(RmpupdateResult.FAIL_OVERLAP)
        if not state.assigned:
            self._store(sfn, 0)
            return InstructionResult(RmpupdateResult.SUCCESS)
        e = A | (state.asid << ASID_SHIFT) | ((state.gpa >> PAGE_SHIFT) << GFN_SHIFT)
        if big:
            e |= PS
        if state.immutable:
            e |= IMM
        if state.asid:
            e |= VMPL_PERMS_ALL << PERM_SHIFT
        self._e[sfn] = e
        return InstructionResult(RmpupdateResult.SUCCESS)

    def psmash(self, sfn: int) -> InstructionResult:
        """PSMASH (snp.md 5.4): split a 2 MiB entry into 512 4 KiB entries, fields copied."""
        self.n_psmash += 1
        if not 0 <= sfn < self.npages or sfn % PAGES_PER_2M:
            return InstructionResult(RmpupdateResult.FAIL_INPUT)
        e = self._e.get(sfn)
        if e is None or not e & PS:
            return InstructionResult(RmpupdateResult.FAIL_INPUT)
        if any(s in self._busy for s in range(sfn, sfn + PAGES_PER_2M)):
            return InstructionResult(RmpupdateResult.FAIL_INUSE)
        e &= ~PS
        one = 1 << GFN_SHIFT
        # Write the 511 new entries before replacing the 2 MiB one, so a concurrent lookup from
        # another vCPU thread sees either the old 2 MiB entry or the new 4 KiB entries.
        for i in range(1, PAGES_PER_2M):
            self._e[sfn + i] = e + i * one
        self._e[sfn] = e
        return InstructionResult(RmpupdateResult.SUCCESS)

    # -- firmware (AMD-SP) ----------------------------------------------------------------------
    def firmware_set(
        self,
        sfn: int,
        *,
        assigned: bool,
        gpa: int = 0,
        asid: int = 0,
        validated: bool = False,
        vmsa: bool = False,
        immutable: bool = False,
        perms: tuple[int, int, int, int] | None = None,
    ) -> None:
        """Set a 4 KiB entry wholesale, as only the AMD-SP can (launch, page reclaim).

        :param perms: VMPL0..3 masks; default VMPL0 all, others none for a guest page.
        """
        if not 0 <= sfn < self.npages:
            raise ValueError(f"system frame {sfn:#x} outside the RMP")
        cur, _ = self.raw(sfn)
        if cur & PS:
            raise ValueError(f"system frame {sfn:#x} is covered by a 2 MiB entry; PSMASH first")
        if not assigned:
            self._store(sfn, 0)
            return
        if perms is None:
            perms = (VMPL_PERMS_ALL, 0, 0, 0) if asid else (0, 0, 0, 0)
        e = A | (asid << ASID_SHIFT) | ((gpa >> PAGE_SHIFT) << GFN_SHIFT)
        e |= (VAL if validated else 0) | (VMSA if vmsa else 0) | (IMM if immutable else 0)
        for v, p in enumerate(perms):
            e |= (p & 0xFF) << (PERM_SHIFT + 8 * v)
        self._e[sfn] = e

    def statistics(self) -> RmpStatistics:
        """Counts of entries by kind and of instructions executed."""
        a4 = a2 = val = 0
        for e in self._e.values():
            if e & PS:
                a2 += 1
            else:
                a4 += 1
            if e & VAL:
                val += 1
        return RmpStatistics(len(self._e), a4, a2, val, self.n_pvalidate, self.n_rmpadjust, self.n_rmpupdate, self.n_psmash)

    def items(self) -> list[tuple[int, RmpEntry]]:
        """All non-default entries as (sfn, entry), for migration and tests."""
        return [(s, RmpEntry.unpack(e)) for s, e in sorted(self._e.items())]
