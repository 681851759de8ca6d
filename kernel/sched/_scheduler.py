"""Per-CPU run queues, kernel tasks and timers (coconut-svsm.md 1.9).

Each CPU has a :class:`RunQueue`: at most one RUNNING task, the PENDING ones in
FIFO order.  Run queues are independent, so a task that computes for a long time
on CPU 1 never delays CPU 0.  Timers live in one heap ordered by (deadline,
creation) and fire, in that order, on the timer service thread; their deadlines
are in the injected clock's time.

The scheduler's state is guarded by one mutex (a raw lock: tasks park on
conditions bound to it).  The SVSM's request loops are not tasks: they run on
the vCPU threads (docs/dev/CONTRACTS.md, execution model) and may wait on a
:class:`WaitQueue` like any thread.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

from ._clock import Clock, MonotonicClock
from ._errors import Cancelled, SchedulerError, TaskFailed, WaitTimeout
from ._task import EXIT_EXCEPTION, Task, TaskState, WaitQueue, _local, current_task

__all__ = ["Scheduler", "SchedulerStatistics", "RunQueueStatistics", "TimerHandle"]

log = logging.getLogger(__name__)


class TimerHandle:
    """A pending call; :meth:`cancel` it to stop it from firing."""

    __slots__ = ("deadline", "seq", "fn", "args", "cancelled", "fired")

    def __init__(self, deadline: float, seq: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.fn = fn
        self.args = args
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        """Do not fire (no effect once fired)."""
        self.cancelled = True

    def __lt__(self, other: TimerHandle) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class RunQueue:
    """One CPU's run queue."""

    __slots__ = ("cpu", "current", "queue", "switches")

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.current: Task | None = None
        self.queue: deque[Task] = deque()
        self.switches = 0


class RunQueueStatistics(NamedTuple):
    """One CPU (immutable)."""

    cpu: int
    current: str | None  #: name of the RUNNING task, None when idle
    pending: int
    context_switches: int


class SchedulerStatistics(NamedTuple):
    """Immutable snapshot of the scheduler."""

    cpus: tuple[RunQueueStatistics, ...]
    tasks_spawned: int
    tasks_by_state: tuple[int, int, int, int]  #: count per TaskState value
    timers_pending: int
    timers_fired: int
    failures: int


class Scheduler:
    """Kernel tasks on per-CPU run queues, plus timers.

    :param ncpus: number of run queues (one per vCPU).
    :param clock: time source for timers and sleeps (a :class:`FakeClock` in tests).
    :param cpu_context: ``cpu_context(i)`` is entered around every task of CPU ``i``, e.g.
        ``lambda i: areas.get(i).activate()`` so that ``this_cpu()`` works in kernel tasks.
    """

    def __init__(self, ncpus: int = 1, *, clock: Clock | None = None,
                 cpu_context: Callable[[int], AbstractContextManager[Any]] | None = None) -> None:
        if ncpus < 1:
            raise SchedulerError(f"need at least one CPU, got {ncpus}")
        self.clock: Clock = clock or MonotonicClock()
        self._cpu_context = cpu_context
        self._mutex = threading.Lock()
        self._state_cond = threading.Condition(self._mutex)  # idle / timer changes
        self._runqueues = [RunQueue(i) for i in range(ncpus)]
        self._tasks: list[Task] = []
        self._tids = itertools.count(1)
        self._timers: list[TimerHandle] = []
        self._seq = itertools.count()
        self._timer_busy = False
        self._timers_fired = 0
        self._failures: list[tuple[str, BaseException]] = []
        self._stopping = False
        self._started = False
        self._queues: weakref.WeakSet[WaitQueue] = weakref.WeakSet()
        self._timer_thread = threading.Thread(target=self._timer_service, name="ktimer", daemon=True)
        self.clock.subscribe(self._on_clock)

    @property
    def ncpus(self) -> int:
        """Number of per-CPU run queues."""
        return len(self._runqueues)

    def start(self) -> None:
        """Start the timer service (spawn and call_at do it on first use)."""
        with self._mutex:
            if self._started:
                return
            if self._stopping:
                raise SchedulerError("scheduler already shut down")
            self._started = True
        self._timer_thread.start()

    # -- tasks ----------------------------------------------------------------
    def spawn(self, fn: Callable[..., Any], *args: Any, name: str | None = None, cpu: int = 0) -> Task:
        """Start ``fn(*args)`` as a kernel task on ``cpu``'s run queue.

        The return value (an int or None) becomes the exit code; an exception makes
        the task TERMINATED with status :data:`EXIT_EXCEPTION` and is re-raised by
        :meth:`Task.result` or, if never collected, by :meth:`shutdown`.

        :raises SchedulerError: bad CPU, or the scheduler is shutting down.
        """
        if not 0 <= cpu < len(self._runqueues):
            raise SchedulerError(f"no CPU {cpu}")
        self.start()
        with self._mutex:
            if self._stopping:
                raise SchedulerError("scheduler is shutting down")
            task = Task(self, next(self._tids), name or getattr(fn, "__name__", "task"), cpu, fn, args)
            self._tasks.append(task)
            rq = self._runqueues[cpu]
            rq.queue.append(task)
        task._thread.start()
        with self._mutex:
            self._dispatch(rq)
        return task

    def _bootstrap(self, task: Task) -> None:
        rq = self._runqueues[task.cpu]
        with self._mutex:
            while rq.current is not task:
                task._cond.wait()
        _local.task = task
        try:
            if task.cancelled:
                raise Cancelled("cancelled before it ran")
            ctx = self._cpu_context(task.cpu) if self._cpu_context is not None else contextlib.nullcontext()
            with ctx:
                rv = task.fn(*task.args)
            task._result = rv
            task.exit_status = (int(rv) if isinstance(rv, int) else 0) << 16
        except Cancelled:
            task.cancelled = True
            task.exit_status = 0
        except BaseException as exc:  # noqa: BLE001 - recorded, re-raised by result()/shutdown()
            log.error("kernel task %s failed", task.name, exc_info=exc)
            task.exception = exc
            task.exit_status = EXIT_EXCEPTION
        finally:
            _local.task = None
            with self._mutex:
                task._transition(TaskState.TERMINATED)
                rq.current = None
                self._dispatch(rq)
                self._state_cond.notify_all()
            task._done.set()

    def _dispatch(self, rq: RunQueue) -> None:
        """Give an idle CPU to its next PENDING task (mutex held)."""
        if rq.current is None and rq.queue:
            nxt = rq.queue.popleft()
            nxt._transition(TaskState.RUNNING)
            rq.current = nxt
            rq.switches += 1
            nxt._cond.notify()
        elif rq.current is None:
            self._state_cond.notify_all()

    def _make_runnable(self, task: Task) -> None:
        """BLOCKED -> PENDING, queued at the tail (mutex held)."""
        task._transition(TaskState.PENDING)
        rq = self._runqueues[task.cpu]
        rq.queue.append(task)
        self._dispatch(rq)

    def _block_current(self, task: Task) -> None:
        """RUNNING -> BLOCKED; returns once woken and running again (mutex held)."""
        rq = self._runqueues[task.cpu]
        if rq.current is not task:
            raise SchedulerError(f"{task} blocks but is not running on CPU {task.cpu}")
        task._transition(TaskState.BLOCKED)
        rq.current = None
        self._dispatch(rq)
        while rq.current is not task:
            task._cond.wait()

    def yield_now(self) -> None:
        """Let the next PENDING task on this CPU run (no-op if none, or outside a task).

        :raises Cancelled: the scheduler is shutting down.
        """
        task = current_task()
        if task is None or task.scheduler is not self:
            return
        with self._mutex:
            if self._stopping:
                raise Cancelled("scheduler shutting down")
            rq = self._runqueues[task.cpu]
            if not rq.queue:
                return
            task._transition(TaskState.PENDING)
            rq.queue.append(task)
            rq.current = None
            self._dispatch(rq)
            while rq.current is not task:
                task._cond.wait()

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` of clock time (a task gives up its CPU meanwhile).

        :raises Cancelled: the scheduler is shutting down.
        """
        if self._stopping:  # also when the deadline has passed already: a looping task must stop
            raise Cancelled("scheduler shutting down")
        deadline = self.clock.now() + seconds
        wq = WaitQueue(self)
        handle = self.call_at(deadline, wq.wake_all)
        try:
            wq.wait_until(lambda: self.clock.now() >= deadline)
        finally:
            handle.cancel()

    def tasks(self) -> list[Task]:
        """Every task spawned so far."""
        with self._mutex:
            return list(self._tasks)

    # -- timers ---------------------------------------------------------------
    def call_at(self, deadline: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` on the timer thread once the clock reaches ``deadline``.

        Timers fire in deadline order, ties in the order they were created.
        """
        self.start()
        with self._mutex:
            handle = TimerHandle(deadline, next(self._seq), fn, args)
            heapq.heappush(self._timers, handle)
            self._state_cond.notify_all()
        return handle

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` after ``delay`` clock seconds."""
        return self.call_at(self.clock.now() + delay, fn, *args)

    def call_every(self, interval: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` every ``interval`` clock seconds (first after one interval).

        The next deadline is the previous deadline plus ``interval`` (no drift); if the
        callback raises, the series stops and the failure surfaces at :meth:`shutdown`.

        :returns: a handle whose :meth:`~TimerHandle.cancel` stops the whole series.
        :raises SchedulerError: ``interval`` is not positive.
        """
        if interval <= 0:
            raise SchedulerError(f"interval {interval} must be positive")
        series = TimerHandle(self.clock.now() + interval, -1, fn, args)

        def tick() -> None:
            if series.cancelled:
                return
            series.fired = True
            fn(*args)
            if not series.cancelled:
                series.deadline += interval
                self.call_at(series.deadline, tick)

        self.call_at(series.deadline, tick)
        return series

    def _on_clock(self) -> None:
        with self._mutex:
            self._state_cond.notify_all()

    def _idle_locked(self) -> bool:
        return not self._timer_busy and all(rq.current is None and not rq.queue for rq in self._runqueues)

    def _due_locked(self) -> bool:
        timers = self._timers
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
        return bool(timers) and timers[0].deadline <= self.clock.now()

    def _timer_service(self) -> None:
        while True:
            with self._mutex:
                while not self._stopping:
                    if self._due_locked():
                        break
                    timeout = self.clock.real_timeout(self._timers[0].deadline) if self._timers else None
                    notified = self._state_cond.wait(timeout)
                    jump = getattr(self.clock, "jump_to", None)
                    if (not notified and self._timers and jump is not None
                            and getattr(self.clock, "autojump_threshold", None) is not None
                            and self._idle_locked()):
                        jump(self._timers[0].deadline, notify=False)
                if self._stopping:
                    return
                now = self.clock.now()
                due = []
                while self._timers and self._timers[0].deadline <= now:
                    h = heapq.heappop(self._timers)
                    if not h.cancelled:
                        due.append(h)
                self._timer_busy = True
            for h in due:
                if h.cancelled:
                    continue
                h.fired = True
                try:
                    h.fn(*h.args)
                except BaseException as exc:  # noqa: BLE001 - recorded, raised by shutdown()
                    log.error("timer callback %r failed", h.fn, exc_info=exc)
                    with self._mutex:
                        self._failures.append((getattr(h.fn, "__name__", repr(h.fn)), exc))
            with self._mutex:
                self._timers_fired += len(due)
                self._timer_busy = False
                self._state_cond.notify_all()

    # -- waiting and shutdown -------------------------------------------------
    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait (real time) until no timer is due, none is firing and no task is
        RUNNING or PENDING -- i.e. until the effects of a clock advance settled.

        :raises WaitTimeout: still busy after ``timeout`` real seconds.
        """
        end = time.monotonic() + timeout
        with self._mutex:
            while not (self._idle_locked() and not self._due_locked()):
                left = end - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"scheduler still busy after {timeout}s")
                self._state_cond.wait(min(left, 0.05))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every task that has not finished, stop timers and join all threads.

        Blocked tasks see :class:`Cancelled` raised from their wait; tasks that never
        ran are not started.  Idempotent.

        :raises SchedulerError: called from one of this scheduler's tasks.
        :raises WaitTimeout: a task did not stop within ``timeout`` real seconds.
        :raises TaskFailed: some task or timer raised and nobody called ``result()``.
        """
        me = current_task()
        if me is not None and me.scheduler is self:
            raise SchedulerError("a task cannot shut down its own scheduler")
        with self._mutex:
            self._stopping = True
            for task in self._tasks:
                if task.state != TaskState.TERMINATED:
                    task.cancelled = True
            for wq in list(self._queues):
                wq._cancel_all()
            for task in self._tasks:
                if task.state == TaskState.BLOCKED:
                    self._make_runnable(task)
            self._timers.clear()
            self._state_cond.notify_all()
            started = self._started
            tasks = list(self._tasks)
        unsubscribe = getattr(self.clock, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(self._on_clock)
        end = time.monotonic() + timeout
        if started and self._timer_thread.is_alive():
            self._timer_thread.join(max(0.0, end - time.monotonic()))
        stuck = []
        for task in tasks:
            task._thread.join(max(0.0, end - time.monotonic()))
            if task._thread.is_alive():
                stuck.append(task.name)
        if stuck or self._timer_thread.is_alive():
            raise WaitTimeout(f"kernel threads did not stop: {stuck or ['ktimer']}")
        failures = [(t.name, t.exception) for t in tasks if t.exception is not None and not t.observed]
        for t in tasks:
            t.observed = True
        with self._mutex:
            failures += self._failures
            self._failures = []
        if failures:
            raise TaskFailed(failures)  # type: ignore[arg-type]

    def statistics(self) -> SchedulerStatistics:
        """Run-queue occupancy, task states, timers and failures."""
        with self._mutex:
            cpus = tuple(RunQueueStatistics(rq.cpu, rq.current.name if rq.current else None, len(rq.queue),
                                            rq.switches) for rq in self._runqueues)
            counts = [0, 0, 0, 0]
            for t in self._tasks:
                counts[t.state] += 1
            failures = len(self._failures) + sum(1 for t in self._tasks if t.exception is not None)
            return SchedulerStatistics(cpus, len(self._tasks), tuple(counts),  # type: ignore[arg-type]
                                       sum(1 for h in self._timers if not h.cancelled), self._timers_fired,
                                       failures)
