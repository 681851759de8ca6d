"""The task lifecycle table (COCONUT's PENDING/RUNNING/BLOCKED/TERMINATED) is enforced."""

from __future__ import annotations

import pytest

from svsm.kernel.sched import TASK_TRANSITIONS, FakeClock, Scheduler, SchedulerError, TaskState, WaitQueue


def test_states_numbered_as_coconut() -> None:
    assert [s.value for s in (TaskState.PENDING, TaskState.RUNNING, TaskState.BLOCKED, TaskState.TERMINATED)] \
        == [0, 1, 2, 3]


def test_table_is_the_lifecycle() -> None:
    pairs = set(TASK_TRANSITIONS.values())
    assert (TaskState.PENDING, TaskState.RUNNING) in pairs
    assert not any(src == TaskState.TERMINATED for src, _ in pairs)  # terminal
    assert not any(dst == TaskState.PENDING and src == TaskState.PENDING for src, dst in pairs)


def test_scheduler_walks_only_table_transitions_and_rejects_others() -> None:
    clock = FakeClock()
    s = Scheduler(1, clock=clock)
    wq = WaitQueue(s)
    t = s.spawn(wq.wait)
    s.wait_idle()
    assert t.state == TaskState.BLOCKED
    with pytest.raises(SchedulerError):
        t._transition(TaskState.RUNNING)  # BLOCKED -> RUNNING skips the run queue
    assert t.state == TaskState.BLOCKED
    wq.wake_all()
    t.wait_terminated(5)
    with pytest.raises(SchedulerError):
        t._transition(TaskState.PENDING)  # nothing leaves TERMINATED
    s.shutdown()


def test_blocking_while_holding_a_lock_is_reported_when_checking() -> None:
    from svsm.kernel.sync import SpinLock, lock_order_checker

    checker = lock_order_checker()
    was = checker.enabled
    checker.enable()
    try:
        s = Scheduler(1, clock=FakeClock())
        wq = WaitQueue(s)
        lock = SpinLock(name="sched.test.held")

        def bad() -> None:
            with lock:
                wq.wait()

        with pytest.raises(SchedulerError):
            s.spawn(bad).result(5)
        assert not lock.locked()
        ok = s.spawn(lambda: wq.wait_until(lambda: True))  # no lock held: fine
        assert ok.result(5) is True
        s.shutdown()
    finally:
        checker.enabled = was
        checker.reset()
