"""A malicious host against the simulated SNP platform: what the hardware must refuse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.kernel.hw import (
    PAGE_SIZE,
    HostPageFault,
    NestedPageFault,
    PageStateChangeBuffer,
    PageStateChangeEntry,
    PageStateChangeOp,
    PageStateChangeRequest,
    PvalidateResult,
    RegisterGhcbRequest,
    RmpadjustResult,
    SwExitCode,
    VmmCommunicationException,
)
from svsm.kernel.hw.adversary import AdversarialHypervisor
from svsm.kernel.hw.testing import ghcb_call, make_guest, msr_call

SECRET = b"-----BEGIN VMPCK----- 0123456789abcdef -----END VMPCK-----"
GHCB = 300 * PAGE_SIZE


@pytest.fixture
def p():  # type: ignore[no-untyped-def]
    plat = make_guest(memory_size=4 << 20, private=[(0, 128 * PAGE_SIZE)], hypervisor=AdversarialHypervisor())
    plat.vcpus[0].vmrun(0)
    msr_call(plat.vcpus[0], RegisterGhcbRequest(GHCB // PAGE_SIZE))
    return plat


def test_host_never_sees_plaintext_anywhere(p) -> None:  # type: ignore[no-untyped-def]
    hv: AdversarialHypervisor = p.hypervisor
    view = p.guest_view(0)
    for page in range(0, 128, 7):
        view.write(page * PAGE_SIZE + 100, SECRET)
    dump = hv.steal(0, p.memory_size)
    assert SECRET not in dump and SECRET[:16] not in dump


def test_same_plaintext_gives_different_ciphertext_per_address(p) -> None:  # type: ignore[no-untyped-def]
    hv: AdversarialHypervisor = p.hypervisor
    view = p.guest_view(0)
    view.write(0x1000, b"Z" * PAGE_SIZE)
    view.write(0x2000, b"Z" * PAGE_SIZE)
    a, b = hv.steal(0x1000, PAGE_SIZE), hv.steal(0x2000, PAGE_SIZE)
    assert a != b and a[:16] != a[16:32]


@settings(max_examples=25, deadline=None)
@given(offset=st.integers(0, 128 * PAGE_SIZE - 64), junk=st.binary(min_size=1, max_size=64))
def test_host_writes_to_private_memory_are_refused(offset: int, junk: bytes) -> None:
    plat = make_guest(memory_size=4 << 20, private=[(0, 128 * PAGE_SIZE)], hypervisor=AdversarialHypervisor())
    view = plat.guest_view(0)
    view.write(offset, SECRET[:64])
    before = plat.host.read(offset & ~0xFFF, 2 * PAGE_SIZE)
    with pytest.raises(HostPageFault) as ei:
        plat.hypervisor.scribble(offset, junk)
    assert ei.value.rmp
    assert plat.host.read(offset & ~0xFFF, 2 * PAGE_SIZE) == before
    assert view.read(offset, len(SECRET)) == SECRET


def test_rmpadjust_cannot_raise_permissions_above_caller(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    gpa = 0x7000
    assert bsp.rmpadjust(gpa, 0, 1 | 0x3 << 8).rc == 0  # VMPL1: R|W
    for caller, target, perms in [(1, 2, 0x1F), (1, 2, 0x4), (1, 1, 0x1F), (1, 0, 0x1F), (2, 3, 0x1), (3, 3, 0x1), (2, 1, 0x3)]:
        before = p.rmp.read(gpa >> 12)
        rc = bsp.rmpadjust(gpa, 0, target | perms << 8, vmpl=caller).rc
        assert rc == RmpadjustResult.FAIL_PERMISSION, (caller, target, perms)
        assert p.rmp.read(gpa >> 12) == before
    # VMPL1 cannot make a VMSA page either: the bit is ignored outside VMPL0.
    assert bsp.rmpadjust(gpa, 0, 2 | 0x1 << 8 | 1 << 16, vmpl=1).rc == 0
    assert not p.rmp.read(gpa >> 12).vmsa


@pytest.mark.parametrize("vmpl", [1, 2, 3])
def test_pvalidate_only_at_vmpl0(p, vmpl: int) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    for validate in (False, True):
        before = p.rmp.read(5)
        assert bsp.pvalidate(0x5000, validate=validate, vmpl=vmpl).rc == PvalidateResult.FAIL_PERMISSION
        assert p.rmp.read(5) == before


def test_shared_to_private_yields_garbage(p) -> None:  # type: ignore[no-untyped-def]
    bsp = p.vcpus[0]
    view = bsp.view(0)
    view.write(0x9000, SECRET)
    assert bsp.pvalidate(0x9000, validate=False).rc == 0
    msr_call(bsp, PageStateChangeRequest(9, 2))
    exposed = p.hypervisor.steal(0x9000, len(SECRET))
    assert exposed != SECRET
    msr_call(bsp, PageStateChangeRequest(9, 1))
    assert bsp.pvalidate(0x9000).rc == 0
    assert view.read(0x9000, len(SECRET)) not in (SECRET, exposed)


def test_ciphertext_moved_to_another_address_decrypts_to_garbage(p) -> None:  # type: ignore[no-untyped-def]
    """Copying a private page's ciphertext elsewhere and handing it to the guest gains nothing."""
    hv: AdversarialHypervisor = p.hypervisor
    bsp = p.vcpus[0]
    view = bsp.view(0)
    view.write(0xA000, SECRET)
    # The host copies frame 0xA's ciphertext into frame 200 and assigns 200 itself (no scrub).
    hv.copy_frame(0xA, 200)
    assert hv.steal(200 * PAGE_SIZE, PAGE_SIZE) == hv.steal(0xA000, PAGE_SIZE)
    assert hv.rmpupdate(200 * PAGE_SIZE, 200 * PAGE_SIZE, assigned=True).rc == 0
    assert bsp.pvalidate(200 * PAGE_SIZE).rc == 0
    assert view.read(200 * PAGE_SIZE, len(SECRET)) != SECRET  # the address tweak differs
    assert view.read(0xA000, len(SECRET)) == SECRET


def test_remap_is_caught_by_the_reverse_map(p) -> None:  # type: ignore[no-untyped-def]
    hv: AdversarialHypervisor = p.hypervisor
    view = p.guest_view(0)
    view.write(0xB000, b"page B")
    view.write(0xC000, b"page C")
    hv.remap(0xB, 0xC)  # guest's GPA 0xB000 now lands on frame 0xC
    with pytest.raises(NestedPageFault):
        view.read(0xB000, 6)
    hv.remap(0xB, 0xB)
    assert view.read(0xB000, 6) == b"page B"


def test_silent_reassignment_is_detected_as_not_validated(p) -> None:  # type: ignore[no-untyped-def]
    hv: AdversarialHypervisor = p.hypervisor
    view = p.guest_view(0)
    view.write(0xD000, b"precious")
    assert hv.rmpupdate(0xD000, 0xD000, assigned=False).rc == 0
    assert hv.rmpupdate(0xD000, 0xD000, assigned=True).rc == 0
    with pytest.raises(VmmCommunicationException) as ei:
        view.read(0xD000, 8)
    assert ei.value.error_code == 0x404


def test_lying_psc_is_detected_at_pvalidate(p) -> None:  # type: ignore[no-untyped-def]
    hv: AdversarialHypervisor = p.hypervisor
    hv.fake_psc_success = True
    bsp = p.vcpus[0]
    buf = PageStateChangeBuffer((PageStateChangeEntry(250, PageStateChangeOp.PRIVATE),)).encode()
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_PAGE_STATE_CHANGE, shared_buffer=buf)
    assert out.sw_exit_info_2 == 0  # the lie
    with pytest.raises(NestedPageFault):
        bsp.pvalidate(250 * PAGE_SIZE)


def test_dropped_event_leaves_guest_request_unanswered(p) -> None:  # type: ignore[no-untyped-def]
    hv: AdversarialHypervisor = p.hypervisor
    hv.drop_events.add(SwExitCode.HYPERVISOR_FEATURES)
    out = ghcb_call(p.vcpus[0], GHCB, SwExitCode.HYPERVISOR_FEATURES)
    assert out.sw_exit_code == SwExitCode.HYPERVISOR_FEATURES and out.sw_exit_info_2 == 0 and hv.dropped == 1


def test_dirty_log_lies_are_possible_so_migration_must_not_trust_it(p) -> None:  # type: ignore[no-untyped-def]
    hv: AdversarialHypervisor = p.hypervisor
    hv.enable_dirty_logging()
    hv.hide_dirty = {3}
    p.guest_view(0).write(0x3000, b"x")
    p.guest_view(0).write(0x4000, b"x")
    assert hv.get_dirty_log() == {4}


def test_replayed_and_tampered_guest_requests(p) -> None:  # type: ignore[no-untyped-def]
    """The hypervisor can replay or alter what it relays; only the PSP's crypto can refuse it."""

    class EchoPsp:
        def guest_request(self, request: bytes) -> bytes:
            return request

        def certificates(self):  # type: ignore[no-untyped-def]
            return []

    hv: AdversarialHypervisor = p.hypervisor
    p.psp = EchoPsp()
    view = p.guest_view(0)
    req, resp = 310 * PAGE_SIZE, 311 * PAGE_SIZE
    view.write(req, b"first".ljust(PAGE_SIZE, b"\0"), c_bit=False)
    ghcb_call(p.vcpus[0], GHCB, SwExitCode.SNP_GUEST_REQUEST, req, resp)
    hv.replay_guest_requests = True
    hv.tamper_response = lambda page: b"X" + page[1:]
    view.write(req, b"second".ljust(PAGE_SIZE, b"\0"), c_bit=False)
    ghcb_call(p.vcpus[0], GHCB, SwExitCode.SNP_GUEST_REQUEST, req, resp)
    assert view.read(resp, 5, c_bit=False) == b"Xirst"
    assert [r[:6] for r in hv.recorded_requests] == [b"first\0", b"second"]
