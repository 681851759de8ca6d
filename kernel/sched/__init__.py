"""svsm.kernel.sched -- kernel tasks, per-CPU run queues, wait queues and timers.

Cooperative, non-preemptive round-robin per CPU as in COCONUT; each task is a
kernel thread.  Time comes from an injected :class:`Clock`; tests use
:class:`FakeClock` (``advance()``, autojump) and :meth:`Scheduler.wait_idle`.

.. versionadded:: 0.1
"""

from ._clock import Clock as Clock
from ._clock import FakeClock as FakeClock
from ._clock import MonotonicClock as MonotonicClock
from ._errors import Cancelled as Cancelled
from ._errors import SchedulerError as SchedulerError
from ._errors import TaskFailed as TaskFailed
from ._errors import WaitTimeout as WaitTimeout
from ._scheduler import RunQueueStatistics as RunQueueStatistics
from ._scheduler import Scheduler as Scheduler
from ._scheduler import SchedulerStatistics as SchedulerStatistics
from ._scheduler import TimerHandle as TimerHandle
from ._task import EXIT_EXCEPTION as EXIT_EXCEPTION
from ._task import TASK_TRANSITIONS as TASK_TRANSITIONS
from ._task import Task as Task
from ._task import TaskState as TaskState
from ._task import WaitQueue as WaitQueue
from ._task import current_task as current_task

__all__ = [
    "Clock", "FakeClock", "MonotonicClock",
    "Cancelled", "SchedulerError", "TaskFailed", "WaitTimeout",
    "RunQueueStatistics", "Scheduler", "SchedulerStatistics", "TimerHandle",
    "EXIT_EXCEPTION", "TASK_TRANSITIONS", "Task", "TaskState", "WaitQueue", "current_task",
]
