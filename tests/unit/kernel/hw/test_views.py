"""RMP access checks on guest and host views (snp.md 5.4, Table 15-39)."""

from __future__ import annotations

import pytest

from svsm.kernel.hw import (
    NPF_ENC,
    NPF_VMPL,
    PAGE_SIZE,
    PF_RMP,
    HostPageFault,
    NestedPageFault,
    VmmCommunicationException,
    VmplPermission,
)
from svsm.kernel.hw.testing import make_guest


@pytest.fixture
def p():  # type: ignore[no-untyped-def]
    plat = make_guest(private=[(0, 64 * PAGE_SIZE)])
    plat.vcpus[0].vmrun(0)
    return plat


def test_private_read_write(p) -> None:  # type: ignore[no-untyped-def]
    v = p.guest_view(0)
    v.write(0x1FF8, b"0123456789abcdef")  # crosses a page boundary
    assert v.read(0x1FF8, 16) == b"0123456789abcdef"
    v.write_u64(0x3000, 0xDEADBEEF)
    assert v.read_u64(0x3000) == 0xDEADBEEF and v.read_u32(0x3000) == 0xDEADBEEF


def test_unassigned_page_private_access_is_npf(p) -> None:  # type: ignore[no-untyped-def]
    gpa = 100 * PAGE_SIZE
    with pytest.raises(NestedPageFault) as ei:
        p.guest_view(0).read(gpa, 8)
    assert ei.value.exit_info_1 & PF_RMP and ei.value.encrypted and not ei.value.write
    # Shared access to a hypervisor page is fine.
    p.guest_view(0).write(gpa, b"shared", c_bit=False)
    assert p.host.read(gpa, 6) == b"shared"


def test_unvalidated_page_is_vc_404(p) -> None:  # type: ignore[no-untyped-def]
    p.firmware.set_rmp(70 * PAGE_SIZE, assigned=True, gpa=70 * PAGE_SIZE, validated=False)
    with pytest.raises(VmmCommunicationException) as ei:
        p.guest_view(0).write(70 * PAGE_SIZE + 8, b"x")
    assert ei.value.error_code == 0x404 and ei.value.page_not_validated and ei.value.address == 70 * PAGE_SIZE + 8


def test_gpa_mismatch_is_npf(p) -> None:  # type: ignore[no-untyped-def]
    p.firmware.set_rmp(71 * PAGE_SIZE, assigned=True, gpa=72 * PAGE_SIZE, validated=True)
    with pytest.raises(NestedPageFault):
        p.guest_view(0).read(71 * PAGE_SIZE, 1)


def test_immutable_and_foreign_asid_are_npf(p) -> None:  # type: ignore[no-untyped-def]
    p.firmware.set_rmp(73 * PAGE_SIZE, assigned=True, gpa=73 * PAGE_SIZE, validated=True, immutable=True)
    p.firmware.set_rmp(74 * PAGE_SIZE, assigned=True, gpa=74 * PAGE_SIZE, validated=True, asid=2)
    for gpa in (73 * PAGE_SIZE, 74 * PAGE_SIZE):
        with pytest.raises(NestedPageFault):
            p.guest_view(0).read(gpa, 1)


def test_vmpl_permissions(p) -> None:  # type: ignore[no-untyped-def]
    gpa = 75 * PAGE_SIZE
    p.firmware.set_rmp(gpa, assigned=True, gpa=gpa, validated=True, perms=(0x1F, int(VmplPermission.READ), 0, 0))
    v1 = p.guest_view(1)
    v1.read(gpa, 8)
    with pytest.raises(NestedPageFault) as ei:
        v1.write(gpa, b"x")
    assert ei.value.vmpl_violation and ei.value.write and ei.value.exit_info_1 & NPF_ENC
    with pytest.raises(NestedPageFault) as ei2:
        p.guest_view(2).read(gpa, 8)
    assert ei2.value.exit_info_1 & NPF_VMPL


def test_write_only_mask_is_not_enough(p) -> None:  # type: ignore[no-untyped-def]
    """Write without read is illegal: a data write needs R and W (snp.md 5.1)."""
    gpa = 76 * PAGE_SIZE
    p.firmware.set_rmp(gpa, assigned=True, gpa=gpa, validated=True, perms=(0x1F, int(VmplPermission.WRITE), 0, 0))
    with pytest.raises(NestedPageFault):
        p.guest_view(1).write(gpa, b"x")


def test_shared_write_to_private_page_is_npf_and_changes_nothing(p) -> None:  # type: ignore[no-untyped-def]
    v = p.guest_view(0)
    v.write(0x5000, b"keep")
    with pytest.raises(NestedPageFault) as ei:
        v.write(0x5000, b"junk", c_bit=False)
    assert ei.value.write and not ei.value.encrypted
    assert v.read(0x5000, 4) == b"keep"
    assert v.read(0x5000, 4, c_bit=False) != b"keep"  # shared read of a private page: ciphertext


def test_cross_page_write_checks_all_pages_first(p) -> None:  # type: ignore[no-untyped-def]
    v = p.guest_view(0)
    v.write(63 * PAGE_SIZE + PAGE_SIZE - 4, b"AAAA")
    with pytest.raises(NestedPageFault):
        v.write(63 * PAGE_SIZE + PAGE_SIZE - 4, b"BBBBBBBB")  # 2nd page is not private
    assert v.read(63 * PAGE_SIZE + PAGE_SIZE - 4, 4) == b"AAAA"


def test_beyond_memory_is_npf(p) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NestedPageFault):
        p.guest_view(0).read(p.memory_size, 1, c_bit=False)


def test_host_view(p) -> None:  # type: ignore[no-untyped-def]
    v = p.guest_view(0)
    v.write(0x6000, b"top secret")
    ct = p.host.read(0x6000, 10)
    assert ct != b"top secret"
    with pytest.raises(HostPageFault) as ei:
        p.host.write(0x6000, b"evil")
    assert ei.value.rmp and ei.value.error_code & (1 << 31)
    with pytest.raises(HostPageFault):  # straddling into a private page: nothing is written
        p.host.write(64 * PAGE_SIZE - 2, b"zzzz")
    assert v.read(0x6000, 10) == b"top secret"
    p.host.write(80 * PAGE_SIZE, b"fine")
    assert p.host.read(80 * PAGE_SIZE, 4) == b"fine"


def test_dirty_log_records_guest_writes(p) -> None:  # type: ignore[no-untyped-def]
    hv = p.hypervisor
    with pytest.raises(ValueError):
        hv.get_dirty_log()
    hv.enable_dirty_logging()
    p.guest_view(0).write(0x2000, b"a")
    p.guest_view(0).write(90 * PAGE_SIZE, b"b", c_bit=False)
    p.guest_view(0).write(3 * PAGE_SIZE - 1, b"cc")
    assert hv.get_dirty_log() == {2, 90, 3}
    assert hv.get_dirty_log() == set()
    p.guest_view(0).write(0x9000, b"a")
    bm = hv.get_dirty_bitmap()
    assert bm[1] == 0b10 and sum(bin(b).count("1") for b in bm) == 1
    hv.enable_dirty_logging(False)
    assert p.dirty_log is None


def test_zero_whole_pages_costs_no_memory(p) -> None:  # type: ignore[no-untyped-def]
    v = p.guest_view(0)
    v.write(0x10000, b"\xff" * (8 * PAGE_SIZE))
    before = p.memory.statistics().backed_pages
    v.zero(0x10000 + 10, 8 * PAGE_SIZE - 20)  # 6 whole pages, two partial ends
    st = p.memory.statistics()
    assert st.zero_pages == 6 and st.backed_pages == before - 6
    assert v.read(0x10000, 10) == b"\xff" * 10 and v.read(0x10000 + 10, 8 * PAGE_SIZE - 20) == bytes(8 * PAGE_SIZE - 20)
    assert v.read(0x10000 + 8 * PAGE_SIZE - 10, 10) == b"\xff" * 10
    # The host sees the encryption of zeros, the same bytes as if zeros had been written.
    zeroed = p.host.read(0x11000, PAGE_SIZE)
    v.write(0x11000, bytes(PAGE_SIZE))
    assert p.host.read(0x11000, PAGE_SIZE) == zeroed != bytes(PAGE_SIZE)
    # A partial write materialises only that page.
    v.write(0x12000 + 5, b"abc")
    assert v.read(0x12000, 8) == b"\0" * 5 + b"abc"
    assert p.memory.statistics().zero_pages == 4  # 0x11000 and 0x12000 were materialised


def test_zero_checks_every_page_first(p) -> None:  # type: ignore[no-untyped-def]
    v = p.guest_view(0)
    v.write(63 * PAGE_SIZE, b"keep")
    with pytest.raises(NestedPageFault):
        v.zero(63 * PAGE_SIZE, 2 * PAGE_SIZE)
    assert v.read(63 * PAGE_SIZE, 4) == b"keep"
    p.firmware.set_rmp(70 * PAGE_SIZE, assigned=True, gpa=70 * PAGE_SIZE, validated=False)
    with pytest.raises(VmmCommunicationException):
        v.zero(70 * PAGE_SIZE, PAGE_SIZE)


def test_zero_then_host_write_after_unassign(p) -> None:  # type: ignore[no-untyped-def]
    v = p.guest_view(0)
    v.zero(0x20000, PAGE_SIZE)
    ct = p.host.read(0x20000, PAGE_SIZE)
    p.vcpus[0].pvalidate(0x20000, validate=False)
    assert p.hypervisor.rmpupdate(0x20000, 0, assigned=False).rc == 0
    p.host.write(0x20000, b"host")
    assert p.host.read(0x20000, PAGE_SIZE) == b"host" + ct[4:]


def _huge_private(p, gpa: int) -> None:  # type: ignore[no-untyped-def]
    """A 2 MiB RMP entry at ``gpa``, assigned and validated by the SVSM (PVALIDATE 2 MiB)."""
    from svsm.kernel.hw import RmpPageSize

    assert p.hypervisor.rmpupdate(gpa, gpa, assigned=True, page_size=RmpPageSize.SIZE_2M).rc == 0
    assert p.vcpus[0].pvalidate(gpa, RmpPageSize.SIZE_2M, True, vmpl=0).rc == 0


def test_zero_of_a_2mib_rmp_entry_is_one_run() -> None:
    """Whole 2 MiB chunks under one RMP entry: same result as page by page, dirty log included."""
    p = make_guest(memory_size=8 << 20, private=[(0, 64 * PAGE_SIZE)])
    p.vcpus[0].vmrun(0)
    big = 2 << 20
    _huge_private(p, big)
    v = p.guest_view(0)
    v.write(big + 5 * PAGE_SIZE, b"old plaintext")
    p.dirty_log = set()
    v.zero(0x10000, PAGE_SIZE)  # a 4 KiB entry, then the chunk
    v.zero(big, 2 << 20)
    assert v.read(big + 5 * PAGE_SIZE, 13) == bytes(13) and v.read(big + (2 << 20) - 8, 8) == bytes(8)
    assert p.memory.statistics().zero_pages == 513
    assert p.dirty_log == {0x10} | set(range(big >> 12, (big >> 12) + 512))
    v.zero(big, 2 << 20)  # again: nothing to count twice
    assert p.memory.statistics().zero_pages == 513


def test_zero_of_a_2mib_entry_still_checks_permissions() -> None:
    p = make_guest(memory_size=8 << 20, private=[(0, 64 * PAGE_SIZE)])
    p.vcpus[0].vmrun(0)
    big = 2 << 20
    _huge_private(p, big)
    p.guest_view(0).write(big + PAGE_SIZE, b"keep")
    with pytest.raises(NestedPageFault):  # VMPL1 has no permissions on the chunk
        p.guest_view(1).zero(big, 2 << 20)
    assert p.guest_view(0).read(big + PAGE_SIZE, 4) == b"keep" and p.memory.statistics().zero_pages == 0


def test_write_fields_one_page(p) -> None:  # type: ignore[no-untyped-def]
    v = p.guest_view(0)
    p.dirty_log = set()
    v.write_fields(0x3000, ((0x10, b"ab"), (0x20, b"cd"), (0x10, b"AB")))  # in order: the last wins
    assert v.read(0x3010, 2) == b"AB" and v.read(0x3020, 2) == b"cd" and p.dirty_log == {3}
    with pytest.raises(ValueError):
        v.write_fields(0x3000, ((PAGE_SIZE - 1, b"xy"),))
    with pytest.raises(NestedPageFault):  # VMPL1 may not write it: nothing written
        p.guest_view(1).write_fields(0x3000, ((0x10, b"zz"),))
    assert v.read(0x3010, 2) == b"AB"
    p.firmware.set_rmp(0x50000, assigned=True, gpa=0x50000, validated=False)
    with pytest.raises(VmmCommunicationException):
        v.write_fields(0x50000, ((0, b"x"),))


def test_exchange_is_one_checked_read_modify_write(p) -> None:  # type: ignore[no-untyped-def]
    v = p.guest_view(0)
    v.write(0x4000, b"\x01rest")
    p.dirty_log = set()
    assert v.exchange(0x4000, b"\x00") == b"\x01" and v.read(0x4000, 5) == b"\x00rest" and p.dirty_log == {4}
    with pytest.raises(ValueError):
        v.exchange(0x4FFF, b"ab")
    with pytest.raises(NestedPageFault):  # VMPL1 may not write: nothing changes
        p.guest_view(1).exchange(0x4000, b"\x07")
    assert v.read(0x4000, 1) == b"\x00"
