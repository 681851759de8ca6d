"""The request path end to end: GHCB and MSR RUN_VMPL, per-vCPU loops, module routing,
fixups that keep the kernel serving, and the panic that kills the CVM."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from svsm.kernel import boot
from svsm.kernel._panic import SvsmPanic
from svsm.kernel.hw import GuestTerminated
from svsm.kernel.protocols import GuestMemoryWindow, RequestParams
from svsm.sdk import InvalidFormat, ResultCode
from svsm.sdk.guest import SVSM_CORE_PROTOCOL, SVSM_REQ_CORE_PVALIDATE, Guest, PageList, PvalidateEntry

MOD = 9  # a protocol number served by the fake module host


class Host:
    """A module host: call 0 echoes RCX+1 (reading guest memory at RDX), 1 is slow, 2 fails, 3 is a bug."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def serves(self, protocol: int) -> bool:
        return protocol == MOD

    def protocol_versions(self, protocol: int) -> tuple[int, int] | None:
        return (1, 2) if protocol == MOD else None

    def handle_request(self, params: RequestParams, memory: GuestMemoryWindow) -> None:
        if params.call == 0:
            params.rcx += 1
            params.rdx = int.from_bytes(memory.read(params.rdx, 8), "little") if params.rdx else 0
        elif params.call == 1:
            self.entered.set()
            assert self.release.wait(20)
        elif params.call == 2:
            raise InvalidFormat("bad module request")
        else:
            raise RuntimeError("module runtime bug")

    def service_manifests(self) -> Sequence[tuple[uuid.UUID, bytes]]:
        return []


@pytest.fixture
def cvm() -> Any:
    with boot(vcpus=3, memory="12M", module_host=Host()) as c:
        c.guest.accept_memory(0x10_0000, 0x10_0000)
        yield c


def test_module_routing_and_window(cvm: Any) -> None:
    g = cvm.guest
    p = g.pool.take()
    g.mem.write(p, (0xABCD).to_bytes(8, "little"))
    r = g.svsm_call(MOD, 0, 41, p)
    assert (r.rax, r.rcx, r.rdx) == (0, 42, 0xABCD)
    assert g.svsm_call(MOD, 0, 0, cvm.layout.svsm_base).rax == ResultCode.INVALID_ADDRESS  # window is checked
    assert g.query_protocol(MOD, 2) == (1, 2)
    assert g.svsm_call(MOD, 2).rax == ResultCode.INVALID_FORMAT


def test_ghcb_run_vmpl(cvm: Any) -> None:
    g = cvm.guest
    g.use_ghcb = True
    assert g.query_protocol(0) == (1, 1)
    assert cvm.hypervisor.statistics().nae_events  # went through the GHCB page
    assert dict(cvm.hypervisor.statistics().nae_events).get("SNP_RUN_VMPL", 0) >= 1


def test_slow_call_on_one_vcpu_does_not_delay_another(cvm: Any) -> None:
    g = cvm.guest
    ap = g.start_ap(1)
    host = cvm.svsm.module_host
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(ap.svsm_call(MOD, 1)))
    t.start()
    assert host.entered.wait(10)
    for _ in range(20):
        assert g.query_protocol(0) == (1, 1)
    assert t.is_alive(), "the slow call must still be in progress while the BSP was served"
    host.release.set()
    t.join(10)
    assert out[0].rax == 0


def test_fixup_logs_backtrace_and_keeps_serving(cvm: Any, caplog: pytest.LogCaptureFixture) -> None:
    g = cvm.guest
    caplog.set_level(logging.WARNING, "svsm.kernel")
    # a list entry naming a page that was never assigned: PVALIDATE faults (#NPF) inside the SVSM
    g.mem.write(g.caa + 8, PageList.build([PvalidateEntry(0x60_0000).to_raw()]))
    r = g.svsm_call(SVSM_CORE_PROTOCOL, SVSM_REQ_CORE_PVALIDATE, g.caa + 8)
    assert r.rax == ResultCode.INVALID_ADDRESS
    fixups = [rec for rec in caplog.records if "fixup" in rec.getMessage()]
    assert fixups and fixups[0].exc_info is not None
    assert g.query_protocol(0) == (1, 1)


def test_panic_wipes_keys_and_terminates(cvm: Any, caplog: pytest.LogCaptureFixture) -> None:
    g = cvm.guest
    ap = g.start_ap(1)
    caplog.set_level(logging.CRITICAL, "svsm.kernel.panic")
    with pytest.raises(SvsmPanic) as ei:
        g.svsm_call(MOD, 3)
    assert ei.value.cpu == 0 and any("RuntimeError" in line for line in ei.value.backtrace)
    assert "---BACKTRACE---" in caplog.text
    assert cvm.hypervisor.terminated == (0, 0)
    secrets = cvm.platform.firmware.read_private(cvm.layout.secrets_gpa)
    assert secrets[0x20:0xA0] == bytes(128)  # VMPCK0-3 wiped
    with pytest.raises(GuestTerminated):
        ap.query_protocol(0)


def test_call_not_serviced_without_svsm_entry(cvm: Any) -> None:
    from svsm.sdk.guest import CallNotServiced

    g: Guest = cvm.guest
    cvm.platform.vcpus[0].unregister_vmpl_entry(0)  # nobody home at VMPL0: a plain VMPL switch
    cvm.platform.vcpus[0].register_vmpl_entry(0, lambda v: None)
    with pytest.raises(CallNotServiced):
        g.query_protocol(0)


def test_no_call_served_without_a_guest_vmgexit(cvm: Any) -> None:
    """A host that switches the vCPU to VMPL0 on its own (no VMGEXIT by the guest) gets nothing served."""
    from svsm.sdk.guest import request_rax

    g = cvm.guest
    g.regs.rax, g.regs.rcx = request_rax(0, 6), 1
    g.regs.guest_exit_code = 0x400  # e.g. an NPF exit, not a VMGEXIT
    g.mem.write(g.caa, b"\x01")
    before = cvm.svsm.loop.statistics().calls_per_cpu[0]
    cvm.platform.vcpus[0].run_vmpl(0)
    assert cvm.svsm.loop.statistics().calls_per_cpu[0] == before
    assert g.mem.read(g.caa, 1) == b"\x01" and g.regs.rax == request_rax(0, 6)


def test_host_remapping_the_guest_vmsa_panics_instead_of_serving(cvm: Any) -> None:
    """The host points the guest VMSA's GPA at another frame: the SVSM's read faults (no fixup
    outside a protocol handler) and it panics rather than act on registers it cannot trust."""
    g = cvm.guest
    vmsa_gfn = cvm.svsm.guest_vmsa_gpa >> 12
    spare = (cvm.layout.svsm_base >> 12) - 1
    cvm.hypervisor.remap(vmsa_gfn, spare)
    with pytest.raises(SvsmPanic):
        g.svsm_call(SVSM_CORE_PROTOCOL, 6, 1)
    assert cvm.hypervisor.terminated == (0, 0)


def test_module_report_needs_a_vcpu_context(cvm: Any) -> None:
    """Providers.report for module syscalls: served on the vCPU of the call in flight."""
    from svsm.sdk import InvalidRequest
    from svsm.sdk.attestation import AttestationReport

    # outside a guest call: sent from an idle vCPU (the APs have not been started by the guest)
    assert AttestationReport.from_bytes(cvm.svsm.module_report(bytes(64))).vmpl == 0
    with pytest.raises(InvalidRequest):
        cvm.svsm.module_report(bytes(32))
    host = cvm.svsm.module_host
    got: list[bytes] = []
    orig = host.handle_request

    def handle(params: RequestParams, memory: GuestMemoryWindow) -> None:
        if params.call == 7:
            got.append(cvm.svsm.module_report(b"\x5a" * 64))
            return
        orig(params, memory)

    host.handle_request = handle
    assert cvm.guest.svsm_call(MOD, 7).rax == 0
    rep = AttestationReport.from_bytes(got[0])
    assert rep.report_data == b"\x5a" * 64 and rep.vmpl == 0 and rep.measurement == cvm.measurement
    cvm.guest.start_ap(1)
    cvm.guest.start_ap(2)
    # every vCPU runs the guest now: the host interrupts one into VMPL0 (was InvalidRequest
    # before the SVSM could run kernel work on a vCPU the guest runs on; tests/integration/
    # kernel/test_kernel_work.py covers that path)
    assert AttestationReport.from_bytes(cvm.svsm.module_report(bytes(64))).vmpl == 0


def test_guest_context_is_mapped_per_cpu(cvm: Any) -> None:
    """The guest VMSA/CAA are mapped in the serving CPU's own window only, remapped after REMAP_CA."""
    from svsm.kernel.mm import PageFault
    from svsm.kernel.mm import SVSM_PERCPU_CAA_BASE, SVSM_PERCPU_VMSA_BASE

    g = cvm.guest
    assert g.query_protocol(0) == (1, 1)
    bsp, ap = cvm.svsm.percpu[0], cvm.svsm.percpu[1]
    assert bsp.area.page_table.translate(SVSM_PERCPU_VMSA_BASE).paddr == cvm.svsm.guest_vmsa_gpa
    assert bsp.area.page_table.translate(SVSM_PERCPU_CAA_BASE).paddr == g.caa
    with pytest.raises(PageFault):  # CPU 1 serves no guest yet: nothing mapped in its tables
        ap.area.page_table.translate(SVSM_PERCPU_VMSA_BASE)
    new = g.pool.take()
    assert g.svsm_call(SVSM_CORE_PROTOCOL, 0, new).rax == 0
    g.caa = new
    assert g.query_protocol(0) == (1, 1)
    assert bsp.area.page_table.translate(SVSM_PERCPU_CAA_BASE).paddr == new


def test_requests_run_as_their_cpu(cvm: Any) -> None:
    """Inside a request the thread runs as that vCPU's per-CPU area (KINFRA's this_cpu())."""
    from svsm.kernel.mm import this_cpu

    host = cvm.svsm.module_host
    seen: list[int] = []
    orig = host.handle_request

    def handle(params: RequestParams, memory: GuestMemoryWindow) -> None:
        if params.call == 8:
            seen.append(this_cpu().cpu_index)
            return
        orig(params, memory)

    host.handle_request = handle
    ap = cvm.guest.start_ap(2)
    assert cvm.guest.svsm_call(MOD, 8).rax == 0 and ap.svsm_call(MOD, 8).rax == 0
    assert seen == [0, 2]


def test_guest_memory_access_holds_the_pvalidate_lock_from_check_to_access(cvm: Any) -> None:
    """SECREVIEW 01:15 (TOCTOU): between GuestMemory's check and its access no CREATE_VCPU,
    REMAP_CA or DEPOSIT_MEM (all take PVALIDATE_LOCK for writing) can change what the page is."""
    g = cvm.guest
    g.accept_memory(0x10_0000, 0x10_0000)
    page = g.pool.take()
    mem, real = cvm.svsm.memory, cvm.svsm.memory._view_for
    lock = cvm.svsm.pvalidate_lock
    seen: list[bool] = []

    class Watching:
        def __init__(self, v: Any) -> None:
            self.v = v

        def read(self, gpa: int, n: int) -> bytes:
            seen.append(lock.try_write() is None)
            return self.v.read(gpa, n)

        def write(self, gpa: int, data: bytes) -> None:
            seen.append(lock.try_write() is None)
            self.v.write(gpa, data)

    mem._view_for = lambda cpu: Watching(real(cpu))
    try:
        mem.write(0, page, b"abc")
        assert mem.read(0, page, 3) == b"abc"
        with lock.write():  # a caller holding it already (REMAP_CA) does not take it again
            mem.write(0, page, b"xyz", allow_registered=True)
    finally:
        mem._view_for = real
    assert seen[:2] == [True, True] and len(seen) == 3
