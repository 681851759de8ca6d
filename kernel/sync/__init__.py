"""svsm.kernel.sync -- kernel locks and the lock-order checker.

:class:`SpinLock` (ticket, FIFO) and :class:`RWLock` (COCONUT's readers/writers
word) protect a value reached through RAII guards (context managers).  Both
record their owner and count acquisitions and contention.  The lock-order
checker (:func:`lock_order_checker`) reports an AB/BA inversion the first time
both orders have been taken; enable it with ``SVSM_LOCKDEP=1`` or
``lock_order_checker().enable()``.

.. versionadded:: 0.1
"""

from ._callsite import CallSite as CallSite
from ._callsite import Frame as Frame
from ._callsite import capture_call_site as capture_call_site
from ._errors import LockError as LockError
from ._errors import LockNotHeld as LockNotHeld
from ._errors import LockOrderViolation as LockOrderViolation
from ._errors import SelfDeadlock as SelfDeadlock
from ._lockdep import LockOrderChecker as LockOrderChecker
from ._lockdep import LockOrderStatistics as LockOrderStatistics
from ._lockdep import lock_order_checker as lock_order_checker
from ._rwlock import ReadGuard as ReadGuard
from ._rwlock import RWLock as RWLock
from ._rwlock import RWLockStatistics as RWLockStatistics
from ._rwlock import WriteGuard as WriteGuard
from ._spinlock import LockGuard as LockGuard
from ._spinlock import LockStatistics as LockStatistics
from ._spinlock import MappedGuard as MappedGuard
from ._spinlock import SpinLock as SpinLock
from ._spinlock import all_lock_statistics as all_lock_statistics

__all__ = [
    "CallSite", "Frame", "capture_call_site",
    "LockError", "LockNotHeld", "LockOrderViolation", "SelfDeadlock",
    "LockOrderChecker", "LockOrderStatistics", "lock_order_checker",
    "SpinLock", "LockGuard", "MappedGuard", "LockStatistics", "all_lock_statistics",
    "RWLock", "ReadGuard", "WriteGuard", "RWLockStatistics",
]
