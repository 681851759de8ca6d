"""The honest hypervisor: MSR protocol, NAE events, PSC, guest requests, AP creation."""

from __future__ import annotations

import struct
import uuid

import pytest

from svsm.kernel.hw import (
    PAGE_SIZE,
    CpuidRequest,
    GhcbError,
    GuestTerminated,
    HypervisorFeaturesRequest,
    HypervisorFeaturesResponse,
    PageStateChangeBuffer,
    PageStateChangeEntry,
    PageStateChangeOp,
    PageStateChangeRequest,
    PageStateChangeResponse,
    RegisterGhcbRequest,
    RegisterGhcbResponse,
    SevInfoRequest,
    SevInfoResponse,
    SwExitCode,
    TerminationRequest,
    build_cert_table,
)
from svsm.kernel.hw.testing import ghcb_call, make_guest, msr_call

GHCB = 300 * PAGE_SIZE
TWO_M = 512


@pytest.fixture
def p():  # type: ignore[no-untyped-def]
    plat = make_guest(memory_size=8 << 20, private=[(0, 64 * PAGE_SIZE)])
    bsp = plat.vcpus[0]
    bsp.vmrun(0)
    assert msr_call(bsp, RegisterGhcbRequest(GHCB // PAGE_SIZE)) == RegisterGhcbResponse(GHCB // PAGE_SIZE)
    return plat


def test_sev_info_features_cpuid(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    assert msr_call(bsp, SevInfoRequest()) == SevInfoResponse(2, 1, 51)
    feats = msr_call(bsp, HypervisorFeaturesRequest())
    assert isinstance(feats, HypervisorFeaturesResponse) and feats.features & 0b100011 == 0b100011
    ebx = msr_call(bsp, CpuidRequest(0x8000_001F, 1))
    assert ebx.value & 0x3F == 51 and (ebx.value >> 12) & 0xF == 4  # type: ignore[attr-defined]
    out = ghcb_call(bsp, GHCB, SwExitCode.HYPERVISOR_FEATURES)
    assert out.sw_exit_info_1 == 0 and out.sw_exit_info_2 == feats.features


def test_unregistered_ghcb_terminates(p) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GuestTerminated):
        ghcb_call(p.vcpus[0], GHCB + PAGE_SIZE, SwExitCode.HYPERVISOR_FEATURES)
    assert p.hypervisor.statistics().terminated is not None


def test_missing_valid_bits_and_unknown_events(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    out = ghcb_call(bsp, GHCB, 0x8000_0099)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.INVALID_EVENT)
    # Extended guest request without RAX/RBX marked valid.
    p.psp = FakePsp()
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_EXT_GUEST_REQUEST, 0x1000, 0x2000)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.MISSING_INPUT)
    assert p.hypervisor.statistics().errors == 2


def test_termination(p) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GuestTerminated) as ei:
        msr_call(p.vcpus[0], TerminationRequest(1, 2))
    assert (ei.value.reason_set, ei.value.reason_code) == (1, 2)
    with pytest.raises(GuestTerminated):  # nothing runs afterwards
        msr_call(p.vcpus[0], SevInfoRequest())


def test_ghcb_termination(p) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GuestTerminated) as ei:
        ghcb_call(p.vcpus[0], GHCB, SwExitCode.TERMINATION_REQUEST, 1 | 3 << 4)
    assert (ei.value.reason_set, ei.value.reason_code) == (1, 3)


def test_msr_page_state_change(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    view = bsp.view(0)
    view.write(0x3000, b"private data")
    assert bsp.pvalidate(0x3000, validate=False).rc == 0
    assert msr_call(bsp, PageStateChangeRequest(3, 2)) == PageStateChangeResponse(0)
    assert not p.rmp.read(3).assigned
    ct = p.host.read(0x3000, 12)
    assert ct != b"private data"  # private->shared exposes ciphertext, not plaintext
    assert msr_call(bsp, PageStateChangeRequest(3, 1)) == PageStateChangeResponse(0)
    assert bsp.pvalidate(0x3000).rc == 0
    assert view.read(0x3000, 12) != b"private data"  # shared->private: garbage, not the old data
    assert msr_call(bsp, PageStateChangeRequest(0xFFFFF, 1)).error != 0  # type: ignore[attr-defined]


def _psc(p, entries, cur=0):  # type: ignore[no-untyped-def]
    buf = PageStateChangeBuffer(tuple(entries), cur_entry=cur)
    out = ghcb_call(p.vcpus[0], GHCB, SwExitCode.SNP_PAGE_STATE_CHANGE, shared_buffer=buf.encode())
    return out, PageStateChangeBuffer.decode(out.shared_buffer)


def test_ghcb_psc_4k_and_2m(p) -> None:  # type: ignore[no-untyped-def]
    out, back = _psc(
        p,
        [
            PageStateChangeEntry(100, PageStateChangeOp.PRIVATE),
            PageStateChangeEntry(TWO_M, PageStateChangeOp.PRIVATE, huge=True),
        ],
    )
    assert out.sw_exit_info_1 == 0 and out.sw_exit_info_2 == 0
    assert back.done and back.entries[1].cur_page == 512
    assert p.rmp.read(100).assigned and p.rmp.read(TWO_M + 5).page_size == 1
    bsp = p.vcpus[0]
    assert bsp.pvalidate(TWO_M * PAGE_SIZE, size=1).rc == 0
    # PSMASH then 4K ops inside.
    out, back = _psc(p, [PageStateChangeEntry(TWO_M, PageStateChangeOp.PSMASH, huge=True)])
    assert out.sw_exit_info_2 == 0 and p.rmp.read(TWO_M + 5).page_size == 0 and p.rmp.read(TWO_M + 5).validated
    assert bsp.pvalidate((TWO_M + 5) * PAGE_SIZE, validate=False).rc == 0
    out, _ = _psc(p, [PageStateChangeEntry(TWO_M + 5, PageStateChangeOp.SHARED)])
    assert out.sw_exit_info_2 == 0 and not p.rmp.read(TWO_M + 5).assigned
    # UNSMASH needs all 512 private.
    out, back = _psc(p, [PageStateChangeEntry(TWO_M, PageStateChangeOp.UNSMASH, huge=True)])
    assert out.sw_exit_info_2 != 0 and back.cur_entry == 0
    _psc(p, [PageStateChangeEntry(TWO_M + 5, PageStateChangeOp.PRIVATE)])
    out, back = _psc(p, [PageStateChangeEntry(TWO_M, PageStateChangeOp.UNSMASH, huge=True)])
    assert out.sw_exit_info_2 == 0 and back.done
    e = p.rmp.read(TWO_M + 5)
    assert e.page_size == 1 and not e.validated  # collapsed; the guest must re-validate at 2 MiB
    # 2 MiB to shared in one go.
    out, _ = _psc(p, [PageStateChangeEntry(TWO_M, PageStateChangeOp.SHARED, huge=True)])
    assert out.sw_exit_info_2 == 0 and not p.rmp.read(TWO_M + 511).assigned


def test_ghcb_psc_2m_falls_back_to_4k_and_resumes(p) -> None:  # type: ignore[no-untyped-def]
    p.hypervisor.rmpupdate((TWO_M + 3) * PAGE_SIZE, (TWO_M + 3) * PAGE_SIZE, assigned=True)
    out, back = _psc(p, [PageStateChangeEntry(TWO_M, PageStateChangeOp.PRIVATE, huge=True)])
    assert out.sw_exit_info_2 == 0 and back.entries[0].cur_page == 512
    assert p.rmp.read(TWO_M).page_size == 0 and all(p.rmp.read(TWO_M + i).assigned for i in range(512))
    # cur_page says how much is done: starting at 500 only touches 500..511.
    _psc(p, [PageStateChangeEntry(TWO_M, PageStateChangeOp.SHARED, huge=True, cur_page=500)])
    assert p.rmp.read(TWO_M + 499).assigned and not p.rmp.read(TWO_M + 500).assigned
    # cur_entry skips processed entries.
    _psc(p, [PageStateChangeEntry(110, PageStateChangeOp.PRIVATE), PageStateChangeEntry(111, PageStateChangeOp.PRIVATE)], cur=1)
    assert not p.rmp.read(110).assigned and p.rmp.read(111).assigned


def test_ghcb_psc_bad_scratch_and_buffer(p) -> None:  # type: ignore[no-untyped-def]
    buf = PageStateChangeBuffer((PageStateChangeEntry(100, PageStateChangeOp.PRIVATE),)).encode()
    out = ghcb_call(p.vcpus[0], GHCB, SwExitCode.SNP_PAGE_STATE_CHANGE, shared_buffer=buf, scratch=0x1000)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.INVALID_SCRATCH_AREA)
    bad = struct.pack("<HHIQ", 0, 0, 0, 9 << 52 | 100 << 12)
    out = ghcb_call(p.vcpus[0], GHCB, SwExitCode.SNP_PAGE_STATE_CHANGE, shared_buffer=bad)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.INVALID_INPUT)
    assert not p.rmp.read(100).assigned


class FakeFirmwareError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.fw_error = status


class FakePsp:
    """Stands in for svsm.kernel.hw.psp: echoes the request reversed."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.fail: int | None = None

    def guest_request(self, request: bytes) -> bytes:
        self.requests.append(request)
        if self.fail is not None:
            raise FakeFirmwareError(self.fail)
        return request[::-1]

    def certificates(self):  # type: ignore[no-untyped-def]
        return [(uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"), b"V" * 3000), (uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"), b"A" * 2000)]


def test_guest_request_copies_pages_through_psp(p) -> None:  # type: ignore[no-untyped-def]
    psp = FakePsp()
    p.psp = psp
    view = p.vcpus[0].view(0)
    req, resp = 310 * PAGE_SIZE, 311 * PAGE_SIZE
    view.write(req, b"REQUEST" + bytes(PAGE_SIZE - 7), c_bit=False)
    out = ghcb_call(p.vcpus[0], GHCB, SwExitCode.SNP_GUEST_REQUEST, req, resp)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (0, 0)
    assert psp.requests[0][:7] == b"REQUEST" and view.read(resp + PAGE_SIZE - 7, 7, c_bit=False) == b"TSEUQER"
    psp.fail = 0x16
    out = ghcb_call(p.vcpus[0], GHCB, SwExitCode.SNP_GUEST_REQUEST, req, resp)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (0, 0x16)
    # A private response page: the hypervisor cannot write it.
    psp.fail = None
    out = ghcb_call(p.vcpus[0], GHCB, SwExitCode.SNP_GUEST_REQUEST, req, 0x1000)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.INVALID_INPUT)
    assert p.hypervisor.statistics().guest_requests == 3


def test_ext_guest_request_certificates(p) -> None:  # type: ignore[no-untyped-def]
    p.psp = FakePsp()
    view = p.vcpus[0].view(0)
    req, resp, certs = 310 * PAGE_SIZE, 311 * PAGE_SIZE, 320 * PAGE_SIZE
    out = ghcb_call(p.vcpus[0], GHCB, SwExitCode.SNP_EXT_GUEST_REQUEST, req, resp, rax=certs, rbx=1)
    assert out.sw_exit_info_2 == 1 << 32 and out.rbx == 2  # INVALID_LEN, 2 pages needed
    out = ghcb_call(p.vcpus[0], GHCB, SwExitCode.SNP_EXT_GUEST_REQUEST, req, resp, rax=certs, rbx=2)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (0, 0)
    table = view.read(certs, 2 * PAGE_SIZE, c_bit=False)
    guid, off, length = table[:16], *struct.unpack_from("<II", table, 16)
    assert uuid.UUID(bytes_le=guid) == uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
    assert off == 72 and length == 3000 and table[off : off + length] == b"V" * 3000
    assert struct.unpack_from("<II", table, 40) == (72 + 3000, 2000)
    assert table[48:72] == bytes(24)  # terminating zero entry
    assert build_cert_table([]) == bytes(24)


def test_ap_creation(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    svsm = bsp.view(0)
    vmsa = 0x8000
    svsm.write(vmsa, bytes(PAGE_SIZE))
    svsm.write(vmsa + 0xCA, b"\x01")
    svsm.write_u64(vmsa + 0x3B0, 1)
    assert bsp.rmpadjust(vmsa, 0, 1 | 1 << 8 | 1 << 16).rc == 0
    info1 = 1 | 1 << 16 | 5 << 32  # CREATE, VMPL1, APIC 5
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_AP_CREATION, info1, vmsa, rax=1)
    assert out.sw_exit_info_1 == 0
    ap = p.vcpu_by_apic_id(5)
    assert ap is not None and ap.vmsa_sfn[1] == vmsa // PAGE_SIZE
    ap.vmrun(1)
    assert ap.vmpl == 1 and ap.rdmsr(0xC001_0131) & 0b111 == 0b111
    ap.halt()
    # CREATE_ON_INIT installs only at INIT.
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_AP_CREATION, 0 | 2 << 16 | 5 << 32, vmsa, rax=1)
    assert out.sw_exit_info_1 == 0 and ap.vmsa_sfn[2] is None
    p.hypervisor.send_init(5)
    assert ap.vmsa_sfn[2] == vmsa // PAGE_SIZE
    # DESTROY, bad op, unaligned VMSA, missing RAX.
    assert ghcb_call(bsp, GHCB, SwExitCode.SNP_AP_CREATION, 2 | 1 << 16 | 5 << 32, 0).sw_exit_info_1 == 0
    assert ap.vmsa_sfn[1] is None
    for info1, info2, regs in ((7 | 5 << 32, vmsa, {"rax": 1}), (1 | 5 << 32, vmsa + 8, {"rax": 1}), (1 | 5 << 32, vmsa, {})):
        out = ghcb_call(bsp, GHCB, SwExitCode.SNP_AP_CREATION, info1, info2, **regs)
        assert out.sw_exit_info_1 == 2
    # A page that is not RMP VMSA-marked is refused at creation ...
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_AP_CREATION, 1 | 3 << 16 | 5 << 32, 0x9000, rax=1)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.INVALID_INPUT) and ap.vmsa_sfn[3] is None
    # ... and one whose VMSA bit is revoked after creation cannot be VMRUN.
    assert ghcb_call(bsp, GHCB, SwExitCode.SNP_AP_CREATION, 1 | 1 << 16 | 5 << 32, vmsa, rax=1).sw_exit_info_1 == 0
    assert bsp.rmpadjust(vmsa, 0, 1 | 1 << 8).rc == 0  # VMSA bit cleared
    from svsm.kernel.hw import VmrunError

    with pytest.raises(VmrunError):
        ap.vmrun(1)


def test_statistics_count_events(p) -> None:  # type: ignore[no-untyped-def]
    msr_call(p.vcpus[0], SevInfoRequest())
    ghcb_call(p.vcpus[0], GHCB, SwExitCode.HYPERVISOR_FEATURES)
    st = p.hypervisor.statistics()
    assert dict(st.msr_requests)["SevInfoRequest"] == 1 and dict(st.msr_requests)["RegisterGhcbRequest"] == 1
    assert dict(st.nae_events)["HYPERVISOR_FEATURES"] == 1 and st.vmgexits == 3


def test_cpuid_nae_and_run_vmpl_to_unrunnable_vmpl(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    out = ghcb_call(bsp, GHCB, SwExitCode.CPUID, rax=0x8000_001F, rcx=0)
    assert out.sw_exit_info_1 == 0 and out.get("rbx") & 0x3F == 51 and out.get("rax") & 0x30 == 0x30
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_RUN_VMPL, 2)  # no VMSA for VMPL2
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.INVALID_INPUT) and bsp.vmpl == 0
    from svsm.kernel.hw import RunVmplRequest, RunVmplResponse

    assert msr_call(bsp, RunVmplRequest(3)) == RunVmplResponse(1)
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_AP_CREATION, 1 | 1 << 16 | 5 << 32, 0x8000, rax=0)  # not SNPActive
    assert out.sw_exit_info_1 == 2 and p.vcpu_by_apic_id(5) is None


def test_dirty_log_loses_nothing_under_concurrent_writes(p) -> None:  # type: ignore[no-untyped-def]
    import threading

    hv = p.hypervisor
    hv.enable_dirty_logging()
    view = p.guest_view(0)
    done = threading.Event()

    def writer() -> None:
        for round_ in range(3):
            for gfn in range(64):
                view.write(gfn * PAGE_SIZE, bytes([round_]))
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    seen: set[int] = set()
    while not done.is_set():
        seen |= hv.get_dirty_log()
    t.join()
    seen |= hv.get_dirty_log()
    assert seen == set(range(64))


def test_ghcb_usage_and_missing_fields(p) -> None:  # type: ignore[no-untyped-def]
    from svsm.kernel.hw import GhcbPage

    bsp = p.vcpus[0]
    view = bsp.view(0)
    g = GhcbPage()
    g.set("sw_exit_code", SwExitCode.HYPERVISOR_FEATURES)
    g.set("sw_exit_info_1", 0)
    g.set("sw_exit_info_2", 0)
    g.ghcb_usage = 1
    view.write(GHCB, g.to_bytes(), c_bit=False)
    bsp.wrmsr(0xC001_0130, GHCB)
    bsp.vmgexit()
    out = GhcbPage(view.read(GHCB, PAGE_SIZE, c_bit=False))
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.INVALID_USAGE)
    g = GhcbPage()
    g.set("sw_exit_code", SwExitCode.HYPERVISOR_FEATURES)  # info1/info2 not marked valid
    view.write(GHCB, g.to_bytes(), c_bit=False)
    bsp.vmgexit()
    out = GhcbPage(view.read(GHCB, PAGE_SIZE, c_bit=False))
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.MISSING_INPUT)
    out = ghcb_call(bsp, GHCB, SwExitCode.CPUID)  # RAX (the leaf) not marked valid
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.MISSING_INPUT)


def test_guest_request_error_paths(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    req, resp = 310 * PAGE_SIZE, 311 * PAGE_SIZE
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_GUEST_REQUEST, req, resp)  # no PSP attached
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.INVALID_EVENT)
    psp = FakePsp()
    p.psp = psp
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_GUEST_REQUEST, p.memory_size + PAGE_SIZE, resp)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.INVALID_INPUT)
    # The certificate buffer must be shared: the host cannot write a private page.
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_EXT_GUEST_REQUEST, req, resp, rax=0x1000, rbx=2)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (2, GhcbError.INVALID_INPUT)
    # A PSP failure that is not a firmware status is a bug, and it propagates.
    def broken(request: bytes) -> bytes:
        raise RuntimeError("psp bug")

    psp.guest_request = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        ghcb_call(bsp, GHCB, SwExitCode.SNP_GUEST_REQUEST, req, resp)
    with pytest.raises(ValueError):
        p.hypervisor.send_init(42)


def test_psc_edge_results(p) -> None:  # type: ignore[no-untyped-def]
    hv = p.hypervisor
    # 2 MiB private over a region holding an immutable page: 4K fallback stops at that page.
    p.firmware.set_rmp((TWO_M + 7) * PAGE_SIZE, assigned=True, gpa=0, immutable=True, asid=0)
    err, entry = hv.page_state_change(PageStateChangeEntry(TWO_M, PageStateChangeOp.PRIVATE, huge=True))
    assert err == 2 and entry.cur_page == 7  # FAIL_PERMISSION at page 7; 0..6 done
    assert all(p.rmp.read(TWO_M + i).assigned for i in range(7))
    # UNSMASH of a region that is not 2M-aligned in the NPT is refused.
    hv.remap(1024, 1025)
    assert hv.page_state_change(PageStateChangeEntry(1024, PageStateChangeOp.UNSMASH, huge=True))[0] != 0
    assert hv.page_state_change(PageStateChangeEntry(1024, PageStateChangeOp.PRIVATE, huge=True))[0] == 0
    # GFNs 1024 and 1025 both landed on frame 1025 (the later RMPUPDATE wins); frame 1024 is unused.
    assert not p.rmp.read(1024).assigned and p.rmp.read(1025).gpa == 1025 * PAGE_SIZE
    hv.remap(1024, 1024)
    assert hv.get_dirty_log.__self__ is hv
    hv.enable_dirty_logging()
    p.guest_view(0).write(0x1000, b"x")
    assert hv.get_dirty_log(clear=False) == {1} == hv.get_dirty_log()
    with pytest.raises(ValueError):
        _attach_to_another_platform(p)


def _attach_to_another_platform(p):  # type: ignore[no-untyped-def]
    from svsm.kernel.hw import Platform

    other = Platform(memory_size=1 << 20)
    p.hypervisor.attach(other)


def test_vmpl_interrupt_only_between_instructions() -> None:
    """deliver_vmpl_interrupt: refused while another thread executes on the vCPU, or when the
    vCPU already runs that VMPL; otherwise the handler runs at that VMPL and the guest resumes."""
    import threading

    plat = make_guest(memory_size=8 << 20, private=[(0, 64 * PAGE_SIZE)])
    bsp, hv = plat.vcpus[0], plat.hypervisor
    bsp.vmrun(0)
    ran: list[int | None] = []
    assert not hv.deliver_vmpl_interrupt(bsp, 0, lambda v: ran.append(v.vmpl))  # already at VMPL0
    bsp.halt()
    held, release = threading.Event(), threading.Event()

    def guest_instruction() -> None:
        with bsp.exec_lock:
            held.set()
            release.wait()

    th = threading.Thread(target=guest_instruction)
    th.start()
    held.wait()
    assert not hv.deliver_vmpl_interrupt(bsp, 0, lambda v: ran.append(v.vmpl))
    release.set()
    th.join()
    assert hv.deliver_vmpl_interrupt(bsp, 0, lambda v: ran.append(v.vmpl))
    assert ran == [0] and bsp.vmpl is None and hv.n_vmpl_interrupts == 1
