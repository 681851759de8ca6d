"""SECREVIEW: a page the SVSM checked as guest memory must not become a VMSA before the write lands.

vCPU0 writes guest-chosen bytes (a module's copy-back buffer) to page G; between the SVSM's check of
G and the write (a preemption, simulated by a view that waits), the guest registers G as a new VMSA
with CREATE_VCPU on vCPU1.  Before the fix the write then set VMSA.VMPL = 0, the guest had the
host install G at VMPL0 and ran its own code there (VMPCK0 readable).
"""

from __future__ import annotations

import threading
from typing import Any

from svsm.kernel import boot
from svsm.kernel.hw import VMSA
from svsm.kernel.ipc import ModuleHost, Providers
from svsm.sdk import BufferSpec, CallSpec, Manifest, Module, ProtocolSpec, Reply, hookimpl
from svsm.sdk.guest._guest import _EFER_LONG_SVME

P = 0x4000_0400


class Echo(Module):  # any module writing guest-chosen bytes back (vTPM NV_Read, Hash, ...)
    MANIFEST = Manifest(name="echo", version="1", protocols=[ProtocolSpec(number=P, calls=[
        CallSpec(call=0, buffer=BufferSpec(gpa_register="rcx", size=4096, writable=True))])])

    @hookimpl
    def svsm_handle_request(self, request: Any, ctx: Any) -> Reply:
        return Reply(buffer=request.buffer)


def _vmsa(vmpl: int, feats: int) -> bytes:
    v = VMSA()
    v.vmpl, v.efer, v.sev_features = vmpl, _EFER_LONG_SVME, feats
    v.cr0, v.rflags, v.xcr0, v.mxcsr, v.x87_fcw = 0x8000_0011, 0x2, 1, 0x1F80, 0x37F
    return bytes(v)


def test_a_checked_page_turned_vmsa_meanwhile_is_not_written() -> None:
    with boot(vcpus=2, memory="32M") as cvm:
        providers = Providers(report=cvm.svsm.module_report, key_root=cvm.svsm.module_key_root)
        with ModuleHost([Echo], mode="inprocess", providers=providers) as host:
            cvm.svsm.attach_module_host(host)
            g = cvm.guest
            g.accept_memory(0x10_0000, 0x10_0000)
            ap = g.start_ap(1)
            feats = g.sev_features()
            G, caa2 = g.pool.take(), g.pool.take()
            g.mem.write(G, _vmsa(0, feats))  # what the module will echo back
            g.mem.write(caa2, bytes(4096))
            checked, created = threading.Event(), threading.Event()
            mem, real = cvm.svsm.memory, cvm.svsm.memory._view_for

            class Preempted:
                def __init__(self, v: Any) -> None:
                    self.v = v

                def read(self, gpa: int, n: int) -> bytes:
                    return self.v.read(gpa, n)

                def write(self, gpa: int, data: bytes) -> None:
                    if gpa == G:
                        checked.set()
                        created.wait(3)
                    self.v.write(gpa, data)

            mem._view_for = lambda cpu: Preempted(real(cpu)) if cpu == 0 else real(cpu)
            echo = threading.Thread(target=g.svsm_call, args=(P, 0, G))
            echo.start()
            assert checked.wait(10)
            result: list[int] = []

            def create() -> None:
                ap.mem.write(G, _vmsa(2, feats))
                result.append(ap.svsm_call(0, 2, G, caa2, 1).rax)

            t = threading.Thread(target=create)
            t.start()
            t.join(3)  # with the fix CREATE_VCPU may wait for the write to finish
            created.set()
            echo.join()
            t.join()
            mem._view_for = real
            registered = cvm.svsm.registry.get(G) is not None
            vmpl = cvm.platform.memory.plaintext_page(G >> 12)[0xCA]
            assert not (registered and vmpl != 2), f"registered VMSA now says VMPL{vmpl} (CREATE_VCPU {result})"
            cvm.svsm.attach_module_host(None)
            cvm.shutdown(check_leaks=False)
