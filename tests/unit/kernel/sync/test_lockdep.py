"""The lock-order checker reports an inversion when it becomes possible, not when it deadlocks."""

from __future__ import annotations

import threading

import pytest

from svsm.kernel.sync import LockOrderChecker, LockOrderViolation, RWLock, SpinLock, lock_order_checker


@pytest.fixture
def checker() -> LockOrderChecker:
    return LockOrderChecker(enabled=True)


def test_ab_ba_reported_first_time_even_without_deadlock(checker: LockOrderChecker) -> None:
    a = SpinLock(name="A", checker=checker)
    b = SpinLock(name="B", checker=checker)

    def path1() -> None:
        with a:
            with b:
                pass

    t = threading.Thread(target=path1)  # another thread, finished long before: no deadlock possible now
    t.start()
    t.join()
    with b:
        with pytest.raises(LockOrderViolation) as ei:
            a.lock()
        assert not a.locked()  # reported *before* taking it
    assert ei.value.cycle == ["A", "B", "A"]
    assert "test_lockdep.py" in ei.value.report  # call sites of both orders
    assert checker.statistics().violations == 1
    # the edge is now known: reported once only
    with b:
        with a:
            pass
    assert checker.statistics().violations == 1


def test_consistent_order_is_not_reported(checker: LockOrderChecker) -> None:
    locks = [SpinLock(name=f"L{i}", checker=checker) for i in range(4)]
    rw = RWLock(name="RW", checker=checker)
    for _ in range(3):
        with rw.read():
            with locks[0], locks[2]:
                with locks[3]:
                    pass
        with locks[1], locks[3]:
            pass
        with rw.write(), locks[1]:
            pass
    st = checker.statistics()
    assert st.violations == 0 and st.edges >= 5 and st.classes == 5


def test_three_lock_cycle(checker: LockOrderChecker) -> None:
    a, b, c = (SpinLock(name=n, checker=checker) for n in "ABC")
    with a, b:
        pass
    with b, c:
        pass
    with c:
        with pytest.raises(LockOrderViolation) as ei:
            a.lock()
    assert ei.value.cycle == ["A", "B", "C", "A"]


def test_log_mode_records_and_continues(checker: LockOrderChecker) -> None:
    checker.enable(raise_on_violation=False)
    a = SpinLock(name="A", checker=checker)
    b = RWLock(name="B", checker=checker)
    with a, b.write():
        pass
    with b.read(), a:
        pass
    assert [v.cycle for v in checker.violations] == [["A", "B", "A"]]


def test_same_class_nesting_and_trylock_add_no_cycle(checker: LockOrderChecker) -> None:
    x1 = SpinLock(name="percpu", checker=checker)
    x2 = SpinLock(name="percpu", checker=checker)
    with x1, x2:
        pass
    with x2, x1:
        pass
    a = SpinLock(name="A", checker=checker)
    b = SpinLock(name="B", checker=checker)
    with a, b:
        pass
    with b:
        g = a.try_lock()  # cannot deadlock: no edge B -> A
        assert g is not None
        g.release()
    assert checker.statistics().violations == 0


def test_disabled_checker_costs_nothing_and_reports_nothing() -> None:
    checker = LockOrderChecker(enabled=False)
    a = SpinLock(name="A", checker=checker)
    b = SpinLock(name="B", checker=checker)
    with a, b:
        pass
    with b, a:
        pass
    assert checker.statistics() == (False, 0, 0, 0)
    checker.enable()
    with b, a:
        pass
    checker.reset()
    assert checker.statistics().edges == 0


def test_default_checker_is_shared() -> None:
    assert SpinLock(name="x")._checker is lock_order_checker()
