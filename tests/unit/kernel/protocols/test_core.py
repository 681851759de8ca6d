"""Every result code of every core-protocol call (coconut-svsm.md 2.2, 2.3; docs/protocols.md)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from svsm.kernel.hw import VMSA, NestedPageFault, PageStateChangeEntry, PageStateChangeOp, VmmCommunicationException
from svsm.sdk import ResultCode
from svsm.sdk.guest import (
    SVSM_ATTEST_PROTOCOL,
    SVSM_CORE_PROTOCOL,
    SVSM_REQ_CORE_CONFIGURE_VTOM,
    SVSM_REQ_CORE_CREATE_VCPU,
    SVSM_REQ_CORE_DELETE_VCPU,
    SVSM_REQ_CORE_DEPOSIT_MEM,
    SVSM_REQ_CORE_PVALIDATE,
    SVSM_REQ_CORE_QUERY_PROTOCOL,
    SVSM_REQ_CORE_REMAP_CA,
    SVSM_REQ_CORE_WITHDRAW_MEM,
    PageList,
    PageListEntry,
    PvalidateEntry,
)

RC = ResultCode
PAGE = 0x1000


def core(g: Any, call: int, rcx: int = 0, rdx: int = 0, r8: int = 0) -> Any:
    return g.svsm_call(SVSM_CORE_PROTOCOL, call, rcx, rdx, r8)


def pvalidate_raw(g: Any, raw_entries: list[int], *, at: int | None = None, next_: int = 0) -> tuple[int, int]:
    """Write a PVALIDATE list at ``at`` (default CAA+8), call, return (RAX, next written back)."""
    gpa = g.caa + 8 if at is None else at
    g.mem.write(gpa, PageList.build(raw_entries, next_))
    r = core(g, SVSM_REQ_CORE_PVALIDATE, gpa)
    return r.rax, struct.unpack("<H", g.mem.read(gpa + 2, 2))[0]


def vmsa_bytes(g: Any, **fields: int) -> bytes:
    v = VMSA()
    v.vmpl, v.efer, v.sev_features = g.vmpl, (1 << 8) | (1 << 10) | (1 << 12), g.sev_features()
    for k, val in fields.items():
        setattr(v, k, val)
    return bytes(v)


# -- QUERY_PROTOCOL, CONFIGURE_VTOM, unknown numbers -----------------------------------------------
def test_query_protocol(guest: Any) -> None:
    r = core(guest, SVSM_REQ_CORE_QUERY_PROTOCOL, 0 << 32 | 1)
    assert (r.rax, r.rcx) == (RC.SUCCESS, 1 << 32 | 1)
    assert core(guest, SVSM_REQ_CORE_QUERY_PROTOCOL, 1 << 32 | 1).rcx == 1 << 32 | 1
    assert core(guest, SVSM_REQ_CORE_QUERY_PROTOCOL, 0 << 32 | 2).rcx == 0  # version not served
    assert core(guest, SVSM_REQ_CORE_QUERY_PROTOCOL, 2 << 32 | 1).rcx == 0  # no vTPM module
    assert guest.query_protocol(7) is None


def test_configure_vtom(guest: Any) -> None:
    r = core(guest, SVSM_REQ_CORE_CONFIGURE_VTOM, 1)
    assert (r.rax, r.rcx) == (RC.SUCCESS, 0)
    assert core(guest, SVSM_REQ_CORE_CONFIGURE_VTOM, 0).rax == RC.INVALID_REQUEST


def test_unknown_call_and_protocol(guest: Any) -> None:
    assert core(guest, 8).rax == RC.UNSUPPORTED_CALL
    assert core(guest, 0xFFFF_FFFF).rax == RC.UNSUPPORTED_CALL
    assert guest.svsm_call(99, 0).rax == RC.UNSUPPORTED_PROTOCOL
    assert guest.svsm_call(SVSM_ATTEST_PROTOCOL, 2).rax == RC.UNSUPPORTED_PROTOCOL  # upstream quirk


# -- PVALIDATE --------------------------------------------------------------------------------------
def test_pvalidate_rescind_and_validate(guest: Any) -> None:
    p = guest.pool.take()
    guest.mem.write(p, b"secret")
    assert pvalidate_raw(guest, [PvalidateEntry(p, validate=False).to_raw()]) == (RC.SUCCESS, 1)
    with pytest.raises(VmmCommunicationException):
        guest.mem.read(p, 8)
    assert pvalidate_raw(guest, [PvalidateEntry(p).to_raw()]) == (RC.SUCCESS, 1)
    assert guest.mem.read(p, 6) == bytes(6)  # the SVSM zeroes what it validates


def test_pvalidate_unchanged_and_ignore_cf(guest: Any) -> None:
    p = guest.pool.take()
    assert pvalidate_raw(guest, [PvalidateEntry(p).to_raw()]) == (RC.PVALIDATE_FAIL_UNCHANGED, 0)
    assert pvalidate_raw(guest, [PvalidateEntry(p, ignore_cf=True).to_raw()]) == (RC.SUCCESS, 1)


@pytest.mark.parametrize("bits", [1 << 4, 1 << 11, 0x2, 0x3])
def test_pvalidate_bad_entry_stops_and_writes_next(guest: Any, bits: int) -> None:
    a, b = guest.pool.take(), guest.pool.take()
    rax, nxt = pvalidate_raw(guest, [PvalidateEntry(a, ignore_cf=True).to_raw(), b | 0x4 | bits])
    assert (rax, nxt) == (RC.INVALID_PARAMETER, 1)


def test_pvalidate_header_rules(guest: Any) -> None:
    p = guest.pool.take()
    e = PvalidateEntry(p, ignore_cf=True).to_raw()
    assert pvalidate_raw(guest, [])[0] == RC.INVALID_PARAMETER  # entries == 0
    assert pvalidate_raw(guest, [e, e], next_=2)[0] == RC.INVALID_PARAMETER  # next >= entries
    assert pvalidate_raw(guest, [e, e], next_=1) == (RC.SUCCESS, 2)  # starts at next
    page = guest.pool.take()
    assert pvalidate_raw(guest, [e, e], at=page + 0xFF0)[0] == RC.INVALID_PARAMETER  # only 1 fits
    guest.mem.write(page + 0x10, PageList.build([e]))
    assert core(guest, SVSM_REQ_CORE_PVALIDATE, page + 0x14).rax == RC.INVALID_PARAMETER  # misaligned list


def test_pvalidate_2m_misaligned_and_size_mismatch(guest: Any, cvm: Any) -> None:
    assert pvalidate_raw(guest, [0x10_1000 | 0x1 | 0x4])[0] == RC.INVALID_PARAMETER
    # [4 MiB, 6 MiB) made private as 512 4 KiB RMP entries: a 2 MiB PVALIDATE is a size mismatch
    guest._psc([PageStateChangeEntry((0x40_0000 >> 12) + i, PageStateChangeOp.PRIVATE) for i in range(512)])
    assert pvalidate_raw(guest, [PvalidateEntry(0x40_0000, huge=True).to_raw()]) == (RC.PVALIDATE_FAIL_SIZEMISMATCH, 0)
    guest.pvalidate([PvalidateEntry(0x40_0000, huge=True)])  # the driver falls back to 4 KiB entries
    assert guest.mem.read(0x5F_F000, 4) == bytes(4)


def test_pvalidate_4k_on_2m_entry_is_smashed(guest: Any, cvm: Any) -> None:
    # [2 MiB, 4 MiB) was accepted as one 2 MiB page; rescinding one 4 KiB page needs a PSMASH first
    assert pvalidate_raw(guest, [PvalidateEntry(0x20_3000, validate=False).to_raw()]) == (RC.SUCCESS, 1)
    assert cvm.platform.rmp.read(0x203).page_size == 0


def test_pvalidate_addresses(guest: Any, cvm: Any) -> None:
    svsm = cvm.layout.svsm_base
    for gpa in (svsm, svsm + 0x10_0000, cvm.platform.memory_size, 1 << 40):
        assert pvalidate_raw(guest, [PvalidateEntry(gpa).to_raw()])[0] == RC.INVALID_ADDRESS
    assert pvalidate_raw(guest, [PvalidateEntry(0x60_0000).to_raw()])[0] == RC.INVALID_ADDRESS  # never assigned
    ap = guest.start_ap(1)
    for gpa in guest.aps[1][1:]:  # the AP's VMSA page and its calling area
        assert pvalidate_raw(guest, [PvalidateEntry(gpa, validate=False).to_raw()])[0] == RC.INVALID_ADDRESS
    assert ap.query_protocol(0) == (1, 1)
    assert core(guest, SVSM_REQ_CORE_PVALIDATE, 0x60_0000).rax == RC.INVALID_ADDRESS  # list not accepted
    assert core(guest, SVSM_REQ_CORE_PVALIDATE, svsm).rax == RC.INVALID_ADDRESS  # list in the SVSM


# -- REMAP_CA -------------------------------------------------------------------------------------------
def test_remap_ca(guest: Any, cvm: Any) -> None:
    assert core(guest, SVSM_REQ_CORE_REMAP_CA, guest.caa + 8).rax == RC.INVALID_PARAMETER
    assert core(guest, SVSM_REQ_CORE_REMAP_CA, cvm.layout.svsm_base).rax == RC.INVALID_ADDRESS
    assert core(guest, SVSM_REQ_CORE_REMAP_CA, 1 << 40).rax == RC.INVALID_ADDRESS
    assert core(guest, SVSM_REQ_CORE_REMAP_CA, guest.caa).rax == RC.SUCCESS  # same CAA: no-op
    guest.start_ap(1)
    assert core(guest, SVSM_REQ_CORE_REMAP_CA, guest.aps[1][2]).rax == RC.INVALID_ADDRESS  # the AP's CAA
    assert core(guest, SVSM_REQ_CORE_REMAP_CA, guest.aps[1][1]).rax == RC.INVALID_ADDRESS  # the AP's VMSA
    new = guest.pool.take()
    guest.mem.write(new, b"\xff" * 8)
    assert core(guest, SVSM_REQ_CORE_REMAP_CA, new).rax == RC.SUCCESS
    assert guest.mem.read(new, 8) == bytes(8)  # the new CAA header is zeroed
    guest.caa = new
    assert guest.query_protocol(0) == (1, 1)
    assert cvm.svsm.core.statistics().cas_remapped == 1


# -- CREATE_VCPU / DELETE_VCPU ----------------------------------------------------------------------------
def create(g: Any, vmsa: int, caa: int, apic: int = 1) -> int:
    return int(core(g, SVSM_REQ_CORE_CREATE_VCPU, vmsa, caa, apic).rax)


def test_create_vcpu_address_rules(guest: Any, cvm: Any) -> None:
    v, c = guest.pool.take(), guest.pool.take()
    guest.mem.write(v, vmsa_bytes(guest))
    assert create(guest, v + 8, c) == RC.INVALID_ADDRESS
    assert create(guest, v, c + 8) == RC.INVALID_ADDRESS
    assert create(guest, v, v) == RC.INVALID_ADDRESS
    assert create(guest, cvm.layout.svsm_base, c) == RC.INVALID_ADDRESS
    assert create(guest, v, 1 << 40) == RC.INVALID_ADDRESS
    assert create(guest, v, guest.caa) == RC.INVALID_ADDRESS  # the BSP's registered CAA
    assert create(guest, v, c, apic=77) == RC.INVALID_PARAMETER
    assert create(guest, 0x60_0000, c) == RC.INVALID_ADDRESS  # VMSA page never accepted
    assert cvm.svsm.registry.statistics().registered == 1


@pytest.mark.parametrize("field", [dict(vmpl=1), dict(vmpl=3), dict(efer=1 << 8), dict(sev_features=0x3)])
def test_create_vcpu_vmsa_checks_roll_back(guest: Any, cvm: Any, field: dict[str, int]) -> None:
    v, c = guest.pool.take(), guest.pool.take()
    guest.mem.write(v, vmsa_bytes(guest, **field))
    assert create(guest, v, c) == RC.INVALID_PARAMETER
    guest.mem.write(v, b"mine again")  # the page went back to the guest
    assert cvm.platform.rmp.read(v >> 12).vmsa is False
    assert cvm.svsm.registry.statistics().registered == 1


def test_create_and_delete_vcpu(guest: Any, cvm: Any) -> None:
    v, c = guest.pool.take(), guest.pool.take()
    guest.mem.write(v, vmsa_bytes(guest))
    assert create(guest, v, c) == RC.SUCCESS
    with pytest.raises(NestedPageFault):  # the guest lost access to its VMSA
        guest.mem.write(v, b"x")
    assert cvm.platform.rmp.read(v >> 12).vmsa
    assert create(guest, guest.pool.take(), c) == RC.INVALID_ADDRESS  # CAA overlaps a registered one
    assert core(guest, SVSM_REQ_CORE_DELETE_VCPU, v + 8).rax == RC.INVALID_PARAMETER
    assert core(guest, SVSM_REQ_CORE_DELETE_VCPU, guest.pool.take()).rax == RC.INVALID_PARAMETER
    assert core(guest, SVSM_REQ_CORE_DELETE_VCPU, v).rax == RC.SUCCESS
    assert core(guest, SVSM_REQ_CORE_DELETE_VCPU, v).rax == RC.INVALID_PARAMETER
    guest.mem.write(v, b"x")
    assert not cvm.platform.rmp.read(v >> 12).vmsa
    assert cvm.svsm.core.statistics()[2:4] == (1, 1)


# -- DEPOSIT_MEM / WITHDRAW_MEM ---------------------------------------------------------------------------
def page_list_call(g: Any, call: int, entries: list[int]) -> tuple[int, int]:
    gpa = g.caa + 8
    g.mem.write(gpa, PageList.build(entries))
    r = core(g, call, gpa)
    return r.rax, struct.unpack("<H", g.mem.read(gpa + 2, 2))[0]


def test_deposit_and_withdraw(guest: Any, cvm: Any) -> None:
    alloc = cvm.svsm.allocator
    before = alloc.statistics().total_pages
    a, b = guest.pool.take(), guest.pool.take()
    guest.mem.write(a, b"guest data")
    assert page_list_call(guest, SVSM_REQ_CORE_DEPOSIT_MEM, [a, b]) == (RC.SUCCESS, 2)
    assert alloc.statistics().total_pages == before + 2
    with pytest.raises(NestedPageFault):
        guest.mem.read(a, 4)
    assert page_list_call(guest, SVSM_REQ_CORE_DEPOSIT_MEM, [a])[0] == RC.INVALID_ADDRESS  # already the SVSM's
    assert pvalidate_raw(guest, [PvalidateEntry(a, validate=False).to_raw()])[0] == RC.INVALID_ADDRESS
    assert page_list_call(guest, SVSM_REQ_CORE_WITHDRAW_MEM, [guest.pool.take()])[0] == RC.INVALID_PARAMETER
    assert page_list_call(guest, SVSM_REQ_CORE_WITHDRAW_MEM, [a | 0x10])[0] == RC.INVALID_PARAMETER
    assert page_list_call(guest, SVSM_REQ_CORE_DEPOSIT_MEM, [guest.pool.take() | 0x4])[0] == RC.INVALID_PARAMETER
    assert page_list_call(guest, SVSM_REQ_CORE_DEPOSIT_MEM, [0x10_1000 | 1])[0] == RC.INVALID_PARAMETER  # 2M misaligned
    assert page_list_call(guest, SVSM_REQ_CORE_DEPOSIT_MEM, [])[0] == RC.INVALID_PARAMETER
    assert page_list_call(guest, SVSM_REQ_CORE_DEPOSIT_MEM, [cvm.layout.svsm_base])[0] == RC.INVALID_ADDRESS
    assert page_list_call(guest, SVSM_REQ_CORE_WITHDRAW_MEM, [a, b]) == (RC.SUCCESS, 2)
    assert guest.mem.read(a, 10) == bytes(10)
    assert alloc.statistics().total_pages == before
    s = cvm.svsm.core.statistics()
    assert (s.deposited_pages, s.withdrawn_pages) == (2, 2)


def test_deposited_page_in_use_cannot_be_withdrawn(guest: Any, cvm: Any) -> None:
    a = guest.pool.take()
    assert page_list_call(guest, SVSM_REQ_CORE_DEPOSIT_MEM, [PageListEntry(a).to_raw()])[0] == RC.SUCCESS
    alloc = cvm.svsm.allocator
    held = []
    while True:  # drain the heap until the deposited page is handed out
        p = alloc.allocate_page()
        held.append(p)
        if p == a:
            break
    assert page_list_call(guest, SVSM_REQ_CORE_WITHDRAW_MEM, [a])[0] == RC.INVALID_PARAMETER
    for p in held:
        alloc.free_page(p)
    assert page_list_call(guest, SVSM_REQ_CORE_WITHDRAW_MEM, [a])[0] == RC.SUCCESS


def test_delete_the_boot_vmsa_returns_the_svsm_page(guest: Any, cvm: Any, invariants: Any) -> None:
    """An AP deletes the BSP's boot VMSA (an SVSM page): it goes back to the SVSM allocator, never
    to the guest, and the BSP can no longer run the guest."""
    from svsm.kernel.hw import GuestTerminated, VmrunError
    from svsm.sdk import FatalError

    boot_vmsa = cvm.svsm.guest_vmsa_gpa
    ap = guest.start_ap(1)
    assert core(ap, SVSM_REQ_CORE_DELETE_VCPU, boot_vmsa).rax == RC.SUCCESS
    entry = cvm.platform.rmp.read(boot_vmsa >> 12)
    assert not entry.vmsa and not any(entry.perms[guest.vmpl:])
    assert cvm.svsm.allocator.owns(boot_vmsa) and cvm.svsm.allocator.page_info(boot_vmsa).type == 0  # FREE
    invariants(cvm)
    assert ap.query_protocol(0) == (1, 1)
    with pytest.raises((FatalError, VmrunError, GuestTerminated)):
        guest.query_protocol(0)  # the BSP's guest has no runnable VMSA any more


def test_pvalidate_zeroes_pages_in_the_isa_hole_too() -> None:
    """SECREVIEW 01:20: the host backs a GPA in 0xA0000-0x100000 with the SVSM's secrets frame;
    the page the SVSM validates for the guest must not show the SVSM's plaintext (VMPCK0)."""
    from svsm.kernel import boot
    from svsm.kernel.hw.adversary import AdversarialHypervisor
    from svsm.sdk.guest import PvalidateEntry

    hv = AdversarialHypervisor()
    with boot(vcpus=1, memory="32M", hypervisor=hv) as cvm:
        g, x = cvm.guest, 0xA0000
        spa = hv.gpa_to_spa(cvm.layout.secrets_gpa)
        assert hv.rmpupdate(spa, x, assigned=True).rc == 0
        hv.remap(x >> 12, spa >> 12)
        g.pvalidate([PvalidateEntry(x)])
        assert g.mem.read(x, 4096) == bytes(4096)
