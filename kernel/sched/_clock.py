"""Injectable clocks (house rule 9): the real monotonic clock and a fake one for tests.

The scheduler asks a clock two things: :meth:`now`, and how long to wait in real
time for a deadline (:meth:`real_timeout`).  A fake clock never moves by
itself: tests :meth:`FakeClock.advance` it, or set ``autojump_threshold`` so the
scheduler jumps to the next timer once everything has been idle that long (as
trio's ``MockClock``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "MonotonicClock", "FakeClock"]


@runtime_checkable
class Clock(Protocol):
    """What the scheduler needs from a clock."""

    def now(self) -> float:
        """Current time in seconds (any epoch; only differences matter)."""
        ...

    def real_timeout(self, deadline: float) -> float | None:
        """Real seconds to wait for ``deadline``; None = until notified of a time change."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (no arguments, from the thread that moved time) after every jump."""
        ...


class MonotonicClock:
    """``time.monotonic``; waits really last."""

    def now(self) -> float:
        """Seconds from ``time.monotonic``."""
        return time.monotonic()

    def real_timeout(self, deadline: float) -> float | None:
        """Seconds until ``deadline`` (never negative)."""
        return max(0.0, deadline - time.monotonic())

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Real time never jumps; nothing to subscribe to."""

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        """Nothing was subscribed."""


class FakeClock:
    """Virtual time for tests.

    :param start: initial time.
    :param autojump_threshold: if not None, the scheduler advances the clock to the
        next timer deadline after all tasks have been blocked for this many real seconds.
    """

    def __init__(self, start: float = 0.0, *, autojump_threshold: float | None = None) -> None:
        self._now = float(start)
        self.autojump_threshold = autojump_threshold
        self._mutex = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        """The virtual time."""
        return self._now

    def real_timeout(self, deadline: float) -> float | None:
        """None (wait for :meth:`advance`), or the autojump threshold."""
        return self.autojump_threshold

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Register a listener for :meth:`advance` / :meth:`jump_to`."""
        with self._mutex:
            self._listeners.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        """Forget a listener (a scheduler that shut down); unknown ones are ignored."""
        with self._mutex:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and tell the listeners.

        :raises ValueError: ``seconds`` is negative (time never goes back).
        """
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by {seconds}")
        with self._mutex:
            self._now += seconds
            listeners = list(self._listeners)
        for cb in listeners:
            cb()

    def jump_to(self, when: float, *, notify: bool = True) -> None:
        """Set the time to ``when`` if that is later than now."""
        with self._mutex:
            if when <= self._now:
                return
            self._now = when
            listeners = list(self._listeners) if notify else []
        for cb in listeners:
            cb()
