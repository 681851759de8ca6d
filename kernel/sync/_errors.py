"""Errors of the lock layer.  All are broken kernel invariants (:class:`FatalError`)."""

from __future__ import annotations

from svsm.sdk import FatalError

__all__ = ["LockError", "LockNotHeld", "SelfDeadlock", "LockOrderViolation"]


class LockError(FatalError):
    """A lock was misused; the kernel is in an undefined state and must panic."""


class LockNotHeld(LockError):
    """Release of a lock (or guard) the current thread does not hold."""


class SelfDeadlock(LockError):
    """The current thread tried to take, exclusively, a lock it already holds.

    Real hardware would spin forever; we report it instead.
    """


class LockOrderViolation(LockError):
    """Taking a lock would close a cycle in the lock-order graph (a possible deadlock).

    Raised (or recorded) the first time the inverted order is *taken*, even if no
    deadlock happened.  Fix the code so that every path takes the classes in one order.

    :ivar cycle: lock class names along the cycle, starting and ending with the
        class being acquired.
    :ivar report: a multi-line description with the call site of every edge.
    """

    def __init__(self, cycle: list[str], report: str) -> None:
        super().__init__(report)
        self.cycle = cycle
        self.report = report
