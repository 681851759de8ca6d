"""Random page-state traffic through the honest hypervisor keeps the platform's invariants.

Rules mix what a guest does (PSC via the GHCB, PVALIDATE, RMPADJUST, private writes) with what the
host does (PSMASH); invariants check the RMP's structure and that data the guest wrote to a page
that stayed private and validated is still there.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from svsm.kernel.hw import (
    PAGE_SIZE,
    NestedPageFault,
    PageStateChangeBuffer,
    PageStateChangeEntry,
    PageStateChangeOp,
    RegisterGhcbRequest,
    SwExitCode,
    VmmCommunicationException,
)
from svsm.kernel.hw.testing import ghcb_call, make_guest, msr_call

REGION = 2 * 512  # guest frames under test: two 2 MiB regions
#: A few frames per region, so random sequences keep hitting the same pages.
FRAMES = st.sampled_from([0, 1, 2, 300, 511, 512, 513, 1000])
GHCB = 3 * 512 * PAGE_SIZE


class PlatformMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.p = make_guest(memory_size=8 << 20, private=[], validated=False)
        self.v = self.p.vcpus[0]
        self.v.vmrun(0)
        msr_call(self.v, RegisterGhcbRequest(GHCB // PAGE_SIZE))
        self.view = self.v.view(0)
        self.written: dict[int, bytes] = {}
        self.counter = 0

    @initialize()
    def start_private(self) -> None:
        """Region 0: one validated 2 MiB page; region 1: validated 4 KiB pages; data in both."""
        self.psc(0, PageStateChangeOp.PRIVATE, True)
        assert self.v.pvalidate(0, 1, True).rc == 0
        for gfn in (512, 513, 1000):
            self.psc(gfn, PageStateChangeOp.PRIVATE, False)
            assert self.v.pvalidate(gfn * PAGE_SIZE).rc == 0
        for gfn in (0, 1, 2, 300, 511, 512, 513, 1000):
            self.write(gfn)
        assert len(self.written) == 8

    def _forget(self, gfn: int, huge: bool) -> None:
        lo = gfn & ~511 if huge else gfn
        for g in range(lo, lo + (512 if huge else 1)):
            self.written.pop(g, None)

    @rule(gfn=FRAMES, op=st.sampled_from(list(PageStateChangeOp)), huge=st.booleans())
    def psc(self, gfn: int, op: PageStateChangeOp, huge: bool) -> None:
        if op in (PageStateChangeOp.PSMASH, PageStateChangeOp.UNSMASH):
            huge = True
        if huge:
            gfn &= ~511
        entry = PageStateChangeEntry(gfn, op, huge)
        out = ghcb_call(self.v, GHCB, SwExitCode.SNP_PAGE_STATE_CHANGE, shared_buffer=PageStateChangeBuffer((entry,)).encode())
        assert out.sw_exit_info_1 == 0
        if op is not PageStateChangeOp.PSMASH:
            self._forget(gfn, huge)

    @rule(gfn=FRAMES, huge=st.booleans(), validate=st.booleans())
    def pvalidate(self, gfn: int, huge: bool, validate: bool) -> None:
        if huge:
            gfn &= ~511
        try:
            self.v.pvalidate(gfn * PAGE_SIZE, int(huge), validate)
        except NestedPageFault:
            return
        if not validate:
            self._forget(gfn, huge)

    @rule(gfn=FRAMES)
    def write(self, gfn: int) -> None:
        self.counter += 1
        data = self.counter.to_bytes(8, "little")
        try:
            self.view.write(gfn * PAGE_SIZE + 8, data)
        except (NestedPageFault, VmmCommunicationException):
            return
        self.written[gfn] = data

    @rule(gfn=FRAMES, tgt=st.integers(1, 3), perms=st.integers(0, 0x1F))
    def rmpadjust(self, gfn: int, tgt: int, perms: int) -> None:
        try:
            self.v.rmpadjust(gfn * PAGE_SIZE, 0, tgt | perms << 8)
        except (NestedPageFault, VmmCommunicationException):
            return

    @invariant()
    def guest_data_survives(self) -> None:
        for gfn, data in self.written.items():
            assert self.view.read(gfn * PAGE_SIZE + 8, 8) == data

    @invariant()
    def rmp_structure(self) -> None:
        rmp = self.p.rmp
        assert not set(rmp._attr) & set(rmp._big)
        for sfn, e in rmp.items():
            if sfn >= REGION:
                continue
            assert e.gpa == sfn * PAGE_SIZE and e.asid == self.p.asid
            assert not e.immutable and not e.vmsa
            for v in (1, 2, 3):
                assert e.perms[v] & ~e.perms[0] == 0
            if e.page_size:
                assert sfn % 512 == 0


TestPlatformMachine = PlatformMachine.TestCase
TestPlatformMachine.settings = settings(max_examples=20, stateful_step_count=20, deadline=None)
