"""The kernel's own tasks (issue #3): the scheduler built at kernel init runs the periodic
housekeeping on CPU 0's run queue, in the injected clock's time, and stops at shutdown."""

from __future__ import annotations

import itertools
from typing import Any

from svsm.kernel import boot
from svsm.kernel._kernel_tasks import HOUSEKEEPING_INTERVAL
from svsm.kernel.sched import TaskState


class ManualClock:
    """The kernel's injected clock, moved by the test."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_housekeeping_is_a_scheduled_kernel_task() -> None:
    clock = ManualClock()
    with boot(vcpus=2, memory="12M", clock=clock) as cvm:
        tasks = cvm.svsm.tasks
        tasks.scheduler.wait_idle()  # the task is asleep: its timer is set
        st = tasks.statistics()
        assert st.scheduler.tasks_spawned == 1 and st.housekeeping_rounds == 0
        (task,) = tasks.scheduler.tasks()
        assert task.name == "housekeeping" and task.cpu == 0
        # an empty slab page for the reaper
        slab = cvm.svsm.slab
        slab.free(slab.allocate(64))
        clock.t += HOUSEKEEPING_INTERVAL
        tasks.scheduler.wait_idle()
        st = tasks.statistics()
        assert st.housekeeping_rounds == 1 and st.slab_pages_reaped >= 1
        assert st.scheduler.timers_fired >= 1 and st.scheduler.failures == 0
        assert task.state == TaskState.BLOCKED  # sleeping until the next round
        assert cvm.statistics().kernel_tasks.housekeeping_rounds == 1
        assert cvm.guest.query_protocol(0) == (1, 1)
    assert task.state == TaskState.TERMINATED and task.exception is None


def test_housekeeping_drops_abandoned_kernel_work() -> None:
    """Work whose submitter timed out (BUSY) is removed by the next round, never run."""
    import pytest

    from svsm.kernel.hw import Hypervisor
    from svsm.sdk import Busy

    class Refusing(Hypervisor):
        def deliver_vmpl_interrupt(self, vcpu: Any, vmpl: int, handler: Any) -> bool:
            return False

    ticks = itertools.count(0, 0.001)
    with boot(vcpus=1, memory="12M", hypervisor=Refusing(), clock=lambda: float(next(ticks))) as cvm:
        cvm.guest  # the guest runs on the only vCPU
        with pytest.raises(Busy):
            cvm.svsm.run_at_vmpl0(lambda v: pytest.fail("abandoned work ran"), timeout=0.01)
        assert len(cvm.svsm.loop.kernel_work) == 1
        cvm.svsm.tasks.run_housekeeping()
        assert not cvm.svsm.loop.kernel_work and cvm.svsm.tasks.statistics().abandoned_work_dropped == 1
