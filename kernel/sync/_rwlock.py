"""Reader-writer lock with COCONUT's state word (coconut-svsm.md 1.6).

One 64-bit word: readers in bits 0-31, writers in bits 32-63.  Readers wait
while writers != 0; a writer first waits for other writers, increments the
writer count (so new readers queue behind it) and then waits for the readers to
drain.

Reader threads are tracked, so the two self-deadlocks COCONUT would spin in
forever are reported instead (:class:`SelfDeadlock`): a reader asking for the
write lock (upgrade), and a reader re-taking the read lock while a writer waits.
A recursive read with no writer waiting is allowed.  Read guards are released
by the thread that took them.
"""

from __future__ import annotations

import threading
from typing import Generic, NamedTuple, TypeVar

from ._errors import LockNotHeld, SelfDeadlock
from ._lockdep import LockOrderChecker, lock_order_checker
from ._spinlock import _default_name, _Guard, _MutableGuard, _registry

__all__ = ["RWLock", "ReadGuard", "WriteGuard", "RWLockStatistics", "READERS_MASK", "WRITER_SHIFT"]

T = TypeVar("T")

READERS_MASK = 0xFFFF_FFFF
WRITER_SHIFT = 32
_WRITER_ONE = 1 << WRITER_SHIFT

_get_ident = threading.get_ident


class RWLockStatistics(NamedTuple):
    """Snapshot of one reader-writer lock (immutable)."""

    name: str
    read_acquisitions: int
    write_acquisitions: int
    contentions: int
    readers: int
    writer: int | None  #: thread ident of the writer holding it


class RWLock(Generic[T]):
    """Many readers or one writer over ``value``.

    :param value: the protected data.
    :param name: lock class for the order checker (default: creation site).
    :param checker: order checker; defaults to :func:`lock_order_checker`.
    """

    __slots__ = (
        "_value", "name", "_checker", "_mutex", "_cond", "_state", "_waiters",
        "_writer", "_reads", "_writes", "_contentions", "_readers", "__weakref__",
    )

    def __init__(self, value: T = None, *, name: str | None = None,  # type: ignore[assignment]
                 checker: LockOrderChecker | None = None) -> None:
        self._value = value
        self.name = name or _default_name()
        self._checker = checker or lock_order_checker()
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._state = 0
        self._waiters = 0
        self._writer: int | None = None
        self._reads = 0
        self._writes = 0
        self._contentions = 0
        self._readers: dict[int, int] = {}  # thread ident -> read locks it holds
        _registry.add(self)

    @property
    def state(self) -> int:
        """The raw word: readers | writers << 32."""
        return self._state

    def read(self) -> ReadGuard[T]:
        """Take a shared lock, waiting while a writer holds or waits.

        :raises SelfDeadlock: the calling thread holds the write lock, or already holds a
            read lock while a writer waits (both would never return).
        :raises LockOrderViolation: order inversion (checker on).
        """
        me = _get_ident()
        if self._writer == me:
            raise SelfDeadlock(f"{self.name}: read lock while holding the write lock")
        checker = self._checker
        if checker.enabled:
            checker.before_acquire(self, self.name)
        mutex = self._mutex
        mutex.acquire()
        try:
            if self._state >> WRITER_SHIFT:
                if me in self._readers:
                    raise SelfDeadlock(f"{self.name}: recursive read lock while a writer waits")
                self._contentions += 1
                self._waiters += 1
                while self._state >> WRITER_SHIFT:
                    self._cond.wait()
                self._waiters -= 1
            self._state += 1
            self._reads += 1
            readers = self._readers
            readers[me] = readers.get(me, 0) + 1
        finally:
            mutex.release()
        if checker.enabled:
            checker.acquired(self, self.name)
        return ReadGuard(self)

    def try_read(self) -> ReadGuard[T] | None:
        """Shared lock if no writer holds or waits, else ``None`` (never waits)."""
        me = _get_ident()
        with self._mutex:
            if self._state >> WRITER_SHIFT:
                return None
            self._state += 1
            self._reads += 1
            self._readers[me] = self._readers.get(me, 0) + 1
        if self._checker.enabled:
            self._checker.acquired(self, self.name)
        return ReadGuard(self)

    def write(self) -> WriteGuard[T]:
        """Take the exclusive lock: wait out other writers, then drain the readers.

        :raises SelfDeadlock: the calling thread already holds the write lock.
        :raises LockOrderViolation: order inversion (checker on).
        """
        me = _get_ident()
        if self._writer == me:
            raise SelfDeadlock(f"{self.name}: write lock taken twice")
        if me in self._readers:
            raise SelfDeadlock(f"{self.name}: write lock while holding a read lock (upgrade)")
        checker = self._checker
        if checker.enabled:
            checker.before_acquire(self, self.name)
        with self._mutex:
            if self._state:
                self._contentions += 1
            self._waiters += 1
            while self._state >> WRITER_SHIFT:
                self._cond.wait()
            self._state += _WRITER_ONE
            while self._state & READERS_MASK:
                self._cond.wait()
            self._waiters -= 1
            self._writes += 1
        self._writer = me
        if checker.enabled:
            checker.acquired(self, self.name)
        return WriteGuard(self)

    def try_write(self) -> WriteGuard[T] | None:
        """Exclusive lock if the lock is entirely free, else ``None`` (never waits)."""
        with self._mutex:
            if self._state:
                return None
            self._state = _WRITER_ONE
            self._writes += 1
        self._writer = _get_ident()
        if self._checker.enabled:
            self._checker.acquired(self, self.name)
        return WriteGuard(self)

    def _read_unlock(self) -> None:
        me = _get_ident()
        mutex = self._mutex
        mutex.acquire()
        n = self._readers.get(me, 0)
        if not n:
            mutex.release()
            raise LockNotHeld(f"{self.name}: read unlock by thread {me}, which holds no read lock")
        if n == 1:
            del self._readers[me]
        else:
            self._readers[me] = n - 1
        state = self._state - 1
        self._state = state
        if self._waiters and not state & READERS_MASK:
            self._cond.notify_all()
        mutex.release()
        if self._checker.enabled:
            self._checker.released(self)

    def _write_unlock(self) -> None:
        if self._writer != _get_ident():
            raise LockNotHeld(f"{self.name}: write unlock by thread {_get_ident()}, writer {self._writer}")
        self._writer = None
        if self._checker.enabled:
            self._checker.released(self)
        with self._mutex:
            self._state -= _WRITER_ONE
            if self._waiters:
                self._cond.notify_all()

    @property
    def writer(self) -> int | None:
        """Thread ident of the writer, or ``None``."""
        return self._writer

    def held_by_me(self) -> bool:
        """True if the calling thread holds the lock for reading or for writing."""
        me = _get_ident()
        return self._writer == me or me in self._readers

    def statistics(self) -> RWLockStatistics:
        """Acquisition and contention counts plus the current holders."""
        return RWLockStatistics(self.name, self._reads, self._writes, self._contentions,
                                self._state & READERS_MASK, self._writer)

    def __repr__(self) -> str:
        return f"<RWLock {self.name} state={self._state:#x}>"


class ReadGuard(_Guard[T]):
    """Shared access to an :class:`RWLock`'s value (do not mutate it)."""

    __slots__ = ()

    def _unlock(self) -> None:
        self._lock._read_unlock()


class WriteGuard(_MutableGuard[T]):
    """Exclusive access to an :class:`RWLock`'s value."""

    __slots__ = ()

    def _unlock(self) -> None:
        self._lock._write_unlock()
