"""ModuleSupervisor restarts: each runs on its own thread, so a module stuck in start delays nobody."""

from __future__ import annotations

import threading
from typing import Any

from svsm.kernel.ipc import Limits, ModuleHost, ModuleState
from svsm.sdk import CallSpec, Manifest, Module, ProtocolSpec, Reply, ResultCode, hookimpl

P = 0x4000_0090
HOLD = threading.Event()  # released by the test: the stuck module's second start waits for it
ENTERED = threading.Event()  # the stuck module's second start is running


class Stuck(Module):
    MANIFEST = Manifest(name="stuck", version="1", protocols=[ProtocolSpec(number=P, calls=[CallSpec(call=0), CallSpec(call=1)])])
    starts = 0

    @hookimpl
    def svsm_module_start(self) -> None:
        type(self).starts += 1
        if type(self).starts > 1:
            ENTERED.set()
            assert HOLD.wait(60.0)

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        if request.call == 1:
            raise SystemExit  # crash
        return Reply(rcx=1)


class Quick(Module):
    MANIFEST = Manifest(name="quick", version="1", protocols=[ProtocolSpec(number=P + 1, calls=[CallSpec(call=0), CallSpec(call=1)])])

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        if request.call == 1:
            raise SystemExit
        return Reply(rcx=2)


def test_a_module_stuck_in_start_does_not_delay_another_restart() -> None:
    HOLD.clear()
    ENTERED.clear()
    Stuck.starts = 0
    with ModuleHost([Stuck, Quick], mode="inprocess", limits=Limits(backoff_base=0.01), tick=0.01) as h:
        stuck, quick = h.module("stuck"), h.module("quick")
        assert h.call(P, 1).rax == ResultCode.BUSY  # crash: its restart will hang in start
        try:
            assert ENTERED.wait(30.0)
            assert h.call(P + 1, 1).rax == ResultCode.BUSY  # crash while the other restart hangs
            assert h.wait_module_ready("quick", 30.0)
            assert h.call(P + 1, 0).rcx == 2
            assert stuck.state is not ModuleState.SERVING and Stuck.starts == 2
            assert h.call(P, 0).rax == ResultCode.BUSY  # a vCPU gets BUSY instead of waiting for the start
        finally:
            HOLD.set()
        assert h.wait_module_ready("stuck", 30.0)
        assert h.call(P, 0).rcx == 1
        assert quick.statistics().restarts == 1 and stuck.statistics().restarts == 1


def test_supervision_runs_as_a_kernel_scheduler_timer() -> None:
    from svsm.kernel.sched import Scheduler

    sched = Scheduler(1)
    try:
        with ModuleHost([Quick], mode="inprocess", limits=Limits(backoff_base=0.01), tick=0.01, scheduler=sched) as h:
            assert h._thread is None  # no supervisor thread of its own
            assert h.call(P + 1, 1).rax == ResultCode.BUSY  # crash
            assert h.wait_module_ready("quick", 30.0)  # restarted from the scheduler's timer
            assert h.call(P + 1, 0).rcx == 2
        fired = sched.statistics()
        assert fired.timers_fired >= 1
    finally:
        sched.shutdown()
