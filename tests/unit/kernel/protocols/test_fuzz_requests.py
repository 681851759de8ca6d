"""Fuzzing every guest-supplied structure through the whole request path.

Any calling area, PVALIDATE list or register set the guest can produce gives a result code;
never a crash (panic), and never an SVSM page or a VMSA reachable by the guest.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from svsm.kernel.hw import MSR_GHCB, RunVmplRequest
from svsm.sdk import ResultCode
from svsm.sdk.guest import (
    SVSM_CORE_PROTOCOL,
    SVSM_REQ_CORE_DELETE_VCPU,
    SVSM_REQ_CORE_DEPOSIT_MEM,
    SVSM_REQ_CORE_PVALIDATE,
    SVSM_REQ_CORE_WITHDRAW_MEM,
    request_rax,
)

CODES = {int(c) for c in ResultCode}
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def interesting_gpas(cvm: Any, g: Any) -> list[int]:
    lay = cvm.layout
    out = [0, 0x1000, 0x10_0000, 0x20_0000, 0x2F_F000, 0x60_0000, lay.svsm_base, lay.heap_start,
           lay.svsm_base + lay.svsm_size - 0x1000, cvm.platform.memory_size, g.caa]  # fmt: skip
    out.append(BOOT_VMSA.setdefault(id(cvm), cvm.svsm.guest_vmsa_gpa))  # fixed: replays need the same draws
    return out


#: The boot VMSA of each CVM under test (DELETE_VCPU may remove it from the SVSM's records).
BOOT_VMSA: dict[int, int] = {}


@pytest.mark.parametrize("call", [SVSM_REQ_CORE_PVALIDATE, SVSM_REQ_CORE_DEPOSIT_MEM, SVSM_REQ_CORE_WITHDRAW_MEM])
@FUZZ
@given(data=st.data())
def test_fuzz_page_lists(guest: Any, cvm: Any, invariants: Any, call: int, data: st.DataObject) -> None:
    """PVALIDATE lists and DEPOSIT/WITHDRAW page lists (same header) with anything in them."""
    gpas = interesting_gpas(cvm, guest)
    n = data.draw(st.integers(0, 6))
    nxt = data.draw(st.integers(0, 7))
    entries = [
        data.draw(st.sampled_from(gpas)) | data.draw(st.integers(0, 0xF)) | data.draw(st.sampled_from([0, 0x10, 0x800]))
        for _ in range(n)
    ]  # fmt: skip
    raw = struct.pack("<HHI", data.draw(st.sampled_from([n, 0, 600])), nxt, data.draw(st.sampled_from([0, 7])))
    raw += struct.pack(f"<{n}Q", *entries)
    at = guest.caa + 8 + data.draw(st.sampled_from([0, 0, 4, 0xF00]))
    guest.mem.write(at, raw)
    r = guest.svsm_call(SVSM_CORE_PROTOCOL, call, at)
    assert r.rax in CODES
    invariants(cvm)


@FUZZ
@given(call=st.integers(0, 9), regs=st.lists(st.integers(0, 2**64 - 1), min_size=3, max_size=3), pick=st.data())
def test_fuzz_core_registers(guest: Any, cvm: Any, invariants: Any, call: int, regs: list[int], pick: st.DataObject) -> None:
    gpas = interesting_gpas(cvm, guest)
    regs = [pick.draw(st.sampled_from([v, *gpas, 1, 0])) for v in regs]
    # DELETE_VCPU of the caller's own VMSA is legal, but the guest cannot run afterwards
    # (test_core.py covers it); keep the fuzzing guest alive.
    assume(not (call == SVSM_REQ_CORE_DELETE_VCPU and regs[0] == BOOT_VMSA[id(cvm)]))
    r = guest.svsm_call(SVSM_CORE_PROTOCOL, call, *regs)
    assert r.rax in CODES
    if call == 0 and r.rax == 0:
        guest.caa = regs[0]  # REMAP_CA moved our calling area
    invariants(cvm)


@FUZZ
@given(header=st.binary(min_size=8, max_size=8))
def test_fuzz_calling_area(guest: Any, cvm: Any, invariants: Any, header: bytes) -> None:
    """A calling area with anything in it: the SVSM serves the call iff call_pending == 1."""
    cpu, regs = guest.cpu, guest.regs
    regs.rax, regs.rcx = request_rax(0, 6), 0 << 32 | 1
    guest.mem.write(guest.caa, header)
    served_before = cvm.svsm.loop.statistics().calls_per_cpu[0]
    cpu.wrmsr(MSR_GHCB, RunVmplRequest(0).encode())
    cpu.vmgexit()
    served = cvm.svsm.loop.statistics().calls_per_cpu[0] - served_before
    assert served == (header[0] == 1)
    if served:
        assert guest.mem.read(guest.caa, 1) == b"\0" and regs.rax == 0 and regs.rcx == 1 << 32 | 1
    else:
        assert guest.mem.read(guest.caa, 8) == header and regs.rax == request_rax(0, 6)
    invariants(cvm)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_walk_of_core_calls_keeps_invariants(seed: int, invariants: Any) -> None:
    """Sequences, not single calls: two vCPUs issue random core calls over a small set of pages
    (VMSAs appear and vanish, CAAs move, pages are lent and taken back); the invariants hold
    after every step and every call answers with a result code."""
    import random

    from svsm.kernel import boot

    with boot(vcpus=4, memory="12M") as cvm:
        guest = cvm.guest
        guest.accept_memory(0x10_0000, 0x30_0000)
        walk(random.Random(seed), cvm, guest, invariants)
        s = cvm.svsm.core.statistics()
        assert s.vcpus_created and s.pvalidated_pages and s.cas_remapped


def walk(rng: Any, cvm: Any, guest: Any, invariants: Any) -> None:
    from svsm.kernel.hw import VMSA
    from svsm.sdk.guest import PageList

    ap = guest.start_ap(1)
    boot_vmsa = cvm.svsm.guest_vmsa_gpa
    pages = [guest.pool.take() for _ in range(8)]
    lay = cvm.layout
    gpas = pages + [0x60_0000, lay.svsm_base, lay.heap_start, boot_vmsa, guest.caa, ap.caa, guest.aps[1][1], 0x20_0000]
    v = VMSA()
    v.vmpl, v.efer, v.sev_features = guest.vmpl, (1 << 12) | (1 << 10) | (1 << 8), guest.sev_features()
    for _ in range(250):
        who = rng.choice([guest, ap])
        call = rng.choice([0, 1, 1, 2, 3, 4, 5, 6, 7])
        if rng.random() < 0.3:
            try:
                who.mem.write(rng.choice(pages), bytes(v))
            except Exception:  # noqa: BLE001 -- the page may be a VMSA, lent, or rescinded by now
                pass
        rcx = rng.choice(gpas) + rng.choice([0, 0, 8])
        if call in (1, 4, 5):
            entries = [rng.choice(gpas) | rng.choice([0, 4, 8, 12, 1, 0x10]) for _ in range(rng.randint(0, 3))]
            who.mem.write(who.caa + 8, PageList.build(entries))
            rcx = who.caa + 8
        r8 = rng.choice([2, 3, 7, 99])  # APIC IDs: 2 and 3 are vCPUs no guest runs on, 7 and 99 unknown
        if call == 3 and rcx in (boot_vmsa, guest.aps[1][1]):
            continue  # would stop a vCPU this test drives
        r = who.svsm_call(SVSM_CORE_PROTOCOL, call, rcx, rng.choice(gpas), r8)
        assert r.rax in CODES
        if call == 0 and r.rax == 0:
            who.caa = rcx
        invariants(cvm)
