"""Scheduler: timers on the fake clock, kernel tasks, per-CPU run queues, shutdown."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from svsm.kernel.sched import (
    EXIT_EXCEPTION, Cancelled, FakeClock, MonotonicClock, Scheduler, SchedulerError, TaskFailed, TaskState,
    WaitQueue, WaitTimeout, current_task,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sched(clock: FakeClock) -> Iterator[Scheduler]:
    s = Scheduler(2, clock=clock)
    yield s
    s.shutdown(timeout=10)
    assert not [t for t in threading.enumerate() if t.name.startswith("ktask-") and t.is_alive()
                and any(t is task._thread for task in s.tasks())]


def test_timers_fire_in_deadline_order_only_when_time_passes(sched: Scheduler, clock: FakeClock) -> None:
    fired: list[str] = []
    for name, delay in [("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.0)]:
        sched.call_later(delay, fired.append, name)
    cancelled = sched.call_later(1.5, fired.append, "never")
    cancelled.cancel()
    sched.wait_idle()
    assert fired == []
    clock.advance(1.0)
    sched.wait_idle()
    assert fired == ["a", "a2"]  # ties fire in creation order
    clock.advance(5.0)
    sched.wait_idle()
    assert fired == ["a", "a2", "b", "c"]
    st = sched.statistics()
    assert st.timers_fired == 4 and st.timers_pending == 0 and not cancelled.fired


def test_task_runs_and_terminates_with_exit_status(sched: Scheduler) -> None:
    t = sched.spawn(lambda x: x * 2, 21, name="double")
    assert t.result(timeout=5) == 42
    assert t.state == TaskState.TERMINATED and t.exit_status == 42 << 16
    t0 = sched.spawn(lambda: None)
    t0.wait_terminated(5)
    assert t0.exit_status == 0


def test_failed_task_status_and_result_reraises(sched: Scheduler) -> None:
    def boom() -> None:
        raise KeyError("x")

    t = sched.spawn(boom)
    with pytest.raises(KeyError):
        t.result(5)
    assert t.exit_status == EXIT_EXCEPTION
    assert sched.statistics().failures == 1


def test_unobserved_failure_surfaces_at_shutdown(clock: FakeClock) -> None:
    s = Scheduler(1, clock=clock)
    t = s.spawn(lambda: 1 / 0, name="divider")
    t.wait_terminated(5)
    s.call_later(1, lambda: [][1])
    clock.advance(1)
    s.wait_idle()
    with pytest.raises(TaskFailed) as ei:
        s.shutdown()
    assert [n for n, _ in ei.value.failures] == ["divider", "<lambda>"]
    assert isinstance(ei.value.failures[0][1], ZeroDivisionError)


def test_round_robin_on_one_cpu_one_running_at_a_time(sched: Scheduler) -> None:
    log: list[tuple[str, int]] = []
    running = [0]
    overlap = []

    def worker(name: str) -> None:
        for i in range(3):
            running[0] += 1
            if running[0] != 1:
                overlap.append(name)
            log.append((name, i))
            running[0] -= 1
            sched.yield_now()

    a = sched.spawn(worker, "a", cpu=0)
    b = sched.spawn(worker, "b", cpu=0)
    a.result(5)
    b.result(5)
    assert not overlap
    assert log == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_long_task_on_one_cpu_does_not_block_another(sched: Scheduler) -> None:
    release = threading.Event()
    hog = sched.spawn(release.wait, 10, name="hog", cpu=1)  # holds CPU 1, never yields
    quick = sched.spawn(lambda: "done", name="quick", cpu=0)
    assert quick.result(5) == "done"
    queued = sched.spawn(lambda: "late", name="queued", cpu=1)
    assert hog.state == TaskState.RUNNING and queued.state == TaskState.PENDING
    assert sched.statistics().cpus[1].current == "hog"
    release.set()
    assert queued.result(5) == "late"


def test_sleep_blocks_and_frees_the_cpu(sched: Scheduler, clock: FakeClock) -> None:
    events: list[str] = []

    def sleeper() -> None:
        events.append("start")
        sched.sleep(10)
        events.append(f"woke at {clock.now():g}")

    t = sched.spawn(sleeper, cpu=0)
    other = sched.spawn(lambda: events.append("other"), cpu=0)
    other.wait_terminated(5)
    sched.wait_idle()
    assert t.state == TaskState.BLOCKED and events == ["start", "other"]
    clock.advance(9.5)
    sched.wait_idle()
    assert t.state == TaskState.BLOCKED
    clock.advance(0.5)
    t.wait_terminated(5)
    assert events[-1] == "woke at 10"


def test_autojump_runs_virtual_time_forward(clock: FakeClock) -> None:
    clock.autojump_threshold = 0.005
    s = Scheduler(1, clock=clock)
    order: list[float] = []

    def napper(d: float) -> None:
        s.sleep(d)
        order.append(clock.now())

    for d in (300.0, 100.0, 200.0):
        s.spawn(napper, d)
    for t in s.tasks():
        t.wait_terminated(10)
    assert order == [100.0, 200.0, 300.0]
    s.shutdown()


def test_wait_queue_fifo_predicate_and_thread_waiters(sched: Scheduler) -> None:
    wq = WaitQueue(sched)
    woke: list[str] = []
    flag = [False]

    def waiter(name: str) -> None:
        wq.wait()
        woke.append(name)

    t1 = sched.spawn(waiter, "t1", cpu=0)
    sched.wait_idle()  # queue order is t1, t2, cond_task, thread
    t2 = sched.spawn(waiter, "t2", cpu=1)
    sched.wait_idle()
    cond_task = sched.spawn(lambda: wq.wait_until(lambda: flag[0]), cpu=0)
    sched.wait_idle()
    assert {t1.state, t2.state, cond_task.state} == {TaskState.BLOCKED}
    thread_result: list[bool] = []
    th = threading.Thread(target=lambda: thread_result.append(wq.wait_until(lambda: flag[0])), daemon=True)
    th.start()
    while len(wq) < 4:
        threading.Event().wait(0.001)
    assert wq.wake_one()
    t1.wait_terminated(5)
    assert woke == ["t1"]
    wq.wake_all()  # t2 wakes; the predicate waiters re-block
    t2.wait_terminated(5)
    sched.wait_idle()
    while len(wq) < 2:  # the plain thread re-queues on its own schedule
        threading.Event().wait(0.001)
    assert cond_task.state == TaskState.BLOCKED and th.is_alive()
    flag[0] = True
    assert wq.wake_all() == 2
    cond_task.wait_terminated(5)
    th.join(5)
    assert thread_result == [True] and woke == ["t1", "t2"] and not wq.wake_one()


def test_wait_timeout_uses_scheduler_clock(sched: Scheduler, clock: FakeClock) -> None:
    wq = WaitQueue(sched)
    t = sched.spawn(lambda: wq.wait_until(lambda: False, timeout=5))
    sched.wait_idle()
    clock.advance(5)
    assert t.result(5) is False


def test_shutdown_cancels_blocked_and_unstarted_tasks(clock: FakeClock) -> None:
    s = Scheduler(1, clock=clock)
    wq = WaitQueue(s)
    cleanup: list[str] = []
    started: list[str] = []

    def blocked() -> None:
        try:
            wq.wait()
        except Cancelled:
            cleanup.append("cancelled")
            raise

    hold = threading.Event()
    b = s.spawn(blocked)
    s.wait_idle()
    hog = s.spawn(hold.wait, 5)
    never = s.spawn(started.append, "ran")  # queued behind the hog
    s.call_later(100, started.append, "timer")
    th_result: list[str] = []

    def thread_waiter() -> None:
        try:
            wq.wait()
        except Cancelled:
            th_result.append("cancelled")

    th = threading.Thread(target=thread_waiter)
    th.start()
    while len(wq) < 2:
        threading.Event().wait(0.001)
    threading.Timer(0.05, hold.set).start()
    s.shutdown(timeout=10)
    th.join(5)
    assert cleanup == ["cancelled"] and b.cancelled and b.state == TaskState.TERMINATED
    assert never.cancelled and started == [] and th_result == ["cancelled"]
    assert all(not t._thread.is_alive() for t in s.tasks())
    s.shutdown()  # idempotent
    with pytest.raises(SchedulerError):
        s.spawn(print)


def test_shutdown_stops_a_task_whose_sleeps_never_block(clock: FakeClock) -> None:
    """A periodic task whose deadlines have always passed (sleep(0)) still sees Cancelled."""
    s = Scheduler(1, clock=clock)
    rounds: list[int] = []
    looping = threading.Event()

    def periodic() -> None:
        while True:
            s.sleep(0)
            rounds.append(1)
            looping.set()

    t = s.spawn(periodic, name="periodic")
    looping.wait()
    s.shutdown(timeout=10)
    assert t.state == TaskState.TERMINATED and t.cancelled and t.exception is None and rounds


def test_task_cannot_shut_down_its_scheduler(sched: Scheduler) -> None:
    t = sched.spawn(sched.shutdown)
    with pytest.raises(SchedulerError):
        t.result(5)


def test_current_task_and_misuse(sched: Scheduler) -> None:
    t = sched.spawn(lambda: current_task())
    assert t.result(5) is t
    assert current_task() is None
    sched.yield_now()  # outside a task: no-op
    with pytest.raises(SchedulerError):
        sched.spawn(print, cpu=2)
    with pytest.raises(SchedulerError):
        Scheduler(0)
    ev = threading.Event()
    with pytest.raises(WaitTimeout):
        sched.spawn(ev.wait, 5).wait_terminated(0.01)
    ev.set()


def test_statistics_counts_states_and_switches(sched: Scheduler) -> None:
    wq = WaitQueue(sched)
    sched.spawn(wq.wait, cpu=1)
    sched.spawn(lambda: None, cpu=0).wait_terminated(5)
    sched.wait_idle()
    st = sched.statistics()
    assert st.tasks_spawned == 2
    assert st.tasks_by_state[TaskState.BLOCKED] == 1 and st.tasks_by_state[TaskState.TERMINATED] == 1
    assert st.cpus[0].context_switches == 1 and st.cpus[1].current is None


def test_real_clock_timer_fires() -> None:
    s = Scheduler(1, clock=MonotonicClock())
    done = threading.Event()
    s.call_later(0.01, done.set)
    assert done.wait(5)
    s.shutdown()


def test_cpu_context_wraps_each_task(clock: FakeClock) -> None:
    import contextlib

    active: dict[int, int] = {}
    seen: list[tuple[int, int]] = []

    @contextlib.contextmanager
    def on_cpu(i: int):  # type: ignore[no-untyped-def]
        active[threading.get_ident()] = i
        try:
            yield
        finally:
            del active[threading.get_ident()]

    s = Scheduler(2, clock=clock, cpu_context=on_cpu)
    for cpu in (0, 1, 1):
        s.spawn(lambda c=cpu: seen.append((c, active[threading.get_ident()])), cpu=cpu).wait_terminated(5)
    s.shutdown()
    assert seen == [(0, 0), (1, 1), (1, 1)] and active == {}


def test_call_every_repeats_without_drift_until_cancelled(sched: Scheduler, clock: FakeClock) -> None:
    ticks: list[float] = []
    h = sched.call_every(2.0, lambda: ticks.append(clock.now()))
    for _ in range(7):
        clock.advance(1.0)
        sched.wait_idle()
    assert ticks == [2.0, 4.0, 6.0]
    clock.advance(3.0)  # jumps over two deadlines: each fires once, in order
    sched.wait_idle()
    sched.wait_idle()
    assert ticks[:3] == [2.0, 4.0, 6.0] and len(ticks) == 5
    h.cancel()
    clock.advance(10.0)
    sched.wait_idle()
    assert len(ticks) == 5
    with pytest.raises(SchedulerError):
        sched.call_every(0, print)
