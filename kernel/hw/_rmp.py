"""The Reverse Map Table and the four RMP instructions (snp.md 5).

One entry per 4 KiB system-physical page, indexed by SFN (SPA >> 12).  Storage is sparse and
compact, per 2 MiB region ("chunk", 512 SFNs):

* a chunk with 4 KiB entries has two ``array('Q')`` of 512: the attribute words and the GPA
  frames (16 bytes per page, no Python object per entry);
* a chunk covered by one 2 MiB entry holds a single packed int in ``_big``
  (attribute word | GPA frame << 56);
* a chunk with neither is hypervisor-owned (all fields zero) -- most of a big idle guest.

The two forms never coexist for one chunk (RMPUPDATE refuses the overlap; PSMASH converts).

Attribute word (internal, not the in-memory Zen layout; :meth:`RmpEntry.to_bytes` gives that):
bit 0 ASSIGNED, 1 PAGE_SIZE, 2 IMMUTABLE, 3 VMSA, 4 VALIDATED, bits 8+8*v..15+8*v permission
mask of VMPL v (v = 0..3), bits 40..55 ASID.
"""

from __future__ import annotations

import struct
from array import array
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
ATTR_MASK = (1 << 56) - 1
#: Packing of a 2 MiB entry in ``_big``: attribute word | GPA frame << GFN_SHIFT.
GFN_SHIFT = 56
#: Attribute bits that must equal (ASSIGNED | asid) -- IMMUTABLE clear -- for a guest-owned page.
OWNER_MASK = A | IMM | ASID_MASK
CHUNK_SHIFT = 9
CHUNK_MASK = PAGES_PER_2M - 1
_EMPTY = array("Q", bytes(8 * PAGES_PER_2M))

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
    def unpack(cls, e: int, gfn: int) -> RmpEntry:
        """Decode an attribute word and the GPA frame recorded for the page."""
        return cls(
            bool(e & A),
            RmpPageSize.SIZE_2M if e & PS else RmpPageSize.SIZE_4K,
            bool(e & IMM),
            gfn << PAGE_SHIFT if e & A else 0,
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

    Guest-side instruction semantics (RMPADJUST) take the *system* frame the guest's GPA
    translated to; the vCPU does the translation and raises the faults.

    :param npages: number of 4 KiB system pages covered.

    .. versionadded:: 0.1
    """

    __slots__ = ("npages", "_attr", "_gfn", "_big", "_busy", "n_pvalidate", "n_rmpadjust", "n_rmpupdate", "n_psmash")

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self._attr: dict[int, array[int]] = {}
        self._gfn: dict[int, array[int]] = {}
        self._big: dict[int, int] = {}
        #: SFNs in use by a running VMRUN (VMSA pages of running vCPUs): FAIL_INUSE.
        self._busy: set[int] = set()
        self.n_pvalidate = self.n_rmpadjust = self.n_rmpupdate = self.n_psmash = 0

    # -- lookups ---------------------------------------------------------------------------------
    def lookup(self, sfn: int) -> tuple[int, int]:
        """(attribute word, GPA frame recorded for ``sfn``); (0, 0) for a hypervisor page."""
        ci = sfn >> CHUNK_SHIFT
        c = self._attr.get(ci)
        if c is not None:
            i = sfn & CHUNK_MASK
            return c[i], self._gfn[ci][i]
        b = self._big.get(ci)
        if b is not None:
            return b & ATTR_MASK, (b >> GFN_SHIFT) + (sfn & CHUNK_MASK)
        return 0, 0

    def raw(self, sfn: int) -> tuple[int, int]:
        """(attribute word, index of ``sfn`` inside its entry: 0 for 4 KiB entries)."""
        ci = sfn >> CHUNK_SHIFT
        c = self._attr.get(ci)
        if c is not None:
            return c[sfn & CHUNK_MASK], 0
        b = self._big.get(ci)
        if b is not None:
            return b & ATTR_MASK, sfn & CHUNK_MASK
        return 0, 0

    def read(self, sfn: int) -> RmpEntry:
        """Decoded entry for page ``sfn`` (what RMPREAD returns)."""
        e, gfn = self.lookup(sfn)
        return RmpEntry.unpack(e, gfn)

    def guest_owned(self, sfn: int, gfn: int, asid: int) -> int:
        """The attribute word if ``sfn`` is a mutable page of ``asid`` mapped at ``gfn``, else 0.

        Covers the first four checks of Table 15-39 (RMP-covered is the caller's job).
        """
        e, g = self.lookup(sfn)
        if e & OWNER_MASK != A | (asid << ASID_SHIFT) or g != gfn:
            return 0
        return e

    def set_attrs(self, sfn: int, e: int) -> None:
        """Replace the attribute word of the entry covering ``sfn`` (GPA and size unchanged)."""
        ci = sfn >> CHUNK_SHIFT
        c = self._attr.get(ci)
        if c is not None:
            c[sfn & CHUNK_MASK] = e
            return
        b = self._big[ci]
        self._big[ci] = (b & ~ATTR_MASK) | e

    def _set_small(self, sfn: int, e: int, gfn: int) -> None:
        ci = sfn >> CHUNK_SHIFT
        c = self._attr.get(ci)
        if c is None:
            if not e:
                return
            c = self._attr[ci] = array("Q", _EMPTY)
            self._gfn[ci] = array("Q", _EMPTY)
        i = sfn & CHUNK_MASK
        c[i] = e
        self._gfn[ci][i] = gfn if e else 0
        if not e and not any(c):
            del self._attr[ci]
            del self._gfn[ci]

    def set_busy(self, sfn: int, busy: bool) -> None:
        """Mark a VMSA page as in use by a running VMRUN (RMPUPDATE/PSMASH answer FAIL_INUSE)."""
        if busy:
            self._busy.add(sfn)
        else:
            self._busy.discard(sfn)

    # -- guest instructions ----------------------------------------------------------------------
    def rmpadjust(self, sfn: int, e: int, caller_vmpl: int, size: int, attrs: int) -> InstructionResult:
        """Apply RMPADJUST (snp.md 5.3) to an entry that passed the ownership/validation checks.

        :param sfn: any page of the entry; :param e: its attribute word.
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
        self.set_attrs(sfn, e)
        return InstructionResult(RmpadjustResult.SUCCESS)

    # -- hypervisor instructions -----------------------------------------------------------------
    def rmpupdate(self, sfn: int, state: RmpUpdateState) -> InstructionResult:
        """RMPUPDATE (snp.md 5.4): set owner fields; clears VALIDATED, VMSA and the VMPL masks.

        Assignment to a guest gives VMPL0 all permissions and VMPL1-3 none.
        """
        self.n_rmpupdate += 1
        if not 0 <= sfn < self.npages or state.page_size not in (0, 1) or state.asid > 0xFFFF or state.gpa < 0:
            return InstructionResult(RmpupdateResult.FAIL_INPUT)
        big = state.page_size == RmpPageSize.SIZE_2M
        ci = sfn >> CHUNK_SHIFT
        if big and (sfn & CHUNK_MASK or sfn + PAGES_PER_2M > self.npages or state.gpa >> PAGE_SHIFT & CHUNK_MASK):
            return InstructionResult(RmpupdateResult.FAIL_INPUT)
        cur, _ = self.raw(sfn)
        if cur & IMM:
            return InstructionResult(RmpupdateResult.FAIL_PERMISSION)
        if sfn in self._busy:
            return InstructionResult(RmpupdateResult.FAIL_INUSE)
        if big:
            if ci in self._attr:  # 4 KiB entries in the range overlap
                return InstructionResult(RmpupdateResult.FAIL_OVERLAP)
        elif ci in self._big:
            return InstructionResult(RmpupdateResult.FAIL_OVERLAP)
        gfn = state.gpa >> PAGE_SHIFT
        e = 0
        if state.assigned:
            e = A | (state.asid << ASID_SHIFT)
            if state.immutable:
                e |= IMM
            if state.asid:
                e |= VMPL_PERMS_ALL << PERM_SHIFT
        if big:
            if e:
                self._big[ci] = e | PS | (gfn << GFN_SHIFT)
            else:
                self._big.pop(ci, None)
        else:
            self._set_small(sfn, e, gfn)
        return InstructionResult(RmpupdateResult.SUCCESS)

    def psmash(self, sfn: int) -> InstructionResult:
        """PSMASH (snp.md 5.4): split a 2 MiB entry into 512 4 KiB entries, fields copied."""
        self.n_psmash += 1
        if not 0 <= sfn < self.npages or sfn & CHUNK_MASK:
            return InstructionResult(RmpupdateResult.FAIL_INPUT)
        ci = sfn >> CHUNK_SHIFT
        b = self._big.get(ci)
        if b is None:
            return InstructionResult(RmpupdateResult.FAIL_INPUT)
        if any(s in self._busy for s in range(sfn, sfn + PAGES_PER_2M)):
            return InstructionResult(RmpupdateResult.FAIL_INUSE)
        e = b & ATTR_MASK & ~PS
        gfn = b >> GFN_SHIFT
        # Publish the 4 KiB arrays before dropping the 2 MiB entry: a concurrent lookup from
        # another vCPU thread sees either the old entry or the new ones.
        self._gfn[ci] = array("Q", range(gfn, gfn + PAGES_PER_2M))
        self._attr[ci] = array("Q", [e]) * PAGES_PER_2M
        del self._big[ci]
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
        if sfn >> CHUNK_SHIFT in self._big:
            raise ValueError(f"system frame {sfn:#x} is covered by a 2 MiB entry; PSMASH first")
        if not assigned:
            self._set_small(sfn, 0, 0)
            return
        if perms is None:
            perms = (VMPL_PERMS_ALL, 0, 0, 0) if asid else (0, 0, 0, 0)
        e = A | (asid << ASID_SHIFT)
        e |= (VAL if validated else 0) | (VMSA if vmsa else 0) | (IMM if immutable else 0)
        for v, p in enumerate(perms):
            e |= (p & 0xFF) << (PERM_SHIFT + 8 * v)
        self._set_small(sfn, e, gpa >> PAGE_SHIFT)

    def statistics(self) -> RmpStatistics:
        """Counts of entries by kind and of instructions executed."""
        a4 = val = 0
        for c in self._attr.values():
            for e in c:
                if e:
                    a4 += 1
                    if e & VAL:
                        val += 1
        a2 = len(self._big)
        val += sum(1 for b in self._big.values() if b & VAL)
        return RmpStatistics(a4 + a2, a4, a2, val, self.n_pvalidate, self.n_rmpadjust, self.n_rmpupdate, self.n_psmash)

    def items(self) -> list[tuple[int, RmpEntry]]:
        """All non-default entries as (sfn, entry), 2 MiB entries once at their base, sorted."""
        out = []
        for ci, c in self._attr.items():
            g = self._gfn[ci]
            out += [((ci << CHUNK_SHIFT) + i, RmpEntry.unpack(e, g[i])) for i, e in enumerate(c) if e]
        for ci, b in self._big.items():
            out.append((ci << CHUNK_SHIFT, RmpEntry.unpack(b & ATTR_MASK, b >> GFN_SHIFT)))
        return sorted(out)
