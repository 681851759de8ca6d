"""RMP instruction semantics (snp.md 5.2-5.4) and a random-sequence state machine."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from svsm.kernel.hw import (
    PAGE_SIZE,
    PAGE_SIZE_2M,
    NestedPageFault,
    PvalidateResult,
    RmpadjustResult,
    RmpEntry,
    RmpPageSize,
    RmpupdateResult,
    RmpUpdateState,
    VmmCommunicationException,
)
from svsm.kernel.hw.testing import make_guest

R, W, XU, XS = 1, 2, 4, 8
RMPADJUST_VMSA = 1 << 16
FOUR_M = 4 << 20


@pytest.fixture
def p():  # type: ignore[no-untyped-def]
    plat = make_guest(memory_size=8 << 20, private=[(0, 16 * PAGE_SIZE)], validated=False)
    plat.vcpus[0].vmrun(0)
    return plat


def test_rmpupdate_operand_layout() -> None:
    s = RmpUpdateState(0x1234000, True, 1, False, 7)
    raw = s.to_bytes()
    assert len(raw) == 16 and raw[8:12] == bytes([1, 1, 0, 0]) and raw[12:16] == (7).to_bytes(4, "little")
    assert RmpUpdateState.from_bytes(raw) == s


def test_entry_raw_layout() -> None:
    e = RmpEntry(True, 1, True, 0x200000, 5, True, True, (0x1F, 1, 0, 0))
    lo = int.from_bytes(e.to_bytes()[:8], "little")
    assert lo & 1 and lo >> 1 & 1 and lo >> 2 & 1 and (lo >> 12) & ((1 << 39) - 1) == 0x200
    assert (lo >> 51) & 0x3FF == 5 and lo >> 61 & 1 and lo >> 62 & 1


def test_pvalidate_rules(p) -> None:  # type: ignore[no-untyped-def]
    v = p.vcpus[0]
    assert v.pvalidate(0x1000) == (PvalidateResult.SUCCESS, False)
    assert p.rmp.read(1).validated
    assert v.pvalidate(0x1000) == (PvalidateResult.SUCCESS, True)  # CF=1: unchanged
    assert v.pvalidate(0x1000, validate=False) == (PvalidateResult.SUCCESS, False)
    assert not p.rmp.read(1).validated
    assert v.pvalidate(0x1001).rc == PvalidateResult.FAIL_INPUT
    assert v.pvalidate(0x1000, size=2).rc == PvalidateResult.FAIL_INPUT
    assert v.pvalidate(0, size=1).rc == PvalidateResult.FAIL_SIZEMISMATCH  # 2M on 4K entries
    assert v.pvalidate(0x1000, vmpl=1).rc == PvalidateResult.FAIL_PERMISSION
    assert not p.rmp.read(1).validated
    with pytest.raises(NestedPageFault):
        v.pvalidate(0x100000)  # hypervisor page


def test_pvalidate_2m(p) -> None:  # type: ignore[no-untyped-def]
    hv = p.hypervisor
    assert hv.rmpupdate(PAGE_SIZE_2M, PAGE_SIZE_2M, assigned=True, page_size=1).rc == 0
    v = p.vcpus[0]
    with pytest.raises(NestedPageFault) as ei:
        v.pvalidate(PAGE_SIZE_2M + PAGE_SIZE)  # 4K on a 2M entry: SIZEM
    assert ei.value.size_mismatch
    assert v.pvalidate(PAGE_SIZE_2M, size=1) == (0, False)
    assert p.rmp.read(512 + 77).validated and p.rmp.read(512 + 77).gpa == PAGE_SIZE_2M + 77 * PAGE_SIZE
    p.guest_view(0).write(PAGE_SIZE_2M + 77 * PAGE_SIZE, b"in a huge page")
    assert hv.psmash(PAGE_SIZE_2M).rc == 0
    e = p.rmp.read(512 + 77)
    assert e.page_size == RmpPageSize.SIZE_4K and e.validated and e.gpa == PAGE_SIZE_2M + 77 * PAGE_SIZE
    assert p.guest_view(0).read(PAGE_SIZE_2M + 77 * PAGE_SIZE, 14) == b"in a huge page"
    assert v.pvalidate(PAGE_SIZE_2M, size=1).rc == PvalidateResult.FAIL_SIZEMISMATCH


def test_rmpupdate_rules(p) -> None:  # type: ignore[no-untyped-def]
    hv = p.hypervisor
    v = p.vcpus[0]
    assert v.pvalidate(0x2000).rc == 0
    assert hv.rmpupdate(0x2000, 0x2000, assigned=True).rc == 0
    e = p.rmp.read(2)
    assert e.assigned and not e.validated and e.perms == (0x1F, 0, 0, 0)  # re-assign clears VALIDATED
    assert hv.rmpupdate(PAGE_SIZE_2M + PAGE_SIZE, 0, assigned=True).rc == 0
    assert hv.rmpupdate(PAGE_SIZE_2M, PAGE_SIZE_2M, assigned=True, page_size=1).rc == RmpupdateResult.FAIL_OVERLAP
    assert hv.rmpupdate(PAGE_SIZE_2M + PAGE_SIZE, 0, assigned=False).rc == 0
    assert hv.rmpupdate(PAGE_SIZE_2M, PAGE_SIZE_2M, assigned=True, page_size=1).rc == 0
    assert hv.rmpupdate(PAGE_SIZE_2M + PAGE_SIZE, 0, assigned=False).rc == RmpupdateResult.FAIL_OVERLAP
    assert hv.rmpupdate(PAGE_SIZE, 0, assigned=True, page_size=1).rc == RmpupdateResult.FAIL_INPUT  # unaligned 2M
    assert hv.psmash(PAGE_SIZE_2M + PAGE_SIZE).rc == RmpupdateResult.FAIL_INPUT
    assert hv.psmash(0).rc == RmpupdateResult.FAIL_INPUT  # not a 2M entry
    p.firmware.set_rmp(0x3000, assigned=True, gpa=0x3000, immutable=True)
    assert hv.rmpupdate(0x3000, 0, assigned=False).rc == RmpupdateResult.FAIL_PERMISSION
    vmsa_spa = p.vcpus[0].vmsa_sfn[0] * PAGE_SIZE
    assert hv.rmpupdate(vmsa_spa, 0, assigned=False).rc == RmpupdateResult.FAIL_INUSE  # running VMSA


def test_rmpadjust_rules(p) -> None:  # type: ignore[no-untyped-def]
    v = p.vcpus[0]
    v.pvalidate(0x4000)
    assert v.rmpadjust(0x4000, 0, 1 | (R | W) << 8) == (RmpadjustResult.SUCCESS, False)
    assert p.rmp.read(4).perms == (0x1F, R | W, 0, 0)
    # VMPL1 may lower VMPL2 within its own rights, never grant more or touch itself / VMPL0.
    assert v.rmpadjust(0x4000, 0, 2 | R << 8, vmpl=1).rc == 0
    assert v.rmpadjust(0x4000, 0, 2 | (R | XS) << 8, vmpl=1).rc == RmpadjustResult.FAIL_PERMISSION
    assert v.rmpadjust(0x4000, 0, 1 | 0x1F << 8, vmpl=1).rc == RmpadjustResult.FAIL_PERMISSION
    assert v.rmpadjust(0x4000, 0, 0 | 0x1F << 8, vmpl=1).rc == RmpadjustResult.FAIL_PERMISSION
    assert v.rmpadjust(0x4000, 0, 0, vmpl=0).rc == RmpadjustResult.FAIL_PERMISSION  # own VMPL
    assert p.rmp.read(4).perms == (0x1F, R | W, R, 0)
    # Reserved bits / target out of range.
    assert v.rmpadjust(0x4000, 0, 4).rc == RmpadjustResult.FAIL_INPUT
    assert v.rmpadjust(0x4000, 0, 1 | 0x20 << 8).rc == RmpadjustResult.FAIL_INPUT
    assert v.rmpadjust(0x4000, 0, 1 | 1 << 17).rc == RmpadjustResult.FAIL_INPUT
    assert v.rmpadjust(0x4000, 1, 1).rc == RmpadjustResult.FAIL_INPUT  # unaligned 2M
    v.pvalidate(0)
    assert v.rmpadjust(0, 1, 1).rc == RmpadjustResult.FAIL_SIZEMISMATCH
    # VMSA bit: only at VMPL0.
    assert v.rmpadjust(0x4000, 0, 2 | R << 8 | RMPADJUST_VMSA, vmpl=1).rc == 0
    assert not p.rmp.read(4).vmsa
    assert v.rmpadjust(0x4000, 0, 1 | R << 8 | RMPADJUST_VMSA).rc == 0
    assert p.rmp.read(4).vmsa and p.rmp.read(4).perms[1] == R
    # Not validated: #VC.
    with pytest.raises(VmmCommunicationException):
        v.rmpadjust(0x5000, 0, 1 | R << 8)


def test_statistics_count(p) -> None:  # type: ignore[no-untyped-def]
    p.vcpus[0].pvalidate(0x1000)
    p.hypervisor.psmash(0)
    st = p.rmp.statistics()
    assert st.pvalidate == 1 and st.psmash == 1 and st.validated >= 2 and st.assigned_4k >= 17
    assert p.vcpus[0].statistics().pvalidates == 1


# --------------------------------------------------------------------------------------------
# State machine: random RMPUPDATE / PSMASH / PVALIDATE / RMPADJUST keep the invariants.

PAGES = 1024  # two 2 MiB regions


class RmpMachine(RuleBasedStateMachine):
    """A reference model of assigned/validated/perms per page, checked against the RMP."""

    def __init__(self) -> None:
        super().__init__()
        self.p = make_guest(memory_size=FOUR_M + 4 * PAGE_SIZE, private=[], validated=False)
        self.v = self.p.vcpus[0]
        self.v.vmrun(0)
        # model: gfn -> [assigned, validated, perms tuple] for 4K; big: set of 2M bases
        self.model: dict[int, list] = {}
        self.big: set[int] = set()

    def _cover(self, gfn: int) -> int | None:
        base = gfn & ~511
        return base if base in self.big else None

    @rule(gfn=st.integers(0, PAGES - 1), assign=st.booleans(), huge=st.booleans())
    def rmpupdate(self, gfn: int, assign: bool, huge: bool) -> None:
        if huge:
            gfn &= ~511
        rc = self.p.hypervisor.rmpupdate(gfn * PAGE_SIZE, gfn * PAGE_SIZE, assigned=assign, page_size=int(huge)).rc
        if huge:
            overlap = any(self.model.get(g) for g in range(gfn + 1, gfn + 512)) or (gfn in self.model and gfn not in self.big)
            if overlap:
                assert rc == RmpupdateResult.FAIL_OVERLAP
                return
            assert rc == 0
            self.big.discard(gfn)
            self.model.pop(gfn, None)
            if assign:
                self.big.add(gfn)
                self.model[gfn] = [True, False, (0x1F, 0, 0, 0)]
        else:
            if self._cover(gfn) is not None:
                assert rc == RmpupdateResult.FAIL_OVERLAP
                return
            assert rc == 0
            if assign:
                self.model[gfn] = [True, False, (0x1F, 0, 0, 0)]
            else:
                self.model.pop(gfn, None)

    @rule(gfn=st.integers(0, PAGES - 1))
    def psmash(self, gfn: int) -> None:
        base = gfn & ~511
        rc = self.p.hypervisor.psmash(base * PAGE_SIZE).rc
        if base in self.big:
            assert rc == 0
            self.big.discard(base)
            state = self.model[base]
            for i in range(512):
                self.model[base + i] = list(state)
        else:
            assert rc == RmpupdateResult.FAIL_INPUT

    @rule(gfn=st.integers(0, PAGES - 1), huge=st.booleans(), validate=st.booleans())
    def pvalidate(self, gfn: int, huge: bool, validate: bool) -> None:
        if huge:
            gfn &= ~511
        base = self._cover(gfn)
        key = base if base is not None else gfn
        if key not in self.model:
            with pytest.raises(NestedPageFault):
                self.v.pvalidate(gfn * PAGE_SIZE, int(huge), validate)
            return
        if not huge and base is not None:
            with pytest.raises(NestedPageFault) as ei:
                self.v.pvalidate(gfn * PAGE_SIZE, 0, validate)
            assert ei.value.size_mismatch
            return
        res = self.v.pvalidate(gfn * PAGE_SIZE, int(huge), validate)
        if huge and base is None:
            assert res.rc == PvalidateResult.FAIL_SIZEMISMATCH
            return
        state = self.model[key]
        assert res == (0, state[1] == validate)
        state[1] = validate

    @rule(gfn=st.integers(0, PAGES - 1), caller=st.integers(0, 3), tgt=st.integers(0, 3), perms=st.integers(0, 0x1F))
    def rmpadjust(self, gfn: int, caller: int, tgt: int, perms: int) -> None:
        base = self._cover(gfn)
        if base is not None or gfn not in self.model:
            with pytest.raises(NestedPageFault):
                self.v.rmpadjust(gfn * PAGE_SIZE, 0, tgt | perms << 8, vmpl=caller)
            return
        state = self.model[gfn]
        if not state[1]:
            with pytest.raises(VmmCommunicationException):
                self.v.rmpadjust(gfn * PAGE_SIZE, 0, tgt | perms << 8, vmpl=caller)
            return
        rc = self.v.rmpadjust(gfn * PAGE_SIZE, 0, tgt | perms << 8, vmpl=caller).rc
        if tgt <= caller or perms & ~state[2][caller]:
            assert rc == RmpadjustResult.FAIL_PERMISSION
            return
        assert rc == 0
        new = list(state[2])
        new[tgt] = perms
        state[2] = tuple(new)

    @invariant()
    def rmp_matches_model(self) -> None:
        rmp = self.p.rmp
        for gfn in range(0, PAGES, 37):
            e = rmp.read(gfn)
            base = self._cover(gfn)
            key = base if base is not None else gfn
            want = self.model.get(key)
            if want is None:
                assert not e.assigned
                continue
            assert e.assigned and e.validated == want[1] and e.perms == want[2]
            assert e.gpa == gfn * PAGE_SIZE and e.asid == self.p.asid
            assert e.page_size == (1 if base is not None else 0)

    @invariant()
    def no_vmpl_exceeds_vmpl0(self) -> None:
        """RMPADJUST can never give a lower VMPL a right VMPL0 lacks (VMPL0 starts with all)."""
        for gfn, state in self.model.items():
            for v in range(1, 4):
                assert state[2][v] & ~state[2][0] == 0


TestRmpMachine = RmpMachine.TestCase
TestRmpMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_storage_is_compact_and_freed(p) -> None:  # type: ignore[no-untyped-def]
    rmp = p.rmp
    hv = p.hypervisor
    base = rmp.statistics().entries
    assert hv.rmpupdate(PAGE_SIZE_2M, PAGE_SIZE_2M, assigned=True, page_size=1).rc == 0
    assert rmp.statistics().assigned_2m == 1 and rmp.statistics().entries == base + 1
    assert [s for s, e in rmp.items() if e.page_size == 1] == [512]
    assert hv.psmash(PAGE_SIZE_2M).rc == 0
    assert rmp.statistics().assigned_4k == base + 512 and rmp.statistics().assigned_2m == 0
    for i in range(512):
        assert hv.rmpupdate(PAGE_SIZE_2M + i * PAGE_SIZE, 0, assigned=False).rc == 0
    assert 1 not in rmp._attr and rmp.statistics().entries == base  # the chunk was released
    assert rmp.read(512).gpa == 0 and not rmp.read(512).assigned
    # firmware_set refuses pages under a 2 MiB entry.
    hv.rmpupdate(PAGE_SIZE_2M, PAGE_SIZE_2M, assigned=True, page_size=1)
    with pytest.raises(ValueError):
        p.firmware.set_rmp(PAGE_SIZE_2M + PAGE_SIZE, assigned=True, gpa=0)


def test_rmpadjust_on_a_2m_entry_and_immutable_rmpupdate(p) -> None:  # type: ignore[no-untyped-def]
    hv = p.hypervisor
    v = p.vcpus[0]
    assert hv.rmpupdate(PAGE_SIZE_2M, PAGE_SIZE_2M, assigned=True, page_size=1).rc == 0
    assert v.pvalidate(PAGE_SIZE_2M, size=1).rc == 0
    assert v.rmpadjust(PAGE_SIZE_2M, 1, 1 | R << 8) == (RmpadjustResult.SUCCESS, False)
    assert all(p.rmp.read(512 + i).perms == (0x1F, R, 0, 0) for i in (0, 7, 511))
    p.guest_view(1).read(PAGE_SIZE_2M + 7 * PAGE_SIZE, 4)
    with pytest.raises(NestedPageFault) as ei:  # 4K RMPADJUST on the 2M entry: SIZEM
        v.rmpadjust(PAGE_SIZE_2M + PAGE_SIZE, 0, 1 | R << 8)
    assert ei.value.size_mismatch
    # The guest's VMSA page is busy while that VMPL runs: PSMASH answers FAIL_INUSE.
    p.rmp.set_busy(512 + 3, True)
    assert hv.psmash(PAGE_SIZE_2M).rc == RmpupdateResult.FAIL_INUSE
    p.rmp.set_busy(512 + 3, False)
    # RMPUPDATE can set IMMUTABLE (firmware pages); after that only the AMD-SP can change it.
    assert hv.rmpupdate(0x9000, 0x9000, assigned=True, immutable=True, asid=0).rc == 0
    e = p.rmp.read(9)
    assert e.immutable and e.asid == 0 and e.perms == (0, 0, 0, 0)
    assert hv.rmpupdate(0x9000, 0, assigned=False).rc == RmpupdateResult.FAIL_PERMISSION
    with pytest.raises(NestedPageFault):
        p.guest_view(0).read(0x9000, 1)
    assert hv.rmpupdate(p.memory_size, 0, assigned=True).rc == RmpupdateResult.FAIL_INPUT
    with pytest.raises(ValueError):
        p.firmware.set_rmp(p.memory_size, assigned=True)
    p.firmware.set_rmp(0x9000, assigned=False)
    assert not p.rmp.read(9).assigned
