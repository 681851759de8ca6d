"""vCPU: VMRUN checks, RUN_VMPL switching with a registered VMPL0 entry, MSRs."""

from __future__ import annotations

import pytest

from svsm.kernel.hw import (
    MSR_GHCB,
    MSR_SEV_STATUS,
    RegisterGhcbRequest,
    RmpupdateResult,
    PAGE_SIZE,
    RunVmplRequest,
    RunVmplResponse,
    SwExitCode,
    Vcpu,
    VmrunError,
)
from svsm.kernel.hw.testing import ghcb_call, make_guest, msr_call

R = 1
GUEST_VMSA = 0x8000
SVSM_GHCB = 200 * PAGE_SIZE
GUEST_GHCB = 201 * PAGE_SIZE


def make_guest_vmsa(p, vmpl: int = 1, features: int = 1) -> None:  # type: ignore[no-untyped-def]
    """What the SVSM does: build a VMPL1 VMSA page, mark it with RMPADJUST, install it."""
    bsp = p.vcpus[0]
    svsm = bsp.view(0)
    svsm.write(GUEST_VMSA, bytes(PAGE_SIZE))
    svsm.write(GUEST_VMSA + 0xCA, bytes([vmpl]))
    svsm.write_u64(GUEST_VMSA + 0x3B0, features)
    assert bsp.rmpadjust(GUEST_VMSA, 0, vmpl | R << 8 | 1 << 16).rc == 0
    bsp.set_vmsa(vmpl, GUEST_VMSA // PAGE_SIZE)


@pytest.fixture
def p():  # type: ignore[no-untyped-def]
    plat = make_guest(private=[(0, 64 * PAGE_SIZE)])
    plat.vcpus[0].vmrun(0)
    make_guest_vmsa(plat)
    return plat


def test_vmrun_requires_rmp_vmsa_page(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    bsp.set_vmsa(2, 0x9)  # an ordinary private page
    p.guest_view(0).write(0x9000 + 0xCA, b"\x02")
    with pytest.raises(VmrunError):
        bsp.vmrun(2)
    assert bsp.vmpl == 0
    bsp.set_vmsa(3, None)
    with pytest.raises(VmrunError):
        bsp.vmrun(3)


def test_vmrun_checks_vmpl_byte_and_features(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    bsp.set_vmsa(2, GUEST_VMSA // PAGE_SIZE)
    with pytest.raises(VmrunError):  # the page says VMPL1
        bsp.vmrun(2)
    bsp.vmsa(1).sev_features = 0
    with pytest.raises(VmrunError):
        bsp.vmrun(1)
    bsp.vmsa(1).sev_features = 1 | 1 << 3 | 1 << 4  # Restricted + Alternate injection
    with pytest.raises(VmrunError):
        bsp.vmrun(1)
    bsp.vmsa(1).sev_features = 1
    bsp.vmrun(1)
    assert bsp.vmpl == 1


def test_sev_status_from_features(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    bsp.vmsa(1).sev_features = 1 | 1 << 1 | 1 << 3
    bsp.vmrun(1)
    assert bsp.rdmsr(MSR_SEV_STATUS) == 0b111 | 1 << 3 | 1 << 5
    with pytest.raises(ValueError):
        bsp.rdmsr(0x10)


def test_run_vmpl_calls_svsm_entry_and_returns(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    seen = []

    def svsm_entry(vcpu: Vcpu) -> None:
        assert vcpu.vmpl == 0
        guest = vcpu.vmsa(1)
        seen.append(guest.rax)
        guest.rax = 0  # SUCCESS
        # The running VMSA is in use (FAIL_INUSE); the suspended guest's would not be.
        svsm_vmsa = vcpu.vmsa_sfn[0] * PAGE_SIZE
        assert vcpu.platform.hypervisor.rmpupdate(svsm_vmsa, 0, assigned=False).rc == RmpupdateResult.FAIL_INUSE
        assert msr_call(vcpu, RunVmplRequest(1)) == RunVmplResponse(0)
        assert vcpu.return_requested

    bsp.register_vmpl_entry(0, svsm_entry)
    bsp.vmrun(1)
    bsp.vmsa().rax = 0x1_0000_0002
    assert msr_call(bsp, RunVmplRequest(0)) == RunVmplResponse(0)
    assert bsp.vmpl == 1 and seen == [0x1_0000_0002] and bsp.vmsa().rax == 0
    # Same through the full GHCB.
    assert msr_call(bsp, RegisterGhcbRequest(GUEST_GHCB // PAGE_SIZE)).gfn == 201
    bsp.vmsa().rax = 7
    out = ghcb_call(bsp, GUEST_GHCB, SwExitCode.SNP_RUN_VMPL, 0)
    assert out.sw_exit_info_1 == 0 and seen == [0x1_0000_0002, 7] and bsp.vmpl == 1
    assert bsp.rdmsr(MSR_GHCB) == GUEST_GHCB
    st = bsp.statistics()
    assert st.vmgexits == 5 and st.vmpl_switches == 6


def test_entry_exception_still_switches_back(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]

    def broken(vcpu: Vcpu) -> None:
        raise RuntimeError("svsm bug")

    bsp.register_vmpl_entry(0, broken)
    bsp.vmrun(1)
    with pytest.raises(RuntimeError):
        msr_call(bsp, RunVmplRequest(0))
    assert bsp.vmpl == 1
    bsp.unregister_vmpl_entry(0)
    assert not bsp.has_entry(0)


def test_wrmsr_only_ghcb(p) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        p.vcpus[0].wrmsr(0x1B, 0)
    p.vcpus[0].halt()
    with pytest.raises(VmrunError):
        p.vcpus[0].wrmsr(MSR_GHCB, 0)


def test_vmgexit_records_exit_code_in_vmsa(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    codes = []
    bsp.register_vmpl_entry(0, lambda vcpu: codes.append(vcpu.vmsa(1).guest_exit_code))
    bsp.vmrun(1)
    bsp.vmsa().guest_exit_code = 0x1234
    msr_call(bsp, RunVmplRequest(0))
    assert codes == [0x403] and bsp.vmsa(1).guest_exit_info_1 == 0


def test_preempt_runs_another_vmpl_between_instructions_and_resumes(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    bsp.vmrun(1)
    guest_sfn, svsm_sfn = bsp.vmsa_sfn[1], bsp.vmsa_sfn[0]
    seen = []

    def handler(v: Vcpu) -> None:
        seen.append((v.vmpl, v.suspended_vmpls, svsm_sfn in p.rmp._busy, guest_sfn in p.rmp._busy))

    with bsp.exec_lock:
        bsp.preempt(0, handler)
    assert seen == [(0, (1,), True, False)]
    assert bsp.vmpl == 1 and bsp.suspended_vmpls == () and guest_sfn in p.rmp._busy and svsm_sfn not in p.rmp._busy
    bsp.halt()
    with bsp.exec_lock:  # an idle vCPU is started at the VMPL and idles again
        bsp.preempt(0, handler)
    assert seen[-1] == (0, (), True, False) and bsp.vmpl is None and svsm_sfn not in p.rmp._busy


def test_preempt_to_an_unrunnable_vmpl_changes_nothing(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    bsp.vmrun(1)
    with bsp.exec_lock, pytest.raises(VmrunError):
        bsp.preempt(2, lambda v: pytest.fail("ran"))
    assert bsp.vmpl == 1 and bsp.suspended_vmpls == () and bsp.vmsa_sfn[1] in p.rmp._busy
