"""The run gate: how the host stops scheduling a guest's vCPUs, and how it never does again.

Guest code in the simulator runs on ordinary host threads; between two steps it passes
through :meth:`RunGate.running` (the moment a real hypervisor would VMRUN it again).  Migration
pauses the gate for stop-and-copy, resumes it if the migration fails, and fences it once the
destination has committed: a fenced gate refuses every later entry, for good.

Lifecycle (one table, house rule 1)::

    running --pause--> paused --resume--> running
    running|paused --fence--> fenced            (terminal; resume raises GuestFenced)
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from svsm.sdk import FatalError, InvalidRequest

__all__ = ["GateState", "GateStatistics", "GuestFenced", "RunGate"]


class GuestFenced(InvalidRequest):
    """The guest was migrated away: this machine must never run it again.

    Whoever catches it stops driving the guest; there is nothing to retry.
    """


class GateState(enum.Enum):
    """Where the gate is (transitions in :data:`_TRANSITIONS`)."""

    RUNNING = "running"
    PAUSED = "paused"
    FENCED = "fenced"


_TRANSITIONS: dict[tuple[GateState, str], GateState] = {
    (GateState.RUNNING, "pause"): GateState.PAUSED,
    (GateState.PAUSED, "pause"): GateState.PAUSED,
    (GateState.PAUSED, "resume"): GateState.RUNNING,
    (GateState.RUNNING, "resume"): GateState.RUNNING,
    (GateState.RUNNING, "fence"): GateState.FENCED,
    (GateState.PAUSED, "fence"): GateState.FENCED,
    (GateState.FENCED, "fence"): GateState.FENCED,
}


class GateStatistics(NamedTuple):
    """Counters of a :class:`RunGate`."""

    state: str
    entries: int
    pauses: int
    inside: int
    last_pause_wait: float


class RunGate:
    """Admits guest steps while running, parks them while paused, refuses them once fenced.

    :param clock: monotonic seconds (injected).
    :param paused: start paused (a migration destination starts so until commit).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, paused: bool = False) -> None:
        self._cv = threading.Condition()
        self._state = GateState.PAUSED if paused else GateState.RUNNING
        self._inside = 0
        self._clock = clock
        self.entries = 0
        self.pauses = 0
        self.last_pause_wait = 0.0

    @property
    def state(self) -> GateState:
        """Current state."""
        return self._state

    def _step(self, event: str) -> None:
        nxt = _TRANSITIONS.get((self._state, event))
        if nxt is None:
            raise GuestFenced(f"{event} refused: the guest is {self._state.value}")
        self._state = nxt

    @contextlib.contextmanager
    def running(self, timeout: float | None = None) -> Iterator[None]:
        """Run one guest step: waits while paused.

        :raises GuestFenced: the gate is fenced (now or while waiting).
        :raises TimeoutError: still paused after ``timeout`` seconds.
        """
        with self._cv:
            if not self._cv.wait_for(lambda: self._state is not GateState.PAUSED, timeout):
                raise TimeoutError("the guest stayed paused")
            if self._state is GateState.FENCED:
                raise GuestFenced("the guest was migrated away")
            self._inside += 1
            self.entries += 1
        try:
            yield
        finally:
            with self._cv:
                self._inside -= 1
                self._cv.notify_all()

    def pause(self, timeout: float = 30.0) -> float:
        """Stop admitting guest steps and wait until none is in progress.

        :returns: seconds spent waiting for running steps to finish.
        :raises GuestFenced: the gate is fenced.
        :raises FatalError: a guest step did not finish within ``timeout`` (a stuck vCPU).
        """
        t0 = self._clock()
        with self._cv:
            self._step("pause")
            self.pauses += 1
            if not self._cv.wait_for(lambda: self._inside == 0, timeout):
                raise FatalError("a vCPU did not stop for the pause")
        self.last_pause_wait = self._clock() - t0
        return self.last_pause_wait

    def resume(self) -> None:
        """Admit guest steps again.  :raises GuestFenced: the gate is fenced (never resumes)."""
        with self._cv:
            self._step("resume")
            self._cv.notify_all()

    def fence(self) -> None:
        """Refuse every later guest step, forever (parked steps raise :class:`GuestFenced`)."""
        with self._cv:
            self._step("fence")
            self._cv.notify_all()

    def statistics(self) -> GateStatistics:
        """A snapshot of the counters."""
        with self._cv:
            return GateStatistics(self._state.value, self.entries, self.pauses, self._inside, self.last_pause_wait)
