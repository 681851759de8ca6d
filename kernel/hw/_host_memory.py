"""The hypervisor's memory-management half: RMPUPDATE/PSMASH, the nested page table, page
state changes and dirty-page logging (snp.md 4.4, 5.4).

:class:`~._hypervisor.Hypervisor` builds on it; everything here uses only host powers (the RMP
instructions the host may execute and the host view of memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._constants import PAGE_SHIFT, PAGE_SIZE, PAGES_PER_2M, RmpPageSize, RmpupdateResult
from ._psc import PageStateChangeEntry, PageStateChangeOp
from ._rmp import PS, InstructionResult, RmpUpdateState

if TYPE_CHECKING:
    from ._platform import Platform

__all__ = ["HostMemoryManager"]


class HostMemoryManager:
    """Host-side memory operations of a hypervisor attached to one :class:`Platform`."""

    _platform: Platform | None = None

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, platform: Platform) -> None:
        """Called by :class:`Platform` once; a hypervisor serves one machine."""
        if self._platform is not None and self._platform is not platform:
            raise ValueError("hypervisor already attached to another platform")
        self._platform = platform

    @property
    def platform(self) -> Platform:
        """The machine this hypervisor runs."""
        if self._platform is None:
            raise ValueError("hypervisor not attached to a platform")
        return self._platform

    # -- host-side RMP and NPT operations -------------------------------------------------------
    def rmpupdate(self, spa: int, gpa: int, *, assigned: bool, page_size: int = 0, immutable: bool = False, asid: int | None = None) -> InstructionResult:
        """RMPUPDATE (snp.md 5.4) of the page at ``spa``; asid defaults to the guest's if assigned."""
        if asid is None:
            asid = self.platform.asid if assigned else 0
        return self.platform.rmp.rmpupdate(spa >> PAGE_SHIFT, RmpUpdateState(gpa, assigned, page_size, immutable, asid))

    def psmash(self, spa: int) -> InstructionResult:
        """PSMASH (snp.md 5.4) of the 2 MiB entry at ``spa``."""
        return self.platform.rmp.psmash(spa >> PAGE_SHIFT)

    def remap(self, gfn: int, sfn: int | None) -> None:
        """Point guest frame ``gfn`` at system frame ``sfn`` in the nested page table (None: unmap)."""
        if sfn == gfn:
            self.platform.npt.pop(gfn, None)
        else:
            self.platform.npt[gfn] = sfn

    def gpa_to_spa(self, gpa: int) -> int:
        """Translate through the nested page table."""
        return self.platform.host.translate(gpa)

    # -- dirty logging ---------------------------------------------------------------------------
    def enable_dirty_logging(self, enabled: bool = True) -> None:
        """Start (or stop) recording which guest frames the guest writes."""
        self.platform.dirty_log = set() if enabled else None

    def get_dirty_log(self, *, clear: bool = True) -> set[int]:
        """GFNs written since the last call (and clear the log).

        :raises ValueError: logging is off.
        """
        log_ = self.platform.dirty_log
        if log_ is None:
            raise ValueError("dirty logging is not enabled")
        if not clear:
            return set(log_)
        # set.pop() is atomic: a write racing with this loop is either collected now or stays
        # in the log for the next round, never lost (pre-copy relies on that).
        out = set()
        pop = log_.pop
        while True:
            try:
                out.add(pop())
            except KeyError:
                return out

    def get_dirty_bitmap(self, *, clear: bool = True) -> bytes:
        """The dirty log as a bitmap, one bit per guest frame (bit n of byte n//8 = GFN n)."""
        npages = self.platform.memory.npages
        bm = bytearray((npages + 7) // 8)
        for gfn in self.get_dirty_log(clear=clear):
            bm[gfn >> 3] |= 1 << (gfn & 7)
        return bytes(bm)

    def page_state_change(self, entry: PageStateChangeEntry) -> tuple[int, PageStateChangeEntry]:
        """Carry out one PSC entry: RMPUPDATE/PSMASH/UNSMASH on the frames behind it.

        :returns: (error, updated entry); error 0 = done, else the failing RMP return code (or
            0xFFFF_FFFF for a GFN outside guest memory).
        """
        platform = self.platform
        npages = platform.memory.npages
        count = PAGES_PER_2M if entry.huge else 1
        if entry.gfn + count > npages:
            return 0xFFFF_FFFF, entry
        op = entry.operation
        if op is PageStateChangeOp.PSMASH:
            spa = self.gpa_to_spa(entry.gpa)
            if not platform.rmp.raw(spa >> PAGE_SHIFT)[0] & PS:
                return 0, entry  # already 4 KiB entries: nothing to smash
            return self.psmash(spa).rc, entry
        if op is PageStateChangeOp.UNSMASH:
            return self._unsmash(entry), entry
        private = op is PageStateChangeOp.PRIVATE
        if entry.huge and entry.cur_page == 0:
            rc = self._change_2m(entry.gfn, private)
            if rc == 0:
                return 0, PageStateChangeEntry(entry.gfn, entry.operation, True, PAGES_PER_2M)
        for i in range(entry.cur_page, count):
            rc = self._change_4k(entry.gfn + i, private)
            if rc:
                return rc, PageStateChangeEntry(entry.gfn, entry.operation, entry.huge, i if entry.huge else 0)
        return 0, PageStateChangeEntry(entry.gfn, entry.operation, entry.huge, count if entry.huge else 0)

    def _change_4k(self, gfn: int, private: bool) -> int:
        platform = self.platform
        spa = self.gpa_to_spa(gfn << PAGE_SHIFT)
        sfn = spa >> PAGE_SHIFT
        e, sub = platform.rmp.raw(sfn)
        if e & PS:
            rc = self.psmash(spa - sub * PAGE_SIZE)
            if rc.rc:
                return rc.rc
            e, sub = platform.rmp.raw(sfn)
        cur = platform.rmp.read(sfn)
        if private:
            if cur.assigned and cur.asid == platform.asid and cur.gpa == gfn << PAGE_SHIFT:
                return 0  # already private: nothing to do (KVM treats it as a no-op)
            # Hand the guest a fresh page: like KVM's guest_memfd, a private GPA gets new backing,
            # so the guest can never decrypt stale DRAM back into old plaintext.
            platform.memory.discard(sfn)
            return self.rmpupdate(spa, gfn << PAGE_SHIFT, assigned=True).rc
        if not cur.assigned:
            return 0
        return self.rmpupdate(spa, 0, assigned=False).rc

    def _change_2m(self, gfn: int, private: bool) -> int:
        platform = self.platform
        spa = self.gpa_to_spa(gfn << PAGE_SHIFT)
        sfn = spa >> PAGE_SHIFT
        npt = platform.npt
        if sfn % PAGES_PER_2M or (npt and any(npt.get(g) is not None for g in range(gfn, gfn + PAGES_PER_2M))):
            return RmpupdateResult.FAIL_INPUT
        if private:
            platform.memory.discard_run(sfn, PAGES_PER_2M)
        return self.rmpupdate(spa, gfn << PAGE_SHIFT, assigned=private, page_size=RmpPageSize.SIZE_2M).rc

    def _unsmash(self, entry: PageStateChangeEntry) -> int:
        """Collapse 512 private 4 KiB entries into one 2 MiB entry (VALIDATED is lost)."""
        platform = self.platform
        spa = self.gpa_to_spa(entry.gpa)
        sfn = spa >> PAGE_SHIFT
        if sfn % PAGES_PER_2M:
            return RmpupdateResult.FAIL_INPUT
        first = platform.rmp.read(sfn)
        if first.page_size == RmpPageSize.SIZE_2M:
            return 0
        for i in range(PAGES_PER_2M):
            cur = platform.rmp.read(sfn + i)
            if not cur.assigned or cur.asid != platform.asid or cur.gpa != entry.gpa + i * PAGE_SIZE or cur.immutable:
                return RmpupdateResult.FAIL_INPUT
        for i in range(PAGES_PER_2M):
            rc = self.rmpupdate(spa + i * PAGE_SIZE, 0, assigned=False)
            if rc.rc:
                return rc.rc
        return self.rmpupdate(spa, entry.gpa, assigned=True, page_size=RmpPageSize.SIZE_2M).rc
