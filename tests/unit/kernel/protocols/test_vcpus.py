"""The VMSA/CAA registry: overlap rules of CREATE_VCPU and REMAP_CA (coconut-svsm.md 1.11)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.kernel.protocols import VcpuRegistry
from svsm.sdk import InvalidAddress, InvalidParameter, ResultCode


def test_register_and_overlaps() -> None:
    r = VcpuRegistry()
    r.register(0x10000, 0x11000, 1, guest_owned=True)
    for vmsa, caa in [(0x10000, 0x20000), (0x20000, 0x10ff8), (0x20000, 0x11000), (0x11000, 0x20000)]:
        with pytest.raises(InvalidAddress) as ei:
            r.register(vmsa, caa, 2, guest_owned=True)
        assert ei.value.code == ResultCode.INVALID_ADDRESS
    with pytest.raises(InvalidAddress):  # VMSA page and its own CAA overlap
        r.register(0x30000, 0x30ff8, 2, guest_owned=True)
    # a CAA 8 bytes after the registered CAA header is fine
    r.register(0x40000, 0x11008, 2, guest_owned=True)
    assert r.statistics().registered == 2 and r.statistics().refused_overlaps == 5
    assert r.collides(0x10fff, 1) and not r.collides(0x12000, 8)


def test_in_use_and_unregister() -> None:
    r = VcpuRegistry()
    r.register(0x10000, 0x11000, 1, guest_owned=True)
    with pytest.raises(InvalidParameter):
        r.unregister(0x10000, require_in_use=True)
    r.set_in_use(0x10000)
    assert r.unregister(0x10000, require_in_use=True).cpu == 1
    with pytest.raises(InvalidParameter):
        r.unregister(0x10000, require_in_use=False)
    with pytest.raises(InvalidParameter):
        r.set_in_use(0x10000)
    r.register(0x10000, 0x11000, 1, guest_owned=True)
    r.set_in_use(0x10000)
    with pytest.raises(InvalidParameter):  # an in-use VMSA cannot be rolled back, only deleted
        r.unregister(0x10000, require_in_use=False)
    with pytest.raises(InvalidParameter):
        r.set_in_use(0x10000)


def test_transition_table_is_closed() -> None:
    from svsm.kernel.protocols._vcpus import TRANSITIONS, VmsaState

    states = {None, *VmsaState}
    assert {s for s, _ in TRANSITIONS} <= states and set(TRANSITIONS.values()) <= states
    # every state can reach "unregistered" again
    for start in VmsaState:
        seen, todo = {start}, [start]
        while todo:
            cur = todo.pop()
            for (s, _), nxt in TRANSITIONS.items():
                if s is cur and nxt not in seen:
                    seen.add(nxt)
                    if nxt is not None:
                        todo.append(nxt)
        assert None in seen


def test_remap() -> None:
    r = VcpuRegistry()
    r.register(0x10000, 0x11000, 0, guest_owned=False)
    r.register(0x20000, 0x21000, 1, guest_owned=True)
    with pytest.raises(InvalidParameter):  # not in use yet
        r.remap_caa(0x10000, 0x50000)
    r.set_in_use(0x10000)
    assert r.remap_caa(0x10000, 0x11000).caa_gpa == 0x11000
    for bad in (0x21000, 0x20000, 0x10000):
        with pytest.raises(InvalidAddress):
            r.remap_caa(0x10000, bad)
    assert r.remap_caa(0x10000, 0x50000).caa_gpa == 0x50000
    assert not r.collides(0x11000, 8)
    with pytest.raises(InvalidParameter):
        r.remap_caa(0x90000, 0x60000)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(0, 63 * 8)), max_size=20))
def test_fuzz_no_two_records_overlap(pairs: list[tuple[int, int]]) -> None:
    r = VcpuRegistry()
    for v, c in pairs:
        try:
            r.register(v * 0x1000, c * 8, 0, guest_owned=True)
        except InvalidAddress:
            pass
    spans = []
    for rec in r.records():
        spans += [(rec.vmsa_gpa, 0x1000), (rec.caa_gpa, 8)]
    for i, (a, al) in enumerate(spans):
        for b, bl in spans[i + 1 :]:
            assert not (a < b + bl and b < a + al)
