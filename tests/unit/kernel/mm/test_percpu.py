"""Per-CPU areas: private slot 510, mapping window guards, wrong-CPU faults, teardown."""

from __future__ import annotations

import struct
import threading

import pytest

from svsm.kernel.mm import (
    HUGE_PAGE_SIZE, PAGE_SIZE, PERCPU_DATA_VADDR, PERCPU_GHCB_VADDR, PERCPU_STACK_BOTTOM, PERCPU_STACK_TOP,
    SVSM_PERCPU_CAA_BASE, SVSM_PERCPU_TEMP_BASE_2M, SVSM_PERCPU_TEMP_BASE_4K, SVSM_PERCPU_VMSA_BASE,
    PageAllocator, PageFault, PerCpuAreas, PerCpuError, SparseMemory, current_cpu, this_cpu,
)

HEAP = 0x100_0000
GUEST = 0x8000_0000


@pytest.fixture
def cpus() -> PerCpuAreas:
    mem = SparseMemory(1 << 40)
    pa = PageAllocator(mem)
    pa.add_range(HEAP, 512 * PAGE_SIZE)
    return PerCpuAreas(mem, pa, c_bit=51)


def test_each_cpu_sees_its_own_area_at_the_same_address(cpus: PerCpuAreas) -> None:
    c0, c1 = cpus.create(0), cpus.create(1, apic_id=7)
    assert struct.unpack("<II", c0.read(PERCPU_DATA_VADDR, 8)) == (0, 0)
    assert struct.unpack("<II", c1.read(PERCPU_DATA_VADDR, 8)) == (1, 7)
    t0 = c0.page_table.translate(PERCPU_DATA_VADDR)
    t1 = c1.page_table.translate(PERCPU_DATA_VADDR)
    assert t0.paddr == c0.data_page != t1.paddr == c1.data_page
    assert t0.encrypted and not t0.executable
    # the boot table has no per-CPU slot at all
    with pytest.raises(PageFault):
        cpus.boot_table.translate(PERCPU_DATA_VADDR)
    assert cpus.by_apic_id(7) is c1 and cpus.get(0) is c0 and len(cpus) == 2
    with pytest.raises(PerCpuError):
        cpus.create(1)
    with pytest.raises(PerCpuError):
        cpus.get(5)


def test_ghcb_is_shared_and_stack_has_a_guard(cpus: PerCpuAreas) -> None:
    c0 = cpus.create(0)
    g = c0.page_table.translate(PERCPU_GHCB_VADDR, write=True)
    assert g.paddr == c0.ghcb_page and not g.encrypted
    assert c0.page_table.translate(PERCPU_STACK_TOP - 8, write=True).encrypted
    c0.write(PERCPU_STACK_BOTTOM, b"x")
    with pytest.raises(PageFault) as ei:
        c0.write(PERCPU_STACK_BOTTOM - 8, b"overflow")
    assert ei.value.error_code == PageFault.W  # not present
    with pytest.raises(PageFault):
        c0.read(PERCPU_STACK_TOP, 1)


def test_mapping_guard_reads_writes_and_unmaps(cpus: PerCpuAreas) -> None:
    c0 = cpus.create(0)
    mem = c0.memory
    mem.write(GUEST + 0x10, b"guest data")
    with c0.activate():
        with c0.map_guest(GUEST, 2 * PAGE_SIZE) as g:
            assert g.vaddr == SVSM_PERCPU_TEMP_BASE_4K
            assert g.read(0x10, 10) == b"guest data"
            g.write(PAGE_SIZE - 2, b"span")
            assert mem.read(GUEST + PAGE_SIZE - 2, 4) == b"span"
            assert c0.statistics().mappings_active == 1
            with pytest.raises(PerCpuError):
                g.read(2 * PAGE_SIZE - 1, 2)  # outside the mapping
        with pytest.raises(PerCpuError):
            g.read(0, 1)
        with pytest.raises(PageFault):
            c0.read(SVSM_PERCPU_TEMP_BASE_4K, 1)
        with pytest.raises(PerCpuError):
            g.release()
    st = c0.statistics()
    assert st.mappings_active == 0 and st.mappings_total == 1 and st.free_4k_slots == 512


def test_wrong_cpu_access_faults(cpus: PerCpuAreas) -> None:
    c0, c1 = cpus.create(0), cpus.create(1)
    c0.memory.write(GUEST, b"secret")
    with c0.activate():
        g = c0.map_guest(GUEST)
        assert g.read(0, 6) == b"secret"
    with c1.activate():
        with pytest.raises(PageFault) as ei:
            g.read(0, 6)
        assert ei.value.vaddr == g.vaddr and ei.value.error_code == 0
        assert this_cpu() is c1
    with pytest.raises(PageFault):
        c1.read(g.vaddr, 1)
    g.release()


def test_read_only_and_shared_guest_mappings(cpus: PerCpuAreas) -> None:
    c0 = cpus.create(0)
    with c0.map_guest(GUEST, writable=False, encrypted=False) as g:
        t = c0.page_table.translate(g.vaddr)
        assert not t.writable and not t.encrypted and not t.executable
        with pytest.raises(PageFault) as ei:
            g.write(0, b"x")
        assert ei.value.error_code == PageFault.P | PageFault.W


def test_2m_window_and_exhaustion(cpus: PerCpuAreas) -> None:
    c0 = cpus.create(0)
    with c0.map_guest(0x4000_0000, HUGE_PAGE_SIZE, huge=True) as g:
        assert g.vaddr == SVSM_PERCPU_TEMP_BASE_2M
        assert c0.page_table.translate(g.vaddr + 0x1234).paddr == 0x4000_1234
    with pytest.raises(PerCpuError):
        c0.map_guest(0x4000_1000, HUGE_PAGE_SIZE, huge=True)  # misaligned
    big = c0.map_guest(GUEST, 510 * PAGE_SIZE)
    small = c0.map_guest(GUEST, PAGE_SIZE)
    with pytest.raises(PerCpuError):
        c0.map_guest(GUEST, 2 * PAGE_SIZE)  # only one slot left
    last = c0.map_guest(GUEST, PAGE_SIZE)
    for guard in (big, small, last):
        guard.release()
    assert c0.statistics().free_4k_slots == 512


def test_caa_and_vmsa_slots(cpus: PerCpuAreas) -> None:
    c0 = cpus.create(0)
    c0.memory.write(GUEST + 0x1008, b"\x01")
    assert c0.map_caa(GUEST + 0x1008) == SVSM_PERCPU_CAA_BASE + 8
    assert c0.read(SVSM_PERCPU_CAA_BASE + 8, 1) == b"\x01"
    assert c0.map_caa(GUEST + 0x3000) == SVSM_PERCPU_CAA_BASE  # remap replaces
    assert c0.map_vmsa(GUEST + 0x5000) == SVSM_PERCPU_VMSA_BASE
    assert c0.page_table.translate(SVSM_PERCPU_VMSA_BASE).paddr == GUEST + 0x5000
    with pytest.raises(PerCpuError):
        c0.map_vmsa(GUEST + 8)
    c0.unmap_guest_context()
    with pytest.raises(PageFault):
        c0.read(SVSM_PERCPU_CAA_BASE, 1)


def test_activation_is_per_thread_and_nests(cpus: PerCpuAreas) -> None:
    c0, c1 = cpus.create(0), cpus.create(1)
    assert current_cpu() is None
    with pytest.raises(PerCpuError):
        this_cpu()
    seen = []
    with c0.activate():
        t = threading.Thread(target=lambda: seen.append(current_cpu()))
        t.start()
        t.join()
        with c1.activate():
            assert this_cpu() is c1
        assert this_cpu() is c0
    assert seen == [None] and current_cpu() is None


def test_concurrent_cpus_map_independently(cpus: PerCpuAreas) -> None:
    areas = [cpus.create(i) for i in range(3)]
    errors: list[BaseException] = []

    def run(area) -> None:  # type: ignore[no-untyped-def]
        try:
            with area.activate():
                for i in range(30):
                    with area.map_guest(GUEST + area.cpu_index * PAGE_SIZE) as g:
                        g.write(0, bytes([area.cpu_index, i]))
                        assert g.read(0, 2) == bytes([area.cpu_index, i])
        except BaseException as e:  # noqa: BLE001 - collected for the assert
            errors.append(e)

    ts = [threading.Thread(target=run, args=(a,)) for a in areas]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_teardown_returns_every_page(cpus: PerCpuAreas) -> None:
    c0 = cpus.create(0)
    cpus.create(1)
    g = c0.map_guest(GUEST)
    c0.map_caa(GUEST)
    with pytest.raises(PerCpuError):
        c0.free()  # live window mapping = leak
    g.release()
    assert cpus.allocator.statistics().used_pages > 0
    cpus.shutdown()
    cpus.allocator.check_leaks()
    assert cpus.allocator.statistics().used_pages == 0


def test_failed_mapping_rolls_back(cpus: PerCpuAreas) -> None:
    from svsm.kernel.mm import PageTableError

    c0 = cpus.create(0)
    with pytest.raises(PageTableError):
        c0.map_guest((1 << 51) - 2 * PAGE_SIZE, 3 * PAGE_SIZE)  # third page would carry the C-bit
    st = c0.statistics()
    assert st.free_4k_slots == 512 and st.mappings_active == 0
    with pytest.raises(PageFault):
        c0.read(SVSM_PERCPU_TEMP_BASE_4K, 1)
