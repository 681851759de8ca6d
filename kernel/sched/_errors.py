"""Errors of the scheduler."""

from __future__ import annotations

from svsm.sdk import FatalError, SvsmError

__all__ = ["SchedulerError", "TaskFailed", "WaitTimeout", "Cancelled"]


class SchedulerError(FatalError):
    """The scheduler was misused (e.g. a task calling :meth:`shutdown`) or failed to stop."""


class TaskFailed(SchedulerError):
    """A kernel task or timer callback raised and nobody collected the error.

    :ivar failures: ``(name, exception)`` for every failure, in order.
    """

    def __init__(self, failures: list[tuple[str, BaseException]]) -> None:
        names = ", ".join(f"{n}: {e!r}" for n, e in failures)
        super().__init__(f"{len(failures)} kernel task(s) failed: {names}")
        self.failures = failures


class WaitTimeout(SchedulerError):
    """A real-time wait (``wait_idle``, ``wait_terminated``, shutdown join) ran out."""


class Cancelled(SvsmError):
    """Raised inside a task blocked (or yielding) during scheduler shutdown.

    Let it propagate: the task then terminates cleanly.
    """
