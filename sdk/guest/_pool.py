"""The guest OS's page allocator: accepted, validated private pages (split from ``_guest.py``).

The pool hands out pages one at a time or as contiguous runs; when it runs dry it asks its
``refill`` (the BSP's :meth:`Guest._accept_more`) to accept more guest RAM through the SVSM, as
Linux accepts unaccepted memory lazily.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from .._errors import InvalidRequest
from ._abi import PAGE_SIZE

__all__ = ["PagePool", "GuestOutOfMemory"]


class GuestOutOfMemory(InvalidRequest):
    """The guest has no free accepted page left and no unaccepted RAM to accept.

    .. versionadded:: 0.1
    """


class PagePool:
    """Private, validated guest pages the guest OS may use (its page allocator; thread-safe).

    :param pages: the first free pages.
    :param refill: ``refill(count) -> bool`` accepts more guest RAM into the pool when it runs dry
        (Linux's lazy acceptance of unaccepted memory); False when there is none left.
    """

    def __init__(self, pages: Iterable[int] = (), refill: Callable[[int], bool] | None = None) -> None:
        self._lock = threading.Lock()
        self._free = sorted(set(pages), reverse=True)
        self.refill = refill
        self._refilling = threading.local()

    def _refill(self, count: int) -> bool:
        """Accept more memory (not re-entered: accepting may itself need a page)."""
        if self.refill is None or getattr(self._refilling, "on", False):
            return False
        self._refilling.on = True
        try:
            return self.refill(count)
        finally:
            self._refilling.on = False

    def add(self, gpa: int, size: int) -> None:
        """Make ``[gpa, gpa+size)`` available."""
        with self._lock:
            self._free.extend(range(gpa + size - PAGE_SIZE, gpa - 1, -PAGE_SIZE))

    def take(self) -> int:
        """One page; accepts more guest RAM first if none is free.

        :raises GuestOutOfMemory: no free page and no RAM left to accept.
        """
        while True:
            with self._lock:
                if self._free:
                    return self._free.pop()
            if not self._refill(1):
                raise GuestOutOfMemory("guest out of accepted memory")

    def take_contiguous(self, count: int) -> list[int]:
        """``count`` physically contiguous pages (lowest run first).

        :raises GuestOutOfMemory: no such run is free and no RAM left to accept.
        """
        while True:
            run = self._take_contiguous(count)
            if run is not None:
                return run
            if not self._refill(count):
                raise GuestOutOfMemory(f"no {count} contiguous free guest pages")

    def _take_contiguous(self, count: int) -> list[int] | None:
        with self._lock:
            free = sorted(self._free)
            run = 1
            for i in range(1, len(free) + 1):
                if run >= count:
                    start = free[i - count]
                    pages = [start + k * PAGE_SIZE for k in range(count)]
                    taken = set(pages)
                    self._free = [p for p in self._free if p not in taken]
                    return pages
                if i < len(free) and free[i] == free[i - 1] + PAGE_SIZE:
                    run += 1
                else:
                    run = 1
            return None

    def give(self, gpa: int) -> None:
        """Return a page."""
        with self._lock:
            self._free.append(gpa)

    def give_many(self, pages: Iterable[int]) -> None:
        """Return pages, as :meth:`give` one after the other would."""
        with self._lock:
            self._free.extend(pages)

    def __len__(self) -> int:
        with self._lock:
            return len(self._free)
