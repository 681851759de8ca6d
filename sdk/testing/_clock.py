"""A fake clock for deterministic tests (trio's ``MockClock``, without autojump)."""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """Time that moves only when told to.

    Pass :meth:`monotonic` where seconds are expected and :meth:`time_ns` where
    nanoseconds are (e.g. ``Providers(clock=clock.time_ns)`` for the module time syscall).

    :param start: initial time in seconds.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._ns = int(start * 1e9)
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        """Current time in seconds."""
        with self._lock:
            return self._ns / 1e9

    def time_ns(self) -> int:
        """Current time in nanoseconds."""
        with self._lock:
            return self._ns

    def advance(self, seconds: float) -> None:
        """Move time forward.  :raises ValueError: negative ``seconds``."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._ns += int(seconds * 1e9)

    __call__ = monotonic
