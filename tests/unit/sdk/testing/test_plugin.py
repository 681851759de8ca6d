"""The SDK's pytest plugin: fixtures, fake clock, frame recording, marker-driven VMs."""

from __future__ import annotations

from typing import Any

import pytest

from svsm.sdk import CallSpec, Manifest, Module, ProtocolSpec, Reply, hookimpl
from svsm.sdk.abi import CallRequest, CallResult, SysTime, SyscallReply
from svsm.sdk.testing import FakeClock

P = 0x4000_0200


class Clocky(Module):
    """Defined in this test file: the fixtures load it in-process (and by path when sandboxed)."""

    MANIFEST = Manifest(
        name="clocky", version="1", protocols=[ProtocolSpec(number=P, calls=[CallSpec(call=0)])], capabilities=["time"]
    )

    @hookimpl
    def svsm_handle_request(self, ctx: Any) -> Reply:
        return Reply(rcx=ctx.syscalls.time_ns())


def test_fake_clock_drives_module_time(svsm_module_host: Any, fake_clock: FakeClock) -> None:
    h = svsm_module_host(Clocky)
    t0 = h.call(P, 0).rcx
    assert t0 == fake_clock.time_ns()
    fake_clock.advance(1.5)
    assert h.call(P, 0).rcx - t0 == 1_500_000_000


def test_abi_frames_records_the_exchange(svsm_module_host: Any, abi_frames: Any) -> None:
    h = svsm_module_host(Clocky)
    abi_frames.clear()
    h.call(P, 0)
    kinds = [(f.direction, type(f.message)) for f in abi_frames.frames]
    assert kinds == [("out", CallRequest), ("in", SysTime), ("out", SyscallReply), ("in", CallResult)]


def test_fake_clock_rules() -> None:
    c = FakeClock(10)
    assert c() == 10.0
    with pytest.raises(ValueError):
        c.advance(-1)


@pytest.mark.slow
@pytest.mark.svsm_modules(modules=[Clocky], mode="inprocess")
def test_vm_from_marker(svsm_vm: Any, fake_clock: FakeClock) -> None:
    cvm = svsm_vm(vcpus=1, memory="16M")
    assert cvm.guest.query_protocol(P) == (1, 1)
    assert cvm.guest.svsm_call(P, 0).rax == 0
