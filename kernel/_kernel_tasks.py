"""The SVSM's kernel tasks: its scheduler and the periodic work it runs (issue #3).

Upstream COCONUT runs kernel tasks on its vCPUs' run queues next to the request loops
(coconut-svsm.md 1.9).  Here :class:`KernelTasks` owns the :class:`~svsm.kernel.sched.Scheduler`
built at kernel init (one run queue per vCPU, each task running as its CPU's per-CPU area) and
starts the periodic kernel work as a task on CPU 0:

* ``housekeeping``: every :data:`HOUSEKEEPING_INTERVAL` seconds of the injected clock, give the
  empty slab pages back to the page allocator (a cache reaper) and drop kernel work that its
  submitter abandoned (:meth:`Svsm.run_at_vmpl0` timed out).

Creating the scheduler costs no thread; the first task starts the timer thread and the task's
own (about a millisecond at the end of boot).  :meth:`KernelTasks.shutdown` cancels the tasks
(their ``sleep`` raises :class:`~svsm.kernel.sched.Cancelled`) before the kernel's leak check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

from svsm.kernel.sched import Cancelled, Scheduler, SchedulerStatistics

__all__ = ["KernelTasks", "KernelTaskStatistics", "HOUSEKEEPING_INTERVAL", "CallableClock"]

log = logging.getLogger("svsm.kernel.tasks")

#: Seconds between two housekeeping rounds.
HOUSEKEEPING_INTERVAL = 0.5


class CallableClock:
    """A :class:`~svsm.kernel.sched.Clock` over the kernel's injected ``clock()`` (seconds)."""

    def __init__(self, fn: Callable[[], float]) -> None:
        self._fn = fn

    def now(self) -> float:
        """``clock()``."""
        return self._fn()

    def real_timeout(self, deadline: float) -> float | None:
        """Seconds until ``deadline`` by this clock (never negative)."""
        return max(0.0, deadline - self._fn())

    def subscribe(self, callback: Callable[[], None]) -> None:
        """The injected clock never jumps: nothing to subscribe to."""

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        """Nothing was subscribed."""


class KernelTaskStatistics(NamedTuple):
    """The scheduler's snapshot plus what the periodic work did."""

    scheduler: SchedulerStatistics
    housekeeping_rounds: int
    slab_pages_reaped: int
    abandoned_work_dropped: int


class KernelTasks:
    """The kernel's scheduler and its periodic tasks.

    :param ncpus: run queues (one per vCPU).
    :param clock: the kernel's injected clock.
    :param cpu_context: ``cpu_context(i)`` makes a task run as CPU ``i`` (its per-CPU area).
    :param reap: gives empty slab pages back; returns how many.
    :param drop_abandoned: removes abandoned kernel work; returns how many.
    :param interval: seconds between housekeeping rounds.
    """

    def __init__(
        self,
        ncpus: int,
        clock: Callable[[], float],
        cpu_context: Callable[[int], AbstractContextManager[Any]],
        *,
        reap: Callable[[], int],
        drop_abandoned: Callable[[], int],
        interval: float = HOUSEKEEPING_INTERVAL,
    ) -> None:
        self.scheduler = Scheduler(ncpus, clock=CallableClock(clock), cpu_context=cpu_context)
        self._reap = reap
        self._drop_abandoned = drop_abandoned
        self._interval = interval
        self._lock = threading.Lock()
        self._rounds = self._reaped = self._dropped = 0
        self._started = False

    def start(self) -> None:
        """Start the periodic kernel work (idempotent)."""
        if self._started:
            return
        self._started = True
        self.scheduler.spawn(self._housekeeping, name="housekeeping", cpu=0)

    def _housekeeping(self) -> None:
        sched = self.scheduler
        try:
            while True:
                sched.sleep(self._interval)
                self.run_housekeeping()
        except Cancelled:
            return

    def run_housekeeping(self) -> None:
        """One housekeeping round (what the periodic task does each interval)."""
        reaped = self._reap()
        dropped = self._drop_abandoned()
        with self._lock:
            self._rounds += 1
            self._reaped += reaped
            self._dropped += dropped
        if reaped or dropped:
            log.debug("housekeeping: %d slab pages reaped, %d abandoned work items dropped", reaped, dropped)

    def shutdown(self) -> None:
        """Cancel the kernel tasks and join their threads.

        :raises TaskFailed: a kernel task or timer failed (a kernel bug).
        :raises WaitTimeout: a task did not stop.
        """
        self.scheduler.shutdown()

    def statistics(self) -> KernelTaskStatistics:
        """Snapshot."""
        with self._lock:
            return KernelTaskStatistics(self.scheduler.statistics(), self._rounds, self._reaped, self._dropped)
