"""A small booted CVM per test, with some guest memory accepted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

#: Guest RAM accepted before each test: [1 MiB, 4 MiB) -- 4 KiB pages up to 2 MiB, then one 2 MiB page.
ACCEPTED = (0x10_0000, 0x30_0000)


@pytest.fixture
def cvm() -> Iterator[Any]:
    from svsm.kernel import boot

    with boot(vcpus=2, memory="12M") as c:
        yield c


@pytest.fixture
def guest(cvm: Any) -> Any:
    g = cvm.guest
    g.accept_memory(*ACCEPTED)
    return g


def assert_invariants(cvm: Any) -> None:
    """No SVSM page (nor a registered guest VMSA) is reachable by the guest; no panic happened."""
    rmp, lay, vmpl = cvm.platform.rmp, cvm.layout, cvm.svsm.guest_vmpl
    for sfn in range(lay.svsm_base >> 12, (lay.svsm_base + lay.svsm_size) >> 12):
        perms = rmp.read(sfn).perms
        assert not any(perms[vmpl:]), f"SVSM page {sfn << 12:#x} reachable by the guest: {perms}"
    for rec in cvm.svsm.registry.records():
        assert not any(rmp.read(rec.vmsa_gpa >> 12).perms[vmpl:]), f"VMSA {rec.vmsa_gpa:#x} reachable"
        assert rmp.read(rec.vmsa_gpa >> 12).vmsa
    for p in range(0, lay.svsm_base, 0x1000):
        if cvm.svsm.allocator.owns(p):  # deposited pages are the SVSM's
            assert not any(rmp.read(p >> 12).perms[vmpl:])
    assert cvm.svsm.panicker.panicked is None


@pytest.fixture
def invariants() -> Any:
    return assert_invariants
