"""Minimal guest-side GHCB helpers for hw tests (the real guest driver is ``svsm.sdk.guest``)."""

from __future__ import annotations

from .._constants import MSR_GHCB, PAGE_SIZE
from .._ghcb import GHCB_PROTOCOL_VERSION, GHCB_USAGE_STANDARD, GhcbPage
from .._msr_protocol import MsrMessage, decode_msr
from .._vcpu import Vcpu

__all__ = ["msr_call", "ghcb_call"]


def msr_call(vcpu: Vcpu, msg: MsrMessage) -> MsrMessage:
    """Write ``msg`` to the GHCB MSR, VMGEXIT, and decode what the hypervisor left there.

    Restores nothing: like a real guest, the caller re-writes the GHCB GPA afterwards if needed.
    """
    vcpu.wrmsr(MSR_GHCB, msg.encode())
    vcpu.vmgexit()
    return decode_msr(vcpu.rdmsr(MSR_GHCB))


def ghcb_call(
    vcpu: Vcpu,
    ghcb_gpa: int,
    exit_code: int,
    info1: int = 0,
    info2: int = 0,
    *,
    shared_buffer: bytes | None = None,
    scratch: int | None = None,
    **regs: int,
) -> GhcbPage:
    """One NAE event through the full GHCB at ``ghcb_gpa`` (a shared page) from the current VMPL.

    :param regs: extra GHCB register fields (``rax=...``, ``rbx=...``), marked valid.
    :returns: the GHCB as the hypervisor left it.
    """
    view = vcpu.view()
    g = GhcbPage()
    g.clear()
    g.set("sw_exit_code", exit_code)
    g.set("sw_exit_info_1", info1)
    g.set("sw_exit_info_2", info2)
    for name, value in regs.items():
        g.set(name, value)
    if shared_buffer is not None:
        g.write_shared_buffer(shared_buffer)
        g.set("sw_scratch", ghcb_gpa + 0x800 if scratch is None else scratch)
    elif scratch is not None:
        g.set("sw_scratch", scratch)
    g.protocol_version = GHCB_PROTOCOL_VERSION
    g.ghcb_usage = GHCB_USAGE_STANDARD
    view.write(ghcb_gpa, g.to_bytes(), c_bit=False)
    vcpu.wrmsr(MSR_GHCB, ghcb_gpa)
    vcpu.vmgexit()
    return GhcbPage(view.read(ghcb_gpa, PAGE_SIZE, c_bit=False))
