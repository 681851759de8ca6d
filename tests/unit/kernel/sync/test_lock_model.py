"""Hypothesis state machine: single-thread try/lock/release sequences against a model of the state word."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from svsm.kernel.sync import LockNotHeld, LockOrderChecker, RWLock, SelfDeadlock, SpinLock


class LockModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        checker = LockOrderChecker(enabled=True)
        self.rw = RWLock(name="rw", checker=checker)
        self.spin = SpinLock(name="spin", checker=checker)
        self.readers: list = []  # type: ignore[type-arg]
        self.writer = None
        self.spin_guard = None
        self.stale: list = []  # type: ignore[type-arg]
        self.checker = checker

    @rule()
    def try_read(self) -> None:
        g = self.rw.try_read()
        assert (g is None) == (self.writer is not None)
        if g is not None:
            self.readers.append(g)

    @precondition(lambda self: self.writer is None and self.readers == [])
    @rule()
    def try_write(self) -> None:
        g = self.rw.try_write()
        assert g is not None
        self.writer = g

    @precondition(lambda self: self.writer is not None or self.readers)
    @rule()
    def try_write_busy(self) -> None:
        assert self.rw.try_write() is None

    @precondition(lambda self: self.writer is not None)
    @rule()
    def read_while_writing_is_self_deadlock(self) -> None:
        with pytest.raises(SelfDeadlock):
            self.rw.read()

    @precondition(lambda self: self.readers)
    @rule(data=st.data())
    def release_reader(self, data: st.DataObject) -> None:
        g = self.readers.pop(data.draw(st.integers(0, len(self.readers) - 1)))
        g.release()
        self.stale.append(g)

    @precondition(lambda self: self.writer is not None)
    @rule()
    def release_writer(self) -> None:
        self.writer.release()
        self.stale.append(self.writer)
        self.writer = None

    @rule()
    def spin_try(self) -> None:
        g = self.spin.try_lock()
        assert (g is None) == (self.spin_guard is not None)
        if g is not None:
            self.spin_guard = g

    @precondition(lambda self: self.spin_guard is not None)
    @rule()
    def spin_release(self) -> None:
        self.spin_guard.release()
        self.stale.append(self.spin_guard)
        self.spin_guard = None

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def stale_guard_release(self, data: st.DataObject) -> None:
        with pytest.raises(LockNotHeld):
            data.draw(st.sampled_from(self.stale)).release()

    @invariant()
    def state_word(self) -> None:
        assert self.rw.state == len(self.readers) | (1 << 32 if self.writer is not None else 0)
        assert self.spin.locked() == (self.spin_guard is not None)
        assert len(self.checker.held_classes()) == len(self.readers) + (self.writer is not None) + (
            self.spin_guard is not None)

    def teardown(self) -> None:
        for g in [*self.readers, self.writer, self.spin_guard]:
            if g is not None:
                g.release()


TestLockModel = LockModel.TestCase
TestLockModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
