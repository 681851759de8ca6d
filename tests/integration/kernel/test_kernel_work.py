"""Kernel work that needs a vCPU at VMPL0 (PSP guest requests for modules and kernel tasks) while
every vCPU runs the guest: the host interrupts a vCPU into the SVSM between two guest
instructions, or the next vCPU that enters the SVSM runs it; the guest resumes untouched."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest

from svsm.kernel import boot
from svsm.kernel.hw import Hypervisor
from svsm.sdk import Busy
from svsm.sdk.attestation import AttestationReport


def _all_cpus_in_guest(cvm: Any) -> list[Any]:
    g = cvm.guest
    g.accept_memory(0x10_0000, 0x10_0000)
    guests = [g] + [g.start_ap(v.apic_id) for v in cvm.platform.vcpus[1:]]
    assert all(v.vmpl == cvm.svsm.guest_vmpl for v in cvm.platform.vcpus)
    return guests


def test_report_while_every_vcpu_idles_in_the_guest() -> None:
    """No guest call in flight anywhere: a vCPU is interrupted into VMPL0, then resumes the guest."""
    with boot(vcpus=2, memory="12M") as cvm:
        guests = _all_cpus_in_guest(cvm)
        mem = cvm.platform.memory
        before = [bytes(mem.plaintext_page(v.vmsa_sfn[cvm.svsm.guest_vmpl])) for v in cvm.platform.vcpus]
        rep = AttestationReport.from_bytes(cvm.svsm.module_report(b"\x11" * 64))
        assert rep.vmpl == 0 and rep.report_data == b"\x11" * 64 and rep.measurement == cvm.measurement
        assert cvm.hypervisor.n_vmpl_interrupts >= 1
        # the guest's VMSAs were not touched and every vCPU is back in the guest
        after = [bytes(mem.plaintext_page(v.vmsa_sfn[cvm.svsm.guest_vmpl])) for v in cvm.platform.vcpus]
        assert after == before
        assert all(v.vmpl == cvm.svsm.guest_vmpl and not v.suspended_vmpls for v in cvm.platform.vcpus)
        assert all(x.query_protocol(0) == (1, 1) for x in guests)
        assert cvm.svsm.loop.kernel_work_done == 1


def test_reports_while_every_vcpu_makes_calls() -> None:
    """Each vCPU's thread keeps calling the SVSM; kernel reports still go out, and no call fails."""
    with boot(vcpus=3, memory="12M") as cvm:
        guests = _all_cpus_in_guest(cvm)
        stop = threading.Event()
        results: list[Any] = []

        def spin(x: Any) -> None:
            while not stop.is_set():
                results.append(x.query_protocol(0))

        threads = [threading.Thread(target=spin, args=(x,)) for x in guests]
        for th in threads:
            th.start()
        try:
            for i in range(6):
                data = bytes([i]) * 64
                assert AttestationReport.from_bytes(cvm.svsm.module_report(data)).report_data == data
        finally:
            stop.set()
            for th in threads:
                th.join()
        assert results and all(r == (1, 1) for r in results)
        assert cvm.svsm.loop.kernel_work_done == 6


class RefusingHost(Hypervisor):
    """A host that never delivers interrupts to VMPL0."""

    def deliver_vmpl_interrupt(self, vcpu: Any, vmpl: int, handler: Any) -> bool:
        return False


def test_queued_work_runs_on_the_next_guest_call() -> None:
    """The host refuses to interrupt: the work waits for the next vCPU entering the SVSM."""
    with boot(vcpus=1, memory="12M", hypervisor=RefusingHost()) as cvm:
        g = cvm.guest
        assert cvm.platform.vcpus[0].vmpl == cvm.svsm.guest_vmpl
        got: list[bytes] = []
        th = threading.Thread(target=lambda: got.append(cvm.svsm.module_report(b"\x22" * 64)))
        th.start()
        while not cvm.svsm.loop.kernel_work and th.is_alive():
            threading.Event().wait(0.001)
        assert g.query_protocol(0) == (1, 1)  # this call's request loop runs the queued work
        th.join()
        assert AttestationReport.from_bytes(got[0]).report_data == b"\x22" * 64
        assert cvm.hypervisor.n_vmpl_interrupts == 0 and cvm.svsm.loop.kernel_work_done == 1


def test_no_vcpu_reaches_vmpl0_is_busy() -> None:
    """Nobody enters the SVSM and the host refuses: BUSY after the (injected) timeout; not run later."""
    ticks = itertools.count()
    with boot(vcpus=1, memory="12M", hypervisor=RefusingHost(), clock=lambda: float(next(ticks))) as cvm:
        g = cvm.guest
        with pytest.raises(Busy):
            cvm.svsm.run_at_vmpl0(lambda v: pytest.fail("abandoned work ran"), timeout=3)
        assert g.query_protocol(0) == (1, 1)  # drains the abandoned work without running it
        assert cvm.svsm.loop.kernel_work_done == 0 and not cvm.svsm.loop.kernel_work


def test_work_errors_reach_the_submitter() -> None:
    with boot(vcpus=1, memory="12M") as cvm:
        cvm.guest.query_protocol(0)

        def bad(v: Any) -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError):
            cvm.svsm.run_at_vmpl0(bad)
        assert cvm.svsm.run_at_vmpl0(lambda v: (v.index, v.vmpl)) == (0, 0)


class SlowModule:
    """Protocol 9: call 0 blocks until released (the vCPU's request loop waits for the module)."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.reports: list[bytes] = []
        self.svsm: Any = None

    def serves(self, protocol: int) -> bool:
        return protocol == 9

    def protocol_versions(self, protocol: int) -> tuple[int, int] | None:
        return (1, 1) if protocol == 9 else None

    def handle_request(self, params: Any, memory: Any) -> None:
        if params.call == 1:  # a syscall served on the vCPU's own thread while parked
            self.reports.append(self.svsm.module_report(b"\x44" * 64))
            return
        self.entered.set()
        self.release.wait()

    def service_manifests(self) -> list[Any]:
        return []


def test_kernel_work_borrows_the_context_of_a_vcpu_waiting_for_a_module() -> None:
    """One vCPU, its thread inside the SVSM waiting for a module: no host interrupt can reach
    it (the guest's instruction stream is in a VMGEXIT) and no guest call comes, yet kernel work
    from another thread runs on its parked VMPL0 context."""
    mod = SlowModule()
    with boot(vcpus=1, memory="12M", hypervisor=RefusingHost(), module_host=mod) as cvm:
        mod.svsm = cvm.svsm
        g = cvm.guest
        result: list[Any] = []
        th = threading.Thread(target=lambda: result.append(g.svsm_call(9, 0)))
        th.start()
        mod.entered.wait()
        assert cvm.svsm.percpu[0].context.is_parked
        rep = AttestationReport.from_bytes(cvm.svsm.module_report(b"\x33" * 64))
        assert rep.report_data == b"\x33" * 64 and rep.vmpl == 0
        mod.release.set()
        th.join()
        assert result[0].rax == 0 and not cvm.svsm.percpu[0].context.is_parked
        assert cvm.hypervisor.n_vmpl_interrupts == 0 and cvm.svsm.loop.kernel_work_done == 1
        # a syscall of the module on the vCPU's own thread, with the context parked
        assert g.svsm_call(9, 1).rax == 0
        assert AttestationReport.from_bytes(mod.reports[0]).report_data == b"\x44" * 64


def test_a_shared_calling_area_is_not_served_and_does_not_panic() -> None:
    """SECREVIEW 01:05: the guest makes its CAA page shared, then calls: the SVSM's CAA read
    faults; it is fixed up (call not served), the kernel stays up, VMPCK0 is not wiped."""
    from svsm.kernel.hw import PageStateChangeRequest

    with boot(vcpus=2, memory="12M") as cvm:
        g = cvm.guest
        g.accept_memory(0x10_0000, 0x10_0000)
        ap = g.start_ap(1)
        old_caa = g.caa
        assert g._msr(PageStateChangeRequest(old_caa >> 12, 2).encode()).error == 0
        g.mem.write(old_caa, b"\x01", c_bit=False)
        g.regs.set_many(("rax", "rcx", "rdx", "r8", "r9"), (8, 0, 0, 0, 0))
        g._run_vmpl0()
        assert cvm.svsm.panicker.panicked is None and any(cvm.svsm.secrets.vmpck(0))
        assert cvm.svsm.loop.statistics().fixups == 1
        assert g.mem.read(old_caa, 1, c_bit=False) == b"\x01"  # not served: call_pending still set
        assert ap.query_protocol(0) == (1, 1)  # the kernel keeps serving
