"""Lock-order checker, modelled on Linux lockdep.

Every lock belongs to a *class* (its name; locks created at the same place with
no explicit name share the class of that place).  Whenever a thread takes class
B while it holds class A, the edge A -> B enters a global graph.  If a new edge
closes a cycle, two code paths take the same classes in opposite orders: a
deadlock is *possible*, even if the timing never made it happen.  That is
reported the first time the edge is taken, before the lock is acquired.

The checker costs one attribute test per acquisition when off; when on it keeps
a per-thread list of held locks and tests the held classes against a dict.  Only
a never-seen edge takes the mutex and runs the cycle search.

Switch: ``SVSM_LOCKDEP=1`` in the environment enables the default checker at
import; :meth:`LockOrderChecker.enable` does so at run time (tests do).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, NamedTuple

from ._callsite import CallSite, Frame, capture_call_site
from ._errors import LockOrderViolation

__all__ = ["LockOrderChecker", "LockOrderStatistics", "lock_order_checker"]

log = logging.getLogger(__name__)

_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class LockOrderStatistics(NamedTuple):
    """Snapshot of the checker (immutable)."""

    enabled: bool
    classes: int
    edges: int
    violations: int


class _Edge(NamedTuple):
    held_site: CallSite  # where the outer lock was taken
    site: CallSite  # where the inner lock was taken while holding the outer


class LockOrderChecker:
    """A graph of lock classes and the per-thread lists of held locks.

    :param enabled: check from the start.
    :param raise_on_violation: raise :class:`LockOrderViolation` from the offending
        acquisition (tests); otherwise log it at ERROR and keep it in :attr:`violations`.
    """

    def __init__(self, *, enabled: bool = False, raise_on_violation: bool = True) -> None:
        self.enabled = enabled
        self.raise_on_violation = raise_on_violation
        self._graph: dict[str, dict[str, _Edge]] = {}
        self._classes: set[str] = set()
        self._mutex = threading.Lock()
        self._local = threading.local()
        self.violations: list[LockOrderViolation] = []

    # -- switches ----------------------------------------------------------
    def enable(self, raise_on_violation: bool | None = None) -> None:
        """Start checking (locks already held by running threads are not known)."""
        if raise_on_violation is not None:
            self.raise_on_violation = raise_on_violation
        self.enabled = True

    def disable(self) -> None:
        """Stop checking; the graph is kept."""
        self.enabled = False

    def reset(self) -> None:
        """Forget the graph and the recorded violations (per-test isolation)."""
        with self._mutex:
            self._graph.clear()
            self._classes.clear()
            self.violations.clear()

    # -- hooks called by the locks ----------------------------------------
    def _held(self) -> list[tuple[Any, str, Any]]:
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = []
        return held

    def held_classes(self) -> list[str]:
        """Classes the calling thread holds, outermost first (for diagnostics)."""
        return [cls for _, cls, _ in self._held()]

    def before_acquire(self, lock: object, cls: str) -> None:
        """Check the edges (held -> ``cls``) before a blocking acquisition.

        :raises LockOrderViolation: a new edge closes a cycle and raising is on.
        """
        held = self._held()
        if not held:
            if cls not in self._classes:
                with self._mutex:
                    self._classes.add(cls)
            return
        graph = self._graph
        site: CallSite | None = None
        for _, outer, outer_site in held:
            if outer == cls:
                continue  # nesting within one class is not ordered (see docs)
            succ = graph.get(outer)
            if succ is not None and cls in succ:
                continue
            if site is None:
                site = capture_call_site(skip=2, depth=3, exclude=_HERE)
            self._add_edge(outer, cls, _Edge(_expand(outer_site), site))

    def acquired(self, lock: object, cls: str) -> None:
        """Record that the calling thread now holds ``lock``.

        Only the innermost caller frame (code object, line) is kept -- a few hundred
        nanoseconds; it becomes a :class:`CallSite` only if an edge report needs it.
        """
        f = sys._getframe(1)
        while f is not None and f.f_code.co_filename.startswith(_HERE):
            f = f.f_back
        self._held().append((lock, cls, (f.f_code, f.f_lineno) if f is not None else None))

    def released(self, lock: object) -> None:
        """Forget ``lock`` from the calling thread's list (tolerates unknown locks)."""
        held = self._held()
        for i in range(len(held) - 1, -1, -1):
            if held[i][0] is lock:
                del held[i]
                return

    # -- graph ------------------------------------------------------------
    def _add_edge(self, outer: str, inner: str, edge: _Edge) -> None:
        with self._mutex:
            succ = self._graph.setdefault(outer, {})
            if inner in succ:
                return
            self._classes.update((outer, inner))
            path = self._path(inner, outer)
            succ[inner] = edge
            if path is None:
                return
            cycle = [*path, inner]  # inner -> ... -> outer -> inner
            violation = LockOrderViolation(cycle, self._report(cycle))
            self.violations.append(violation)
        log.error("%s", violation.report)
        if self.raise_on_violation:
            raise violation

    def _path(self, src: str, dst: str) -> list[str] | None:
        """A path src -> ... -> dst in the graph, or None (iterative DFS)."""
        if src == dst:
            return [src]
        parent: dict[str, str] = {src: src}
        stack = [src]
        while stack:
            node = stack.pop()
            for nxt in self._graph.get(node, ()):
                if nxt in parent:
                    continue
                parent[nxt] = node
                if nxt == dst:
                    path = [dst]
                    while path[-1] != src:
                        path.append(parent[path[-1]])
                    return path[::-1]
                stack.append(nxt)
        return None

    def _report(self, cycle: list[str]) -> str:
        lines = [
            "possible deadlock: lock order inversion " + " -> ".join(cycle),
        ]
        for a, b in zip(cycle, cycle[1:]):
            edge = self._graph[a][b]
            lines.append(f"{b!r} taken while holding {a!r} at:")
            lines.append(edge.site.format())
            lines.append(f"  ({a!r} was taken at:)")
            lines.append(edge.held_site.format())
        return "\n".join(lines)

    def statistics(self) -> LockOrderStatistics:
        """Counts of classes, edges and violations seen so far."""
        with self._mutex:
            return LockOrderStatistics(
                self.enabled,
                len(self._classes),
                sum(len(s) for s in self._graph.values()),
                len(self.violations),
            )


def _expand(raw: tuple[Any, int] | None) -> CallSite:
    if raw is None:
        return CallSite()
    code, lineno = raw
    return CallSite((Frame(code.co_filename, lineno, code.co_name),))


_default = LockOrderChecker(enabled=os.environ.get("SVSM_LOCKDEP") == "1")


def lock_order_checker() -> LockOrderChecker:
    """The process-wide checker that locks use unless given another one."""
    return _default
