"""Ticket spin lock with an owner, RAII guards and lock-order checking.

COCONUT's ``SpinLock<T>`` (coconut-svsm.md 1.6) hands out tickets from
``current`` and serves them in order from ``holder``; ``try_lock`` succeeds only
when ``current == holder``.  Threads are our vCPUs, so instead of spinning a
waiter sleeps on a condition until its ticket is served: same FIFO order, no
burnt CPU.  The uncontended path is one short mutex section on each side.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from ._callsite import capture_call_site
from ._errors import LockNotHeld, SelfDeadlock
from ._lockdep import LockOrderChecker, lock_order_checker

__all__ = ["SpinLock", "LockGuard", "MappedGuard", "LockStatistics", "all_lock_statistics"]

T = TypeVar("T")
U = TypeVar("U")

_get_ident = threading.get_ident

#: Every live lock (weakly), for :func:`all_lock_statistics`.
_registry: weakref.WeakSet = weakref.WeakSet()  # type: ignore[type-arg]


def all_lock_statistics() -> tuple[Any, ...]:
    """Statistics of every live SpinLock and RWLock, by name (for run reports).

    :returns: :class:`LockStatistics` / ``RWLockStatistics`` snapshots.
    """
    return tuple(sorted((lock.statistics() for lock in list(_registry)), key=lambda st: st.name))


def _default_name(depth: int = 2) -> str:
    site = capture_call_site(skip=depth, depth=1)
    return f"{site[0].filename}:{site[0].lineno}" if site else "<unnamed lock>"


class LockStatistics(NamedTuple):
    """Snapshot of one lock (immutable)."""

    name: str
    acquisitions: int
    contentions: int  #: acquisitions that had to wait
    owner: int | None  #: thread ident of the holder


class SpinLock(Generic[T]):
    """A FIFO (ticket) lock protecting ``value``.

    :param value: the protected data, reached through the guard.
    :param name: lock class for the order checker; defaults to the creation site,
        so all locks made by one line of code share a class.
    :param checker: order checker; defaults to :func:`lock_order_checker`.
    """

    __slots__ = (
        "_value", "name", "_checker", "_mutex", "_cond", "_current", "_holder",
        "_waiters", "_owner", "_acquisitions", "_contentions", "__weakref__",
    )

    def __init__(self, value: T = None, *, name: str | None = None,  # type: ignore[assignment]
                 checker: LockOrderChecker | None = None) -> None:
        self._value = value
        self.name = name or _default_name()
        self._checker = checker or lock_order_checker()
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._current = 0  # next ticket to hand out
        self._holder = 0  # ticket now served
        self._waiters = 0
        self._owner: int | None = None
        self._acquisitions = 0
        self._contentions = 0
        _registry.add(self)

    # -- acquisition --------------------------------------------------------
    def lock(self) -> LockGuard[T]:
        """Take the lock, waiting for our ticket.

        :returns: a guard; release it with ``with`` or :meth:`LockGuard.release`.
        :raises SelfDeadlock: the calling thread already holds this lock.
        :raises LockOrderViolation: taking it now closes a lock-order cycle (checker on).
        """
        me = _get_ident()
        if self._owner == me:
            raise SelfDeadlock(f"thread {me} already holds {self.name}")
        checker = self._checker
        if checker.enabled:
            checker.before_acquire(self, self.name)
        mutex = self._mutex
        mutex.acquire()
        ticket = self._current
        self._current = ticket + 1
        if ticket == self._holder:
            mutex.release()  # uncontended: one short critical section
        else:
            self._wait_turn(ticket)
        self._owner = me
        self._acquisitions += 1
        if checker.enabled:
            checker.acquired(self, self.name)
        return LockGuard(self)

    def _wait_turn(self, ticket: int) -> None:
        """Contended path: sleep until ``ticket`` is served, then drop the mutex (held on entry)."""
        try:
            self._contentions += 1
            self._waiters += 1
            while self._holder != ticket:
                self._cond.wait()
            self._waiters -= 1
        finally:
            self._mutex.release()

    def try_lock(self) -> LockGuard[T] | None:
        """Take the lock only if nobody holds or waits for it.

        :returns: a guard, or ``None`` if the lock is busy (never waits).
        """
        with self._mutex:
            if self._current != self._holder:
                return None
            self._current += 1
        self._owner = _get_ident()
        self._acquisitions += 1
        if self._checker.enabled:
            self._checker.acquired(self, self.name)
        return LockGuard(self)

    def _unlock(self) -> None:
        me = _get_ident()
        if self._owner != me:
            raise LockNotHeld(f"{self.name} released by thread {me}, owner {self._owner}")
        self._owner = None
        if self._checker.enabled:
            self._checker.released(self)
        mutex = self._mutex
        mutex.acquire()
        self._holder += 1
        if self._waiters:
            self._cond.notify_all()
        mutex.release()

    def __enter__(self) -> LockGuard[T]:
        # lock()'s uncontended path, inlined: ``with lock:`` is the kernel's hot path
        me = _get_ident()
        if self._owner == me or self._checker.enabled:
            return self.lock()
        mutex = self._mutex
        mutex.acquire()
        ticket = self._current
        self._current = ticket + 1
        if ticket == self._holder:
            mutex.release()
        else:
            self._wait_turn(ticket)
        self._owner = me
        self._acquisitions += 1
        return LockGuard(self)

    def __exit__(self, *exc: object) -> None:
        # The guard may have been released early inside the block (RAII drop).
        if self._owner != _get_ident():
            return
        if self._checker.enabled:
            self._unlock()
            return
        self._owner = None  # _unlock(), inlined
        mutex = self._mutex
        mutex.acquire()
        self._holder += 1
        if self._waiters:
            self._cond.notify_all()
        mutex.release()

    # -- inspection ---------------------------------------------------------
    @property
    def owner(self) -> int | None:
        """Thread ident of the holder, or ``None``."""
        return self._owner

    def locked(self) -> bool:
        """True while some thread holds the lock."""
        return self._current != self._holder

    def held_by_me(self) -> bool:
        """True if the calling thread holds the lock (for assertions)."""
        return self._owner == _get_ident()

    def statistics(self) -> LockStatistics:
        """Acquisition and contention counts."""
        return LockStatistics(self.name, self._acquisitions, self._contentions, self._owner)

    def __repr__(self) -> str:
        return f"<SpinLock {self.name} owner={self._owner}>"


class _Guard(Generic[T]):
    """What every guard shares: it holds ``_lock`` until released, by ``with`` exit (also on an
    exception) or by :meth:`release`; subclasses say how to unlock (``_unlock``)."""

    __slots__ = ("_lock", "_held")

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._held = True

    def _get_value(self) -> T:
        if not self._held:
            raise LockNotHeld(f"guard of {self._lock.name} used after release")
        return self._lock._value  # type: ignore[no-any-return]

    value = property(_get_value, doc="The protected data.")

    def map(self, project: Callable[[T], U]) -> MappedGuard[U]:
        """A guard that exposes ``project(value)`` and owns the release.

        :param project: picks the sub-field, e.g. ``lambda s: s.vmsas``.
        """
        return MappedGuard(self, project(self.value))

    def release(self) -> None:
        """Release the lock now.

        :raises LockNotHeld: already released, or called from another thread.
        """
        if not self._held:
            raise LockNotHeld(f"guard of {self._lock.name} released twice")
        self._unlock()  # type: ignore[attr-defined]
        self._held = False

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held:
            self.release()


class _MutableGuard(_Guard[T]):
    """A guard through which the protected value may be replaced (exclusive holders only)."""

    __slots__ = ()

    def _set_value(self, new: T) -> None:
        if not self._held:
            raise LockNotHeld(f"guard of {self._lock.name} used after release")
        self._lock._value = new

    value = property(_Guard._get_value, _set_value, doc="The protected data.")


class LockGuard(_MutableGuard[T]):
    """Proof of holding a :class:`SpinLock`; gives access to the protected value.

    Released on ``with`` exit (also on an exception) or by :meth:`release`.
    """

    __slots__ = ()

    def _unlock(self) -> None:
        self._lock._unlock()


class MappedGuard(Generic[U]):
    """A guard narrowed to a sub-field; releasing it releases the parent lock."""

    __slots__ = ("_parent", "value")

    def __init__(self, parent: Any, value: U) -> None:
        self._parent = parent
        self.value = value

    def release(self) -> None:
        """Release the underlying lock."""
        self._parent.release()

    def __enter__(self) -> MappedGuard[U]:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._parent._held:
            self._parent.release()
