"""Clocks: fake time moves only when told to, and tells its listeners."""

from __future__ import annotations

import pytest

from svsm.kernel.sched import Clock, FakeClock, MonotonicClock


def test_fake_clock_advance_and_jump_notify() -> None:
    c = FakeClock(5.0)
    calls: list[float] = []
    c.subscribe(lambda: calls.append(c.now()))
    assert c.now() == 5.0 and c.real_timeout(100) is None
    c.advance(1.5)
    c.jump_to(3.0)  # never backwards
    c.jump_to(10.0)
    c.jump_to(11.0, notify=False)
    assert c.now() == 11.0 and calls == [6.5, 10.0]
    with pytest.raises(ValueError):
        c.advance(-1)
    assert FakeClock(autojump_threshold=0.1).real_timeout(1e9) == 0.1


def test_scheduler_unsubscribes_at_shutdown() -> None:
    from svsm.kernel.sched import Scheduler

    c = FakeClock()
    s = Scheduler(1, clock=c)
    assert len(c._listeners) == 1
    s.shutdown()
    assert c._listeners == []


def test_monotonic_clock() -> None:
    c = MonotonicClock()
    a = c.now()
    assert c.now() >= a and c.real_timeout(a - 1) == 0.0 and 0 < c.real_timeout(c.now() + 5) <= 5
    assert isinstance(c, Clock) and isinstance(FakeClock(), Clock)
