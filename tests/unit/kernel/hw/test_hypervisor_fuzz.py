"""A malicious guest against the hypervisor: random GHCB pages and MSR values.

Whatever the guest writes, the hypervisor answers with a GHCB error or terminates the guest; it
never raises anything else and never breaks the RMP (no entry gets VALIDATED from the host side).
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svsm.kernel.hw import MSR_GHCB, PAGE_SIZE, GuestTerminated, RegisterGhcbRequest, SwExitCode
from svsm.kernel.hw.testing import make_guest, msr_call

GHCB = 300 * PAGE_SIZE
CODES = [int(c) for c in SwExitCode] + [0, 0x8000_0099]


def _platform():  # type: ignore[no-untyped-def]
    p = make_guest(memory_size=4 << 20, private=[(0, 64 * PAGE_SIZE)], validated=False)
    p.vcpus[0].vmrun(0)
    msr_call(p.vcpus[0], RegisterGhcbRequest(GHCB // PAGE_SIZE))
    return p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    code=st.sampled_from(CODES),
    info1=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 1024 * PAGE_SIZE)),
    info2=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 1024 * PAGE_SIZE)),
    regs=st.lists(st.integers(0, 2**64 - 1), min_size=3, max_size=3),
    bitmap=st.integers(0, 2**128 - 1),
    buffer=st.binary(max_size=64),
)
def test_random_ghcb(code: int, info1: int, info2: int, regs: list[int], bitmap: int, buffer: bytes) -> None:
    p = _platform()
    page = bytearray(PAGE_SIZE)
    struct.pack_into("<QQQQ", page, 0x390, code, info1, info2, GHCB + 0x800)
    struct.pack_into("<Q", page, 0x1F8, regs[0])
    struct.pack_into("<Q", page, 0x318, regs[1])
    struct.pack_into("<Q", page, 0x308, regs[2])
    page[0x3F0:0x400] = bitmap.to_bytes(16, "little")
    page[0x800 : 0x800 + len(buffer)] = buffer
    view = p.guest_view(0)
    view.write(GHCB, bytes(page), c_bit=False)
    bsp = p.vcpus[0]
    bsp.wrmsr(MSR_GHCB, GHCB)
    try:
        bsp.vmgexit()
    except GuestTerminated:
        return
    out = view.read(GHCB, PAGE_SIZE, c_bit=False)
    info1_out = struct.unpack_from("<Q", out, 0x398)[0]
    assert info1_out in (0, 1, 2) or code == SwExitCode.SNP_RUN_VMPL
    assert all(not e.validated for s, e in p.rmp.items() if s < 64 and not e.vmsa)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64 - 1))
def test_random_msr_values(value: int) -> None:
    p = _platform()
    bsp = p.vcpus[0]
    bsp.wrmsr(MSR_GHCB, value)
    try:
        bsp.vmgexit()
    except GuestTerminated:
        return
