"""Many vCPUs hammering PVALIDATE, CREATE/DELETE_VCPU and REMAP_CA at once.

Afterwards: no SVSM page or VMSA is reachable by the guest, the allocator is balanced, no
lock-order inversion was reported, and every call got a result code.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from svsm.kernel import boot
from svsm.kernel.hw import VMSA
from svsm.kernel.sync import lock_order_checker
from svsm.sdk import ResultCode
from svsm.sdk.guest import (
    SVSM_CORE_PROTOCOL,
    SVSM_REQ_CORE_CREATE_VCPU,
    SVSM_REQ_CORE_DELETE_VCPU,
    SVSM_REQ_CORE_DEPOSIT_MEM,
    SVSM_REQ_CORE_REMAP_CA,
    SVSM_REQ_CORE_WITHDRAW_MEM,
    PageList,
    PvalidateEntry,
)

ROUNDS = 25


@pytest.mark.slow
def test_hammer(request: pytest.FixtureRequest) -> None:
    checker = lock_order_checker()
    checker.enable(raise_on_violation=False)
    request.addfinalizer(checker.disable)
    before_violations = checker.statistics().violations
    with boot(vcpus=9, memory="12M") as cvm:
        g = cvm.guest
        g.accept_memory(0x10_0000, 0x30_0000)
        aps = [g.start_ap(a) for a in (1, 2, 3, 4, 5, 6)]
        heap_used = cvm.svsm.allocator.statistics().used_pages
        errors: list[BaseException] = []
        codes: list[int] = []
        # raced over: created/deleted as VMSAs for APIC 6 and 7 by two vCPUs, PVALIDATEd by two others
        shared = [g.pool.take(), g.pool.take()]
        lent = [g.pool.take(), g.pool.take()]  # deposited/withdrawn by one vCPU, PVALIDATEd by others

        def pvalidate_loop(guest: Any) -> None:
            pages = [guest.pool.take() for _ in range(4)]
            for _ in range(ROUNDS):
                guest.pvalidate([PvalidateEntry(p, validate=False) for p in pages])
                guest.pvalidate([PvalidateEntry(p) for p in pages])
                r = guest.svsm_call(SVSM_CORE_PROTOCOL, 1, 0)  # bad list address
                codes.append(r.rax)
                for page in lent:
                    guest.mem.write(guest.caa + 8, b"\x01\x00\x00\x00\x00\x00\x00\x00" + (page | 4 | 8).to_bytes(8, "little"))
                    codes.append(guest.svsm_call(SVSM_CORE_PROTOCOL, 1, guest.caa + 8).rax)
                for page in shared:
                    guest.mem.write(guest.caa + 8, b"\x01\x00\x00\x00\x00\x00\x00\x00" + (page | 4).to_bytes(8, "little"))
                    codes.append(guest.svsm_call(SVSM_CORE_PROTOCOL, 1, guest.caa + 8).rax)

        def vcpu_loop(guest: Any, shared_vmsa: int, apic: int) -> None:
            v = VMSA()
            v.vmpl, v.efer, v.sev_features = guest.vmpl, (1 << 12) | (1 << 10) | (1 << 8), guest.sev_features()
            caa = guest.pool.take()
            for _ in range(ROUNDS):
                try:
                    guest.mem.write(shared_vmsa, bytes(v))
                except Exception:  # noqa: BLE001 -- another vCPU may hold it as a VMSA right now
                    pass
                r = guest.svsm_call(SVSM_CORE_PROTOCOL, SVSM_REQ_CORE_CREATE_VCPU, shared_vmsa, caa, apic)
                codes.append(r.rax)
                if r.rax == 0:
                    codes.append(guest.svsm_call(SVSM_CORE_PROTOCOL, SVSM_REQ_CORE_DELETE_VCPU, shared_vmsa).rax)

        def deposit_loop(guest: Any) -> None:
            for _ in range(ROUNDS):
                for call in (SVSM_REQ_CORE_DEPOSIT_MEM, SVSM_REQ_CORE_WITHDRAW_MEM):
                    guest.mem.write(guest.caa + 8, PageList.build(lent))
                    codes.append(guest.svsm_call(SVSM_CORE_PROTOCOL, call, guest.caa + 8).rax)

        def remap_loop(guest: Any) -> None:
            homes = [guest.caa, guest.pool.take()]
            for i in range(ROUNDS * 2):
                new = homes[(i + 1) % 2]
                r = guest.svsm_call(SVSM_CORE_PROTOCOL, SVSM_REQ_CORE_REMAP_CA, new)
                codes.append(r.rax)
                if r.rax == 0:
                    guest.caa = new
                assert guest.query_protocol(0) == (1, 1)

        def run(fn: Any, guest: Any, *extra: Any) -> None:
            try:
                fn(guest, *extra)
            except BaseException as exc:  # noqa: BLE001 -- reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=a) for a in
                   [(pvalidate_loop, aps[0]), (pvalidate_loop, g), (vcpu_loop, aps[1], shared[0], 7),
                    (vcpu_loop, aps[2], shared[1], 8), (remap_loop, aps[3]), (remap_loop, aps[4]),
                    (deposit_loop, aps[5])]]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        allowed = {ResultCode.SUCCESS, ResultCode.INVALID_ADDRESS, ResultCode.INVALID_PARAMETER,
                   ResultCode.PVALIDATE_FAIL_UNCHANGED}  # fmt: skip
        assert set(codes) <= allowed, set(codes) - allowed
        assert codes.count(ResultCode.SUCCESS) > ROUNDS and ResultCode.INVALID_ADDRESS in codes
        # invariants
        rmp, lay, vmpl = cvm.platform.rmp, cvm.layout, cvm.svsm.guest_vmpl
        for sfn in range(lay.svsm_base >> 12, (lay.svsm_base + lay.svsm_size) >> 12):
            assert not any(rmp.read(sfn).perms[vmpl:])
        for rec in cvm.svsm.registry.records():
            assert rmp.read(rec.vmsa_gpa >> 12).vmsa and not any(rmp.read(rec.vmsa_gpa >> 12).perms[vmpl:])
        for page in shared:
            if cvm.svsm.registry.get(page) is None:
                assert not rmp.read(page >> 12).vmsa
        assert cvm.svsm.allocator.statistics().used_pages == heap_used
        for page in lent:  # either still lent (SVSM-only) or back with the guest
            perms = rmp.read(page >> 12).perms
            assert cvm.svsm.allocator.owns(page) == (not any(perms[vmpl:]))
        assert cvm.svsm.panicker.panicked is None
        assert cvm.svsm.pvalidate_lock.statistics().write_acquisitions > 0
    assert checker.statistics().violations == before_violations
