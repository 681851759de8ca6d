"""Kernel tasks, their states, and wait queues (coconut-svsm.md 1.9).

A task is a kernel thread (its own Python thread = its own stack) that runs
only while its CPU's run queue has handed it the CPU: scheduling is cooperative
and non-preemptive round-robin per CPU, as in COCONUT.  A task gives the CPU up
by yielding, blocking on a :class:`WaitQueue`, sleeping, or terminating.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from svsm.kernel.sync import lock_order_checker

from ._errors import Cancelled, SchedulerError, WaitTimeout

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["TaskState", "Task", "WaitQueue", "current_task", "EXIT_EXCEPTION", "TASK_TRANSITIONS"]

#: Exit status of a task that raised (COCONUT ``TaskExitStatus::Exception``).
EXIT_EXCEPTION = 1

_local = threading.local()


def current_task() -> Task | None:
    """The task the calling thread runs, or None (vCPU threads, the timer thread)."""
    return getattr(_local, "task", None)


class TaskState(enum.IntEnum):
    """Task states, numbered as COCONUT's."""

    PENDING = 0
    RUNNING = 1
    BLOCKED = 2
    TERMINATED = 3


#: The task lifecycle, the only transitions the scheduler may make (event -> (from, to)).
TASK_TRANSITIONS: dict[str, tuple[TaskState, TaskState]] = {
    "dispatch": (TaskState.PENDING, TaskState.RUNNING),   # the CPU's run queue hands it the CPU
    "yield": (TaskState.RUNNING, TaskState.PENDING),      # yield_now(): back to the tail of the queue
    "block": (TaskState.RUNNING, TaskState.BLOCKED),      # WaitQueue.wait(), sleep()
    "wake": (TaskState.BLOCKED, TaskState.PENDING),       # wake_one/wake_all, timer, shutdown
    "exit": (TaskState.RUNNING, TaskState.TERMINATED),    # returned, raised, or cancelled
}
_ALLOWED = {v: k for k, v in TASK_TRANSITIONS.items()}


class Task:
    """One kernel task.  Made by :meth:`Scheduler.spawn`; do not construct directly."""

    def __init__(self, sched: Scheduler, tid: int, name: str, cpu: int, fn: Callable[..., Any],
                 args: tuple[Any, ...]) -> None:
        self.scheduler = sched
        self.tid = tid
        self.name = name
        self.cpu = cpu
        self._state = TaskState.PENDING
        self.fn = fn
        self.args = args
        #: COCONUT encoding: ``code << 16`` for a normal exit, :data:`EXIT_EXCEPTION` if it raised.
        self.exit_status: int | None = None
        self.exception: BaseException | None = None
        self.cancelled = False
        self.observed = False
        self.wake_reason: object = None
        self._cond = threading.Condition(sched._mutex)
        self._done = threading.Event()
        self._thread = threading.Thread(target=sched._bootstrap, args=(self,), name=f"ktask-{tid}-{name}",
                                        daemon=True)

    @property
    def state(self) -> TaskState:
        """Where the task is in its lifecycle (:data:`TASK_TRANSITIONS`)."""
        return self._state

    def _transition(self, new: TaskState) -> None:
        """Move to ``new`` (scheduler mutex held).

        :raises SchedulerError: the lifecycle table has no such transition (a scheduler bug).
        """
        if (self._state, new) not in _ALLOWED:
            raise SchedulerError(f"{self}: illegal transition {self._state.name} -> {new.name}")
        self._state = new

    def wait_terminated(self, timeout: float | None = None) -> None:
        """Block the caller (real time) until the task has terminated.

        :raises WaitTimeout: it had not terminated after ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise WaitTimeout(f"task {self.name} still {self.state.name} after {timeout}s")

    def result(self, timeout: float | None = None) -> Any:
        """Wait for termination and return the function's return value.

        :raises BaseException: whatever the task raised (marked as observed).
        """
        self.wait_terminated(timeout)
        self.observed = True
        if self.exception is not None:
            raise self.exception
        return self._result

    _result: Any = None

    def __repr__(self) -> str:
        return f"<Task {self.tid} {self.name} cpu={self.cpu} {self.state.name}>"


class _ThreadWaiter:
    """A non-task thread (e.g. a vCPU) waiting on a :class:`WaitQueue`."""

    __slots__ = ("cond", "woken", "cancelled")

    def __init__(self, mutex: threading.Lock) -> None:
        self.cond = threading.Condition(mutex)
        self.woken = False
        self.cancelled = False


class WaitQueue:
    """Tasks (or plain threads) waiting for an event.

    The waker changes the state the waiters test, then calls :meth:`wake_all`;
    :meth:`wait_until` re-tests under the scheduler's mutex, so no wake-up is lost.

    :param sched: the scheduler whose tasks wait here.
    """

    def __init__(self, sched: Scheduler) -> None:
        self.scheduler = sched
        self._waiters: deque[Task | _ThreadWaiter] = deque()
        sched._queues.add(self)

    def __len__(self) -> int:
        return len(self._waiters)

    def wait(self, timeout: float | None = None) -> None:
        """Block until woken (or ``timeout`` seconds of *scheduler clock* time pass).

        Inside a task the CPU goes to the next task meanwhile.

        :raises Cancelled: the scheduler is shutting down.
        """
        self.wait_until(None, timeout)

    def wait_until(self, predicate: Callable[[], bool] | None, timeout: float | None = None) -> bool:
        """Block until ``predicate()`` holds (tested under the scheduler mutex).

        :param predicate: None = return after one wake-up.
        :param timeout: scheduler-clock seconds; None = no limit.
        :returns: True if the predicate held (or we were woken), False on timeout.
        :raises Cancelled: the scheduler is shutting down.
        :raises SchedulerError: a task would block while holding kernel locks (checked when the
            lock-order checker is on, like Linux's ``might_sleep``): the next task on its CPU
            could spin on one of them forever.
        """
        sched = self.scheduler
        checker = lock_order_checker()
        if checker.enabled and current_task() is not None:
            held = checker.held_classes()
            if held:
                raise SchedulerError(f"task blocks while holding locks {held}")
        timer = None
        expired = [False]
        if timeout is not None:
            def _expire() -> None:
                expired[0] = True
                self.wake_all()
            timer = sched.call_later(timeout, _expire)
        try:
            with sched._mutex:
                while True:
                    if predicate is not None and predicate():
                        return True
                    if expired[0]:
                        return False
                    if sched._stopping:
                        raise Cancelled("scheduler shutting down")
                    task = current_task()
                    if task is not None and task.scheduler is sched:
                        self._waiters.append(task)
                        sched._block_current(task)
                        if task.cancelled:
                            raise Cancelled("scheduler shutting down")
                    else:
                        w = _ThreadWaiter(sched._mutex)
                        self._waiters.append(w)
                        while not w.woken and not w.cancelled:
                            w.cond.wait()
                        if w.cancelled:
                            raise Cancelled("scheduler shutting down")
                    if predicate is None:
                        return not expired[0]
        finally:
            if timer is not None:
                timer.cancel()

    def wake_one(self) -> bool:
        """Wake the longest waiter.

        :returns: False if nobody was waiting.
        """
        with self.scheduler._mutex:
            if not self._waiters:
                return False
            self._wake(self._waiters.popleft())
            return True

    def wake_all(self) -> int:
        """Wake every waiter.

        :returns: how many were woken.
        """
        with self.scheduler._mutex:
            n = len(self._waiters)
            while self._waiters:
                self._wake(self._waiters.popleft())
            return n

    def _wake(self, w: Task | _ThreadWaiter) -> None:
        if isinstance(w, Task):
            if w.state == TaskState.BLOCKED:
                self.scheduler._make_runnable(w)
        else:
            w.woken = True
            w.cond.notify()

    def _cancel_all(self) -> None:
        """Shutdown: wake everyone with a cancellation (scheduler mutex held)."""
        while self._waiters:
            w = self._waiters.popleft()
            if isinstance(w, Task):
                w.cancelled = True
                if w.state == TaskState.BLOCKED:
                    self.scheduler._make_runnable(w)
            else:
                w.cancelled = True
                w.cond.notify()
